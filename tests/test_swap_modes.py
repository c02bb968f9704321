"""Memory modes on the tiny demo models: same pixels as ``none``, true residency at every block, no hooks or
memory left behind, the bytes each mode must move and no more, and the plan against what the ledger measured.

Compute is the CPU here; with ``offload_device="disk"`` an offloaded tensor really leaves (to a safetensors
file and the meta device), so "at most N blocks on the compute device" is a real check, not bookkeeping.
"""

from __future__ import annotations

import csv
import gc
import logging

import numpy as np
import psutil
import pytest
import torch
from PIL import Image

from engine import CatalogRequest, Engine, InputError, ModelRef, OutOfBudgetError, SwapSettings, TextToImageRequest
from engine.jobs.common import generator_for, run_denoise
from engine.memory.block_stream import find_blocks
from engine.memory.planner import GiB
from engine.memory.trace import FIELDS
from engine.requests import SWAP_MODES

FLUX = ModelRef(repo_id="black-forest-labs/FLUX.1-dev")
CHROMA = ModelRef(repo_id="lodestones/Chroma1-HD")
QWEN = ModelRef(repo_id="Qwen/Qwen-Image")
WAN = ModelRef(repo_id="Wan-AI/Wan2.2-I2V-A14B-Diffusers")
OUR_HOOKS = ("app_onload", "app_block_stream", "app_block_stream_root", "app_layer_meter", "group_offloading",
             "layer_execution_tracker", "lazy_prefetch_group_offloading")
# Every mode equals `none` to the last bit on these models in practice; the stated tolerance allows for CPU
# kernels taking other vector paths when a tensor comes back at another memory alignment (e.g. weights that
# diffusers memory-mapped at load and that a disk round trip re-allocates).
IMAGE_TOLERANCE = 1  # of 255
FRAME_TOLERANCE = 1e-5


def swap(mode: str, **kw) -> SwapSettings:
    return SwapSettings(mode=mode, **{"blocks_resident": 1, "prefetch": 1, "block_size_mb": 10, **kw})


def t2i(model: ModelRef, mode: str, **kw) -> TextToImageRequest:
    fields = {"prompt": "a lighthouse", "width": 64, "height": 64, "steps": 2, "seed": 7}
    fields.update({k: kw.pop(k) for k in list(kw) if k in fields})
    return TextToImageRequest(model=model, swap=swap(mode, **kw), **fields)


def pixels(result) -> np.ndarray:
    return np.asarray(result.images[0]).astype(int)


@pytest.fixture(scope="module")
def disk_engine(models_dir, tmp_path_factory):
    return Engine(device="cpu", models_dir=models_dir, demo=True, offload_device="disk",
                  outputs_dir=tmp_path_factory.mktemp("swap-out"))


def hook_names(pipe) -> list[tuple[str, str]]:
    """Every hook of ours (or diffusers' group offloading) on any submodule of the pipeline's components."""
    found = []
    for attr, module in pipe.components.items():
        if not isinstance(module, torch.nn.Module):
            continue
        for name, sub in module.named_modules():
            registry = getattr(sub, "_diffusers_hook", None)
            for hook in (registry._hook_order if registry is not None else []):
                if hook in OUR_HOOKS:
                    found.append((f"{attr}.{name}", hook))
            if getattr(sub, "_hf_hook", None) is not None:
                found.append((f"{attr}.{name}", type(sub._hf_hook).__name__))
    return found


@pytest.mark.parametrize("model", [FLUX, CHROMA, QWEN], ids=["flux", "chroma", "qwen"])
def test_every_mode_gives_the_pixels_of_none(disk_engine, model):
    base = pixels(disk_engine.run(t2i(model, "none")))
    for mode in [*SWAP_MODES, "block_swap", "none"]:  # and back: nothing of a mode stays behind
        result = disk_engine.run(t2i(model, mode))
        diff = np.abs(pixels(result) - base).max()
        assert diff <= IMAGE_TOLERANCE, f"{model.label} {mode}: max pixel difference {diff}"
        assert result.metadata["memory"]["mode"] == mode


def test_sdnq_int8_model_under_every_mode(disk_engine):
    def run(mode):
        return pixels(disk_engine.run(CatalogRequest(entry="FLUX.1-dev-SDNQ-uint4", prompt="a lighthouse", width=64,
                                                     height=64, steps=2, swap=swap(mode))))

    base = run("none")
    for mode in ("model_offload", "block_swap", "chunkwise", "layerwise", "none"):
        assert np.abs(run(mode) - base).max() <= IMAGE_TOLERANCE, mode


