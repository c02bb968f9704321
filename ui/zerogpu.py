"""Hugging Face Spaces (ZeroGPU): GPU work runs inside ``spaces.GPU``; elsewhere this is a no-op.

ZeroGPU attaches a GPU only while a ``@spaces.GPU`` function runs, so the wrapper goes around
the engine call and nothing else: VRAM readouts and the cancel button keep working outside it.
"""

from __future__ import annotations

import os
from collections.abc import Callable

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

MAX_DURATION = 300  # ZeroGPU refuses longer requests


def gpu(fn: Callable, duration: int | Callable = 60) -> Callable:
    """``fn`` wrapped in ``spaces.GPU(duration=...)`` on Spaces, ``fn`` itself elsewhere.

    ``duration`` is seconds, or a callable taking ``fn``'s arguments and returning seconds
    (shorter estimates get a GPU sooner; only the seconds used are billed).
    """
    if spaces is None:
        return fn
    return spaces.GPU(duration=duration)(fn)


def estimate_seconds(steps: int, width: int, height: int, per_megapixel_step: float = 1.0, load: float = 30.0) -> int:
    """A rough duration for a diffusion run, clamped to what ZeroGPU accepts."""
    megapixels = max(width * height, 1) / 2**20
    return int(min(MAX_DURATION, load + steps * megapixels * per_megapixel_step))
