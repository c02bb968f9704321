"""A run that ran out of memory: free what it held, and say which memory mode the plan says would fit.

``torch.OutOfMemoryError`` can come from any step of any runner; the engine turns it into an ``OutOfMemory``
error here. Freeing: the exception's frames (they hold the step's activations, and a UI may keep the error),
every module the run left on the compute device (moved back through the ledger, which stays true), then
Python's garbage and the allocator's cache (``free_cached``). The advice comes from ``Engine.plan``: the
first mode leaner than the one that failed whose plan fits the budget, with its one-line explanation.
"""

from __future__ import annotations

import dataclasses
import gc
import logging
import traceback

from engine.errors import EngineError, InputError
from engine.memory.devices import free_cached

log = logging.getLogger(__name__)

# from fastest to leanest: after a failure only the modes after the failed one are worth suggesting
LEANER = ("none", "model_offload", "adaptive", "chunkwise", "block_swap", "layerwise")


class OutOfMemory(EngineError):
    """The run needed more memory than the device had; ``mode`` is the plan's suggestion ("" when none fits)."""

    def __init__(self, message: str, mode: str = ""):
        self.mode = mode
        super().__init__(message)


def free_after_failure(engine, exc: BaseException | None = None) -> None:
    """Release what a failed run holds on the compute device, so the next run starts as on a fresh engine."""
    seen = set()
    while exc is not None and id(exc) not in seen:  # the error and what it was raised from or during
        seen.add(id(exc))
        if exc.__traceback__ is not None:
            traceback.clear_frames(exc.__traceback__)  # the frames hold the step's tensors
        exc = exc.__cause__ or exc.__context__
    memory = engine.memory
    held = [n for n in memory.names() if memory.entry(n).device == memory.compute_device
            and memory.compute_device != memory.offload_device]
    try:
        memory.offload(held)
    except Exception as err:  # noqa: BLE001 - freeing must never hide the out-of-memory message
        log.warning("could not move every module off %s after running out of memory: %s", memory.compute_device, err)
    memory.refresh()
    gc.collect()
    free_cached()


def fitting_mode(engine, request) -> tuple[str, str]:
    """(mode, the plan's explanation) of the first mode leaner than the request's that fits, or ("", why)."""
    swap = getattr(request, "swap", None)
    if swap is None:
        return "", ""
    current = swap.mode
    candidates = LEANER[LEANER.index(current) + 1:] if current in LEANER else ()
    last = None
    for mode in candidates:
        try:
            plan = engine.plan(dataclasses.replace(request, swap=dataclasses.replace(swap, mode=mode)))
        except (InputError, OSError, ValueError, KeyError) as exc:  # a plan that cannot be made advises nothing
            log.warning("no plan for %s after running out of memory: %s", mode, exc)
            continue
        last = plan
        if plan.fits and plan.weights_peak:
            return mode, plan.explanation
    return "", (last.suggestion if last is not None else "")


def out_of_memory(engine, request, exc: BaseException) -> OutOfMemory:
    """The error the user sees (called after ``free_after_failure``)."""
    device = engine.run_device(getattr(request, "swap", None))
    swap = getattr(request, "swap", None)
    current = swap.mode if swap is not None else "none"
    first = (str(exc).splitlines() or [""])[0][:200]
    mode, why = fitting_mode(engine, request)
    head = f"out of memory on {device} in memory mode '{current}' ({first}); what the run held was freed. "
    if mode:
        return OutOfMemory(head + f"The plan says memory mode '{mode}' fits: {why}. Pick it under Memory mode "
                           "and run again.", mode)
    advice = why or "pick a leaner memory mode (layerwise streams every layer)"
    return OutOfMemory(head + f"No leaner memory mode fits by the plan: {advice}; or pick a smaller size, "
                       "fewer frames or a quantized model.")
