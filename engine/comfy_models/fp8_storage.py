"""Keep an fp8 single file's weights in fp8 while the model runs, tensor by tensor (scaled fp8 with its scales).

diffusers' layerwise casting (``enable_layerwise_casting``) stores a whole layer in the storage dtype: weight
*and* bias. Most fp8 files people download keep biases and norms in bf16 and only the big matrices in fp8
(Kijai's and the usual converters skip "bias" and "norm"); casting those biases to fp8 rounds them to 3 mantissa
bits, so the model would no longer be the file, nor what ComfyUI runs from it (ComfyUI casts weight and bias
separately). Here a tensor is stored as fp8 only where that round trip is exact, which is precisely the tensors
the file holds in fp8 (their values came from fp8); everything else keeps the compute dtype. The hook is
diffusers' own, with the cast limited to those tensors, registered under the same name so that diffusers and
peft see layerwise casting as on (``get_parameter_dtype``, peft's input autocast), and each such layer states its
``compute_dtype``, so that a LoRA loaded onto it computes in that dtype, not in fp8.
"""

from __future__ import annotations

import re

import torch
from diffusers.hooks import HookRegistry
from diffusers.hooks._common import _GO_LC_SUPPORTED_PYTORCH_LAYERS
from diffusers.hooks.layerwise_casting import (
    _LAYERWISE_CASTING_HOOK,
    LayerwiseCastingHook,
    _disable_peft_input_autocast,
)

SCALE_BUFFER = "scale_weight"  # a scaled fp8 layer's factor: a buffer, so it moves and offloads with its layer


class TensorwiseCastingHook(LayerwiseCastingHook):
    """Layerwise casting of the named tensors of one layer, times the layer's ``scale_weight`` buffer for those in
    ``scaled`` (ComfyUI's scaled fp8). A name may be a child's (``"wo.weight"``: cast for the whole forward of the
    module that calls that child, whose code reads the child's dtype), scaled by that child's buffer. The storage
    copy is kept through the forward and put back after it, so storing never casts again (and never allocates)."""

    def __init__(self, names: tuple[str, ...], storage_dtype: torch.dtype, compute_dtype: torch.dtype,
                 scaled: tuple[str, ...] = ()) -> None:
        super().__init__(storage_dtype, compute_dtype, non_blocking=False)
        self.names = names
        self.scaled = scaled
        self._stored: dict[str, torch.Tensor] = {}

    @staticmethod
    def _owner(module: torch.nn.Module, name: str) -> tuple[torch.nn.Module, str]:
        path, _, attr = name.rpartition(".")
        return (module.get_submodule(path) if path else module), attr

    def initialize_hook(self, module: torch.nn.Module):
        for name in self.names:
            owner, attr = self._owner(module, name)
            tensor = getattr(owner, attr)
            tensor.data = tensor.data.to(self.storage_dtype)
        return module

    def pre_forward(self, module: torch.nn.Module, *args, **kwargs):
        for name in self.names:
            owner, attr = self._owner(module, name)
            tensor = getattr(owner, attr)
            if name in self._stored:  # a forward that raised never reached post_forward: its storage copy first
                tensor.data = self._stored.pop(name)
            self._stored[name] = tensor.data
            computed = tensor.data.to(self.compute_dtype, copy=True)  # this layer's weight for this call only
            tensor.data = computed.mul_(getattr(owner, SCALE_BUFFER)) if name in self.scaled else computed
        return args, kwargs

    def post_forward(self, module: torch.nn.Module, output):
        for name in self.names:
            stored = self._stored.pop(name, None)
            if stored is not None:
                owner, attr = self._owner(module, name)
                getattr(owner, attr).data = stored
        return output


def _exact_in(tensor: torch.Tensor, storage: torch.dtype) -> bool:
    if tensor.dtype == storage:  # loaded as the file stores it
        return True
    if not tensor.is_floating_point() or tensor.element_size() == 1:  # another 8-bit float: no exact round trip test
        return False
    return bool(torch.equal(tensor.to(storage).to(tensor.dtype), tensor))


