"""One module per memory mode; ``strategy_for(mode)`` is the only place a mode name turns into behaviour."""

from __future__ import annotations

from .adaptive import Adaptive
from .base import Applied, Component, Strategy, SwapContext
from .block_swap import BlockSwap
from .chunkwise import Chunkwise
from .cpu_only import CpuOnly
from .layerwise import Layerwise
from .model_offload import ModelOffload
from .none import NoSwap

STRATEGIES: dict[str, type[Strategy]] = {
    cls.mode: cls for cls in (NoSwap, ModelOffload, BlockSwap, Adaptive, Chunkwise, Layerwise, CpuOnly)
}


def strategy_for(mode: str) -> Strategy:
    try:
        return STRATEGIES[mode]()
    except KeyError:
        raise ValueError(f"unknown memory mode {mode!r}; known: {', '.join(STRATEGIES)}") from None


__all__ = ["STRATEGIES", "Applied", "Component", "Strategy", "SwapContext", "strategy_for"]
