"""Partial residency for one transformer: the first N blocks stay on the compute device, the others stream.

diffusers' group offloading streams every block (no "N blocks stay"), so this is our own ``ModelHook`` in the
same style: a hook on the transformer starts each call and prefetches, a hook on every block waits for its
group's copy, prefetches ``prefetch`` groups ahead, and hands its group's slab back when the group's last block
is done. On a GPU the device memory is ``slabs.DeviceSlabs`` (``prefetch + 1`` slabs reused through events, so it
is what the plan says whatever the host's run-ahead) and the streamed weights' host copies are pinned in a
``host_pool.HostPool`` only while this transformer computes. Nothing is prefetched past the last group: the next
call (or the other Wan expert) starts with its own first group.

The hooks run outside any ``torch.compile`` graph (``torch.compiler.disable``, as diffusers does for its
group-offloading hooks): they swap parameters, which a compiled graph must never trace or guard on.

The streamer is the ledger's ``residency`` for the module: the memory manager asks it to load the resident
part, to evict everything, and how many bytes and blocks are on the compute device right now.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import torch
from diffusers.hooks import HookRegistry, ModelHook

from engine.memory.host_pool import HostPool, PinReport
from engine.memory.planner import Layout
from engine.memory.slabs import DeviceSlabs
from engine.memory.trace import SwapTrace
from engine.memory.transfer import TensorStore

ROOT_HOOK = "app_block_stream_root"
BLOCK_HOOK = "app_block_stream"

log = logging.getLogger(__name__)


def find_blocks(module: torch.nn.Module) -> list[tuple[str, torch.nn.Module]]:
    """The transformer blocks in execution order: the items of every ModuleList that is a direct child
    (Flux: 19 double then 38 single blocks; Wan: 40; Qwen-Image: 60), in the order the model declares them."""
    out = []
    for name, child in module.named_children():
        if isinstance(child, torch.nn.ModuleList):
            out.extend((f"{name}.{i}", block) for i, block in enumerate(child)
                       if any(True for _ in block.parameters()))
    return out


class _RootHook(ModelHook):
    def __init__(self, streamer: BlockStreamer):
        super().__init__()
        self.streamer = streamer

    @torch.compiler.disable()
    def pre_forward(self, module, *args, **kwargs):
        self.streamer.begin_call()
        return args, kwargs


class _BlockHook(ModelHook):
    def __init__(self, streamer: BlockStreamer, index: int):
        super().__init__()
        self.streamer = streamer
        self.index = index

    @torch.compiler.disable()
    def pre_forward(self, module, *args, **kwargs):
        self.streamer.enter_block(self.index)
        return args, kwargs

    @torch.compiler.disable()
    def post_forward(self, module, output):
        self.streamer.leave_block(self.index)
        return output


class BlockStreamer:
    def __init__(self, name: str, module: torch.nn.Module, store: TensorStore, layout: Layout,
                 on_change: Callable[[int], None], trace: SwapTrace | None = None, pin: bool = True,
                 side_stream: bool = True):
        self.name = name
        self.module = module
        self.store = store
        self.layout = layout
        self.on_change = on_change  # bytes copied -> the ledger (which reads ``on_compute`` itself)
        self.trace = trace
        self.blocks = find_blocks(module)
        self.block_keys = [store.keys_under(prefix + ".") for prefix, _ in self.blocks]
        in_blocks = {k for keys in self.block_keys for k in keys}
        self.kept_keys = [k for k in store.slots if k not in in_blocks]  # embedders, norms, proj_out
        for i in range(layout.resident):
            self.kept_keys.extend(self.block_keys[i])
        self.group_of = {b: g for g, blocks in enumerate(layout.groups) for b in blocks}
        self.group_keys = [[k for b in blocks for k in self.block_keys[b]] for blocks in layout.groups]
        self.group_bytes = [store.bytes_of(keys) for keys in self.group_keys]
        self.kept_bytes = store.bytes_of(self.kept_keys)
        self.backend = store.backend
        self.slabs: DeviceSlabs | None = None
        self.pool: HostPool | None = None
        self.pins = PinReport()
        if self.backend is not None:
            slot = store.slots.__getitem__
            self.slabs = DeviceSlabs(self.backend, [slot(k) for k in self.kept_keys],
                                     [[slot(k) for k in keys] for keys in self.group_keys], layout.prefetch, store,
                                     side_stream)
            # pinned host memory only for what streams from RAM (disk offload reads the file; residents copy once)
            if pin and store.place == "cpu" and self.group_keys:
                self.pool = HostPool(self.backend, name)
        self._loaded_groups: set[int] = set()
        self._kept_loaded = False
        self.on_compute = 0
        self.peak_device = 0
        self._hooks: list[tuple[torch.nn.Module, str]] = []
        self._install()

    # ------------------------------------------------------------ hooks
    def _install(self) -> None:
        HookRegistry.check_if_exists_or_initialize(self.module).register_hook(_RootHook(self), ROOT_HOOK)
        self._hooks.append((self.module, ROOT_HOOK))
        for i, (_, block) in enumerate(self.blocks):
            HookRegistry.check_if_exists_or_initialize(block).register_hook(_BlockHook(self, i), BLOCK_HOOK)
            self._hooks.append((block, BLOCK_HOOK))

    def remove(self) -> None:
        """Take the hooks off and leave every tensor at its host place (pageable again: nothing stays pinned)."""
        for module, hook in self._hooks:
            registry = getattr(module, "_diffusers_hook", None)
            if registry is not None and registry.get_hook(hook) is not None:
                registry.remove_hook(hook, recurse=False)
        self._hooks.clear()
        self.evict_all()
        self.store.restore()
        self.store.close()
        self._loaded_groups.clear()
        self._kept_loaded = False
        self._changed(0)

    # ------------------------------------------------------------ residency (asked by the ledger)
    @property
    def disk_file(self):
        return self.store.disk_file if self.store.place == "disk" else None

    @property
    def blocks_total(self) -> int:
        return len(self.blocks)

    @property
    def device_slab_bytes(self) -> int:
        """Device bytes of this transformer's slabs (resident part plus the ring), as allocated on a GPU."""
        return self.slabs.planned_bytes if self.slabs is not None else 0

    @property
    def pinned_bytes(self) -> int:
        return self.pool.pinned_bytes if self.pool is not None else 0

    def blocks_on_compute(self) -> int:
        kept = self.layout.resident if self._kept_loaded else 0
        return kept + sum(len(self.layout.groups[g]) for g in self._loaded_groups)

    def resident_need(self) -> int:
        """Bytes this transformer needs on the device while it computes (kept part plus the streaming window)."""
        if self.slabs is not None:
            return self.slabs.planned_bytes
        window = sorted(self.group_bytes, reverse=True)[: self.layout.prefetch + 1]
        return self.kept_bytes + sum(window)

    def describe(self) -> str:
        return f"{self.blocks_on_compute()} of {self.blocks_total} blocks"

    def load_resident(self) -> None:
        if self._kept_loaded:
            return
        before = self.store.moved_bytes
        if self.slabs is not None:
            self._pin()
            self.slabs.load_kept()
            self.store.moved_bytes += self.slabs.kept_bytes
        else:
            self.store.load(self.kept_keys)
        self._kept_loaded = True
        self._changed(self.store.moved_bytes - before)

    def _pin(self) -> None:
        """Pin the streamed weights now that this transformer computes (not at apply time: the other Wan
        expert's share is released first, so only one expert is ever locked)."""
        if self.pool is None or self.pool.active:
            return
        streamed = [self.store.slots[k] for keys in self.group_keys for k in keys]
        self.pins = self.pool.pin(streamed)
        note = self.pins.message(self.name)
        if note:
            log.warning(note)

    def evict_streamed(self) -> None:
        for g in list(self._loaded_groups):
            self._evict_group(g)
        if self.slabs is not None:
            self.slabs.release()
            self._changed(0)

    def evict_all(self) -> None:
        self.evict_streamed()
        if self._kept_loaded:
            if self.slabs is not None:
                self.slabs.evict_kept()
            else:
                self.store.evict(self.kept_keys)
            self._kept_loaded = False
            self._changed(0)
        if self.pool is not None:
            self.pool.release()

    # ------------------------------------------------------------ streaming
    def begin_call(self) -> None:
        self.load_resident()
        if self.trace is not None:
            self.trace.begin_call(self.name)
        if self.layout.groups:
            self._prefetch_from(0)

    def enter_block(self, index: int) -> None:
        g = self.group_of.get(index)
        nbytes = self.store.bytes_of(self.block_keys[index])
        if g is None:  # a resident block
            if self.trace is not None:
                self.trace.block_start(self.name, index, -1, True, nbytes)
                self.trace.compute_started(self.name, index)
            return
        first = self.layout.groups[g][0] == index
        if first:
            if g not in self._loaded_groups:  # not prefetched (prefetch 0, or a cache skipped blocks)
                self._load_group(g)
            self._drop_outside_window(g)
            self._prefetch_from(g + 1)
        if self.trace is not None:
            self.trace.block_start(self.name, index, g, False, nbytes)
        if first:
            self._wait(g, index)
        if self.slabs is not None:
            self.slabs.read(g)
        if self.trace is not None:
            self.trace.compute_started(self.name, index)

    def leave_block(self, index: int) -> None:
        if self.trace is not None:
            self.trace.block_end(self.name, index)
        g = self.group_of.get(index)
        if g is not None and self.layout.groups[g][-1] == index and g in self._loaded_groups:
            if self.slabs is not None:
                self.slabs.finished(g)  # the slab's "done" event, then the group points home
            self._evict_group(g)

    def _window(self, g: int) -> list[int]:
        n = len(self.layout.groups)
        return list(range(g, min(n, g + self.layout.prefetch + 1)))

    def _prefetch_from(self, start: int) -> None:
        """Queue the next ``prefetch`` groups, never past the last one (no wrap-around to the next call's first
        group: it would be copied, then thrown out at once when the call ends or the other expert starts)."""
        for g in range(start, min(len(self.layout.groups), start + self.layout.prefetch)):
            if g not in self._loaded_groups:
                self._load_group(g)

    def _drop_outside_window(self, g: int) -> None:
        """Groups left loaded by an interrupted pattern (a step cache skipping blocks) must not pile up."""
        keep = set(self._window(g))
        for other in list(self._loaded_groups):
            if other not in keep:
                self._evict_group(other)

    def _load_group(self, g: int) -> None:
        stream = None
        if self.slabs is not None:
            self.slabs.allocate()
            stream = self.slabs.side
        started = self.trace.copy_started(self.name, g, stream) if self.trace else None
        if self.slabs is not None:
            k = self.slabs.slab_of(g)
            evicted = self.slabs.owner[k]
            if evicted is not None and evicted != g:
                self._evict_group(evicted)
            moved = self.slabs.load(g)
            self.store.moved_bytes += moved
        else:
            before = self.store.moved_bytes
            self.store.load(self.group_keys[g])
            moved = self.store.moved_bytes - before
        if self.trace is not None:
            self.trace.copy_done(self.name, g, started, stream)
        self._loaded_groups.add(g)
        self._changed(moved)

    def _wait(self, g: int, index: int) -> None:
        if self.slabs is None:
            return
        started = self.trace.wait_started(self.name, index) if self.trace else None
        if self.slabs.wait_ready(g) and self.trace is not None:  # a GPU-side wait: the host runs on
            self.trace.wait_done(self.name, index, started)

    def _evict_group(self, g: int) -> None:
        if g in self._loaded_groups:
            if self.slabs is not None:
                self.slabs.unload(g)
            else:
                self.store.evict(self.group_keys[g])
            self._loaded_groups.discard(g)
            self._changed(0)

    def _changed(self, copied: int) -> None:
        if self.slabs is not None:
            self.on_compute = self.slabs.device_bytes
        else:
            kept = self.kept_bytes if self._kept_loaded else 0
            self.on_compute = kept + sum(self.group_bytes[g] for g in self._loaded_groups)
        self.peak_device = max(self.peak_device, self.on_compute)
        self.on_change(copied)
