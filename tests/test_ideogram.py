"""Ideogram 4 from the SDNQ catalog: the tiny stand-in (engine/demo/ideogram.py, the diffusers Ideogram4Pipeline
folder layout with SDNQ transformers) loaded through the catalog runner's own path and generating."""

from __future__ import annotations

import json

import numpy as np
import pytest

from engine import CatalogRequest, Engine, InputError
from engine.catalog.presets import catalog_entry, load_catalog
from engine.demo import demo_path

ENTRY = "Ideogram-4-SDNQ-4bit-hadamard"
GEN = {"prompt": "a lighthouse at dusk", "width": 32, "height": 32, "steps": 2, "guidance_scale": 4.0, "seed": 3}


@pytest.fixture(scope="module")
def engine(models_dir, tmp_path_factory):
    return Engine(device="cpu", models_dir=models_dir, demo=True, outputs_dir=tmp_path_factory.mktemp("ideo"))


def test_the_catalog_offers_ideogram_4_with_its_pipeline():
    entry = catalog_entry(load_catalog(), ENTRY)
    assert entry.supported and entry.pipeline == "Ideogram4Pipeline" and entry.demo == "ideogram-4-sdnq"
    assert "no pipeline" not in entry.notes


def test_the_stand_in_has_the_pipelines_layout(models_dir):
    folder = demo_path(models_dir, "ideogram-4-sdnq")
    index = json.loads((folder / "model_index.json").read_text())
    assert index["_class_name"] == "Ideogram4Pipeline"
    assert index["text_encoder"] == ["transformers", "Qwen3VLModel"]
    assert index["vae"] == ["diffusers", "AutoencoderKLFlux2"]
    for sub in ("transformer", "unconditional_transformer"):
        assert index[sub] == ["diffusers", "Ideogram4Transformer2DModel"]
        config = json.loads((folder / sub / "config.json").read_text())
        assert config["quantization_config"]["quant_method"] == "sdnq"


def test_ideogram_4_generates_through_the_catalog_runner(engine):
    result = engine.run(CatalogRequest(entry=ENTRY, **GEN))
    assert result.metadata["pipeline"] == "Ideogram4Pipeline" and result.metadata["entry"] == ENTRY
    assert result.metadata["warnings"] == []  # SDNQ-quantized: no "runs at full precision"
    image = np.asarray(result.images[0])
    assert image.shape == (32, 32, 3) and image.std() > 0
    again = engine.run(CatalogRequest(entry=ENTRY, **{**GEN, "negative_prompt": "blurry"}))
    assert any("no negative prompt" in w for w in again.metadata["warnings"])
    assert np.array_equal(np.asarray(again.images[0]), image)  # same seed; the negative prompt is not used
    with pytest.raises(InputError):
        CatalogRequest(entry=ENTRY, **{**GEN, "width": 30}).validate()
