"""A demo component's state dict in the key layout its real single file has (ComfyUI / BFL / original Wan names):
what the fake ComfyUI folder (``comfy``) and the extra formats (``formats``) write."""

from __future__ import annotations

import json
from pathlib import Path

from engine import demo


def original_state(demo_dir: Path, model: str, component: str) -> dict:
    """The state dict of one demo component in the key layout its real single file has."""
    from safetensors.torch import load_file

    from engine.comfy_models import layouts, wan_vae

    folder = demo_dir / model / component if component else demo_dir / model
    state = {}
    for f in sorted(folder.glob("*.safetensors")):
        state.update(load_file(str(f)))
    config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    if component == "vae" and model != demo.FLUX_DEV:  # the Wan 2.1 / 2.2 and Qwen-Image VAEs: the original Wan layout
        return wan_vae.to_original(state, config)
    if model in (demo.FLUX_DEV, demo.CHROMA) and component == "transformer":
        if model == demo.CHROMA:
            return {f"model.diffusion_model.{k}": v for k, v in layouts.chroma_to_original(
                state, config["num_layers"], config["num_single_layers"], config["approximator_layers"]).items()}
        return layouts.flux_to_original(state, config["num_layers"], config["num_single_layers"])
    if component == "vae" and model == demo.FLUX_DEV:
        return layouts.ldm_vae_to_original(state, len(config["down_block_types"]))
    if model in (demo.WAN22_I2V, demo.WAN22_TI2V) and component.startswith("transformer"):
        return layouts.wan_to_original(state)
    if model == demo.QWEN_IMAGE and component == "text_encoder":
        return layouts.qwen25vl_to_comfy(state)
    if model == demo.SIGLIP or (model == demo.FLUX_DEV and component == "text_encoder"):
        # the transformers 4 names real clip_l / siglip files carry (transformers 5 saves without the prefix)
        prefix = "vision_model." if model == demo.SIGLIP else "text_model."
        return {prefix + k: v for k, v in state.items()}
    return state
