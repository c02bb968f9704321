"""diffusers layout -> the original (BFL / Wan / ComfyUI) key layout of single-file checkpoints: the inverse of
diffusers' ``single_file_utils`` converters, so the demo builder can write tiny ComfyUI-style files that the real
single-file path (``from_single_file`` and diffusers' converters) loads back. Only the demo uses this; a test
checks that diffusers' converters turn each result back into the diffusers state dict exactly."""

from __future__ import annotations

import torch


def _swap_scale_shift(weight: torch.Tensor) -> torch.Tensor:
    scale, shift = weight.chunk(2, dim=0)  # diffusers: (scale, shift); the original: (shift, scale)
    return torch.cat([shift, scale], dim=0)


def _double_blocks(sd: dict, out: dict, n: int, modulation: bool) -> None:
    for i in range(n):
        d, o = f"transformer_blocks.{i}.", f"double_blocks.{i}."
        if modulation:
            for part in ("weight", "bias"):
                out[f"{o}img_mod.lin.{part}"] = sd[f"{d}norm1.linear.{part}"]
                out[f"{o}txt_mod.lin.{part}"] = sd[f"{d}norm1_context.linear.{part}"]
        for part in ("weight", "bias"):
            out[f"{o}img_attn.qkv.{part}"] = torch.cat([sd[f"{d}attn.to_{x}.{part}"] for x in "qkv"])
            out[f"{o}txt_attn.qkv.{part}"] = torch.cat([sd[f"{d}attn.add_{x}_proj.{part}"] for x in "qkv"])
            out[f"{o}img_mlp.0.{part}"] = sd[f"{d}ff.net.0.proj.{part}"]
            out[f"{o}img_mlp.2.{part}"] = sd[f"{d}ff.net.2.{part}"]
            out[f"{o}txt_mlp.0.{part}"] = sd[f"{d}ff_context.net.0.proj.{part}"]
            out[f"{o}txt_mlp.2.{part}"] = sd[f"{d}ff_context.net.2.{part}"]
            out[f"{o}img_attn.proj.{part}"] = sd[f"{d}attn.to_out.0.{part}"]
            out[f"{o}txt_attn.proj.{part}"] = sd[f"{d}attn.to_add_out.{part}"]
        out[f"{o}img_attn.norm.query_norm.scale"] = sd[f"{d}attn.norm_q.weight"]
        out[f"{o}img_attn.norm.key_norm.scale"] = sd[f"{d}attn.norm_k.weight"]
        out[f"{o}txt_attn.norm.query_norm.scale"] = sd[f"{d}attn.norm_added_q.weight"]
        out[f"{o}txt_attn.norm.key_norm.scale"] = sd[f"{d}attn.norm_added_k.weight"]


def _single_blocks(sd: dict, out: dict, n: int, modulation: bool) -> None:
    for i in range(n):
        d, o = f"single_transformer_blocks.{i}.", f"single_blocks.{i}."
        for part in ("weight", "bias"):
            if modulation:
                out[f"{o}modulation.lin.{part}"] = sd[f"{d}norm.linear.{part}"]
            out[f"{o}linear1.{part}"] = torch.cat([sd[f"{d}attn.to_{x}.{part}"] for x in "qkv"] + [sd[f"{d}proj_mlp.{part}"]])
            out[f"{o}linear2.{part}"] = sd[f"{d}proj_out.{part}"]
        out[f"{o}norm.query_norm.scale"] = sd[f"{d}attn.norm_q.weight"]
        out[f"{o}norm.key_norm.scale"] = sd[f"{d}attn.norm_k.weight"]


def _embedders(sd: dict, out: dict, pairs: dict[str, str]) -> None:
    for theirs, ours in pairs.items():
        for part in ("weight", "bias"):
            if f"{ours}.{part}" in sd:
                out[f"{theirs}.{part}"] = sd[f"{ours}.{part}"]


def flux_to_original(sd: dict, num_layers: int, num_single_layers: int) -> dict:
    """FluxTransformer2DModel state dict -> the BFL ``flux1-dev.safetensors`` layout."""
    out: dict = {}
    _embedders(sd, out, {
        "time_in.in_layer": "time_text_embed.timestep_embedder.linear_1",
        "time_in.out_layer": "time_text_embed.timestep_embedder.linear_2",
        "vector_in.in_layer": "time_text_embed.text_embedder.linear_1",
        "vector_in.out_layer": "time_text_embed.text_embedder.linear_2",
        "guidance_in.in_layer": "time_text_embed.guidance_embedder.linear_1",
        "guidance_in.out_layer": "time_text_embed.guidance_embedder.linear_2",
        "txt_in": "context_embedder", "img_in": "x_embedder", "final_layer.linear": "proj_out",
    })
    _double_blocks(sd, out, num_layers, modulation=True)
    _single_blocks(sd, out, num_single_layers, modulation=True)
    for part in ("weight", "bias"):
        out[f"final_layer.adaLN_modulation.1.{part}"] = _swap_scale_shift(sd[f"norm_out.linear.{part}"])
    return out


