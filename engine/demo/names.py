"""What the demo builds: the model names, the LoRA and adapter file names, and the shapes components share."""

from __future__ import annotations

from engine.panorama.tasks import TASKS as _OMNIX
from engine.panorama.tasks import WEIGHT_NAME as _OMNIX_WEIGHT_NAME

DEMO_VERSION = "10"  # 2: IP-Adapter .bin; 3: Qwen LoRAs in ComfyUI, kohya, seed-004 layouts; 4: TI2V 5B, TurboWan .pth;
# 5: OmniX adapters in upstream's training layout (attention + image FF, no metadata); 6: Qwen-Image-Edit (+2509);
# 7: TurboWan experts with SLA's proj_l per block (the released files' layout); 8: Ideogram 4 (SDNQ) stand-in;
# 9: Flux, Chroma and Wan 2.2 LoRAs in every layout (demo/loras.py); 10: the lightx2v-style diff_b seeded
MARKER_NAME = ".built-v1"

DEMO_DIRNAME = "demo"

FLUX_DEV = "flux-dev"

CHROMA = "chroma"

WAN22_I2V = "wan22-i2v"

WAN22_TI2V = "wan22-ti2v-5b"

TURBOWAN = "turbowan22-i2v"

QWEN_IMAGE = "qwen-image"

QWEN_IMAGE_EDIT, QWEN_IMAGE_EDIT_2509 = "qwen-image-edit", "qwen-image-edit-2509"

FLUX_IP_ADAPTER = "flux-ip-adapter"

SIGLIP = "siglip"

OMNIX = "omnix"

FLUX_DEV_SDNQ_INT8 = "flux-dev-sdnq-int8"

IDEOGRAM4_SDNQ = "ideogram-4-sdnq"

LORAS = "loras"

#: Every demo model name (the ``demo`` fields of presets/models.json).
DEMO_NAMES: tuple[str, ...] = (
    FLUX_DEV,
    CHROMA,
    WAN22_I2V,
    WAN22_TI2V,
    TURBOWAN,
    QWEN_IMAGE,
    QWEN_IMAGE_EDIT,
    QWEN_IMAGE_EDIT_2509,
    FLUX_IP_ADAPTER,
    SIGLIP,
    OMNIX,
    FLUX_DEV_SDNQ_INT8,
    IDEOGRAM4_SDNQ,
)

#: LoRA files for the Qwen-Image demo, relative to ``<models_dir>/demo``.
QWEN_LORA_FILES: tuple[str, ...] = ("loras/qwen-style-a.safetensors", "loras/qwen-style-b.safetensors")

#: LoRA files in the other key layouts real Qwen-Image LoRAs come in, relative to ``<models_dir>/demo``.
QWEN_LORA_LAYOUT_FILES: dict[str, str] = {
    "comfyui": "loras/qwen-comfy.safetensors",
    "kohya": "loras/qwen-kohya.safetensors",
    "seed004": "loras/qwen-seed004-names.safetensors",
}

#: Flux LoRAs (for flux-dev; they fit chroma's shapes too), relative to ``<models_dir>/demo``
FLUX_LORA_FILES: dict = {
    "diffusers": ("loras/flux-style-a.safetensors", "loras/flux-style-b.safetensors"),
    "kohya": "loras/flux-kohya.safetensors",
    "comfyui": "loras/flux-comfy-bfl.safetensors",
    "xlabs": "loras/flux-xlabs.safetensors",
}
FLUX_LORA_TARGETS = ["to_q", "to_k", "to_v", "to_out.0", "add_q_proj", "add_k_proj", "add_v_proj", "to_add_out"]
CHROMA_LORA_FILES: dict[str, str] = {"kohya": "loras/chroma-kohya.safetensors"}
#: Wan 2.2 LoRAs: the lightx2v pair under the names ComfyUI's official I2V template loads, and the other layouts
WAN_LORA_FILES: dict[str, str] = {
    "lightx2v_high": "loras/wan2.2_i2v_lightx2v_4steps_lora_v1_high_noise.safetensors",
    "lightx2v_low": "loras/wan2.2_i2v_lightx2v_4steps_lora_v1_low_noise.safetensors",
    "diffusers": "loras/wan-diffusers.safetensors",
    "kohya": "loras/wan-kohya.safetensors",
    "ti2v": "loras/wan-ti2v-5b-comfy.safetensors",
}

#: OmniX task folder -> adapter names (condition first, target last), as in upstream HKU-MMLab/OmniX.
OMNIX_TASKS: dict[str, tuple[str, ...]] = {t.folder: t.adapters for t in _OMNIX.values()}

OMNIX_WEIGHT_NAME = _OMNIX_WEIGHT_NAME

IP_ADAPTER_WEIGHT_NAME = "ip-adapter.safetensors"

IP_ADAPTER_BIN_NAME = "ip-adapter.bin"  # the file InstantX/FLUX.1-dev-IP-Adapter publishes

IP_ADAPTER_NUM_TOKENS = 4

# Shapes shared between components that must fit together.
FLUX_HEADS, FLUX_HEAD_DIM = 2, 64  # inner_dim 128: SDNQ's default size filters quantize its Linears

FLUX_INNER_DIM = FLUX_HEADS * FLUX_HEAD_DIM

FLUX_JOINT_DIM = 32  # T5 d_model

FLUX_POOLED_DIM = 32  # CLIP hidden size

FLUX_NUM_LAYERS, FLUX_NUM_SINGLE_LAYERS = 2, 2

SIGLIP_DIM = 32

WAN_BOUNDARY_RATIO = 0.875

QWEN_SPECIAL_TOKENS = (
    "<|im_start|>",
    "<|im_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|image_pad|>",
    "<|video_pad|>",
)

# What upstream OmniX trains (HKU-MMLab/OmniX src/utils/lora.py): peft suffix matching puts these on the double
# blocks' q/k/v/out and image feed-forward (not add_*_proj, not ff_context) and on the single blocks' q/k/v only.
OMNIX_LORA_TARGETS = ["attn.to_k", "attn.to_q", "attn.to_v", "attn.to_out.0", "ff.net.0.proj", "ff.net.2"]

OMNIX_LORA_RANK = 4  # upstream: 64, with lora_alpha = rank (scale 1)

QWEN_LORA_TARGETS = ["to_q", "to_k", "to_v", "to_out.0", "add_q_proj", "add_k_proj", "add_v_proj", "to_add_out"]
