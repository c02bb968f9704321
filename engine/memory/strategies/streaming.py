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


def measured_size(c) -> ComponentSize:
    """Block sizes of a loaded transformer, in execution order (read from its tensors, no copy)."""
    seen: set[int] = set()

    def nbytes(module) -> int:
        total = 0
        for t in list(module.parameters()) + list(module.buffers()):
            if id(t) not in seen:
                seen.add(id(t))
                total += t.numel() * t.element_size()
        return total

    blocks = tuple(nbytes(b) for _, b in find_blocks(c.module))
    rest = nbytes(c.module)  # what is left after the blocks were counted
    return ComponentSize(c.name, c.role, rest + sum(blocks), blocks)


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
            use_stream = bool(settings.use_streams) and ledger.compute_device.startswith("cuda")

            def make(module, place, disk_file, c=c, layout=layout, use_stream=use_stream):
                store = TensorStore(module, ledger.compute_device, place, disk_file, stream=use_stream)
                return BlockStreamer(c.name, module, store, layout, ledger.residency_changed, ctx.trace)

            streamer = ledger.attach_residency(c.name, make)
            applied.removers.append(lambda name=c.name: ledger.detach_residency(name))
            note = streamer.store.pins.message(c.name)
            if note:  # never a silent fallback: the log, the result and the UI all say it
                log.warning(note)
                applied.notes.append(note)
            applied.layouts[c.name] = layout
        # registered after the streamers so that they run first: the other expert leaves before this one arrives
        hook_components(applied, ledger, streamed, lambda c: others(components, lambda o: o.name != c.name))
        return applied

    def after_run(self, components, ledger, applied) -> None:
        for c in components:
            residency = ledger.entry(c.name).residency if c.name in ledger else None
            if residency is not None:
                residency.evict_streamed()
            else:
                ledger.offload([c.name])
        ledger.residency_changed(0)
