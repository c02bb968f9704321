"""The InstantX Flux IP-Adapter math, as the ComfyUI pack computes it (Shakker-Labs/ComfyUI-IPAdapter-Flux,
the base of seed 000), on diffusers' Flux and Chroma transformers.

- ``MLPProjModel`` (file keys ``image_proj.*``): SigLIP ``pooler_output`` -> Linear(d, 2d) -> GELU ->
  Linear(2d, cross * N) -> reshape to N tokens -> LayerNorm(cross).
- ``IPLayers`` (file keys ``ip_adapter.<i>.to_{k,v}_ip.weight``): one pair of bias-free Linear(cross, inner) per
  attention processor of the transformer, in ``transformer.attn_processors`` order (double blocks, then single).
- ``IPAttnProcessor``: the block's own attention, plus ``scale * sdpa(q, rms(k_ip), rms(v_ip))`` with ``q`` the
  block's query after its QK norm and before RoPE. Double blocks add it to the image tokens before ``to_out``;
  single blocks to the whole [text, image] attention output before ``proj_out``. Outside the sigma window, or
  with every weight 0, it hands the call to the block's original processor, so the base output is bit-exact.

Differences from upstream, on purpose: head_dim, widths and block counts are read from the model and the file
(upstream hard-codes 128 / 1152 / 3072 / 4096 / 19+38); several references are summed in one processor (upstream
chains one patched block per Apply node: the same sum); the InstantX diffusers reference's keys-only norm is an
option (``norm_values=False``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from diffusers.models.attention_dispatch import dispatch_attention_fn
from diffusers.models.normalization import RMSNorm
from torch import nn

from engine.adapters.flux_attention import flux_out, flux_qkv

IP_NORM_EPS = 1e-5  # upstream: RMSNorm(128, eps=1e-5, elementwise_affine=False)


class MLPProjModel(nn.Module):
    """Image embedding -> ``num_tokens`` tokens of the text width (the key layout of ``image_proj.*``)."""

    def __init__(self, image_embed_dim: int, cross_attention_dim: int, num_tokens: int):
        super().__init__()
        self.image_embed_dim = image_embed_dim
        self.cross_attention_dim = cross_attention_dim
        self.num_tokens = num_tokens
        self.proj = nn.Sequential(
            nn.Linear(image_embed_dim, image_embed_dim * 2),
            nn.GELU(),
            nn.Linear(image_embed_dim * 2, cross_attention_dim * num_tokens),
        )
        self.norm = nn.LayerNorm(cross_attention_dim)

    def forward(self, embeds: torch.Tensor) -> torch.Tensor:
        x = self.proj(embeds).reshape(-1, self.num_tokens, self.cross_attention_dim)
        return self.norm(x)


class IPLayer(nn.Module):
    def __init__(self, cross_attention_dim: int, inner_dim: int):
        super().__init__()
        self.to_k_ip = nn.Linear(cross_attention_dim, inner_dim, bias=False)
        self.to_v_ip = nn.Linear(cross_attention_dim, inner_dim, bias=False)


class IPLayers(nn.ModuleList):
    """All IP layers of one adapter: one module, one ledger row (state-dict keys ``<i>.to_{k,v}_ip.weight``)."""

    def __init__(self, count: int, cross_attention_dim: int, inner_dim: int):
        super().__init__([IPLayer(cross_attention_dim, inner_dim) for _ in range(count)])


# ---------------------------------------------------------------- the schedule: sigma window and weight ramp
def shift_function(scheduler_config: dict, image_seq_len: int):
    """``t -> sigma``: the time shift this scheduler applies to the linear timeline for this image size.

    diffusers' FlowMatchEuler with dynamic shifting uses ``mu = calculate_shift(seq_len, ...)`` and the exponential
    shift ``e^mu / (e^mu + (1/t - 1))``, which is ComfyUI's ``flux_time_shift(shift, 1, t)`` with ``shift = mu``
    (ComfyUI's default Flux shift 1.15 is exactly the diffusers mu at 1024x1024). Static shift: ``s t / (1 + (s-1) t)``.
    """
    from diffusers.pipelines.flux.pipeline_flux import calculate_shift

    cfg = dict(scheduler_config)
    if cfg.get("use_dynamic_shifting"):
        mu = calculate_shift(
            image_seq_len, cfg.get("base_image_seq_len", 256), cfg.get("max_image_seq_len", 4096),
            cfg.get("base_shift", 0.5), cfg.get("max_shift", 1.15),
        )
        if cfg.get("time_shift_type", "exponential") == "linear":
            return lambda t: mu / (mu + (1 / t - 1))
        return lambda t: math.exp(mu) / (math.exp(mu) + (1 / t - 1))
    shift = float(cfg.get("shift", 1.0))
    return lambda t: shift * t / (1 + (shift - 1) * t)


def percent_to_sigma(percent: float, shift) -> float:
    """ComfyUI's ``ModelSamplingFlux.percent_to_sigma``: 1 at 0 %, 0 at 100 %, else ``shift(1 - percent)``."""
    if percent <= 0.0:
        return 1.0
    if percent >= 1.0:
        return 0.0
    return float(shift(1.0 - percent))


def ramp_scale(step: int, weight_start: float, weight_end: float, steps: int) -> float:
    """The Advanced node's weight at its ``step``-th (1-based) distinct in-window timestep."""
    if steps <= 1:
        return weight_end
    current = min(step, steps)
    return weight_start + (weight_end - weight_start) * (current - 1) / (steps - 1)


@dataclass
class IPSchedule:
    """What every processor reads during one run. ``begin(sigma)`` is called once per transformer forward (a
    forward pre-hook): it decides whether the adapter acts at this sigma and with which scale."""

    references: list[tuple[torch.Tensor, float]]  # (tokens [1, N, cross], own weight) per reference image
    sigma_high: float  # sigma(start_percent)
    sigma_low: float  # sigma(end_percent)
    weight: float = 1.0
    ramp: tuple[float, float, int] | None = None  # (weight_start, weight_end, steps)
    norm_values: bool = True
    scale: float = 0.0
    active: bool = False
    history: list[dict] = field(default_factory=list)  # one row per distinct timestep: sigma, active, scale
    _window_steps: int = 0
    _last_sigma: float | None = None

    def begin(self, sigma: float) -> None:
        new_timestep = sigma != self._last_sigma  # true CFG calls the transformer twice per timestep
        self._last_sigma = sigma
        # upstream skips when t > range[0] or t < range[1]: inside means sigma(end) <= sigma <= sigma(start)
        inside = self.sigma_low <= sigma <= self.sigma_high
        if inside and new_timestep:
            self._window_steps += 1
        if self.ramp is not None:
            self.scale = ramp_scale(max(self._window_steps, 1), *self.ramp)
        else:
            self.scale = self.weight
        self.active = inside and any(self.scale * w != 0 for _, w in self.references)
        if new_timestep:
            self.history.append({"sigma": sigma, "active": self.active, "scale": self.scale if self.active else 0.0})


# ---------------------------------------------------------------- the processor
class IPAttnProcessor:
    """Replaces one block's ``FluxAttnProcessor`` while an IP-Adapter run lasts.

    A plain object, not an ``nn.Module``: assigning a module to ``attn.processor`` would make the IP weights part of
    the transformer's module tree (its ledger row, its offload hooks). They keep their own row instead.
    """

    def __init__(self, original, layer: IPLayer, schedule: IPSchedule, head_dim: int):
        self.original = original
        self.layer = layer
        self.schedule = schedule
        self.norm = RMSNorm(head_dim, eps=IP_NORM_EPS, elementwise_affine=False)
        self._attention_backend = getattr(original, "_attention_backend", None)
        self._parallel_config = getattr(original, "_parallel_config", None)

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, image_rotary_emb=None):
        if not self.schedule.active:  # the original processor itself: outside the window nothing differs
            return self.original(attn, hidden_states, encoder_hidden_states, attention_mask, image_rotary_emb)
        # FluxAttnProcessor's computation (diffusers 0.42), with the IP branch added where upstream adds it: the
        # query after the QK norm, before RoPE and the text join; its output joins the image tokens before to_out
        query, key, value, ip_query = flux_qkv(attn, hidden_states, encoder_hidden_states, image_rotary_emb)
        hidden_states = dispatch_attention_fn(
            query, key, value, attn_mask=attention_mask, backend=self._attention_backend,
            parallel_config=self._parallel_config,
        )
        hidden_states = hidden_states.flatten(2, 3).to(query.dtype)
        return flux_out(attn, hidden_states, encoder_hidden_states, add=self.ip_attention(ip_query))

    def ip_attention(self, query: torch.Tensor) -> torch.Tensor:
        """``sum_i scale * weight_i * sdpa(q, k_i, v_i)`` over the references; ``query`` is [B, S, H, D]."""
        batch, _, heads, head_dim = query.shape
        q = query.transpose(1, 2)  # B H S D
        out = None
        for tokens, weight in self.schedule.references:
            scale = self.schedule.scale * weight
            if scale == 0:
                continue
            k = self.layer.to_k_ip(tokens).unflatten(-1, (heads, head_dim)).transpose(1, 2)
            v = self.layer.to_v_ip(tokens).unflatten(-1, (heads, head_dim)).transpose(1, 2)
            k = self.norm(k)
            if self.schedule.norm_values:  # the ComfyUI pack; InstantX's diffusers reference leaves v as is
                v = self.norm(v)
            k, v = k.expand(batch, -1, -1, -1), v.expand(batch, -1, -1, -1)
            ip = F.scaled_dot_product_attention(q.to(k.dtype), k, v, dropout_p=0.0, is_causal=False)
            ip = scale * ip.transpose(1, 2).flatten(2, 3).to(query.dtype)
            out = ip if out is None else out + ip
        return out if out is not None else torch.zeros_like(query.flatten(2, 3))


def install(transformer, layers: IPLayers, schedule: IPSchedule):
    """Put an ``IPAttnProcessor`` on every attention block and the sigma hook on the transformer.

    Returns ``remove()``, which puts back the very processor objects that were there and drops the hook: after it
    the transformer computes exactly as before (the runner calls it in ``finally``)."""
    originals = dict(transformer.attn_processors)
    if len(originals) != len(layers):
        raise ValueError(f"{len(layers)} IP layers for {len(originals)} attention blocks")
    head_dim = transformer.config.attention_head_dim
    transformer.set_attn_processor({
        name: IPAttnProcessor(original, layer, schedule, head_dim)
        for (name, original), layer in zip(originals.items(), layers)
    })

    def on_forward(module, args, kwargs):
        timestep = kwargs.get("timestep")
        if timestep is None and len(args) > 2:
            timestep = args[2]
        schedule.begin(float(timestep.flatten()[0]))

    hook = transformer.register_forward_pre_hook(on_forward, with_kwargs=True)

    def remove() -> None:
        hook.remove()
        transformer.set_attn_processor(originals)

    return remove
