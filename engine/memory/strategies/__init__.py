"""One module per memory mode; ``strategy_for(mode)`` is the only place a mode name turns into behaviour."""

from __future__ import annotations

from engine.memory.strategies.adaptive import Adaptive
from engine.memory.strategies.base import Applied, Component, Strategy, SwapContext
from engine.memory.strategies.block_swap import BlockSwap
from engine.memory.strategies.chunkwise import Chunkwise
from engine.memory.strategies.cpu_only import CpuOnly
from engine.memory.strategies.layerwise import Layerwise
from engine.memory.strategies.model_offload import ModelOffload
from engine.memory.strategies.none import NoSwap

STRATEGIES: dict[str, type[Strategy]] = {
    cls.mode: cls for cls in (NoSwap, ModelOffload, BlockSwap, Adaptive, Chunkwise, Layerwise, CpuOnly)
}


def strategy_for(mode: str) -> Strategy:
    try:
        return STRATEGIES[mode]()
    except KeyError:
        raise ValueError(f"unknown memory mode {mode!r}; known: {', '.join(STRATEGIES)}") from None


__all__ = ["STRATEGIES", "Applied", "Component", "Strategy", "SwapContext", "strategy_for"]
