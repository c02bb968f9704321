"""Issue 21 meets issue 24: a run on the files of a ComfyUI models folder exports a graph that names exactly those
files (so ComfyUI on the same machine runs it without renaming), and a graph naming them imports back to the
same request, every piece a path in that folder."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

import comfy_export
from engine import Engine, I2VRequest, ModelRef, SwapSettings, TextToImageRequest
from engine.demo.comfy import build_demo_comfy, main_models
from engine.requests import LoraSpec, LoraStackRequest, SingleFiles
from ui.comfy_io import search_dirs

FLUX_FILES = {"transformer": "diffusion_models/flux1-dev-tiny.safetensors",
              "text_encoder": "text_encoders/clip_l-tiny.safetensors",
              "text_encoder_2": "text_encoders/t5xxl-tiny.safetensors", "vae": "vae/ae-tiny.safetensors"}
WAN_FILES = {"transformer": "diffusion_models/wan2.2/wan2.2_i2v_high_noise_14B_tiny.safetensors",
             "transformer_2": "diffusion_models/wan2.2/wan2.2_i2v_low_noise_14B_tiny.safetensors",
             "text_encoder": "text_encoders/umt5_xxl-tiny.safetensors"}


@pytest.fixture(scope="module")
def engine(models_dir, tmp_path_factory):
    build_demo_comfy(models_dir)
    engine = Engine(device="cpu", models_dir=models_dir, demo=True, outputs_dir=tmp_path_factory.mktemp("rt-out"),
                    output_text=comfy_export.png_text)
    engine.comfy.configure(str(main_models(models_dir)))
    return engine


def files(engine, table):
    root = main_models(engine.models_dir)
    return SingleFiles(**{part: str(root / rel) for part, rel in table.items()})


def loader_values(api: dict) -> dict[str, set]:
    out: dict[str, set] = {}
    for node in api.values():
        for name, value in node["inputs"].items():
            if name.endswith("_name") or name.startswith("clip_name"):
                out.setdefault(node["class_type"], set()).add(value)
    return out


def test_a_run_on_comfy_files_exports_their_names_and_imports_back(engine):
    req = TextToImageRequest(model=ModelRef(repo_id="black-forest-labs/FLUX.1-dev", files=files(engine, FLUX_FILES)),
                             prompt="a red boat", width=32, height=32, steps=2, seed=4)
    result = engine.run(req)
    png = next(f for f in result.files if f.endswith(".png"))
    api = comfy_export.to_api(result.request)
    loaders = loader_values(api)
    assert loaders["UNETLoader"] == {"flux1-dev-tiny.safetensors"}  # the names ComfyUI's loader combos list
    assert loaders["VAELoader"] == {"ae-tiny.safetensors"}
    assert loaders["DualCLIPLoader"] == {"clip_l-tiny.safetensors", "t5xxl-tiny.safetensors"}
    # the graph alone (no embedded request) opens with every piece from the folder
    assert comfy_export.from_workflow(api, search_dirs(engine)) == req
    # so does the PNG ComfyUI would be given, and the run it opens gives the same pixels
    again = comfy_export.from_workflow(open(png, "rb").read(), search_dirs(engine))
    assert again == req
    assert np.array_equal(np.asarray(engine.run(again).images[0]), np.asarray(result.images[0]))


def test_the_wan_pair_and_a_comfy_lora_keep_their_names(engine, tmp_path):
    start = tmp_path / "start.png"
    Image.fromarray(np.full((32, 32, 3), 90, np.uint8)).save(start)
    video = I2VRequest(model=ModelRef(repo_id="Wan-AI/Wan2.2-I2V-A14B-Diffusers", files=files(engine, WAN_FILES)),
                       image=str(start), prompt="waves", resolution="custom", width=32, height=32, num_frames=5,
                       steps=2, swap=SwapSettings(), preview_every=0)
    api = comfy_export.to_api(video)
    assert loader_values(api)["UNETLoader"] == {"wan2.2/wan2.2_i2v_high_noise_14B_tiny.safetensors",
                                                "wan2.2/wan2.2_i2v_low_noise_14B_tiny.safetensors"}
    back = comfy_export.from_workflow(api, search_dirs(engine))
    assert back.model.files == video.model.files

    lora = main_models(engine.models_dir) / "loras" / "qwen-comfy-style.safetensors"
    stack = LoraStackRequest(prompt="x", width=32, height=32, steps=2, loras=(LoraSpec(path=str(lora), weight=0.7),))
    api = comfy_export.to_api(stack)
    assert "qwen-comfy-style.safetensors" in loader_values(api)["LoraLoaderModelOnly"]
    back = comfy_export.from_workflow(api, search_dirs(engine))
    assert [(spec.path, spec.weight) for spec in back.loras] == [(str(lora), 0.7)]


def test_a_preset_file_that_is_not_here_gives_way_to_its_hub_repo(engine):
    req = TextToImageRequest(prompt="x", width=32, height=32, steps=2)  # FLUX.1-dev from the hub
    api = comfy_export.to_api(req)
    assert loader_values(api)["UNETLoader"] == {"flux1-dev.safetensors"}  # what a ComfyUI user has
    assert comfy_export.from_workflow(api, search_dirs(engine)).model == req.model
