"""The plan before a run: device figure = resident blocks + fixed slabs + activations (the weight part stated
exactly), the budget from the GPU's free memory minus a stated reserve, scaled fp8 files planned as loaded, the
host RAM each mode needs (shown in the memory-mode widget), and runs refused before loading when the machine
lacks the RAM or ``max_vram_gb`` is below the slabs."""

from __future__ import annotations

import pytest
import torch

from engine import Engine, InputError, ModelRef, SwapSettings, TextToImageRequest
from engine.memory import devices
from engine.memory.planner import GiB, Layout, MiB
from engine.plan import folder_sizes

FLUX = ModelRef(repo_id="black-forest-labs/FLUX.1-dev")
FLUX32 = ModelRef(repo_id=FLUX.repo_id, dtype="float32")  # the demo files' own dtype: loads memory-mapped, no copy


def t2i(mode: str, model: ModelRef = FLUX, **kw) -> TextToImageRequest:
    swap = SwapSettings(mode=mode, **{"blocks_resident": 1, "prefetch": 1, "block_size_mb": 10, **kw})
    return TextToImageRequest(model=model, prompt="a lighthouse", width=64, height=64, steps=1, seed=1, swap=swap)


@pytest.fixture
def engine(models_dir, tmp_path):
    return Engine(device="cpu", models_dir=models_dir, demo=True, outputs_dir=tmp_path)


@pytest.fixture
def disk_engine(models_dir, tmp_path):
    return Engine(device="cpu", models_dir=models_dir, demo=True, offload_device="disk", outputs_dir=tmp_path)


GPU_FREE, GPU_TOTAL, GPU_HELD = 6 * GiB, 8 * GiB, 1 * GiB