def wan_frames(engine, pipe, mode: str, **kw):
    image = Image.new("RGB", (32, 32), (120, 30, 200))
    call = dict(image=image, prompt="waves", height=32, width=32, num_frames=5, num_inference_steps=4,
                guidance_scale=3.0, generator=generator_for(3), output_type="np")
    return run_denoise(engine, pipe, call, 4, swap(mode, **kw), lambda f, m: None, None, {}).frames[0]


def test_two_expert_wan_every_mode_and_one_expert_at_a_time(disk_engine):
    pipe = disk_engine.store.load_pipeline(WAN)
    seen: list[tuple[str, bool, bool, bool]] = []

    def at_first_block(attr):
        def hook(module, args, kwargs=None):
            other = "transformer_2" if attr == "transformer" else "transformer"
            other_on = any(t.device.type != "meta" for t in getattr(pipe, other).parameters())
            encoder_on = any(t.device.type != "meta" for t in pipe.text_encoder.parameters())
            vae_on = any(t.device.type != "meta" for t in pipe.vae.parameters())
            seen.append((attr, other_on, encoder_on, vae_on))
        return hook

    handles = [find_blocks(getattr(pipe, attr))[0][1].register_forward_pre_hook(at_first_block(attr))
               for attr in ("transformer", "transformer_2")]
    try:
        base = wan_frames(disk_engine, pipe, "none")
        for mode in ("model_offload", "block_swap", "adaptive", "chunkwise", "layerwise", "none"):
            seen.clear()
            frames = wan_frames(disk_engine, pipe, mode)
            assert np.abs(frames - base).max() <= FRAME_TOLERANCE, mode
            # expert routing follows the boundary (0.875 of 1000 on 4 shifted steps: 2 high-noise, 2 low; CFG x2),
            # high-noise first, and no mode changes it
            order = [s[0] for s in seen]
            assert order == ["transformer"] * 4 + ["transformer_2"] * 4, (mode, order)
            if mode in ("model_offload", "block_swap", "chunkwise"):
                assert not any(other for _, other, _, _ in seen), f"{mode}: both experts on the device at once"
                assert not any(enc or vae for _, _, enc, vae in seen), f"{mode}: encoder/VAE on during denoising"
    finally:
        for h in handles:
            h.remove()


def test_at_most_the_configured_blocks_are_on_the_device_at_every_transition(disk_engine):
    pipe = disk_engine.store.load_pipeline(FLUX)
    blocks = [b for _, b in find_blocks(pipe.transformer)]
    name = disk_engine.store._names[id(pipe.transformer)]
    counts: list[tuple[int, str]] = []

    def on_compute() -> int:
        return sum(1 for b in blocks if all(t.device.type != "meta" for t in b.parameters()))

    def probe(module, args, kwargs=None):  # runs inside a block, while it computes
        counts.append((on_compute(), disk_engine.memory.snapshot_row(name)["blocks"]))

    def after(module, args, output):  # runs after the block's hook sent its group away
        counts.append((on_compute(), disk_engine.memory.snapshot_row(name)["blocks"]))

    handles = [next(b.children()).register_forward_pre_hook(probe) for b in blocks]
    handles += [b.register_forward_hook(after) for b in blocks]
    try:
        for settings, limit in ((swap("block_swap", blocks_resident=1, prefetch=0), 1 + 1),
                                (swap("block_swap", blocks_resident=1, prefetch=1), 1 + 2),
                                (swap("block_swap", blocks_resident=0, prefetch=2), 0 + 3),
                                (swap("chunkwise", blocks_resident=0, block_size_mb=3, prefetch=1), 3)):
            counts.clear()
            disk_engine.run(t2i(FLUX, settings.mode, **{k: getattr(settings, k) for k in
                                                         ("blocks_resident", "prefetch", "block_size_mb")}))
            assert counts, "the probes never ran"
            assert max(c for c, _ in counts) <= limit, (settings, counts)
            for real, described in counts:  # the ledger (and so the memory panel) says the same at that moment
                assert described == f"{real} of {len(blocks)} blocks", (settings, real, described)
            # between runs only the resident blocks stay
            assert on_compute() == settings.blocks_resident
    finally:
        for h in handles:
            h.remove()


