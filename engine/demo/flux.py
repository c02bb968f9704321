"""The Flux family: FLUX.1-dev, Chroma, and the SDNQ int8 copy of the Flux transformer."""

from __future__ import annotations

from pathlib import Path

from engine.demo.common import (
    clip_text_encoder,
    clip_tokenizer,
    flow_match_scheduler,
    seeded,
    stable_sdnq_config,
    t5_encoder,
    t5_tokenizer,
)
from engine.demo.names import (
    FLUX_HEAD_DIM,
    FLUX_HEADS,
    FLUX_JOINT_DIM,
    FLUX_NUM_LAYERS,
    FLUX_NUM_SINGLE_LAYERS,
    FLUX_POOLED_DIM,
)


def flux_vae():
    from diffusers import AutoencoderKL

    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        latent_channels=4,
        block_out_channels=(8, 8),
        norm_num_groups=4,
        layers_per_block=1,
        down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2,
        use_quant_conv=False,
        use_post_quant_conv=False,
        shift_factor=0.0609,
        scaling_factor=1.5035,
    ).eval()


def flux_transformer():
    from diffusers import FluxTransformer2DModel

    return FluxTransformer2DModel(
        patch_size=1,
        in_channels=16,
        num_layers=FLUX_NUM_LAYERS,
        num_single_layers=FLUX_NUM_SINGLE_LAYERS,
        attention_head_dim=FLUX_HEAD_DIM,
        num_attention_heads=FLUX_HEADS,
        joint_attention_dim=FLUX_JOINT_DIM,
        pooled_projection_dim=FLUX_POOLED_DIM,
        guidance_embeds=True,
        axes_dims_rope=(16, 24, 24),
    ).eval()


def build_flux(out: Path):
    from diffusers import FluxPipeline

    with seeded(1001):
        text_encoder = clip_text_encoder()
    with seeded(1002):
        text_encoder_2 = t5_encoder()
    with seeded(1003):
        vae = flux_vae()
    with seeded(1004):
        transformer = flux_transformer()
    pipe = FluxPipeline(
        scheduler=flow_match_scheduler(),
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=clip_tokenizer(),
        text_encoder_2=text_encoder_2,
        tokenizer_2=t5_tokenizer(),
        transformer=transformer,
    )
    pipe.save_pretrained(out, safe_serialization=True)
    return pipe


def build_chroma(out: Path) -> None:
    from diffusers import ChromaPipeline, ChromaTransformer2DModel

    with seeded(2001):
        text_encoder = t5_encoder()
    with seeded(2002):
        vae = flux_vae()
    with seeded(2003):
        # same inner/joint dims and block counts as flux-dev, so the demo IP-Adapter fits both (as the real
        # InstantX adapter fits both FLUX.1-dev and Chroma: 19 double + 38 single blocks, 3072 / 4096)
        transformer = ChromaTransformer2DModel(
            patch_size=1,
            in_channels=16,
            num_layers=FLUX_NUM_LAYERS,
            num_single_layers=FLUX_NUM_SINGLE_LAYERS,
            attention_head_dim=FLUX_HEAD_DIM,
            num_attention_heads=FLUX_HEADS,
            joint_attention_dim=FLUX_JOINT_DIM,
            axes_dims_rope=(16, 24, 24),
            approximator_num_channels=16,
            approximator_hidden_dim=32,
            approximator_layers=1,
        ).eval()
    pipe = ChromaPipeline(
        scheduler=flow_match_scheduler(),
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=t5_tokenizer(),
        transformer=transformer,
    )
    pipe.save_pretrained(out, safe_serialization=True)


def build_flux_sdnq(out: Path, flux_dir: Path, flux) -> None:
    """flux-dev with its transformer quantized to SDNQ int8 through diffusers' native ``quant_method="sdnq"``.

    The other components are the flux-dev ones. Set ``SDNQ_USE_TORCH_COMPILE=0`` before sdnq is first imported
    to skip its import-time torch.compile probe on CPU (about 3 s); the quantization itself runs eagerly here.
    """
    import diffusers
    import sdnq  # noqa: F401 - imported (and its compile decision taken) outside the dynamo patch below
    import torch
    from diffusers import FluxPipeline, FluxTransformer2DModel

    quantization_config = diffusers.SDNQConfig(weights_dtype="int8")
    # One-shot quantization: compiling it costs seconds. Patching dynamo only around the call keeps sdnq's
    # process-wide compile decision (taken at its import) untouched for whoever runs models later.
    with torch._dynamo.config.patch(disable=True):
        transformer = FluxTransformer2DModel.from_pretrained(
            flux_dir, subfolder="transformer", quantization_config=quantization_config
        )
    components = {k: v for k, v in flux.components.items() if k != "transformer"}
    FluxPipeline(**components, transformer=transformer).save_pretrained(out, safe_serialization=True)
    # from_pretrained recorded the temporary build path, and sdnq keeps its skip list in a set: drop the one and
    # sort the other so that the config does not depend on where or in which process it was built
    config_path = out / "transformer" / "config.json"
    stable_sdnq_config(config_path)
