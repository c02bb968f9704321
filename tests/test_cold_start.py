"""The app answers before torch loads (``bench/cold_start.py``): building the page needs neither torch nor
diffusers nor transformers; the engine brings them up on first use, once, from any thread."""

from __future__ import annotations

import subprocess
import sys
import threading
from pathlib import Path

import pytest

from engine import Engine

ROOT = Path(__file__).resolve().parent.parent
HEAVY = ("torch", "diffusers", "transformers", "safetensors", "sdnq", "peft")

BUILD_PAGE = f"""
import sys
from engine import Engine
import ui
engine = Engine(models_dir=sys.argv[1], demo=True, outputs_dir=sys.argv[2])
ui.build_app(engine)
print("loaded:", sorted(m for m in {HEAVY!r} if m in sys.modules), "booted:", engine.booted)
"""


def test_building_the_page_imports_no_torch(models_dir, tmp_path):
    done = subprocess.run([sys.executable, "-c", BUILD_PAGE, str(models_dir), str(tmp_path / "out")], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "loaded: [] booted: False" in done.stdout, done.stdout


def test_the_engine_boots_once_on_first_use_from_any_thread(models_dir, tmp_path):
    engine = Engine(models_dir=models_dir, demo=True, outputs_dir=tmp_path)
    assert not engine.booted
    seen: list = []
    threads = [threading.Thread(target=lambda: seen.append((engine.memory, engine.store))) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert engine.booted and engine.device == "cpu"
    assert len({id(m) for m, _ in seen}) == 1 and len({id(s) for _, s in seen}) == 1  # one manager, one store
    assert engine.memory.compute_device == "cpu"


@pytest.mark.parametrize("device", ["gpu0", "cuda:7"])  # not a device name; a GPU this machine does not have
def test_a_device_the_user_names_is_checked_before_anything_is_served(models_dir, tmp_path, device):
    from tests.conftest import free_port

    done = subprocess.run([sys.executable, "app.py", "--demo", "--device", device, "--port", str(free_port()),
                           "--models-dir", str(models_dir), "--outputs-dir", str(tmp_path)],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 2, done.stdout[-2000:] + done.stderr[-2000:]
    assert f"cannot use device {device!r}" in done.stderr and "Traceback" not in done.stderr


STUB_PROBE = """
import sys
sys.path.insert(0, sys.argv[1])
if sys.argv[2] == "with-ui":
    import ui  # noqa: F401  (installs the patch before gradio loads)
import probe_component  # defines a gradio component class in a plain file
"""


@pytest.mark.parametrize("first", ["with-ui", "gradio-alone"])
def test_importing_ui_first_stops_gradio_rewriting_type_stubs(tmp_path, first):
    """Gradio writes a ``.pyi`` next to every file that defines a component class, at each import (about half of
    ``import gradio``); after ``import ui`` it writes none. Gradio alone is the control: the stub appears."""
    (tmp_path / "probe_component.py").write_text("import gradio as gr\n\n\nclass ProbeBox(gr.Textbox):\n    pass\n")
    done = subprocess.run([sys.executable, "-c", STUB_PROBE, str(tmp_path), first], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert (tmp_path / "probe_component.pyi").exists() == (first == "gradio-alone")
