"""Hosting: ZeroGPU durations per request kind (through the real ``spaces`` package), the over-limit refusal
(engine, UI and HTTP API), and the Dockerfile's pins against requirements.txt."""

from __future__ import annotations

import re
from dataclasses import replace
from pathlib import Path

import pytest

from engine import InputError
from engine.hosting import zerogpu as hosting
from engine.requests import (
    REQUEST_TYPES,
    CatalogRequest,
    I2VRequest,
    IPAdapterRequest,
    LoraStackRequest,
    PerceptionRequest,
    QuantizeRequest,
    SwapSettings,
    TextToImageRequest,
    TurboWanSettings,
)

ROOT = Path(__file__).resolve().parents[1]
ONE_OF_EACH = [TextToImageRequest(), CatalogRequest(), QuantizeRequest(), IPAdapterRequest(), LoraStackRequest(),
               PerceptionRequest(), I2VRequest()]


def test_every_request_kind_has_a_duration_estimate():
    assert {r.kind for r in ONE_OF_EACH} == set(REQUEST_TYPES)  # a new kind must be added here and to ESTIMATORS
    assert set(hosting.ESTIMATORS) == set(REQUEST_TYPES)


@pytest.mark.parametrize("request_", ONE_OF_EACH, ids=lambda r: r.kind)
def test_spaces_package_computes_the_duration_from_the_request(request_):
    """On ZeroGPU, ``spaces`` calls a callable duration with the wrapped call's own arguments
    (``static_duration(duration, *args, **kwargs)`` in spaces/zero/wrappers.py, which cannot be imported off
    CUDA torch) and schedules ``round(seconds)``: the seconds asked for are the engine's estimate for that very
    request, an int, whatever the progress and cancel arguments are."""
    spaces = pytest.importorskip("spaces")

    def run(request, progress, cancel):
        return request.kind

    assert spaces.GPU(duration=hosting.duration)(run) is run  # accepted, and a no-op off ZeroGPU
    seconds = hosting.duration(request_, lambda *a: None, None)
    assert isinstance(seconds, int) and seconds == hosting.estimate(request_).seconds
    assert hosting.MIN_DURATION_S <= seconds


def test_durations_grow_with_steps_size_frames_and_memory_mode():
    t2i = TextToImageRequest(width=1024, height=1024, steps=28)
    d = hosting.duration
    assert d(replace(t2i, steps=50)) > d(t2i)
    assert d(replace(t2i, width=2048, height=1024)) > d(t2i)
    assert d(replace(t2i, swap=SwapSettings(mode="layerwise"))) > d(replace(t2i, swap=SwapSettings(mode="adaptive"))) \
        > d(t2i)
    video = I2VRequest(num_frames=33, steps=8, swap=SwapSettings())
    assert d(replace(video, num_frames=81)) > 2 * (d(video) - 2 * hosting.LOAD_S)  # more than linear in frames
    assert d(replace(video, steps=4)) < d(video)
    lora = LoraStackRequest(width=1024, height=1024, steps=28)
    assert d(replace(lora, stage2=True, stage2_upscale=2.0)) > d(lora)
    pano = PerceptionRequest(tasks=("depth",))
    assert d(replace(pano, tasks=("depth", "normal", "albedo"))) > d(pano)
    quant = QuantizeRequest()
    assert d(replace(quant, components=("transformer", "text_encoder"))) > d(quant)
    assert d(replace(quant, use_svd=True)) > d(quant)
    assert d(replace(CatalogRequest(), use_torch_compile=True)) > d(CatalogRequest())


def test_a_run_over_the_limit_is_refused_with_the_estimate():
    long_video = I2VRequest(steps=40, num_frames=81)
    est = hosting.estimate(long_video)
    assert est.seconds > hosting.DEFAULT_LIMIT_S
    with pytest.raises(InputError) as info:
        hosting.check_limit(long_video)
    assert f"about {est.seconds} s" in info.value.message and "allows 300 s" in info.value.message
    assert info.value.field == "num_frames"
    turbo = replace(long_video, steps=4, turbo=TurboWanSettings(enabled=True), swap=SwapSettings())
    assert hosting.check_limit(turbo).seconds <= hosting.DEFAULT_LIMIT_S  # the advice in the message works


def test_the_limit_can_be_raised_for_a_pro_account(monkeypatch):
    long_video = I2VRequest(steps=40, num_frames=81)
    monkeypatch.setenv("STUDIO_ZEROGPU_MAX_S", "1500")
    assert hosting.check_limit(long_video).seconds < 1500
    monkeypatch.setenv("STUDIO_ZEROGPU_MAX_S", "soon")
    assert hosting.limit_seconds() == hosting.DEFAULT_LIMIT_S


