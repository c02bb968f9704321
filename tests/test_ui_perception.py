"""The Panorama perception tab: request building, the 2:1 check, and a real run through the app's HTTP API."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from engine import InputError, request_from_dict
from ui.tabs.perception import LABELS, aspect_note, build_request


@pytest.fixture
def pano(tmp_path):
    path = tmp_path / "pano.png"
    Image.fromarray((np.random.default_rng(0).random((64, 128, 3)) * 255).astype(np.uint8)).save(path)
    return str(path)


def test_build_request_round_trips_and_names_bad_fields(pano, tmp_path):
    req = build_request(pano, ["depth", "pbr"], "", 2.0, 3.5, 7.0, True, True, "model_offload", 0, 0, 100, 1.0, True,
                        False)
    assert req.tasks == ("depth", "pbr") and req.steps == 2 and type(req.seed) is int
    assert req.swap.mode == "model_offload" and req.swap.prefetch == 1
    assert request_from_dict(json.loads(json.dumps(req.to_dict()))) == req
    with pytest.raises(InputError) as err:
        build_request(pano, [], "", 2, 3.5, 0)
    assert LABELS[err.value.field] == "Maps"
    wide = tmp_path / "wide.png"
    Image.new("RGB", (300, 100)).save(wide)
    with pytest.raises(InputError) as err:
        build_request(str(wide), ["depth"], "", 2, 3.5, 0)
    assert LABELS[err.value.field] == "Panorama" and "pad it or crop it" in err.value.message


def test_aspect_note_offers_pad_and_crop_only_when_they_help(pano, tmp_path):
    assert aspect_note(pano) == ("128×64 panorama.", False)
    wide = tmp_path / "wide.png"
    Image.new("RGB", (300, 100)).save(wide)
    text, fixable = aspect_note(str(wide))
    assert "not an equirectangular 2:1" in text and fixable
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG nope")
    text, fixable = aspect_note(str(broken))
    assert "cannot read" in text and not fixable
    big = tmp_path / "big.png"
    Image.new("RGB", (2048, 1024)).save(big)
    assert "runs at 1440×720" in aspect_note(str(big))[0]


def _perceive(client, path, tasks=("depth", "semantic")):
    from gradio_client import handle_file

    memory = ("block_swap", 0, 1, 100, 1, True, False)  # the memory-mode widget's values
    return client.predict(handle_file(path), list(tasks), "", 1, 3.5, 1, True, True, *memory, api_name="/perception")


def test_api_perception_returns_maps_3d_view_and_every_file(client, pano):
    gallery, model3d, files, info, status, plan, _plot = _perceive(client, pano)
    assert status.startswith("Done") and "block_swap" in plan and "Measured" in plan
    captions = [item["caption"] for item in gallery]
    assert captions[0] == "depth (distance)" and captions[1].startswith("semantic (")
    assert all(Path(item["image"]).is_file() for item in gallery)
    assert Path(model3d).suffix == ".glb" and Path(model3d).read_bytes()[:4] == b"glTF"
    names = [Path(f).name for f in files]
    assert any(n.endswith("-depth16.png") for n in names) and any(n.endswith("-depth.npy") for n in names)
    assert any(n.endswith("-semantic-ids.npy") for n in names) and any(n.endswith("-sphere.glb") for n in names)
    saved = [f for f in files if f.endswith("-s1.json")]
    assert request_from_dict(json.loads(Path(saved[0]).read_text())).tasks == ("depth", "semantic")
    assert "seam error" in info


def test_api_bad_panorama_is_a_message_and_pad_fixes_it(client, tmp_path):
    from gradio_client import handle_file
    from gradio_client.exceptions import AppError

    wide = tmp_path / "wide.png"
    Image.new("RGB", (300, 100), (50, 60, 70)).save(wide)
    with pytest.raises(AppError) as err:
        _perceive(client, str(wide))
    assert "Panorama" in str(err.value) and "2:1" in str(err.value) and "Traceback" not in str(err.value)
    fixed = client.predict(handle_file(str(wide)), api_name="/perception_pad")
    with Image.open(fixed) as im:
        assert im.size == (300, 150)
    cropped = client.predict(handle_file(str(wide)), api_name="/perception_crop")
    with Image.open(cropped) as im:
        assert im.size == (200, 100)
