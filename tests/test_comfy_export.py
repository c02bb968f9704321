"""ComfyUI export and import: both formats for many random valid requests of every kind, checked by comfy-cli's
offline validator and our own checks, UI -> API equal to the API export, round trips, traps, bad input, official
templates, PNG and video metadata. No models run: the exporter reads request objects only."""

from __future__ import annotations

import dataclasses
import io
import json
import os
import random
import shutil
import subprocess
from pathlib import Path

import pytest
from PIL import Image

import comfy_export
from comfy_export import node_defs, validate
from comfy_export.export import EXTRA_KEY
from engine.requests import (
    REQUEST_TYPES,
    VIDEO_RESOLUTIONS,
    CatalogRequest,
    I2VRequest,
    IPAdapterRequest,
    LoraSpec,
    LoraStackRequest,
    ModelRef,
    PerceptionRequest,
    QuantizeRequest,
    ReferenceImage,
    SingleFiles,
    SwapSettings,
    TextToImageRequest,
    TurboWanSettings,
)

TEMPLATES = Path(__import__("comfyui_workflow_templates_json").__file__).parent / "templates"
PER_KIND = 12


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("comfy")
    (root / "input").mkdir()
    (root / "models" / "loras" / "styles").mkdir(parents=True)
    (root / "models" / "diffusion_models").mkdir(parents=True)
    image = root / "input" / "start.png"
    Image.new("RGB", (64, 64), (200, 30, 30)).save(image)
    pano = root / "input" / "pano.png"
    Image.new("RGB", (128, 64), (30, 30, 200)).save(pano)
    loras = []
    for i in range(14):
        path = root / "models" / "loras" / ("styles" if i % 2 else "") / f"lora{i}.safetensors"
        path.write_bytes(b"0")
        loras.append(str(path))
    dit = root / "models" / "diffusion_models" / "svdq-int4_r32-qwen-image.safetensors"
    dit.write_bytes(b"0")
    single = root / "models" / "diffusion_models" / "my-flux-finetune.safetensors"
    single.write_bytes(b"0")
    return {"root": root, "image": str(image), "pano": str(pano), "loras": loras, "dit": str(dit),
            "single": str(single)}


def _side(rng, lo=256, hi=1536):
    return rng.randrange(lo, hi + 1, 16)


