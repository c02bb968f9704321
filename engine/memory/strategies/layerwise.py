"""layerwise: every layer streams in just before it computes (lowest memory, slowest), through diffusers'
leaf-level group offloading (side-stream prefetch and ``record_stream`` on CUDA; safetensors files for disk),
with ``low_cpu_mem_usage=True``: diffusers pins each layer's weights only while it copies them (its pinned
allocator cache is emptied when the mode is removed) instead of locking a pinned copy of every expert and the
text encoder at apply time.

The VAE is model-offloaded instead: Wan's VAE calls its decoder once per latent frame with a feature cache,
and streaming it layer by layer would copy the whole decoder again for every frame. With disk offload the
text and image encoders are model-offloaded too: diffusers' leaf-level *disk* groups give a wrong T5 output
(0.04 max difference on the demo T5, checked against the same groups in memory, which are exact).
"""

from __future__ import annotations

import shutil

import torch
from diffusers.hooks import HookRegistry, ModelHook
from diffusers.hooks.group_offloading import _GROUP_OFFLOADING, apply_group_offloading
from safetensors import safe_open

from engine.memory.component_offload import add_onload_hooks
from engine.memory.strategies.base import Applied, Strategy, hook_components, others

METER_HOOK = "app_layer_meter"


class LeafResidency:
    """The ledger's view of a module that diffusers streams layer by layer: at rest nothing is on the compute
    device; while a layer computes, that layer is (the meter hook keeps the count)."""

    disk_file = None

    def __init__(self, module: torch.nn.Module, ledger, disk_dir):
        self.module = module
        self.ledger = ledger
        self.disk_dir = disk_dir
        self.on_compute = 0
        self.leaves = list(_leaves(module))
        self.largest = max((_own_bytes(leaf) for leaf in self.leaves), default=0)
        self.layers_now = 0

    def resident_need(self) -> int:
        return 2 * self.largest

    def describe(self) -> str:
        return f"layer streaming, {self.layers_now} of {len(self.leaves)} layers"

    def load_resident(self) -> None:  # diffusers brings each layer in itself
        pass

    def evict_all(self) -> None:
        pass

    def evict_streamed(self) -> None:
        pass

    def remove(self) -> None:
        """Take diffusers' hooks off with the weights back in RAM (disk groups are read back one at a time)."""
        seen: set[int] = set()
        for _, _, hook in list(_group_hooks(self.module)):
            group = hook.group
            if id(group) in seen or group.offload_to_disk_path is None:
                continue
            seen.add(id(group))
            # read back into fresh (aligned) CPU memory: tensors straight from ``load_file`` sit at arbitrary
            # offsets, and CPU kernels then take other vector paths (last-bit differences in later runs)
            with safe_open(group.safetensors_file_path, framework="pt") as f:
                for key, tensor in group.key_to_tensor.items():
                    tensor.data = f.get_tensor(key).clone()
        HookRegistry.check_if_exists_or_initialize(self.module).remove_hook(_GROUP_OFFLOADING, recurse=True)
        for leaf in self.leaves:
            registry = getattr(leaf, "_diffusers_hook", None)
            if registry is not None and registry.get_hook(METER_HOOK) is not None:
                registry.remove_hook(METER_HOOK, recurse=False)
        if self.disk_dir is not None:  # the group files name groups, not weights: never reuse them
            shutil.rmtree(self.disk_dir, ignore_errors=True)


class _LayerMeter(ModelHook):
    """Counts the bytes each layer brings in (diffusers moves them; the ledger still wants the figure).
    Registered before diffusers' hook, so it runs inside it, while the layer's weights are on the device."""

    def __init__(self, residency: LeafResidency, nbytes: int):
        super().__init__()
        self.residency = residency
        self.nbytes = nbytes

    def pre_forward(self, module, *args, **kwargs):
        self.residency.on_compute = self.nbytes
        self.residency.layers_now = 1
        self.residency.ledger.residency_changed(self.nbytes)
        return args, kwargs

    def post_forward(self, module, output):
        self.residency.on_compute = 0
        self.residency.layers_now = 0
        return output


def _own_bytes(module: torch.nn.Module) -> int:
    return sum(p.numel() * p.element_size() for p in module.parameters(recurse=False))


def _leaves(module: torch.nn.Module):
    for sub in module.modules():
        if not list(sub.children()) and any(True for _ in sub.parameters(recurse=False)):
            yield sub


def _group_hooks(module: torch.nn.Module):
    for sub in module.modules():
        registry = getattr(sub, "_diffusers_hook", None)
        hook = registry.get_hook(_GROUP_OFFLOADING) if registry is not None else None
        if hook is not None:
            yield sub, registry, hook


class Layerwise(Strategy):
    mode = "layerwise"

    def apply(self, components, settings, ledger, ctx) -> Applied:
        applied = super().apply(components, settings, ledger, ctx)
        whole = [c for c in components if not self.streams(c, ledger)]
        hook_components(applied, ledger, whole, lambda c: others(whole, lambda o: o.name != c.name))
        use_stream = bool(settings.use_streams) and ledger.compute_device.startswith("cuda")
        for c in components:
            if c in whole:
                continue

            def make(module, place, disk_file, c=c):
                disk_dir = ledger.disk_dir(c.name) if place == "disk" else None
                if disk_dir is not None:
                    shutil.rmtree(disk_dir, ignore_errors=True)
                residency = LeafResidency(module, ledger, disk_dir)
                for leaf in residency.leaves:
                    HookRegistry.check_if_exists_or_initialize(leaf).register_hook(
                        _LayerMeter(residency, _own_bytes(leaf)), METER_HOOK)
                apply_group_offloading(
                    module, onload_device=torch.device(ledger.compute_device), offload_device=torch.device("cpu"),
                    offload_type="leaf_level", use_stream=use_stream, record_stream=use_stream,
                    low_cpu_mem_usage=True, offload_to_disk_path=str(disk_dir) if disk_dir else None,
                )
                return residency

            ledger.attach_residency(c.name, make, in_ram=True)
            applied.removers.append(lambda name=c.name: ledger.detach_residency(name))
            # what was model-offloaded (encoders, VAE) leaves when a streamed component starts
            applied.removers.append(add_onload_hooks(ledger, c.name, c.module, lambda: [o.name for o in whole]))
            if ledger.backend is not None:  # the pinned allocator's cache of diffusers' per-layer pins goes back
                applied.removers.append(ledger.backend.empty_host_cache)
        return applied

    @staticmethod
    def streams(c, ledger) -> bool:
        if c.role == "vae":
            return False
        return ledger.offload_device != "disk" or c.role == "transformer"

    def after_run(self, components, ledger, applied) -> None:
        ledger.offload([c.name for c in components if not self.streams(c, ledger)])
