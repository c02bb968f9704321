"""The formats of real ComfyUI files the tiny models never exercised before (issue 29): ComfyUI's scaled fp8 text
encoders (``scaled_fp8`` + ``scale_weight``), the Wan-layout VAEs (``wan_2.1_vae``, ``wan2.2_vae``,
``qwen_image_vae``), and one demo file per architecture the ComfyUI index detects, each loaded through the path a
real file takes (``load_pieces``, as ``ModelStore`` calls it)."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from engine.comfy_models import ComfyIndex, comfy_folders, detect, wan_vae
from engine.comfy_models.pieces import check_piece, load_pieces
from engine.comfy_models.single_file import FP8_KEPT_ENCODERS, load_transformers_model
from engine.demo import demo_path
from engine.demo import formats as demo_formats
from engine.demo.comfy import FILES as COMFY_FILES
from engine.demo.comfy import build_demo_comfy
from engine.errors import InputError, ModelLoadError

ENCODERS = {  # scaled file -> (demo model, component, class)
    "t5xxl_fp8_e4m3fn_scaled-tiny.safetensors": ("flux-dev", "text_encoder_2", "T5EncoderModel"),
    "umt5_xxl_fp8_e4m3fn_scaled-tiny.safetensors": ("wan22-i2v", "text_encoder", "UMT5EncoderModel"),
    "qwen_2.5_vl_7b_fp8_scaled-tiny.safetensors": ("qwen-image", "text_encoder", "Qwen2_5_VLForConditionalGeneration"),
}


@pytest.fixture(scope="module")
def comfy(models_dir) -> Path:
    return build_demo_comfy(models_dir)


def encode(model, class_name: str) -> torch.Tensor:
    ids = torch.tensor([[5, 17, 42, 99, 3, 1]])
    with torch.no_grad():
        if class_name.startswith("Qwen"):  # what QwenImagePipeline reads: the last hidden state
            return model(input_ids=ids, output_hidden_states=True).hidden_states[-1]
        return model(input_ids=ids).last_hidden_state


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.float() - b.float()).norm() / b.float().norm()).item()


@pytest.mark.parametrize("name", list(ENCODERS))
def test_scaled_fp8_encoder_gives_the_encoders_output(comfy, models_dir, tmp_path, name):
    """weight * scale_weight: the tiny encoder's output within fp8 rounding; the old load (fp8 cast, scales
    dropped) is far off, and so the conditioning was silently wrong."""
    import transformers

    model, part, class_name = ENCODERS[name]
    folder = demo_path(models_dir, model)
    path = comfy / "text_encoders" / name
    state = load_file(str(path))
    assert state["scaled_fp8"].dtype == torch.float8_e4m3fn and state["scaled_fp8"].numel() == 0
    scales = [k for k in state if k.endswith(".scale_weight")]
    assert scales and all(state[k].dtype == torch.float32 and state[k].shape == () for k in scales)
    assert all(state[k[: -len("scale_weight")] + "weight"].dtype == torch.float8_e4m3fn for k in scales)

    reference = getattr(transformers, class_name).from_pretrained(folder / part).eval()
    loaded = load_transformers_model(str(path), class_name, folder, part, torch.float32)
    assert loaded.single_file_info["fp8"].startswith("scaled")
    expected, got = encode(reference, class_name), encode(loaded, class_name)
    assert rel(got, expected) < 0.1  # fp8 e4m3 keeps 3 mantissa bits: a few percent

    # exactly the fp8-rounded encoder: every scaled weight is fp8 * scale, nothing else changed; T5 and umT5 keep
    # the file's fp8 as stored with its scale beside it (multiplied per layer at compute time), Qwen2.5-VL multiplies
    # it out on load
    params = dict(loaded.named_parameters())
    for key in scales[:3]:
        weight = key[: -len("scale_weight")] + "weight"
        found = next(n for n in params if n.endswith(weight.split(".", 1)[1]) or n == weight)
        if class_name in FP8_KEPT_ENCODERS:
            assert params[found].dtype == torch.float8_e4m3fn
            assert torch.equal(params[found].view(torch.uint8), state[weight].view(torch.uint8))
            assert torch.equal(loaded.get_submodule(found.rsplit(".", 1)[0]).scale_weight, state[key])
        else:
            assert torch.equal(params[found], state[weight].float() * state[key])

    # the unscaled load of the same file (what the code did before): the scales dropped, fp8 cast as it is
    unscaled = {k: v for k, v in state.items() if not k.endswith(".scale_weight") and k != "scaled_fp8"}
    plain = tmp_path / name.replace("_scaled", "_unscaled")
    save_file(unscaled, str(plain))
    wrong = load_transformers_model(str(plain), class_name, folder, part, torch.float32)
    assert rel(encode(wrong, class_name), expected) > 5 * rel(got, expected) and rel(encode(wrong, class_name), expected) > 0.3


def _edit(src: Path, out: Path, change) -> Path:
    state = load_file(str(src))
    change(state)
    save_file(state, str(out))
    return out


def test_scaled_fp8_file_with_missing_or_misshapen_scales_is_refused_naming_the_key(comfy, models_dir, tmp_path):
    src = comfy / "text_encoders/umt5_xxl_fp8_e4m3fn_scaled-tiny.safetensors"
    key = "encoder.block.0.layer.0.SelfAttention.q"
    missing = _edit(src, tmp_path / "missing.safetensors", lambda s: s.pop(f"{key}.scale_weight"))
    misshapen = _edit(src, tmp_path / "misshapen.safetensors",
                      lambda s: s.__setitem__(f"{key}.scale_weight", torch.ones(3)))
    stripped = _edit(src, tmp_path / "none.safetensors",
                     lambda s: [s.pop(k) for k in [k for k in s if k.endswith(".scale_weight")]])
    folder = demo_path(models_dir, "wan22-i2v")
    for path, words in ((missing, f"{key}.weight is fp8 but its scale {key}.scale_weight is missing"),
                        (misshapen, f"scale {key}.scale_weight has shape [3]"),
                        (stripped, "holds no .scale_weight tensors")):
        with pytest.raises(InputError) as err:  # from the header, before anything loads
            check_piece("WanImageToVideoPipeline", "text_encoder", str(path), "model.files.text_encoder", folder)
        assert err.value.field == "model.files.text_encoder" and words in err.value.message, err.value.message
        with pytest.raises(ModelLoadError, match=re.escape(words)):  # and the loader refuses it as well
            load_transformers_model(str(path), "UMT5EncoderModel", folder, "text_encoder", torch.float32)
    # a scale on a weight that is not fp8 does not match its weights either
    bf16 = _edit(src, tmp_path / "bf16.safetensors",
                 lambda s: s.__setitem__(f"{key}.weight", s[f"{key}.weight"].to(torch.bfloat16)))
    with pytest.raises(InputError, match="not fp8"):
        check_piece("WanImageToVideoPipeline", "text_encoder", str(bf16), "model.files.text_encoder", folder)


def test_wan_vae_keys_match_diffusers_converter_at_the_real_wan21_depth():
    """At the real Wan 2.1 / Qwen-Image VAE config (4 levels, 2 residual blocks) our depth-generic mapping sends
    every original key where diffusers' ``convert_wan_vae_to_diffusers`` sends it; Wan 2.2's nested layout maps
    as ``scripts/convert_wan_to_diffusers.py`` ``convert_vae_22`` names it."""
    from accelerate import init_empty_weights
    from diffusers import AutoencoderKLQwenImage, AutoencoderKLWan
    from diffusers.loaders.single_file_utils import convert_wan_vae_to_diffusers

    for cls in (AutoencoderKLWan, AutoencoderKLQwenImage):
        with init_empty_weights():
            model = cls()
        keys = list(model.state_dict())
        original = wan_vae.to_original({k: torch.tensor(float(i)) for i, k in enumerate(keys)}, dict(model.config))
        assert "decoder.upsamples.14.residual.6.weight" in original and "decoder.upsamples.11.resample.1.weight" in original
        upstream, ours = convert_wan_vae_to_diffusers(dict(original)), wan_vae.to_diffusers(original, dict(model.config))
        assert set(upstream) == set(ours) == set(keys)
        assert all(torch.equal(upstream[k], ours[k]) for k in keys)
    with init_empty_weights():
        wan22 = AutoencoderKLWan(base_dim=160, decoder_base_dim=256, z_dim=48, in_channels=12, out_channels=12,
                                 is_residual=True, patch_size=2, dim_mult=[1, 2, 4, 4], num_res_blocks=2,
                                 temperal_downsample=[False, True, True])
    keys = list(wan22.state_dict())
    original = wan_vae.to_original({k: k for k in keys}, dict(wan22.config))
    assert wan_vae.is_wan22_layout(original)
    for theirs, ours in (("encoder.downsamples.0.downsamples.0.residual.0.gamma", "encoder.down_blocks.0.resnets.0.norm1.gamma"),
                         ("encoder.downsamples.1.downsamples.2.resample.1.weight", "encoder.down_blocks.1.downsampler.resample.1.weight"),
                         ("decoder.upsamples.0.upsamples.3.time_conv.weight", "decoder.up_blocks.0.upsampler.time_conv.weight"),
                         ("decoder.upsamples.2.upsamples.0.shortcut.weight", "decoder.up_blocks.2.resnets.0.conv_shortcut.weight")):
        assert original[theirs] == ours
    assert set(wan_vae.to_diffusers(original, dict(wan22.config)).values()) == set(keys)


VAES = {  # file -> (demo model, pipeline run on it)
    "qwen_image_vae-tiny.safetensors": "qwen-image",
    "wan_2.1_vae-tiny.safetensors": "wan22-i2v",
    "wan2.2_vae-tiny.safetensors": "wan22-ti2v-5b",
}


@pytest.mark.parametrize("name", list(VAES))
def test_wan_layout_vae_loads_equal_to_the_diffusers_layout(comfy, models_dir, name):
    """Through ``load_pieces`` (the engine's path): every weight equal to the demo folder's VAE, and the same
    decode."""
    import diffusers

    from engine.models import read_model_index

    folder = demo_path(models_dir, VAES[name])
    index = read_model_index(folder)
    path = str(comfy / "vae" / name)
    vae = load_pieces(folder, index, index["_class_name"], {"vae": path}, torch.float32)["vae"]
    reference = getattr(diffusers, index["vae"][1]).from_pretrained(folder, subfolder="vae").eval()
    ours, theirs = vae.state_dict(), reference.state_dict()
    assert set(ours) == set(theirs) and all(torch.equal(ours[k], theirs[k]) for k in theirs)
    z = torch.randn(1, reference.config.z_dim, 2, 4, 4, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(vae.decode(z).sample, reference.decode(z).sample)
    assert vae.single_file_info["converted"] == "Wan VAE layout"


def test_qwen_image_run_on_the_vae_file_gives_the_repos_pixels(comfy, models_dir, tmp_path):
    from engine import Engine, ModelRef, TextToImageRequest
    from engine.requests import SingleFiles

    engine = Engine(device="cpu", models_dir=models_dir, demo=True, outputs_dir=tmp_path)

    def run(files):
        req = TextToImageRequest(model=ModelRef(repo_id="Qwen/Qwen-Image", files=SingleFiles(**files)),
                                 prompt="a red boat", width=32, height=32, steps=2, seed=3)
        return np.asarray(engine.run(req).images[0]).astype(int)

    reference = run({})
    image = run({"vae": str(comfy / "vae/qwen_image_vae-tiny.safetensors"),
                 "text_encoder": str(comfy / "text_encoders/qwen_2.5_vl_7b_fp8_scaled-tiny.safetensors")})
    assert image.std() > 0 and image.shape == reference.shape
    only_vae = run({"vae": str(comfy / "vae/qwen_image_vae-tiny.safetensors")})
    assert np.array_equal(only_vae, reference)


def test_vae_of_another_family_is_refused_naming_both(comfy, models_dir):
    cases = (("qwen-image", "QwenImagePipeline", "wan2.2_vae-tiny.safetensors", ("Wan 2.2 VAE", "Qwen-Image VAE")),
             ("wan22-ti2v-5b", "WanPipeline", "wan_2.1_vae-tiny.safetensors", ("Wan 2.1 / Qwen-Image VAE", "Wan 2.2 VAE")),
             ("wan22-i2v", "WanImageToVideoPipeline", "qwen_image_vae-tiny.safetensors", ("4 latent channels", "Wan 2.1 VAE")))
    for model, pipeline, name, words in cases:
        with pytest.raises(InputError) as err:
            check_piece(pipeline, "vae", str(comfy / "vae" / name), "model.files.vae", demo_path(models_dir, model))
        assert err.value.field == "model.files.vae" and all(w in err.value.message for w in words), err.value.message
    with pytest.raises(InputError, match="is an LDM .* needs the Wan 2.1 VAE"):  # the Flux VAE for Wan
        check_piece("WanImageToVideoPipeline", "vae", str(comfy / "vae/ae-tiny.safetensors"), "model.files.vae",
                    demo_path(models_dir, "wan22-i2v"))


#: loaded architectures without a demo file of their own, and why
NO_DEMO_FILE = {
    "flux-schnell": "the demo has no FLUX.1-schnell model; the file differs from flux-dev only by lacking guidance_in",
    "vae-flux": "the tiny Flux VAE has 4 latent channels, so it is vae-ldm; same layout and loader as the real one",
    "ipadapter-flux": "a pickle, loaded by the IP-Adapter path: test_comfy_single_file.py::test_ipadapter_from_the_folders_*",
}
#: refused architectures: a synthetic header of the real file's keys for each (real weights would be GBs)
REFUSED_HEADERS = {
    "flux-other": {"double_blocks.0.img_attn.norm.key_norm.scale": (1,), "img_in.weight": (2, 128)},
    "wan21-i2v": {"head.modulation": (1,), "patch_embedding.weight": (4, 36, 1, 2, 2), "img_emb.proj.0.weight": (1,)},
    "wan-t2v": {"head.modulation": (1,), "patch_embedding.weight": (4, 16, 1, 2, 2)},
    "clip-g": {"text_model.encoder.layers.0.self_attn.q_proj.weight": (1,), "text_model.final_layer_norm.weight": (1280,)},
    "clip-vision": {"vision_model.encoder.layers.0.self_attn.q_proj.weight": (1,),
                    "vision_model.embeddings.class_embedding": (1,)},
    "ipadapter-sd": {"image_proj.proj.weight": (1,), "ip_adapter.1.to_k_ip.weight": (1,)},
    "ipadapter-xlabs": {"double_blocks.0.processor.ip_adapter_double_stream_k_proj.weight": (1,)},
    "unknown": {"a.b": (1,)},
}


def _sources() -> dict[str, tuple[str, str]]:
    """ComfyUI name -> (demo model, component) of every demo file written from a demo component."""
    out = {rel.split("/", 1)[1]: (model, part) for rel, (model, part) in COMFY_FILES.items()}
    out |= {rel.split("/", 1)[1]: (model, part) for rel, (model, part, _) in demo_formats.FILES.items()}
    return out


def test_every_detected_architecture_has_a_demo_file_that_loads(comfy, models_dir, tmp_path):
    import transformers

    from engine.adapters.lora_files import inspect_file, target_table
    from engine.models import read_model_index

    source = Path(detect.__file__).read_text(encoding="utf-8")
    named = set(re.findall(r'Detection\("([a-z0-9-]+)"', source)) | {"flux-dev", "flux-schnell", "vae-ldm", "clip-g"}
    assert named <= set(detect.LOADED_ARCHS) | set(detect.REFUSED_ARCHS), named - set(detect.LOADED_ARCHS)

    index = ComfyIndex(comfy_folders(comfy, comfy.parents[1] / "extra_model_paths.yaml")).refresh()
    by_arch: dict[str, list] = {}
    for entry in index.entries:
        by_arch.setdefault(entry.arch, []).append(entry)
    missing = [a for a in detect.LOADED_ARCHS if a not in by_arch and a not in NO_DEMO_FILE]
    assert not missing, f"detected architectures without a demo file: {missing}"
    gguf = [e for e in by_arch["unknown"] if e.name.endswith(".gguf")]
    assert gguf and not gguf[0].usable and "GGUF" in gguf[0].reason  # listed, refused with the reason

    sources, loaded = _sources(), set()
    qwen_table = None
    for entry in index.entries:
        if not entry.usable or entry.kind in ("ip_adapter",):
            continue
        if entry.kind == "lora" and "qwen" not in entry.name:
            # the Flux and Wan LoRAs of the fake folder (issue 31) are copies of engine/demo/loras.py's files, which
            # tests/test_lora_everywhere.py loads through the runners' path (diffusers' Flux converters, our Wan layouts)
            assert entry.name.startswith(("flux-", "wan2.2_i2v_lightx2v")), entry.name
            loaded.add(entry.arch)
            continue
        if entry.kind == "lora":  # the stack's reader: every key maps onto the Qwen-Image transformer
            if qwen_table is None:
                from diffusers import QwenImageTransformer2DModel

                qwen_table = target_table(QwenImageTransformer2DModel.from_pretrained(
                    demo_path(models_dir, "qwen-image"), subfolder="transformer"))
            info = inspect_file(entry.path, qwen_table, "loras[0].path")
            assert info.modules_hit > 0 and info.unknown_count == 0, (entry.name, info.summary())
            loaded.add(entry.arch)
            continue
        model, part = sources[entry.name]
        if entry.kind == "image_encoder":  # SigLIP: the IP-Adapter's encoder, read as transformers reads it
            module = load_transformers_model(entry.path, "SiglipVisionModel", demo_path(models_dir, model), "",
                                             torch.float32)
            reference = transformers.SiglipVisionModel.from_pretrained(demo_path(models_dir, model))
        else:
            folder = demo_path(models_dir, model)
            model_index = read_model_index(folder)
            module = load_pieces(folder, model_index, model_index["_class_name"], {part: entry.path},
                                 torch.float32)[part]
            library, class_name = model_index[part]
            owner = __import__(library)
            reference = getattr(owner, class_name).from_pretrained(folder, subfolder=part) if library == "diffusers" \
                else getattr(owner, class_name).from_pretrained(folder / part)
        ours, theirs = module.state_dict(), reference.state_dict()
        assert set(theirs) <= set(ours), (entry.name, sorted(set(theirs) - set(ours))[:3])
        tolerance = {"fp32": 0.0, "bf16": 2**-8, "fp8 e4m3fn": 2**-3, "scaled fp8 e4m3fn": 2**-3}[entry.dtype]
        for key, want in theirs.items():
            have = ours[key].float()
            layer, _, leaf = key.rpartition(".")
            scale = getattr(module.get_submodule(layer), "scale_weight", None) if leaf == "weight" else None
            if scale is not None:  # scaled fp8 kept as stored: the weight it computes with is fp8 x its scale
                have = have * scale.float()
            if have.dtype != want.dtype and want.is_floating_point():
                have = have.to(want.dtype)
            bound = tolerance * want.float().abs().max().item() + (1e-8 if tolerance else 0)
            assert (have.float() - want.float()).abs().max().item() <= bound, (entry.name, key, entry.dtype)
        loaded.add(entry.arch)
    assert set(detect.LOADED_ARCHS) - set(NO_DEMO_FILE) <= loaded | {"ipadapter-flux"}

    for arch, header in REFUSED_HEADERS.items():  # each refused architecture is named, with its reason
        path = tmp_path / f"{arch}.safetensors"
        save_file({k: torch.zeros(shape) for k, shape in header.items()}, str(path))
        from engine.comfy_models.header import read_safetensors_header

        found = detect.detect(read_safetensors_header(str(path)), path.name)
        assert found.arch == arch, (arch, found)
        assert found.reason or arch == "clip-g"
    assert set(REFUSED_HEADERS) == set(detect.REFUSED_ARCHS)


def test_readme_lists_every_demo_format_file():
    readme = (Path(__file__).parents[1] / "README.md").read_text(encoding="utf-8")
    section = readme[readme.index("### A ComfyUI models folder"):]
    for name in ("umt5_xxl_fp8_e4m3fn_scaled.safetensors", "t5xxl_fp8_e4m3fn_scaled.safetensors",
                 "qwen_2.5_vl_7b_fp8_scaled.safetensors", "qwen_image_vae.safetensors", "wan2.2_vae.safetensors",
                 "wan_2.1_vae.safetensors"):
        assert name in section, name


def test_plan_counts_a_scaled_fp8_file_at_the_compute_dtype(comfy, models_dir):
    """Scaled fp8 is multiplied out on load, so it is resident at the compute dtype's size; a plain fp8 *encoder* is
    cast to the compute dtype by transformers' loader too (only a diffusers transformer keeps stored fp8)."""
    from engine.plan import component_size

    folder = demo_path(models_dir, "wan22-i2v") / "text_encoder"
    scaled = component_size("text_encoder", folder, 4, str(comfy / "text_encoders/umt5_xxl_fp8_e4m3fn_scaled-tiny.safetensors"))
    plain = component_size("text_encoder", folder, 4, str(comfy / "text_encoders/umt5_xxl_fp8_e4m3fn-tiny.safetensors"))
    full = component_size("text_encoder", folder, 4, str(comfy / "text_encoders/umt5_xxl-tiny.safetensors"))
    assert abs(scaled.total - full.total) <= 64 and plain.total == full.total


@pytest.fixture(scope="module")
def engine(models_dir, tmp_path_factory):
    from engine import Engine

    return Engine(device="cpu", models_dir=models_dir, demo=True, outputs_dir=tmp_path_factory.mktemp("formats-out"))


def test_a_run_on_a_bad_scaled_encoder_is_refused_naming_the_field(engine, comfy, tmp_path):
    from engine import ModelRef, TextToImageRequest
    from engine.requests import SingleFiles

    key = "encoder.block.0.layer.0.SelfAttention.k"
    bad = _edit(comfy / "text_encoders/t5xxl_fp8_e4m3fn_scaled-tiny.safetensors", tmp_path / "t5xxl_bad.safetensors",
                lambda s: s.__setitem__(f"{key}.scale_weight", torch.ones(2, 2)))
    req = TextToImageRequest(model=ModelRef(repo_id="black-forest-labs/FLUX.1-dev",
                                            files=SingleFiles(text_encoder_2=str(bad))),
                             prompt="x", width=32, height=32, steps=1)
    with pytest.raises(InputError) as err:
        engine.run(req)
    assert err.value.field == "model.files.text_encoder_2" and f"{key}.scale_weight has shape [2, 2]" in err.value.message


def test_a_graph_naming_the_qwen_vae_and_scaled_encoder_imports_and_runs(engine, comfy):
    """The Qwen-Image graph ComfyUI's template builds (VAELoader qwen_image_vae, CLIPLoader qwen_2.5_vl_7b_fp8_scaled)
    imports to those files and runs; the VAE file alone gives the repo's pixels."""
    import comfy_export
    from engine import ModelRef, TextToImageRequest
    from engine.requests import SingleFiles
    from ui.comfy_io import search_dirs

    engine.comfy.configure(str(comfy))
    files = SingleFiles(transformer=str(comfy / "diffusion_models/qwen_image_tiny_fp32.safetensors"),
                        vae=str(comfy / "vae/qwen_image_vae-tiny.safetensors"),
                        text_encoder=str(comfy / "text_encoders/qwen_2.5_vl_7b_fp8_scaled-tiny.safetensors"))
    req = TextToImageRequest(model=ModelRef(repo_id="Qwen/Qwen-Image", files=files), prompt="a red boat", width=32,
                             height=32, steps=2, seed=4)
    api = comfy_export.to_api(req)
    loaders = {n["class_type"]: n["inputs"] for n in api.values() if n["class_type"].endswith("Loader")}
    assert loaders["VAELoader"]["vae_name"] == "qwen_image_vae-tiny.safetensors"
    assert loaders["CLIPLoader"]["clip_name"] == "qwen_2.5_vl_7b_fp8_scaled-tiny.safetensors"
    back = comfy_export.from_workflow(api, search_dirs(engine))
    assert back == req
    assert np.asarray(engine.run(back).images[0]).std() > 0


@pytest.mark.parametrize("repo, vae", [("Wan-AI/Wan2.2-TI2V-5B-Diffusers", "wan2.2_vae-tiny.safetensors"),
                                       ("Wan-AI/Wan2.2-I2V-A14B-Diffusers", "wan_2.1_vae-tiny.safetensors")],
                         ids=["ti2v-wan2.2-vae", "a14b-wan2.1-vae"])
def test_image_to_video_on_the_wan_vae_file_gives_the_repos_frames(engine, comfy, tmp_path, repo, vae):
    from PIL import Image

    from engine import I2VRequest, ModelRef, SwapSettings
    from engine.requests import SingleFiles

    start = tmp_path / "start.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(start)

    def run(files):
        req = I2VRequest(model=ModelRef(repo_id=repo, files=SingleFiles(**files)), image=str(start), prompt="waves",
                         resolution="custom", width=32, height=32, num_frames=5, steps=1, swap=SwapSettings(),
                         preview_every=0)
        result = engine.run(req)
        return np.asarray(Image.open(next(f for f in result.files if f.endswith("-last-frame.png")))).astype(int)

    reference = run({})
    frame = run({"vae": str(comfy / "vae" / vae)})
    assert frame.std() > 0 and np.array_equal(frame, reference)
