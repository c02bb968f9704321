"""Model offload as a hook: a component comes onto the compute device, through the ledger, right before it
computes, and first sends away the components it must not share the device with.

Why not diffusers' ``enable_model_cpu_offload``: it moves modules behind the ledger's back, cannot offload to
disk, cannot be combined with group offloading in one pipeline, and needs an accelerator. This hook asks the
ledger, so budget, disk offload and block streaming all keep working, and it runs the same way on a CPU.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from diffusers.hooks import HookRegistry, ModelHook

ONLOAD_HOOK = "app_onload"


class OnloadHook(ModelHook):
    def __init__(self, ledger, name: str, conflicts: Callable[[], list[str]]):
        super().__init__()
        self.ledger = ledger
        self.name = name
        self.conflicts = conflicts

    def pre_forward(self, module, *args, **kwargs):
        bring(self.ledger, self.name, self.conflicts())
        return args, kwargs


class DeviceMarker:
    """Set as a component's ``_hf_hook``: the protocol diffusers reads (``_execution_device``,
    ``get_module_execution_device``) to learn where inputs go while weights wait off the device, and the one
    its VAEs call (``apply_forward_hook``) before ``encode``/``decode``. It is not an accelerate hook: it has no
    ``hooks`` list and is neither ``CpuOffload`` nor ``AlignDevicesHook``, so diffusers never removes or
    re-applies it as one."""

    def __init__(self, ledger, name: str, conflicts: Callable[[], list[str]]):
        self.ledger = ledger
        self.name = name
        self.conflicts = conflicts

    @property
    def execution_device(self) -> torch.device:
        return torch.device(self.ledger.compute_device)

    def pre_forward(self, module, *args, **kwargs):
        bring(self.ledger, self.name, self.conflicts())
        return args, kwargs


def bring(ledger, name: str, conflicts: list[str]) -> None:
    """Make ``name`` resident, first offloading whichever of ``conflicts`` is on the compute device (also when
    ``name`` already is: the text encoders must leave when a transformer kept from the last run starts)."""
    away = [n for n in conflicts if n != name and n in ledger and ledger.compute_bytes(ledger.entry(n))]
    if away:
        ledger.offload(away)
    if ledger.entry(name).device != ledger.compute_device:
        ledger.ensure_loaded([name])


def entry_points(module: torch.nn.Module, whole: bool) -> list[torch.nn.Module]:
    """Where a component's work starts. Pipelines call a VAE through ``encode``/``decode`` (not ``forward``):
    the marker covers the methods diffusers decorates, and for ``whole=False`` every direct child that holds
    weights gets the hook too (a VAE method without the decorator still lands in a child)."""
    points = [module]
    if not whole:
        points += [c for c in module.children() if any(True for _ in c.parameters())]
    return points


def add_onload_hooks(ledger, name: str, module: torch.nn.Module, conflicts: Callable[[], list[str]],
                     whole: bool = True) -> Callable[[], None]:
    """Hook ``module`` (and for ``whole=False`` its children); returns the function that removes the hooks."""
    hooked = []
    for point in entry_points(module, whole):
        registry = HookRegistry.check_if_exists_or_initialize(point)
        if registry.get_hook(ONLOAD_HOOK) is None:
            registry.register_hook(OnloadHook(ledger, name, conflicts), ONLOAD_HOOK)
            hooked.append(point)
    marked = getattr(module, "_hf_hook", None) is None
    if marked:
        module._hf_hook = DeviceMarker(ledger, name, conflicts)

    def remove() -> None:
        for point in hooked:
            point._diffusers_hook.remove_hook(ONLOAD_HOOK, recurse=False)
        if marked and isinstance(getattr(module, "_hf_hook", None), DeviceMarker):
            del module._hf_hook

    return remove
