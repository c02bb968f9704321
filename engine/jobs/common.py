"""What every runner does around a diffusers call: seeded generator, progress, cancel, and a
per-run reset of pipeline state (interrupt flag, step caches) in ``finally``, so that an
aborted run can never leak stale state into the next one."""

from __future__ import annotations

import contextlib
import inspect
import threading
import time
from collections.abc import Callable, Iterator

import torch

from engine.errors import Cancelled

Progress = Callable[[float, str], None]


def generator_for(seed: int) -> torch.Generator:
    # A CPU generator gives the same noise on every device, so a seed reproduces across machines.
    return torch.Generator(device="cpu").manual_seed(seed)


def transformers_of(pipe) -> list[torch.nn.Module]:
    return [m for name in ("transformer", "transformer_2", "unet") if (m := getattr(pipe, name, None)) is not None]


def reset_pipeline_state(pipe) -> None:
    """Clear what a previous (possibly aborted) call may have left behind."""
    if hasattr(pipe, "_interrupt"):
        pipe._interrupt = False
    for module in transformers_of(pipe):
        reset = getattr(module, "_reset_stateful_cache", None)
        if reset is not None:
            reset()


@contextlib.contextmanager
def step_cache(pipe, threshold: float) -> Iterator[None]:
    """First Block Cache on every transformer of ``pipe`` for one run (one stage) only: enabled on entry and
    removed on exit, whatever happens, so no cached residual can outlive the LoRAs and inputs it was computed
    with (seed 004's #14). ``threshold`` 0 = off; a cache something else left enabled is removed either way."""
    modules = [m for m in transformers_of(pipe) if hasattr(m, "enable_cache")]
    for module in modules:
        if module.is_cache_enabled:
            module.disable_cache()
    if threshold <= 0:
        yield
        return
    from diffusers import FirstBlockCacheConfig

    for module in modules:
        module.enable_cache(FirstBlockCacheConfig(threshold=threshold))
    try:
        yield
    finally:
        for module in modules:
            module._reset_stateful_cache()
            module.disable_cache()


def accepted_kwargs(pipe, kwargs: dict) -> dict:
    """Keep only the arguments this pipeline's ``__call__`` takes (pipelines differ: true_cfg_scale ...)."""
    params = inspect.signature(pipe.__call__).parameters
    return {k: v for k, v in kwargs.items() if k in params}


def call_pipeline(pipe, kwargs: dict, steps: int, progress: Progress, cancel: threading.Event | None,
                  on_step: Callable[[int], None] | None = None):
    """Run ``pipe(**kwargs)`` with progress and cancel wired through ``callback_on_step_end``."""
    cancel = cancel or threading.Event()

    def on_step_end(p, step: int, timestep, callback_kwargs):
        if on_step is not None:
            on_step(step)
        progress((step + 1) / steps, f"step {step + 1}/{steps}")
        if cancel.is_set():
            p._interrupt = True
        return callback_kwargs

    if cancel.is_set():
        raise Cancelled()
    reset_pipeline_state(pipe)
    try:
        with torch.inference_mode():
            out = pipe(**kwargs, callback_on_step_end=on_step_end)
    finally:
        reset_pipeline_state(pipe)
    if cancel.is_set():
        raise Cancelled()
    return out


def run_denoise(engine, pipe, kwargs: dict, steps: int, swap, progress: Progress,
                cancel: threading.Event | None, timings: dict):
    """Every diffusion runner calls its pipeline through here, so the request's memory mode (``swap``, a
    ``SwapSettings``) is applied in one place and never branched on in a runner."""
    from engine.memory.strategies import SwapContext
    from engine.memory.trace import SwapTrace
    from engine.plan import activation_bytes

    components = engine.store.components_of(pipe)
    trace = SwapTrace(engine.memory.compute_device) if getattr(swap, "trace", False) else None
    ctx = SwapContext(activations=activation_bytes(pipe, kwargs), trace=trace)
    t0 = time.perf_counter()
    info = None
    try:
        with engine.memory.swap.session(components, swap, ctx) as info:
            timings["to_device"] = timings.get("to_device", 0.0) + time.perf_counter() - t0
            t1 = time.perf_counter()
            try:
                out = call_pipeline(pipe, kwargs, steps, progress, cancel, on_step=trace.end_step if trace else None)
            finally:
                timings["denoise_decode"] = timings.get("denoise_decode", 0.0) + time.perf_counter() - t1
    finally:  # after the session: what the mode moved back once the call was done counts too
        if info is not None:
            engine.note_memory_session(info, engine.memory.run_stats(), trace)
    return out
