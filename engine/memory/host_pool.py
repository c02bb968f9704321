"""Page-locked host memory for the weights that stream, packed into a few large pinned slabs.

PyTorch's pinned allocator rounds every request up to a power of two and caches what is freed: pinning a real
transformer tensor by tensor locks about 1.5x its weights (FLUX.1-dev 22.2 -> 34.6 GiB) and keeps it locked.
Here the streamed tensors are packed (largest first) into power-of-two bins of ``BIN_BYTES``, each one pinned
allocation, and every tensor's host copy becomes a view into its bin; the pageable original is dropped as it is
copied, so host RAM holds each streamed weight once. A pool is pinned only while its model computes (a Wan
expert's pool is released when the other expert takes the device) and everything goes back, cache included,
when it is released.

``host_pinned_bytes()``: the page-locked bytes the app holds now, every model together.
"""

from __future__ import annotations

import logging
import weakref
from dataclasses import dataclass

import torch

from engine.memory.transfer import Slot, set_tensor

log = logging.getLogger(__name__)

MiB = 2**20
BIN_BYTES = 1024 * MiB  # a power of two: the allocator rounds nothing; big enough that there are few of them
MIN_BIN = 16 * MiB
ALIGN = 256  # every tensor starts on a 256-byte boundary (vector loads, DMA)

_POOLS: weakref.WeakSet = weakref.WeakSet()


def aligned(n: int) -> int:
    return -(-n // ALIGN) * ALIGN


def pow2(n: int) -> int:
    return 1 << max(0, n - 1).bit_length() if n > 0 else 0


def pack(sizes: list[int], bin_bytes: int = BIN_BYTES) -> tuple[list[tuple[int, int]], list[int]]:
    """First-fit decreasing into power-of-two bins: (bin, offset) per item and each bin's size. The least-full
    bin (a model's tail) is packed again into bins half the size, down to ``MIN_BIN``, so that what the
    power-of-two rounding wastes stays a few MiB, not half a bin."""
    place: list[tuple[int, int]] = [(0, 0)] * len(sizes)
    used: list[int] = []
    caps: list[int] = []
    members: list[list[int]] = []
    for i in sorted(range(len(sizes)), key=lambda i: -sizes[i]):
        need = aligned(sizes[i])
        b = next((b for b in range(len(used)) if used[b] + need <= caps[b]), None)
        if b is None:
            used.append(0)
            caps.append(max(bin_bytes, pow2(need)))
            members.append([])
            b = len(used) - 1
        place[i] = (b, used[b])
        used[b] += need
        members[b].append(i)
    bins = [pow2(u) for u in used]
    if not used:
        return place, bins
    tail = min(range(len(used)), key=lambda b: used[b])
    half = caps[tail] // 2
    largest = max(aligned(sizes[i]) for i in members[tail])
    if used[tail] < caps[tail] and half >= MIN_BIN and half >= largest and bins[tail] > half:
        sub_place, sub_bins = pack([sizes[i] for i in members[tail]], half)
        if sum(sub_bins) < bins[tail]:
            base = len(bins) - 1
            keep = [b for b in range(len(bins)) if b != tail]
            renumber = {old: new for new, old in enumerate(keep)}
            place = [(renumber[b], off) if b != tail else (0, 0) for b, off in place]
            for j, i in enumerate(members[tail]):
                b, off = sub_place[j]
                place[i] = (base + b, off)
            bins = [bins[b] for b in keep] + sub_bins
    return place, bins


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
        return (f"{what}: only {self.pinned / 2**30:.1f} of {self.wanted / 2**30:.1f} GiB of streamed weights could "
                f"be pinned ({self.error or 'the system refused'}); the rest copies synchronously, so streamed "
                "steps can take 2-3x longer. Page-locked memory comes out of the machine's free RAM (it is not "
                "governed by ulimit -l): close other programs, keep more blocks resident, or use disk offload.")


class HostPool:
    """The pinned home of one model's streamed tensors while it computes."""

    def __init__(self, backend, label: str = ""):
        self.backend = backend
        self.label = label
        self.slabs: list[torch.Tensor] = []
        self.pinned_bytes = 0  # what the allocator locks for our slabs (their power-of-two sizes)
        self.slots: list[Slot] = []
        self.report = PinReport()
        _POOLS.add(self)

    @property
    def active(self) -> bool:
        return bool(self.slots)

    def pin(self, slots: list[Slot]) -> PinReport:
        """Move these slots' host copies into pinned slabs (bin by bin). A refusal stops pinning: what is left
        stays pageable, and the report says so (the caller logs it and puts it in the result)."""
        self.report = PinReport(wanted=sum(s.nbytes for s in slots))
        places, bins = pack([s.nbytes for s in slots])
        members: list[list[tuple[Slot, int]]] = [[] for _ in bins]
        for slot, (b, offset) in zip(slots, places, strict=True):
            members[b].append((slot, offset))
        for size, items in zip(bins, members, strict=True):
            try:
                slab = self.backend.alloc_pinned(size)
            except RuntimeError as exc:  # the system refused (little free RAM, WSL, no driver): never silently
                self.report.error = str(exc).splitlines()[0][:200]
                log.warning("%s: pinning stopped after %.1f GiB: %s", self.label, self.report.pinned / 2**30,
                            self.report.error)
                break
            self.slabs.append(slab)
            self.pinned_bytes += self.backend.pinned_size(size)
            for slot, offset in items:
                view = slab[offset:offset + slot.nbytes].view(slot.dtype).view(slot.shape)
                view.copy_(slot.host)
                self._rehome(slot, view)  # the pageable copy goes as soon as nothing points at it
                self.slots.append(slot)
                self.report.pinned += slot.nbytes
        return self.report

    def release(self) -> None:
        """Every pinned tensor back into pageable memory, the slabs freed and the allocator's cache emptied."""
        if not self.slabs:
            return
        for slot in self.slots:
            fresh = torch.empty(slot.shape, dtype=slot.dtype, device=slot.host.device)
            fresh.copy_(slot.host)
            self._rehome(slot, fresh)
        self.slots = []
        for slab in self.slabs:
            self.backend.free_pinned(slab)
        self.slabs = []
        self.pinned_bytes = 0
        self.backend.empty_host_cache()

    @staticmethod
    def _rehome(slot: Slot, tensor: torch.Tensor) -> None:
        slot.host = tensor
        if not slot.on_compute:
            set_tensor(slot, tensor)


def host_pinned_bytes() -> int:
    """Page-locked host bytes the app holds now (all models). On CUDA, PyTorch's pinned allocator's own count
    (our slabs, diffusers' layerwise pins and its cache) when that is larger than our books."""
    ours = sum(pool.pinned_bytes for pool in list(_POOLS))
    if torch.cuda.is_available():
        try:
            ours = max(ours, int(torch.cuda.host_memory_stats().get("allocated_bytes.current", 0)))
        except (RuntimeError, AttributeError):
            pass
    return ours
