"""What a load copies into RAM before the mode places anything (``ComponentSize.load_copy``): the store loads a
whole pipeline first, so a file that converts as it loads (a cast from its stored dtype, ComfyUI's scaled fp8
multiplied out) needs its converted weights in RAM all at once, whatever the mode keeps afterwards. The plan
counts it, measured here against the process's anonymous memory, and refuses a run whose load would not fit."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from engine import Engine, InputError, ModelRef, SwapSettings, TextToImageRequest
from engine.memory import devices
from engine.memory.planner import MiB
from engine.plan import folder_sizes, load_dtype_tag

ROOT = Path(__file__).resolve().parent.parent
FLUX = ModelRef(repo_id="black-forest-labs/FLUX.1-dev")  # "auto": bf16 on CUDA, where the demo's fp32 files cast


def t2i(mode: str, model: ModelRef = FLUX) -> TextToImageRequest:
    return TextToImageRequest(model=model, prompt="a lighthouse", width=64, height=64, steps=1, seed=1,
                              swap=SwapSettings(mode=mode, blocks_resident=1, prefetch=1, block_size_mb=10))


@pytest.fixture
def engine(models_dir, tmp_path, monkeypatch):
    """An engine that plans as on an 8 GiB card with 6 GiB free (no CUDA call reaches torch)."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda index=0: (6 * 2**30, 8 * 2**30))
    monkeypatch.setattr(torch.cuda, "memory_reserved", lambda index=0: 0)
    engine = Engine(device="cpu", models_dir=models_dir, demo=True, outputs_dir=tmp_path)
    monkeypatch.setattr(engine.memory, "compute_device", "cuda:0")
    return engine


def test_a_load_that_casts_needs_the_cast_weights_in_ram_whatever_the_mode(engine):
    folder = engine.store.resolve_local(FLUX)
    sizes = folder_sizes(folder, 2, load_dtype=load_dtype_tag("auto", "cuda:0"))
    copied = sum(c.load_copy for c in sizes)
    assert copied == sum(c.total for c in sizes)  # every fp32 weight becomes a new bf16 one
    none = engine.plan(t2i("none"))
    assert none.host_bytes == copied and none.pinned_bytes == 0  # "every weight on the GPU", but it loads via RAM
    assert none.host_how.startswith("while loading: ") and "transformer" in none.host_how
    swap = engine.plan(t2i("block_swap"))
    assert swap.host_bytes == copied and swap.pinned_bytes > 0  # the load is the worst moment here too
    # the same files in their own dtype map: the modes' own figures come back
    same = engine.plan(t2i("none", ModelRef(repo_id=FLUX.repo_id, dtype="float32")))
    assert same.host_bytes == 0


def test_what_is_loaded_already_copies_nothing_more(engine):
    assert engine.plan(t2i("none")).host_bytes > 0
    engine.store.load_pipeline(FLUX)  # on this machine's CPU, in the dtype the plan expects on the card
    plan = engine.plan(t2i("none"))
    assert plan.host_bytes == 0 and not plan.host_how.startswith("while loading")


