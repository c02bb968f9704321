"""Uploads have a limit, and a refused component value says which field and why (issue 30, point 4): an image
too large to decode is refused from its header with its size in megapixels, a file that is no image says so, and
an upload over --max-upload-mb is refused by Gradio at the upload."""

from __future__ import annotations

import struct
import zlib

import httpx
import pytest

from tests.conftest import free_port
from tests.test_api_inputs import _call, _endpoints
from ui.input_errors import MAX_IMAGE_MP


def _png_header(width: int, height: int) -> bytes:
    """A PNG whose header says width x height (its pixels would take GBs; nothing here may decode them)."""
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(b"\0" * 1000)) + chunk(b"IEND", b""))


def _upload(base: str, name: str, data: bytes) -> dict:
    response = httpx.post(f"{base}/gradio_api/upload", files={"files": (name, data)}, timeout=60)
    response.raise_for_status()
    return {"path": response.json()[0], "meta": {"_type": "gradio.FileData"}, "orig_name": name}


def _i2v_call(base: str, image: dict) -> tuple[str, object]:
    endpoint = next(e for e in _endpoints(base) if e[0] == "i2v")
    params = endpoint[1]
    data = [p["parameter_default"] if p.get("parameter_has_default") else p.get("example_input") for p in params]
    index = next(i for i, p in enumerate(params) if p.get("label") == "Start image")
    data[index] = image
    return _call(base, "i2v", data)


def _message(payload) -> str:
    return payload.get("error") if isinstance(payload, dict) else str(payload)


def test_a_30000_by_30000_png_is_refused_naming_the_field_and_its_size(served):
    base = served[1].rstrip("/")
    kind, payload = _i2v_call(base, _upload(base, "huge.png", _png_header(30_000, 30_000)))
    assert kind == "error"
    assert _message(payload) == f"Start image: 30000×30000 is 900 MP; the limit is {MAX_IMAGE_MP} MP (scale it down first)"


def test_a_file_that_is_no_image_is_refused_naming_the_field(served):
    base = served[1].rstrip("/")
    kind, payload = _i2v_call(base, _upload(base, "fake.png", b"this is text, not an image" * 100))
    assert kind == "error"
    message = _message(payload)
    assert message.startswith("Start image: ") and "index" not in message and "ComponentProcessingError" not in message


def test_component_error_text_maps_the_index_to_the_label():
    import gradio as gr
    from gradio.exceptions import ComponentProcessingError
    from PIL import Image

    from ui.input_errors import component_error_text

    with gr.Blocks() as app:
        prompt, image = gr.Textbox(label="Prompt"), gr.Image(label="Start image")
        gr.Button().click(lambda p, i: None, [prompt, image], None)
    block_fn = next(iter(app.fns.values()))
    try:
        try:
            raise Image.DecompressionBombError("Image size (900000000 pixels) exceeds limit of 178956970 pixels")
        except Exception as err:
            raise ComponentProcessingError("Could not preprocess input component at index 1 (a `image` component)") \
                from err
    except ComponentProcessingError as exc:
        assert component_error_text(block_fn, exc) == (
            f"Start image: the image is 900 MP; the limit is {MAX_IMAGE_MP} MP (scale it down first)")


@pytest.fixture(scope="module")
def small_upload_app(models_dir, tmp_path_factory):
    from engine import Engine
    from ui import build_app, launch_options

    engine = Engine(demo=True, models_dir=models_dir, outputs_dir=tmp_path_factory.mktemp("upload-limit"))
    app = build_app(engine)
    _, url, _ = app.launch(server_name="127.0.0.1", server_port=free_port(), prevent_thread_lock=True, quiet=True,
                           **launch_options(engine, max_upload_mb=1))
    try:
        yield url.rstrip("/")
    finally:
        app.close()


def test_an_upload_over_the_limit_is_refused_at_the_upload(small_upload_app):
    base = small_upload_app
    response = httpx.post(f"{base}/gradio_api/upload", files={"files": ("big.bin", b"0" * (2 * 2**20))}, timeout=60)
    assert response.status_code == 413 and "maximum allowed size of 1048576 bytes" in response.text
    assert _upload(base, "small.json", b"{}")["path"]  # under the limit: accepted


def test_the_flag_and_its_default_reach_launch():
    import app as app_module
    from ui.input_errors import DEFAULT_MAX_UPLOAD_MB

    assert app_module.DEFAULT_MAX_UPLOAD_MB == DEFAULT_MAX_UPLOAD_MB >= 4096  # a LoRA of a few GB fits
    assert app_module.parse_args(["--max-upload-mb", "300"]).max_upload_mb == 300
    with pytest.raises(SystemExit):
        app_module.parse_args(["--max-upload-mb", "-1"])
