"""The ComfyUI models folder index (issue 21): architectures and dtypes from headers only, extra_model_paths.yaml
with two base paths, the cache, every kind of bad input listed with a reason while the rest is indexed, and the
read-only guarantee (every file's mtime and hash the same after indexing and loading)."""

from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from engine.comfy_models import ComfyIndex, ComfyModels, comfy_folders
from engine.comfy_models.detect import detect
from engine.comfy_models.header import read_safetensors_header, weight_dtype
from engine.demo.comfy import EXTRA, MAIN, build_demo_comfy

EXPECTED = {  # ComfyUI name -> (category, architecture, dtype)
    "flux1-dev-tiny.safetensors": ("diffusion_models", "flux-dev", "fp32"),
    "flux1-dev-tiny-fp8_e4m3fn.safetensors": ("diffusion_models", "flux-dev", "fp8 e4m3fn"),
    "chroma-tiny.safetensors": ("diffusion_models", "chroma", "fp32"),
    "qwen_image_tiny_fp32.safetensors": ("diffusion_models", "qwen-image", "fp32"),
    "wan2.2/wan2.2_i2v_high_noise_14B_tiny.safetensors": ("diffusion_models", "wan22-i2v-a14b", "fp32"),
    "wan2.2/wan2.2_i2v_low_noise_14B_tiny.safetensors": ("diffusion_models", "wan22-i2v-a14b", "fp32"),
    "wan2.2_ti2v_5B_tiny.safetensors": ("diffusion_models", "wan22-ti2v-5b", "fp32"),
    "ae-tiny.safetensors": ("vae", "vae-ldm", "fp32"),
    "clip_l-tiny.safetensors": ("text_encoders", "clip-l", "fp32"),
    "t5xxl-tiny.safetensors": ("text_encoders", "t5-xxl", "fp32"),
    "umt5_xxl-tiny.safetensors": ("text_encoders", "umt5-xxl", "fp32"),
    "qwen_2.5_vl-tiny.safetensors": ("text_encoders", "qwen25-vl", "fp32"),
    "siglip-tiny.safetensors": ("clip_vision", "siglip", "fp32"),
    "ip-adapter-tiny.bin": ("ipadapter-flux", "ipadapter-flux", "fp32"),
    "qwen-comfy-style.safetensors": ("loras", "lora", "fp32"),
    "qwen-kohya-style.safetensors": ("loras", "lora", "fp32"),  # from the yaml's second base path
    # issue 29: the formats of engine/demo/formats.py
    "flux1-dev-diffusers-tiny.safetensors": ("diffusion_models", "flux-diffusers", "fp32"),
    "qwen_image_edit_2509-tiny.safetensors": ("diffusion_models", "qwen-image", "fp32"),
    "wan_2.1_vae-tiny.safetensors": ("vae", "vae-wan", "fp32"),
    "wan2.2_vae-tiny.safetensors": ("vae", "vae-wan22", "fp32"),
    "qwen_image_vae-tiny.safetensors": ("vae", "vae-wan", "fp32"),
    "t5xxl_bf16-tiny.safetensors": ("text_encoders", "t5-xxl", "bf16"),
    "t5xxl_fp8_e4m3fn-tiny.safetensors": ("text_encoders", "t5-xxl", "fp8 e4m3fn"),
    "t5xxl_fp8_e4m3fn_scaled-tiny.safetensors": ("text_encoders", "t5-xxl", "scaled fp8 e4m3fn"),
    "umt5_xxl_fp8_e4m3fn_scaled-tiny.safetensors": ("text_encoders", "umt5-xxl", "scaled fp8 e4m3fn"),
    "qwen_2.5_vl_7b_fp8_scaled-tiny.safetensors": ("text_encoders", "qwen25-vl", "scaled fp8 e4m3fn"),
    "wan2.2/wan2.2_i2v_high_noise_14B_fp8_scaled-tiny.safetensors": ("diffusion_models", "wan22-i2v-a14b",
                                                                      "scaled fp8 e4m3fn"),
    "wan2.2/wan2.2_i2v_low_noise_14B_fp8_scaled-tiny.safetensors": ("diffusion_models", "wan22-i2v-a14b",
                                                                     "scaled fp8 e4m3fn"),
    "seed004-qwen-tiny.safetensors": ("loras", "lora", "fp32"),
    "diffusers-qwen-tiny.safetensors": ("loras", "lora", "fp32"),
}


