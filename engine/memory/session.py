"""Runs under a memory mode: apply the mode's strategy to a pipeline's components (or keep it from the last run
when nothing changed), place the weights before the call and put them where the mode wants them after it.

A strategy stays applied between runs, so a repeated identical run re-does nothing and moves only what its
mode must stream; a different mode, different settings, or a module whose tensors changed (a LoRA loaded)
removes every hook of the previous strategy before the new one goes on.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field

from engine.memory.planner import GiB
from engine.memory.strategies import Applied, Component, SwapContext, strategy_for
from engine.memory.transfer import module_fingerprint

ACTIVATION_BUCKET = 256 * 2**20  # adaptive re-plans when the activation estimate moves by a bucket


@dataclass
class SessionInfo:
    mode: str
    device: str
    reused: bool
    notes: list[str] = field(default_factory=list)
    layouts: dict = field(default_factory=dict)


def _settings_key(settings) -> tuple:
    return (settings.mode, int(settings.blocks_resident), int(settings.block_size_mb), int(settings.prefetch),
            bool(settings.use_streams))


class SwapController:
    def __init__(self, ledger):
        self.ledger = ledger
        self._applied: dict[str, Applied] = {}  # ledger name -> what covers it now

    def remove(self, names: list[str] | None = None) -> None:
        """Take the strategies covering these modules (all when None) off."""
        targets = {id(a): a for n, a in self._applied.items() if names is None or n in names}
        for applied in targets.values():
            applied.remove()
            for n in applied.names:
                self._applied.pop(n, None)

    @contextlib.contextmanager
    def session(self, components: list[Component], settings, ctx: SwapContext | None = None):
        ctx = ctx or SwapContext()
        ledger = self.ledger
        strategy = strategy_for(settings.mode)
        names = tuple(c.name for c in components)
        previous_budget = ledger.session_budget
        if settings.max_vram_gb and not strategy.run_device_cpu:
            ledger.session_budget = int(settings.max_vram_gb * GiB)
        activations = (ctx.activations // ACTIVATION_BUCKET) if settings.mode == "adaptive" else 0
        key = (_settings_key(settings), ledger.effective_budget(), activations, names,
               tuple(module_fingerprint(c.module) for c in components))
        try:
            applied = self._applied.get(names[0]) if names else None
            reused = applied is not None and applied.key == key and all(self._applied.get(n) is applied for n in names)
            if not reused:
                self.remove(list(names))
                applied = strategy.apply(components, settings, ledger, ctx)
                applied.key = key
                for n in names:
                    self._applied[n] = applied
            for c in components:  # the trace is per run; the streamers outlive it
                residency = ledger.entry(c.name).residency
                if residency is not None and hasattr(residency, "trace"):
                    residency.trace = ctx.trace
            ledger.reset_run_stats()
            strategy.before_run(components, ledger, applied)
            device = "cpu" if strategy.run_device_cpu else ledger.compute_device
            info = SessionInfo(settings.mode, device, reused, list(applied.notes), dict(applied.layouts))
            try:
                yield info
            finally:
                strategy.after_run(components, ledger, applied)
                info.notes.extend(n for n in applied.notes if n not in info.notes)  # e.g. a pin failure mid-run
        finally:
            ledger.session_budget = previous_budget
