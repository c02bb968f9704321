"""Every request validates with a field name and words a user understands, and round-trips JSON."""

from __future__ import annotations

import json

import pytest
from PIL import Image

from engine import (
    CatalogRequest,
    I2VRequest,
    InputError,
    IPAdapterRequest,
    LoraSpec,
    LoraStackRequest,
    ModelRef,
    PerceptionRequest,
    QuantizeRequest,
    ReferenceImage,
    SwapSettings,
    TextToImageRequest,
    request_from_dict,
)
from engine.requests import MAX_SEED, REQUEST_TYPES

FLUX = ModelRef(repo_id="black-forest-labs/FLUX.1-dev")


@pytest.fixture
def image_file(tmp_path):
    path = tmp_path / "ref.png"
    Image.new("RGB", (32, 16), (10, 20, 30)).save(path)
    return str(path)


def _panorama(tmp_path) -> str:
    path = tmp_path / "pano.png"
    Image.new("RGB", (128, 64), (10, 20, 30)).save(path)
    return str(path)


@pytest.fixture
def panorama_file(tmp_path):
    return _panorama(tmp_path)


def good_requests(image_file, tmp_path):
    lora = tmp_path / "a.safetensors"
    lora.write_bytes(b"0")
    return [
        TextToImageRequest(model=FLUX, prompt="a fox", width=512, height=768, seed=7),
        CatalogRequest(entry="FLUX.1-dev-SDNQ-uint4", prompt="a fox", use_quantized_matmul=True),
        QuantizeRequest(source=ModelRef(path=str(tmp_path)), weights_dtype="uint4", group_size=64, use_svd=True,
                        components=("transformer", "text_encoder_2")),
        IPAdapterRequest(model=FLUX, prompt="a fox", references=(ReferenceImage(image_file, 0.5),), weight=0.75,
                         end_percent=0.9, ramp=True),
        PerceptionRequest(panorama=_panorama(tmp_path), tasks=("depth", "normal")),
        I2VRequest(image=image_file, prompt="waves", num_frames=49, swap=SwapSettings(mode="adaptive", max_vram_gb=12)),
        LoraStackRequest(prompt="a fox", loras=(LoraSpec(path=str(lora), weight=0.5, name="a"),)),
    ]


def test_every_request_round_trips_through_json(image_file, tmp_path):
    reqs = good_requests(image_file, tmp_path)
    assert {type(r).kind for r in reqs} == set(REQUEST_TYPES)
    for req in reqs:
        req.validate()
        data = json.loads(json.dumps(req.to_dict()))
        assert data["kind"] == req.kind
        back = request_from_dict(data)
        assert back == req and type(back) is type(req)


def test_big_seed_survives_json():
    req = TextToImageRequest(model=FLUX, prompt="x", seed=MAX_SEED)
    req.validate()
    assert request_from_dict(json.loads(json.dumps(req.to_dict()))).seed == MAX_SEED


@pytest.mark.parametrize(
    "changes, field, words",
    [
        ({"width": 1000}, "width", "multiple of 16"),
        ({"height": 8}, "height", "between 16"),
        ({"width": 100000}, "width", "between"),
        ({"steps": 0}, "steps", "between 1"),
        ({"steps": -3}, "steps", "between 1"),
        ({"steps": 2.5}, "steps", "whole number"),
        ({"seed": -1}, "seed", "between 0"),
        ({"seed": MAX_SEED + 1}, "seed", "between 0"),
        ({"prompt": ""}, "prompt", "empty"),
        ({"prompt": "   "}, "prompt", "empty"),
        ({"guidance_scale": -1.0}, "guidance_scale", "between"),
        ({"guidance_scale": float("nan")}, "guidance_scale", "number"),
        ({"model": ModelRef(path="/no/such/model")}, "model.path", "no such file"),
        ({"model": ModelRef()}, "model", "repo id"),
        ({"model": ModelRef(repo_id="not a repo")}, "model.repo_id", "owner/name"),
        ({"model": ModelRef(repo_id="a/b", dtype="int3")}, "model.dtype", "one of"),
        ({"swap": SwapSettings(mode="turbo")}, "swap.mode", "one of"),
    ],
)
def test_text_to_image_bad_input(changes, field, words):
    req = TextToImageRequest(**{"model": FLUX, "prompt": "a fox", **changes})
    with pytest.raises(InputError) as err:
        req.validate()
    assert err.value.field == field
    assert words in err.value.message


def test_unreadable_and_missing_images(tmp_path):
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"\x89PNG not really")
    for path, words in [(str(bad), "cannot read"), (str(tmp_path / "none.png"), "not found"), ("", "no image")]:
        with pytest.raises(InputError) as err:
            IPAdapterRequest(model=FLUX, prompt="x", references=(ReferenceImage(path),)).validate()
        assert err.value.field == "references[0].path" and words in err.value.message


def test_job_specific_rules(image_file, panorama_file, tmp_path):
    cases = [
        (IPAdapterRequest(prompt="x", references=(ReferenceImage(image_file),), start_percent=0.8, end_percent=0.2),
         "end_percent"),
        (I2VRequest(image=image_file, prompt="x", num_frames=50), "num_frames"),
        (PerceptionRequest(panorama=panorama_file, tasks=("depth", "height")), "tasks[1]"),
        (PerceptionRequest(panorama=panorama_file, tasks=()), "tasks"),
        (PerceptionRequest(panorama=panorama_file, tasks=("depth", "depth")), "tasks"),
        (PerceptionRequest(panorama=image_file), "panorama"),  # 32x16: 2:1 but too small
        (QuantizeRequest(source=ModelRef(path=str(tmp_path)), weights_dtype="int1"), "weights_dtype"),
        (QuantizeRequest(source=ModelRef(path=str(tmp_path)), group_size=48), "group_size"),
        (QuantizeRequest(source=ModelRef(path=str(tmp_path)), output_name="../escape"), "output_name"),
        (QuantizeRequest(source=ModelRef(path=str(tmp_path)), components=()), "components"),
        (LoraStackRequest(prompt="x", loras=(LoraSpec(path=str(tmp_path / "x.safetensors")),)), "loras[0].path"),
    ]
    not_lora = tmp_path / "lora.txt"  # pickles (.ckpt) pass here and are refused when loaded unless weights_only works
    not_lora.write_bytes(b"0")
    cases.append((LoraStackRequest(prompt="x", loras=(LoraSpec(path=str(not_lora)),)), "loras[0].path"))
    for req, field in cases:
        with pytest.raises(InputError) as err:
            req.validate()
        assert err.value.field == field, (req, err.value)


def test_from_dict_rejects_unknown_kind_and_fields():
    with pytest.raises(InputError) as err:
        request_from_dict({"kind": "paint"})
    assert err.value.field == "kind"
    with pytest.raises(InputError) as err:
        request_from_dict({"kind": "text_to_image", "prompt": "x", "colour": "red"})
    assert err.value.field == "colour"
    with pytest.raises(InputError) as err:
        request_from_dict({"kind": "text_to_image", "model": {"repo": "x/y"}})
    assert err.value.field == "model.repo"
    with pytest.raises(InputError):
        request_from_dict(["not", "an", "object"])
