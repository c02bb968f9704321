"""The text-to-image slice end to end on the tiny Flux demo model, through the real diffusers path."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import threading

import numpy as np
import pytest
import torch
from PIL import Image

from engine import (
    Cancelled,
    Engine,
    EngineError,
    InputError,
    IPAdapterRequest,
    ModelLoadError,
    ModelRef,
    TextToImageRequest,
)
from engine.demo import demo_path
from engine.jobs.common import generator_for

FLUX = ModelRef(repo_id="black-forest-labs/FLUX.1-dev")


def flux_request(**kw) -> TextToImageRequest:
    base = {"model": FLUX, "prompt": "a red fox in the snow", "width": 64, "height": 64, "steps": 2, "seed": 1234}
    return TextToImageRequest(**{**base, **kw})


@pytest.fixture(scope="module")
def engine(models_dir, tmp_path_factory):
    return Engine(device="cpu", models_dir=models_dir, demo=True, outputs_dir=tmp_path_factory.mktemp("outputs"))


def test_slice_matches_raw_diffusers_pixel_for_pixel(engine, models_dir):
    from diffusers import FluxPipeline

    req = flux_request()
    seen = []
    result = engine.run(req, progress=lambda f, m: seen.append(f))
    assert len(result.images) == 1 and result.images[0].size == (64, 64)

    raw = FluxPipeline.from_pretrained(str(demo_path(models_dir, "flux-dev")), dtype=torch.float32)
    expected = raw(
        prompt=req.prompt, width=64, height=64, num_inference_steps=2, guidance_scale=req.guidance_scale,
        generator=generator_for(req.seed), output_type="pil",
    ).images[0]
    assert np.array_equal(np.asarray(result.images[0]), np.asarray(expected))

    png = [f for f in result.files if f.endswith(".png")][0]
    with Image.open(png) as im:
        assert np.array_equal(np.asarray(im.convert("RGB")), np.asarray(expected))
        assert json.loads(im.text["request"]) == req.to_dict()
    saved = [f for f in result.files if f.endswith(".json")][0]
    saved = json.loads(open(saved).read())
    assert {k: v for k, v in saved.items() if k != "needs"} == req.to_dict()
    assert saved["needs"] == []  # the demo's models are not files of the request: nothing to keep

    assert {"load", "denoise_decode", "total"} <= set(result.timings)
    assert seen == sorted(seen) and seen[-1] == 1.0
    roles = {m["role"] for m in result.memory["modules"]}
    assert {"transformer", "text_encoder", "vae"} <= roles
    names = [m["name"] for m in result.memory["modules"]]
    assert "black-forest-labs/FLUX.1-dev/transformer" in names
    assert result.memory["devices"][-1]["device"] == "cpu"


def test_same_seed_same_image_different_seed_different_image(engine):
    a = engine.run(flux_request()).images[0]
    b = engine.run(flux_request()).images[0]
    c = engine.run(flux_request(seed=99)).images[0]
    assert np.array_equal(np.asarray(a), np.asarray(b))
    assert not np.array_equal(np.asarray(a), np.asarray(c))


def test_cancel_stops_between_steps_and_leaves_no_stale_state(engine):
    cancel = threading.Event()
    steps_seen = []

    def progress(fraction, message):
        if message.startswith("step"):
            steps_seen.append(message)
            cancel.set()

    with pytest.raises(Cancelled):
        engine.run(flux_request(steps=6), progress=progress, cancel=cancel)
    assert len(steps_seen) == 1  # stopped after the first step, not at the end
    after = engine.run(flux_request()).images[0]
    fresh = Engine(device="cpu", models_dir=engine.models_dir, demo=True, outputs_dir=engine.outputs_dir)
    assert np.array_equal(np.asarray(after), np.asarray(fresh.run(flux_request()).images[0]))


def test_bad_input_raises_input_error_before_loading(engine):
    with pytest.raises(InputError) as err:
        engine.run(flux_request(width=65))
    assert err.value.field == "width"
    with pytest.raises(InputError):
        engine.run({"kind": "text_to_image"})


def test_unbuilt_job_says_so(engine, tmp_path, monkeypatch):
    from engine import ReferenceImage, jobs

    ref = tmp_path / "ref.png"
    Image.new("RGB", (8, 8)).save(ref)
    monkeypatch.delitem(jobs.RUNNERS, "ipadapter")  # as if this job had no runner yet
    with pytest.raises(EngineError, match="not built yet"):
        engine.run(IPAdapterRequest(model=FLUX, prompt="x", references=(ReferenceImage(str(ref)),)))


def test_components_are_shared_between_pipelines(engine):
    store = engine.store
    t2i = store.load_pipeline(FLUX)
    assert store.load_pipeline(FLUX) is t2i
    img2img = store.load_pipeline(FLUX, pipeline_class="FluxImg2ImgPipeline")
    assert type(img2img).__name__ == "FluxImg2ImgPipeline"
    assert img2img.transformer is t2i.transformer and img2img.text_encoder_2 is t2i.text_encoder_2
    names = engine.memory.names()
    assert names.count("black-forest-labs/FLUX.1-dev/transformer") == 1
    assert len(names) == len(set(names))


def test_remote_code_and_non_diffusers_folders_are_refused(engine, models_dir, tmp_path):
    src = demo_path(models_dir, "flux-dev")
    evil = tmp_path / "evil"
    shutil.copytree(src, evil)
    index = json.loads((evil / "model_index.json").read_text())
    index["transformer"] = ["my_package.modeling", "SneakyTransformer"]
    (evil / "model_index.json").write_text(json.dumps(index))
    with pytest.raises(ModelLoadError, match="custom code"):
        engine.store.load_pipeline(ModelRef(path=str(evil)))

    index["transformer"] = ["diffusers", "FluxTransformer2DModel"]
    index["_class_name"] = "SneakyPipeline"
    (evil / "model_index.json").write_text(json.dumps(index))
    with pytest.raises(ModelLoadError, match="not part of diffusers"):
        engine.store.load_pipeline(ModelRef(path=str(evil)))

    with pytest.raises(ModelLoadError, match="not a diffusers model folder"):
        engine.store.load_pipeline(ModelRef(path=str(tmp_path)))


def test_pickle_only_checkpoint_is_refused(engine, models_dir, tmp_path):
    from diffusers import FluxTransformer2DModel

    src = demo_path(models_dir, "flux-dev")
    pickled = tmp_path / "pickled"
    shutil.copytree(src, pickled)
    shutil.rmtree(pickled / "transformer")
    t = FluxTransformer2DModel.from_pretrained(str(src / "transformer"))
    t.save_pretrained(str(pickled / "transformer"), safe_serialization=False)
    assert not list((pickled / "transformer").glob("*.safetensors"))
    with pytest.raises(ModelLoadError, match="could not load"):
        engine.store.load_pipeline(ModelRef(path=str(pickled)))


def test_runs_are_serialised_by_the_device_lock(engine):
    spans, errors = [], []

    def worker(seed):
        marks = []
        try:
            engine.run(flux_request(seed=seed), progress=lambda f, m: marks.append((f, engine.busy)))
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)
        spans.append(marks)

    threads = [threading.Thread(target=worker, args=(s,)) for s in (1, 2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert all(busy for marks in spans for _, busy in marks)
    assert not engine.busy


def test_headless_run_of_a_saved_request(models_dir, tmp_path, engine):
    req = flux_request(seed=5)
    path = tmp_path / "request.json"
    path.write_text(json.dumps(req.to_dict()))
    out = tmp_path / "out"
    proc = subprocess.run(
        [sys.executable, "-m", "engine", "run", str(path), "--out", str(out), "--demo", "--models-dir", str(models_dir),
         "--device", "cpu"],
        capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    pngs = sorted(out.glob("*.png"))
    assert len(pngs) == 1 and str(pngs[0]) in proc.stdout
    with Image.open(pngs[0]) as im:
        assert np.array_equal(np.asarray(im.convert("RGB")), np.asarray(engine.run(req).images[0]))

    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({**req.to_dict(), "steps": 0}))
    proc = subprocess.run(
        [sys.executable, "-m", "engine", "run", str(bad), "--out", str(out), "--demo", "--models-dir", str(models_dir)],
        capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 2 and "steps" in proc.stderr and "Traceback" not in proc.stderr


def test_ram_stays_flat_across_runs(engine):
    """No per-run leak (the anchors' tools grow RAM run after run): after warm-up, 20 more runs of two
    pipelines must not grow the process."""
    import psutil

    from engine import CatalogRequest

    sdnq = CatalogRequest(entry="FLUX.1-dev-SDNQ-uint4", prompt="x", width=64, height=64, steps=2)
    proc = psutil.Process()
    for _ in range(3):
        engine.run(flux_request())
        engine.run(sdnq)
    before = proc.memory_info().rss
    for _ in range(10):
        engine.run(flux_request())
        engine.run(sdnq)
    assert proc.memory_info().rss - before < 16 * 2**20


def test_unload_all_frees_the_ledger_and_is_refused_during_a_run(engine):
    engine.run(flux_request())
    assert engine.memory.names()
    started, release = threading.Event(), threading.Event()

    def progress(fraction, message):
        if message.startswith("step"):
            started.set()
            release.wait(30)

    worker = threading.Thread(target=engine.run, args=(flux_request(steps=3),), kwargs={"progress": progress})
    worker.start()
    try:
        assert started.wait(60)
        with pytest.raises(EngineError, match="in progress"):
            engine.unload_all()
        assert engine.memory.names()
    finally:
        release.set()
        worker.join()
    assert engine.unload_all() > 0
    assert engine.memory.names() == [] and engine.store.loaded_pipelines() == []
    assert len(engine.run(flux_request()).images) == 1  # loads again on the next run
