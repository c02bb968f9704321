"""OmniX's cross-adapter inference, the two pieces that make one batch item per adapter work.

Upstream (HKU-MMLab/OmniX ``src/modules/cross_lora.py``) does two things to every Flux block:

1. every peft LoRA Linear runs batch item *i* under adapter ``lora_names[i]`` only (upstream swaps the module's
   ``forward`` for one that loops over items calling ``set_adapter``). Here peft's own mixed-adapter batches do it
   (``adapter_names=`` on a LoRA layer's forward, one adapter per item): a forward pre-hook adds that argument.
   Hooks come off with their handles, so nothing of the module is replaced, and peft's ``set_adapter`` (which
   also flips ``requires_grad``) is never called per item;
2. every Flux attention gets a processor that joins keys and values across the batch after RMSNorm and RoPE, so
   each item's queries (text and image tokens) attend to the tokens of every item, its own included, with no mask
   (``cross_lora.py:96-97``). Queries stay per item.
"""

from __future__ import annotations

import functools

import torch
from diffusers.models.attention_dispatch import dispatch_attention_fn
from peft.tuners.lora import LoraLayer

from engine.adapters.flux_attention import flux_out, flux_qkv


class CrossItemFluxAttnProcessor:
    """Flux attention (diffusers ``FluxAttnProcessor`` layout, [batch, seq, heads, dim]) with keys and values of all
    batch items concatenated along the sequence, as upstream's ``FluxAttnProcessor2_0_CrossLoRA``."""

    _attention_backend = None
    _parallel_config = None

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, image_rotary_emb=None):
        # every item has the same positions, so RoPE applies per item
        query, key, value, _ = flux_qkv(attn, hidden_states, encoder_hidden_states, image_rotary_emb)
        key, value = join_items(key), join_items(value)
        hidden_states = dispatch_attention_fn(
            query, key, value, attn_mask=attention_mask, backend=self._attention_backend,
            parallel_config=self._parallel_config,
        )
        return flux_out(attn, hidden_states.flatten(2, 3).to(query.dtype), encoder_hidden_states)


def join_items(x: torch.Tensor) -> torch.Tensor:
    """[b, s, h, d] -> [b, b*s, h, d]: every item sees the sequences of all items, item 0 first (upstream's
    ``repeat(key, 'b n s d -> bs n (b s) d')`` in the [batch, heads, seq, dim] layout)."""
    b, s, h, d = x.shape
    return x.reshape(1, b * s, h, d).expand(b, -1, -1, -1)


def _add_adapter_names(names: tuple[str, ...], module, args, kwargs):
    kwargs["adapter_names"] = list(names)
    return args, kwargs


def lora_layers(transformer: torch.nn.Module, adapter_names) -> list[tuple[str, LoraLayer]]:
    """The peft LoRA layers holding at least one of these adapters."""
    wanted = set(adapter_names)
    return [(n, m) for n, m in transformer.named_modules()
            if isinstance(m, LoraLayer) and wanted & set(m.lora_A.keys())]


def route_items(transformer: torch.nn.Module, adapter_names: tuple[str, ...]) -> list:
    """Batch item *i* through adapter ``adapter_names[i]`` only, in every LoRA layer that holds them. Returns the
    hook handles; ``handle.remove()`` undoes it."""
    hook = functools.partial(_add_adapter_names, tuple(adapter_names))
    return [m.register_forward_pre_hook(hook, with_kwargs=True) for _, m in lora_layers(transformer, adapter_names)]
