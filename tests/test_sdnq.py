"""SDNQ: generate with quantized models (catalog entry, folder, demo), quantize your own and load it back."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch

from engine import CatalogRequest, Engine, InputError, ModelLoadError, ModelRef, OutOfBudgetError, QuantizeRequest
from engine.demo import demo_path
from engine.jobs import catalog as catalog_job
from engine.jobs import quantize as quantize_job
from engine.jobs.common import generator_for
from engine.models import read_model_index

GEN = {"prompt": "a lighthouse at dusk", "width": 64, "height": 64, "steps": 2, "seed": 42}


@pytest.fixture(scope="module")
def engine(models_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("sdnq-out")
    work = tmp_path_factory.mktemp("sdnq-models")
    # quantized folders go under engine.models_dir/sdnq: give this module its own models dir with the demo inside
    shutil.copytree(models_dir / "demo", work / "demo", symlinks=True)
    return Engine(device="cpu", models_dir=work, demo=True, outputs_dir=out)


def sdnq_layers(module) -> int:
    return sum(type(m).__name__.startswith("SDNQ") for m in module.modules())


def test_catalog_entry_generates_on_the_demo_sdnq_model(engine):
    result = engine.run(CatalogRequest(entry="FLUX.1-dev-SDNQ-uint4", **GEN))
    assert len(result.images) == 1 and result.images[0].size == (64, 64)
    assert result.metadata["entry"] == "FLUX.1-dev-SDNQ-uint4" and result.metadata["warnings"] == []
    pipe = engine.store.load_pipeline(ModelRef(path=str(demo_path(engine.models_dir, "flux-dev-sdnq-int8"))))
    assert sdnq_layers(pipe.transformer) > 0
    names = {m["name"] for m in result.memory["modules"]}
    assert {"flux-dev-sdnq-int8/transformer", "flux-dev-sdnq-int8/vae", "flux-dev-sdnq-int8/text_encoder_2"} <= names

    same_folder = engine.run(CatalogRequest(model=ModelRef(path=str(demo_path(engine.models_dir, "flux-dev-sdnq-int8"))),
                                            **GEN))
    assert np.array_equal(np.asarray(result.images[0]), np.asarray(same_folder.images[0]))


def test_catalog_bad_entries(engine):
    with pytest.raises(InputError, match="unknown catalog entry") as err:
        engine.run(CatalogRequest(entry="FLUX.9-ultra", **GEN))
    assert err.value.field == "entry"
    with pytest.raises(InputError, match="tiny stand-in") as err:
        engine.run(CatalogRequest(entry="Qwen-Image-SDNQ-uint4", **GEN))
    assert err.value.field == "entry"
    with pytest.raises(InputError, match="image-to-video model") as err:
        engine.run(CatalogRequest(entry="Wan2.2-I2V-A14B-SDNQ-uint4", **GEN))
    assert err.value.field == "entry"
    with pytest.raises(InputError, match="no diffusers pipeline"):
        engine.run(CatalogRequest(entry="HunyuanImage3-SDNQ-uint4", **GEN))


def test_model_bigger_than_the_budget_is_refused_before_any_download(models_dir, tmp_path):
    small = Engine(device="cpu", models_dir=tmp_path, demo=False, outputs_dir=tmp_path, budget_bytes=4 * 2**30)
    with pytest.raises(OutOfBudgetError, match="needs about 13 GB"):
        small.run(CatalogRequest(entry="FLUX.1-dev-SDNQ-uint4", **GEN))
    assert small.memory.names() == []


def test_full_precision_folder_warns_that_it_is_not_quantized(engine):
    result = engine.run(CatalogRequest(model=ModelRef(path=str(demo_path(engine.models_dir, "flux-dev"))), **GEN))
    assert any("not SDNQ-quantized" in w for w in result.metadata["warnings"])


def test_missing_compiler_falls_back_to_eager_with_a_message(engine, monkeypatch):
    monkeypatch.setattr(catalog_job.shutil, "which", lambda name: None)
    eager = engine.run(CatalogRequest(entry="FLUX.1-dev-SDNQ-uint4", **GEN))
    result = engine.run(CatalogRequest(entry="FLUX.1-dev-SDNQ-uint4", use_torch_compile=True, use_quantized_matmul=True,
                                       **GEN))
    assert any("C++ compiler" in w for w in result.metadata["warnings"])
    assert any("quantized matmul" in w for w in result.metadata["warnings"])
    assert np.array_equal(np.asarray(result.images[0]), np.asarray(eager.images[0]))


@pytest.mark.parametrize("dtype, max_ratio", [("int8", 0.52), ("int6", 0.52), ("uint4", 0.45),
                                              ("float8_e4m3fn", 0.52)])
def test_quantize_save_reload_matches_in_memory(engine, dtype, max_ratio):
    from diffusers import FluxPipeline

    src = demo_path(engine.models_dir, "flux-dev")
    req = QuantizeRequest(source=ModelRef(path=str(src)), output_name=f"flux-{dtype}", weights_dtype=dtype,
                          components=("transformer",))
    result = engine.run(req)
    out = quantize_job.output_dir(engine, req)
    assert result.metadata["output"] == str(out) and out.is_dir()
    assert not list(out.parent.glob(".*partial*"))
    config = json.loads((out / "transformer" / "config.json").read_text())
    assert config["quantization_config"]["quant_method"] == "sdnq"
    assert config["quantization_config"]["weights_dtype"] == dtype
    size = result.metadata["sizes"]["transformer"]
    assert size["after"] < size["before"] * max_ratio, size
    assert "transformer:" in result.metadata["summary"]
    assert not any(n.endswith("~quantize/transformer") for n in engine.memory.names())  # transient: released

    # reload through the app's own path and compare with the pipeline quantized in memory
    reloaded = engine.run(CatalogRequest(model=ModelRef(path=str(out)), **GEN))
    assert reloaded.metadata["warnings"] == []
    in_memory = FluxPipeline.from_pretrained(
        str(src), quantization_config=quantize_job.quantization_config(read_model_index(src), req)
    )
    assert sdnq_layers(in_memory.transformer) > 0
    with torch.inference_mode():
        expected = in_memory(prompt=GEN["prompt"], width=64, height=64, num_inference_steps=2, guidance_scale=3.5,
                             generator=generator_for(GEN["seed"])).images[0]
    diff = np.abs(np.asarray(reloaded.images[0], dtype=np.int16) - np.asarray(expected, dtype=np.int16)).max()
    assert diff <= 1, diff  # same weights (below); uint4's dequant may round the last bit differently
    reloaded_pipe = engine.store.load_pipeline(ModelRef(path=str(out)))
    saved, fresh = reloaded_pipe.transformer.state_dict(), in_memory.transformer.state_dict()
    assert saved.keys() == fresh.keys()
    assert all(torch.equal(saved[k], fresh[k]) for k in fresh)  # the reload holds exactly what was quantized


def test_quantizing_sensitive_layers_too_makes_a_smaller_model(engine):
    src = ModelRef(path=str(demo_path(engine.models_dir, "flux-dev")))
    kept = engine.run(QuantizeRequest(source=src, output_name="flux-keep", weights_dtype="int8"))
    every = engine.run(QuantizeRequest(source=src, output_name="flux-all", weights_dtype="int8",
                                       keep_sensitive_layers=False))
    assert every.metadata["sizes"]["transformer"]["after"] < kept.metadata["sizes"]["transformer"]["after"]
    config = json.loads((quantize_job.output_dir(engine, every.request) / "transformer" / "config.json").read_text())
    assert config["quantization_config"]["add_skip_keys"] is False
    result = engine.run(CatalogRequest(model=ModelRef(path=every.metadata["output"]), **GEN))
    assert len(result.images) == 1


def test_quantize_text_encoder_too(engine):
    src = demo_path(engine.models_dir, "flux-dev")
    req = QuantizeRequest(source=ModelRef(path=str(src)), output_name="flux-te-int8",
                          components=("transformer", "text_encoder_2"))
    result = engine.run(req)
    out = quantize_job.output_dir(engine, req)
    te = json.loads((out / "text_encoder_2" / "config.json").read_text())
    assert te["quantization_config"]["quant_method"] == "sdnq"
    assert set(result.metadata["sizes"]) == {"transformer", "text_encoder_2"}
    assert len(engine.run(CatalogRequest(model=ModelRef(path=str(out)), **GEN)).images) == 1


def test_quantize_bad_input(engine, tmp_path, monkeypatch):
    src = ModelRef(path=str(demo_path(engine.models_dir, "flux-dev")))
    engine.run(QuantizeRequest(source=src, output_name="taken"))
    with pytest.raises(InputError, match="already exists") as err:
        engine.run(QuantizeRequest(source=src, output_name="taken"))
    assert err.value.field == "output_name"
    with pytest.raises(InputError, match="no component 'unet'") as err:
        engine.run(QuantizeRequest(source=src, output_name="x1", components=("unet",)))
    assert err.value.field == "components[0]"
    with pytest.raises(ModelLoadError, match="not a diffusers model folder"):
        engine.run(QuantizeRequest(source=ModelRef(path=str(tmp_path)), output_name="x2"))
    with pytest.raises(InputError) as err:
        engine.run(QuantizeRequest(source=src, output_name="x3", weights_dtype="int1"))
    assert err.value.field == "weights_dtype"

    class Full:
        free = 10

    monkeypatch.setattr(quantize_job.shutil, "disk_usage", lambda p: Full)
    with pytest.raises(ModelLoadError, match="not enough disk space"):
        engine.run(QuantizeRequest(source=src, output_name="x4"))
    assert not (engine.models_dir / "sdnq" / "x4").exists()