def test_changing_modes_removes_every_hook_of_the_previous_one(disk_engine):
    pipe = disk_engine.store.load_pipeline(FLUX)
    for mode in ("block_swap", "layerwise", "model_offload", "adaptive", "chunkwise"):
        disk_engine.run(t2i(FLUX, mode))
        assert hook_names(pipe), f"{mode} installed no hooks"
        disk_engine.run(t2i(FLUX, "none"))
        assert hook_names(pipe) == [], f"left after {mode}: {hook_names(pipe)[:5]}"
        for attr in ("transformer", "text_encoder", "vae"):
            entry = disk_engine.memory.entry(disk_engine.store._names[id(getattr(pipe, attr))])
            assert entry.residency is None and entry.device == "cpu"


def test_repeated_identical_run_moves_only_what_its_mode_streams(disk_engine):
    pipe = disk_engine.store.load_pipeline(FLUX)
    disk_engine.run(t2i(FLUX, "none"))
    assert disk_engine.run(t2i(FLUX, "none")).metadata["memory"]["bytes_moved"] == 0
    first = disk_engine.run(t2i(FLUX, "block_swap", blocks_resident=1, prefetch=1))
    second = disk_engine.run(t2i(FLUX, "block_swap", blocks_resident=1, prefetch=1))
    third = disk_engine.run(t2i(FLUX, "block_swap", blocks_resident=1, prefetch=1))
    assert second.metadata["memory"]["sessions"][0]["reused_hooks"] is True
    moved = second.metadata["memory"]["bytes_moved"]
    assert moved == third.metadata["memory"]["bytes_moved"] < first.metadata["memory"]["bytes_moved"]
    streamer = disk_engine.memory.entry(disk_engine.store._names[id(pipe.transformer)]).residency
    calls = 2  # 2 steps, no CFG
    streamed = calls * sum(streamer.group_bytes)  # no wrap-around prefetch of group 0 after the last call
    encoders_and_vae = sum(disk_engine.memory.entry(disk_engine.store._names[id(m)]).bytes
                           for m in (pipe.text_encoder, pipe.text_encoder_2, pipe.vae))
    # model offload of the rest: each encoder and the VAE come in once and go back once
    assert moved == streamed + 2 * encoders_and_vae


def test_plan_predicts_the_measured_peak(models_dir, tmp_path):
    # a fresh engine: the ledger's peak counts every module on the compute device, other pipelines' too
    disk_engine = Engine(device="cpu", models_dir=models_dir, demo=True, offload_device="disk", outputs_dir=tmp_path)
    rows = []
    for mode in ("none", "model_offload", "block_swap", "chunkwise", "adaptive", "layerwise"):
        kw = {"max_vram_gb": 0.0095} if mode == "adaptive" else {}
        req = t2i(FLUX, mode, **kw)
        plan = disk_engine.plan(req)
        result = disk_engine.run(req)
        measured = result.metadata["memory"]["peak_compute_bytes"]
        rows.append((mode, plan.weights_peak, measured, plan.explanation))
        # weights dominate what the ledger measures; activations (the rest of the prediction) are not in it
        assert abs(plan.weights_peak - measured) <= 0.25 * measured, rows[-1]
        assert plan.explanation.startswith(mode)
    adaptive = next(r for r in rows if r[0] == "adaptive")
    assert "of 4 blocks resident" in adaptive[3] and not adaptive[3].startswith("adaptive: 4 of 4"), adaptive


