"""Qwen-Image, and its LoRAs in every key layout real Qwen-Image LoRAs come in."""

from __future__ import annotations

from pathlib import Path

from engine.demo.common import flow_match_scheduler, lora_tensors, qwen_tokenizer, save_lora, seeded
from engine.demo.names import QWEN_LORA_FILES, QWEN_LORA_LAYOUT_FILES, QWEN_LORA_TARGETS, QWEN_SPECIAL_TOKENS


def build_qwen(out: Path, root: Path) -> None:
    from diffusers import AutoencoderKLQwenImage, QwenImagePipeline, QwenImageTransformer2DModel
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

    tokenizer = qwen_tokenizer()
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in QWEN_SPECIAL_TOKENS}
    config = Qwen2_5_VLConfig(
        text_config=dict(
            hidden_size=16,
            intermediate_size=16,
            num_hidden_layers=2,
            num_attention_heads=2,
            num_key_value_heads=2,
            vocab_size=512,
            rope_scaling={"mrope_section": [1, 1, 2], "rope_type": "default"},
            bos_token_id=None,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        ),
        vision_config=dict(depth=2, hidden_size=16, intermediate_size=16, num_heads=2, out_hidden_size=16),
        vocab_size=512,
        image_token_id=ids["<|image_pad|>"],
        video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"],
    )
    with seeded(4001):
        text_encoder = Qwen2_5_VLForConditionalGeneration(config).eval()
    with seeded(4002):
        vae = AutoencoderKLQwenImage(
            base_dim=8,
            z_dim=4,
            dim_mult=[1, 2, 4],
            num_res_blocks=1,
            temperal_downsample=[False, True],
            latents_mean=[0.0] * 4,
            latents_std=[1.0] * 4,
        ).eval()
    with seeded(4003):
        transformer = QwenImageTransformer2DModel(
            patch_size=2,
            in_channels=16,
            out_channels=4,
            num_layers=2,
            attention_head_dim=16,
            num_attention_heads=3,
            joint_attention_dim=16,
            axes_dims_rope=(8, 4, 4),
        ).eval()
    pipe = QwenImagePipeline(
        scheduler=flow_match_scheduler(),
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        transformer=transformer,
    )
    pipe.save_pretrained(out, safe_serialization=True)
    for i, rel in enumerate(QWEN_LORA_FILES):
        save_lora(QwenImagePipeline, transformer, QWEN_LORA_TARGETS, seed=4100 + i, out=root / rel)
    save_qwen_layout_loras(transformer, root)


def save_qwen_layout_loras(transformer, root: Path) -> None:
    """Qwen-Image LoRAs as ComfyUI, kohya (musubi-tuner / ai-toolkit exports) and seed 004's aliases name them."""
    import torch
    from safetensors.torch import save_file

    mlp = ["img_mlp.net.0.proj", "img_mlp.net.2", "txt_mlp.net.0.proj", "txt_mlp.net.2"]
    comfy = lora_tensors(transformer, ["to_q", "to_k", "to_v", *mlp], seed=4201)
    save_file({f"diffusion_model.{k}": v for k, v in comfy.items()}, str(root / QWEN_LORA_LAYOUT_FILES["comfyui"]))

    kohya = {}
    for key, value in lora_tensors(transformer, ["to_out.0", "to_add_out", "img_mod.1", "txt_mod.1"], 4202).items():
        module, part = key.rsplit(".lora_", 1)
        stem = "lora_unet_" + module.replace(".", "_")
        kohya[f"{stem}.lora_{'down' if part.startswith('A') else 'up'}.weight"] = value
        kohya[f"{stem}.alpha"] = torch.tensor(2.0)  # rank 4, alpha 2: the delta is scaled by 0.5
    save_file(kohya, str(root / QWEN_LORA_LAYOUT_FILES["kohya"]))

    # seed 004's aliases: fused q/k/v (one A, B stacked), attn.to_out without .0, out_proj_context, dotted tags
    seed004 = {}
    base = lora_tensors(transformer, ["to_q", "to_out.0", "to_add_out"], 4203)
    with seeded(4204):
        for block in range(len(transformer.transformer_blocks)):
            prefix = f"transformer_blocks.{block}"
            a = base[f"{prefix}.attn.to_q.lora_A.weight"]
            b = torch.cat([base[f"{prefix}.attn.to_q.lora_B.weight"], torch.randn_like(
                base[f"{prefix}.attn.to_q.lora_B.weight"].repeat(2, 1)) * 0.1])
            seed004[f"{prefix}.attn.to_qkv.lora.down.weight"] = a
            seed004[f"{prefix}.attn.to_qkv.lora.up.weight"] = b.contiguous()
            seed004[f"{prefix}.attn.to_out.lora.down.weight"] = base[f"{prefix}.attn.to_out.0.lora_A.weight"]
            seed004[f"{prefix}.attn.to_out.lora.up.weight"] = base[f"{prefix}.attn.to_out.0.lora_B.weight"]
            seed004[f"{prefix}.out_proj_context.lora_A.weight"] = base[f"{prefix}.attn.to_add_out.lora_A.weight"]
            seed004[f"{prefix}.out_proj_context.lora_B.weight"] = base[f"{prefix}.attn.to_add_out.lora_B.weight"]
    save_file(seed004, str(root / QWEN_LORA_LAYOUT_FILES["seed004"]))
