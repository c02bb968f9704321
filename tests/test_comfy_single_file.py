"""Single-file loading from the fake ComfyUI folder (issue 21): each tiny ComfyUI-layout file goes through diffusers'
``from_single_file`` (or transformers' state_dict loading) and gives the pixels of the same model loaded from its
diffusers folder; fp8 files stay fp8 tensor by tensor (their bf16 biases exact) and take LoRAs; safetensors are memory-mapped; bad files are
refused with a message naming the field; the saved request names the absolute file paths."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from engine import Engine, I2VRequest, InputError, ModelRef, SwapSettings, TextToImageRequest
from engine.comfy_models.single_file import flux_family_to_diffusers, load_diffusers_model
from engine.demo import demo_path
from engine.demo.comfy import build_demo_comfy
from engine.requests import SingleFiles

FLUX = "black-forest-labs/FLUX.1-dev"
CHROMA = "lodestones/Chroma1-HD"
QWEN = "Qwen/Qwen-Image"
A14B = "Wan-AI/Wan2.2-I2V-A14B-Diffusers"
TI2V = "Wan-AI/Wan2.2-TI2V-5B-Diffusers"


@pytest.fixture(scope="module")
def comfy(models_dir) -> Path:
    return build_demo_comfy(models_dir)


@pytest.fixture(scope="module")
def engine(models_dir, tmp_path_factory):
    return Engine(device="cpu", models_dir=models_dir, demo=True, outputs_dir=tmp_path_factory.mktemp("comfy-out"))


def t2i(engine, repo: str, files: SingleFiles = SingleFiles(), steps: int = 2):
    req = TextToImageRequest(model=ModelRef(repo_id=repo, files=files), prompt="a red boat", width=32, height=32,
                             steps=steps, seed=3)
    result = engine.run(req)
    return np.asarray(result.images[0]).astype(int), result


@pytest.mark.parametrize("repo, files", [
    (FLUX, {"transformer": "diffusion_models/flux1-dev-tiny.safetensors",
            "text_encoder": "text_encoders/clip_l-tiny.safetensors",
            "text_encoder_2": "text_encoders/t5xxl-tiny.safetensors", "vae": "vae/ae-tiny.safetensors"}),
    (CHROMA, {"transformer": "diffusion_models/chroma-tiny.safetensors",
              "text_encoder": "text_encoders/t5xxl-chroma-tiny.safetensors"}),
    (QWEN, {"transformer": "diffusion_models/qwen_image_tiny_fp32.safetensors",
            "text_encoder": "text_encoders/qwen_2.5_vl-tiny.safetensors"}),
], ids=["flux", "chroma", "qwen-image"])
def test_text_to_image_from_single_files_matches_diffusers_layout(engine, comfy, repo, files):
    reference, _ = t2i(engine, repo)
    paths = {part: str(comfy / rel) for part, rel in files.items()}
    image, result = t2i(engine, repo, SingleFiles(**paths))
    assert image.std() > 0 and np.array_equal(image, reference)
    # the request it saved names the absolute file paths (what the ComfyUI export reads)
    saved = json.loads(Path(next(f for f in result.files if f.endswith(".json"))).read_text())
    assert {k: v for k, v in saved["model"]["files"].items() if v} == paths
    ledger = {row["name"]: row for row in result.memory["modules"]}
    for part, path in paths.items():  # every single-file piece is a row of the memory ledger, named after its file
        assert ledger[f"{Path(path).name}/{part}"]["bytes"] > 0


def test_fp8_file_stays_fp8_and_equals_the_fp8_rounded_model(engine, comfy, models_dir):
    from diffusers import FluxPipeline

    from engine.jobs.text2image import pipeline_kwargs

    fp8 = str(comfy / "diffusion_models/flux1-dev-tiny-fp8_e4m3fn.safetensors")
    image, _ = t2i(engine, FLUX, SingleFiles(transformer=fp8))
    pipe = engine.store.load_pipeline(ModelRef(repo_id=FLUX, files=SingleFiles(transformer=fp8)))
    engine.store.load_pipeline(ModelRef(repo_id=FLUX))  # the fp32 folder model, for the ledger comparison
    linear = pipe.transformer.transformer_blocks[0].attn.to_q
    assert linear.weight.dtype == torch.float8_e4m3fn  # stored fp8, cast per layer at compute time
    assert engine.memory.entry(f"{Path(fp8).name}/transformer").bytes < engine.memory.entry(f"{FLUX}/transformer").bytes

    # the plan reads the file's header: fp8 weights are planned at 1 byte, and its blocks are the model's
    plain = TextToImageRequest(model=ModelRef(repo_id=FLUX), prompt="x", width=32, height=32, steps=1,
                               swap=SwapSettings(mode="block_swap"))
    planned = TextToImageRequest(model=ModelRef(repo_id=FLUX, files=SingleFiles(transformer=fp8)), prompt="x",
                                 width=32, height=32, steps=1, swap=SwapSettings(mode="block_swap"))
    assert engine.plan(planned).weights_peak < engine.plan(plain).weights_peak
    assert "0 of 4 blocks resident" in engine.plan(planned).explanation

    ref = FluxPipeline.from_pretrained(demo_path(models_dir, "flux-dev"))
    ref.set_progress_bar_config(disable=True)
    with torch.no_grad():
        for p in ref.transformer.parameters():
            p.copy_(p.to(torch.float8_e4m3fn).to(p.dtype))
    req = TextToImageRequest(model=ModelRef(repo_id=FLUX), prompt="a red boat", width=32, height=32, steps=2, seed=3)
    expected = np.asarray(ref(**pipeline_kwargs(ref, req)).images[0]).astype(int)
    assert np.array_equal(image, expected)


def test_the_per_forward_compute_copy_of_an_fp8_layer_is_in_the_planned_activations(engine, comfy):
    from engine.plan import activation_bytes, fp8_compute_copy

    fp8 = str(comfy / "diffusion_models/flux1-dev-tiny-fp8_e4m3fn.safetensors")

    def request(files):
        return TextToImageRequest(model=ModelRef(repo_id=FLUX, files=files), prompt="x", width=32, height=32,
                                  steps=1, swap=SwapSettings(mode="block_swap"))

    pipe = engine.store.load_pipeline(request(SingleFiles(transformer=fp8)).model)
    # the largest layer the hook casts for its forward, in the compute dtype (fp32 here), counted from the model
    hooked = [m for m in pipe.transformer.modules() if getattr(m, "compute_dtype", None) is not None]
    largest = max(sum(p.numel() * 4 for p in m.parameters(recurse=False) if p.dtype == torch.float8_e4m3fn)
                  for m in hooked)
    assert largest > 0 and fp8_compute_copy(pipe) == largest
    plain, kept = engine.plan(request(SingleFiles())), engine.plan(request(SingleFiles(transformer=fp8)))
    assert activation_bytes(pipe, {"width": 32, "height": 32}) == plain.run_activations + largest  # at run time
    # the plan reads the file's header alone: its layers are the file's, and BFL's single blocks fuse q, k, v and
    # the MLP into one ``linear1`` that the model splits, so the plan counts that fused layer (an upper bound)
    from engine.plan import read_header

    layers: dict[str, int] = {}
    for key, t in read_header(Path(fp8)).items():
        if ".linear1." in key and t["dtype"] == "F8_E4M3":
            layers[key.rsplit(".", 1)[0]] = layers.get(key.rsplit(".", 1)[0], 0) + math.prod(t["shape"]) * 4
    fused = max(layers.values())
    assert fused > largest and kept.run_activations == plain.run_activations + fused


def test_an_fp8_file_with_bf16_biases_keeps_them_exact(engine, comfy, models_dir, tmp_path):
    """The usual fp8 file (Kijai's, most converters) stores the matrices in fp8 and biases and norms in higher
    precision: those stay as the file has them, only the matrices are stored fp8, and the image is the model with
    exactly its matrices rounded (diffusers' layerwise casting would round the biases to fp8 as well)."""
    from diffusers import FluxPipeline
    from safetensors.torch import load_file, save_file

    from engine.jobs.text2image import pipeline_kwargs

    full = load_file(str(comfy / "diffusion_models/flux1-dev-tiny.safetensors"))
    mixed = {k: v.to(torch.float8_e4m3fn) if v.ndim == 2 else v.clone() for k, v in full.items()}
    path = tmp_path / "flux1-dev-tiny-fp8-mixed.safetensors"
    save_file(mixed, str(path))
    image, _ = t2i(engine, FLUX, SingleFiles(transformer=str(path)))
    model = engine.store.load_pipeline(ModelRef(repo_id=FLUX, files=SingleFiles(transformer=str(path)))).transformer
    out = model.transformer_blocks[0].attn.to_out[0]
    assert out.weight.dtype == torch.float8_e4m3fn
    assert out.bias.dtype == torch.float32 and torch.equal(out.bias, full["double_blocks.0.img_attn.proj.bias"])
    assert not torch.equal(out.bias.to(torch.float8_e4m3fn).float(), out.bias)  # fp8 would have changed them

    ref = FluxPipeline.from_pretrained(demo_path(models_dir, "flux-dev"))
    ref.set_progress_bar_config(disable=True)
    with torch.no_grad():
        for p in ref.transformer.parameters():
            if p.ndim == 2:
                p.copy_(p.to(torch.float8_e4m3fn).to(p.dtype))
    req = TextToImageRequest(model=ModelRef(repo_id=FLUX), prompt="a red boat", width=32, height=32, steps=2, seed=3)
    assert np.array_equal(image, np.asarray(ref(**pipeline_kwargs(ref, req)).images[0]).astype(int))


def test_a_lora_on_an_fp8_file_is_the_lora_on_the_fp8_rounded_model_in_every_streaming_mode(comfy, models_dir,
                                                                                              tmp_path):
    """peft makes a LoRA in its base layer's dtype: on a layer stored in fp8 that was fp8 (the file's LoRA rounded,
    then no matmul for it). The adapter computes in the compute dtype instead, so the run is bit for bit the LoRA on
    the model with its weights rounded to fp8, and streaming the blocks (the LoRA inside them) changes nothing."""
    from engine.requests import LoraSpec

    fp8 = str(comfy / "diffusion_models/flux1-dev-tiny-fp8_e4m3fn.safetensors")
    lora = (LoraSpec(path=str(comfy / "loras/flux-kohya-style.safetensors"), weight=0.8),)

    def run(engine, files, mode="none"):
        req = TextToImageRequest(model=ModelRef(repo_id=FLUX, files=files), prompt="a red boat", width=32, height=32,
                                 steps=2, seed=3, loras=lora,
                                 swap=SwapSettings(mode=mode, blocks_resident=1, prefetch=1, block_size_mb=1))
        return np.asarray(engine.run(req).images[0]).astype(int)

    def fresh(name):
        return Engine(device="cpu", models_dir=models_dir, demo=True, outputs_dir=tmp_path / name)

    on_fp8 = run(fresh("fp8"), SingleFiles(transformer=fp8))
    rounded = fresh("rounded")
    with torch.no_grad():
        for p in rounded.store.load_pipeline(ModelRef(repo_id=FLUX)).transformer.parameters():
            p.copy_(p.to(torch.float8_e4m3fn).to(p.dtype))
    assert np.array_equal(on_fp8, run(rounded, SingleFiles()))
    assert np.array_equal(on_fp8, run(fresh("swap"), SingleFiles(transformer=fp8), "block_swap"))


def _mapped_ranges(path: str) -> list[tuple[int, int]]:
    ranges = []
    for line in Path("/proc/self/maps").read_text().splitlines():
        if line.endswith(path):
            lo, hi = line.split()[0].split("-")
            ranges.append((int(lo, 16), int(hi, 16)))
    return ranges


@pytest.mark.skipif(not Path("/proc/self/maps").exists(), reason="needs Linux /proc")
def test_single_file_weights_are_memory_mapped_not_copied(comfy, models_dir):
    """Wan's conversion only renames: every weight of the loaded expert lies inside the file's mapping."""
    path = str(comfy / "diffusion_models/wan2.2/wan2.2_i2v_high_noise_14B_tiny.safetensors")
    model = load_diffusers_model(path, "WanTransformer3DModel", demo_path(models_dir, "wan22-i2v"), "transformer",
                                 torch.float32)
    ranges = _mapped_ranges(path)
    assert ranges
    params = list(model.parameters())
    inside = [p for p in params if any(lo <= p.data_ptr() < hi for lo, hi in ranges)]
    assert len(inside) == len(params)


def test_flux_conversion_equals_diffusers_converter_at_flux1_width():
    """At FLUX.1's real width (3072) our width-aware split gives exactly upstream's conversion; dim 1 is kept tiny."""
    from diffusers.loaders import single_file_utils as sfu

    gen = torch.Generator().manual_seed(0)

    def t(*shape):
        return torch.randn(*shape, generator=gen)

    def checkpoint(chroma: bool) -> dict:
        sd = {"txt_in.weight": t(4, 2), "txt_in.bias": t(4), "img_in.weight": t(4, 2), "img_in.bias": t(4),
              "final_layer.linear.weight": t(4, 2), "final_layer.linear.bias": t(4)}
        if chroma:
            for n in ("in_proj", "out_proj"):
                sd |= {f"distilled_guidance_layer.{n}.weight": t(2, 2), f"distilled_guidance_layer.{n}.bias": t(2)}
            sd |= {f"distilled_guidance_layer.layers.0.{n}.{p}": t(2) for n in ("in_layer", "out_layer")
                   for p in ("weight", "bias")} | {"distilled_guidance_layer.norms.0.scale": t(2)}
        else:
            for n in ("time_in", "vector_in", "guidance_in"):
                sd |= {f"{n}.{layer}.{p}": t(2) for layer in ("in_layer", "out_layer") for p in ("weight", "bias")}
            sd |= {"final_layer.adaLN_modulation.1.weight": t(8, 2), "final_layer.adaLN_modulation.1.bias": t(8)}
        d = "double_blocks.0."
        for side in ("img", "txt"):
            sd |= {f"{d}{side}_attn.qkv.weight": t(9, 2), f"{d}{side}_attn.qkv.bias": t(9),
                   f"{d}{side}_attn.proj.weight": t(3, 2), f"{d}{side}_attn.proj.bias": t(3),
                   f"{d}{side}_attn.norm.query_norm.scale": t(2), f"{d}{side}_attn.norm.key_norm.scale": t(2)}
            sd |= {f"{d}{side}_mlp.{i}.{p}": t(2) for i in (0, 2) for p in ("weight", "bias")}
            if not chroma:
                sd |= {f"{d}{side}_mod.lin.weight": t(6, 2), f"{d}{side}_mod.lin.bias": t(6)}
        s = "single_blocks.0."
        sd |= {f"{s}linear1.weight": t(3 * 3072 + 4 * 3072, 2), f"{s}linear1.bias": t(3 * 3072 + 4 * 3072),
               f"{s}linear2.weight": t(2, 2), f"{s}linear2.bias": t(2), f"{s}norm.query_norm.scale": t(2),
               f"{s}norm.key_norm.scale": t(2)}
        if not chroma:
            sd |= {f"{s}modulation.lin.weight": t(3, 2), f"{s}modulation.lin.bias": t(3)}
        return sd

    config = {"num_attention_heads": 24, "attention_head_dim": 128}
    for chroma, convert in ((False, sfu.convert_flux_transformer_checkpoint_to_diffusers),
                            (True, sfu.convert_chroma_transformer_checkpoint_to_diffusers)):
        sd = checkpoint(chroma)
        upstream = convert(dict(sd))
        ours = flux_family_to_diffusers(dict(sd), config, convert)
        assert set(ours) == set(upstream)
        assert all(torch.equal(ours[k], upstream[k]) for k in upstream)


@pytest.fixture(scope="module")
def start_image(tmp_path_factory):
    path = tmp_path_factory.mktemp("comfy-i2v") / "start.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(path)
    return str(path)


def last_frame(result) -> np.ndarray:
    return np.asarray(Image.open(next(f for f in result.files if f.endswith("-last-frame.png")))).astype(int)


@pytest.mark.parametrize("repo, files", [
    (A14B, {"transformer": "diffusion_models/wan2.2/wan2.2_i2v_high_noise_14B_tiny.safetensors",
            "transformer_2": "diffusion_models/wan2.2/wan2.2_i2v_low_noise_14B_tiny.safetensors",
            "text_encoder": "text_encoders/umt5_xxl-tiny.safetensors"}),
    (TI2V, {"transformer": "diffusion_models/wan2.2_ti2v_5B_tiny.safetensors"}),
], ids=["a14b-pair", "ti2v-5b"])
def test_image_to_video_from_single_files_matches_diffusers_layout(engine, comfy, start_image, repo, files):
    def run(files):
        req = I2VRequest(model=ModelRef(repo_id=repo, files=SingleFiles(**files)), image=start_image,
                         prompt="waves", resolution="custom", width=32, height=32, num_frames=5, steps=1,
                         swap=SwapSettings(), preview_every=0)
        return last_frame(engine.run(req))

    reference = run({})
    frame = run({part: str(comfy / rel) for part, rel in files.items()})
    assert frame.std() > 0 and np.array_equal(frame, reference)
    # the memory panel names each piece after its own file: the low-noise expert is not the high-noise file's
    rows = {row["name"] for row in engine.memory.snapshot()["modules"]}
    assert {f"{Path(rel).name}/{part}" for part, rel in files.items()} <= rows


@pytest.mark.parametrize("repo, files", [
    (CHROMA, {"transformer": "diffusion_models/chroma-tiny.safetensors"}),
    (QWEN, {"transformer": "diffusion_models/qwen_image_tiny_fp32.safetensors"}),
    (TI2V, {"transformer": "diffusion_models/wan2.2_ti2v_5B_tiny.safetensors"}),
    (A14B, {"transformer": "diffusion_models/wan2.2/wan2.2_i2v_high_noise_14B_tiny.safetensors",
            "transformer_2": "diffusion_models/wan2.2/wan2.2_i2v_low_noise_14B_tiny.safetensors"}),
], ids=["chroma", "qwen-image", "ti2v-5b", "a14b-pair"])
def test_every_family_runs_from_a_plain_fp8_file_as_its_fp8_rounded_model(comfy, models_dir, tmp_path, start_image,
                                                                           repo, files):
    """The usual fp8 file of each family (matrices in fp8, the rest as it was), loaded with its fp8 kept as stored:
    bit for bit the folder model with its matrices rounded to fp8, the matrices held in fp8."""
    from safetensors.torch import load_file, save_file

    fp8 = {}
    for part, rel in files.items():
        state = load_file(str(comfy / rel))
        fp8[part] = str(tmp_path / f"{part}-fp8_e4m3fn.safetensors")
        save_file({k: v.to(torch.float8_e4m3fn) if v.ndim == 2 else v for k, v in state.items()}, fp8[part])

    def run(engine, given):
        ref = ModelRef(repo_id=repo, files=SingleFiles(**given))
        if repo in (A14B, TI2V):
            req = I2VRequest(model=ref, image=start_image, prompt="waves", resolution="custom", width=32, height=32,
                             num_frames=5, steps=1, swap=SwapSettings(), preview_every=0)
            return last_frame(engine.run(req)), ref
        return np.asarray(engine.run(TextToImageRequest(model=ref, prompt="a red boat", width=32, height=32, steps=2,
                                                        seed=3)).images[0]).astype(int), ref

    engine = Engine(device="cpu", models_dir=models_dir, demo=True, outputs_dir=tmp_path / "fp8")
    got, ref = run(engine, fp8)
    pipe = engine.store.load_pipeline(ref)
    for part in files:
        assert any(p.dtype == torch.float8_e4m3fn for p in getattr(pipe, part).parameters())
    rounded = Engine(device="cpu", models_dir=models_dir, demo=True, outputs_dir=tmp_path / "rounded")
    folder = rounded.store.load_pipeline(ModelRef(repo_id=repo))
    with torch.no_grad():
        for part in files:
            for p in getattr(folder, part).parameters():
                if p.ndim == 2:
                    p.copy_(p.to(torch.float8_e4m3fn).to(p.dtype))
    expected, _ = run(rounded, {})
    assert np.array_equal(got, expected)


def test_wrong_or_broken_file_is_refused_naming_the_field(engine, comfy, tmp_path):
    chroma = str(comfy / "diffusion_models/chroma-tiny.safetensors")
    with pytest.raises(InputError) as err:
        t2i(engine, FLUX, SingleFiles(transformer=chroma), steps=1)
    assert err.value.field == "model.files.transformer" and "Chroma" in err.value.message
    truncated = tmp_path / "half.safetensors"
    data = (comfy / "diffusion_models/flux1-dev-tiny.safetensors").read_bytes()
    truncated.write_bytes(data[: len(data) // 3])
    with pytest.raises(InputError, match="truncated"):
        t2i(engine, FLUX, SingleFiles(transformer=str(truncated)), steps=1)
    with pytest.raises(InputError, match="needs clip-l"):
        t2i(engine, FLUX, SingleFiles(text_encoder=str(comfy / "text_encoders/t5xxl-tiny.safetensors")), steps=1)
    with pytest.raises(InputError, match="file not found"):
        t2i(engine, FLUX, SingleFiles(transformer=str(tmp_path / "missing.safetensors")), steps=1)


def test_real_weights_path_never_downloads_what_a_single_file_replaces(comfy, models_dir, tmp_path, monkeypatch):
    """Without --demo, through huggingface_hub from a local fake hub: the repo lends configs, tokenizers, the VAE
    and T5; the transformer and CLIP-L come from the ComfyUI files and their weights are never fetched."""
    from tests.conftest import empty_hf_cache
    from tests.fakehub import FakeHub

    empty_hf_cache(tmp_path, monkeypatch)
    with FakeHub() as hub:
        hub.add_repo(FLUX, demo_path(models_dir, "flux-dev"))
        monkeypatch.setenv("HF_ENDPOINT", hub.endpoint)
        engine = Engine(device="cpu", models_dir=tmp_path / "models", outputs_dir=tmp_path / "out")
        files = SingleFiles(transformer=str(comfy / "diffusion_models/flux1-dev-tiny.safetensors"),
                            text_encoder=str(comfy / "text_encoders/clip_l-tiny.safetensors"))
        image, _ = t2i(engine, FLUX, files, steps=1)
        assert image.std() > 0
        assert hub.count("GET", "text_encoder_2/model") > 0 and hub.count("GET", "vae/diffusion_pytorch_model") > 0
        assert hub.count("GET", "transformer/diffusion_pytorch_model") == 0
        assert hub.count("GET", "text_encoder/model.safetensors") == 0
        assert hub.count("GET", "transformer/config.json") > 0  # its config still comes from the repo


def test_ipadapter_from_the_folders_adapter_and_clip_vision_files_matches_the_repos(engine, comfy, start_image):
    """The IP-Adapter tab on ComfyUI files: a Flux transformer file, ``ipadapter-flux/*.bin`` (a pickle read with
    weights_only) and a ``clip_vision`` SigLIP file give the pixels of the demo repos' adapter and encoder."""
    from engine import IPAdapterRequest, ReferenceImage

    base = dict(prompt="a red fox", width=32, height=32, steps=2, seed=11, references=(ReferenceImage(start_image),))
    reference = engine.run(IPAdapterRequest(model=ModelRef(repo_id=FLUX), **base))
    siglip = str(comfy / "clip_vision/siglip-tiny.safetensors")
    result = engine.run(IPAdapterRequest(
        model=ModelRef(repo_id=FLUX, files=SingleFiles(transformer=str(comfy / "diffusion_models/flux1-dev-tiny.safetensors"))),
        ip_adapter=ModelRef(path=str(comfy / "ipadapter-flux/ip-adapter-tiny.bin")),
        image_encoder=ModelRef(repo_id="google/siglip-so400m-patch14-384", files=SingleFiles(image_encoder=siglip)),
        **base))
    from engine.adapters.ipadapter_pieces import STORE_KEY

    assert engine.store.adapters[STORE_KEY].key[2], "the SigLIP weights did not come from the clip_vision file"
    assert engine.store.adapters[STORE_KEY].adapter_path.name == "ip-adapter-tiny.bin"
    image = np.asarray(result.images[0]).astype(int)
    assert image.std() > 0 and np.array_equal(image, np.asarray(reference.images[0]).astype(int))
    plain = engine.run(TextToImageRequest(model=ModelRef(repo_id=FLUX), prompt="a red fox", width=32, height=32,
                                          steps=2, seed=11))
    assert not np.array_equal(image, np.asarray(plain.images[0]).astype(int))  # the adapter did act


def _wan_scaled(comfy, tmp_path, rel: str = "diffusion_models/wan2.2/wan2.2_i2v_high_noise_14B_tiny.safetensors",
                stem: str = "wan2.2_i2v_high_noise_14B_fp8_scaled") -> tuple[Path, Path]:
    """A transformer file (the high-noise Wan expert) as ComfyUI writes scaled fp8 (``<layer>.weight`` fp8 +
    ``<layer>.scale_weight``, the ``scaled_fp8`` marker), and the same weights multiplied out (fp8 x scale,
    float32) as a plain file."""
    from safetensors.torch import load_file, save_file

    from engine.comfy_models import scaled_fp8

    scaled = scaled_fp8.quantize(load_file(str(comfy / rel)))
    expected = {k: v.float() * scaled[k[: -len("weight")] + "scale_weight"] if v.dtype == torch.float8_e4m3fn else v
                for k, v in scaled.items() if k != "scaled_fp8" and not k.endswith("scale_weight")}
    path, multiplied = tmp_path / f"{stem}.safetensors", tmp_path / f"{stem}-multiplied.safetensors"
    save_file(scaled, str(path))
    save_file(expected, str(multiplied))
    return path, multiplied


def test_a_scaled_fp8_transformer_stays_fp8_and_runs_as_its_multiplied_out_weights(comfy, models_dir, tmp_path,
                                                                                   start_image):
    """Wan's (and Qwen-Image's) keys map one to one onto diffusers', so each scale follows its weight: the weights
    stay fp8 as stored (1 byte each, memory-mapped) with the scale beside them, multiplied per layer at compute time
    as ComfyUI does, and the video is bit for bit the one from the multiplied-out weights, streamed or not."""
    from engine.comfy_models.detect import detect
    from engine.comfy_models.header import read_safetensors_header, weight_dtype

    path, multiplied = _wan_scaled(comfy, tmp_path)
    table = read_safetensors_header(str(path))
    assert weight_dtype(table) == "scaled fp8 e4m3fn" and detect(table, path.name).details["noise"] == "high"
    model = load_diffusers_model(str(path), "WanTransformer3DModel", demo_path(models_dir, "wan22-i2v"),
                                 "transformer", torch.float32)
    assert model.single_file_info["fp8"] == "scaled (kept fp8, scaled per layer)"
    from engine.memory.placement import weights_dtype

    assert set(weights_dtype(model).split(" + ")) == {"float8_e4m3fn", "float32"}  # the memory panel: both
    q = model.blocks[0].attn1.to_q
    assert q.weight.dtype == torch.float8_e4m3fn and q.scale_weight.shape == ()

    from engine.requests import LoraSpec

    def frame(file, mode="none", offload="cpu", loras=()):
        engine = Engine(device="cpu", models_dir=models_dir, demo=True, offload_device=offload,
                        outputs_dir=tmp_path / f"{file.stem}-{mode}-{offload}-{len(loras)}")
        req = I2VRequest(model=ModelRef(repo_id=A14B, files=SingleFiles(transformer=str(file))), image=start_image,
                         prompt="waves", resolution="custom", width=32, height=32, num_frames=5, steps=2, loras=loras,
                         swap=SwapSettings(mode=mode, blocks_resident=1, prefetch=1, block_size_mb=1),
                         preview_every=0)
        return last_frame(engine.run(req))

    expected = frame(multiplied)
    assert np.array_equal(frame(path), expected)
    assert np.array_equal(frame(path, "block_swap"), expected)
    # the lightx2v LoRA on the high-noise expert, its blocks streamed from disk: the same as on the multiplied file
    lightx2v = (LoraSpec(path=str(comfy / "loras/wan2.2_i2v_lightx2v_4steps_lora_v1_high_noise.safetensors")),)
    assert np.array_equal(frame(path, "block_swap", "disk", lightx2v), frame(multiplied, loras=lightx2v))
    # the plan holds what the model holds: a byte a weight where fp8 stays, the compute dtype for the embedders
    # whose dtype Wan's code reads (cast on load: the only copy)
    from safetensors import safe_open

    from engine.plan import _FP8_NOT_KEPT, folder_sizes

    sizes = {c.name: c for c in folder_sizes(demo_path(models_dir, "wan22-i2v"), 4, {"transformer": str(path)})}
    assert sizes["transformer"].total == sum(t.numel() * t.element_size() for t in model.parameters())
    with safe_open(str(path), "pt") as f:
        cast = sum(f.get_slice(k).get_shape()[0] * f.get_slice(k).get_shape()[1] * 4 for k in f.keys()
                   if k.startswith(_FP8_NOT_KEPT) and f.get_slice(k).get_dtype() == "F8_E4M3")
    assert 0 < sizes["transformer"].load_copy == cast  # the tiny model is mostly embedders; a 14B one ~2%
    # a key-for-key layout: the planned per-forward copy of the largest fp8 layer is the model's own
    from types import SimpleNamespace

    from engine.plan import fp8_compute_copy

    assert sizes["transformer"].compute_copy == fp8_compute_copy(SimpleNamespace(transformer=model)) > 0


@pytest.mark.parametrize("repo, rel, kept", [
    (QWEN, "diffusion_models/qwen_image_tiny_fp32.safetensors", True),
    (FLUX, "diffusion_models/flux1-dev-diffusers-tiny.safetensors", True),
    (FLUX, "diffusion_models/flux1-dev-tiny.safetensors", False),  # BFL layout: fused layers, multiplied out
], ids=["qwen-image", "flux-diffusers-names", "flux-bfl-layout"])
def test_scaled_fp8_images_are_those_of_the_multiplied_out_weights(comfy, models_dir, tmp_path, repo, rel, kept):
    path, multiplied = _wan_scaled(comfy, tmp_path, rel, Path(rel).stem + "_fp8_scaled")
    engine = Engine(device="cpu", models_dir=models_dir, demo=True, outputs_dir=tmp_path / "out")
    image, _ = t2i(engine, repo, SingleFiles(transformer=str(path)))
    expected, _ = t2i(engine, repo, SingleFiles(transformer=str(multiplied)))
    assert np.array_equal(image, expected)
    model = engine.store.load_pipeline(ModelRef(repo_id=repo, files=SingleFiles(transformer=str(path)))).transformer
    assert model.single_file_info["fp8"] == ("scaled (kept fp8, scaled per layer)" if kept else "scaled (multiplied out)")
