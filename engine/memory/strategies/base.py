"""What every swap strategy shares: the components it works on, the context of a run, and ``Applied``
(everything a strategy did to a pipeline, undone by ``remove``)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from engine.memory.component_offload import add_onload_hooks


@dataclass(frozen=True)
class Component:
    name: str  # ledger name
    attr: str  # pipeline attribute ("transformer_2")
    module: torch.nn.Module
    role: str


@dataclass
class SwapContext:
    """What a strategy needs to know about the run beyond its settings."""

    activations: int = 0  # estimated activation bytes at the busiest moment
    trace: object | None = None  # a SwapTrace when the per-block trace is on


@dataclass
class Applied:
    mode: str
    key: tuple
    names: tuple[str, ...]
    removers: list[Callable[[], None]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    layouts: dict = field(default_factory=dict)

    def remove(self) -> None:
        while self.removers:
            self.removers.pop()()


class Strategy:
    """One memory mode. ``apply`` installs hooks (kept across runs while the settings stay the same);
    ``before_run``/``after_run`` place the weights around each call."""

    mode = ""
    run_device_cpu = False  # cpu_only

    def apply(self, components: list[Component], settings, ledger, ctx: SwapContext) -> Applied:
        return Applied(self.mode, (), tuple(c.name for c in components))

    def before_run(self, components: list[Component], ledger, applied: Applied) -> None:
        pass

    def after_run(self, components: list[Component], ledger, applied: Applied) -> None:
        pass


def others(components: list[Component], keep: Callable[[Component], bool]) -> Callable[[], list[str]]:
    names = [c.name for c in components if keep(c)]
    return lambda: names


def hook_components(applied: Applied, ledger, components: list[Component],
                    conflicts_of: Callable[[Component], Callable[[], list[str]]]) -> None:
    """Onload hooks on every component (children too for VAEs, which pipelines call through encode/decode)."""
    for c in components:
        applied.removers.append(add_onload_hooks(ledger, c.name, c.module, conflicts_of(c), whole=c.role != "vae"))
