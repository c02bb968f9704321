"""The step cache of a run, on every transformer of the pipeline (both Wan experts): diffusers' own cache hooks.

- ``first_block``: First Block Cache; a step whose first-block output changed less than ``threshold`` (relative)
  reuses the rest of the network's last residual.
- TaylorSeer is not offered: enabled through diffusers on both Wan experts (its hooks sit on ``blocks.*attn``), it
  left every pixel of the tiny demo Wan unchanged over 8 steps (checked side by side), so we cannot show it does
  anything for Wan here; MagCache needs magnitude ratios calibrated per checkpoint and scheduler, and diffusers
  ships none for Wan (only a Flux preset).

The configuration is kept on the module between runs with the same settings; its state is reset before every
call and in ``finally`` (``engine.jobs.common.reset_pipeline_state``), so a failed or cancelled run never leaves
a stale cache to the next one.
"""

from __future__ import annotations

from .jobs.common import transformers_of

_KEY = "_studio_step_cache"


def cache_config(mode: str, threshold: float, steps: int):
    from diffusers import FirstBlockCacheConfig

    if mode == "first_block":
        return FirstBlockCacheConfig(threshold=threshold)
    raise ValueError(f"unknown step cache {mode!r}")


def apply_step_cache(pipe, mode: str, threshold: float, steps: int) -> list[str]:
    """Make every transformer of ``pipe`` carry exactly this cache (or none); returns the ones that have it."""
    key = (mode, float(threshold), int(steps))
    applied = []
    for module in transformers_of(pipe):
        current = getattr(module, _KEY, None)
        if current == key and (mode == "none" or module.is_cache_enabled):
            applied += [type(module).__name__] if mode != "none" else []
            continue
        if getattr(module, "is_cache_enabled", False):
            module.disable_cache()
        if mode != "none":
            module.enable_cache(cache_config(mode, threshold, steps))
            applied.append(type(module).__name__)
        setattr(module, _KEY, key)
    return applied
