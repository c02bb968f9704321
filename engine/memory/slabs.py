"""The device side of a streamed transformer: a fixed set of slabs, allocated once per run, reused through events.

``prefetch + 1`` slabs, each the size of the largest streamed group it takes (tensors packed at 256-byte offsets),
and one slab for the resident part. Group ``g`` always lands in slab ``g % n``. Before a copy overwrites slab ``k`` the
side stream waits on the "group done" event the compute stream recorded when the block that last read slab ``k``
finished; before computing, the compute stream waits on the copy's "ready" event. Nothing is allocated per step
and nothing relies on ``record_stream``: the device holds the resident slab plus the ring, whatever the host's
run-ahead, which is exactly what the plan counts.

While a group computes its parameters are views into its slab; when it is done they point back at their host
copy (pinned view, pageable tensor or, with disk offload, meta).
"""

from __future__ import annotations

import torch

from engine.memory.host_pool import aligned
from engine.memory.transfer import Slot, set_tensor


def packed_bytes(slots: list[Slot]) -> tuple[list[int], int]:
    """Offsets of these tensors packed one after the other (256-byte aligned), and the bytes they take."""
    offsets, total = [], 0
    for slot in slots:
        offsets.append(total)
        total += aligned(slot.nbytes)
    return offsets, total


def ring_size(n_groups: int, prefetch: int) -> int:
    return min(n_groups, prefetch + 1)


def slab_sizes(group_bytes: list[int], prefetch: int) -> list[int]:
    """Bytes of each ring slab: group ``g`` always lands in slab ``g % n``, so slab ``k`` is as large as the largest
    group it takes. The planner's streaming window is ``sum(slab_sizes(...))`` (pure arithmetic, no torch)."""
    n = ring_size(len(group_bytes), prefetch)
    return [max(group_bytes[k::n]) for k in range(n)]