def random_requests(kind: str, files: dict, n: int = PER_KIND, seed: int = 0) -> list:
    """Valid requests of ``kind`` with settings drawn at random inside both the app's and the nodes' ranges."""
    rng = random.Random(f"{kind}-{seed}")
    out = []
    for _ in range(n):
        common = {"prompt": rng.choice(["a fox", "a lighthouse at dusk, oil", "城市夜景"]), "seed": rng.randrange(2**64),
                  "steps": rng.randint(1, 60), "width": _side(rng), "height": _side(rng),
                  "negative_prompt": rng.choice(["", "blurry"])}
        model = rng.choice(["black-forest-labs/FLUX.1-dev", "lodestones/Chroma1-HD", "Qwen/Qwen-Image"])
        if kind == "text_to_image":
            ref = ModelRef(repo_id=model)
            if rng.random() < 0.2:
                ref = ModelRef(repo_id="black-forest-labs/FLUX.1-dev", files=SingleFiles(transformer=files["single"]))
            req = TextToImageRequest(model=ref, guidance_scale=round(rng.uniform(0, 10), 2),
                                     true_cfg_scale=round(rng.uniform(1, 8), 2), **common)
        elif kind == "sdnq_generate":
            entry = rng.choice(["FLUX.1-dev-SDNQ-uint4", "Qwen-Image-SDNQ-uint4", ""])
            req = CatalogRequest(entry=entry, model=ModelRef(repo_id="Disty0/FLUX.1-dev-SDNQ-uint4-svd-r32"),
                                 guidance_scale=round(rng.uniform(0, 10), 2),
                                 use_quantized_matmul=rng.random() < 0.5, **common)
        elif kind == "sdnq_quantize":
            req = QuantizeRequest(source=ModelRef(path=files["single"]), output_name=f"q{rng.randrange(99)}",
                                  weights_dtype=rng.choice(["int8", "int6", "uint4", "float8_e4m3fn"]),
                                  group_size=rng.choice([0, 32, 64, 128, 256]), use_svd=rng.random() < 0.5,
                                  svd_rank=rng.choice([8, 32, 64, 128]))
        elif kind == "ipadapter":
            refs = tuple(ReferenceImage(files["image"], round(rng.uniform(0.1, 1.5), 2))
                         for _ in range(rng.randint(1, 3)))
            ramp = rng.random() < 0.4
            start = round(rng.uniform(0, 0.4), 3)
            req = IPAdapterRequest(model=ModelRef(repo_id=rng.choice(model.split() + ["lodestones/Chroma1-HD"])),
                                   references=refs, weight=round(rng.uniform(0.2, 2), 2), ramp=ramp,
                                   start_percent=start, end_percent=round(rng.uniform(0.5, 1), 3),
                                   weight_start=round(rng.uniform(0, 1), 2), weight_end=round(rng.uniform(0.5, 2), 2),
                                   ramp_steps=rng.randint(1, 30), offload_preprocessing=rng.random() < 0.5,
                                   guidance_scale=3.5, **common)
        elif kind == "perception":
            tasks = tuple(rng.sample(["depth", "normal", "albedo", "pbr", "semantic"], rng.randint(1, 5)))
            req = PerceptionRequest(panorama=files["pano"], tasks=tasks, prompt=rng.choice(["", "a room"]),
                                    steps=common["steps"], seed=common["seed"],
                                    guidance_scale=round(rng.uniform(1, 8), 2))
        elif kind == "i2v":
            turbo = rng.random() < 0.5
            res = rng.choice([r for r in VIDEO_RESOLUTIONS])
            aspect = rng.choice(["16:9", "9:16", "4:3", "3:4", "1:1"])
            w, h = VIDEO_RESOLUTIONS[res][aspect]
            repo = rng.choice(["Wan-AI/Wan2.2-I2V-A14B-Diffusers", "Wan-AI/Wan2.2-TI2V-5B-Diffusers"])
            swap = SwapSettings(mode=rng.choice(["none", "adaptive", "chunkwise", "layerwise", "cpu_only"]),
                                max_vram_gb=float(rng.randint(2, 48)), block_size_mb=rng.randrange(10, 1000, 10))
            req = I2VRequest(model=ModelRef(repo_id="Wan-AI/Wan2.2-I2V-A14B-Diffusers" if turbo else repo),
                             image=files["image"], prompt=common["prompt"], resolution=res, aspect_ratio=aspect,
                             width=w, height=h, num_frames=rng.randrange(9, 121, 8), seed=common["seed"],
                             steps=rng.randint(1, 4) if turbo else rng.randint(2, 40), fps=rng.randint(8, 30),
                             guidance_scale=round(rng.uniform(1, 6), 2), guidance_scale_2=round(rng.uniform(1, 6), 2),
                             output_format=rng.choice(["mp4", "webm", "gif"]), quality=rng.randint(1, 10),
                             turbo=TurboWanSettings(enabled=turbo, quantized=rng.random() < 0.5,
                                                    sigma_max=float(rng.randint(50, 400)), ode=rng.random() < 0.5),
                             swap=swap)
        else:
            nunchaku = rng.random() < 0.4
            loras = tuple(LoraSpec(path=p, weight=round(rng.uniform(-2, 2), 2), enabled=rng.random() < 0.8)
                          for p in rng.sample(files["loras"], rng.randint(0, 12)))
            stage2 = rng.random() < 0.4
            req = LoraStackRequest(model=ModelRef(repo_id="Qwen/Qwen-Image"), loras=loras,
                                   backend="nunchaku" if nunchaku else "diffusers",
                                   nunchaku_transformer=files["dit"] if nunchaku else "",
                                   true_cfg_scale=round(rng.uniform(1, 6), 2), stage2=stage2,
                                   stage2_loras=loras[:2] if stage2 else (), stage2_strength=0.4,
                                   stage2_upscale=1.0 if rng.random() < 0.5 else 2.0, **{
                                       **common, "width": 512, "height": 512})
        req.validate()
        out.append(req)
    return out