def test_the_plan_counts_adapters_loras_and_the_omnix_batch(disk_engine, models_dir, tmp_path):
    """IP layers + projector + image encoder, LoRA layers and OmniX's adapter pairs are on the device during a
    run: the plan adds their bytes (from safetensors headers) to the base model's, and OmniX's two-item batch."""
    from engine import IPAdapterRequest, PerceptionRequest, ReferenceImage
    from engine.panorama.tasks import lora_files
    from engine.plan import file_bytes
    from engine.requests import LoraSpec, LoraStackRequest

    demo = models_dir / "demo"
    image = tmp_path / "ref.png"
    Image.fromarray(np.zeros((32, 64, 3), np.uint8)).save(image)
    none = swap("none")
    base = disk_engine.plan(t2i(FLUX, "none"))
    ip = disk_engine.plan(IPAdapterRequest(prompt="x", width=64, height=64, swap=none,
                                           references=(ReferenceImage(path=str(image)),)))
    encoder = file_bytes(demo / "siglip" / "model.safetensors", 4)
    adapter = file_bytes(demo / "flux-ip-adapter" / "ip-adapter.safetensors", 4)
    assert ip.weights_peak - base.weights_peak == encoder + adapter

    lora = demo / "loras" / "qwen-style-a.safetensors"
    plain = disk_engine.plan(LoraStackRequest(prompt="x", width=64, height=64, swap=none))
    stacked = disk_engine.plan(LoraStackRequest(prompt="x", width=64, height=64, swap=none,
                                                loras=(LoraSpec(path=str(lora)),)))
    assert stacked.weights_peak - plain.weights_peak == file_bytes(lora, 4)
    off = disk_engine.plan(LoraStackRequest(prompt="x", width=64, height=64, swap=none,
                                            loras=(LoraSpec(path=str(lora), enabled=False),)))
    assert off.weights_peak == plain.weights_peak  # a disabled entry is not loaded

    tasks = ("depth", "normal")
    pano = disk_engine.plan(PerceptionRequest(panorama=str(image), tasks=tasks, swap=none))
    pairs = sum(file_bytes(demo / "omnix" / f, 4) for f in lora_files(tasks))
    assert pano.weights_peak - base.weights_peak == pairs
    square = disk_engine.plan(t2i(FLUX, "none", width=1024, height=1024))
    assert pano.activations >= square.activations and pano.activations > 0


def test_bad_memory_settings_get_a_clear_message(disk_engine):
    with pytest.raises(InputError) as err:
        disk_engine.run(t2i(FLUX, "adaptive", max_vram_gb=0.000001))
    assert err.value.field == "swap.max_vram_gb" and "needs about" in err.value.message
    with pytest.raises(OutOfBudgetError):
        disk_engine.run(t2i(FLUX, "adaptive", max_vram_gb=0.004))
    plan = disk_engine.plan(t2i(FLUX, "block_swap", blocks_resident=99))
    assert any("99 resident blocks asked" in n for n in plan.notes)
    result = disk_engine.run(t2i(FLUX, "block_swap", blocks_resident=99))
    assert result.images
    with pytest.raises(InputError) as err:
        SwapSettings(mode="turbo").validate()
    assert err.value.field == "swap.mode"
    with pytest.raises(InputError):
        SwapSettings(mode="none", use_streams="yes").validate()


def test_cpu_only_with_a_cuda_only_option_falls_back_with_a_message(disk_engine):
    result = disk_engine.run(CatalogRequest(entry="FLUX.1-dev-SDNQ-uint4", prompt="a lighthouse", width=64, height=64,
                                            steps=2, use_quantized_matmul=True, swap=swap("cpu_only")))
    assert any("needs a CUDA GPU" in w for w in result.metadata["warnings"])


def test_a_pinning_failure_is_loud(disk_engine, caplog):
    from engine.memory.backend.simulated import SimBackend

    engine = Engine(device="cpu", models_dir=disk_engine.models_dir, demo=True, offload_device="cpu",
                    outputs_dir=disk_engine.outputs_dir)
    # a simulated GPU whose system refuses page-locked memory past 64 KiB (mmgp's partial-pin case)
    engine.memory.backend = SimBackend(run_ahead=8, materialize=True, pin_limit=64 * 1024)
    with caplog.at_level(logging.WARNING):
        result = engine.run(t2i(FLUX, "block_swap"))
    warning = next(w for w in result.metadata["warnings"] if "could be pinned" in w)
    assert "cudaHostAlloc" in warning and "2-3x longer" in warning and "ulimit -l" in warning
    assert any("pinning stopped" in r.getMessage() for r in caplog.records)
    base = pixels(engine.run(t2i(FLUX, "none")))
    assert np.abs(pixels(result) - base).max() <= IMAGE_TOLERANCE


def test_trace_csv_has_a_row_per_block_and_call(disk_engine):
    result = disk_engine.run(t2i(FLUX, "block_swap", trace=True))
    path = next(f for f in result.files if f.endswith(".csv"))
    with open(path) as f:
        rows = list(csv.DictReader(f))
    assert tuple(rows[0]) == FIELDS
    assert len(rows) == 2 * 4  # 2 steps x 4 blocks (one call per step)
    assert {r["step"] for r in rows} == {"0", "1"}
    assert all(float(r[k]) >= 0 for r in rows for k in ("copy_ms", "compute_ms", "wait_ms"))
    streamed = [r for r in rows if r["resident"] == "0"]
    assert streamed and all(float(r["copy_ms"]) > 0 for r in streamed)
    summary = result.metadata["memory"]["sessions"][0]["trace_summary"]
    assert summary["rows"] == 8 and summary["copy_ms"] > 0


