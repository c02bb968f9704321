"""The streaming memory layer against a simulated CUDA backend (engine/memory/backend/simulated.py): device
bytes, pinned host bytes and slab races for FLUX.1-dev, both Wan 2.2 A14B experts and Qwen-Image at their real
sizes (built on the meta device from their configs, no bytes), whatever the host's run-ahead; the CUDA backend's
calls against the simulator's; a tiny model's pixels under the simulator; torch.compile over the hooks."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch

from engine import Engine, ModelRef, SwapSettings, TextToImageRequest
from engine.memory import MemoryManager
from engine.memory.backend.cuda import CudaBackend
from engine.memory.backend.simulated import SimBackend, SlabRace
from engine.memory.block_stream import BlockStreamer, find_blocks
from engine.memory.component_offload import bring
from engine.memory.host_pool import host_pinned_bytes
from engine.memory.planner import ComponentSize, block_swap_layout, chunk_layout
from engine.memory.real_layouts import meta_transformer, run_calls
from engine.memory.slabs import slab_sizes
from engine.memory.transfer import TensorStore

GiB = 2**30
MiB = 2**20
RUN_AHEADS = [0, 1, 8, None]  # None: the device only moves when the host synchronizes


def sizes_of(module) -> ComponentSize:
    blocks = tuple(sum(p.numel() * p.element_size() for p in b.parameters()) for _, b in find_blocks(module))
    total = sum(p.numel() * p.element_size() for p in module.parameters())
    total += sum(b.numel() * b.element_size() for b in module.buffers())
    return ComponentSize("t", "transformer", total, blocks)


def planned(comp: ComponentSize, layout) -> int:
    """The weight part of the plan: what stays (embedders, resident blocks) plus the ring of slabs."""
    return layout.kept(comp) + sum(slab_sizes(layout.group_bytes(comp.blocks), layout.prefetch))


SLACK = MiB  # 256-byte alignment of each tensor inside a slab (real shapes are multiples of 256 already)


def streamed_keys_bytes(streamer) -> int:
    return sum(streamer.group_bytes)


@pytest.fixture(scope="module")
def real():
    return {kind: meta_transformer(kind) for kind in ("flux", "wan", "qwen")}


def ledger_for(sim: SimBackend) -> MemoryManager:
    return MemoryManager("cuda:0", offload_device="cpu", budget_bytes=140 * GiB, backend=sim)


def attach(ledger, name: str, module, layout) -> BlockStreamer:
    ledger.register(name, module, "transformer")

    def make(m, place, disk_file):
        store = TensorStore(m, ledger.compute_device, place, disk_file, backend=ledger.backend)
        return BlockStreamer(name, m, store, layout, ledger.residency_changed)

    return ledger.attach_residency(name, make)


def layouts(comp: ComponentSize):
    n = len(comp.blocks)
    return {"block_swap r0 p1": block_swap_layout(n, 0, 1), "block_swap r10 p2": block_swap_layout(n, 10, 2),
            "chunkwise 1GiB p1": chunk_layout(comp.blocks, 4, GiB, 1)}


@pytest.mark.parametrize("run_ahead", RUN_AHEADS, ids=lambda r: f"ahead{r}")
@pytest.mark.parametrize("kind", ["flux", "qwen"])
def test_device_and_pinned_bytes_stay_within_the_plan_at_real_size(real, kind, run_ahead):
    module = real[kind]
    comp = sizes_of(module)
    for label, layout in layouts(comp).items():
        sim = SimBackend(run_ahead=run_ahead)
        ledger = ledger_for(sim)
        streamer = attach(ledger, kind, module, layout)
        ledger.ensure_loaded([kind])
        kept = [streamer.store.slots[k] for k in streamer.kept_keys]
        assert all(slot.host is None for slot in kept)  # resident weights live on the device only
        allocs_after_load = sim.device_allocs
        run_calls(streamer, calls=3)  # three denoising steps
        # allocated once per run: the resident slab, then prefetch + 1 ring slabs, nothing per step
        assert sim.device_allocs - allocs_after_load == min(len(layout.groups), layout.prefetch + 1), label
        plan = planned(comp, layout)
        assert plan <= sim.peak_allocated <= plan + SLACK, (label, sim.peak_allocated, plan)
        assert sim.peak_reserved <= plan + SLACK + 4 * 2 * MiB, (label, sim.peak_reserved, plan)  # 2 MiB rounding
        if layout.group_bytes(comp.blocks) and len(set(layout.group_bytes(comp.blocks))) <= 2:
            assert plan == layout.need(comp)  # block_swap: the planner's window is the ring
        streamed = streamed_keys_bytes(streamer)
        assert sim.peak_pinned <= 1.05 * streamed, (label, sim.peak_pinned / streamed)
        assert sim.peak_pinned >= streamed  # everything that streams is pinned (fast copies), nothing else
        ledger.swap.remove()
        ledger.unregister(kind)
        assert sim.pinned_reserved == 0 and host_pinned_bytes() == 0  # released, the allocator's cache too
        sim.drain()


@pytest.mark.parametrize("run_ahead", RUN_AHEADS, ids=lambda r: f"ahead{r}")
def test_wan_pair_pins_one_expert_at_a_time_and_the_switch_copies_nothing_twice(real, run_ahead):
    high = real["wan"]
    low = meta_transformer("wan")
    comp = sizes_of(high)
    layout = block_swap_layout(len(comp.blocks), 8, 1)
    sim = SimBackend(run_ahead=run_ahead)
    ledger = ledger_for(sim)
    streamers = {"high": attach(ledger, "high", high, layout), "low": attach(ledger, "low", low, layout)}
    assert sim.pinned_reserved == 0  # nothing pinned at apply time
    streamed = streamed_keys_bytes(streamers["high"])
    for _run in range(2):
        for name, other, steps in (("high", "low", 2), ("low", "high", 2)):
            bring(ledger, name, [other])  # what the onload hook does at the expert switch
            copies_before = sum(1 for op in sim.ops if op[0] == "copy")
            run_calls(streamers[name], calls=steps)
            copies = sum(1 for op in sim.ops if op[0] == "copy") - copies_before
            n_tensors = sum(len(keys) for keys in streamers[name].group_keys)
            assert copies == steps * n_tensors  # no wrap-around prefetch of group 0 at the end of a call
            assert sim.pinned_reserved <= 1.05 * streamed  # the other expert's share was released
            streamers[name].evict_streamed()
    assert sim.peak_pinned <= 1.05 * streamed
    assert sim.peak_allocated <= planned(comp, layout) + SLACK  # one expert's slabs at a time
    ledger.swap.remove()
    for name in ("high", "low"):
        ledger.unregister(name)
    assert sim.pinned_reserved == 0


def test_the_simulator_catches_a_missing_wait_and_unbounded_run_ahead():
    sim = SimBackend(run_ahead=None)
    side = sim.new_stream()
    slab = sim.alloc_device(MiB)
    host = torch.empty(MiB, dtype=torch.uint8, device="meta")
    sim.copy(slab, host, side, slab)
    with pytest.raises(SlabRace, match="in flight"):
        sim.read(sim.compute, slab)  # no wait on the copy's event
    sim = SimBackend(run_ahead=None)
    side = sim.new_stream()
    slab = sim.alloc_device(MiB)
    sim.copy(slab, host, side, slab)
    sim.wait(sim.compute, sim.record(side))
    sim.read(sim.compute, slab)
    with pytest.raises(SlabRace, match="overwritten"):
        sim.copy(slab, host, side, slab)  # no wait on "group done"

    def naive(run_ahead):  # today's pattern: allocate at issue, free when the host leaves, record_stream
        sim = SimBackend(run_ahead=run_ahead)
        side = sim.new_stream()
        for _ in range(40):
            with_slab = sim.alloc_device(64 * MiB)
            sim.copy(with_slab, host, side, with_slab)
            sim.wait(sim.compute, sim.record(side))
            sim.read(sim.compute, with_slab)
            sim.record_stream(with_slab, sim.compute)
            sim.free_device(with_slab)
        return sim.peak_reserved

    assert naive(0) <= 2 * 64 * MiB
    assert naive(None) >= 40 * 64 * MiB  # grows with the run-ahead, not with the prefetch window


class FakeCuda:
    """A recording stand-in for the ``torch.cuda`` calls CudaBackend makes (TorchCuda's names)."""

    def __init__(self):
        self.calls: list[tuple] = []
        self.current = None
        self.labels: dict[int, str] = {}
        self.keep: list[torch.Tensor] = []
        self.streams = 0
        self.events = 0
        self.compute = self._stream()

    def _stream(self):
        fake = self

        class Stream:
            label = f"s{fake.streams}"

            def wait_event(self, event):
                fake.calls.append(("wait", self.label, event.label))

            def synchronize(self):
                fake.calls.append(("synchronize", self.label))

        fake.streams += 1
        return Stream()

    def Stream(self):  # noqa: N802
        s = self._stream()
        self.calls.append(("new_stream", s.label))
        return s

    def Event(self):  # noqa: N802
        fake = self

        class Event:
            label = f"e{fake.events}"

            def record(self, stream):
                fake.calls.append(("record", stream.label, self.label))

        self.events += 1
        return Event()

    def current_stream(self):
        return self.compute

    def stream(self, s):
        import contextlib  # noqa: PLC0415

        @contextlib.contextmanager
        def ctx():
            previous, self.current = self.current, s
            try:
                yield
            finally:
                self.current = previous

        return ctx()

    def device_empty(self, nbytes):
        t = torch.empty(nbytes, dtype=torch.uint8, device="meta")
        self.keep.append(t)  # storages stay alive: their handles stay unique
        self.labels[t.untyped_storage()._cdata] = label = f"d{len(self.labels)}"
        self.calls.append(("alloc_device", label, nbytes))
        return t

    def pinned_empty(self, nbytes):
        self.calls.append(("alloc_pinned", nbytes))
        return torch.empty(nbytes, dtype=torch.uint8, device="meta")

    def set_per_process_memory_fraction(self, f):
        self.calls.append(("set_memory_fraction", round(f, 6)))

    def empty_cache(self):
        self.calls.append(("empty_device_cache",))

    def host_empty_cache(self):
        self.calls.append(("empty_host_cache",))

    def mem_get_info(self):
        return (0, 141 * GiB)


class CopyRecorder(torch.overrides.TorchFunctionMode):
    """Records every asynchronous ``Tensor.copy_`` with the fake stream it was issued on and its slab."""

    def __init__(self, fake: FakeCuda):
        super().__init__()
        self.fake = fake

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is torch.Tensor.copy_ and kwargs.get("non_blocking"):
            dst = args[0]
            stream = self.fake.current.label if self.fake.current is not None else self.fake.compute.label
            self.fake.calls.append(("copy", stream, self.fake.labels[dst.untyped_storage()._cdata], dst.numel() * dst.element_size()))
        return func(*args, **kwargs)


DEVICE_OPS = ("new_stream", "alloc_device", "copy", "record", "wait", "synchronize", "set_memory_fraction",
              "empty_device_cache",
              "empty_host_cache")


def test_the_cuda_backend_issues_the_simulators_operations(real):
    module = real["flux"]
    layout = block_swap_layout(len(find_blocks(module)), 20, 2)

    def scenario(backend):
        ledger = MemoryManager("cuda:0", offload_device="cpu", budget_bytes=140 * GiB, backend=backend)
        streamer = attach(ledger, "flux", module, layout)
        backend.set_memory_fraction(0.5)
        ledger.ensure_loaded(["flux"])
        run_calls(streamer, calls=2)
        streamer.evict_streamed()
        backend.empty_device_cache()
        ledger.unregister("flux")

    sim = SimBackend(run_ahead=8)
    scenario(sim)
    fake = FakeCuda()
    with CopyRecorder(fake):
        scenario(CudaBackend("cpu", api=fake))
    pinned = [op[2] for op in sim.ops if op[0] == "alloc_pinned"]
    assert pinned == [op[1] for op in fake.calls if op[0] == "alloc_pinned"] and pinned
    expected = [op for op in sim.ops if op[0] in DEVICE_OPS]
    got = [op for op in fake.calls if op[0] in DEVICE_OPS]
    assert len(expected) > 1000
    assert got == expected


def test_a_pin_failure_goes_on_unpinned_and_says_so(real, caplog):
    module = real["qwen"]
    layout = block_swap_layout(len(find_blocks(module)), 0, 1)
    sim = SimBackend(run_ahead=8, pin_limit=10 * GiB)
    ledger = ledger_for(sim)
    streamer = attach(ledger, "qwen", module, layout)
    with caplog.at_level(logging.WARNING):
        ledger.ensure_loaded(["qwen"])
        run_calls(streamer)
    assert sim.pinned_reserved <= 10 * GiB
    note = streamer.pins.message("qwen")
    assert "could be pinned" in note and "ulimit -l" in note and "2-3x longer" in note
    assert "locked-memory limit" not in note
    assert any("pinning stopped" in r.getMessage() for r in caplog.records)
    ledger.unregister("qwen")


def test_max_vram_gb_is_enforced_on_the_allocator(real):
    from engine.errors import OutOfBudgetError
    from engine.memory.strategies import Component, SwapContext
    from engine.requests import SwapSettings

    module = real["flux"]
    sim = SimBackend()
    ledger = MemoryManager("cuda:0", offload_device="cpu", budget_bytes=140 * GiB, backend=sim)
    ledger.register("flux", module, "transformer")
    comps = [Component("flux", "transformer", module, "transformer")]
    settings = SwapSettings(mode="block_swap", blocks_resident=10, prefetch=1, max_vram_gb=12)
    with ledger.swap.session(comps, settings, SwapContext()):
        assert ("set_memory_fraction", round(12 / 141, 6)) in sim.ops
    too_many = SwapSettings(mode="block_swap", blocks_resident=40, prefetch=1, max_vram_gb=12)
    with pytest.raises(OutOfBudgetError, match="max_vram_gb"), ledger.swap.session(comps, too_many, SwapContext()):
        pass
    ledger.swap.remove()
    assert sim.ops[-1] == ("set_memory_fraction", 1.0) or ("set_memory_fraction", 1.0) in sim.ops


# ---------------------------------------------------------------- the tiny demo models, computing, under the simulator
FLUX = ModelRef(repo_id="black-forest-labs/FLUX.1-dev")
QWEN = ModelRef(repo_id="Qwen/Qwen-Image")
WAN = ModelRef(repo_id="Wan-AI/Wan2.2-I2V-A14B-Diffusers")


@pytest.fixture(scope="module")
def sim_engine(models_dir, tmp_path_factory):
    engine = Engine(device="cpu", models_dir=models_dir, demo=True, offload_device="cpu",
                    outputs_dir=tmp_path_factory.mktemp("sim-out"))
    engine.memory.backend = SimBackend(run_ahead=8, materialize=True)  # every streaming op checked as it runs
    return engine


def t2i(model, mode: str, **kw) -> TextToImageRequest:
    settings = SwapSettings(mode=mode, **{"blocks_resident": 1, "prefetch": 1, "block_size_mb": 10, **kw})
    return TextToImageRequest(model=model, prompt="a lighthouse", width=64, height=64, steps=2, seed=7, swap=settings)


@pytest.mark.parametrize("model", [FLUX, QWEN], ids=["flux", "qwen"])
def test_streaming_under_the_simulator_gives_the_pixels_of_none_and_leaves_nothing_pinned(sim_engine, model):
    sim = sim_engine.memory.backend
    base = np.asarray(sim_engine.run(t2i(model, "none")).images[0]).astype(int)
    for mode, kw in (("block_swap", {}), ("block_swap", {"prefetch": 2, "blocks_resident": 0}),
                     ("chunkwise", {}), ("adaptive", {})):
        allocs = sim.device_allocs
        result = sim_engine.run(t2i(model, mode, **kw))
        assert np.abs(np.asarray(result.images[0]).astype(int) - base).max() <= 1, mode
        session = result.metadata["memory"]["sessions"][-1]
        if mode != "adaptive":  # adaptive keeps every block on a machine without a budget: nothing streams
            assert session["device_slab_bytes"] > 0 and session["pinned_bytes"] > 0, mode
            assert sim.device_allocs - allocs <= 2 + 3, mode  # resident slab + the ring, once for the run
    sim_engine.run(t2i(model, "none"))  # switching mode: nothing pinned is left behind, the cache emptied too
    assert host_pinned_bytes() == 0 and sim.pinned_cached == 0 and sim.pinned_reserved == 0
    assert ("empty_host_cache",) in sim.ops and ("empty_device_cache",) in sim.ops


def test_wan_pair_under_the_simulator_pins_one_expert_at_a_time(sim_engine):
    from PIL import Image

    from engine.jobs.common import generator_for, run_denoise

    pipe = sim_engine.store.load_pipeline(WAN)
    image = Image.new("RGB", (32, 32), (120, 30, 200))

    def frames(mode):
        call = dict(image=image, prompt="waves", height=32, width=32, num_frames=5, num_inference_steps=4,
                    guidance_scale=3.0, generator=generator_for(3), output_type="np")
        settings = SwapSettings(mode=mode, blocks_resident=1, prefetch=1, block_size_mb=10)
        return run_denoise(sim_engine, pipe, call, 4, settings, lambda f, m: None, None, {}).frames[0]

    pools_active: list[int] = []

    def at_block(module, args, kwargs=None):
        experts = [sim_engine.memory.entry(sim_engine.store._names[id(getattr(pipe, a))]).residency
                   for a in ("transformer", "transformer_2")]
        pools_active.append(sum(1 for r in experts if getattr(r, "pool", None) is not None and r.pool.active))

    handles = [find_blocks(getattr(pipe, a))[-1][1].register_forward_pre_hook(at_block)
               for a in ("transformer", "transformer_2")]
    try:
        base = frames("none")
        out = frames("block_swap")
    finally:
        for h in handles:
            h.remove()
    assert np.abs(out - base).max() <= 1e-5
    assert pools_active and max(pools_active) == 1, str(pools_active)  # never both experts pinned
    frames("none")
    assert host_pinned_bytes() == 0


def test_torch_compile_does_not_trace_into_the_streaming_hooks(models_dir):
    """The hooks run outside the graph (torch.compiler.disable): after the first call no step compiles anything
    again, whatever the streamer's state (today's hooks made Parameters and changed sets inside the graph)."""
    from torch._dynamo.utils import counters

    from engine.demo.flux import flux_transformer
    from engine.memory.strategies import Component, SwapContext

    torch.manual_seed(0)
    tr = flux_transformer()
    cfg = tr.config
    gen = torch.Generator().manual_seed(1)
    feed = dict(hidden_states=torch.randn(1, 16, cfg.in_channels, generator=gen),
                encoder_hidden_states=torch.randn(1, 8, cfg.joint_attention_dim, generator=gen),
                pooled_projections=torch.randn(1, cfg.pooled_projection_dim, generator=gen),
                timestep=torch.tensor([0.5]), img_ids=torch.zeros(16, 3), txt_ids=torch.zeros(8, 3),
                guidance=torch.tensor([3.5]), return_dict=False)
    with torch.no_grad():
        base = tr(**feed)[0]
    ledger = MemoryManager("cpu", backend=SimBackend(run_ahead=8, materialize=True))
    ledger.register("t", tr, "transformer")
    comps = [Component("t", "transformer", tr, "transformer")]
    settings = SwapSettings(mode="block_swap", blocks_resident=1, prefetch=1)
    torch._dynamo.reset()
    counters.clear()
    compiled = torch.compile(tr, backend="eager")
    graphs = []
    with torch.no_grad():
        for _ in range(3):
            with ledger.swap.session(comps, settings, SwapContext()):
                out = compiled(**feed)[0]
            assert torch.equal(out, base)
            graphs.append(counters["stats"]["unique_graphs"])
    assert graphs[0] > 0 and graphs[1] == graphs[0] == graphs[2], graphs
    reasons = [reason for reason in counters["graph_break"] if "Hook." in reason or "hook" in reason.lower()]
    assert reasons and len(reasons) == len(counters["graph_break"]), list(counters["graph_break"])
    assert all("torch.compiler.disable" in reason for reason in reasons)  # a skipped hook, never a traced one
    torch._dynamo.reset()


def test_disk_offload_under_the_simulator_pins_nothing(models_dir, tmp_path):
    """Disk offload: streamed weights stay in the safetensors file; nothing is pinned, the pixels are none's."""
    engine = Engine(device="cpu", models_dir=models_dir, demo=True, offload_device="disk", outputs_dir=tmp_path)
    base = np.asarray(engine.run(t2i(FLUX, "none")).images[0]).astype(int)
    sim = engine.memory.backend = SimBackend(run_ahead=None, materialize=True)
    result = engine.run(t2i(FLUX, "block_swap"))
    assert np.abs(np.asarray(result.images[0]).astype(int) - base).max() <= 1
    assert sim.peak_pinned == 0 and result.metadata["memory"]["sessions"][-1]["device_slab_bytes"] > 0
    assert any(op[0] == "copy" for op in sim.ops)