def chroma_to_original(sd: dict, num_layers: int, num_single_layers: int, num_guidance_layers: int) -> dict:
    """ChromaTransformer2DModel state dict -> lodestones' ``chroma-*.safetensors`` layout."""
    out: dict = {}
    _embedders(sd, out, {"distilled_guidance_layer.in_proj": "distilled_guidance_layer.in_proj",
                         "distilled_guidance_layer.out_proj": "distilled_guidance_layer.out_proj",
                         "txt_in": "context_embedder", "img_in": "x_embedder", "final_layer.linear": "proj_out"})
    for i in range(num_guidance_layers):
        g = f"distilled_guidance_layer.layers.{i}."
        _embedders(sd, out, {f"{g}in_layer": f"{g}linear_1", f"{g}out_layer": f"{g}linear_2"})
        out[f"distilled_guidance_layer.norms.{i}.scale"] = sd[f"distilled_guidance_layer.norms.{i}.weight"]
    _double_blocks(sd, out, num_layers, modulation=False)
    _single_blocks(sd, out, num_single_layers, modulation=False)
    return out


# diffusers name -> Wan name, applied in this order (the inverse of convert_wan_transformer_to_diffusers' renames)
_WAN_RENAMES = (
    ("condition_embedder.time_embedder.linear_1", "time_embedding.0"),
    ("condition_embedder.time_embedder.linear_2", "time_embedding.2"),
    ("condition_embedder.text_embedder.linear_1", "text_embedding.0"),
    ("condition_embedder.text_embedder.linear_2", "text_embedding.2"),
    ("condition_embedder.time_proj", "time_projection.1"),
    ("attn2", "cross_attn"), ("attn1", "self_attn"),
    (".to_out.0.", ".o."), (".to_q.", ".q."), (".to_k.", ".k."), (".to_v.", ".v."),
    (".add_k_proj.", ".k_img."), (".add_v_proj.", ".v_img."), (".norm_added_k.", ".norm_k_img."),
    ("ffn.net.0.proj", "ffn.0"), ("ffn.net.2", "ffn.2"),
    ("norm2", "norm__swap"), ("norm3", "norm2"), ("norm__swap", "norm3"),
)


def wan_to_original(sd: dict) -> dict:
    """WanTransformer3DModel state dict -> the Wan-AI / Comfy-Org ``wan2.2_*.safetensors`` layout."""
    out = {}
    for key, value in sd.items():
        if key == "scale_shift_table":
            new = "head.modulation"
        elif key.startswith("proj_out."):
            new = "head.head." + key[len("proj_out."):]
        else:
            new = key.replace("scale_shift_table", "modulation")
            for ours, theirs in _WAN_RENAMES:
                new = new.replace(ours, theirs)
        out[new] = value
    return out


def qwen25vl_to_comfy(sd: dict) -> dict:
    """Qwen2.5-VL (transformers 5 names) -> the names of Comfy-Org's ``qwen_2.5_vl_7b.safetensors`` (the
    transformers 4 layout: ``model.layers.*``, ``visual.*``)."""
    out = {}
    for key, value in sd.items():
        if key.startswith("model.language_model."):
            key = "model." + key[len("model.language_model."):]
        elif key.startswith("model.visual."):
            key = "visual." + key[len("model.visual."):]
        out[key] = value
    return out


def ldm_vae_to_original(sd: dict, num_blocks: int) -> dict:
    """AutoencoderKL state dict -> the LDM layout of BFL's ``ae.safetensors`` (the inverse of diffusers'
    ``convert_ldm_vae_checkpoint``: decoder up blocks counted from the other end, 1x1 conv attention weights)."""
    out = {}
    attn = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out.0": "proj_out"}
    for key, value in sd.items():
        side, _, rest = key.partition(".")
        parts = rest.split(".")
        if rest.startswith("mid_block.attentions.0."):
            name = rest[len("mid_block.attentions.0."):]
            for ours, theirs in attn.items():
                name = name.replace(ours + ".", theirs + ".")
            new = f"{side}.mid.attn_1.{name}"
            value = value[:, :, None, None] if value.ndim == 2 else value
        elif rest.startswith("mid_block.resnets."):
            new = f"{side}.mid.block_{int(parts[2]) + 1}." + ".".join(parts[3:])
        elif parts[0] in ("down_blocks", "up_blocks"):
            i = int(parts[1]) if side == "encoder" else num_blocks - 1 - int(parts[1])
            where = "down" if side == "encoder" else "up"
            if parts[2] == "resnets":
                new = f"{side}.{where}.{i}.block.{parts[3]}." + ".".join(parts[4:])
            else:  # downsamplers.0.conv / upsamplers.0.conv
                new = f"{side}.{where}.{i}.{'downsample' if where == 'down' else 'upsample'}." + ".".join(parts[4:])
        else:
            new = key.replace("conv_norm_out", "norm_out")
        out[new.replace("conv_shortcut", "nin_shortcut")] = value
    return out