KINDS = sorted(REQUEST_TYPES)


def test_every_request_kind_has_random_cases(files):
    assert set(KINDS) == {"text_to_image", "sdnq_generate", "sdnq_quantize", "ipadapter", "perception", "i2v",
                          "lora_stack"}


def _check_api_shape(api: dict) -> None:
    assert api and all(isinstance(k, str) and k.isdigit() for k in api)
    outputs = 0
    for node in api.values():
        assert set(node) == {"inputs", "class_type", "_meta"} and isinstance(node["_meta"]["title"], str)
        outputs += node_defs.get(node["class_type"]).output_node
        for value in node["inputs"].values():
            if isinstance(value, list):
                assert validate.is_link(value) and value[0] in api
    assert outputs >= 1


def _check_ui_shape(ui: dict) -> None:
    assert ui["version"] == 0.4 and ui["groups"]
    nodes = {n["id"]: n for n in ui["nodes"]}
    assert ui["last_node_id"] == max(nodes) and ui["last_link_id"] == len(ui["links"])
    for link_id, src, slot, dst, dst_slot, kind in ui["links"]:
        assert nodes[dst]["inputs"][dst_slot]["link"] == link_id
        assert link_id in nodes[src]["outputs"][slot]["links"] and nodes[src]["outputs"][slot]["type"] == kind
        assert nodes[src]["pos"][0] < nodes[dst]["pos"][0] or nodes[src]["pos"][1] < nodes[dst]["pos"][1]
    for node in ui["nodes"]:
        if node["type"] == "Note":
            continue
        widgets = node_defs.get(node["type"]).widgets
        assert len(node["widgets_values"]) == sum(1 + w.ui_extras() for w in widgets)
    json.dumps(ui)


@pytest.mark.parametrize("kind", KINDS)
def test_random_requests_export_valid_and_round_trip(kind, files):
    search = {"input": [str(files["root"] / "input")], "loras": [str(files["root"] / "models" / "loras")],
              "diffusion_models": [str(files["root"] / "models" / "diffusion_models")]}
    for req in random_requests(kind, files):
        api, ui = comfy_export.both(req)
        _check_api_shape(api)
        _check_ui_shape(ui)
        assert validate.problems(api) == []
        assert comfy_export.ui_to_api(ui) == api  # the frontend's conversion of our UI file is our API file
        assert comfy_export.from_workflow(ui) == req  # UI file: the exact request back
        back = comfy_export.from_workflow(json.dumps(api), search_dirs=search)  # API: only what the graph holds
        assert back.kind == req.kind
        if kind == "lora_stack" and req.backend == "diffusers" and not all(
                lora.enabled for lora in req.loras + req.stage2_loras):
            assert back.loras == tuple(lora for lora in req.loras if lora.enabled)  # bypassed: not in the API
            continue
        assert _rounded(comfy_export.to_api(back)) == _rounded(api)  # ... and it exports to the same graph


def _rounded(value):
    """Floats to 9 digits: a weight split into request weight x reference weight and back may differ in the last."""
    if isinstance(value, dict):
        return {k: _rounded(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_rounded(v) for v in value]
    return round(value, 9) if isinstance(value, float) else value


def _object_info_with_files(apis: list[dict], path: Path) -> Path:
    """The definitions as ComfyUI's /object_info serves them on a machine that has the exported model files."""
    data = json.loads(node_defs.DATA.read_text())
    info = data["nodes"]
    for api in apis:
        for node in api.values():
            spec = info[node["class_type"]]
            combos = data["_validation_hints"].get(node["class_type"], {}).get("file_combos", {})
            for name, value in node["inputs"].items():
                if name in combos or (node["class_type"] == "LoadImage" and name == "image"):
                    for section in ("required", "optional"):
                        entry = spec["input"].get(section, {}).get(name)
                        if entry is not None and isinstance(entry[0], list) and value not in entry[0]:
                            entry[0].append(value)
    path.write_text(json.dumps(info))
    return path


@pytest.mark.parametrize("kind", KINDS)
def test_comfy_cli_offline_validator_accepts_exports(kind, files, tmp_path):
    comfy = shutil.which("comfy")
    assert comfy, "comfy-cli (requirements-dev.txt) provides `comfy workflow validate`"
    apis = [comfy_export.to_api(r) for r in random_requests(kind, files, n=3, seed=1)]
    info = _object_info_with_files(apis, tmp_path / "object_info.json")
    env = {**os.environ, "HOME": str(tmp_path), "DO_NOT_TRACK": "1"}
    for i, api in enumerate(apis):
        wf = tmp_path / f"{kind}{i}.json"
        wf.write_text(json.dumps(api))
        run = subprocess.run([comfy, "--skip-prompt", "--no-enable-telemetry", "workflow", "validate", "--workflow",
                              str(wf), "--input", str(info)], capture_output=True, text=True, timeout=60, env=env)
        assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-2000:]
        assert json.loads(run.stdout)["data"]["valid"] is True


