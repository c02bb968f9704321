"""none: every component resident on the compute device (fastest, most memory)."""

from __future__ import annotations

from engine.memory.strategies.base import Strategy


class NoSwap(Strategy):
    mode = "none"

    def before_run(self, components, ledger, applied) -> None:
        ledger.ensure_loaded([c.name for c in components])
