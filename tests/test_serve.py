"""Ray Serve scale-out on CPU: two real engine replicas (separate processes) behind a ``ServeEngine``.

One Ray instance for the whole module (4 logical CPUs on this 2-core machine: the replicas are idle most of
the time). The replica-killing test runs last: it leaves Ray restarting a replica.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from engine import Cancelled, CatalogRequest, Engine, EngineError, InputError, TextToImageRequest
from engine.serve import launch
from tests.conftest import app_client, scaled

pytest.importorskip("ray.serve")
pytestmark = pytest.mark.xdist_group("ray")  # one Ray cluster for the module, on one worker

GEN = {"prompt": "a lighthouse at dusk", "width": 32, "height": 32, "steps": 2, "seed": 42}
LONG = {"prompt": "a long run", "width": 128, "height": 128, "steps": 200, "seed": 1}


@pytest.fixture(scope="module")
def serve_engine(models_dir, tmp_path_factory):
    import ray
    from ray import serve

    lines: list[str] = []
    t0 = time.monotonic()
    engine = launch.start_serve(2, models_dir=models_dir, outputs_dir=tmp_path_factory.mktemp("front-outputs"),
                                replica_outputs_dir=tmp_path_factory.mktemp("replica-outputs"), demo=True,
                                num_cpus=4, log=lines.append, log_to_driver=False)
    engine.startup_s = time.monotonic() - t0
    engine.lines = lines
    wait_for_replicas(engine, 2, timeout=scaled(60))
    try:
        yield engine
    finally:
        serve.shutdown()
        ray.shutdown()


@pytest.fixture(scope="module")
def local_engine(models_dir, tmp_path_factory):
    return Engine(device="cpu", models_dir=models_dir, demo=True, outputs_dir=tmp_path_factory.mktemp("local-out"))


def wait_for_replicas(engine, count: int, timeout: float, exclude_pid: int | None = None) -> list[dict]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        entries = engine.memory.entries()
        if len(entries) == count and all(e["pid"] != exclude_pid for e in entries):
            return entries
        time.sleep(0.5)
    raise AssertionError(f"{count} replicas did not report within {timeout} s: {engine.memory.entries()}")


def background_run(engine, request, **kwargs) -> tuple[threading.Thread, dict]:
    box: dict = {"started": threading.Event()}

    def on_start(event):
        box["start"] = {**event, "time": time.monotonic()}
        box["started"].set()

    def work():
        try:
            box["result"] = engine.run_json(request.to_dict(), on_start=on_start, **kwargs)
        except Exception as exc:
            box["error"] = exc
        box["done"] = time.monotonic()

    thread = threading.Thread(target=work, daemon=True)
    thread.start()
    return thread, box


def pixels(result) -> np.ndarray:
    return np.asarray(result.images[0].convert("RGB"))


def test_replica_count_is_clamped_to_the_gpus_present():
    count, resources, device, note = launch.replica_plan(4, gpus=2, cpus=32)
    assert (count, resources, device) == (2, {"num_gpus": 1}, None)
    assert "4 replicas asked for" in note and "2 GPU(s)" in note
    assert launch.replica_plan(2, gpus=8, cpus=32)[:2] == (2, {"num_gpus": 1})
    count, resources, device, note = launch.replica_plan(3, gpus=0, cpus=2)
    assert (count, resources, device) == (2, {"num_cpus": 1}, "cpu") and "CPU replicas" in note
    with pytest.raises(EngineError, match="1 or more"):
        launch.replica_plan(0, gpus=1, cpus=1)


def test_without_ray_the_flag_says_how_to_install_it_and_the_app_runs_locally(monkeypatch, capsys, models_dir):
    import app

    for name in [n for n in sys.modules if n == "ray" or n.startswith("ray.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "ray", None)  # "import ray" now fails as if it were not installed
    with pytest.raises(launch.ServeUnavailable, match=r"pip install -r requirements-serve\.txt"):
        launch.import_ray()
    args = app.parse_args(["--serve-replicas", "2", "--models-dir", str(models_dir)])
    assert app.serve_engine(args, demo=True) is None  # main() goes on with the local Engine
    assert "Starting with the local engine instead" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        app.parse_args(["--serve-replicas", "-1"])


@pytest.mark.timeout(scaled(240))
def test_replicas_give_the_local_engines_pixels_for_text_to_image_and_catalog(serve_engine, local_engine):
    assert serve_engine.replicas == 2 and "CPU replicas" in serve_engine.note
    steps: list[str] = []
    for request in (TextToImageRequest(**GEN), CatalogRequest(entry="FLUX.1-dev-SDNQ-uint4", **GEN)):
        remote = serve_engine.run(request, lambda fraction, message: steps.append(message))
        local = local_engine.run(request)
        assert remote.request == request  # the JSON round trip gives the same request back
        assert np.array_equal(pixels(remote), pixels(local)), request.kind
        png = next(f for f in remote.files if f.endswith(".png"))
        assert os.path.isfile(png) and str(serve_engine.outputs_dir) in png  # written on the front end's side
        assert remote.metadata["replica"]["pid"] not in (None, os.getpid())
    # progress came back step by step, in order, for both runs
    assert [s for s in steps if s.startswith("step")] == ["step 1/2", "step 2/2"] * 2


@pytest.mark.timeout(scaled(180))
def test_uploaded_images_travel_as_bytes_and_the_video_comes_back(serve_engine, local_engine, tmp_path):
    """A replica on another host cannot read the page's upload folder: the start image goes along with the
    request JSON, the replica runs on its own copy, and the video and last frame come back as files."""
    from PIL import Image

    from engine import I2VRequest, SwapSettings

    start = tmp_path / "start.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (40, 56, 3), dtype=np.uint8)).save(start)
    req = I2VRequest(image=str(start), prompt="waves", resolution="custom", width=32, height=32, num_frames=5,
                     steps=2, seed=5, swap=SwapSettings(), preview_every=0)
    remote = serve_engine.run_json(req.to_dict())  # without request=: the result names the replica's request
    copy = remote.request.image
    # the replica's own copy: received under inputs/, then kept in its outputs' start-images/ so the saved request
    # replays (issue 30)
    assert copy != str(start) and ("/inputs/" in copy or "/start-images/" in copy)
    assert Path(copy).read_bytes() == start.read_bytes()
    local = local_engine.run(req)
    frame = next(f for f in remote.files if f.endswith("-last-frame.png"))
    expected = next(f for f in local.files if f.endswith("-last-frame.png"))
    assert np.array_equal(np.asarray(Image.open(frame)), np.asarray(Image.open(expected)))
    assert remote.video_path and Path(remote.video_path).stat().st_size > 0
    assert str(serve_engine.outputs_dir) in remote.video_path
    assert serve_engine.run(req).request == req  # through run(): the caller's own request comes back


@pytest.mark.timeout(scaled(120))
def test_an_unknown_request_kind_is_refused_by_the_replica_with_the_known_ones(serve_engine):
    with pytest.raises(InputError, match="unknown request kind 'teleport'.*text_to_image") as info:
        serve_engine.run_json({"kind": "teleport", "prompt": "x"})
    assert info.value.field == "kind"
    with pytest.raises(InputError, match="steps"):  # bad input names its field across the boundary too
        serve_engine.run_json({**TextToImageRequest(**GEN).to_dict(), "steps": 0})


@pytest.mark.timeout(scaled(180))
def test_concurrent_runs_land_on_two_replicas_a_third_queues_and_the_panel_shows_both(serve_engine):
    from ui import vram_panel

    runs = []
    for seed in (1, 2, 3):
        runs.append(background_run(serve_engine, TextToImageRequest(**{**GEN, "width": 64, "height": 64,
                                                                         "steps": 30, "seed": seed})))
        if seed < 3:
            assert runs[-1][1]["started"].wait(60)
    for thread, _ in runs:
        thread.join(150)
    boxes = [box for _, box in runs]
    assert all("result" in b for b in boxes), [b.get("error") for b in boxes]
    assert len({b["start"]["replica"] for b in boxes[:2]}) == 2  # one job per replica at a time
    # the third waited in Serve's queue until a replica was free, then ran there
    assert boxes[2]["start"]["time"] >= min(b["done"] for b in boxes[:2]) - 0.5
    snapshot = serve_engine.memory.snapshot()
    assert len(snapshot["replicas"]) == 2
    html = vram_panel.format_devices(snapshot)
    assert html.count("class='vram-replica'") == 2 and "replica 1 (" in html and "replica 2 (" in html
    rows = vram_panel.module_rows(snapshot)
    assert {r[0].split("/")[0] for r in rows} == {"r1", "r2"}  # both replicas hold their own Flux now


@pytest.mark.timeout(scaled(180))
def test_cancel_reaches_the_replica_that_runs_the_job(serve_engine):
    cancel = threading.Event()
    seen: list[str] = []
    thread_a, a = background_run(serve_engine, TextToImageRequest(**LONG), cancel=cancel,
                                 progress=lambda f, m: seen.append(m))
    assert a["started"].wait(60)
    thread_b, b = background_run(serve_engine, TextToImageRequest(**{**GEN, "steps": 20}))
    assert b["started"].wait(60)
    assert a["start"]["replica"] != b["start"]["replica"]
    deadline = time.monotonic() + 60
    while not any(m.startswith("step") for m in seen) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert any(m.startswith("step ") for m in seen)  # streamed while the 200 steps run, not at the end
    t_cancel = time.monotonic()
    cancel.set()
    thread_a.join(60)
    assert isinstance(a.get("error"), Cancelled)
    assert time.monotonic() - t_cancel < 30  # far sooner than 200 steps
    thread_b.join(120)
    assert "result" in b  # the other replica's job went on
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        last = {e["replica"]: e["last"] for e in serve_engine.memory.entries()}
        if last.get(a["start"]["replica"], {}).get("job") == a["start"]["job"]:
            break
        time.sleep(0.2)
    assert last[a["start"]["replica"]] == {"job": a["start"]["job"], "outcome": "cancelled", "cancel_seen": True}
    assert last[b["start"]["replica"]]["outcome"] == "done" and not last[b["start"]["replica"]]["cancel_seen"]


@pytest.mark.timeout(scaled(120))
def patient_url_ok(url: str) -> bool:
    """Gradio's startup check gives up on the first 3 s timeout; with two replicas and Ray busy on 2 cores the
    page can take longer to answer its first request, which is load, not an unreachable localhost."""
    import httpx

    for _ in range(20):
        try:
            if httpx.head(url, timeout=10).status_code < 400:
                return True
        except httpx.HTTPError:
            time.sleep(0.5)
    return False


def test_the_gradio_page_runs_on_the_replicas(serve_engine, monkeypatch):
    from gradio import networking

    monkeypatch.setattr(networking, "url_ok", patient_url_ok)

    from tests.conftest import free_port
    from ui import build_app, launch_options
    from ui.components import GPU_POOL

    app = build_app(serve_engine)
    assert {fn.concurrency_limit for fn in app.fns.values() if fn.concurrency_id == GPU_POOL} == {2}
    _, url, _ = app.launch(server_name="127.0.0.1", server_port=free_port(), prevent_thread_lock=True, quiet=True,
                           **launch_options(serve_engine))
    try:
        client = app_client(url)
        out = client.predict("black-forest-labs/FLUX.1-dev", "a red fox", "", 32, 32, 2, 3.5, 1.0, 3,
                             api_name="/text_to_image")
        assert out[3].startswith("Done")
        devices = client.predict(api_name="/vram")[0]
        assert devices.count("class='vram-replica'") == 2
    finally:
        app.close()


@pytest.mark.timeout(scaled(240))
def test_a_killed_replica_fails_its_job_clearly_the_next_job_runs_and_ray_restarts_it(serve_engine):
    thread, box = background_run(serve_engine, TextToImageRequest(**LONG), progress=lambda f, m: None)
    assert box["started"].wait(60)
    victim = box["start"]["pid"]
    time.sleep(1.0)
    os.kill(victim, signal.SIGKILL)
    thread.join(60)
    error = box.get("error")
    assert isinstance(error, EngineError) and not isinstance(error, Cancelled)
    assert f"pid {victim}) died while running this job" in str(error) and "run it again" in str(error)
    result = serve_engine.run(TextToImageRequest(**GEN))  # the surviving replica takes it
    assert len(result.images) == 1 and result.metadata["replica"]["pid"] != victim
    entries = wait_for_replicas(serve_engine, 2, timeout=scaled(120), exclude_pid=victim)  # Ray started a new one
    assert victim not in {e["pid"] for e in entries}
