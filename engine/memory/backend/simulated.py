"""A CPU model of what CUDA does with the streaming layer's operations, strict enough to fail where a GPU would.

Modelled:
- streams that execute their operations in order, events recorded on one stream and waited on by another;
- a host that runs ahead of the device by ``run_ahead`` launches (0: the device keeps up; None: unbounded, the
  device only moves when the host synchronizes): launched operations execute later, in an order the waits allow;
- a caching device allocator (allocated vs reserved bytes, blocks tied to the stream they were allocated on,
  ``record_stream`` keeping a freed block from reuse until the device has passed the recorded point);
- PyTorch's pinned host allocator (every request rounded up to a power of two, freed blocks cached until
  ``empty_host_cache``), and an optional limit past which pinning fails.

Checked, whatever order the device runs things in: every read of a device slab happens after the copy that
filled it, no copy overwrites a slab before every earlier read of it is done, and no slab is freed while a stream
may still use it. "Happens after" is decided with vector clocks over streams and events, so a violation is found
even when the run-ahead chosen for the test happened to execute things in a lucky order.

With ``materialize`` the slabs are real CPU tensors and copies really copy (at issue time; the checks above
say whether a GPU would have seen the same bytes), so a tiny model runs under the simulator and gives pixels;
without it every slab is on the meta device and real-size layouts cost no memory.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from engine.memory.backend import Backend

MiB = 2**20


class SlabRace(RuntimeError):
    """A slab read while a copy into it may be in flight, overwritten while a block may read it, or freed early."""


@dataclass(eq=False)
class SimStream:
    label: str
    index: int
    clock: dict = field(default_factory=dict)
    queue: list = field(default_factory=list)  # launched, not executed yet

    def __repr__(self) -> str:
        return self.label


@dataclass(eq=False)
class SimEvent:
    label: str
    vc: dict | None = None
    op: _Op | None = None


@dataclass(eq=False)
class _Op:
    kind: str
    stream: SimStream
    vc: dict
    event: SimEvent | None = None
    done: bool = False


@dataclass(eq=False)
class _Block:
    label: str
    size: int
    reserved: int
    stream: SimStream
    free: bool = False
    tensor: torch.Tensor | None = None  # held while the block lives (cached too), so its id is never reused
    accesses: list = field(default_factory=list)  # (kind, op) since the last write, the last write first
    record_uses: list = field(default_factory=list)  # ops the block must outlive (record_stream)


def _round_device(nbytes: int) -> tuple[int, int]:
    """(allocated, reserved) for one request, as PyTorch's CUDA caching allocator rounds it."""
    size = max(512, -(-nbytes // 512) * 512)
    if size <= MiB:
        return size, 2 * MiB  # small blocks come from 2 MiB segments (counted whole: an upper bound)
    if size <= 10 * MiB:
        return size, 20 * MiB
    return size, -(-size // (2 * MiB)) * 2 * MiB


class SimBackend(Backend):
    name = "simulated"

    def __init__(self, run_ahead: int | None = 0, materialize: bool = False, pin_limit: int | None = None,
                 total_memory: int = 141 * 2**30):
        self.run_ahead = run_ahead
        self.materialize = materialize
        self.pin_limit = pin_limit
        self._total = total_memory
        self.ops: list[tuple] = []
        self.streams: list[SimStream] = []
        self._pending: list[_Op] = []
        self._events = 0
        self._blocks: dict[int, _Block] = {}  # id(slab tensor) -> block
        self._nblocks = 0
        self.allocated = self.reserved = self.peak_allocated = self.peak_reserved = 0
        self.device_allocs = 0
        self.fraction = 1.0
        self._pinned_live: dict[int, int] = {}  # id(tensor) -> rounded bytes
        self._pinned_cache: dict[int, int] = {}  # rounded size -> cached blocks
        self._npinned = 0
        self.pinned_reserved = self.peak_pinned = 0
        self.compute = self._stream()

    # ------------------------------------------------------------ streams and the device's progress
    def _stream(self) -> SimStream:
        s = SimStream(f"s{len(self.streams)}", len(self.streams))
        self.streams.append(s)
        return s

    def new_stream(self):
        s = self._stream()
        self.ops.append(("new_stream", s.label))
        return s

    def _launch(self, kind: str, stream: SimStream, event: SimEvent | None = None) -> _Op:
        stream.clock[stream.index] = stream.clock.get(stream.index, 0) + 1
        op = _Op(kind, stream, dict(stream.clock), event)
        stream.queue.append(op)
        self._pending.append(op)
        if self.run_ahead is not None:
            while len(self._pending) > self.run_ahead:
                self._step()
        return op

    def _runnable(self, op: _Op) -> bool:
        if op.stream.queue[0] is not op:
            return False
        return not (op.kind == "wait" and op.event is not None and op.event.op is not None and not op.event.op.done)

    def _step(self) -> None:
        op = next((o for o in self._pending if self._runnable(o)), None)
        if op is None:
            raise SlabRace("the simulated device is deadlocked: every stream waits on an event never reached")
        op.done = True
        op.stream.queue.pop(0)
        self._pending.remove(op)

    def synchronize(self, stream) -> None:
        self.ops.append(("synchronize", stream.label))
        while stream.queue:
            self._step()

    def drain(self) -> None:
        """Let the device finish everything (a test's end of run)."""
        while self._pending:
            self._step()

    def record(self, stream):
        event = SimEvent(f"e{self._events}")
        self._events += 1
        op = self._launch("record", stream, event)
        event.vc, event.op = dict(op.vc), op
        self.ops.append(("record", stream.label, event.label))
        return event

    def wait(self, stream, event) -> None:
        self._launch("wait", stream, event)
        if event.vc is not None:
            for k, v in event.vc.items():
                stream.clock[k] = max(stream.clock.get(k, 0), v)
        self.ops.append(("wait", stream.label, event.label))

    # ------------------------------------------------------------ the checks
    @staticmethod
    def _before(op: _Op, stream: SimStream) -> bool:
        """Whether ``op`` happens before whatever ``stream`` runs next."""
        return op.vc[op.stream.index] <= stream.clock.get(op.stream.index, 0)

    def _block(self, slab: torch.Tensor) -> _Block:
        block = self._blocks.get(id(slab))
        if block is None or block.free:
            raise SlabRace("an access to a device slab that is not allocated (freed, or never given out)")
        return block

    def copy(self, dst, src, stream, slab=None) -> None:
        block = self._block(slab)
        for kind, earlier in block.accesses:
            if not self._before(earlier, stream):
                raise SlabRace(f"{block.label} overwritten on {stream} while a {kind} on {earlier.stream} may still "
                               "use it (no wait on its 'group done' event)")
        op = self._launch("copy", stream)
        block.accesses = [("copy", op)]
        nbytes = dst.numel() * dst.element_size()
        self.ops.append(("copy", stream.label, block.label, nbytes))
        if self.materialize and dst.device.type != "meta":
            dst.copy_(src)

    def read(self, stream, slab) -> None:
        block = self._block(slab)
        writes = [op for kind, op in block.accesses if kind == "copy"]
        for w in writes:
            if not self._before(w, stream):
                raise SlabRace(f"{block.label} read on {stream} while the copy into it on {w.stream} may be in flight "
                               "(no wait on its 'ready' event)")
        op = self._launch("read", stream)
        block.accesses.append(("read", op))
        self.ops.append(("read", stream.label, block.label))

    # ------------------------------------------------------------ device allocator
    def alloc_device(self, nbytes: int) -> torch.Tensor:
        size, reserve = _round_device(nbytes)
        reuse = next((key for key, b in self._blocks.items() if b.free and b.stream is self.compute
                      and size <= b.size <= 2 * size and all(o.done for o in b.record_uses)), None)
        if reuse is None:
            if self.reserved + reserve > self.fraction * self._total:
                raise torch.OutOfMemoryError(f"simulated: {nbytes} more bytes exceed the allowed "
                                             f"{self.fraction * self._total:.0f}")
            self.reserved += reserve
        else:
            old = self._blocks.pop(reuse)
            reserve, size = old.reserved, old.size
        device = "cpu" if self.materialize else "meta"
        slab = torch.empty(nbytes, dtype=torch.uint8, device=device)
        block = _Block(f"d{self._nblocks}", size, reserve, self.compute, tensor=slab)
        self._nblocks += 1
        self._blocks[id(slab)] = block
        self.allocated += size
        self.device_allocs += 1
        self.peak_allocated = max(self.peak_allocated, self.allocated)
        self.peak_reserved = max(self.peak_reserved, self.reserved)
        self.ops.append(("alloc_device", block.label, nbytes))
        return slab

    def record_stream(self, slab: torch.Tensor, stream) -> None:
        """``tensor.record_stream(stream)``: the block outlives what ``stream`` has been given so far."""
        block = self._block(slab)
        marker = self._launch("read", stream)
        block.record_uses.append(marker)
        self.ops.append(("record_stream", block.label, stream.label))

    def free_device(self, slab: torch.Tensor) -> None:
        block = self._block(slab)
        for kind, op in block.accesses:
            covered = any(u.stream is op.stream and u.vc[u.stream.index] >= op.vc[op.stream.index]
                          for u in block.record_uses)
            if not self._before(op, block.stream) and not covered:
                raise SlabRace(f"{block.label} freed while a {kind} on {op.stream} may still use it")
        block.free = True
        block.accesses = []
        self.allocated -= block.size
        self.ops.append(("free_device", block.label))

    def empty_device_cache(self) -> None:
        for key, block in list(self._blocks.items()):
            if block.free and all(o.done for o in block.record_uses):
                self.reserved -= block.reserved
                del self._blocks[key]
        self.ops.append(("empty_device_cache",))

    def set_memory_fraction(self, fraction: float) -> None:
        self.fraction = min(1.0, max(0.0, fraction))
        self.ops.append(("set_memory_fraction", round(self.fraction, 6)))

    def total_memory(self) -> int:
        return self._total

    # ------------------------------------------------------------ pinned host allocator
    def alloc_pinned(self, nbytes: int) -> torch.Tensor:
        size = self.pinned_size(nbytes)
        if self._pinned_cache.get(size):
            self._pinned_cache[size] -= 1
        else:
            if self.pin_limit is not None and self.pinned_reserved + size > self.pin_limit:
                raise RuntimeError("CUDA error: out of memory (simulated cudaHostAlloc failure)")
            self.pinned_reserved += size
            self.peak_pinned = max(self.peak_pinned, self.pinned_reserved)
        slab = torch.empty(nbytes, dtype=torch.uint8, device="cpu" if self.materialize else "meta")
        self._pinned_live[id(slab)] = size
        self.ops.append(("alloc_pinned", f"h{self._npinned}", nbytes))
        self._npinned += 1
        return slab

    def free_pinned(self, slab: torch.Tensor) -> None:
        size = self._pinned_live.pop(id(slab))
        self._pinned_cache[size] = self._pinned_cache.get(size, 0) + 1
        self.ops.append(("free_pinned", size))

    def empty_host_cache(self) -> None:
        for size, count in self._pinned_cache.items():
            self.pinned_reserved -= size * count
        self._pinned_cache.clear()
        self.ops.append(("empty_host_cache",))

    @property
    def pinned_cached(self) -> int:
        return sum(size * n for size, n in self._pinned_cache.items())
