"""Which architecture a weight file holds, from its tensor names and shapes only (the keys diffusers'
``single_file_utils.CHECKPOINT_KEY_NAMES`` and ComfyUI's ``model_detection.py`` look at). Shapes that are the
same on the tiny demo models and the real ones (channel counts, block presence) decide, never a width, so the
same rules classify both."""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from engine.comfy_models.header import TensorTable
from engine.comfy_models.wan_vae import is_wan22_layout

TRANSFORMER_PREFIXES = ("model.diffusion_model.", "diffusion_model.")

#: every architecture ``detect`` names: the ones this app loads, and the ones it lists with a reason and refuses
#: (tests/test_real_formats.py holds a demo file, or a synthetic header, to each)
LOADED_ARCHS = ("flux-dev", "flux-schnell", "flux-diffusers", "chroma", "qwen-image", "wan22-i2v-a14b", "wan22-ti2v-5b",
                "vae-flux", "vae-ldm", "vae-wan", "vae-wan22", "clip-l", "t5-xxl", "umt5-xxl", "qwen25-vl", "siglip",
                "ipadapter-flux", "lora")
REFUSED_ARCHS = ("flux-other", "wan21-i2v", "wan-t2v", "clip-g", "clip-vision", "ipadapter-sd", "ipadapter-xlabs",
                 "unknown")


@dataclass
class Detection:
    arch: str  # e.g. flux-dev, chroma, wan22-i2v-a14b, vae-flux, lora, unknown
    label: str  # what the user reads: "Flux dev", "Wan 2.2 I2V A14B (high noise)"
    kind: str  # transformer, vae, text_encoder, image_encoder, ip_adapter, lora, unknown
    details: dict = field(default_factory=dict)
    reason: str = ""  # for unknown: why it was not recognised


def strip_transformer_prefix(keys) -> dict[str, str]:
    """stripped -> original name of the transformer's tensors; a full checkpoint keeps only its
    ``model.diffusion_model.*`` part (its VAE and text encoders are other pieces)."""
    keys = list(keys)
    for prefix in TRANSFORMER_PREFIXES:
        if any(k.startswith(prefix) for k in keys):
            return {k[len(prefix):]: k for k in keys if k.startswith(prefix)}
    return {k: k for k in keys}


def _noise_from_name(name: str) -> str:
    low = name.lower()
    if re.search(r"high[ _-]?noise|(^|[_\-. ])hn([_\-. ]|$)|[_\-. ]high([_\-. ]|$)", low):
        return "high"
    if re.search(r"low[ _-]?noise|(^|[_\-. ])ln([_\-. ]|$)|[_\-. ]low([_\-. ]|$)", low):
        return "low"
    return ""


def _transformer(keys: dict[str, str], table: TensorTable, name: str) -> Detection | None:
    def shape(k):
        return table.shape(keys[k]) if k in keys else None

    if "double_blocks.0.img_attn.norm.key_norm.scale" in keys:
        if "distilled_guidance_layer.in_proj.bias" in keys:
            return Detection("chroma", "Chroma", "transformer")
        in_ch = (shape("img_in.weight") or (0, 0))[1]
        variant = "dev" if "guidance_in.in_layer.weight" in keys else "schnell"
        details = {"in_channels": in_ch}
        if in_ch not in (0, 64, 16):  # 64: FLUX.1 (16 latent ch x 2x2 patches); 16: the tiny demo (patch 1)
            return Detection("flux-other", f"Flux variant with {in_ch} input channels (Fill/Depth/Kontext?)",
                             "transformer", details, "only FLUX.1 dev/schnell text-to-image files are loaded")
        return Detection(f"flux-{variant}", f"Flux {variant}", "transformer", details)
    if "head.modulation" in keys and "patch_embedding.weight" in keys:
        in_ch = (shape("patch_embedding.weight") or (0, 0))[1]
        dim = (shape("patch_embedding.weight") or (0,))[0]
        has_clip = any(k.startswith("img_emb.") for k in keys)
        details = {"in_channels": in_ch, "dim": dim}
        if in_ch == 48:
            return Detection("wan22-ti2v-5b", "Wan 2.2 TI2V 5B", "transformer", details)
        if in_ch == 36 and not has_clip:
            noise = _noise_from_name(name)
            details["noise"] = noise
            which = f"{noise} noise" if noise else "high or low noise: not in the name"
            return Detection("wan22-i2v-a14b", f"Wan 2.2 I2V A14B ({which})", "transformer", details)
        if in_ch == 36:
            return Detection("wan21-i2v", "Wan 2.1 I2V", "transformer", details,
                             "Wan 2.1 I2V (CLIP image embedding) is not one of this app's models")
        return Detection("wan-t2v", "Wan text-to-video", "transformer", details,
                         "Wan T2V files are not used by the Image-to-video tab (it needs I2V or TI2V)")
    if "transformer_blocks.0.img_mod.1.weight" in keys and "txt_norm.weight" in keys:
        return Detection("qwen-image", "Qwen-Image", "transformer")
    if "transformer_blocks.0.attn.norm_added_k.weight" in keys and "single_transformer_blocks.0.norm.linear.weight" in keys:
        return Detection("flux-diffusers", "Flux (diffusers layout)", "transformer")
    return None


