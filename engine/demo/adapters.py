"""Adapters on the Flux demo: SigLIP, the InstantX IP-Adapter (``.bin`` and safetensors), OmniX's task adapters."""

from __future__ import annotations

import json
from pathlib import Path

from engine.demo.common import save_lora, seeded
from engine.demo.names import (
    FLUX_DEV,
    IP_ADAPTER_BIN_NAME,
    IP_ADAPTER_NUM_TOKENS,
    IP_ADAPTER_WEIGHT_NAME,
    OMNIX_LORA_RANK,
    OMNIX_LORA_TARGETS,
    OMNIX_TASKS,
    OMNIX_WEIGHT_NAME,
    SIGLIP,
    SIGLIP_DIM,
)


def build_siglip(out: Path) -> None:
    from transformers import SiglipImageProcessor, SiglipVisionConfig, SiglipVisionModel

    config = SiglipVisionConfig(
        hidden_size=SIGLIP_DIM,
        intermediate_size=37,
        num_hidden_layers=2,
        num_attention_heads=4,
        image_size=32,
        patch_size=8,
    )
    with seeded(5001):
        model = SiglipVisionModel(config).eval()
    model.save_pretrained(out, safe_serialization=True)
    SiglipImageProcessor(size={"height": 32, "width": 32}).save_pretrained(out)


def build_ip_adapter(out: Path, transformer) -> None:
    """InstantX/FLUX.1-dev-IP-Adapter layout, sized for the demo flux-dev transformer.

    ``image_proj``: MLPProjModel ``proj.0`` Linear(siglip, 2*siglip) -> GELU -> ``proj.2`` Linear(2*siglip,
    joint*num_tokens) -> reshape -> ``norm`` LayerNorm(joint). ``ip_adapter.<i>.to_{k,v}_ip``: Linear(joint, inner,
    bias=False) for every attention processor of the transformer (double blocks, then single blocks).
    """
    import torch
    from safetensors.torch import save_file
    from torch import nn

    joint = transformer.config.joint_attention_dim
    inner = transformer.config.num_attention_heads * transformer.config.attention_head_dim
    processors = list(transformer.attn_processors)
    with seeded(6001):
        proj = nn.Sequential(
            nn.Linear(SIGLIP_DIM, 2 * SIGLIP_DIM),
            nn.GELU(),
            nn.Linear(2 * SIGLIP_DIM, joint * IP_ADAPTER_NUM_TOKENS),
        )
        norm = nn.LayerNorm(joint)
        nn.init.normal_(norm.weight, 1.0, 0.02)
        nn.init.normal_(norm.bias, 0.0, 0.02)
        state: dict[str, torch.Tensor] = {}
        for key, value in proj.state_dict().items():
            state[f"image_proj.proj.{key}"] = value
        for key, value in norm.state_dict().items():
            state[f"image_proj.norm.{key}"] = value
        for i in range(len(processors)):
            for kind in ("to_k_ip", "to_v_ip"):
                state[f"ip_adapter.{i}.{kind}.weight"] = nn.Linear(joint, inner, bias=False).weight
    state = {k: v.detach().to(torch.float32).contiguous() for k, v in state.items()}
    out.mkdir(parents=True, exist_ok=True)
    save_file(state, out / IP_ADAPTER_WEIGHT_NAME, metadata={"format": "pt"})
    # the published file: torch.save({"image_proj": sd, "ip_adapter": sd}) with the prefixes stripped per part
    nested = {part: {k[len(part) + 1:]: v for k, v in state.items() if k.startswith(part + ".")}
              for part in ("image_proj", "ip_adapter")}
    torch.save(nested, out / IP_ADAPTER_BIN_NAME)
    config = {
        "format": "instantx",
        "weight_name": IP_ADAPTER_WEIGHT_NAME,
        "base_model": FLUX_DEV,
        "image_encoder": SIGLIP,
        "num_tokens": IP_ADAPTER_NUM_TOKENS,
        "image_embed_dim": SIGLIP_DIM,
        "cross_attention_dim": joint,
        "hidden_size": inner,
        "num_attention_heads": transformer.config.num_attention_heads,
        "attention_head_dim": transformer.config.attention_head_dim,
        "num_double_blocks": transformer.config.num_layers,
        "num_single_blocks": transformer.config.num_single_layers,
        "processors": processors,
    }
    (out / "config.json").write_text(json.dumps(config, indent=2), encoding="utf-8")


def build_omnix(out: Path, transformer) -> None:
    """``KevinHuang/OmniX`` layout: ``<task>/<adapter>/pytorch_lora_weights.safetensors`` (upstream's
    ``load_task_specific_adapters`` path), keys ``transformer.<module>.lora_{A,B}.weight``, no adapter metadata."""
    from diffusers import FluxPipeline

    seed = 7000
    for task, adapters in OMNIX_TASKS.items():
        for adapter in adapters:
            seed += 1
            save_lora(FluxPipeline, transformer, OMNIX_LORA_TARGETS, seed, out / task / adapter / OMNIX_WEIGHT_NAME,
                       rank=OMNIX_LORA_RANK, with_metadata=False)