class DeviceSlabs:
    def __init__(self, backend, kept: list[Slot], groups: list[list[Slot]], prefetch: int, store,
                 side_stream: bool = True):
        self.backend = backend
        self.store = store  # source(slot): the host tensor to copy from; home(slot): what the module holds after
        self.kept = kept
        self.groups = groups
        self.kept_offsets, self.kept_bytes = packed_bytes(kept)
        self.group_offsets = [packed_bytes(g)[0] for g in groups]
        self.sizes = slab_sizes([packed_bytes(g)[1] for g in groups], prefetch) if groups else []
        self.n = len(self.sizes)
        self.own_stream = side_stream
        self.side = None
        self.kept_slab: torch.Tensor | None = None
        self.host_device = torch.device("cpu")
        self.slabs: list[torch.Tensor] = []
        self.done: list[object | None] = []  # per slab: the event after the last block that read it
        self.owner: list[int | None] = []  # per slab: the group whose tensors point into it now
        self.ready: dict[int, object] = {}

    @property
    def device_bytes(self) -> int:
        """Bytes of device memory these slabs hold now (resident slab plus the ring)."""
        kept = self.kept_bytes if self.kept_slab is not None else 0
        return kept + (sum(self.sizes) if self.slabs else 0)

    @property
    def planned_bytes(self) -> int:
        return self.kept_bytes + sum(self.sizes)

    # ------------------------------------------------------------ resident part
    def load_kept(self) -> None:
        """The resident part onto the device, once per arrival (pageable source: residents are never pinned). With
        CPU offload the host copy is dropped: a resident weight lives on the device only, as ``module.to`` does."""
        if self.kept_slab is not None or not self.kept:
            return
        self.kept_slab = self.backend.alloc_device(max(self.kept_bytes, 1))
        for slot, offset in zip(self.kept, self.kept_offsets, strict=True):
            view = _view(self.kept_slab, offset, slot)
            self.backend.copy(view, self.store.source(slot), self.backend.compute, self.kept_slab)
            set_tensor(slot, view)
            slot.on_compute = True
        if self.store.place == "cpu":
            self.backend.synchronize(self.backend.compute)  # the copies have read the host copies: they can go
            for slot in self.kept:
                self.host_device = slot.host.device
                slot.host = None

    def evict_kept(self) -> None:
        if self.kept_slab is None:
            return
        if self.store.place == "cpu":
            self.backend.synchronize(self.backend.compute)  # the resident weights back to RAM (a rare move)
        for slot, offset in zip(self.kept, self.kept_offsets, strict=True):
            if self.store.place == "cpu" and slot.host is None:
                host = torch.empty(slot.shape, dtype=slot.dtype, device=self.host_device)
                host.copy_(_view(self.kept_slab, offset, slot))
                slot.host = host
            slot.on_compute = False
            set_tensor(slot, self.store.home(slot))
        self.backend.free_device(self.kept_slab)  # only the compute stream touched it: stream order suffices
        self.kept_slab = None

    # ------------------------------------------------------------ the ring
    def allocate(self) -> None:
        if self.slabs or not self.n:
            return
        if self.side is None:
            self.side = self.backend.new_stream() if self.own_stream else self.backend.compute
        self.slabs = [self.backend.alloc_device(size) for size in self.sizes]
        self.done = [None] * self.n
        self.owner = [None] * self.n

    def release(self) -> None:
        """Free the ring: first the compute stream (where the slabs were allocated) waits for the side stream,
        so the allocator never hands a slab out while a copy into it may still run."""
        if not self.slabs:
            return
        for k in range(self.n):
            if self.owner[k] is not None:
                self.unload(self.owner[k])
        self.backend.wait(self.backend.compute, self.backend.record(self.side))
        for slab in self.slabs:
            self.backend.free_device(slab)
        self.slabs, self.done, self.owner = [], [], []
        self.ready.clear()

    def slab_of(self, g: int) -> int:
        return g % self.n

    def load(self, g: int) -> int:
        """Queue group ``g``'s copy into its slab on the side stream; returns the bytes queued."""
        self.allocate()
        k = self.slab_of(g)
        if self.owner[k] is not None and self.owner[k] != g:
            self.unload(self.owner[k])  # loaded but never computed (a step cache skipped it)
        if self.done[k] is not None:
            self.backend.wait(self.side, self.done[k])  # every block that read slab k has finished
        slab = self.slabs[k]
        nbytes = 0
        for slot, offset in zip(self.groups[g], self.group_offsets[g], strict=True):
            view = _view(slab, offset, slot)
            self.backend.copy(view, self.store.source(slot), self.side, slab)
            set_tensor(slot, view)
            slot.on_compute = True
            nbytes += slot.nbytes
        self.ready[g] = self.backend.record(self.side)
        self.owner[k] = g
        return nbytes

    def wait_ready(self, g: int) -> bool:
        """The compute stream waits for group ``g``'s copy (a device-side wait; the host goes on)."""
        event = self.ready.pop(g, None)
        if event is None:
            return False
        self.backend.wait(self.backend.compute, event)
        return True

    def read(self, g: int) -> None:
        self.backend.read(self.backend.compute, self.slabs[self.slab_of(g)])

    def finished(self, g: int) -> None:
        """The group's last block has been queued: mark the slab's "done" point and point the group home."""
        k = self.slab_of(g)
        self.done[k] = self.backend.record(self.backend.compute)
        self.unload(g)

    def unload(self, g: int) -> None:
        k = self.slab_of(g)
        if self.owner and self.owner[k] == g:
            for slot in self.groups[g]:
                slot.on_compute = False
                set_tensor(slot, self.store.home(slot))
            self.owner[k] = None
            self.ready.pop(g, None)


def _view(slab: torch.Tensor, offset: int, slot: Slot) -> torch.Tensor:
    return slab[offset:offset + slot.nbytes].view(slot.dtype).view(slot.shape)