def test_ram_stays_flat_over_20_runs_alternating_modes_and_models(models_dir, tmp_path):
    engine = Engine(device="cpu", models_dir=models_dir, demo=True, outputs_dir=tmp_path)
    plan = [(FLUX, "block_swap"), (QWEN, "model_offload"), (FLUX, "layerwise"), (QWEN, "chunkwise"),
            (FLUX, "none"), (QWEN, "adaptive"), (FLUX, "model_offload"), (QWEN, "layerwise"),
            (FLUX, "chunkwise"), (QWEN, "none")]
    proc = psutil.Process()
    rss = []
    # what earlier tests left on the heap is frozen out of the collections below: each then walks this test's own
    # objects (0.03 s), not the worker's millions (2 s each late in a suite); only their leaks are the question
    gc.collect()
    gc.freeze()
    try:
        for i in range(20):
            model, mode = plan[i % len(plan)]
            engine.run(t2i(model, mode))
            gc.collect()
            rss.append(proc.memory_info().rss)
    finally:
        gc.unfreeze()
    growth = (rss[-1] - rss[1]) / rss[1]
    assert growth <= 0.02, f"RSS grew {growth:.1%} from run 2 to run 20 ({rss[1] >> 20} -> {rss[-1] >> 20} MiB)"


def test_budget_in_gib_reaches_the_ledger_for_the_run_only(disk_engine):
    req = t2i(FLUX, "adaptive", max_vram_gb=0.0095)
    disk_engine.run(req)
    assert disk_engine.memory.session_budget is None
    assert disk_engine.plan(req).budget == int(0.0095 * GiB)


@pytest.fixture(scope="module")
def panorama_file(tmp_path_factory) -> str:
    """A smooth, horizontally periodic panorama of the smallest size the perception tab takes (128 x 64)."""
    x, y = np.meshgrid(np.arange(128) / 128, np.arange(64) / 64)
    rgb = np.stack([0.5 + 0.4 * np.sin(2 * np.pi * x), 0.5 + 0.3 * y, 0.2 + 0.6 * y], -1)
    path = tmp_path_factory.mktemp("pano") / "room.png"
    Image.fromarray((rgb * 255).astype(np.uint8)).save(path)
    return str(path)


@pytest.fixture
def fresh_disk_engine(models_dir, tmp_path):
    return Engine(device="cpu", models_dir=models_dir, demo=True, offload_device="disk", outputs_dir=tmp_path)


def perceive(engine, panorama: str, mode: str):
    from engine import PerceptionRequest

    return engine.run(PerceptionRequest(panorama=panorama, tasks=("depth",), steps=1, seed=3, swap=swap(mode)))


def maps_of(result) -> dict[str, np.ndarray]:
    return {k: np.asarray(Image.open(p)).astype(np.int64) for k, p in result.maps.items()}


def max_diff(got: dict[str, np.ndarray], base: dict[str, np.ndarray]) -> float:
    """The largest difference of any map, in 8-bit steps (16-bit maps scaled down)."""
    assert got and got.keys() == base.keys()
    return max(np.abs(got[k] - base[k]).max() / (257 if base[k].max() > 255 else 1) for k in base)


def test_perception_every_mode_with_disk_offload_gives_the_maps_of_none(fresh_disk_engine, panorama_file):
    """OmniX perception encodes its input through the VAE: under every mode that offloads the VAE (to disk here, so
    it sits on the meta device between uses) the input goes to the pipeline's execution device, and every mode
    gives the maps of ``none``. (A fresh engine; the tests below start from a transformer another tab's run left
    streamed or on disk.)"""
    def maps(mode: str) -> dict[str, np.ndarray]:
        result = perceive(fresh_disk_engine, panorama_file, mode)
        assert result.metadata["memory"]["mode"] == mode
        return maps_of(result)

    base = maps("none")
    for mode in ("model_offload", "block_swap", "adaptive", "chunkwise", "layerwise", "none"):
        diff = max_diff(maps(mode), base)
        assert diff <= IMAGE_TOLERANCE, f"perception {mode}: max difference {diff}"