def test_validator_catches_what_cli_skips():
    api = comfy_export.to_api(TextToImageRequest(prompt="x"))
    broken = json.loads(json.dumps(api))
    sampler = next(k for k, v in broken.items() if v["class_type"] == "KSampler")
    del broken[sampler]["inputs"]["positive"]
    broken[sampler]["inputs"]["steps"] = 0
    broken[sampler]["inputs"]["sampler_name"] = "nope"
    found = validate.problems(broken)
    assert any("required input 'positive'" in p for p in found)
    assert any("steps 0 is below the minimum 1" in p for p in found)
    assert any("'nope' is not one of" in p for p in found)


def test_traps_seed_upload_bypass_int_combo_and_unused_nodes(files):
    req = LoraStackRequest(prompt="x", loras=(LoraSpec(path=files["loras"][0]),
                                              LoraSpec(path=files["loras"][1], enabled=False)))
    api, ui = comfy_export.both(req)
    ks = next(n for n in ui["nodes"] if n["type"] == "KSampler")
    assert ks["widgets_values"][1] == "fixed"  # control_after_generate after the seed widget
    bypassed = [n for n in ui["nodes"] if n.get("mode") == 4]
    assert [n["type"] for n in bypassed] == ["LoraLoaderModelOnly"]
    assert str(bypassed[0]["id"]) not in api and comfy_export.ui_to_api(ui) == api
    i2v = I2VRequest(image=files["image"], prompt="go", steps=4, turbo=TurboWanSettings(enabled=True))
    api, ui = comfy_export.both(i2v)
    load = next(n for n in ui["nodes"] if n["type"] == "LoadImage")
    assert load["widgets_values"] == ["start.png", "image"]  # the upload widget's value
    sampler = next(n for n in api.values() if n["class_type"] == "TurboDiffusionI2VSampler")
    assert sampler["inputs"]["num_steps"] == 4
    sampler["inputs"]["num_steps"] = "4"
    assert any("num_steps '4' is not one of" in p for p in validate.problems(api))
    loader = next(n for n in api.values() if n["class_type"] == "TurboWanModelLoader")
    assert {"max_vram_gb", "block_size_mb", "swap_mode"} <= set(loader["inputs"])
    sampler["inputs"]["num_steps"] = 4
    api["999"] = {"class_type": "KSampler", "inputs": {"steps": -5}, "_meta": {"title": "unused"}}
    assert validate.problems(api, strict=False) == []  # feeds no output: ComfyUI does not validate it
    nunchaku = node_defs.get("NunchakuFluxDiTLoader")
    assert node_defs.check_value(nunchaku, nunchaku.input("attention"), "flash-attention2") is None


