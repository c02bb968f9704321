"""One module's tensors and the place they wait while off the compute device.

A ``TensorStore`` keeps, for every parameter and buffer of a module, a host copy or a key into a safetensors file
(disk offload). On a GPU (a ``backend`` given) the store only keeps the books and the host side: the device side is
``slabs.DeviceSlabs`` (fixed slabs reused through events) and the pinned side ``host_pool.HostPool`` (streamed
tensors only, packed into a few pinned slabs). Without a backend (computing on the CPU) loading and evicting
move nothing for CPU offload and read the file for disk offload, so the same hooks run everywhere.

Why not diffusers' ``ModuleGroup``: it keeps no ledger of what is where, cannot leave part of a module
resident while the rest streams, pins silently, and its disk mode leaves uninitialised CPU tensors behind
instead of freeing them; the ledger and the UI need all four.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

log = logging.getLogger(__name__)


@dataclass
class Slot:
    """One tensor: every (module, attribute) that holds it (tied weights have several), and its host copy."""

    key: str
    owners: list[tuple[torch.nn.Module, str, bool]]  # (module, attribute name, is a parameter)
    nbytes: int
    shape: tuple[int, ...]
    dtype: torch.dtype
    requires_grad: bool = False
    host: torch.Tensor | None = None  # None when the host place is a file
    on_compute: bool = False


def _current(owner: tuple[torch.nn.Module, str, bool]) -> torch.Tensor:
    module, name, is_param = owner
    return (module._parameters if is_param else module._buffers)[name]


def stored_key(key: str, stored) -> str | None:
    """The name a tensor has in a file written before peft wrapped its layer (``x.base_layer.weight`` was
    ``x.weight``), or None when the file does not hold it."""
    if key in stored:
        return key
    alias = key.replace(".base_layer.", ".")
    return alias if alias in stored else None


def held_tensor(slot: Slot) -> torch.Tensor:
    """The tensor the module holds for this slot now."""
    return _current(slot.owners[0])


def set_tensor(slot: Slot, tensor: torch.Tensor) -> None:
    """Point every owner of the slot at ``tensor`` (one Parameter for all, so tied weights stay tied)."""
    if any(is_param for *_, is_param in slot.owners):
        tensor = torch.nn.Parameter(tensor, requires_grad=slot.requires_grad and tensor.is_floating_point())
    for module, name, is_param in slot.owners:
        (module._parameters if is_param else module._buffers)[name] = tensor


class TensorStore:
    """The tensors of ``module`` between ``compute`` (a device string) and their host place ("cpu" or "disk")."""

    def __init__(self, module: torch.nn.Module, compute: str, place: str, disk_file: Path | None = None,
                 backend=None):
        self.module = module
        self.compute = torch.device(compute)
        self.place = place
        self.disk_file = disk_file
        self.backend = backend
        self.slots: dict[str, Slot] = collect_slots(module)
        self.moved_bytes = 0
        self._noop = backend is None and self.compute.type == "cpu" and place == "cpu"
        self._file = None
        self._init_host()

    # ------------------------------------------------------------ setup
    def _init_host(self) -> None:
        """Give every tensor its host copy (pageable; pinning is the streamer's, for what streams) or file key,
        and leave it there, off the compute device."""
        if self.place == "disk":
            self._init_disk()
            return
        for slot in self.slots.values():
            t = _current(slot.owners[0])
            if t.device.type == "meta" and self.backend is None:
                raise RuntimeError(f"{slot.key} has no data (meta tensor); load the module before streaming it")
            if self._noop:  # the CPU is both places: share the storage, only keep the books
                slot.host = t
                continue
            host = t.detach().to("cpu") if t.device.type not in ("cpu", "meta") else t.detach()
            slot.host = host
            self._set(slot, host)

    def source(self, slot: Slot) -> torch.Tensor:
        """The host tensor a copy to the device reads (for disk offload: read from the file now, pageable)."""
        if self.place != "disk":
            return slot.host
        if self._file is None:
            self._file = safe_open(str(self.disk_file), framework="pt")
        return self._file.get_tensor(slot.key)

    def home(self, slot: Slot) -> torch.Tensor:
        """What the module holds for a tensor that is off the device: its host copy, or meta with disk offload."""
        if self.place == "disk":
            return torch.empty(slot.shape, dtype=slot.dtype, device="meta")
        return slot.host

    def close(self) -> None:
        self._file = None

    def _init_disk(self) -> None:
        assert self.disk_file is not None
        stored: set[str] = set()
        if self.disk_file.is_file():
            with safe_open(str(self.disk_file), framework="pt") as f:
                stored = set(f.keys())
        missing = [k for k in self.slots if k not in stored]
        if missing:
            # new tensors since the file was written (a LoRA loaded while the module waited on disk; peft also
            # renames the wrapped weights): write one file with both, the stored ones read back under their new
            # names and the new ones from memory
            tensors = {}
            if stored:
                with safe_open(str(self.disk_file), framework="pt") as f:
                    for k in self.slots:
                        name = stored_key(k, stored)
                        if name is not None:
                            tensors[k] = f.get_tensor(name)
            missing = [k for k in missing if k not in tensors]
            for k in missing:
                t = _current(self.slots[k].owners[0])
                if t.device.type == "meta":
                    raise RuntimeError(f"{k} is neither in {self.disk_file.name} nor in memory")
                tensors[k] = t.detach().to("cpu").contiguous()
            self.disk_file.parent.mkdir(parents=True, exist_ok=True)
            save_file(tensors, str(self.disk_file))
            del tensors
        for slot in self.slots.values():
            self._set(slot, torch.empty(slot.shape, dtype=slot.dtype, device="meta"))
            slot.on_compute = False

    # ------------------------------------------------------------ moves
    def keys_under(self, prefix: str) -> list[str]:
        return [k for k in self.slots if k.startswith(prefix)]

    def bytes_of(self, keys: list[str]) -> int:
        return sum(self.slots[k].nbytes for k in keys)

    def load(self, keys: list[str]) -> int:
        """Without a backend (the CPU computes): put these tensors on it; returns their bytes."""
        todo = [self.slots[k] for k in keys if not self.slots[k].on_compute]
        if not todo:
            return 0
        with torch.inference_mode(False), torch.no_grad():
            if self.place == "disk":
                with safe_open(str(self.disk_file), framework="pt") as f:
                    for slot in todo:
                        self._set(slot, f.get_tensor(slot.key))
                        self.moved_bytes += slot.nbytes
            elif not self._noop:
                for slot in todo:
                    self._set(slot, slot.host.to(self.compute))
                    self.moved_bytes += slot.nbytes
        for slot in todo:
            slot.on_compute = True
        return sum(slot.nbytes for slot in todo)

    def evict(self, keys: list[str]) -> int:
        """Send these tensors back to their host place; returns the bytes that left the compute device."""
        freed = 0
        for k in keys:
            slot = self.slots[k]
            if not slot.on_compute:
                continue
            slot.on_compute = False
            freed += slot.nbytes
            if self._noop:
                continue
            if self.place == "disk":
                self._set(slot, torch.empty(slot.shape, dtype=slot.dtype, device="meta"))
            else:
                self._set(slot, slot.host)
        return freed

    def restore(self) -> None:
        """Leave the store: every tensor on its host copy (cpu) or on meta with the file kept (disk)."""
        self.evict(list(self.slots))

    # ------------------------------------------------------------ helpers
    def _set(self, slot: Slot, tensor: torch.Tensor) -> None:
        set_tensor(slot, tensor)



def module_fingerprint(module: torch.nn.Module) -> tuple:
    """Changes when tensors are added or removed (a LoRA loaded): a strategy on the module must be re-applied."""
    return tuple(sorted(k for k, _ in _named_tensors(module)))


def _named_tensors(module: torch.nn.Module):
    yield from module.named_parameters(remove_duplicate=True)
    yield from module.named_buffers(remove_duplicate=True)


def collect_slots(module: torch.nn.Module) -> dict[str, Slot]:
    """Every tensor once, under its first dotted name, with every place that holds it."""
    by_id: dict[int, Slot] = {}
    slots: dict[str, Slot] = {}
    for prefix, sub in module.named_modules(remove_duplicate=False):
        for table, is_param in ((sub._parameters, True), (sub._buffers, False)):
            for name, t in table.items():
                if t is None:
                    continue
                slot = by_id.get(id(t))
                if slot is None:
                    key = f"{prefix}.{name}" if prefix else name
                    slot = Slot(key, [], t.numel() * t.element_size(), tuple(t.shape), t.dtype,
                                bool(getattr(t, "requires_grad", False)))
                    by_id[id(t)] = slot
                    slots[key] = slot
                owner = (sub, name, is_param)
                if owner not in [(m, n, p) for m, n, p in slot.owners]:
                    slot.owners.append(owner)
    return slots

