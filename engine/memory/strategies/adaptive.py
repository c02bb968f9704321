"""adaptive: block swap whose resident count and group size come from the budget (``max_vram_gb``, or what the
device has) and the measured block sizes plus an activation estimate (see ``planner.adaptive_layout``)."""

from __future__ import annotations

from engine.memory.strategies.streaming import Streaming


class Adaptive(Streaming):
    mode = "adaptive"