def test_demo_runs_say_so_and_local_files_use_category_names(files):
    req = TextToImageRequest(prompt="x", model=ModelRef(repo_id="black-forest-labs/FLUX.1-dev",
                                                          files=SingleFiles(transformer=files["single"])))
    ui = comfy_export.to_workflow(req, demo=True)
    note = next(n for n in ui["nodes"] if n["type"] == "Note")["widgets_values"][0]
    assert "demo-mode" in note and ui["extra"][EXTRA_KEY]["demo"] is True
    names = [n["widgets_values"][0] for n in ui["nodes"] if n["type"] in ("UNETLoader", "DualCLIPLoader",
                                                                         "VAELoader")]
    assert names == ["my-flux-finetune.safetensors", "clip_l.safetensors", "ae.safetensors"]
    lora = LoraStackRequest(prompt="x", loras=(LoraSpec(path=files["loras"][1]),))
    api = comfy_export.to_api(lora)
    assert [n["inputs"]["lora_name"] for n in api.values() if "lora_name" in n["inputs"]] == [
        "styles/lora1.safetensors"]


def test_edited_graph_values_win_over_the_embedded_request(files):
    req = TextToImageRequest(prompt="a fox", steps=12, seed=3)
    ui = comfy_export.to_workflow(req)
    ks = next(n for n in ui["nodes"] if n["type"] == "KSampler")
    ks["widgets_values"][2] = 33  # steps edited in ComfyUI
    back = comfy_export.from_workflow(ui)
    assert back.steps == 33 and back.seed == 3 and back.prompt == "a fox"


@pytest.mark.parametrize("name, kind, expect", [
    ("flux_dev_full_text_to_image", "text_to_image", {"steps": 20, "model": "black-forest-labs/FLUX.1-dev"}),
    ("flux_schnell_full_text_to_image", "text_to_image", {"steps": 4, "model": "black-forest-labs/FLUX.1-schnell"}),
    ("flux_schnell", "text_to_image", {"steps": 4, "model": "black-forest-labs/FLUX.1-schnell"}),
    ("image_chroma_text_to_image", "text_to_image", {"steps": 26, "guidance_scale": 3.5,
                                                     "model": "lodestones/Chroma1-HD"}),
    ("video_wan2_2_14B_i2v", "i2v", {"steps": 20, "num_frames": 81, "fps": 16, "width": 640,
                                     "model": "Wan-AI/Wan2.2-I2V-A14B-Diffusers"}),
    ("image_qwen_image", "text_to_image", {"steps": 20, "width": 1328, "model": "Qwen/Qwen-Image"}),
    ("image_qwen_image_edit", "lora_stack", {"steps": 20, "true_cfg_scale": 2.5, "model": "Qwen/Qwen-Image-Edit",
                                             "input_image": "image_qwen_image_edit_input_image.png"}),
])
def test_official_templates_import(name, kind, expect):
    req = comfy_export.from_workflow((TEMPLATES / f"{name}.json").read_text())
    assert req.kind == kind
    for key, value in expect.items():
        got = req.model.repo_id if key == "model" else getattr(req, key)
        assert got == value, key
    assert req.prompt


def _png_bytes(text: dict[str, str] | None = None) -> bytes:
    from PIL import PngImagePlugin

    info = PngImagePlugin.PngInfo()
    for k, v in (text or {}).items():
        info.add_text(k, v)
    buf = io.BytesIO()
    Image.new("RGB", (8, 8)).save(buf, "PNG", pnginfo=info)
    return buf.getvalue()


@pytest.mark.parametrize("data, words", [
    ("{not json", "not valid JSON"),
    ('{"1": {"class_type": "WAS_Image_Blend", "inputs": {}}}', "unsupported node 'WAS_Image_Blend' (node 1)"),
    ("[1, 2]", "JSON object"),
    (b"\x89PNG\r\n\x1a\n" + b"x" * (50 * 2**20), "50 MB"),
])
def test_bad_input_has_clear_messages(data, words):
    with pytest.raises(comfy_export.WorkflowError, match=words.replace("(", r"\(").replace(")", r"\)")):
        comfy_export.from_workflow(data)


