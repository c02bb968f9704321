"""fp8 T5 / umT5 encoder files (``t5xxl_fp8_e4m3fn``, ``umt5_xxl_fp8_e4m3fn_scaled``: what ComfyUI's Flux and Wan 2.2
templates load) stay fp8 as stored: their Linear weights 1 byte each, scaled per layer at compute time, the
embeddings and T5's ``wo`` (whose dtype the model's code reads) in the compute dtype. The encoder computes what
transformers' own load of the same file (cast up, or multiplied out) computes, bit for bit; a video from the
scaled umT5 is the one from the multiplied-out file; the plan holds what the model holds and copies only what is
cast."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file, save_file

from engine import Engine, I2VRequest, ModelRef, SwapSettings
from engine.comfy_models import scaled_fp8
from engine.comfy_models.single_file import load_transformers_model
from engine.demo import demo_path
from engine.demo.comfy import build_demo_comfy
from engine.plan import folder_sizes
from engine.requests import SingleFiles

A14B = "Wan-AI/Wan2.2-I2V-A14B-Diffusers"
ENCODERS = {  # file -> (demo folder, component, class)
    "t5": ("text_encoders/t5xxl-tiny.safetensors", "flux-dev", "text_encoder_2", "T5EncoderModel"),
    "umt5": ("text_encoders/umt5_xxl-tiny.safetensors", "wan22-i2v", "text_encoder", "UMT5EncoderModel"),
    "qwen2.5-vl": ("text_encoders/qwen_2.5_vl_7b_bf16-tiny.safetensors", "qwen-image", "text_encoder",
                   "Qwen2_5_VLForConditionalGeneration"),
}


@pytest.fixture(scope="module")
def comfy(models_dir) -> Path:
    return build_demo_comfy(models_dir)


def fp8_files(comfy, tmp_path, rel) -> dict[str, Path]:
    """The encoder as plain fp8 (every 2-D weight cast, as ``t5xxl_fp8_e4m3fn`` is), as ComfyUI's scaled fp8, and
    that scaled file multiplied out (fp32)."""
    state = load_file(str(comfy / rel))
    scaled = scaled_fp8.quantize(state)
    out = {"plain": {k: v.to(torch.float8_e4m3fn) if v.ndim == 2 else v for k, v in state.items()},
           "scaled": scaled, "multiplied": scaled_fp8.dequantize(scaled, torch.float32, "x")}
    paths = {}
    for kind, tensors in out.items():
        paths[kind] = tmp_path / f"{Path(rel).stem}-{kind}.safetensors"
        save_file(tensors, str(paths[kind]))
    return paths


def transformers_own(cls_name: str, folder: Path, part: str, state: dict,
                     dtype: torch.dtype = torch.float32) -> torch.nn.Module:
    """transformers' ``from_pretrained`` of a state dict, fp8 cast up to ``dtype`` by it: the reference."""
    import transformers

    cls = getattr(transformers, cls_name)
    return cls.from_pretrained(None, config=cls.config_class.from_pretrained(str(folder / part)), state_dict=state,
                               dtype=dtype).eval()


