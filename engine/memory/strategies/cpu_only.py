"""cpu_only: the run computes on the CPU even when a GPU is present (the GPU stays free for something else)."""

from __future__ import annotations

from engine.memory.strategies.base import Strategy


class CpuOnly(Strategy):
    mode = "cpu_only"
    run_device_cpu = True

    def before_run(self, components, ledger, applied) -> None:
        ledger.to_host([c.name for c in components])
