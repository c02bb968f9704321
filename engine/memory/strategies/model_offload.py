"""model_offload: a component is on the compute device only while it computes. Text encoders leave when the
transformer starts, the VAE comes in for encode/decode only, and the Wan experts take turns (the high-noise
expert has left before the low-noise one arrives)."""

from __future__ import annotations

from engine.memory.strategies.base import Strategy, hook_components, others


class ModelOffload(Strategy):
    mode = "model_offload"

    def apply(self, components, settings, ledger, ctx):
        applied = super().apply(components, settings, ledger, ctx)
        hook_components(applied, ledger, components, lambda c: others(components, lambda o: o.name != c.name))
        return applied

    def before_run(self, components, ledger, applied) -> None:
        ledger.offload([c.name for c in components])

    def after_run(self, components, ledger, applied) -> None:
        ledger.offload([c.name for c in components])