def test_bad_graphs_have_clear_messages():
    api = comfy_export.to_api(TextToImageRequest(prompt="x"))
    sampler = next(k for k, v in api.items() if v["class_type"] == "KSampler")
    missing = json.loads(json.dumps(api))
    missing[sampler]["inputs"]["model"] = ["77", 0]
    with pytest.raises(comfy_export.WorkflowError, match="links to node 77, which does not exist"):
        comfy_export.from_workflow(missing)
    cycle = json.loads(json.dumps(api))
    decode = next(k for k, v in cycle.items() if v["class_type"] == "VAEDecode")
    cycle[sampler]["inputs"]["latent_image"] = [decode, 0]
    with pytest.raises(comfy_export.WorkflowError, match="cycle"):
        comfy_export.from_workflow(cycle)
    ui = comfy_export.to_workflow(TextToImageRequest(prompt="x"))
    next(n for n in ui["nodes"] if n["type"] == "KSampler")["widgets_values"].pop()
    with pytest.raises(comfy_export.WorkflowError, match=r"node \d+ \(KSampler\) has 6 widget values; its definition has 7"):
        comfy_export.from_workflow(ui)
    with pytest.raises(comfy_export.WorkflowError, match="no ComfyUI workflow"):
        comfy_export.from_workflow(_png_bytes())
    far = comfy_export.to_api(TextToImageRequest(prompt="x"))
    next(v for v in far.values() if v["class_type"] == "EmptySD3LatentImage")["inputs"]["width"] = 8192
    with pytest.raises(comfy_export.WorkflowError, match="width: must be between"):
        comfy_export.from_workflow(far)


def test_png_metadata_round_trips_through_pillow(tmp_path, files):
    from engine.outputs import save_images

    req = IPAdapterRequest(prompt="x", references=(ReferenceImage(files["image"], 0.7),))
    saved = save_images([Image.new("RGB", (16, 16))], tmp_path, req, text=comfy_export.png_text(req, True))
    with Image.open(saved[0]) as im:
        text = dict(im.text)
    assert json.loads(text["prompt"]) == comfy_export.to_api(req, demo=True)
    assert json.loads(text["workflow"]) == comfy_export.to_workflow(req, demo=True)
    assert comfy_export.from_workflow(Path(saved[0]).read_bytes()) == req


def test_video_container_carries_the_workflow(tmp_path, files):
    import imageio_ffmpeg
    import numpy as np

    from engine.video.encode import save_video_result

    req = I2VRequest(image=files["image"], prompt="go", width=64, height=64, resolution="custom", num_frames=5)
    out = save_video_result(np.zeros((5, 64, 64, 3), dtype=np.uint8), tmp_path, req, text=comfy_export.png_text(req))
    meta = subprocess.run([imageio_ffmpeg.get_ffmpeg_exe(), "-v", "error", "-i", out[0], "-f", "ffmetadata", "-"],
                          capture_output=True, text=True, timeout=60).stdout
    assert "workflow=" in meta and "prompt=" in meta
    assert comfy_export.from_workflow(Path(out[2]).read_bytes()) == req  # the last-frame PNG opens it too


def test_node_definitions_cover_every_pack():
    defs = node_defs.all_defs()
    for name in ("IPAdapterFluxLoader", "ApplyIPAdapterFluxChroma", "SDNQSampler", "SDNQModelQuantizer",
                 "OmniX_PanoPerception_Depth", "TurboDiffusionI2VSampler", "NunchakuQwenImageDiTLoader",
                 "NunchakuQwenImageLoraStackV3"):
        assert name in defs
    assert defs["TurboDiffusionI2VSampler"].input("num_steps").choices == (1, 2, 3, 4)
    assert defs["ApplyIPAdapterFluxChroma"].input("offload_preprocessing").type == "BOOLEAN"
    shared = Path(__file__).resolve().parents[2] / "shared" / "reference" / "comfy_object_info.json"
    if shared.is_file():  # the data in the repo is what the build script makes of ComfyUI's own dump
        from comfy_export.build_node_defs import build

        built = json.loads(json.dumps(build(json.loads(shared.read_text())), sort_keys=True))
        assert built == json.loads(node_defs.DATA.read_text())


def test_every_kind_survives_dataclass_edits(files):
    base = random_requests("i2v", files, n=1)[0]
    edited = dataclasses.replace(base, prompt="other")
    assert comfy_export.from_workflow(comfy_export.to_workflow(edited)).prompt == "other"
