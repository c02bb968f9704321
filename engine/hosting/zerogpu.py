"""How long a run holds a ZeroGPU device, worked out from the request alone (nothing loads).

ZeroGPU schedules a ``@spaces.GPU`` call by the duration it asks for: a shorter estimate gets a GPU sooner,
only the seconds used are billed, and a request over the platform's limit is refused by ZeroGPU itself with
a terse "illegal duration". So every request kind gets an estimate here (steps, size, frames, memory mode),
the UI passes it to ``spaces.GPU(duration=...)``, and a run whose estimate exceeds the limit is refused
before anything is downloaded, with the estimate and what to change in the message.

The rates are for ZeroGPU's device (an H200 MIG slice, about half an H200) and a 12B Flux transformer in
bf16; other models scale by their size. They are deliberately on the high side: a run that outlives its
requested duration is aborted by ZeroGPU, one that asks for too much only waits a little longer in line.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from engine.errors import InputError
from engine.requests import (
    CatalogRequest,
    I2VRequest,
    IPAdapterRequest,
    LoraStackRequest,
    PerceptionRequest,
    QuantizeRequest,
    Request,
    TextToImageRequest,
)

DEFAULT_LIMIT_S = 300  # ZeroGPU's maximum for a regular account (PRO allows more: STUDIO_ZEROGPU_MAX_S)
MIN_DURATION_S = 10
SECONDS_PER_MEGAPIXEL_STEP = 0.6  # Flux-12B bf16, one 1024x1024 step ≈ 0.6 s on a ZeroGPU slice
LOAD_S = 25.0  # weights from the Space's disk/page cache to the device, text encoders, VAE decode
# how much slower a step gets when weights stream in and out instead of staying on the device
MODE_FACTOR = {"none": 1.0, "model_offload": 1.25, "adaptive": 1.4, "block_swap": 1.5, "chunkwise": 1.5,
               "layerwise": 3.0, "cpu_only": 40.0}
MODEL_FACTOR = (("qwen", 1.7), ("wan2.2-ti2v-5b", 0.45), ("wan", 1.2), ("chroma", 0.75))  # by repo/path, vs Flux 12B


def limit_seconds() -> int:
    """ZeroGPU's per-call limit (``STUDIO_ZEROGPU_MAX_S`` overrides it, e.g. for a PRO account)."""
    try:
        return int(os.environ.get("STUDIO_ZEROGPU_MAX_S") or DEFAULT_LIMIT_S)
    except ValueError:
        return DEFAULT_LIMIT_S


def on_zerogpu() -> bool:
    """True on a ZeroGPU Space (the variable Spaces sets; the ``spaces`` package reads the same one)."""
    return (os.environ.get("SPACES_ZERO_GPU") or "").lower() in ("1", "t", "true")


@dataclass(frozen=True)
class Estimate:
    seconds: int
    parts: str  # how it was worked out, for the refusal message

    def __int__(self) -> int:
        return self.seconds


def _model_factor(model) -> float:
    name = f"{getattr(model, 'repo_id', '')} {getattr(model, 'path', '')}".lower()
    return next((factor for key, factor in MODEL_FACTOR if key in name), 1.0)


def _mode_factor(swap) -> float:
    return MODE_FACTOR.get(getattr(swap, "mode", "none"), 1.0)


def _megapixels(width: int, height: int) -> float:
    return max(width * height, 1) / 2**20


def _denoise(steps: int, megapixels: float, model, swap, tokens_factor: float = 1.0) -> float:
    return steps * megapixels * tokens_factor * SECONDS_PER_MEGAPIXEL_STEP * _model_factor(model) * _mode_factor(swap)


def _text_to_image(req: TextToImageRequest) -> tuple[float, str]:
    mp = _megapixels(req.width, req.height)
    seconds = LOAD_S + _denoise(req.steps, mp, req.model, req.swap)
    return seconds, f"{req.steps} steps at {req.width}x{req.height}, {req.swap.mode}"


def _catalog(req: CatalogRequest) -> tuple[float, str]:
    seconds, parts = _text_to_image(req)
    if req.use_torch_compile:  # the first compiled call pays for the graph
        seconds += 90
        parts += ", torch.compile"
    return seconds, parts