def _vae(keys, table: TensorTable) -> Detection | None:
    if "decoder.middle.0.residual.0.gamma" in keys:  # Wan VAE (the Qwen-Image VAE has the same layout)
        z = (table.shape("conv1.weight") or table.shape("encoder.head.2.weight") or (0,))[0] // 2
        if is_wan22_layout(keys):  # nested residual blocks: Wan 2.2's VAE (48 ch for TI2V 5B)
            return Detection("vae-wan22", f"Wan 2.2 VAE ({z} ch)", "vae", {"latent_channels": z})
        return Detection("vae-wan", f"Wan 2.1 / Qwen-Image VAE ({z} ch)", "vae", {"latent_channels": z})
    if "encoder.conv_in.weight" in keys and "decoder.conv_out.weight" in keys:
        z = (table.shape("encoder.conv_out.weight") or (0,))[0] // 2
        label = "Flux VAE (16 ch)" if z == 16 else f"LDM VAE ({z} ch)"
        return Detection("vae-flux" if z == 16 else "vae-ldm", label, "vae", {"latent_channels": z})
    return None


def _encoder(keys, table: TensorTable) -> Detection | None:
    if "text_model.encoder.layers.0.self_attn.q_proj.weight" in keys:
        width = (table.shape("text_model.final_layer_norm.weight") or (0,))[0]
        label = {768: "CLIP-L", 1280: "CLIP-G"}.get(width, f"CLIP text ({width} wide)")
        return Detection("clip-l" if width != 1280 else "clip-g", label, "text_encoder", {"hidden_size": width})
    if "encoder.block.0.layer.0.SelfAttention.q.weight" in keys:
        umt5 = "encoder.block.1.layer.0.SelfAttention.relative_attention_bias.weight" in keys
        width = (table.shape("encoder.final_layer_norm.weight") or (0,))[0]
        if umt5:
            return Detection("umt5-xxl", "umT5-XXL", "text_encoder", {"d_model": width})
        return Detection("t5-xxl", "T5-XXL" if width in (4096, 0) else f"T5 ({width} wide)", "text_encoder",
                         {"d_model": width})
    qwen_text = any(k.startswith(("model.layers.0.", "model.language_model.layers.0.")) for k in keys)
    if qwen_text and any(k.startswith(("visual.", "model.visual.")) for k in keys):
        return Detection("qwen25-vl", "Qwen2.5-VL", "text_encoder")
    if "vision_model.encoder.layers.0.self_attn.q_proj.weight" in keys:
        if "vision_model.embeddings.class_embedding" in keys:
            return Detection("clip-vision", "CLIP vision", "image_encoder", {},
                             "a CLIP vision tower; the Flux IP-Adapter needs SigLIP")
        return Detection("siglip", "SigLIP vision", "image_encoder")
    return None


def _adapter(keys) -> Detection | None:
    if any(k.startswith("ip_adapter.") and k.endswith("to_k_ip.weight") for k in keys):
        n = len({k.split(".")[1] for k in keys if k.startswith("ip_adapter.")})
        if any(k.startswith("image_proj.proj.0.") for k in keys):
            return Detection("ipadapter-flux", f"IP-Adapter (InstantX Flux, {n} layers)", "ip_adapter", {"layers": n})
        return Detection("ipadapter-sd", f"IP-Adapter (SD/SDXL, {n} layers)", "ip_adapter", {"layers": n},
                         "an SD/SDXL IP-Adapter; this app's IP-Adapter tab runs the InstantX Flux one")
    if any("ip_adapter_double_stream_k_proj" in k for k in keys):
        return Detection("ipadapter-xlabs", "IP-Adapter (XLabs Flux)", "ip_adapter", {},
                         "the XLabs Flux IP-Adapter layout is not supported (InstantX only)")
    return None


_LORA_MARK = re.compile(r"lora_[AB]\b|lora_(down|up)\b|lora\.(down|up)\b|\.alpha$|lokr_|hada_")
_LORA_TARGETS = (  # (pattern in the key, target label)
    (re.compile(r"double_blocks|single_blocks|single_transformer_blocks"), "Flux / Chroma"),
    (re.compile(r"img_mlp|txt_mlp|img_mod|txt_mod|transformer_blocks_\d+_img"), "Qwen-Image"),
    (re.compile(r"(^|[._])blocks[._]\d+[._](self_attn|cross_attn|ffn)"), "Wan"),
    (re.compile(r"down_blocks|up_blocks|input_blocks|lora_te"), "SD / SDXL"),
)


def _lora(keys) -> Detection | None:
    if not any(_LORA_MARK.search(k) for k in keys):
        return None
    joined = "\n".join(list(keys)[:4000])
    for pattern, target in _LORA_TARGETS:
        if pattern.search(joined):
            return Detection("lora", f"LoRA for {target}", "lora", {"target": target})
    return Detection("lora", "LoRA (target not recognised)", "lora", {"target": "?"})


def detect(table: TensorTable, name: str = "") -> Detection:
    """The architecture of the file ``name`` whose tensors ``table`` lists."""
    names = list(table.tensors)
    if not names:
        return Detection("unknown", "unknown", "unknown", {}, "the file holds no tensors")
    found = _lora(names) or _adapter(names)
    if found:
        return found
    stripped = strip_transformer_prefix(names)
    found = _transformer(stripped, table, name)
    if found:
        found.details["has_vae"] = any(k.startswith("first_stage_model.") or k.startswith("vae.") for k in names)
        return found
    keys = {k: k for k in names}
    found = _vae(keys, table) or _encoder(keys, table)
    if found:
        return found
    sample = ", ".join(names[:3])
    return Detection("unknown", "unknown", "unknown", {},
                     f"no known layout: {len(names)} tensors, e.g. {sample} (not Flux, Chroma, Wan, Qwen-Image, "
                     "a VAE, a text/image encoder, an IP-Adapter or a LoRA)")
