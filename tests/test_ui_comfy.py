"""The ComfyUI models folder in the app (issue 21), through the HTTP API of a served page: the settings field sets
the folder (a clear message for a bad one), the tabs' pickers list the folder's files, and a run from a picked
file saves a request naming its absolute paths."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from engine.comfy_models import CHOICE_PREFIX
from engine.demo.comfy import build_demo_comfy, yaml_path
from tests.conftest import app_client, free_port


@pytest.fixture(scope="module")
def comfy_app(models_dir, tmp_path_factory):

    from engine import Engine
    from ui import build_app, launch_options

    comfy = build_demo_comfy(models_dir)
    engine = Engine(demo=True, models_dir=models_dir, outputs_dir=tmp_path_factory.mktemp("comfy-ui-out"))
    engine.comfy.cache_file = tmp_path_factory.mktemp("comfy-ui-cache") / "index.json"
    app = build_app(engine)
    _, url, _ = app.launch(server_name="127.0.0.1", server_port=free_port(), prevent_thread_lock=True, quiet=True,
                           **launch_options(engine))
    try:
        yield engine, app_client(url), comfy
    finally:
        app.close()


def use_folder(client, comfy, models_dir) -> None:
    """Set the ComfyUI folder as the page does: each test sets what it needs (under xdist a test may run on a worker
    where no other test of this module has set it)."""
    status, *_ = client.predict(str(comfy), str(yaml_path(models_dir)), api_name="/comfy_models_set")
    assert "files in" in status


def test_settings_field_sets_the_folder_and_refreshes_every_picker(comfy_app, models_dir, tmp_path):
    from gradio_client.exceptions import AppError

    engine, client, comfy = comfy_app
    with pytest.raises(AppError, match="no such folder"):
        client.predict(str(tmp_path / "nope"), "", api_name="/comfy_models_set")
    assert engine.comfy.index() is None  # a bad path changes nothing
    status, *updates = client.predict(str(comfy), str(yaml_path(models_dir)), api_name="/comfy_models_set")
    assert "files in" in status and "usable" in status
    choices = [c for u in updates if isinstance(u, dict) and "choices" in u for c in u["choices"]]
    labels = " ".join(str(c[0]) for c in choices)
    for name in ("flux1-dev-tiny.safetensors", "chroma-tiny.safetensors", "wan2.2_i2v_high_noise_14B_tiny",
                 "qwen-kohya-style.safetensors", "ip-adapter-tiny.bin", "siglip-tiny.safetensors",
                 "clip_l-tiny.safetensors"):
        assert name in labels, name
    tables = [u for u in updates if isinstance(u, dict) and "value" in u and isinstance(u["value"], dict)]
    assert any("LoRA for Qwen-Image" in json.dumps(t["value"]) for t in tables)
    status, *_ = client.predict(api_name="/comfy_models_rescan")
    assert "from the cache" in status


def test_text_to_image_runs_from_a_picked_file_and_saves_its_paths(comfy_app, models_dir):
    engine, client, comfy = comfy_app
    use_folder(client, comfy, models_dir)  # through the settings field: it also refreshes the pickers
    flux = next(v for label, v in engine.comfy.model_choices("text_to_image") if label.startswith("flux1-dev-tiny."))
    assert flux.startswith(CHOICE_PREFIX)
    clip = next(v for _, v in engine.comfy.piece_choices("text_to_image") if "clip_l-tiny" in v)
    gallery, info, saved, status, *_ = client.predict(
        flux, "a harbour at night", "", 32, 32, 1, 3.5, 1.0, 4, "none", 0.0, 0, 100, 1, True, False, [clip],
        api_name="/text_to_image")
    assert "Done" in status, status
    request = json.loads(Path(saved["value"] if isinstance(saved, dict) else saved).read_text())
    files = request["model"]["files"]
    assert files["transformer"] == str(comfy / "diffusion_models/flux1-dev-tiny.safetensors")
    assert files["text_encoder"] == str(comfy / "text_encoders/clip_l-tiny.safetensors")
    assert request["model"]["repo_id"] == "black-forest-labs/FLUX.1-dev"


def test_a_piece_that_does_not_fit_is_a_message_naming_the_model(comfy_app, models_dir):
    engine, client, comfy = comfy_app
    use_folder(client, comfy, models_dir)  # through the settings field: it also refreshes the pickers
    clip = f"clip-l:{comfy / 'text_encoders/clip_l-tiny.safetensors'}"  # Flux's CLIP-L: Chroma has no such part
    from gradio_client.exceptions import AppError

    with pytest.raises(AppError, match="Model: clip_l-tiny.safetensors does not fit lodestones/Chroma1-HD"):
        client.predict("lodestones/Chroma1-HD", "x", "", 32, 32, 1, 3.5, 1.0, 0, "none", 0.0, 0, 100, 1, True,
                       False, [clip], api_name="/text_to_image")