@pytest.fixture
def on_cuda(monkeypatch):
    """Plan as on an 8 GiB card with 6 GiB free and 1 GiB held by this process (no CUDA call reaches torch)."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda index=0: (GPU_FREE, GPU_TOTAL))
    monkeypatch.setattr(torch.cuda, "memory_reserved", lambda index=0: GPU_HELD)

    def make(engine):
        monkeypatch.setattr(engine.memory, "compute_device", "cuda:0")
        return engine
    return make


def flux_sizes(engine, elem: int):
    return {c.name: c for c in folder_sizes(engine.store.resolve_local(FLUX), elem)}


def test_slabs_are_prefetch_plus_one_of_the_largest_group_whatever_the_order():
    layout = Layout(resident=0, groups=((0,), (1,), (2,), (3,)), prefetch=1)
    # fixed slabs reused in rotation: 2 x the largest group, not the largest pair of neighbours (40)
    assert layout.window_bytes((10, 30, 10, 10)) == 60
    assert Layout(0, ((0,), (1,)), prefetch=4).window_bytes((10, 30)) == 60  # never more slabs than groups


def test_budget_is_free_memory_plus_held_minus_the_stated_reserve(engine, on_cuda):
    on_cuda(engine)
    plan = engine.plan(t2i("block_swap"))
    reserve = 512 * MiB + int(0.02 * GPU_TOTAL)
    assert plan.budget == GPU_FREE + GPU_HELD - reserve  # not total x 0.9 (7.2 GiB)
    assert any("free" in n and "reserve" in n for n in plan.notes)
    # max_vram_gb still wins
    assert engine.plan(t2i("block_swap", max_vram_gb=2.0)).budget == 2 * GiB


def test_device_weights_are_resident_blocks_plus_slabs_exactly(engine, on_cuda):
    on_cuda(engine)
    transformer = flux_sizes(engine, 2)["transformer"]  # bf16 on CUDA
    plan = engine.plan(t2i("block_swap", blocks_resident=1, prefetch=1))
    assert plan.resident_weights == transformer.rest + transformer.blocks[0]
    assert plan.slab_bytes == 2 * max(transformer.blocks[1:])
    # the peak is the worst moment: denoising (those weights with the run's activations) or an encoder's
    assert plan.predicted_peak == plan.weights_peak + plan.activations
    assert plan.predicted_peak >= plan.resident_weights + plan.slab_bytes + plan.run_activations
    assert "resident +" in plan.explanation and "slabs" in plan.explanation


def test_host_ram_per_mode_on_a_gpu(engine, disk_engine, on_cuda):
    sizes = flux_sizes(engine, 4)
    assert not any(c.load_copy for c in sizes.values())
    transformer = sizes["transformer"]
    others = sum(c.total for n, c in sizes.items() if n != "transformer")
    total = others + transformer.total
    on_cuda(engine)
    none, offload, swap = (engine.plan(t2i(m, FLUX32)) for m in ("none", "model_offload", "block_swap"))
    assert (none.host_bytes, none.pinned_bytes) == (0, 0)
    assert (offload.host_bytes, offload.pinned_bytes) == (total, 0)
    streamed = sum(transformer.blocks[1:])
    # streamed blocks once, pinned; the resident block and the rest have no host copy; encoders/VAE pageable
    assert (swap.host_bytes, swap.pinned_bytes) == (streamed + others, streamed)
    assert swap.host_line.startswith("block_swap: ") and "GiB of host RAM" in swap.host_line
    assert "host RAM" in swap.explanation
    # disk offload: the streamed weights stay in the files, pinned = the slabs' staging only
    on_cuda(disk_engine)
    disk = disk_engine.plan(t2i("block_swap", FLUX32))
    assert disk.pinned_bytes == disk.slab_bytes == 2 * max(transformer.blocks[1:])
    # plus one encoder or the VAE passing through RAM as it loads back from disk
    largest_other = max(c.total for n, c in sizes.items() if n != "transformer")
    assert disk.host_bytes == disk.slab_bytes + largest_other


def test_scaled_fp8_file_is_planned_as_the_bf16_it_loads_as(engine, models_dir, tmp_path):
    from safetensors.torch import load_file, save_file

    from engine.comfy_models import scaled_fp8
    from engine.demo.comfy import build_demo_comfy
    from engine.requests import SingleFiles

    plain = build_demo_comfy(models_dir) / "diffusion_models/flux1-dev-tiny.safetensors"
    scaled = scaled_fp8.quantize(load_file(str(plain)))  # as ComfyUI writes them
    path = tmp_path / "flux1-dev-tiny_fp8_scaled.safetensors"
    save_file(scaled, str(path))

    def request(file):
        return TextToImageRequest(model=ModelRef(repo_id=FLUX.repo_id, files=SingleFiles(transformer=str(file))),
                                  prompt="x", width=32, height=32, steps=1, swap=SwapSettings(mode="none"))

    # multiplied out on load to the compute dtype (fp32 on the CPU): the bytes of the plain file, scales gone
    assert engine.plan(request(path)).weights_peak == engine.plan(request(plain)).weights_peak
    pipe = engine.store.load_pipeline(request(path).model)
    loaded = engine.memory.entry(engine.store._names[id(pipe.transformer)]).bytes
    planned = next(c for c in folder_sizes(engine.store.resolve_local(FLUX), 4, {"transformer": str(path)})
                   if c.name == "transformer")
    assert planned.total == loaded


def test_a_run_that_does_not_fit_the_ram_is_refused_before_loading(engine, on_cuda, monkeypatch):
    on_cuda(engine)
    need = engine.plan(t2i("block_swap", FLUX32)).host_bytes
    monkeypatch.setattr(devices, "host_available", lambda: need // 2)
    with pytest.raises(InputError) as err:
        engine.run(t2i("block_swap", FLUX32))
    message = err.value.message
    assert err.value.field == "swap.mode"
    assert engine.plan(t2i("block_swap", FLUX32)).host_line in message  # the figure
    assert "none fits" in message  # the leaner mode that fits (everything on the 8 GiB card: no host RAM)
    assert engine.memory.names() == []  # refused before anything loaded


def test_too_little_ram_on_the_cpu_names_disk_offload(engine, monkeypatch):
    """Without a GPU the weights a mode keeps on the compute device are RAM: with disk offload, layer streaming
    keeps a layer at a time."""
    need = engine.plan(t2i("block_swap")).host_bytes
    monkeypatch.setattr(devices, "host_available", lambda: need // 2)
    with pytest.raises(InputError) as err:
        engine.run(t2i("block_swap"))
    assert "GiB of host RAM" in err.value.message
    assert "layerwise with disk offload" in err.value.message
    monkeypatch.setattr(devices, "host_available", lambda: 0)
    with pytest.raises(InputError) as err:
        engine.run(t2i("block_swap"))
    assert "no mode fits this machine's RAM" in err.value.message


def test_max_vram_below_resident_and_slabs_is_refused_with_the_minimum(disk_engine):
    plan = disk_engine.plan(t2i("block_swap", blocks_resident=1, prefetch=1))
    below = 0.8 * plan.predicted_peak / GiB
    with pytest.raises(InputError) as err:
        disk_engine.run(t2i("block_swap", blocks_resident=1, prefetch=1, max_vram_gb=round(below, 4)))
    assert err.value.field == "swap.max_vram_gb"
    assert f"minimum {plan.predicted_peak / GiB:.3f} GB" in err.value.message and "slabs" in err.value.message


def test_the_memory_widget_shows_the_host_ram(engine, on_cuda):
    from ui.memory_mode import _gib, plan_text

    on_cuda(engine)
    text = plan_text(engine, lambda mode: t2i(mode), "block_swap")
    plan = engine.plan(t2i("block_swap"))
    assert "Host RAM" in text and f"{_gib(plan.host_bytes)} GiB ({_gib(plan.pinned_bytes)} pinned)" in text


def test_an_encoder_s_moment_is_not_charged_the_denoising_activations():
    """The device peak is the worst moment: an XXL text encoder computes with its own small activations, not the
    video's; charging it the denoising estimate made adaptive refuse a 24 GiB card for the ComfyUI Wan setup."""
    from engine.memory.planner import ComponentSize, plan_swap
    from engine.requests import SwapSettings

    blocks = (GiB,) * 8
    transformer = ComponentSize("transformer", "transformer", GiB + sum(blocks), blocks, GiB // 8)
    encoder = ComponentSize("text_encoder", "text_encoder", 6 * GiB, (), GiB // 4, activations=100 * MiB)
    vae = ComponentSize("vae", "vae", GiB // 4, (), GiB // 16)
    act = 5 * GiB  # a long video's denoising / decoding estimate
    plan = plan_swap([transformer, encoder, vae], SwapSettings(mode="block_swap", blocks_resident=0, prefetch=1),
                     "cuda:0", 12 * GiB, act)
    denoise = GiB + 2 * GiB  # the rest + two one-block slabs
    assert plan.predicted_peak == max(denoise + act, 6 * GiB + 100 * MiB) == 8 * GiB and plan.fits
    # an encoder big enough makes its own moment the worst, with its own activations
    big = ComponentSize("text_encoder", "text_encoder", 11 * GiB, (), GiB // 4, activations=100 * MiB)
    plan = plan_swap([transformer, big, vae], SwapSettings(mode="block_swap", blocks_resident=0, prefetch=1),
                     "cuda:0", 12 * GiB, act)
    assert (plan.weights_peak, plan.activations, plan.run_activations) == (11 * GiB, 100 * MiB, act)
    assert plan.fits  # 11.1 GiB: it was refused as 16 GiB (11 + the video's 5)
