"""A fake ComfyUI install for the demo and the tests, written from the tiny demo models (``engine.demo``):

``<models_dir>/demo-comfyui/``
  ``ComfyUI/models/``  the main base path, ComfyUI's own folder names:
    ``diffusion_models/`` Flux dev (BFL layout; plus an fp8 e4m3fn copy), Chroma (``model.diffusion_model.*``),
                          Qwen-Image, ``wan2.2/`` the I2V A14B high/low noise pair (Wan layout), TI2V 5B
    ``vae/``              the Flux VAE (LDM layout, as BFL's ``ae.safetensors``); the Wan 2.1, Wan 2.2 and Qwen-Image VAEs
                          in the original Wan layout (``engine.demo.formats``, converted on load by ``wan_vae``)
    ``text_encoders/``    CLIP-L, T5-XXL (Flux), T5 (Chroma), umT5 (Wan), Qwen2.5-VL (transformers 4 names, as Comfy-Org);
                          T5-XXL, umT5 and Qwen2.5-VL also in bf16, fp8 e4m3fn and ComfyUI's scaled fp8 (``formats``)
    ``clip_vision/``      SigLIP;  ``ipadapter-flux/`` the InstantX ``ip-adapter.bin`` (a pickle);  ``loras/``
  ``extra/``           a second base path (``extra_model_paths.yaml``): more LoRAs
  ``extra_model_paths.yaml``

Each file holds the same weights as its diffusers demo folder, in the original key layout (``comfy_layouts``),
so a single-file load can be compared with the diffusers-layout load of the same model. Written once, into a
temporary folder renamed into place; the marker ``.built`` holds ``COMFY_DEMO_VERSION``."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

from engine import demo
from engine.demo.build import file_lock
from engine.demo.common import quiet
from engine.demo.single_files import original_state

COMFY_DEMO_VERSION = "5"  # 2: the Flux VAE as ae-tiny.safetensors; 3: engine.demo.formats (issue 29); 4: Flux LoRA and the
# Wan lightx2v pair under the official template's names (issue 31); 5: the Wan 2.2 experts in scaled fp8 (issue 28)
DIRNAME = "demo-comfyui"

#: file -> (demo model, diffusers component) it was written from; names follow the real ComfyUI files'
FILES = {
    "diffusion_models/flux1-dev-tiny.safetensors": (demo.FLUX_DEV, "transformer"),
    "diffusion_models/flux1-dev-tiny-fp8_e4m3fn.safetensors": (demo.FLUX_DEV, "transformer"),
    "diffusion_models/chroma-tiny.safetensors": (demo.CHROMA, "transformer"),
    "diffusion_models/qwen_image_tiny_fp32.safetensors": (demo.QWEN_IMAGE, "transformer"),
    "diffusion_models/wan2.2/wan2.2_i2v_high_noise_14B_tiny.safetensors": (demo.WAN22_I2V, "transformer"),
    "diffusion_models/wan2.2/wan2.2_i2v_low_noise_14B_tiny.safetensors": (demo.WAN22_I2V, "transformer_2"),
    "diffusion_models/wan2.2_ti2v_5B_tiny.safetensors": (demo.WAN22_TI2V, "transformer"),
    "vae/ae-tiny.safetensors": (demo.FLUX_DEV, "vae"),
    "text_encoders/clip_l-tiny.safetensors": (demo.FLUX_DEV, "text_encoder"),
    "text_encoders/t5xxl-tiny.safetensors": (demo.FLUX_DEV, "text_encoder_2"),
    "text_encoders/t5xxl-chroma-tiny.safetensors": (demo.CHROMA, "text_encoder"),
    "text_encoders/umt5_xxl-tiny.safetensors": (demo.WAN22_I2V, "text_encoder"),
    "text_encoders/qwen_2.5_vl-tiny.safetensors": (demo.QWEN_IMAGE, "text_encoder"),
    "clip_vision/siglip-tiny.safetensors": (demo.SIGLIP, ""),
}
IP_ADAPTER_FILE = "ipadapter-flux/ip-adapter-tiny.bin"
LORA_FILES = {"loras/qwen-comfy-style.safetensors": demo.QWEN_LORA_LAYOUT_FILES["comfyui"],
              "loras/flux-kohya-style.safetensors": demo.FLUX_LORA_FILES["kohya"],
              # the names ComfyUI's official video_wan2_2_14B_i2v template loads, one per expert
              "loras/wan2.2_i2v_lightx2v_4steps_lora_v1_high_noise.safetensors": demo.WAN_LORA_FILES["lightx2v_high"],
              "loras/wan2.2_i2v_lightx2v_4steps_lora_v1_low_noise.safetensors": demo.WAN_LORA_FILES["lightx2v_low"]}
EXTRA_LORA_FILES = {"loras/qwen-kohya-style.safetensors": demo.QWEN_LORA_LAYOUT_FILES["kohya"]}
MAIN, EXTRA = "ComfyUI/models", "extra"


def comfy_root(models_dir: str | os.PathLike) -> Path:
    return Path(models_dir) / DIRNAME


def main_models(models_dir) -> Path:
    """The ComfyUI ``models`` folder of the fake install (what ``--comfy-models`` points at)."""
    return comfy_root(models_dir) / MAIN


def yaml_path(models_dir) -> Path:
    return comfy_root(models_dir) / "extra_model_paths.yaml"


def build_demo_comfy(models_dir: str | os.PathLike) -> Path:
    """Build (once) the fake ComfyUI install from the demo models; returns its ``ComfyUI/models`` folder."""
    models_dir = Path(models_dir)
    root = comfy_root(models_dir)
    marker = root / ".built"
    if marker.is_file() and marker.read_text(encoding="utf-8") == COMFY_DEMO_VERSION:
        return root / MAIN
    demo_dir = demo.build_demo_models(models_dir)
    with file_lock(models_dir / ".demo-comfy.lock"):
        if marker.is_file() and marker.read_text(encoding="utf-8") == COMFY_DEMO_VERSION:
            return root / MAIN
        tmp = Path(tempfile.mkdtemp(prefix=".demo-comfy.tmp-", dir=models_dir))
        os.chmod(tmp, 0o755)
        try:
            with quiet():
                _write(tmp, demo_dir)
            (tmp / ".built").write_text(COMFY_DEMO_VERSION, encoding="utf-8")
            if root.exists():
                shutil.rmtree(root)
            os.replace(tmp, root)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    return root / MAIN


def _write(root: Path, demo_dir: Path) -> None:
    import torch
    from safetensors.torch import save_file

    main = root / MAIN
    for rel, (model, component) in FILES.items():
        state = original_state(demo_dir, model, component)
        if "fp8" in rel:
            state = {k: v.to(torch.float8_e4m3fn) if v.is_floating_point() else v for k, v in state.items()}
        state = {k: v.contiguous().clone() for k, v in state.items()}  # tied / shared storages: one copy each
        out = main / rel
        out.parent.mkdir(parents=True, exist_ok=True)
        save_file(state, str(out), metadata={"format": "pt"})
    (main / IP_ADAPTER_FILE).parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(demo_dir / demo.FLUX_IP_ADAPTER / demo.IP_ADAPTER_BIN_NAME, main / IP_ADAPTER_FILE)
    for base, files in ((main, LORA_FILES), (root / EXTRA, EXTRA_LORA_FILES)):
        for rel, source in files.items():
            (base / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(demo_dir / source, base / rel)
    from engine.demo.formats import write_formats

    write_formats(main, demo_dir)  # encoders in bf16 / fp8 / scaled fp8, Wan-layout VAEs, more LoRA schemes, GGUF
    for folder in ("checkpoints", "vae", "unet", "clip", "ipadapter"):  # empty, as in a fresh ComfyUI install
        (main / folder).mkdir(parents=True, exist_ok=True)
    (root / "extra_model_paths.yaml").write_text(
        "# two base paths, as ComfyUI's extra_model_paths.yaml.example\n"
        "comfyui:\n"
        f"    base_path: {MAIN.rsplit('/', 1)[0]}/\n"
        "    is_default: true\n"
        "    checkpoints: models/checkpoints/\n"
        "    diffusion_models: |\n"
        "        models/diffusion_models\n"
        "        models/unet\n"
        "    text_encoders: |\n"
        "        models/text_encoders\n"
        "        models/clip\n"
        "    vae: models/vae/\n"
        "    clip_vision: models/clip_vision/\n"
        "    loras: models/loras/\n"
        "    ipadapter-flux: models/ipadapter-flux/\n"
        "other_ui:\n"
        f"    base_path: {EXTRA}\n"
        "    loras: loras\n",
        encoding="utf-8",
    )
