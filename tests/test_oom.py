"""Out of memory on a step: ``torch.OutOfMemoryError`` raised from inside a transformer block (a forward
pre-hook on its first block, on CPU) gives a message naming the memory mode the plan says fits, frees what the run held (the
step's tensors, the ledger's device bytes, the allocator's cache), and the next run on every tab gives the
pixels of a fresh engine."""

from __future__ import annotations

import dataclasses
import re

import numpy as np
import pytest
import torch
from PIL import Image

from engine import (
    CatalogRequest,
    Engine,
    I2VRequest,
    IPAdapterRequest,
    LoraSpec,
    LoraStackRequest,
    ModelRef,
    PerceptionRequest,
    ReferenceImage,
    SwapSettings,
    TextToImageRequest,
)
from engine.demo import QWEN_LORA_FILES, demo_root
from engine.jobs import oom as oom_module
from engine.jobs.oom import LEANER, OutOfMemory
from engine.memory.manager import real_device

FLUX = ModelRef(repo_id="black-forest-labs/FLUX.1-dev")
TABS = ("text_to_image", "catalog", "ipadapter", "lora_stack", "i2v", "perception")


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    folder = tmp_path_factory.mktemp("oom-in")
    rng = np.random.default_rng(0)
    paths = {"ref": folder / "ref.png", "start": folder / "start.png", "pano": folder / "pano.png"}
    Image.fromarray(rng.integers(0, 255, (40, 40, 3), np.uint8)).save(paths["ref"])
    Image.fromarray(rng.integers(0, 255, (32, 32, 3), np.uint8)).save(paths["start"])
    x = np.arange(128) / 128
    pano = np.stack(np.broadcast_arrays(0.5 + 0.4 * np.sin(2 * np.pi * x)[None], np.linspace(0, 1, 64)[:, None],
                                        0.3 * np.ones((64, 128))), -1)
    Image.fromarray((pano * 255).astype(np.uint8)).save(paths["pano"])
    return {k: str(v) for k, v in paths.items()}


def request_for(tab: str, inputs, models_dir):
    small = {"prompt": "a lantern", "width": 64, "height": 64, "steps": 2, "seed": 3}
    if tab == "text_to_image":
        return TextToImageRequest(model=FLUX, **small)
    if tab == "catalog":
        return CatalogRequest(entry="FLUX.1-dev-SDNQ-uint4", **small)
    if tab == "ipadapter":
        return IPAdapterRequest(model=FLUX, references=(ReferenceImage(inputs["ref"]),), **small)
    if tab == "lora_stack":
        lora = LoraSpec(path=str(demo_root(models_dir) / QWEN_LORA_FILES[0]))
        return LoraStackRequest(model=ModelRef(repo_id="Qwen/Qwen-Image"), loras=(lora,),
                                **{**small, "width": 32, "height": 32})
    if tab == "i2v":
        return I2VRequest(image=inputs["start"], prompt="waves", resolution="custom", width=32, height=32,
                          num_frames=5, steps=2, seed=5, swap=SwapSettings(), preview_every=0)
    return PerceptionRequest(panorama=inputs["pano"], tasks=("depth",), steps=1, seed=3)


def output_of(result) -> np.ndarray:
    """The run's pixels: the image, the video's last frame (lossless PNG) or the depth map's float data."""
    if result.images:
        return np.asarray(result.images[0])
    if result.video_path:
        with Image.open(next(f for f in result.files if f.endswith("-last-frame.png"))) as im:
            return np.asarray(im.convert("RGB"))
    return np.load(next(f for f in result.files if f.endswith("-depth.npy")))


class OOMInBlock:
    """Arms a forward pre-hook on the first block of every transformer in the engine's ledger that raises
    ``torch.OutOfMemoryError``, once."""

    def __init__(self, engine):
        self.engine = engine
        self.raised = 0
        self.handles = []

    def hook(self, module, args, kwargs):
        if self.raised:
            return None
        self.raised += 1
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB (simulated)")

    def __enter__(self):
        memory = self.engine.memory
        for name in memory.names():
            entry = memory.entry(name)
            if entry.role != "transformer":
                continue
            blocks = [m for n, m in entry.module.named_children() if n.endswith("blocks")]
            if blocks and len(blocks[0]):
                self.handles.append(blocks[0][0].register_forward_pre_hook(self.hook, with_kwargs=True))
        assert self.handles, "no transformer block to arm"
        return self

    def __exit__(self, *exc):
        for handle in self.handles:
            handle.remove()


@pytest.fixture(scope="module")
def engines(models_dir, tmp_path_factory):
    def make(name):
        return Engine(device="cpu", models_dir=models_dir, demo=True, outputs_dir=tmp_path_factory.mktemp(name))

    return make("oom-out"), make("fresh-out")


@pytest.mark.parametrize("tab", TABS)
def test_oom_in_a_block_says_which_mode_fits_frees_the_run_and_the_next_run_equals_a_fresh_engine(
        engines, inputs, models_dir, tab, monkeypatch):
    engine, fresh = engines
    req = request_for(tab, inputs, models_dir)
    engine.run(req)  # warm: the models are loaded and shared, as in a long-running app
    freed = []
    real_free = oom_module.free_cached
    monkeypatch.setattr(oom_module, "free_cached", lambda: (freed.append(1), real_free())[1])
    with OOMInBlock(engine) as oom, pytest.raises(OutOfMemory) as caught:
        engine.run(req)
    monkeypatch.undo()
    assert oom.raised == 1
    message = str(caught.value)
    current = req.swap.mode
    assert f"out of memory on cpu in memory mode '{current}'" in message
    assert "Traceback" not in message and "simulated" in message  # torch's own first line is kept
    # the mode named is the plan's: the first leaner mode whose plan fits
    for mode in LEANER[LEANER.index(current) + 1:]:
        plan = engine.plan(dataclasses.replace(req, swap=SwapSettings(mode=mode)))
        if plan.fits and plan.weights_peak:
            assert f"The plan says memory mode '{mode}' fits: {plan.explanation}" in message
            assert caught.value.mode == mode
            break
    else:
        pytest.fail(f"no mode fits by the plan, yet the message reads: {message}")
    assert freed == [1], "the allocator's cache was not emptied after the failure"
    for name in engine.memory.names():  # the ledger is true: no strategy left attached, books match the tensors
        entry = engine.memory.entry(name)
        assert entry.residency is None, name
        assert entry.device == real_device(entry.module), name
    assert not engine.busy
    np.testing.assert_array_equal(output_of(engine.run(req)), output_of(fresh.run(req)))


def test_oom_under_a_budget_names_a_leaner_mode_that_fits(models_dir, tmp_path):
    """With a budget where every component resident does not fit, the plan's advice is a mode that does."""
    engine = Engine(device="cpu", models_dir=models_dir, demo=True, outputs_dir=tmp_path)
    req = TextToImageRequest(model=FLUX, prompt="x", width=64, height=64, steps=2, seed=1)
    resident = engine.plan(req)
    budget_gb = resident.predicted_peak * 0.75 / 2**30
    budgeted = dataclasses.replace(req, swap=SwapSettings(mode="none", max_vram_gb=budget_gb))
    assert not engine.plan(budgeted).fits
    engine.run(req)
    with OOMInBlock(engine), pytest.raises(OutOfMemory) as caught:
        engine.run(budgeted)
    named = re.search(r"memory mode '(\w+)' fits", str(caught.value))
    assert named, str(caught.value)
    fit = engine.plan(dataclasses.replace(req, swap=SwapSettings(mode=named.group(1), max_vram_gb=budget_gb)))
    assert named.group(1) != "none" and fit.fits
