"""Flux / Chroma LoRA key layouts -> diffusers keys, through diffusers' own Flux converters.

The layouts: diffusers/peft (``transformer.<module>.lora_A``), kohya / sd-scripts (``lora_unet_double_blocks_0_
img_attn_qkv.lora_down`` + ``alpha``, ``lora_te1_*`` CLIP parts), ComfyUI / BFL original names
(``diffusion_model.double_blocks.0.img_attn.qkv.lora_A|lora_down``, fused qkv and ``single_blocks.N.linear1``),
and XLabs (``double_blocks.0.processor.qkv_lora1.down``). ``FluxLoraLoaderMixin.lora_state_dict`` converts all of
them (kohya, XLabs, BFL control, fal kontext; it does the uneven split of ``linear1`` into q/k/v/mlp and the
shift/scale swap of ``final_layer.adaLN_modulation``); we only normalise the ComfyUI/BFL spelling to kohya's
first, which diffusers reads for the BFL names. What its converters drop, they say only in log lines: those
lines are captured and reported with the file (never silently). Chroma uses the same names; its transformer has
no ``vector_in`` / ``guidance_in`` / per-block modulation Linears, so those keys are reported as not in the model.
"""

from __future__ import annotations

import logging
import re

import torch

_BFL = re.compile(r"(^|[._])(double_blocks|single_blocks|final_layer|img_in|txt_in|time_in|vector_in|guidance_in)"
                  r"[._]")
_PREFIXES = ("model.diffusion_model.", "diffusion_model.", "transformer.", "lora_unet_")
_TAGS = {"lora_A": "lora_down", "lora_B": "lora_up", "lora_down": "lora_down", "lora_up": "lora_up"}
_TAGGED = re.compile(r"^(?P<base>.+?)\.(?P<tag>lora_A|lora_B|lora_down|lora_up)\.weight$")


def is_bfl_named(keys) -> bool:
    return any(_BFL.search(k) for k in keys)


def is_xlabs(keys) -> bool:
    return any(".processor." in k for k in keys)


def needs_conversion(keys) -> bool:
    return is_bfl_named(keys) or is_xlabs(keys)


def _as_kohya(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """ComfyUI / BFL original names (any prefix, A/B or down/up) spelled as kohya's ``lora_unet_<flat>.lora_down``,
    the form diffusers' kohya converter reads. Text-encoder keys and kohya keys pass as they are."""
    out = {}
    for key, value in tensors.items():
        if key.startswith(("lora_te", "text_encoder")):
            out[key] = value
            continue
        rest = key
        for prefix in _PREFIXES:
            if rest.startswith(prefix):
                rest = rest[len(prefix):]
                break
        if (m := _TAGGED.match(rest)) is not None:
            out[f"lora_unet_{m['base'].replace('.', '_')}.{_TAGS[m['tag']]}.weight"] = value
        elif rest.endswith(".alpha"):
            out[f"lora_unet_{rest[:-len('.alpha')].replace('.', '_')}.alpha"] = value
        elif rest.endswith((".diff", ".diff_b")):
            stem, tag = rest.rsplit(".", 1)
            out[f"lora_unet_{stem.replace('.', '_')}.{tag}"] = value
        else:
            out[key] = value
    return out


class _Capture(logging.Handler):
    def __init__(self):
        super().__init__(logging.INFO)
        self.lines: list[str] = []

    def emit(self, record):
        self.lines.append(record.getMessage().split(". ")[0][:200])


def to_diffusers(tensors: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], list[str]]:
    """diffusers keys (``transformer.*``, ``text_encoder.*``) and what diffusers' converter said it left out."""
    from diffusers import FluxPipeline

    keys = list(tensors)
    data = dict(tensors) if is_xlabs(keys) else _as_kohya(tensors)
    logger = logging.getLogger("diffusers.loaders.lora_conversion_utils")
    capture = _Capture()
    old_level = logger.level
    logger.addHandler(capture)
    logger.setLevel(logging.INFO)
    try:
        converted = FluxPipeline.lora_state_dict(data)
    except (ValueError, KeyError) as exc:
        raise ValueError(f"diffusers' Flux converter refused it ({str(exc).splitlines()[0][:200]})") from None
    finally:
        logger.removeHandler(capture)
        logger.setLevel(old_level)
    if isinstance(converted, tuple):
        converted = converted[0]
    return dict(converted), capture.lines