def test_a_run_whose_load_does_not_fit_is_refused_before_loading(engine, monkeypatch):
    need = engine.plan(t2i("none")).host_bytes
    monkeypatch.setattr(devices, "host_available", lambda: need // 2)
    with pytest.raises(InputError) as err:
        engine.run(t2i("none"))
    assert err.value.field == "swap.mode"
    assert "while loading" in err.value.message and "memory-mapped" in err.value.message
    assert engine.memory.names() == []


MEASURE = """
import gc, sys, threading, time
from engine import Engine, ModelRef
from engine.requests import SingleFiles

def anon():
    with open("/proc/self/status") as status:
        return next(int(l.split()[1]) * 1024 for l in status if l.startswith("RssAnon:"))

folder, file, dtype, models, out, part = sys.argv[1:7]
ref = ModelRef(path=folder, dtype=dtype, files=SingleFiles(**{part: file}) if file else SingleFiles())
engine = Engine(device="cpu", models_dir=models, demo=True, outputs_dir=out)
# the first load imports diffusers' and transformers' model code (tens of MiB of its own): done before measuring
from diffusers.loaders import single_file_utils  # noqa: F401
from engine.comfy_models import single_file  # noqa: F401
engine.store.load_pipeline(ModelRef(repo_id="black-forest-labs/FLUX.1-dev"))
engine.store.unload_all()
gc.collect()
peak, done = [0], threading.Event()
def sample():
    while not done.is_set():
        peak[0] = max(peak[0], anon())
        time.sleep(0.0005)
before = anon()
sampler = threading.Thread(target=sample)
sampler.start()
engine.store.load_pipeline(ref)
done.set()
sampler.join()
print("peak_growth", max(peak[0], anon()) - before)
"""


def _measured_growth(folder: Path, file: str, dtype: str, models_dir: Path, tmp_path: Path, part: str) -> int:
    """Peak anonymous-memory growth of loading the pipeline in ``folder`` (``file`` replacing ``part``), in a fresh
    process."""
    done = subprocess.run([sys.executable, "-c", MEASURE, str(folder), file, dtype, str(models_dir),
                           str(tmp_path / "out"), part], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return int(done.stdout.split("peak_growth")[-1])


@pytest.mark.skipif(not os.path.exists("/proc/self/status"), reason="needs Linux /proc")
def test_a_scaled_fp8_t5_encoder_loads_memory_mapped_as_planned(models_dir, tmp_path):
    """ComfyUI's ``t5xxl_fp8_e4m3fn_scaled`` kept fp8 as stored: its load allocates next to nothing (it was the
    encoder multiplied out to the compute dtype, four times the file in fp32)."""
    from safetensors.torch import save_file
    from transformers import T5Config, T5EncoderModel

    from engine.comfy_models import scaled_fp8
    from engine.demo import demo_root

    folder = tmp_path / "flux-wide-t5"
    shutil.copytree(demo_root(models_dir) / "flux-dev", folder)
    config = T5Config.from_pretrained(folder / "text_encoder_2")
    config.update({"d_model": 1024, "d_ff": 2816, "num_layers": 8, "num_heads": 16, "d_kv": 64})
    config.save_pretrained(folder / "text_encoder_2")
    torch.manual_seed(0)
    state = scaled_fp8.quantize(T5EncoderModel(config).state_dict())
    file = str(tmp_path / "t5xxl-wide_fp8_e4m3fn_scaled.safetensors")
    save_file({k: v.contiguous() for k, v in state.items() if k != "encoder.embed_tokens.weight"}, file)
    fp32 = sum(v.numel() * 4 for k, v in state.items() if k.endswith(".weight"))
    del state
    planned = next(c for c in folder_sizes(folder, 4, {"text_encoder_2": file}, load_dtype_tag("auto", "cpu"))
                   if c.name == "text_encoder_2")
    grown = _measured_growth(folder, file, "auto", models_dir, tmp_path, "text_encoder_2")
    assert planned.load_copy == 0 and planned.total < 0.5 * fp32  # a byte a Linear weight; the embedding as stored
    assert grown < 0.1 * fp32, f"+{grown / MiB:.0f} MiB for a memory-mapped load of a {fp32 / MiB:.0f} MiB encoder"


def _wide_flux(models_dir: Path, folder: Path):
    """The demo Flux folder with a transformer wide enough (211 MiB in fp32) to see above the allocator's noise."""
    from diffusers import FluxTransformer2DModel

    from engine.demo import demo_root

    shutil.copytree(demo_root(models_dir) / "flux-dev", folder)
    config = FluxTransformer2DModel.load_config(folder / "transformer")
    config.update(num_attention_heads=8, num_layers=4, num_single_layers=4)
    torch.manual_seed(0)
    return FluxTransformer2DModel.from_config(config)


@pytest.mark.skipif(not os.path.exists("/proc/self/status"), reason="needs Linux /proc")
@pytest.mark.parametrize("case", ["folder in its dtype", "folder fp32 loaded as bf16", "ComfyUI scaled fp8",
                                  "single file in its dtype", "plain fp8 single file"])
def test_the_planned_load_copy_is_what_the_load_allocates(models_dir, tmp_path, case):
    """Measured in a fresh process, after a first load has imported the model code: in the test's own process the
    allocator would hand the load memory freed earlier, and the growth would not show."""
    from safetensors.torch import save_file

    from engine.comfy_models import scaled_fp8
    from engine.comfy_models.layouts import flux_to_original

    folder = tmp_path / "flux-wide"
    wide = _wide_flux(models_dir, folder)
    weights = sum(p.numel() * p.element_size() for p in wide.parameters())
    file, dtype = "", "auto"  # auto on the CPU: fp32, the files' own dtype
    if case.startswith("folder"):
        wide.save_pretrained(folder / "transformer")
        dtype = "bfloat16" if "bf16" in case else dtype
    else:
        wide.save_config(folder / "transformer")
        state = flux_to_original(wide.state_dict(), 4, 4)
        if "scaled" in case:
            state = scaled_fp8.quantize(state)  # as ComfyUI writes them
        elif "plain fp8" in case:  # the usual fp8 file: matrices in fp8, biases and norms as they were
            state = {k: v.to(torch.float8_e4m3fn) if v.ndim == 2 else v for k, v in state.items()}
        file = str(tmp_path / "flux-wide.safetensors")
        save_file({k: v.contiguous() for k, v in state.items()}, file)
        del state
    del wide
    planned = next(c for c in folder_sizes(folder, 2 if dtype == "bfloat16" else 4,
                                           {"transformer": file} if file else None, load_dtype_tag(dtype, "cpu"))
                   if c.name == "transformer").load_copy
    grown = _measured_growth(folder, file, dtype, models_dir, tmp_path, "transformer")
    if case.endswith("in its dtype") or "plain fp8" in case:  # memory-mapped as stored (fp8 stays fp8)
        assert planned == 0 and grown < 0.2 * weights, f"+{grown / MiB:.0f} MiB for a memory-mapped load"
    else:
        assert planned > 0.4 * weights
        assert 0.7 * planned <= grown <= 1.4 * planned, f"planned {planned / MiB:.0f} MiB, +{grown / MiB:.0f} MiB"
