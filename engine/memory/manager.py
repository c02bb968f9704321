"""The memory ledger: every module that holds weights, where its weights are, and a budget.

Nothing in the engine moves weights behind the ledger's back: ``ModelStore`` registers every
module it loads, runners call ``ensure_loaded`` before they compute and ``offload`` after, and
``snapshot()`` reads the real placement of every parameter so that the readout can never lie.
"""

from __future__ import annotations

import contextlib
import functools
import re
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from engine.errors import OutOfBudgetError
from engine.memory import devices, disk
from engine.memory.backend import backend_for
from engine.memory.host_pool import host_pinned_bytes
from engine.memory.placement import _device_name, bytes_by_device, module_bytes, real_device, weights_dtype

__all__ = ["DISK", "ROLES", "MemoryManager", "ModuleEntry", "bytes_by_device", "module_bytes", "real_device"]

ROLES = ("transformer", "text_encoder", "image_encoder", "projector", "vae", "adapter", "lora", "other")
DISK = "disk"


@dataclass
class ModuleEntry:
    name: str
    role: str
    module: torch.nn.Module = field(repr=False)
    bytes: int
    dtype: str
    device: str
    last_used: float = 0.0
    disk_file: Path | None = None
    # a swap strategy that owns this module's placement at block granularity (see block_stream.py)
    residency: Any = field(default=None, repr=False)
    # the entry whose module holds these tensors (a LoRA's layers inside the transformer): shown on its own row,
    # counted and moved only with that parent
    part_of: str = ""

    def as_row(self) -> dict:
        return {"name": self.name, "role": self.role, "bytes": self.bytes, "dtype": self.dtype, "device": self.device,
                "part_of": self.part_of}