@pytest.mark.parametrize("which", ["t5", "umt5"])
def test_an_fp8_encoder_stays_fp8_and_computes_what_transformers_load_computes(comfy, models_dir, tmp_path, which):
    """In the compute dtype of the CPU (fp32); fp16 below."""
    rel, demo, part, cls_name = ENCODERS[which]
    folder = demo_path(models_dir, demo)
    paths = fp8_files(comfy, tmp_path, rel)
    ids = torch.tensor([[5, 17, 3, 99, 42, 1]])
    for kind, reference_state in (("plain", load_file(str(paths["plain"]))),
                                  ("scaled", load_file(str(paths["multiplied"])))):
        model = load_transformers_model(str(paths[kind]), cls_name, folder, part, torch.float32)
        assert model.single_file_info["fp8"] == ("stored" if kind == "plain" else "scaled (kept fp8, scaled per layer)")
        block = model.encoder.block[0]
        assert block.layer[0].SelfAttention.q.weight.dtype == torch.float8_e4m3fn  # a Linear: kept
        # its dtype is read by its parent's code: kept too, cast for the parent's whole forward
        assert block.layer[1].DenseReluDense.wo.weight.dtype == torch.float8_e4m3fn
        assert model.encoder.embed_tokens.weight is model.shared.weight  # tied again, whatever dtype it keeps
        reference = transformers_own(cls_name, folder, part, reference_state)
        with torch.no_grad():
            ours, theirs = model(input_ids=ids).last_hidden_state, reference(input_ids=ids).last_hidden_state
        assert torch.equal(ours, theirs) and ours.abs().sum() > 0, kind

        # the plan: the model's bytes (1 a kept weight), and only what is cast allocated at load
        sizes = {c.name: c for c in folder_sizes(folder, 4, {part: str(paths[kind])}) if c.name == part}
        held = sum(t.numel() * t.element_size() for t in model.parameters())
        assert sizes[part].total == held
        assert sizes[part].load_copy == 0  # every fp8 tensor stays as stored (memory-mapped)


def test_a_video_from_a_scaled_umt5_is_the_one_from_its_multiplied_out_file(comfy, models_dir, tmp_path):
    rel = ENCODERS["umt5"][0]
    paths = fp8_files(comfy, tmp_path, rel)
    image = tmp_path / "start.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(image)

    def frames(file, mode, offload="cpu"):
        engine = Engine(device="cpu", models_dir=models_dir, demo=True, offload_device=offload,
                        outputs_dir=tmp_path / f"{file.stem}-{mode}-{offload}")
        req = I2VRequest(model=ModelRef(repo_id=A14B, files=SingleFiles(text_encoder=str(file))), image=str(image),
                         prompt="waves", resolution="custom", width=32, height=32, num_frames=5, steps=1,
                         swap=SwapSettings(mode=mode), preview_every=0)
        result = engine.run(req)
        last = next(f for f in result.files if f.endswith("-last-frame.png"))
        return np.asarray(Image.open(last)).astype(int)

    expected = frames(paths["multiplied"], "none")
    assert expected.std() > 0
    assert np.array_equal(frames(paths["scaled"], "none"), expected)
    assert np.array_equal(frames(paths["scaled"], "model_offload"), expected)  # the encoder moved with its scales
    assert np.array_equal(frames(paths["scaled"], "model_offload", "disk"), expected)  # and through the disk


def test_in_fp16_the_layers_transformers_keeps_in_fp32_are_fp32_as_it_loads_them(comfy, models_dir, tmp_path):
    rel, demo, part, cls_name = ENCODERS["umt5"]
    folder = demo_path(models_dir, demo)
    paths = fp8_files(comfy, tmp_path, rel)
    model = load_transformers_model(str(paths["scaled"]), cls_name, folder, part, torch.float16)
    wo = model.encoder.block[0].layer[1].DenseReluDense.wo
    assert wo.weight.dtype == torch.float32 and not hasattr(wo, "scale_weight")  # multiplied out, fp32
    assert model.encoder.block[0].layer[0].SelfAttention.q.weight.dtype == torch.float8_e4m3fn
    # the file multiplied out as loading it in fp16 multiplies it (``scaled_fp8.dequantize``: in fp16)
    multiplied = scaled_fp8.dequantize(load_file(str(paths["scaled"])), torch.float16, "x")
    reference = transformers_own(cls_name, folder, part, multiplied, torch.float16)
    assert reference.encoder.block[0].layer[1].DenseReluDense.wo.weight.dtype == torch.float32
    ids = torch.tensor([[5, 17, 3, 99, 42, 1]])
    with torch.no_grad():
        assert torch.equal(model(input_ids=ids).last_hidden_state, reference(input_ids=ids).last_hidden_state)