def test_the_real_decorator_runs_the_engine_call_off_zerogpu(served):
    """Off ZeroGPU ``spaces.GPU`` hands the function back: the tabs' wrapped engine call runs as is."""
    spaces = pytest.importorskip("spaces")
    from spaces.config import Config

    from ui import zerogpu

    assert not Config.zero_gpu
    engine, _ = served
    decorated = spaces.GPU(duration=hosting.duration)(engine.run)
    assert decorated == engine.run  # the same bound method, undecorated
    result = zerogpu.engine_call(engine)(TextToImageRequest(prompt="x", width=32, height=32, steps=1), None, None)
    assert len(result.images) == 1


def test_ui_refuses_an_over_limit_run_only_on_zerogpu(monkeypatch):
    from ui import zerogpu

    long_run = TextToImageRequest(width=2048, height=2048, steps=100, swap=SwapSettings(mode="layerwise"))
    monkeypatch.delenv("SPACES_ZERO_GPU", raising=False)
    zerogpu.check(long_run)  # a local GPU has no such limit
    monkeypatch.setenv("SPACES_ZERO_GPU", "true")
    with pytest.raises(InputError, match="ZeroGPU allows 300 s"):
        zerogpu.check(long_run)


def test_http_api_refuses_an_over_limit_run_before_it_starts(client, served, monkeypatch):
    from gradio_client.exceptions import AppError

    engine, _ = served
    calls = []
    monkeypatch.setattr(engine, "prepare", lambda *a, **k: calls.append(a))
    monkeypatch.setenv("SPACES_ZERO_GPU", "true")
    monkeypatch.setenv("STUDIO_ZEROGPU_MAX_S", "60")  # the demo's sizes stop at 512 px
    with pytest.raises(AppError, match=r"about \d+ s of GPU .*ZeroGPU allows 60 s"):
        client.predict("black-forest-labs/FLUX.1-dev", "x", "", 512, 512, 100, 3.5, 1.0, 0, "layerwise", 0, 0, 100,
                       1, True, False, api_name="/text_to_image")
    assert calls == []  # nothing was fetched


# ---------------------------------------------------------------- the container
def pins(text: str) -> dict[str, str]:
    return {m.group(1).lower(): m.group(2) for m in re.finditer(r"^([A-Za-z0-9_.\-]+)(?:\[[^\]]*\])?==([^\s#]+)",
                                                                 text, re.M)}


def test_dockerfile_pins_agree_with_requirements():
    dockerfile = (ROOT / "Dockerfile").read_text()
    required = pins((ROOT / "requirements.txt").read_text())
    assert "torch" in required and "gradio" in required
    # what the Dockerfile names itself (torch from PyTorch's CUDA index, before the rest) must be the same pin
    named = dict(re.findall(r"\b([a-z0-9_\-]+)==([0-9][^\s\"'\\]*)", dockerfile))
    assert named, "the Dockerfile pins torch explicitly"
    for name, version in named.items():
        assert required.get(name) == version, f"Dockerfile pins {name}=={version}, requirements.txt {required.get(name)}"
    assert "requirements.txt" in dockerfile and "pip install" in dockerfile
    assert re.search(r"^ARG CUDA_IMAGE=nvidia/cuda:[0-9.]+-[a-z0-9-]+-ubuntu", dockerfile, re.M) and "FROM ${CUDA_IMAGE}" in dockerfile, "a CUDA base image"
    assert re.search(r"^USER (?!root)\w+", dockerfile, re.M), "a non-root user"
    assert re.search(r"^HEALTHCHECK ", dockerfile, re.M)
    assert re.search(r"^VOLUME .*models", dockerfile, re.M) and "HF_HOME" in dockerfile
    compose = (ROOT / "compose.yaml").read_text()
    assert "driver: nvidia" in compose and "/models" in compose


def test_readme_space_metadata_names_the_pinned_gradio():
    readme = (ROOT / "README.md").read_text()
    assert readme.startswith("---\n")
    meta = readme.split("---\n")[1]
    fields = dict(line.split(": ", 1) for line in meta.strip().splitlines() if ": " in line)
    assert fields["sdk"] == "gradio"
    assert fields["sdk_version"] == pins((ROOT / "requirements.txt").read_text())["gradio"]
    assert fields["app_file"] == "app.py"
    assert fields["suggested_hardware"] in {"zero-a10g", "a10g-large", "a100-large", "l40sx1", "h100"}
    assert fields["python_version"] == "3.11"
    for command in ("docker build", "docker compose up", "--serve-replicas", "ray start"):
        assert command in readme
