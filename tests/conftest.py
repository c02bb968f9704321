"""Shared test setup: a quiet, hub-free environment and the tiny demo models, built once per session."""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
from pathlib import Path

import pytest

# Must happen before sdnq, huggingface_hub or gradio are first imported (huggingface_hub freezes HF_* at import).
os.environ.setdefault("SDNQ_USE_TORCH_COMPILE", "0")  # sdnq's torch.compile costs seconds per shape on CPU
# The caller's Hugging Face settings never leak into a test (issue 22): no offline flag, no token, no mirror, no
# cache location; tests that need one set it themselves. tests/test_hostile_env.py runs the hub tests with all four
# set to hostile values to keep it so.
for _name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HF_TOKEN_PATH",
              "HF_ENDPOINT", "HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE", "HF_HUB_ETAG_TIMEOUT", "HF_HUB_DOWNLOAD_TIMEOUT"):
    os.environ.pop(_name, None)
for _name in [n for n in os.environ if n.startswith("STUDIO_HUB_")]:
    os.environ.pop(_name)
if os.environ.get("PYTEST_XDIST_WORKER_COUNT"):
    # workers share the cores: one torch thread pool each of cores / workers, not cores each (oversubscribed OpenMP
    # spins); children inherit it. Set before torch is first imported.
    _share = max(1, (os.cpu_count() or 1) // int(os.environ["PYTEST_XDIST_WORKER_COUNT"]))
    os.environ.setdefault("OMP_NUM_THREADS", str(_share))
    os.environ.setdefault("MKL_NUM_THREADS", str(_share))
pytest.register_assert_rewrite("tests.hub_fixtures")
os.environ["HF_HUB_DISABLE_TELEMETRY"] = "1"
os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"
if not (os.environ.get("CI") and os.environ.get("HF_HOME") and os.path.isdir(os.environ["HF_HOME"])):
    # never touch the user's Hugging Face cache: a fresh, empty one per test session
    _hf_home = tempfile.mkdtemp(prefix="test-hf-home-")
    os.environ["HF_HOME"] = _hf_home
    atexit.register(shutil.rmtree, _hf_home, ignore_errors=True)


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item, call):
    """Marks a test whose body failed (``item.failed_call``), so that a fixture's teardown can add what it saw
    (the browser tests: a screenshot, the browser's errors and the app's log)."""
    report = yield
    if report.when == "call" and report.failed:
        item.failed_call = True
    return report


def pytest_xdist_auto_num_workers(config) -> int:
    """``-n auto``: one worker per core, at most 4 (each holds its own demo models, app and engines)."""
    return max(1, min(os.cpu_count() or 1, 4))


@pytest.fixture(scope="session")
def models_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A models directory holding ``demo/`` (every tiny demo model), built once for the whole session."""
    from engine.demo import build_demo_models

    path = tmp_path_factory.mktemp("models")
    if not os.environ.get("PYTEST_XDIST_WORKER"):
        build_demo_models(path)
        return path
    # under xdist: the first worker builds (20 s of CPU), every worker copies (0.1 s) into its own folder, which its
    # tests may then change as they like
    from filelock import FileLock

    shared = tmp_path_factory.getbasetemp().parent / "demo-models"
    with FileLock(str(shared) + ".lock"):
        if not (shared / "BUILT").exists():
            build_demo_models(shared)
            (shared / "BUILT").write_text("ok")
    shutil.copytree(shared, path, dirs_exist_ok=True, ignore=shutil.ignore_patterns("BUILT", ".cache"))
    return path


def busy_factor() -> float:
    """How many times slower than a quiet machine this one runs now: the 1-minute load average per core, between
    1 and 4. Time limits of tests that wait on other processes (Ray's cluster, replicas restarting) are multiplied
    by it: a busy machine gets more time for the same event, not a failure."""
    try:
        load = os.getloadavg()[0] / (os.cpu_count() or 1)
    except OSError:  # no load average on this platform
        return 1.0
    return min(4.0, max(1.0, load))


def scaled(seconds: float) -> float:
    return seconds * busy_factor()


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def served(models_dir, tmp_path_factory):
    """The real Gradio app over one demo engine, on a free loopback port: (engine, url)."""
    from engine import Engine
    from ui import build_app, launch_options

    engine = Engine(demo=True, models_dir=models_dir, outputs_dir=tmp_path_factory.mktemp("app-outputs"))
    app = build_app(engine)
    _, url, _ = app.launch(
        server_name="127.0.0.1", server_port=free_port(), prevent_thread_lock=True, quiet=True,
        **launch_options(engine),
    )
    try:
        yield engine, url
    finally:
        app.close()


def app_client(url: str, **kwargs):
    """A gradio_client ``Client`` for a served test app. Its HTTP calls wait up to a minute, longer on a busy
    machine: httpx's default of 5 s ran out fetching ``/config`` while the in-process server shared two loaded
    cores. A live stream never waits that long, because the server sends a heartbeat every 15 s."""
    import httpx
    from gradio_client import Client

    return Client(url, verbose=False, httpx_kwargs={"timeout": httpx.Timeout(scaled(60))}, **kwargs)


@pytest.fixture
def client(served):
    return app_client(served[1])


SDNQ_ENTRY_REPO = "Disty0/FLUX.1-dev-SDNQ-uint4-svd-r32"  # the repo of catalog entry FLUX.1-dev-SDNQ-uint4


def empty_hf_cache(tmp_path, monkeypatch) -> None:
    """An empty HF cache for this test only, online, without the Xet transfer backend."""
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setenv("HF_HUB_DISABLE_XET", "1")


@pytest.fixture
def sdnq_hub(models_dir, tmp_path, monkeypatch):
    """A local fake hub serving the tiny SDNQ Flux under the catalog entry's real repo id, and an
    empty HF cache for this test only."""
    from tests.fakehub import FakeHub

    empty_hf_cache(tmp_path, monkeypatch)
    from engine.demo import demo_path

    with FakeHub() as fake:
        fake.add_repo(SDNQ_ENTRY_REPO, demo_path(models_dir, "flux-dev-sdnq-int8"))
        monkeypatch.setenv("HF_ENDPOINT", fake.endpoint)
        yield fake
