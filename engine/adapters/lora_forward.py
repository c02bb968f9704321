"""peft's LoRA ``Linear`` forward without its two full-size temporaries per adapter, bit for bit the same result.

peft computes each adapter as ``result = result + lora_B(lora_A(x)) * scaling``: the scale and the sum each make a
new tensor as large as the layer's output, for every adapter of every wrapped layer at every step. Measured on the
CPU (``bench/lora_recompose.py --job width``, two rank-4 LoRAs, 512 tokens) that is most of a stack's cost: a forward
is 1.19x the one without LoRAs at width 768 and 1.08x at 1536, and 1.05x and 1.04x with the same arithmetic done in
place; on a GPU the same two passes are allocator traffic and memory bandwidth on every layer. peft has no option
for it, so the forward below replaces peft's on the plain LoRA ``Linear`` layers a stack loads: the same operations
in the same order (so the same roundings: scale the adapter's output, then add it), the scale and the sum written
into the tensors the layer just made instead of new ones, and the scale skipped where it is 1 (exact). Anything
else (training, adapters disabled or merged, DoRA and other variants, per-sample adapter names, a shape or dtype
that would broadcast) takes peft's own forward.
"""

from __future__ import annotations

import types

import torch

_INSTALLED = "_studio_inplace_forward"


def _inplace_forward(self, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
    if args or kwargs or torch.is_grad_enabled() or self.disable_adapters or self.merged or self.lora_variant:
        return type(self).forward(self, x, *args, **kwargs)
    result = self.base_layer(x)
    result_dtype = result.dtype
    keys = self.lora_A.keys()
    for name in self.active_adapters:
        if name not in keys:
            continue
        lora_a = self.lora_A[name]
        x = self._cast_input_dtype(x, lora_a.weight.dtype)
        delta = self.lora_B[name](lora_a(self.lora_dropout[name](x)))  # a new tensor: safe to write into
        scaling = self.scaling[name]
        if scaling != 1:
            delta.mul_(scaling)
        if delta.shape == result.shape and delta.dtype == result.dtype and result is not x:
            result.add_(delta)  # ``result`` is the output the base layer just made for this call
        else:  # broadcasting or a type promotion: peft's own arithmetic
            result = result + delta
    return result.to(result_dtype)


def install(layers) -> None:
    """Give every plain peft LoRA ``Linear`` among ``layers`` the in-place forward (once per layer)."""
    from peft.tuners.lora.layer import Linear

    for layer in layers:
        # quantized-backend subclasses and other layer kinds keep peft's forward
        if type(layer) is Linear and not getattr(layer, _INSTALLED, False):
            layer.forward = types.MethodType(_inplace_forward, layer)
            setattr(layer, _INSTALLED, True)
