"""The Wan VAE key layouts: the original one (Wan-AI's ``Wan2.1_VAE.pth`` / ``Wan2.2_VAE.pth``, and Comfy-Org's
repackaged ``wan_2.1_vae.safetensors``, ``wan2.2_vae.safetensors`` and ``qwen_image_vae.safetensors``, which
ComfyUI loads with its Wan VAE class) and diffusers' (``AutoencoderKLWan``, ``AutoencoderKLQwenImage``).

Written here rather than taken from diffusers 0.42.1 because its single-file path covers only part of it:
``convert_wan_vae_to_diffusers`` hard-codes the Wan 2.1 decoder's depth (flat indices 0-14 for 4 levels of 3
residual blocks), has no Wan 2.2 mapping (the 2.2 VAE nests ``downsamples.X.downsamples.Y``; diffusers keeps that
only in ``scripts/convert_wan_to_diffusers.py`` ``convert_vae_22``, not importable) and ``AutoencoderKLQwenImage``
is not single-file loadable at all. The names follow those two upstream functions; the decoder's flat indices are
computed from the config (``dim_mult``, ``num_res_blocks``), so the same code maps the real VAEs and the tiny demo
ones (a test holds it against diffusers' converter at the real Wan 2.1 depth)."""

from __future__ import annotations

import re

# original residual-block names -> diffusers' (both layouts)
_RESIDUAL = (("residual.0.gamma", "norm1.gamma"), ("residual.2.", "conv1."), ("residual.3.gamma", "norm2.gamma"),
             ("residual.6.", "conv2."), ("shortcut.", "conv_shortcut."))
_FIXED = {"conv1.": "quant_conv.", "conv2.": "post_quant_conv.", "encoder.conv1.": "encoder.conv_in.",
          "decoder.conv1.": "decoder.conv_in.", "encoder.head.0.": "encoder.norm_out.", "encoder.head.2.": "encoder.conv_out.",
          "decoder.head.0.": "decoder.norm_out.", "decoder.head.2.": "decoder.conv_out.",
          "encoder.middle.0.": "encoder.mid_block.resnets.0.", "encoder.middle.1.": "encoder.mid_block.attentions.0.",
          "encoder.middle.2.": "encoder.mid_block.resnets.1.", "decoder.middle.0.": "decoder.mid_block.resnets.0.",
          "decoder.middle.1.": "decoder.mid_block.attentions.0.", "decoder.middle.2.": "decoder.mid_block.resnets.1."}
_FIXED_BACK = {v: k for k, v in _FIXED.items()}
_MIDDLE_RESNET = re.compile(r"^(en|de)coder\.mid_block\.resnets\.")


def is_wan22_layout(keys) -> bool:
    """The Wan 2.2 VAE nests its residual blocks (``encoder.downsamples.0.downsamples.0.``)."""
    return any(k.startswith("encoder.downsamples.0.downsamples.") for k in keys)


def _residual(rest: str) -> str:
    for theirs, ours in _RESIDUAL:
        if rest.startswith(theirs):
            return ours + rest[len(theirs):]
    return rest


def _residual_back(rest: str) -> str:
    for theirs, ours in _RESIDUAL:
        if rest.startswith(ours):
            return theirs + rest[len(ours):]
    return rest


def _prefix(key: str, table: dict) -> tuple[str, str] | None:
    """(the longest matching prefix's replacement, rest of the key)."""
    for prefix in sorted(table, key=len, reverse=True):
        if key.startswith(prefix):
            return table[prefix], key[len(prefix):]
    return None


def _decoder_slots(config: dict) -> list[tuple[int, str]]:
    """Wan 2.1's flat ``decoder.upsamples`` list: (level, "resnets.J" or "upsamplers.0") per index."""
    levels, per_level = len(config["dim_mult"]), config["num_res_blocks"] + 1
    slots = []
    for level in range(levels):
        slots += [(level, f"resnets.{j}") for j in range(per_level)]
        if level != levels - 1:
            slots.append((level, "upsamplers.0"))
    return slots


def to_diffusers(state: dict, config: dict) -> dict:
    """An original-layout Wan (2.1, 2.2) / Qwen-Image VAE state dict in diffusers' names. Unknown keys pass
    through unchanged, so the strict load after this names them."""
    slots = _decoder_slots(config)
    out = {}
    for key, value in state.items():
        fixed = _prefix(key, _FIXED) if not key.startswith(("encoder.downsamples.", "decoder.upsamples.")) else None
        if fixed:
            new, rest = fixed
            new += _residual(rest) if "resnets" in new else rest
        elif key.startswith(("encoder.downsamples.", "decoder.upsamples.")):
            side, _, index, *rest = key.split(".")
            rest = ".".join(rest)
            blocks = "down_blocks" if side == "encoder" else "up_blocks"
            inner = "downsamples." if side == "encoder" else "upsamples."
            if rest.startswith(inner):  # Wan 2.2: block X, inner slot Y
                slot, _, rest = rest[len(inner):].partition(".")
                if rest.startswith(("residual.", "shortcut.")):
                    new = f"{side}.{blocks}.{index}.resnets.{slot}.{_residual(rest)}"
                else:  # the block's resample (and time_conv): one per block in diffusers
                    new = f"{side}.{blocks}.{index}.{'downsampler' if side == 'encoder' else 'upsampler'}.{rest}"
            elif side == "encoder":  # Wan 2.1 encoder: the same flat list in both layouts
                new = f"encoder.down_blocks.{index}.{_residual(rest)}"
            elif int(index) < len(slots):
                level, slot = slots[int(index)]
                new = f"decoder.up_blocks.{level}.{slot}.{_residual(rest) if slot.startswith('resnets') else rest}"
            else:
                new = key
        else:
            new = key
        out[new] = value
    return out


def to_original(state: dict, config: dict) -> dict:
    """The inverse of ``to_diffusers`` (diffusers -> the original layout), for the demo's tiny files."""
    slots = {f"{level}.{slot}": i for i, (level, slot) in enumerate(_decoder_slots(config))}
    wan22 = bool(config.get("is_residual"))
    nres = config["num_res_blocks"]
    out = {}
    for key, value in state.items():
        fixed = _prefix(key, _FIXED_BACK) if not re.match(r"^(encoder\.down|decoder\.up)_blocks\.", key) else None
        if fixed:
            new, rest = fixed
            new += _residual_back(rest) if _MIDDLE_RESNET.match(key) else rest
        elif key.startswith(("encoder.down_blocks.", "decoder.up_blocks.")):
            side, _, index, *rest = key.split(".")
            rest = ".".join(rest)
            outer = "downsamples" if side == "encoder" else "upsamples"
            if wan22:
                if rest.startswith("resnets."):
                    _, slot, rest = rest.split(".", 2)
                    new = f"{side}.{outer}.{index}.{outer}.{slot}.{_residual_back(rest)}"
                else:  # downsampler / upsampler: after the block's residual blocks
                    sampler, _, rest = rest.partition(".")
                    slot = nres if side == "encoder" else nres + 1
                    new = f"{side}.{outer}.{index}.{outer}.{slot}.{rest}"
            elif side == "encoder":
                new = f"encoder.downsamples.{index}.{_residual_back(rest)}"
            else:
                kind, j, rest = rest.split(".", 2)
                flat = slots[f"{index}.{kind}.{j}"]
                new = f"decoder.upsamples.{flat}.{_residual_back(rest) if kind == 'resnets' else rest}"
        else:
            new = key
        out[new] = value
    return out