class Evil:
    """A pickle that would create a folder when unpickled without weights_only."""

    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return os.mkdir, (self.marker,)


@pytest.fixture(scope="module")
def comfy(models_dir):
    return build_demo_comfy(models_dir)


@pytest.fixture
def hostile(comfy, tmp_path):
    """A copy of the fake install with every kind of bad input added; returns (install root, evil marker)."""
    root = tmp_path / "comfy install"
    shutil.copytree(comfy.parents[1], root)  # <models_dir>/demo-comfyui
    models = root / MAIN
    flux = (models / "diffusion_models/flux1-dev-tiny.safetensors").read_bytes()
    (models / "diffusion_models/empty.safetensors").write_bytes(b"")
    (models / "diffusion_models/truncated.safetensors").write_bytes(flux[: len(flux) // 2])
    (models / "diffusion_models/not-safetensors.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json!}xxxxx")
    save_file({"encoder.foo.weight": torch.zeros(2, 2)}, str(models / "diffusion_models/mystery.safetensors"))
    shutil.copyfile(models / "loras/qwen-comfy-style.safetensors", models / "loras/Stil mit Leerzeichen ünï 日本.safetensors")
    torch.save(load_file(str(root / EXTRA / "loras/qwen-kohya-style.safetensors")), models / "loras/as-pickle.pt")
    (models / "diffusion_models/flux1-dev-Q4_K_S.gguf").write_bytes(b"GGUF\x03\x00\x00\x00")
    marker = str(tmp_path / "pwned")
    torch.save({"x": torch.zeros(1), "evil": Evil(marker)}, models / "loras/evil.ckpt")
    (models / "loras/empty.pth").write_bytes(b"")
    (models / "diffusion_models/loop").symlink_to(models / "diffusion_models", target_is_directory=True)
    (models / "vae/dangling.safetensors").symlink_to(tmp_path / "nowhere.safetensors")
    (models / "vae/readme.txt").write_text("not a model")
    return root, marker


def index_of(root: Path, cache=None) -> ComfyIndex:
    return ComfyIndex(comfy_folders(root / MAIN, root / "extra_model_paths.yaml"), cache).refresh()


def by_name(index: ComfyIndex) -> dict:
    return {e.name: e for e in index.entries}


def tree_state(root: Path) -> dict:
    out = {}
    for p in sorted(root.rglob("*")):
        if p.is_symlink() or not p.is_file():
            out[str(p)] = ("link" if p.is_symlink() else "dir", os.lstat(p).st_mtime_ns)
            continue
        out[str(p)] = (p.stat().st_mtime_ns, hashlib.sha256(p.read_bytes()).hexdigest())
    return out


def test_fake_folder_indexed_with_architectures_and_dtypes(comfy):
    root = comfy.parents[1]
    entries = by_name(index_of(root))
    for name, (category, arch, dtype) in EXPECTED.items():
        assert name in entries, name
        e = entries[name]
        assert (e.category, e.arch, e.dtype) == (category, arch, dtype), (name, e)
        assert e.size == Path(e.path).stat().st_size and os.path.isabs(e.path)
    assert entries["wan2.2/wan2.2_i2v_high_noise_14B_tiny.safetensors"].details["noise"] == "high"
    assert entries["wan2.2/wan2.2_i2v_low_noise_14B_tiny.safetensors"].details["noise"] == "low"
    assert entries["qwen-comfy-style.safetensors"].details["target"] == "Qwen-Image"
    assert entries["qwen-kohya-style.safetensors"].path.startswith(str(root / EXTRA))


def test_extra_model_paths_two_base_paths_and_legacy_names(tmp_path):
    (tmp_path / "a/models/unet").mkdir(parents=True)
    (tmp_path / "b/Lora").mkdir(parents=True)
    yaml = tmp_path / "conf/extra_model_paths.yaml"
    yaml.parent.mkdir()
    yaml.write_text("comfyui:\n  base_path: ../a\n  is_default: true\n  unet: models/unet\n  clip: models/clip\n"
                    "a111:\n  base_path: ../b/\n  loras: |\n    Lora\n    LyCORIS\n  controlnet: models/ControlNet\n"
                    "empty:\n")
    folders = comfy_folders(config=yaml)
    assert folders.folders["diffusion_models"] == [tmp_path / "a/models/unet"]
    assert folders.folders["text_encoders"] == [tmp_path / "a/models/clip"]
    assert folders.folders["loras"] == [tmp_path / "b/Lora", tmp_path / "b/LyCORIS"]
    assert "controlnet" not in folders.folders and not folders.problems
    bad = tmp_path / "bad.yaml"
    bad.write_text("comfyui: [unclosed\n")
    assert "not valid YAML" in comfy_folders(config=bad).problems[0]
    assert "does not exist" in comfy_folders(config=tmp_path / "missing.yaml").problems[0]


def test_one_folder_given_relatively_and_through_the_yaml_is_listed_once(comfy, monkeypatch):
    # the demo app passes its models folder relatively (``models/...``) and the yaml names the same ComfyUI
    # install through its base path: each file must be one choice, under an absolute path
    root = comfy.parents[1]
    monkeypatch.chdir(root.parent)
    service = ComfyModels()
    service.configure(os.path.join(root.name, MAIN), str(root / "extra_model_paths.yaml"))
    labels = [label for label, _ in service.model_choices("text_to_image")]
    assert labels and len(labels) == len(set(labels)), labels
    assert all(os.path.isabs(e.path) for e in service.index().entries)


def test_bad_input_each_has_a_message_and_the_rest_is_indexed(hostile):
    root, marker = hostile
    index = index_of(root)
    entries = by_name(index)
    assert {n for n in EXPECTED} <= set(entries)  # every good file still there
    assert "empty" in entries["empty.safetensors"].error
    assert "truncated" in entries["truncated.safetensors"].error
    assert "not valid JSON" in entries["not-safetensors.safetensors"].error
    assert "empty" in entries["empty.pth"].error
    mystery = entries["mystery.safetensors"]
    assert mystery.arch == "unknown" and "no known layout" in mystery.reason and not mystery.usable
    assert entries["Stil mit Leerzeichen ünï 日本.safetensors"].arch == "lora"
    assert entries["as-pickle.pt"].arch == "lora" and entries["as-pickle.pt"].details.get("pickle")
    assert "refused" in entries["evil.ckpt"].error and not os.path.exists(marker)  # never unpickled with code
    assert not any(n.startswith("loop/") for n in entries)  # the loop was not followed
    assert any("symlink loop" in p for p in index.problems)
    assert any("dangling.safetensors: a broken link" in p for p in index.problems)
    assert "readme.txt" not in entries
    gguf = entries["flux1-dev-Q4_K_S.gguf"]
    assert not gguf.usable and "GGUF" in gguf.reason
    missing = ComfyIndex(comfy_folders(root / "nope", root / "extra_model_paths.yaml")).refresh()
    assert "does not exist" in missing.problems[0] and "qwen-kohya-style.safetensors" in by_name(missing)


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads files whatever their mode")
def test_unreadable_file_is_listed_with_a_reason(hostile):
    root, _ = hostile
    path = root / MAIN / "vae/locked.safetensors"
    shutil.copyfile(root / MAIN / "loras/qwen-comfy-style.safetensors", path)
    path.chmod(0)
    try:
        assert "permission denied" in by_name(index_of(root))["locked.safetensors"].error
    finally:
        path.chmod(0o644)


def test_unreadable_file_message_as_root(hostile, monkeypatch):
    """Where the tests run as root, chmod cannot make a file unreadable: the open itself fails instead."""
    import builtins

    root, _ = hostile
    real_open = builtins.open
    target = str(root / MAIN / "text_encoders/clip_l-tiny.safetensors")

    def guarded(path, *a, **kw):
        if str(path) == target:
            raise PermissionError(13, "Permission denied", path)
        return real_open(path, *a, **kw)

    monkeypatch.setattr(builtins, "open", guarded)
    entries = by_name(index_of(root))
    assert entries["clip_l-tiny.safetensors"].error == "cannot read: permission denied"
    assert entries["t5xxl-tiny.safetensors"].usable


def test_cache_reused_and_refreshed_when_a_file_changes(hostile, tmp_path):
    root, _ = hostile
    cache = tmp_path / "app" / "comfy-index.json"
    first = index_of(root, cache)
    assert first.stats["read"] == len(first.entries) and cache.is_file()
    second = index_of(root, cache)  # a fresh process: everything from the cache
    assert second.stats["read"] == 0 and [e.arch for e in second.entries] == [e.arch for e in first.entries]
    path = root / MAIN / "diffusion_models/empty.safetensors"
    shutil.copyfile(root / MAIN / "diffusion_models/chroma-tiny.safetensors", path)
    third = second.refresh()
    assert third.stats["read"] == 1 and by_name(third)["empty.safetensors"].arch == "chroma"
    path.unlink()
    assert "empty.safetensors" not in by_name(third.refresh())
    inside = ComfyIndex(comfy_folders(root / MAIN), root / MAIN / "loras" / "cache.json").refresh()
    assert inside.cache_file is None and not (root / MAIN / "loras" / "cache.json").exists()


def test_read_only_every_file_unchanged_after_index_and_loads(hostile, tmp_path, models_dir):
    """Index, refresh, and run text to image (fp32, fp8), a LoRA stack (a non-ASCII name + a pickle LoRA) and image to
    video (the expert pair) from the folder: no file's mtime or hash changes, and nothing is added or removed."""
    import numpy as np
    from PIL import Image

    from engine import Engine, I2VRequest, LoraSpec, LoraStackRequest, TextToImageRequest

    root, _ = hostile
    before = tree_state(root)
    engine = Engine(device="cpu", models_dir=models_dir, demo=True, outputs_dir=tmp_path / "out")
    engine.comfy.cache_file = tmp_path / "cache.json"
    engine.comfy.configure(root / MAIN, root / "extra_model_paths.yaml")
    files = {e.name: e.path for e in engine.comfy.index().entries}
    ref = engine.comfy.model_ref(files["flux1-dev-tiny.safetensors"],
                                 pieces={"text_encoder": files["clip_l-tiny.safetensors"]})
    result = engine.run(TextToImageRequest(model=ref, prompt="a lighthouse", width=32, height=32, steps=1))
    assert np.asarray(result.images[0]).std() > 0
    fp8 = files["flux1-dev-tiny-fp8_e4m3fn.safetensors"]
    engine.run(TextToImageRequest(model=engine.comfy.model_ref(fp8), prompt="x", width=32, height=32, steps=1))
    # LoRAs from the folder on its Qwen-Image file (the weights are mapped copy-on-write: patching never writes)
    qwen = engine.comfy.model_ref(files["qwen_image_tiny_fp32.safetensors"])
    loras = (LoraSpec(path=files["Stil mit Leerzeichen ünï 日本.safetensors"]),  # spaces and non-ASCII in the name
             LoraSpec(path=files["as-pickle.pt"], weight=0.5))  # a pickle, read with weights_only
    engine.run(LoraStackRequest(model=qwen, loras=loras, prompt="x", width=32, height=32, steps=1))
    image = tmp_path / "start.png"
    Image.new("RGB", (32, 32), (40, 90, 200)).save(image)
    for pair in engine.comfy.wan_pairs():  # fp32, and scaled fp8 (kept fp8: its mapped weights are the params)
        wan = engine.comfy.model_ref(pair.high.path, transformer_2=pair.low.path)
        engine.run(I2VRequest(model=wan, image=str(image), prompt="x", resolution="custom", width=32, height=32,
                              num_frames=5, steps=1, preview_every=0))
    engine.comfy.index()
    assert tree_state(root) == before


def test_detection_from_synthetic_headers(tmp_path):
    """Real-model headers the demo does not have: FLUX.1-schnell (no guidance), Wan T2V, scaled fp8, a kohya Flux
    LoRA, an SD IP-Adapter, a full checkpoint (model.diffusion_model.* + VAE)."""
    def table(tensors: dict):
        path = tmp_path / "t.safetensors"
        save_file({k: v.clone().contiguous() for k, v in tensors.items()}, str(path))
        return read_safetensors_header(str(path))

    z = torch.zeros(1)
    flux = {"double_blocks.0.img_attn.norm.key_norm.scale": z, "img_in.weight": torch.zeros(2, 64)}
    assert detect(table(flux)).arch == "flux-schnell"
    assert detect(table({**flux, "guidance_in.in_layer.weight": z})).arch == "flux-dev"
    ckpt = {f"model.diffusion_model.{k}": v for k, v in flux.items()} | {"first_stage_model.decoder.conv_in.weight": z}
    found = detect(table(ckpt))
    assert found.arch == "flux-schnell" and found.details["has_vae"]
    wan = {"head.modulation": z, "patch_embedding.weight": torch.zeros(4, 16, 1, 1, 1)}
    assert detect(table(wan)).arch == "wan-t2v" and detect(table(wan)).reason
    scaled = {"scaled_fp8": torch.zeros(1, dtype=torch.float8_e4m3fn),
              "blocks.0.q.weight": torch.zeros(64, 64, dtype=torch.float8_e4m3fn), "blocks.0.q.scale_weight": z}
    assert weight_dtype(table(scaled)) == "scaled fp8 e4m3fn"
    kohya = {"lora_unet_double_blocks_0_img_attn_qkv.lora_down.weight": z, "lora_unet_double_blocks_0_img_attn_qkv.alpha": z}
    assert detect(table(kohya)).details["target"] == "Flux / Chroma"
    sd_ip = {"image_proj.proj.weight": z, "ip_adapter.1.to_k_ip.weight": z}
    assert detect(table(sd_ip)).arch == "ipadapter-sd"
    assert detect(table({"a.b": z})).arch == "unknown"


def test_service_lists_per_tab_and_pairs_experts(comfy, tmp_path):
    service = ComfyModels(tmp_path / "cache.json")
    assert "files in" in service.configure(comfy, comfy.parents[1] / "extra_model_paths.yaml")
    names = lambda tab: {e.name for e in service.models(tab)}  # noqa: E731
    assert names("text_to_image") >= {"flux1-dev-tiny.safetensors", "chroma-tiny.safetensors",
                                      "qwen_image_tiny_fp32.safetensors"}
    assert names("ipadapter") == {"flux1-dev-tiny.safetensors", "flux1-dev-tiny-fp8_e4m3fn.safetensors",
                                  "flux1-dev-diffusers-tiny.safetensors", "chroma-tiny.safetensors"}
    assert names("lora_stack") == {"qwen_image_tiny_fp32.safetensors", "qwen_image_edit_2509-tiny.safetensors"}
    assert "wan2.2_ti2v_5B_tiny.safetensors" in names("i2v")
    pairs = {p.high.name: p for p in service.wan_pairs()}  # the fp32 pair and the scaled fp8 pair, each by name
    assert {h: p.low.name for h, p in pairs.items()} == {
        "wan2.2/wan2.2_i2v_high_noise_14B_tiny.safetensors": "wan2.2/wan2.2_i2v_low_noise_14B_tiny.safetensors",
        "wan2.2/wan2.2_i2v_high_noise_14B_fp8_scaled-tiny.safetensors":
            "wan2.2/wan2.2_i2v_low_noise_14B_fp8_scaled-tiny.safetensors"}
    for pair in pairs.values():
        assert (pair.high.details["noise"], pair.low.details["noise"], pair.how) == ("high", "low", "by name")
    rows = {r[0]: r for r in service.tab_rows("lora_stack")}
    assert rows["qwen-kohya-style.safetensors"][2] == "LoRA for Qwen-Image"
    assert "ip-adapter-tiny.bin" not in rows and "ip-adapter-tiny.bin" in {r[0] for r in service.tab_rows("ipadapter")}
    assert service.configure("", "") == "no ComfyUI models folder set" and service.models("i2v") == []


def test_pairs_by_header_when_names_are_unclear(comfy, tmp_path):
    folder = tmp_path / "models/diffusion_models"
    folder.mkdir(parents=True)
    for i, name in enumerate(("my_wan_a.safetensors", "my_wan_b.safetensors")):
        src = ("high" if i == 0 else "low")
        shutil.copyfile(comfy / f"diffusion_models/wan2.2/wan2.2_i2v_{src}_noise_14B_tiny.safetensors", folder / name)
    service = ComfyModels()
    service.configure(tmp_path / "models")
    (pair,) = service.wan_pairs()
    assert pair.how.startswith("by header") and {pair.high.name, pair.low.name} == {"my_wan_a.safetensors",
                                                                                   "my_wan_b.safetensors"}
