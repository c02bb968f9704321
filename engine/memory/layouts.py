"""Stream layouts: which blocks of a transformer stay resident and how the rest stream in groups, from block sizes
alone. Shared by the planner (device peak) and ``host_need`` (host RAM), and used by the streaming modes to lay
out a real run, so the plan shown before a run is the layout the run then uses. Pure arithmetic: no torch here.
"""

from __future__ import annotations

from dataclasses import dataclass

MiB = 2**20
GiB = 2**30
# Copies below a few tens of MB do not reach full PCIe bandwidth (launch and sync overhead per copy):
# adaptive groups consecutive small blocks until a group moves at least this much.
EFFICIENT_COPY_BYTES = 32 * MiB
STREAMING_MODES = ("block_swap", "adaptive", "chunkwise")


@dataclass(frozen=True)
class ComponentSize:
    """One pipeline component: its bytes, and for a transformer the bytes of each block in execution order."""

    name: str
    role: str
    total: int
    blocks: tuple[int, ...] = ()
    largest_leaf: int = 0  # biggest single layer: what leaf-level streaming must hold at once
    # bytes the load allocates afresh (a cast from the file's dtype, ComfyUI's scaled fp8 multiplied out): RAM of its
    # own until the mode places the component; 0 where the file is memory-mapped as it is (page cache, reclaimable)
    load_copy: int = 0
    # the largest layer kept in fp8 as its compute-dtype weight: what ``fp8_storage``'s hook makes on the device for
    # each forward of that layer (one at a time), so the run's activations hold this much more at their busiest
    compute_copy: int = 0
    activations: int = 0  # an encoder's activations at its busiest (``plan.encoder_activations``); 0 otherwise

    @property
    def rest(self) -> int:
        """Bytes outside the blocks (embedders, norms, output projection): resident whenever it computes."""
        return self.total - sum(self.blocks)

    @property
    def streams(self) -> bool:
        return self.role == "transformer" and len(self.blocks) > 0


@dataclass(frozen=True)
class Layout:
    """How one transformer streams: the first ``resident`` blocks stay, the rest move in ``groups``."""

    resident: int
    groups: tuple[tuple[int, ...], ...]
    prefetch: int

    @property
    def streamed_blocks(self) -> int:
        return sum(len(g) for g in self.groups)

    def group_bytes(self, blocks: tuple[int, ...]) -> list[int]:
        return [sum(blocks[i] for i in g) for g in self.groups]

    def slab_count(self) -> int:
        return min(len(self.groups), self.prefetch + 1)

    def window_bytes(self, blocks: tuple[int, ...]) -> int:
        """Streamed bytes on the device: ``prefetch + 1`` fixed slabs, each the size of the largest group
        (allocated once per run and reused in rotation, so this is the figure at every instant, whatever the
        order of the groups)."""
        sizes = self.group_bytes(blocks)
        return self.slab_count() * max(sizes) if sizes else 0

    def need(self, comp: ComponentSize) -> int:
        """Bytes of this transformer on the device while it computes."""
        return comp.rest + sum(comp.blocks[: self.resident]) + self.window_bytes(comp.blocks)

    def kept(self, comp: ComponentSize) -> int:
        """Bytes that stay on the device between its calls (and between runs)."""
        return comp.rest + sum(comp.blocks[: self.resident])


def block_swap_layout(n_blocks: int, resident: int, prefetch: int) -> Layout:
    resident = max(0, min(resident, n_blocks))
    return Layout(resident, tuple((i,) for i in range(resident, n_blocks)), prefetch)


def chunk_layout(blocks: tuple[int, ...], resident: int, group_bytes: int, prefetch: int) -> Layout:
    """Consecutive streamed blocks grouped while a group stays within ``group_bytes`` (at least one block each)."""
    resident = max(0, min(resident, len(blocks)))
    groups: list[tuple[int, ...]] = []
    current: list[int] = []
    size = 0
    for i in range(resident, len(blocks)):
        if current and size + blocks[i] > group_bytes:
            groups.append(tuple(current))
            current, size = [], 0
        current.append(i)
        size += blocks[i]
    if current:
        groups.append(tuple(current))
    return Layout(resident, tuple(groups), prefetch)


def adaptive_layout(comp: ComponentSize, budget: int, prefetch: int) -> Layout | None:
    """The most resident blocks that fit ``budget`` (bytes for this transformer's weights), the rest streaming
    in groups of consecutive blocks up to ``EFFICIENT_COPY_BYTES`` (small blocks copy badly one by one), or one
    block per group when that leaves room for more resident blocks. None when not even full streaming fits."""
    blocks = comp.blocks
    if not blocks:
        return None
    best = None
    for group_bytes in (EFFICIENT_COPY_BYTES, 0):  # 0: every block its own group
        for resident in range(len(blocks), -1, -1):
            layout = chunk_layout(blocks, resident, group_bytes, prefetch)
            if layout.need(comp) <= budget:
                if best is None or layout.resident > best.resident:
                    best = layout
                break
    return best