@pytest.mark.parametrize("kind", ["plain", "scaled", "every-tensor"])
def test_a_qwen_image_edit_from_an_fp8_qwen_vl_is_the_one_from_its_cast_up_file(comfy, models_dir, tmp_path, kind):
    """Qwen2.5-VL keeps its fp8 but the patch embedding (its dtype is read: the pixels are cast to it), under
    transformers 5's names (ComfyUI's files have transformers 4's): an edit, which runs the vision tower on the
    input image, is the one from the file cast up / multiplied out."""
    from engine import LoraStackRequest

    rel, demo, part, cls_name = ENCODERS["qwen2.5-vl"]
    paths = fp8_files(comfy, tmp_path, rel)
    # the demo folder's own fp8 file: every tensor fp8, norms and the patch embedding included
    paths["every-tensor"] = comfy / "text_encoders/qwen_2.5_vl_7b_fp8_e4m3fn-tiny.safetensors"
    model = load_transformers_model(str(paths[kind]), cls_name, demo_path(models_dir, "qwen-image-edit"), part,
                                    torch.float32)
    assert model.model.language_model.layers[0].self_attn.q_proj.weight.dtype == torch.float8_e4m3fn
    assert model.model.visual.blocks[0].mlp.gate_proj.weight.dtype == torch.float8_e4m3fn
    assert model.model.visual.patch_embed.proj.weight.dtype == torch.float32 and model.dtype == torch.float32
    photo = tmp_path / "photo.png"
    Image.fromarray(np.random.default_rng(1).integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(photo)
    # the reference: the same fp8 values, cast up (plain) or multiplied out (scaled) into a plain fp32 file
    fp8_state = load_file(str(paths["plain" if kind == "scaled" else kind]))
    cast_up = tmp_path / "cast-up.safetensors"
    save_file({k: v.float() if v.dtype == torch.float8_e4m3fn else v for k, v in fp8_state.items()}, str(cast_up))
    expected_file = paths["multiplied"] if kind == "scaled" else cast_up

    def edit(file):
        engine = Engine(device="cpu", models_dir=models_dir, demo=True, outputs_dir=tmp_path / file.stem)
        req = LoraStackRequest(model=ModelRef(repo_id="Qwen/Qwen-Image-Edit", files=SingleFiles(text_encoder=str(file))),
                               prompt="make the sky green", width=32, height=32, steps=2, seed=5,
                               input_image=str(photo))
        return np.asarray(engine.run(req).images[0]).astype(int)

    expected = edit(expected_file)
    assert expected.std() > 0 and np.array_equal(edit(paths[kind]), expected)
    from engine.comfy_models.single_file import FP8_KEPT_ENCODERS, _renamed

    sizes = {c.name: c for c in folder_sizes(demo_path(models_dir, "qwen-image-edit"), 4, {part: str(paths[kind])})}
    stored = {k: v.dtype for k, v in load_file(str(paths[kind])).items()}
    params = dict(model.named_parameters())
    in_file = {n: stored[k] for k in stored
               if (n := _renamed(k, set(params), FP8_KEPT_ENCODERS[cls_name].renames, ".scale_weight")) in params}
    # the plan: a byte a tensor the file holds in fp8 and the model keeps so, the compute dtype for the rest (the
    # tiny model's zero biases are exact in fp8 and kept so as well: more than a header can tell, the plan says 4)
    kept = {n for n, p in params.items() if p.dtype == torch.float8_e4m3fn and in_file[n] == torch.float8_e4m3fn}
    assert sizes[part].total == sum(p.numel() * (1 if n in kept else 4) for n, p in params.items())
    # what the load allocates: the fp8 tensors it casts (the patch embedding and norms, where the file has them fp8)
    cast = sum(p.numel() * 4 for n, p in params.items() if in_file[n] == torch.float8_e4m3fn and n not in kept)
    assert sizes[part].load_copy == cast and (cast > 0) == (kind == "every-tensor")
