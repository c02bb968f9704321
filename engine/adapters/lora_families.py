"""Which model family a LoRA's keys were made for, and which family a transformer is: a LoRA for another family
is refused with the family its keys belong to ("a Flux LoRA (keys like double_blocks.0.img_attn.qkv); this
model is Wan 2.x"), not with "matches 0 modules"."""

from __future__ import annotations

import re

#: transformer class name prefix -> family
_MODEL_FAMILIES = (("Flux", "flux"), ("Chroma", "chroma"), ("Wan", "wan"), ("QwenImage", "qwen"),
                   ("UNet2D", "unet"))
NAMES = {"flux": "Flux", "chroma": "Chroma", "wan": "Wan 2.x", "qwen": "Qwen-Image", "unet": "SD / SDXL (UNet)",
         "dit": "Flux or Qwen-Image"}
#: families whose LoRAs share keys (Chroma is Flux's layout without some modulation layers)
COMPATIBLE = {"flux": {"flux", "chroma", "dit"}, "chroma": {"flux", "chroma", "dit"}, "qwen": {"qwen", "dit"}}

# evidence per family, tried in order (Flux before Qwen: both have img_mod; Flux's fused double_blocks decide)
_KEY_FAMILIES = (
    ("flux", re.compile(r"double_blocks|single_blocks|single_transformer_blocks|img_attn|txt_attn|ff_context|"
                        r"processor\.(qkv|proj)_lora")),
    ("wan", re.compile(r"self_attn[._](q|k|v|o)\b|cross_attn[._]|\battn1\b|attn1[._]to|attn2[._]to|"
                       r"blocks[._]\d+[._]ffn|k_img|head[._]head")),
    ("qwen", re.compile(r"img_mlp|txt_mlp|img_mod[._]1|txt_mod[._]1")),
    # diffusers names Flux and Qwen-Image share: a LoRA on attention only cannot tell the two apart
    ("dit", re.compile(r"transformer_blocks[._]\d+[._](attn|ff|norm1)[._]")),
    ("unet", re.compile(r"down_blocks|up_blocks|input_blocks|output_blocks|mid_block|middle_block")),
)


def model_family(transformer) -> str:
    name = type(transformer).__name__
    for prefix, family in _MODEL_FAMILIES:
        if name.startswith(prefix):
            return family
    return ""


def key_family(keys) -> tuple[str, str]:
    """(family, an example key) of a LoRA's keys, or ("", "") when they name no family we know."""
    for family, pattern in _KEY_FAMILIES:
        for key in keys:
            if pattern.search(key):
                return family, key
    return "", ""


def compatible(lora_family: str, model: str) -> bool:
    return not lora_family or not model or lora_family == model or lora_family in COMPATIBLE.get(model, ())
