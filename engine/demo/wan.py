"""The Wan 2.2 family: the I2V A14B expert pair, TI2V 5B, and the TurboWan ``.pth`` experts."""

from __future__ import annotations

from pathlib import Path

from engine.demo.common import seeded, t5_encoder, t5_tokenizer
from engine.demo.names import FLUX_JOINT_DIM, WAN_BOUNDARY_RATIO


def wan_transformer():
    from diffusers import WanTransformer3DModel

    return WanTransformer3DModel(
        patch_size=(1, 2, 2),
        num_attention_heads=2,
        attention_head_dim=12,
        in_channels=36,
        out_channels=16,
        text_dim=FLUX_JOINT_DIM,
        freq_dim=256,
        ffn_dim=32,
        num_layers=2,
        cross_attn_norm=True,
        qk_norm="rms_norm_across_heads",
        rope_max_seq_len=32,
    ).eval()


def build_wan(out: Path):
    from diffusers import AutoencoderKLWan, UniPCMultistepScheduler, WanImageToVideoPipeline

    with seeded(3001):
        text_encoder = t5_encoder(umt5=True)
    with seeded(3002):
        vae = AutoencoderKLWan(
            base_dim=3,
            z_dim=16,
            dim_mult=[1, 1, 1, 1],
            num_res_blocks=1,
            temperal_downsample=[False, True, True],
        ).eval()
    with seeded(3003):
        transformer = wan_transformer()  # high-noise expert
    with seeded(3004):
        transformer_2 = wan_transformer()  # low-noise expert
    scheduler = UniPCMultistepScheduler(prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=3.0)
    pipe = WanImageToVideoPipeline(
        tokenizer=t5_tokenizer(),
        text_encoder=text_encoder,
        vae=vae,
        scheduler=scheduler,
        image_processor=None,
        image_encoder=None,
        transformer=transformer,
        transformer_2=transformer_2,
        boundary_ratio=WAN_BOUNDARY_RATIO,
    )
    pipe.save_pretrained(out, safe_serialization=True)
    return pipe


def build_wan_ti2v(out: Path) -> None:
    """Wan2.2-TI2V-5B-Diffusers: a WanPipeline with ``expand_timesteps`` (the start image is latent frame 0, with
    timestep 0 there), one 48-in/48-out transformer and the Wan 2.2 VAE (48 channels, patchified, 16x spatial)."""
    from diffusers import AutoencoderKLWan, UniPCMultistepScheduler, WanPipeline, WanTransformer3DModel

    with seeded(3101):
        text_encoder = t5_encoder(umt5=True)
    with seeded(3102):
        vae = AutoencoderKLWan(base_dim=8, decoder_base_dim=8, z_dim=48, dim_mult=[1, 1, 1, 1], num_res_blocks=1,
                               temperal_downsample=[False, True, True], is_residual=True, in_channels=12,
                               out_channels=12, patch_size=2, scale_factor_spatial=16, scale_factor_temporal=4,
                               latents_mean=[0.0] * 48, latents_std=[1.0] * 48).eval()
    with seeded(3103):
        transformer = WanTransformer3DModel(
            patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=12, in_channels=48, out_channels=48,
            text_dim=FLUX_JOINT_DIM, freq_dim=256, ffn_dim=32, num_layers=2, cross_attn_norm=True,
            qk_norm="rms_norm_across_heads", rope_max_seq_len=32,
        ).eval()
    scheduler = UniPCMultistepScheduler(prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=5.0)
    WanPipeline(tokenizer=t5_tokenizer(), text_encoder=text_encoder, vae=vae, scheduler=scheduler,
                transformer=transformer, transformer_2=None, boundary_ratio=None,
                expand_timesteps=True).save_pretrained(out, safe_serialization=True)


def sla_proj_l(module, seed: int) -> dict:
    """Per block, the linear branch SLA fine-tuning trains (``proj_l``: Linear(head_dim, head_dim); upstream
    initialises it to zero, the released experts carry trained, non-zero values), in diffusers naming."""
    import torch

    g = torch.Generator().manual_seed(seed)
    out = {}
    for i, block in enumerate(module.blocks):
        d = block.attn1.inner_dim // block.attn1.heads
        out[f"blocks.{i}.attn1.proj_l.weight"] = torch.randn(d, d, generator=g) * 0.5
        out[f"blocks.{i}.attn1.proj_l.bias"] = torch.randn(d, generator=g) * 0.1
    return out


def build_turbowan(out: Path, wan) -> None:
    """The wan22-i2v experts written as TurboDiffusion writes its SLA-finetuned checkpoints
    (``torch.save(net.state_dict())`` in upstream's Wan key layout, every block's
    ``self_attn.attn_op.local_attn.proj_l``), plain and ``-quant``, so the conversion path loads real-layout
    files."""
    import torch

    from engine.video.turbowan import to_upstream

    out.mkdir(parents=True, exist_ok=True)
    for n, (expert, module) in enumerate((("high", wan.transformer), ("low", wan.transformer_2))):
        state = {k: v.detach().clone() for k, v in module.state_dict().items()}
        state.update(sla_proj_l(module, 3201 + n))
        for suffix, quantized in (("", False), ("-quant", True)):
            torch.save(to_upstream(state, quantized), out / f"TurboWan2.2-I2V-A14B-{expert}-720P{suffix}.pth")