def test_perception_after_an_adaptive_disk_run_of_another_tab(disk_engine, panorama_file):
    """A text-to-image run in adaptive with disk offload leaves the Flux transformer's streamed blocks on the meta
    device; OmniX must not add its adapters there (they would exist nowhere, and the next load would not find
    them): the transformer first comes wholly into memory, and the maps equal those of a fresh engine."""
    ref = maps_of(perceive(Engine(device="cpu", models_dir=disk_engine.models_dir, demo=True,
                                  outputs_dir=disk_engine.outputs_dir), panorama_file, "none"))
    disk_engine.run(t2i(FLUX, "adaptive", max_vram_gb=0.0095))
    transformer = disk_engine.store.load_pipeline(FLUX).transformer
    assert any(p.device.type == "meta" for p in transformer.parameters())  # what the bug needs: blocks on meta
    for mode in ("none", "model_offload"):
        got = maps_of(perceive(disk_engine, panorama_file, mode))
        assert max_diff(got, ref) <= IMAGE_TOLERANCE, mode


@pytest.mark.parametrize("mode", ["block_swap", "layerwise", "model_offload"])
def test_text_to_image_after_perception_in_a_disk_mode(fresh_disk_engine, panorama_file, mode):
    """The reverse order: perception in a mode that leaves the transformer streamed or on disk, then text to image.
    OmniX takes its adapters off a transformer that is wholly in memory (peft renames the wrapped tensors back,
    which a streamer's books or a disk file would not find), and the image equals a fresh engine's."""
    engine = fresh_disk_engine
    ref = pixels(Engine(device="cpu", models_dir=engine.models_dir, demo=True,
                        outputs_dir=engine.outputs_dir).run(t2i(FLUX, "none")))
    perceive(engine, panorama_file, mode)
    transformer = engine.store.load_pipeline(FLUX).transformer
    assert not any("lora" in n for n, _ in transformer.named_parameters())  # the adapters are off again
    for then in ("none", "model_offload"):
        assert np.abs(pixels(engine.run(t2i(FLUX, then))) - ref).max() <= IMAGE_TOLERANCE, then


def test_repeated_perception_under_block_swap_streams_every_time(fresh_disk_engine, panorama_file):
    """OmniX takes the memory mode off the transformer to change it, and the controller must forget the mode too: the
    next run with the same adapters (the same tensors as when the mode went on) re-applies it instead of reusing
    hooks whose streamer is gone, which would compute with the whole transformer resident, past the plan."""
    runs = [perceive(fresh_disk_engine, panorama_file, "block_swap").metadata["memory"]["sessions"][0]
            for _ in range(2)]
    assert [r["reused_hooks"] for r in runs] == [False, False]
    assert runs[1]["peak_compute_bytes"] == runs[0]["peak_compute_bytes"]
    name = fresh_disk_engine.memory.name_of(fresh_disk_engine.store.load_pipeline(FLUX).transformer)
    assert runs[1]["peak_compute_bytes"] < fresh_disk_engine.memory.entry(name).bytes


@pytest.mark.parametrize("sim", [False, True], ids=["cpu", "simulated-gpu"])
@pytest.mark.parametrize("mode", ["adaptive", "block_swap", "layerwise", "model_offload"])
def test_materialise_brings_every_weight_back_and_takes_the_mode_off(models_dir, tmp_path, mode, sim):
    """What a job that changes modules relies on: after a disk-offload run (resident blocks, streamed blocks on the
    meta device, diffusers' disk groups, or the whole transformer in a file), ``materialise`` leaves every tensor
    real in RAM with the very weights it had, and no mode (hooks, streamer, controller entry) on the pipeline."""
    from engine.memory.backend.simulated import SimBackend

    engine = Engine(device="cpu", models_dir=models_dir, demo=True, offload_device="disk", outputs_dir=tmp_path)
    if sim:
        engine.memory.backend = SimBackend(run_ahead=8, materialize=True)
    pipe = engine.store.load_pipeline(FLUX)
    weights = {k: v.clone() for k, v in pipe.transformer.state_dict().items()}
    engine.run(t2i(FLUX, mode, **({"max_vram_gb": 0.0095} if mode == "adaptive" and not sim else {})))
    name = engine.memory.name_of(pipe.transformer)
    engine.memory.materialise([name])
    assert engine.memory.entry(name).residency is None and engine.memory.entry(name).device == "cpu"
    assert hook_names(pipe) == []  # the whole mode came off (the next run re-applies it: see above)
    after = pipe.transformer.state_dict()
    assert after.keys() == weights.keys()
    for key, value in weights.items():
        assert after[key].device.type == "cpu" and torch.equal(after[key], value), key
