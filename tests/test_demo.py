"""The tiny demo models: layout, build-once behaviour, and real diffusers/transformers loading and inference."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from engine import demo
from engine.demo import DEMO_NAMES, DEMO_VERSION, MARKER_NAME, build_demo_models, demo_path, is_built
from tests.conftest import scaled

REPO_ROOT = Path(__file__).resolve().parents[1]
FLUX_KW = dict(
    prompt="a red cube",
    height=64,
    width=64,
    num_inference_steps=2,
    guidance_scale=3.5,
    max_sequence_length=32,
    output_type="np",
)


def _seed(seed: int = 0) -> torch.Generator:
    return torch.Generator("cpu").manual_seed(seed)


def _image(size: int = 32):
    from PIL import Image

    rng = np.random.RandomState(0)
    return Image.fromarray((rng.rand(size, size, 3) * 255).astype("uint8"))


def _tree(root: Path) -> dict[str, int]:
    return {str(p.relative_to(root)): p.stat().st_mtime_ns for p in sorted(root.rglob("*")) if p.is_file()}


def _demo_fields(data) -> set[str]:
    if isinstance(data, dict):
        found = {data["demo"]} if isinstance(data.get("demo"), str) else set()
        return found.union(*(_demo_fields(v) for v in data.values()))
    if isinstance(data, list):
        return set().union(*(_demo_fields(v) for v in data))
    return set()


def _load_flux(path: Path):
    from diffusers import FluxPipeline

    pipe = FluxPipeline.from_pretrained(path)
    pipe.set_progress_bar_config(disable=True)
    return pipe


# ------------------------------------------------------------------------------------------------ layout and build


def test_layout_matches_presets_and_real_repos(models_dir: Path) -> None:
    root = models_dir / "demo"
    assert (root / MARKER_NAME).read_text() == DEMO_VERSION
    assert is_built(models_dir)
    presets = json.loads((REPO_ROOT / "presets" / "models.json").read_text())["models"]
    assert {m["demo"] for m in presets} == set(DEMO_NAMES)
    for preset_file in (REPO_ROOT / "presets").glob("*.json"):  # every "demo" field anywhere names a demo model
        assert _demo_fields(json.loads(preset_file.read_text())) <= set(DEMO_NAMES), preset_file.name
    for name in DEMO_NAMES:
        assert demo_path(models_dir, name) == root / name
        assert demo_path(models_dir, name).is_dir(), name
    with pytest.raises(KeyError):
        demo_path(models_dir, "nope")

    for name in ("flux-dev", "flux-dev-sdnq-int8"):
        index = json.loads((root / name / "model_index.json").read_text())
        assert index["_class_name"] == "FluxPipeline"
        for sub in ("scheduler", "vae", "text_encoder", "tokenizer", "text_encoder_2", "tokenizer_2", "transformer"):
            assert (root / name / sub).is_dir(), (name, sub)
    assert (root / "flux-dev" / "tokenizer" / "tokenizer.json").is_file()
    assert (root / "flux-dev" / "transformer" / "diffusion_pytorch_model.safetensors").is_file()
    assert json.loads((root / "chroma" / "model_index.json").read_text())["_class_name"] == "ChromaPipeline"
    assert json.loads((root / "qwen-image" / "model_index.json").read_text())["_class_name"] == "QwenImagePipeline"
    wan = json.loads((root / "wan22-i2v" / "model_index.json").read_text())
    assert wan["_class_name"] == "WanImageToVideoPipeline"
    assert wan["boundary_ratio"] == demo.WAN_BOUNDARY_RATIO
    assert wan["transformer_2"] == ["diffusers", "WanTransformer3DModel"]
    assert {"config.json", "model.safetensors", "preprocessor_config.json"} <= {
        p.name for p in (root / "siglip").iterdir()
    }
    assert sorted(p.name for p in (root / "flux-ip-adapter").iterdir()) == [
        "config.json", "ip-adapter.bin", "ip-adapter.safetensors"]
    for rel in demo.QWEN_LORA_FILES:
        assert (root / rel).is_file()
    for task, adapters in demo.OMNIX_TASKS.items():
        for adapter in adapters:
            assert (root / "omnix" / task / adapter / "pytorch_lora_weights.safetensors").is_file()

    # safetensors only (but the IP-Adapter's published pickle), float32 everywhere except the quantized transformer
    from safetensors import safe_open

    files = [p for p in root.rglob("*") if p.is_file()]
    # pickles only where the real repos ship them (InstantX's ip-adapter.bin, TurboDiffusion's .pth), tensors only
    pickles = sorted(p for p in files if p.suffix in {".bin", ".pt", ".pth", ".pkl", ".ckpt"})
    turbo = [p for p in pickles if p.parent.name == "turbowan22-i2v"]
    assert [p for p in pickles if p not in turbo] == [root / "flux-ip-adapter" / "ip-adapter.bin"]
    nested = torch.load(root / "flux-ip-adapter" / "ip-adapter.bin", weights_only=True)  # plain tensors only
    assert sorted(nested) == ["image_proj", "ip_adapter"] and "0.to_k_ip.weight" in nested["ip_adapter"]
    assert len(turbo) == 4 and all(p.suffix == ".pth" for p in turbo), turbo
    for path in turbo:
        assert all(isinstance(v, torch.Tensor) for v in torch.load(path, weights_only=True).values()), path
    for path in (p for p in files if p.suffix == ".safetensors"):
        if "flux-dev-sdnq-int8/transformer" in path.as_posix() or "ideogram-4-sdnq/" in path.as_posix() and (
                "transformer/" in path.as_posix()):
            continue
        with safe_open(path, "pt") as f:  # the Flux.2 VAE's BatchNorm counts its batches in int64
            assert {f.get_slice(k).get_dtype() for k in f.keys() if not k.endswith("num_batches_tracked")} == {
                "F32"}, path


def test_second_call_is_fast_and_rewrites_nothing(models_dir: Path) -> None:
    before = _tree(models_dir / "demo")
    t0 = time.perf_counter()
    assert build_demo_models(models_dir) == models_dir / "demo"
    assert time.perf_counter() - t0 < scaled(0.5)  # the goal on a quiet machine, more time when it is loaded
    assert _tree(models_dir / "demo") == before


def _same_content(a: Path, b: Path) -> None:
    from safetensors import safe_open

    files_a = {p.relative_to(a) for p in a.rglob("*") if p.is_file()} - {Path("build_info.json")}
    assert files_a == {p.relative_to(b) for p in b.rglob("*") if p.is_file()} - {Path("build_info.json")}
    for rel in sorted(files_a):
        if rel.suffix == ".safetensors":  # the header's metadata order varies (a Rust HashMap): compare content
            with safe_open(a / rel, "pt") as fa, safe_open(b / rel, "pt") as fb:
                assert fa.metadata() == fb.metadata(), rel
                assert sorted(fa.keys()) == sorted(fb.keys()), rel
                for key in fa.keys():
                    assert torch.equal(fa.get_tensor(key), fb.get_tensor(key)), (rel, key)
        else:
            assert (a / rel).read_bytes() == (b / rel).read_bytes(), rel


def test_failed_build_leaves_nothing_then_rebuild_is_reproducible(
    models_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def killed(out: Path) -> None:
        raise RuntimeError("build killed")

    monkeypatch.setattr(demo.wan, "build_wan", killed)
    with pytest.raises(RuntimeError, match="build killed"):
        build_demo_models(tmp_path)
    assert not (tmp_path / "demo").exists()
    assert not list(tmp_path.glob(".demo.tmp-*"))
    monkeypatch.undo()

    (tmp_path / ".demo.tmp-stale").mkdir()  # what a killed process leaves behind
    root = build_demo_models(tmp_path)
    assert is_built(tmp_path) and not list(tmp_path.glob(".demo.tmp-*"))
    _same_content(models_dir / "demo", root)  # fixed seeds: the same weights, configs and tokenizers

    # a different build version (or force=True) replaces the whole folder
    (root / MARKER_NAME).write_text("0")
    (root / "leftover.txt").write_text("x")
    assert not is_built(tmp_path)
    build_demo_models(tmp_path)
    assert (root / MARKER_NAME).read_text() == DEMO_VERSION
    assert not (root / "leftover.txt").exists()


# ------------------------------------------------------------------------------------------------ pipelines


def test_flux_loads_both_ways_and_runs_deterministically(models_dir: Path) -> None:
    from diffusers import DiffusionPipeline, FluxPipeline

    path = demo_path(models_dir, "flux-dev")
    pipe = _load_flux(path)
    assert isinstance(DiffusionPipeline.from_pretrained(path), FluxPipeline)
    assert pipe.transformer.config.num_attention_heads * pipe.transformer.config.attention_head_dim == 128
    a = pipe(**FLUX_KW, generator=_seed(0)).images
    b = pipe(**FLUX_KW, generator=_seed(0)).images
    c = pipe(**FLUX_KW, generator=_seed(1)).images
    assert a.shape == (1, 64, 64, 3) and np.isfinite(a).all()
    assert np.array_equal(a, b)
    assert not np.array_equal(a, c)


def test_chroma_runs_with_cfg(models_dir: Path) -> None:
    from diffusers import ChromaPipeline

    pipe = ChromaPipeline.from_pretrained(demo_path(models_dir, "chroma"))
    pipe.set_progress_bar_config(disable=True)
    kw = dict(
        prompt="a red cube",
        negative_prompt="blurry",
        height=64,
        width=64,
        num_inference_steps=2,
        max_sequence_length=32,
        output_type="np",
    )
    a = pipe(**kw, generator=_seed(0)).images
    assert a.shape == (1, 64, 64, 3) and np.isfinite(a).all()
    assert np.array_equal(a, pipe(**kw, generator=_seed(0)).images)


def test_wan_restores_boundary_and_routes_to_both_experts(models_dir: Path) -> None:
    from diffusers import WanImageToVideoPipeline

    pipe = WanImageToVideoPipeline.from_pretrained(demo_path(models_dir, "wan22-i2v"))
    pipe.set_progress_bar_config(disable=True)
    assert pipe.config.boundary_ratio == demo.WAN_BOUNDARY_RATIO
    assert pipe.transformer is not None and pipe.transformer_2 is not None
    assert pipe.image_encoder is None and pipe.image_processor is None
    seen: dict[str, list[float]] = {"transformer": [], "transformer_2": []}

    def hook(name: str):
        def record(module, args, kwargs):
            seen[name].append(float(kwargs["timestep"].flatten()[0]))

        return record

    handles = [getattr(pipe, n).register_forward_pre_hook(hook(n), with_kwargs=True) for n in seen]
    kw = dict(
        image=_image(32),
        prompt="a red cube",
        negative_prompt="blurry",
        height=32,
        width=32,
        num_frames=5,
        num_inference_steps=2,
        max_sequence_length=32,
        output_type="np",
    )
    frames = pipe(**kw, generator=_seed(0)).frames
    for h in handles:
        h.remove()
    assert frames.shape == (1, 5, 32, 32, 3) and np.isfinite(frames).all()
    boundary = demo.WAN_BOUNDARY_RATIO * pipe.scheduler.config.num_train_timesteps
    # one step per expert, each called twice (CFG: conditional + unconditional)
    assert len(seen["transformer"]) == 2 and all(t >= boundary for t in seen["transformer"])
    assert len(seen["transformer_2"]) == 2 and all(t < boundary for t in seen["transformer_2"])
    assert np.array_equal(frames, pipe(**kw, generator=_seed(0)).frames)


@pytest.mark.filterwarnings("ignore:Already found a `peft_config` attribute:UserWarning")  # peft, per extra adapter
def test_qwen_image_loras_change_the_output(models_dir: Path) -> None:
    from diffusers import QwenImagePipeline

    pipe = QwenImagePipeline.from_pretrained(demo_path(models_dir, "qwen-image"))
    pipe.set_progress_bar_config(disable=True)
    kw = dict(
        prompt="a red cube",
        height=32,
        width=32,
        num_inference_steps=2,
        true_cfg_scale=1.0,
        max_sequence_length=64,
        output_type="np",
    )
    base = pipe(**kw, generator=_seed(0)).images
    assert base.shape == (1, 32, 32, 3) and np.array_equal(base, pipe(**kw, generator=_seed(0)).images)
    loras = models_dir / "demo" / "loras"
    # (adapter names must not be substrings of module names: diffusers' missing-key check matches "b" in "blocks")
    pipe.load_lora_weights(loras, weight_name="qwen-style-a.safetensors", adapter_name="style_a")
    pipe.load_lora_weights(loras, weight_name="qwen-style-b.safetensors", adapter_name="style_b")
    pipe.set_adapters(["style_a"], [1.0])
    a = pipe(**kw, generator=_seed(0)).images
    pipe.set_adapters(["style_b"], [1.0])
    b = pipe(**kw, generator=_seed(0)).images
    pipe.set_adapters(["style_a", "style_b"], [1.0, 0.5])
    ab = pipe(**kw, generator=_seed(0)).images
    for x in (a, b, ab):
        assert np.abs(x - base).max() > 1e-3
    assert np.abs(a - b).max() > 1e-3 and np.abs(ab - a).max() > 1e-3
    pipe.disable_lora()
    assert np.abs(pipe(**kw, generator=_seed(0)).images - base).max() < 1e-5


def test_siglip_and_ip_adapter_fit_the_flux_transformer(models_dir: Path) -> None:
    from diffusers import ChromaTransformer2DModel, FluxTransformer2DModel
    from safetensors.torch import load_file
    from torch import nn
    from transformers import AutoImageProcessor, SiglipVisionModel

    encoder = SiglipVisionModel.from_pretrained(demo_path(models_dir, "siglip"))
    processor = AutoImageProcessor.from_pretrained(demo_path(models_dir, "siglip"))
    with torch.no_grad():
        pooled = encoder(pixel_values=processor(images=_image(48), return_tensors="pt").pixel_values).pooler_output
    siglip_dim = encoder.config.hidden_size
    assert pooled.shape == (1, siglip_dim)

    transformer = FluxTransformer2DModel.from_pretrained(demo_path(models_dir, "flux-dev"), subfolder="transformer")
    joint = transformer.config.joint_attention_dim
    inner = transformer.config.num_attention_heads * transformer.config.attention_head_dim
    ip_dir = demo_path(models_dir, "flux-ip-adapter")
    config = json.loads((ip_dir / "config.json").read_text())
    tokens = config["num_tokens"]
    assert tokens == 4
    assert (config["image_embed_dim"], config["cross_attention_dim"], config["hidden_size"]) == (
        siglip_dim,
        joint,
        inner,
    )
    n = len(transformer.attn_processors)
    assert n == transformer.config.num_layers + transformer.config.num_single_layers
    assert config["processors"] == list(transformer.attn_processors)

    state = load_file(ip_dir / "ip-adapter.safetensors")
    expected = {
        "image_proj.proj.0.weight": (2 * siglip_dim, siglip_dim),
        "image_proj.proj.0.bias": (2 * siglip_dim,),
        "image_proj.proj.2.weight": (joint * tokens, 2 * siglip_dim),
        "image_proj.proj.2.bias": (joint * tokens,),
        "image_proj.norm.weight": (joint,),
        "image_proj.norm.bias": (joint,),
    }
    for i in range(n):
        expected[f"ip_adapter.{i}.to_k_ip.weight"] = (inner, joint)
        expected[f"ip_adapter.{i}.to_v_ip.weight"] = (inner, joint)
    assert {k: tuple(v.shape) for k, v in state.items()} == expected

    # the image_proj weights load strictly into the InstantX MLPProjModel and turn SigLIP output into tokens
    proj = nn.ModuleDict(
        {
            "proj": nn.Sequential(
                nn.Linear(siglip_dim, 2 * siglip_dim), nn.GELU(), nn.Linear(2 * siglip_dim, joint * tokens)
            ),
            "norm": nn.LayerNorm(joint),
        }
    )
    proj.load_state_dict({k.removeprefix("image_proj."): v for k, v in state.items() if k.startswith("image_proj.")})
    with torch.no_grad():
        ip_tokens = proj["norm"](proj["proj"](pooled).reshape(-1, tokens, joint))
    assert ip_tokens.shape == (1, tokens, joint)
    k = nn.functional.linear(ip_tokens, state["ip_adapter.0.to_k_ip.weight"])
    assert k.shape == (1, tokens, inner)

    # the Chroma demo transformer has the same shape, so the same adapter fits it (as for the real models)
    chroma = ChromaTransformer2DModel.from_pretrained(demo_path(models_dir, "chroma"), subfolder="transformer")
    assert len(chroma.attn_processors) == n and chroma.inner_dim == inner
    assert chroma.config.joint_attention_dim == joint


@pytest.mark.filterwarnings("ignore:Already found a `peft_config` attribute:UserWarning")  # peft, per extra adapter
def test_omnix_adapters_load_into_flux(models_dir: Path) -> None:
    from safetensors import safe_open

    omnix = demo_path(models_dir, "omnix")
    keys = None
    for task, adapters in demo.OMNIX_TASKS.items():
        for adapter in adapters:
            with safe_open(omnix / task / adapter / demo.OMNIX_WEIGHT_NAME, "pt") as f:
                names = sorted(f.keys())
            assert all(k.startswith("transformer.") and ".lora_" in k for k in names)
            assert keys is None or names == keys
            keys = names

    pipe = _load_flux(demo_path(models_dir, "flux-dev"))
    base = pipe(**FLUX_KW, generator=_seed(0)).images
    for adapter in demo.OMNIX_TASKS["rgb_to_depth"]:
        pipe.load_lora_weights(
            omnix, weight_name=f"rgb_to_depth/{adapter}/{demo.OMNIX_WEIGHT_NAME}", adapter_name=adapter
        )
    assert set(pipe.get_list_adapters()["transformer"]) == {"rgb", "depth"}
    pipe.set_adapters(["depth"], [1.0])
    depth = pipe(**FLUX_KW, generator=_seed(0)).images
    assert np.abs(depth - base).max() > 1e-3


def test_sdnq_folder_reloads_quantized(models_dir: Path) -> None:
    from sdnq.layers import SDNQLinear

    path = demo_path(models_dir, "flux-dev-sdnq-int8")
    config = json.loads((path / "transformer" / "config.json").read_text())
    assert config["quantization_config"]["quant_method"] == "sdnq"
    assert config["quantization_config"]["weights_dtype"] == "int8"
    assert "_name_or_path" not in config
    pipe = _load_flux(path)
    quantized = [n for n, m in pipe.transformer.named_modules() if isinstance(m, SDNQLinear)]
    assert any(n.endswith("attn.to_q") for n in quantized) and len(quantized) >= 20
    int8 = [t for t in pipe.transformer.state_dict().values() if t.dtype == torch.int8]
    assert int8
    image = pipe(**FLUX_KW, generator=_seed(0)).images
    base = _load_flux(demo_path(models_dir, "flux-dev"))(**FLUX_KW, generator=_seed(0)).images
    assert image.shape == (1, 64, 64, 3) and np.isfinite(image).all()
    assert 0 < np.abs(image - base).max() < 2e-2  # int8 error, but the same model
