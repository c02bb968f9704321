"""The ComfyUI panels through the app's HTTP API: every tab exports, and the import box routes a workflow of every
request kind to its tab with the fields filled; bad files get a message and the server stays up."""

from __future__ import annotations

import json

import pytest
from gradio_client import handle_file

import comfy_export
from tests.test_comfy_export import KINDS, files, random_requests  # noqa: F401 - the files fixture


@pytest.fixture
def client(served):
    from tests.conftest import app_client

    return app_client(served[1], download_files=False)  # a LoRA entry's "path" is no file to fetch


def status_of(out) -> str:
    return next(o for o in out if isinstance(o, str) and o.startswith(("Opened", "Cannot import", "No tab")))


TAB_OF = {"text_to_image": "Text to image", "sdnq_generate": "SDNQ catalog", "sdnq_quantize": "SDNQ catalog",
          "ipadapter": "IP-Adapter", "perception": "Panorama perception", "i2v": "Image to video",
          "lora_stack": "LoRA stack"}


@pytest.mark.parametrize("kind", KINDS)
def test_import_routes_every_kind_to_its_tab(client, kind, files, tmp_path):  # noqa: F811
    request = random_requests(kind, files, n=1, seed=7)[0]
    path = tmp_path / "workflow.json"
    path.write_text(json.dumps(comfy_export.to_workflow(request)))
    out = client.predict(handle_file(str(path)), api_name="/comfy_import")
    assert f"in {TAB_OF[kind]}." in status_of(out), out
    if hasattr(request, "prompt") and request.prompt:
        assert request.prompt in out


def test_export_endpoints_of_every_tab(client, served):
    engine, _ = served
    api, workflow, code, status = client.predict(
        "black-forest-labs/FLUX.1-dev", "a fox", "", 64, 64, 2, 3.5, 1.0, 5, "none", 0, 0, 100, 1, True, False,
        api_name="/t2i_comfy_export")
    workflow, api = (f["path"] if isinstance(f, dict) else f for f in (workflow, api))
    assert status.startswith("Exported") and "demo-mode" in json.load(open(workflow))["nodes"][-1][
        "widgets_values"][0]
    assert json.loads(code) == json.load(open(api))
    names = {e for e in client.view_api(print_info=False, return_format="dict")["named_endpoints"]}
    for prefix in ("t2i", "ip", "catalog", "catalog_q", "pano", "i2v", "lora"):
        assert f"/{prefix}_comfy_export" in names
    _, _, _, status = client.predict("black-forest-labs/FLUX.1-dev", "", "", 64, 64, 2, 3.5, 1.0, 5, "none", 0, 0,
                                     100, 1, True, False, api_name="/t2i_comfy_export")
    assert "Cannot export yet" in status and "prompt" in status


@pytest.mark.parametrize("content, words", [
    (b"{not json", "not valid JSON"),
    (b'{"1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "x"}}}', "no output node"),
])
def test_bad_files_get_a_message_and_the_server_stays_up(client, tmp_path, content, words):
    path = tmp_path / "bad.json"
    path.write_bytes(content)
    out = client.predict(handle_file(str(path)), api_name="/comfy_import")
    assert "Cannot import" in status_of(out) and words in status_of(out)
    big = tmp_path / "big.png"
    big.write_bytes(b"\x89PNG\r\n\x1a\n" + b"0" * (50 * 2**20))
    assert "50 MB" in status_of(client.predict(handle_file(str(big)), api_name="/comfy_import"))
