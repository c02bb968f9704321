"""Wan 2.x LoRA key layouts -> the diffusers ``WanTransformer3DModel`` module names.

Wan LoRAs come with the original model's module names (``blocks.N.self_attn.q``, ``cross_attn.k_img``,
``ffn.0``, ``head.head`` ...) under any of the usual prefixes (ComfyUI ``diffusion_model.``, kohya/musubi
``lora_unet_``, diffusers ``transformer.``), with ``lora_down/lora_up`` or ``lora_A/lora_B``, with or without
``alpha``, and the lightx2v distill LoRAs add diff-style keys: ``.diff_b`` (a bias delta) and ``.diff`` (a full
weight delta, on ``head.head`` and on the norms). The generic converter (``lora_files.convert``) already folds
prefixes, tags and alpha; this module gives it the module aliases as flat (``_``-joined) suffixes.

diffusers' ``_convert_non_diffusers_wan_lora_to_diffusers`` is not called: it reads only the ``diffusion_model.``
prefix, drops ``.diff`` weights with an info log line and raises a bare ``ValueError`` on any other key, where
we must count and report every key that is not applied.
"""

from __future__ import annotations

_ATTN = (("q", "to_q"), ("k", "to_k"), ("v", "to_v"), ("o", "to_out_0"))

WAN_ALIASES: tuple[tuple[str, tuple[str, ...]], ...] = (
    *((f"_self_attn_{o}", (f"_attn1_{d}",)) for o, d in _ATTN),
    *((f"_cross_attn_{o}", (f"_attn2_{d}",)) for o, d in _ATTN),
    ("_cross_attn_k_img", ("_attn2_add_k_proj",)),
    ("_cross_attn_v_img", ("_attn2_add_v_proj",)),
    ("_ffn_0", ("_ffn_net_0_proj",)),
    ("_ffn_2", ("_ffn_net_2",)),
    ("head_head", ("proj_out",)),
    ("time_projection_1", ("condition_embedder_time_proj",)),
    ("text_embedding_0", ("condition_embedder_text_embedder_linear_1",)),
    ("text_embedding_2", ("condition_embedder_text_embedder_linear_2",)),
    ("time_embedding_0", ("condition_embedder_time_embedder_linear_1",)),
    ("time_embedding_2", ("condition_embedder_time_embedder_linear_2",)),
    ("img_emb_proj_1", ("condition_embedder_image_embedder_ff_net_0_proj",)),
    ("img_emb_proj_3", ("condition_embedder_image_embedder_ff_net_2",)),
)

#: original Wan name -> diffusers name, for the demo builder and the tests (the inverse of the aliases)
ORIGINAL_NAMES = {"attn1.to_q": "self_attn.q", "attn1.to_k": "self_attn.k", "attn1.to_v": "self_attn.v",
                  "attn1.to_out.0": "self_attn.o", "attn2.to_q": "cross_attn.q", "attn2.to_k": "cross_attn.k",
                  "attn2.to_v": "cross_attn.v", "attn2.to_out.0": "cross_attn.o", "ffn.net.0.proj": "ffn.0",
                  "ffn.net.2": "ffn.2", "attn2.add_k_proj": "cross_attn.k_img", "attn2.add_v_proj": "cross_attn.v_img"}


def original_name(diffusers_module: str) -> str:
    """``blocks.3.attn1.to_q`` -> ``blocks.3.self_attn.q`` (``proj_out`` -> ``head.head``)."""
    if diffusers_module == "proj_out":
        return "head.head"
    for ours, theirs in ORIGINAL_NAMES.items():
        if diffusers_module.endswith("." + ours):
            return diffusers_module[: -len(ours)] + theirs
    return diffusers_module
