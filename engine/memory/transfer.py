"""One module's tensors and the place they wait while off the compute device.

A ``TensorStore`` keeps, for every parameter and buffer of a module, a host copy (pinned when it can be, so
copies can run asynchronously) or a key into a safetensors file (disk offload). Loading a group of tensors
copies them to the compute device, on a side CUDA stream when one is given; evicting points them back at
their host copy (nothing is copied back: weights do not change during inference) or at the meta device
(disk). When the compute device is the CPU and the host place is the CPU, loading and evicting are no-ops,
so the same code path runs everywhere.

Why not diffusers' ``ModuleGroup``: it keeps no ledger of what is where, cannot leave part of a module
resident while the rest streams, pins silently, and its disk mode leaves uninitialised CPU tensors behind
instead of freeing them; the ledger and the UI need all four.
"""

from __future__ import annotations

import contextlib
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


@dataclass
class PinReport:
    """How much of the host memory that should be pinned really is. Unpinned copies are synchronous."""

    wanted: int = 0
    pinned: int = 0
    error: str = ""

    @property
    def complete(self) -> bool:
        return self.pinned >= self.wanted

    def message(self, what: str) -> str:
        if self.complete or not self.wanted:
            return ""
        return (f"{what}: only {self.pinned / 2**30:.1f} of {self.wanted / 2**30:.1f} GiB of host memory could be "
                f"pinned ({self.error or 'the system refused'}); the rest copies synchronously, so streamed steps "
                "can take 2-3x longer. Free RAM, lower the resident blocks, or raise the locked-memory limit.")


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


def pin(tensor: torch.Tensor) -> torch.Tensor:
    """A pinned copy of a CPU tensor (raises RuntimeError when the system refuses)."""
    out = torch.empty(tensor.shape, dtype=tensor.dtype, pin_memory=True)
    out.copy_(tensor)
    return out


class TensorStore:
    """The tensors of ``module`` between ``compute`` (a device string) and their host place ("cpu" or "disk")."""

    def __init__(self, module: torch.nn.Module, compute: str, place: str, disk_file: Path | None = None,
                 want_pin: bool | None = None, stream: bool = False):
        self.module = module
        self.compute = torch.device(compute)
        self.place = place
        self.disk_file = disk_file
        self.slots: dict[str, Slot] = collect_slots(module)
        self.pins = PinReport()
        self.moved_bytes = 0
        self._noop = self.compute.type == "cpu" and place == "cpu"
        want_pin = self.wants_pin(self.compute, stream) if want_pin is None else want_pin
        self.stream = torch.cuda.Stream(self.compute) if stream and self.compute.type == "cuda" else None
        self._init_host(want_pin)

    # ------------------------------------------------------------ setup
    @staticmethod
    def wants_pin(compute: torch.device, stream: bool) -> bool:
        """Pinned host memory is what lets a copy run asynchronously; only worth it with a side stream."""
        return compute.type == "cuda" and stream

    def _init_host(self, want_pin: bool) -> None:
        """Give every tensor its host copy (or file key) and leave it there, off the compute device."""
        if self.place == "disk":
            self._init_disk()
            return
        for slot in self.slots.values():
            t = _current(slot.owners[0])
            if t.device.type == "meta":
                raise RuntimeError(f"{slot.key} has no data (meta tensor); load the module before streaming it")
            if self._noop and not want_pin:  # the CPU is both places: share the storage, only keep the books
                slot.host = t
                continue
            host = t.detach().to("cpu") if t.device.type != "cpu" else t.detach()
            if want_pin and not host.is_pinned():
                self.pins.wanted += slot.nbytes
                try:
                    host = pin(host)
                    self.pins.pinned += slot.nbytes
                except RuntimeError as exc:  # locked-memory limit, WSL, no driver: say so, never silently
                    self.pins.error = str(exc).splitlines()[0][:200]
            slot.host = host
            self._set(slot, host)

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
        """Put these tensors on the compute device; returns their bytes (what is now on it that was not).
        On a side stream the copies are only queued: wait for ``ready()``'s event before computing."""
        todo = [self.slots[k] for k in keys if not self.slots[k].on_compute]
        if not todo:
            return 0
        # the stream that will compute with these tensors: read before switching to the side stream
        compute_stream = torch.cuda.current_stream(self.compute) if self.stream is not None else None
        with torch.inference_mode(False), torch.no_grad():
            ctx = torch.cuda.stream(self.stream) if self.stream is not None else contextlib.nullcontext()
            with ctx:
                if self.place == "disk":
                    self._load_from_disk(todo, compute_stream)
                elif not self._noop:
                    for slot in todo:
                        dev = slot.host.to(self.compute, non_blocking=self.stream is not None)
                        self._track(dev, compute_stream)
                        self._set(slot, dev)
                        self.moved_bytes += slot.nbytes
        for slot in todo:
            slot.on_compute = True
        return sum(slot.nbytes for slot in todo)

    def _load_from_disk(self, todo: list[Slot], compute_stream) -> None:
        with safe_open(str(self.disk_file), framework="pt") as f:
            for slot in todo:
                t = f.get_tensor(slot.key)
                if self.compute.type != "cpu":
                    t = t.to(self.compute, non_blocking=False)  # pageable source: a synchronous copy
                    self._track(t, compute_stream)
                self._set(slot, t)
                self.moved_bytes += slot.nbytes

    @staticmethod
    def _track(tensor: torch.Tensor, compute_stream) -> None:
        # Memory allocated on the side stream and used on the compute stream: without record_stream the
        # allocator could hand it to the next copy while a kernel still reads it.
        if compute_stream is not None:
            tensor.record_stream(compute_stream)

    def ready(self):
        """An event the compute stream must wait for before using what ``load`` queued (None without a stream)."""
        if self.stream is None:
            return None
        event = torch.cuda.Event()
        event.record(self.stream)
        return event

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

