"""Host RAM a memory mode needs while it runs (pageable and pinned), from sizes alone. Pure arithmetic, no torch.

What each mode keeps in host RAM, on a CUDA machine (the memory layer's contract):

- ``none``: nothing (every component lives on the device).
- ``model_offload``: every component's weights, pageable (between their turns, and all of them after a run).
- ``block_swap`` / ``adaptive`` / ``chunkwise``: each streamed block once: pinned, packed in large slabs, for the
  transformer computing now; pageable for another one (Wan's other expert, which is off the device entirely, its
  resident blocks included). Resident blocks of the computing transformer have no host copy. Encoders and the
  VAE, offloaded, are pageable.
- ``layerwise``: every layer streams, so all weights are in host RAM (pageable; diffusers pins each group as it
  copies it with ``low_cpu_mem_usage=True``: a couple of layers at a time, rounded up to a power of two).
- with ``offload_device="disk"`` the streamed weights stay in the memory-mapped safetensors (page cache, which
  the kernel reclaims) and pinned memory is the device slabs' staging copies only; a component loaded back from
  disk passes through RAM once (the largest one counts).
- ``cpu_only``, and every mode on a machine without a GPU: the compute device *is* RAM, so the weights on it
  are host RAM (all of them with ``offload_device="cpu"``; what the mode keeps on the "device" with disk).

And before any of that, the load: the store loads a whole pipeline before the mode places it, so what the load
copies (``ComponentSize.load_copy``: a cast from the file's dtype, ComfyUI's scaled fp8 multiplied out) sits in
RAM all at once, whatever the mode keeps afterwards (an fp8 single file kept as stored copies nothing). A file
already in the load dtype is memory-mapped and costs page cache only. The figure is the larger of the two moments.
"""

from __future__ import annotations

from dataclasses import dataclass

from engine.memory.layouts import STREAMING_MODES, ComponentSize, Layout


@dataclass(frozen=True)
class HostNeed:
    host: int  # pageable + pinned, at the worst moment of the run
    pinned: int
    how: str  # one clause saying where the figure comes from


def _pow2(n: int) -> int:
    return 1 << max(0, n - 1).bit_length() if n > 0 else 0


def slab_bytes(layout: Layout, comp: ComponentSize) -> int:
    """The device slabs of one streamed transformer: ``prefetch + 1`` (at most one per group) of the largest
    group's size, allocated once per run."""
    sizes = layout.group_bytes(comp.blocks)
    if not sizes:
        return 0
    return min(len(sizes), layout.prefetch + 1) * max(sizes)


def streamed_bytes(layout: Layout, comp: ComponentSize) -> int:
    return sum(layout.group_bytes(comp.blocks))


def host_need(mode: str, components: list[ComponentSize], layouts: dict[str, Layout], device: str,
              offload: str, device_weights: int, use_streams: bool = True) -> HostNeed:
    """Host RAM for ``mode`` (see the module docstring); ``device_weights``: the plan's weights on the compute
    device at its worst moment (on a CPU machine, that is RAM too)."""
    running = _while_running(mode, components, layouts, device, offload, device_weights, use_streams)
    at_load = sum(c.load_copy for c in components)
    if at_load <= running.host:
        return running
    converted = ", ".join(c.name for c in components if c.load_copy)
    return HostNeed(at_load, running.pinned,
                    f"while loading: {converted} convert{'s' if ',' not in converted else ''} to the compute dtype as "
                    f"they load, in RAM all at once before the mode places them (a file stored in the load dtype "
                    f"is memory-mapped instead); {running.host / 2**30:.1f} GiB once running")


def _while_running(mode: str, components: list[ComponentSize], layouts: dict[str, Layout], device: str,
                   offload: str, device_weights: int, use_streams: bool) -> HostNeed:
    total = sum(c.total for c in components)
    disk = offload == "disk"
    if mode == "cpu_only" or not device.startswith("cuda"):
        if disk and mode != "cpu_only":
            return HostNeed(device_weights, 0, "no GPU: what the mode keeps on the compute device is RAM")
        return HostNeed(total, 0, "computes on the CPU: every weight in RAM")
    transformers = [c for c in components if c.streams]
    others = [c for c in components if not c.streams]
    largest_other = max((c.total for c in components if c.name not in layouts), default=0)
    if mode == "none":
        return HostNeed(0, 0, "every weight on the GPU")
    if mode == "model_offload":
        if disk:
            return HostNeed(max((c.total for c in components), default=0), 0,
                            "components wait on disk; each passes through RAM when it loads")
        return HostNeed(total, 0, "every component waits in RAM (pageable) between its turns")
    if mode == "layerwise":
        leaf = max((c.largest_leaf for c in components if c.role != "vae"), default=0)
        pinned = 2 * _pow2(leaf) if use_streams else 0
        if disk:
            return HostNeed(pinned + max((c.total for c in others), default=0), pinned,
                            "layers stream from disk; encoders and the VAE pass through RAM one at a time")
        return HostNeed(total + pinned, pinned, "every layer streams from RAM, a couple pinned at a time")
    if mode in STREAMING_MODES and layouts:
        slabs = max((slab_bytes(layouts[c.name], c) for c in transformers if c.name in layouts), default=0)
        if disk:
            return HostNeed(slabs + largest_other, slabs,
                            "streamed blocks stay in the memory-mapped files; pinned = the slabs' staging")
        # the expert computing now: its streamed blocks pinned; every other expert whole, pageable
        worst_host, worst_pinned = 0, 0
        for comp in transformers:
            layout = layouts.get(comp.name)
            streamed = streamed_bytes(layout, comp) if layout is not None else comp.total
            rest = sum(o.total for o in transformers if o.name != comp.name)
            worst_host = max(worst_host, streamed + rest)
            worst_pinned = max(worst_pinned, streamed)
        pageable_others = sum(c.total for c in others)
        return HostNeed(worst_host + pageable_others, worst_pinned,
                        "streamed blocks once (pinned for the transformer computing), encoders and VAE pageable")
    return HostNeed(total, 0, "the transformer does not stream in this layout: every weight counted")