def _ipadapter(req: IPAdapterRequest) -> tuple[float, str]:
    seconds, parts = _text_to_image(req)
    return seconds + 5 + 2 * len(req.references), parts + f", {len(req.references)} reference(s) encoded"


def _lora_stack(req: LoraStackRequest) -> tuple[float, str]:
    seconds, parts = _text_to_image(req)
    seconds += 3 * len(req.loras)
    if req.stage2:
        steps = max(1, round((req.stage2_steps or req.steps) * req.stage2_strength))
        mp = _megapixels(round(req.width * req.stage2_upscale), round(req.height * req.stage2_upscale))
        seconds += _denoise(steps, mp, req.model, req.swap) + 3 * len(req.stage2_loras)
        parts += f" + stage 2 ({steps} steps x{req.stage2_upscale:g})"
    return seconds, parts + f", {len(req.loras)} LoRA(s)"


def _perception(req: PerceptionRequest) -> tuple[float, str]:
    # OmniX works at 1440x720 (2:1) whatever the upload; each task is one more batch item per step
    seconds = LOAD_S + _denoise(req.steps, _megapixels(1440, 720), req.model, req.swap, tokens_factor=len(req.tasks))
    return seconds, f"{req.steps} steps x {len(req.tasks)} task(s) at 1440x720, {req.swap.mode}"


def _i2v(req: I2VRequest) -> tuple[float, str]:
    latent_frames = (req.num_frames - 1) // 4 + 1
    # attention over all frames' tokens: cost grows faster than the frame count
    tokens_factor = latent_frames * (1 + latent_frames / 20)
    steps = req.steps
    seconds = 2 * LOAD_S + _denoise(steps, _megapixels(req.width, req.height), req.model, req.swap, tokens_factor)
    return seconds, f"{steps} steps, {req.num_frames} frames at {req.width}x{req.height}, {req.swap.mode}"


def _quantize(req: QuantizeRequest) -> tuple[float, str]:
    # sdnq quantizes layer by layer on the device; the SVD variant does a low-rank fit per layer
    per_component = 60.0 * _model_factor(req.source) * (2.5 if req.use_svd else 1.0)
    seconds = LOAD_S + per_component * len(req.components)
    return seconds, f"{len(req.components)} component(s) to {req.weights_dtype}{', SVD' if req.use_svd else ''}"


ESTIMATORS = {  # request kind -> estimator; tests check that every kind in REQUEST_TYPES has one
    "text_to_image": _text_to_image,
    "sdnq_generate": _catalog,
    "sdnq_quantize": _quantize,
    "ipadapter": _ipadapter,
    "lora_stack": _lora_stack,
    "perception": _perception,
    "i2v": _i2v,
}


def estimate(request: Request) -> Estimate:
    """Seconds this run should ask ZeroGPU for, and how they were worked out."""
    estimator = ESTIMATORS.get(getattr(request, "kind", ""))
    if estimator is None:
        raise InputError("kind", f"no ZeroGPU duration estimate for request kind {getattr(request, 'kind', '?')!r}")
    seconds, parts = estimator(request)
    return Estimate(max(MIN_DURATION_S, int(seconds + 0.999)), parts)


def duration(request: Request, *_args, **_kwargs) -> int:
    """``spaces.GPU(duration=...)``'s callable: it receives the wrapped call's arguments (request first)."""
    return estimate(request).seconds


def check_limit(request: Request, limit: int | None = None) -> Estimate:
    """Refuse, before anything downloads, a run ZeroGPU would refuse (or abort) for its length."""
    est = estimate(request)
    limit = limit_seconds() if limit is None else limit
    if est.seconds > limit:
        field = "num_frames" if isinstance(request, I2VRequest) else "steps"
        raise InputError(field, f"this run needs about {est.seconds} s of GPU ({est.parts}); ZeroGPU allows "
                                f"{limit} s per run. Use fewer steps, a smaller size or fewer frames "
                                f"(or TurboWan's 4 steps for video)")
    return est
