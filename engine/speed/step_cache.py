"""The step cache of a run, on every transformer of the pipeline (both Wan experts): diffusers' own cache hooks.

- ``first_block``: First Block Cache; a step whose first-block output changed less than ``threshold`` (relative)
  reuses the rest of the network's last residual.
- ``mag_cache``: MagCache (diffusers' hooks) with magnitude ratios calibrated on the first run of a model, step
  count and boundary (``engine.speed.mag_cache``: that run skips nothing and records them), each expert its own curve.
- TaylorSeer is not offered: enabled through diffusers on both Wan experts (its hooks sit on ``blocks.*attn``), it
  left every pixel of the tiny demo Wan unchanged over 8 steps (checked side by side), so we cannot show it does
  anything for Wan here.

The configuration is kept on the module between runs with the same settings; its state is reset before every
call and in ``finally`` (``engine.jobs.common.reset_pipeline_state``), so a failed or cancelled run never leaves
a stale cache to the next one.
"""

from __future__ import annotations

from engine.speed.mag_cache import mag_config

_KEY = "_studio_step_cache"


def cache_config(mode: str, threshold: float, steps: int):
    from diffusers import FirstBlockCacheConfig

    if mode == "first_block":
        return FirstBlockCacheConfig(threshold=threshold)
    raise ValueError(f"unknown step cache {mode!r}")


def apply_step_cache(pipe, mode: str, threshold: float, steps: int,
                     mag: dict[str, tuple[int, list[float]]] | None = None, lora_key: str = "") -> list[str]:
    """Make every transformer of ``pipe`` carry exactly this cache (or none); returns the ones that have it.

    ``mag`` (for ``mag_cache``): expert attribute -> (its step count, its calibrated ratios); an expert missing
    from it (a calibration run, or one that runs no step) gets no cache. ``lora_key``: the LoRA stacks'
    fingerprint, part of the key, so a cache configured under one stack is rebuilt under another."""
    applied = []
    for attr in ("transformer", "transformer_2", "unet"):
        module = getattr(pipe, attr, None)
        if module is None:
            continue
        config, key = None, ("none",)
        if mode == "mag_cache" and mag and attr in mag:
            n, ratios = mag[attr]
            config, key = (lambda n=n, r=ratios: mag_config(threshold, n, r)), (mode, float(threshold), n, tuple(ratios))
        elif mode not in ("none", "mag_cache"):
            config, key = (lambda: cache_config(mode, threshold, steps)), (mode, float(threshold), int(steps))
        key = (*key, lora_key)
        if getattr(module, _KEY, None) == key and (config is None or module.is_cache_enabled):
            applied += [type(module).__name__] if config is not None else []
            continue
        if getattr(module, "is_cache_enabled", False):
            module.disable_cache()
        if config is not None:
            module.enable_cache(config())
            applied.append(type(module).__name__)
        setattr(module, _KEY, key)
    return applied
