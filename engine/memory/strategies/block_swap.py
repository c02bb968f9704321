"""block_swap: the first ``blocks_resident`` transformer blocks stay on the compute device; the others stream
in one at a time, ``prefetch`` blocks ahead, and leave after use (TurboDiffusion's and the Wan wrappers' mode)."""

from __future__ import annotations

from engine.memory.strategies.streaming import Streaming


class BlockSwap(Streaming):
    mode = "block_swap"
