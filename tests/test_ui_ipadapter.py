"""The IP-Adapter tab: request building, then the app through its HTTP API on the tiny demo models."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from engine import InputError, IPAdapterRequest, request_from_dict
from ui.components import field_label
from ui.tabs.ipadapter import LABELS, build_request


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> str:
    path = tmp_path_factory.mktemp("ui-ref") / "ref.png"
    Image.fromarray((np.random.RandomState(1).rand(40, 40, 3) * 255).astype(np.uint8)).save(path)
    return str(path)


def widgets(reference, **change) -> dict:
    values = dict(model="black-forest-labs/FLUX.1-dev", prompt="a fox", negative_prompt="", width=64.0, height=64.0,
                  steps=2.0, guidance_scale=3.5, true_cfg_scale=1.0, seed=5.0,
                  references=[(reference, 1.0), (None, 1.0), (None, 1.0)], weight=0.8, start_percent=0.0,
                  end_percent=1.0, ramp=False, weight_start=0.0, weight_end=1.0, ramp_steps=10.0,
                  offload_preprocessing=True, ip_norm="kv")
    return {**values, **change}


SWAP = ("none", 0.0, 0.0, 100.0, 1.0, True, False)  # the memory-mode widget's values, as the page sends them


def test_build_request_keeps_only_filled_reference_slots_and_round_trips(reference):
    req = build_request(**widgets(reference, references=[(None, 1.0), (reference, 0.5), (None, 2.0)]))
    assert isinstance(req, IPAdapterRequest)
    assert [(r.path, r.weight) for r in req.references] == [(reference, 0.5)]
    assert (req.width, req.steps, req.seed, req.ramp_steps) == (64, 2, 5, 10)
    assert request_from_dict(json.loads(json.dumps(req.to_dict()))) == req


def test_build_request_carries_the_memory_mode_widgets_settings(reference):
    req = build_request(*widgets(reference).values(), "chunkwise", 4.0, 0.0, 200.0, 2.0, True, False)
    assert (req.swap.mode, req.swap.max_vram_gb, req.swap.block_size_mb, req.swap.prefetch) == ("chunkwise", 4.0, 200, 2)
    assert build_request(**widgets(reference)).swap.mode == "none"  # no widget values: the default


@pytest.mark.parametrize(("change", "label"), [
    ({"references": [(None, 1.0)] * 3}, "Reference image"),
    ({"start_percent": 0.9, "end_percent": 0.1}, "End"),
    ({"weight": 7.0}, "Weight"),
    ({"prompt": ""}, "Prompt"),
])
def test_bad_input_names_the_widget(reference, change, label):
    with pytest.raises(InputError) as err:
        build_request(**widgets(reference, **change))
    assert field_label(err.value.field, LABELS) == label


def _predict(client, reference, **change):
    from gradio_client import handle_file

    swap = change.pop("swap", SWAP)
    v = {**widgets(reference, **change), "swap": swap}
    refs = [handle_file(p) if p else None for p, _ in v["references"]]
    return client.predict(
        v["model"], v["prompt"], v["negative_prompt"], v["width"], v["height"], v["steps"], v["guidance_scale"],
        v["true_cfg_scale"], v["seed"], v["weight"], v["start_percent"], v["end_percent"], v["ramp"],
        v["weight_start"], v["weight_end"], v["ramp_steps"], v["offload_preprocessing"], v["ip_norm"],
        *refs, *[w for _, w in v["references"]], *v["swap"], api_name="/ipadapter",
    )


def test_api_ipadapter_run_then_cached_tokens_and_bad_input(client, served, reference):
    from gradio_client.exceptions import AppError

    engine, _ = served
    gallery, info, save_json, status, plan, _ = _predict(client, reference)
    assert status.startswith("Done") and len(gallery) == 1
    with Image.open(gallery[0]["image"]) as im:
        assert im.size == (64, 64)
    saved = request_from_dict(json.loads(Path(save_json["value"]).read_text()))
    assert isinstance(saved, IPAdapterRequest) and saved.weight == 0.8 and len(saved.references) == 1
    kept = Path(saved.references[0].path)  # a lasting copy of the upload, not Gradio's temporary file
    assert kept.parent == (Path(engine.outputs_dir) / "references").resolve()
    assert kept.read_bytes() == Path(reference).read_bytes()
    assert "acted on 2/2 steps" in info
    roles = {m["role"] for m in engine.memory.snapshot()["modules"]}
    assert {"image_encoder", "projector", "adapter"} <= roles
    assert saved.swap.mode == "none"
    _, info, save_json, _, plan, _ = _predict(client, reference, seed=6.0,  # the same picture uploaded again
                                              swap=("block_swap", 0.0, 1.0, 100.0, 1.0, False, False))
    assert "1/1 from cache" in info
    assert "Measured" in plan and "block_swap" in plan
    again = request_from_dict(json.loads(Path(save_json["value"]).read_text()))
    assert (again.swap.mode, again.swap.blocks_resident) == ("block_swap", 1)
    with pytest.raises(AppError, match="Reference image"):
        _predict(client, reference, references=[(None, 1.0)] * 3)
    with pytest.raises(AppError, match="End"):
        _predict(client, reference, start_percent=0.5, end_percent=0.5)
