"""The formats of the fake ComfyUI folder beyond one file per component (issue 29): each text encoder in bf16,
plain fp8 and ComfyUI's scaled fp8, the three Wan-layout VAEs, the Qwen-Image-Edit transformer, the Qwen LoRA
naming schemes not already there, and a GGUF file (refused by the index). Each is written from a tiny demo
model with the key names and dtypes of the real file it is named after (``layouts``, ``wan_vae``,
``scaled_fp8``), so the single-file path loads it exactly as it loads the real one."""

from __future__ import annotations

import shutil
from pathlib import Path

from engine import demo
from engine.demo.single_files import original_state

#: ComfyUI name -> (demo model, component, how it is stored): "as-is" (the demo's fp32), "bf16", "fp8" (plain
#: float8_e4m3fn, as ``*_fp8_e4m3fn.safetensors``) or "fp8_scaled" (``scaled_fp8`` + ``scale_weight``)
ENCODERS = {
    "text_encoders/t5xxl_bf16-tiny.safetensors": (demo.FLUX_DEV, "text_encoder_2", "bf16"),
    "text_encoders/t5xxl_fp8_e4m3fn-tiny.safetensors": (demo.FLUX_DEV, "text_encoder_2", "fp8"),
    "text_encoders/t5xxl_fp8_e4m3fn_scaled-tiny.safetensors": (demo.FLUX_DEV, "text_encoder_2", "fp8_scaled"),
    "text_encoders/umt5_xxl_bf16-tiny.safetensors": (demo.WAN22_I2V, "text_encoder", "bf16"),
    "text_encoders/umt5_xxl_fp8_e4m3fn-tiny.safetensors": (demo.WAN22_I2V, "text_encoder", "fp8"),
    "text_encoders/umt5_xxl_fp8_e4m3fn_scaled-tiny.safetensors": (demo.WAN22_I2V, "text_encoder", "fp8_scaled"),
    "text_encoders/qwen_2.5_vl_7b_bf16-tiny.safetensors": (demo.QWEN_IMAGE, "text_encoder", "bf16"),
    "text_encoders/qwen_2.5_vl_7b_fp8_e4m3fn-tiny.safetensors": (demo.QWEN_IMAGE, "text_encoder", "fp8"),
    "text_encoders/qwen_2.5_vl_7b_fp8_scaled-tiny.safetensors": (demo.QWEN_IMAGE, "text_encoder", "fp8_scaled"),
}
#: the Wan-layout VAEs (Comfy-Org: ``wan_2.1_vae``, ``wan2.2_vae``, ``qwen_image_vae``), converted on load
VAES = {
    "vae/wan_2.1_vae-tiny.safetensors": (demo.WAN22_I2V, "vae", "as-is"),
    "vae/wan2.2_vae-tiny.safetensors": (demo.WAN22_TI2V, "vae", "as-is"),
    "vae/qwen_image_vae-tiny.safetensors": (demo.QWEN_IMAGE, "vae", "as-is"),
}
TRANSFORMERS = {
    "diffusion_models/flux1-dev-diffusers-tiny.safetensors": (demo.FLUX_DEV, "transformer", "diffusers-layout"),
    # Comfy-Org's Wan 2.2 experts as the official template loads them: scaled fp8, kept fp8 on load
    "diffusion_models/wan2.2/wan2.2_i2v_high_noise_14B_fp8_scaled-tiny.safetensors": (demo.WAN22_I2V, "transformer",
                                                                                     "fp8_scaled"),
    "diffusion_models/wan2.2/wan2.2_i2v_low_noise_14B_fp8_scaled-tiny.safetensors": (demo.WAN22_I2V, "transformer_2",
                                                                                    "fp8_scaled"),
    "diffusion_models/qwen_image_edit_2509-tiny.safetensors": (demo.QWEN_IMAGE_EDIT_2509, "transformer", "as-is"),
}
FILES = {**ENCODERS, **VAES, **TRANSFORMERS}
#: LoRA naming schemes the Qwen stack reads (``engine.adapters.lora_files``) not already in the folder
LORA_FILES = {
    "loras/diffusers-qwen-tiny.safetensors": demo.QWEN_LORA_FILES[0],
    "loras/seed004-qwen-tiny.safetensors": demo.QWEN_LORA_LAYOUT_FILES["seed004"],
}
GGUF_FILE = "diffusion_models/flux1-dev-tiny-Q4_K_S.gguf"  # the index lists it, refused (no GGUF loader)


def stored(state: dict, how: str) -> dict:
    """``state`` stored as the real file stores it."""
    import torch

    from engine.comfy_models import scaled_fp8

    if how == "bf16":
        return {k: v.to(torch.bfloat16) if v.is_floating_point() else v for k, v in state.items()}
    if how == "fp8":
        return {k: v.to(torch.float8_e4m3fn) if v.is_floating_point() else v for k, v in state.items()}
    if how == "fp8_scaled":
        # ComfyUI's scaled encoders hold only the Linear weights in fp8 (with their scales); norms and
        # embeddings stay 16 bit
        return {k: v.to(torch.bfloat16) if v.dtype == torch.float32 and not k.endswith(".scale_weight") else v
                for k, v in scaled_fp8.quantize(state).items()}
    return state


def write_formats(main: Path, demo_dir: Path) -> None:
    """Write every file above into the ``models`` folder ``main``."""
    from safetensors.torch import save_file

    for rel, (model, component, how) in FILES.items():
        if how == "diffusers-layout":  # a single file holding diffusers' own names (some fine-tunes ship so)
            from safetensors.torch import load_file

            state = load_file(str(demo_dir / model / component / "diffusion_pytorch_model.safetensors"))
        else:
            state = stored(original_state(demo_dir, model, component), how)
        state = {k: v.contiguous().clone() for k, v in state.items()}
        out = main / rel
        out.parent.mkdir(parents=True, exist_ok=True)
        save_file(state, str(out), metadata={"format": "pt"})
    for rel, source in LORA_FILES.items():
        (main / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(demo_dir / source, main / rel)
    # a GGUF header (magic, version 3, no tensors): enough for the index to list and refuse it
    (main / GGUF_FILE).write_bytes(b"GGUF" + (3).to_bytes(4, "little") + bytes(16))
