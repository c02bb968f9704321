"""chunkwise: consecutive blocks grouped up to ``block_size_mb`` move together (fewer, larger copies)."""

from __future__ import annotations

from engine.memory.strategies.streaming import Streaming


class Chunkwise(Streaming):
    mode = "chunkwise"
