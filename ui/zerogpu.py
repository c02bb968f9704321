"""Hugging Face Spaces (ZeroGPU): GPU work runs inside ``spaces.GPU``; elsewhere this is a no-op.

ZeroGPU attaches a GPU only while a ``@spaces.GPU`` function runs, so the wrapper goes around
the engine call and nothing else: downloads (``Engine.prepare``, called before it), VRAM readouts
and the cancel button stay outside it. The duration asked for is the engine's estimate for the
request (``engine.hosting.zerogpu``); on ZeroGPU a run over the platform's limit is refused first.
"""

from __future__ import annotations

import os
from collections.abc import Callable

from engine.hosting import zerogpu as hosting

try:  # preinstalled on Spaces; ``spaces.GPU`` is itself a no-op outside ZeroGPU
    import spaces
except ImportError:  # pragma: no cover - depends on the host
    spaces = None


def where() -> str:
    """"" locally, else which Hugging Face hardware this runs on. Read from the environment Spaces sets:
    having the ``spaces`` package installed does not make a machine a Space."""
    if not os.environ.get("SPACE_ID"):
        return ""
    return "Hugging Face Spaces (ZeroGPU)" if os.environ.get("SPACES_ZERO_GPU") else "Hugging Face Spaces"


def gpu(fn: Callable, duration: int | Callable = hosting.duration) -> Callable:
    """``fn`` wrapped in ``spaces.GPU(duration=...)`` where the ``spaces`` package is installed, ``fn`` itself
    elsewhere. ``duration`` is seconds, or a callable taking ``fn``'s arguments (the request first)."""
    if spaces is None:
        return fn
    return spaces.GPU(duration=duration)(fn)


def engine_call(engine) -> Callable:
    """The one GPU call of every tab: ``engine.run(request, progress, cancel)`` inside ``spaces.GPU``, asking
    for the request's own duration estimate."""

    def run_on_gpu(request, progress, cancel):
        return engine.run(request, progress, cancel)

    return gpu(run_on_gpu, hosting.duration)


def check(request) -> None:
    """On ZeroGPU, refuse up front (before any download) a run longer than ZeroGPU allows; elsewhere nothing."""
    if hosting.on_zerogpu():
        hosting.check_limit(request)
