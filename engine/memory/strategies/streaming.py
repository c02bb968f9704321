"""What block_swap, adaptive and chunkwise share: the transformers stream their blocks through a
``BlockStreamer`` (the ledger's residency for them), every other component is model-offloaded.

Each mode only says how a transformer's blocks are laid out (``layout``); this module does the rest."""

from __future__ import annotations

import logging

from engine.errors import OutOfBudgetError
from engine.memory.block_stream import BlockStreamer, find_blocks
from engine.memory.planner import ComponentSize, Layout, layout_for
from engine.memory.strategies.base import Applied, Strategy, hook_components, others
from engine.memory.transfer import TensorStore

log = logging.getLogger(__name__)


def module_size(name: str, role: str, module) -> ComponentSize:
    """Block sizes of a loaded transformer, in execution order (read from its tensors, no copy); a tensor shared
    by several blocks is counted once, where it is first met."""
    seen: set[int] = set()

    def nbytes(part) -> int:
        total = 0
        for t in list(part.parameters()) + list(part.buffers()):
            if id(t) not in seen:
                seen.add(id(t))
                total += t.numel() * t.element_size()
        return total

    blocks = tuple(nbytes(b) for _, b in find_blocks(module))
    rest = nbytes(module)  # what is left after the blocks were counted
    return ComponentSize(name, role, rest + sum(blocks), blocks)


def measured_size(c) -> ComponentSize:
    """``module_size`` of a registered component."""
    return module_size(c.name, c.role, c.module)


class Streaming(Strategy):
    def layout(self, size: ComponentSize, settings, ledger, ctx) -> Layout | None:
        return layout_for(self.mode, size, settings, ledger.effective_budget(), ctx.activations)

    def apply(self, components, settings, ledger, ctx) -> Applied:
        applied = super().apply(components, settings, ledger, ctx)
        streamed = [c for c in components if c.role == "transformer" and find_blocks(c.module)]
        rest = [c for c in components if c not in streamed]
        # streamed transformers evict everything else when they start; encoders and the VAE evict each other
        # but leave the transformers' resident blocks where they are (a repeated run then moves only the stream)
        hook_components(applied, ledger, rest, lambda c: others(rest, lambda o: o.name != c.name))
        for c in streamed:
            size = measured_size(c)
            layout = self.layout(size, settings, ledger, ctx)
            if layout is None:
                applied.remove()
                raise OutOfBudgetError(f"{c.name} does not fit in the memory budget even with every block "
                                       "streaming; try layerwise, a smaller size or a quantized model")
            side = bool(settings.use_streams)  # off: copies on the compute stream, from pageable memory

            def make(module, place, disk_file, c=c, layout=layout, side=side):
                store = TensorStore(module, ledger.compute_device, place, disk_file, backend=ledger.backend)
                return BlockStreamer(c.name, module, store, layout, ledger.residency_changed, ctx.trace,
                                     pin=side, side_stream=side)

            streamer = ledger.attach_residency(c.name, make)
            applied.removers.append(lambda name=c.name: ledger.detach_residency(name))
            _enforce_budget(applied, ledger, c.name, streamer)
            applied.layouts[c.name] = layout
        # registered after the streamers so that they run first: the other expert leaves before this one arrives
        hook_components(applied, ledger, streamed, lambda c: others(components, lambda o: o.name != c.name))
        return applied

    def after_run(self, components, ledger, applied) -> None:
        for c in components:
            residency = ledger.entry(c.name).residency if c.name in ledger else None
            if residency is not None:
                residency.evict_streamed()  # the ring's slabs go; the resident slab stays for the next run
                note = residency.pins.message(c.name) if hasattr(residency, "pins") else ""
                if note and note not in applied.notes:  # never a silent fallback: the result says it too
                    applied.notes.append(note)
            else:
                ledger.offload([c.name])
        if ledger.backend is not None:
            ledger.backend.empty_device_cache()  # what the ring held goes back to the device, not to a cache
        ledger.residency_changed(0)


def _enforce_budget(applied: Applied, ledger, name: str, streamer) -> None:
    """``max_vram_gb`` on the allocator itself: the mode refuses a layout whose slabs exceed it, and the caching
    allocator is capped at it (it raises instead of growing past the budget), until the mode is removed."""
    budget = ledger.session_budget
    backend = ledger.backend
    if budget is None or backend is None:
        return
    need = streamer.resident_need()
    if need > budget:
        applied.remove()
        raise OutOfBudgetError(f"{name}: the resident blocks and streaming slabs need {need / 2**30:.2f} GiB, more "
                               f"than max_vram_gb ({budget / 2**30:.2f} GiB); keep fewer blocks resident or "
                               "lower prefetch")
    total = backend.total_memory()
    if total:
        backend.set_memory_fraction(budget / total)
        applied.removers.append(lambda: backend.set_memory_fraction(1.0))