class MemoryManager:
    """Ledger, budget and least-recently-used eviction for one compute device.

    ``offload_device`` is ``"cpu"`` (the usual case) or ``"disk"``: disk offload writes the
    weights to a safetensors file and leaves the module on the meta device, for machines short
    of RAM, and it gives CPU-only tests two truly different places to check residency against.
    """

    def __init__(
        self,
        compute_device: str | None = None,
        offload_device: str = "cpu",
        budget_bytes: int | None = None,
        disk_dir: str | Path | None = None,
        backend=None,
    ):
        self.compute_device = _device_name(torch.device(compute_device or devices.default_compute_device()))
        if offload_device not in ("cpu", DISK):
            raise ValueError("offload_device must be 'cpu' or 'disk'")
        self.offload_device = offload_device
        # what the streaming modes ask of the accelerator (None on the CPU; a SimBackend in the CPU tests)
        self.backend = backend if backend is not None else backend_for(self.compute_device)
        self.budget_bytes = budget_bytes
        self._disk_dir = Path(disk_dir) if disk_dir else None
        self._entries: dict[str, ModuleEntry] = {}
        self._in_use: set[str] = set()
        self._lock = threading.RLock()
        self.session_budget: int | None = None  # a run's max_vram_gb, while it runs
        self.bytes_moved = 0
        self.peak_compute = 0

    @functools.cached_property
    def swap(self):
        """The memory-mode controller, made on first use: the strategies import diffusers' hooks (and with them
        diffusers, peft and torch._dynamo: seconds), which the app's start must not wait for."""
        from engine.memory.session import SwapController  # session imports the strategies, which import us

        return SwapController(self)

    # ------------------------------------------------------------ registry
    def register(self, name: str, module: torch.nn.Module, role: str = "other",
                 part_of: torch.nn.Module | None = None) -> ModuleEntry:
        """``part_of``: a registered module that contains ``module``'s tensors (peft layers inside a
        transformer): the row shows them, totals and moves count them once, with the parent."""
        if role not in ROLES:
            raise ValueError(f"unknown role {role!r}")
        with self._lock:
            parent = self.name_of(part_of) if part_of is not None else ""  # unregistered parent: a row of its own
            entry = ModuleEntry(name, role, module, module_bytes(module), weights_dtype(module), real_device(module),
                                time.monotonic(), part_of=parent or "")
            self._entries[name] = entry
            return entry

    def name_of(self, module: torch.nn.Module) -> str | None:
        return next((e.name for e in list(self._entries.values()) if e.module is module), None)

    def unregister(self, name: str) -> None:
        with self._lock:
            entry = self._entries.get(name)
            if entry is not None and entry.residency is not None:
                self.detach_residency(name)
            entry = self._entries.pop(name, None)
            if entry and entry.disk_file:
                entry.disk_file.unlink(missing_ok=True)

    def entry(self, name: str) -> ModuleEntry:
        return self._entries[name]

    def names(self) -> list[str]:
        return list(self._entries)

    def __contains__(self, name: str) -> bool:
        return name in self._entries

    def refresh(self, names: list[str] | None = None) -> None:
        """Re-read placement and size after something (a diffusers hook, a LoRA) changed a module."""
        with self._lock:
            for name in names or list(self._entries):
                e = self._entries[name]
                if e.residency is not None:  # the strategy keeps its own books
                    continue
                dev = real_device(e.module)
                e.device = DISK if dev == "meta" and e.disk_file else dev
                if dev != "meta":
                    e.bytes = module_bytes(e.module)

    # ------------------------------------------------------------ budget
    def effective_budget(self) -> int | None:
        if self.session_budget is not None:
            return self.session_budget
        if self.budget_bytes is not None:
            return self.budget_bytes
        planned = devices.planning_budget(self.compute_device)  # free + held by us - a stated reserve, as planned
        return planned[0] if planned else None

    def compute_bytes(self, e: ModuleEntry) -> int:
        """Bytes of this module on the compute device now (partial for a streamed transformer; 0 for a part,
        which its parent counts)."""
        if e.part_of:
            return 0
        if e.residency is not None:
            return e.residency.on_compute
        return e.bytes if e.device == self.compute_device else 0

    def resident_bytes(self) -> int:
        return sum(self.compute_bytes(e) for e in list(self._entries.values()))

    def _need(self, e: ModuleEntry) -> int:
        return e.residency.resident_need() if e.residency is not None else e.bytes

    # ------------------------------------------------------------ run statistics
    def reset_run_stats(self) -> None:
        self.bytes_moved = 0
        self.peak_compute = self.resident_bytes()

    def _note(self, copied: int = 0) -> None:
        self.bytes_moved += copied
        self.peak_compute = max(self.peak_compute, self.resident_bytes())

    def run_stats(self) -> dict:
        """The run's figures; ``device_slab_bytes``: what the streamed transformers' slabs take on the device (the
        largest of them: Wan's experts never hold slabs at once); ``pinned_bytes``: page-locked host memory now."""
        slabs = [getattr(e.residency, "device_slab_bytes", 0) for e in list(self._entries.values())]
        return {"bytes_moved": self.bytes_moved, "peak_compute_bytes": self.peak_compute,
                "device_slab_bytes": max(slabs, default=0), "pinned_bytes": host_pinned_bytes()}

    # ------------------------------------------------------------ block-level residency
    def attach_residency(self, name: str, make, in_ram: bool = False) -> Any:
        """Hand this module's placement to a strategy: ``make(module, place, disk_file)`` builds it (a
        ``BlockStreamer``) with the module's tensors at their host place (``in_ram``: in RAM, whatever the
        place)."""
        with self._lock:
            e = self._entries[name]
            if e.residency is not None:
                self.detach_residency(name)
            disk_file = None
            if in_ram:
                self.to_host([name])
            elif self.offload_device == DISK:
                disk_file = e.disk_file if e.device == DISK else None
                if disk_file is None:  # the weights are in memory: a file left from an earlier life is stale
                    disk_file = self._disk_path(name)
                    disk_file.unlink(missing_ok=True)
                e.disk_file = None  # the strategy owns the file while it lives
            elif e.device == DISK:
                self._load_from_disk(e)
            e.residency = make(e.module, self.offload_device, disk_file)
            e.device = self.offload_device
            self._note()
            return e.residency

    def detach_residency(self, name: str) -> None:
        """Take the strategy off: its hooks go, the tensors wait at the host place as before."""
        with self._lock:
            e = self._entries[name]
            residency, e.residency = e.residency, None
            if residency is None:
                return
            residency.remove()
            disk_file = getattr(residency, "disk_file", None)
            if disk_file is not None:
                e.disk_file = disk_file
                e.device = DISK
            else:
                e.device = real_device(e.module)
            self._note()

    def to_host(self, names: list[str]) -> None:
        """Weights into RAM (from the compute device or from disk), e.g. for a run on the CPU."""
        with self._lock:
            for name in names:
                e = self._entries[name]
                if e.residency is not None:
                    self.detach_residency(name)
                if e.device == DISK:
                    self._load_from_disk(e)
                elif e.device != "cpu":
                    e.module.to("cpu")
                    e.device = real_device(e.module)
            self._note()

    def materialise(self, names: list[str]) -> None:
        """These modules wholly real and in memory before a job changes them (peft wraps layers, renaming their
        tensors; OmniX adds adapters and takes them off): a streamer or a disk file knows a module by the tensors it
        had, so what is added on the meta device exists nowhere. The mode covering them comes off whole (the next
        run re-applies it to the changed module); a module wholly in RAM or on the compute device stays put."""
        with self._lock:
            # layerwise's disk groups leave uninitialised CPU tensors: its residency, not the device, says so
            away = [n for n in names if n in self._entries and (
                self._entries[n].residency is not None or self._entries[n].device == DISK
                or real_device(self._entries[n].module) in ("meta", "mixed"))]
            if away and "swap" in self.__dict__:  # the controller exists: a mode may cover them
                self.swap.remove(away)
            self.to_host(away)

    def disk_dir(self, name: str) -> Path:
        """A folder of its own for a module's streaming files."""
        return self._disk_path(name).with_suffix(".groups")

    def residency_changed(self, copied: int) -> None:
        """Called by a streamer after every group move (no lock: it runs inside a forward pass)."""
        self._note(copied)

    def _can_evict(self) -> bool:
        return self.offload_device != self.compute_device

    def ensure_loaded(self, names: list[str] | str) -> None:
        """Move these modules to the compute device, evicting least-recently-used ones to fit."""
        names = [names] if isinstance(names, str) else list(names)
        with self._lock:
            missing = [n for n in names if n not in self._entries]
            if missing:
                raise KeyError(f"not registered: {', '.join(missing)}")
            budget = self.effective_budget()
            for name in names:
                e = self._entries[name]
                if e.part_of:  # it moves with its parent
                    continue
                if e.device != self.compute_device:
                    if budget is not None and self._can_evict():
                        self._make_room(self._need(e), budget, keep=set(names))
                    self._move(e, self.compute_device)
                e.last_used = time.monotonic()

    def _make_room(self, need: int, budget: int, keep: set[str]) -> None:
        if need > budget:
            raise OutOfBudgetError(
                f"{_gib(need)} GiB module does not fit in the {_gib(budget)} GiB budget; "
                "pick a swap mode (block swap, layer streaming) or a smaller/quantized model"
            )
        while self.resident_bytes() + need > budget:
            victims = [
                e for e in self._entries.values()
                if self.compute_bytes(e) and e.name not in keep and e.name not in self._in_use
            ]
            if not victims:
                held = ", ".join(sorted(keep | self._in_use))
                raise OutOfBudgetError(
                    f"needs {_gib(need)} GiB more but only {_gib(budget - self.resident_bytes())} GiB of the "
                    f"{_gib(budget)} GiB budget is free and everything resident is in use ({held})"
                )
            victim = min(victims, key=lambda e: e.last_used)
            self._move(victim, self.offload_device)

    def offload(self, names: list[str] | str) -> None:
        names = [names] if isinstance(names, str) else list(names)
        with self._lock:
            for name in names:
                e = self._entries[name]
                # a streamed module holds device slabs and pinned memory even where compute and offload are one
                # device (the CPU tests' simulated GPU): it must let go of them too
                holds = e.residency is not None and e.residency.on_compute
                if name in self._in_use or e.part_of:
                    continue
                if holds:
                    e.residency.evict_all()
                    e.device = self.offload_device
                elif e.device != self.offload_device:
                    self._move(e, self.offload_device)
            devices.free_cached()

    def offload_all(self) -> None:
        self.offload([n for n in self._entries if n not in self._in_use])

    @contextlib.contextmanager
    def use(self, names: list[str] | str):
        """Load these modules and protect them from eviction for the duration of the block."""
        names = [names] if isinstance(names, str) else list(names)
        with self._lock:
            self.ensure_loaded(names)
            self._in_use.update(names)
        try:
            yield
        finally:
            with self._lock:
                self._in_use.difference_update(names)
                now = time.monotonic()
                for n in names:
                    if n in self._entries:
                        self._entries[n].last_used = now

    # ------------------------------------------------------------ moves
    def _move(self, e: ModuleEntry, target: str) -> None:
        if e.residency is not None:
            if target == self.compute_device:
                e.residency.load_resident()
            else:
                e.residency.evict_all()
            e.device = target
            return
        copied = e.bytes if target != e.device else 0
        if e.device == DISK:
            self._load_from_disk(e)
        if target == DISK:
            self._save_to_disk(e)
        else:
            e.module.to(target)
        e.device = target if target == DISK else real_device(e.module)
        self._note(copied)

    def _disk_path(self, name: str) -> Path:
        if self._disk_dir is None:
            self._disk_dir = Path(tempfile.mkdtemp(prefix="vram-offload-"))
        self._disk_dir.mkdir(parents=True, exist_ok=True)
        return self._disk_dir / (re.sub(r"[^A-Za-z0-9._-]", "_", name) + ".safetensors")

    def _save_to_disk(self, e: ModuleEntry) -> None:
        e.disk_file = self._disk_path(e.name)
        disk.save_module(e.module, e.disk_file)

    def _load_from_disk(self, e: ModuleEntry) -> None:
        assert e.disk_file is not None
        disk.load_module(e.name, e.module, e.disk_file)
        e.disk_file = None
        e.device = "cpu"

    # ------------------------------------------------------------ readout
    def snapshot_row(self, name: str) -> dict:
        """One module's readout row (what ``snapshot`` lists for it), without the device totals."""
        e = self._entries[name]
        return self._row(e)

    def _row(self, e: ModuleEntry) -> dict:
        placed = bytes_by_device(e.module)
        residency = e.residency
        return {
            **e.as_row(),
            "device": DISK if e.device == DISK else real_device(e.module),
            "bytes_on_compute": placed.get(self.compute_device, 0),
            "in_use": e.name in self._in_use,
            "blocks": residency.describe() if residency is not None else "",
        }

    def snapshot(self) -> dict:
        """Per-device totals and per-module residency, read from the real tensors.

        Takes no lock: the UI polls this every second and must not wait while a large module is being
        moved (seconds on a slow bus). A module caught mid-move shows as "mixed", which is the truth."""
        modules = [self._row(e) for e in list(self._entries.values())]  # a copy: the ledger may change meanwhile
        return {
            "compute_device": self.compute_device,
            "offload_device": self.offload_device,
            "budget": self.effective_budget(),
            "resident": sum(m["bytes_on_compute"] for m in modules if not m["part_of"]),
            "devices": devices.device_stats(),
            "modules": modules,
        }


def _gib(n: int) -> str:
    return f"{n / 2**30:.2f}"