def keep_fp8(model: torch.nn.Module, storage_dtype: torch.dtype, compute_dtype: torch.dtype,
             scales: dict[str, torch.Tensor] | None = None, lift: tuple[str, ...] = (),
             skip: tuple[str, ...] = ()) -> int:
    """Store in ``storage_dtype`` every tensor of a supported layer (Linear, Conv) that it holds exactly; an 8-bit
    tensor left out (a norm's weight, a bare parameter) goes to the compute dtype. ``scales``: parameter name ->
    the factor its stored values are multiplied by (``scaled_fp8.scale_for``), applied at compute time (or once,
    now, for a tensor left out). ``lift``: patterns of layers whose weight dtype their parent's code reads (T5's
    ``wo``): they are cast for the parent's whole forward, by a hook on the parent. ``skip``: patterns of layers
    left as they are (already in their own dtype). Returns the number of tensors stored in ``storage_dtype``."""
    scales = scales or {}
    # diffusers skips norms and embedders (``DEFAULT_SKIP_MODULES_PATTERN``, "norm") because casting a bf16 model
    # *down* to fp8 would round them; a tensor stored here is exact in fp8 already and every layer still computes
    # in the compute dtype, so the norms' modulation layers (a quarter of Flux) stay fp8 too. A model's other
    # patterns stay out: its code reads their weights' dtype (Wan casts the timestep to its condition embedder's)
    skip = tuple(p for p in getattr(model, "_skip_layerwise_casting_patterns", None) or () if p != "norm") + skip
    stored = 0
    carried: dict[str, tuple[list[str], list[str]]] = {}  # the module a hook goes on -> (names, scaled names)
    modules = dict(model.named_modules())
    for prefix, module in modules.items():
        hooked = isinstance(module, _GO_LC_SUPPORTED_PYTORCH_LAYERS) and not any(re.search(p, prefix) for p in skip)
        names = tuple(name for name, tensor in module.named_parameters(recurse=False)
                      if hooked and tensor.is_floating_point() and _exact_in(tensor.data, storage_dtype))
        scaled = tuple(n for n in names if f"{prefix}.{n}" in scales)
        for name, tensor in module.named_parameters(recurse=False):  # what is not stored fp8 computes as it is
            if name not in names and tensor.is_floating_point() and tensor.element_size() == 1:
                factor = scales.get(f"{prefix}.{name}")
                tensor.data = tensor.data.to(compute_dtype) * factor if factor is not None else \
                    tensor.data.to(compute_dtype)
        if len(scaled) > 1:
            raise ValueError(f"{prefix}: more than one scaled tensor in one layer ({', '.join(scaled)})")
        if scaled:
            module.register_buffer(SCALE_BUFFER, scales[f"{prefix}.{scaled[0]}"], persistent=False)
        if names:
            # peft gives a LoRA its base layer's dtype, reading ``compute_dtype`` first where a layer has one
            # (bitsandbytes' convention): without it the adapter would be made, and its file rounded, in fp8
            module.compute_dtype = compute_dtype
            carrier, child = prefix, ""
            if "." in prefix and any(re.search(p, prefix) for p in lift):
                carrier, _, child = prefix.rpartition(".")
            own, own_scaled = carried.setdefault(carrier, ([], []))
            own.extend(f"{child}.{n}" if child else n for n in names)
            own_scaled.extend(f"{child}.{n}" if child else n for n in scaled)
            stored += len(names)
    for carrier, (names, scaled) in carried.items():
        registry = HookRegistry.check_if_exists_or_initialize(modules[carrier])
        registry.register_hook(TensorwiseCastingHook(tuple(names), storage_dtype, compute_dtype, tuple(scaled)),
                               _LAYERWISE_CASTING_HOOK)
    _disable_peft_input_autocast(model)
    return stored
