"""Ideogram 4: a tiny stand-in for the catalog's SDNQ entry, in the folder layout of a diffusers
``Ideogram4Pipeline`` repo (``model_index.json``; ``scheduler/``, ``text_encoder/`` (a head-less ``Qwen3VLModel``),
``tokenizer/``, ``transformer/`` and ``unconditional_transformer/`` (two ``Ideogram4Transformer2DModel``: the
pipeline's asymmetric guidance), ``vae/`` (``AutoencoderKLFlux2``)); ``prompt_enhancer_head`` is optional in the
pipeline and left out, as prompt upsampling is not offered. Both transformers are SDNQ-quantized through diffusers'
``quant_method="sdnq"`` as the flux-dev-sdnq-int8 stand-in is (int8 here; the catalog's entry is 4-bit dynamic
with a Hadamard rotation: the loading path, ``from_pretrained`` reading ``quantization_config``, is the same).
The hub repo's own file listing was not seen from here: the folder names are those ``Ideogram4Pipeline``
registers, which ``from_pretrained`` of any diffusers repo of it requires.

Shapes that must fit: the pipeline taps 13 fixed decoder layers of the text encoder (indices 0..35, so it needs
36 layers), concatenated into ``llm_features_dim = 13 * hidden``; the transformer's ``in_channels`` are the VAE's
latent channels times the 2 x 2 patch; the rotary sections sum to half the head dim."""

from __future__ import annotations

from pathlib import Path

from engine.demo.common import qwen_tokenizer, seeded, stable_sdnq_config

TEXT_HIDDEN = 16
TAPPED_LAYERS = 13  # len(diffusers.pipelines.ideogram4.pipeline_ideogram4.QWEN3_VL_ACTIVATION_LAYERS)
LATENT_CHANNELS = 4
CHAT_TEMPLATE = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
                 "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")


def text_encoder():
    from transformers import Qwen3VLConfig, Qwen3VLModel

    config = Qwen3VLConfig(
        text_config=dict(vocab_size=320, hidden_size=TEXT_HIDDEN, intermediate_size=32, num_hidden_layers=36,
                         num_attention_heads=2, num_key_value_heads=1, head_dim=8, max_position_embeddings=4096,
                         rope_parameters={"rope_type": "default", "rope_theta": 5000000.0, "mrope_section": [2, 1, 1],
                                          "mrope_interleaved": True}),
        vision_config=dict(depth=1, hidden_size=16, intermediate_size=32, num_heads=2, out_hidden_size=TEXT_HIDDEN,
                           patch_size=16, spatial_merge_size=2, temporal_patch_size=2, num_position_embeddings=16,
                           deepstack_visual_indexes=[0]),
    )
    return Qwen3VLModel(config).eval()


def transformer():
    from diffusers import Ideogram4Transformer2DModel

    # hidden 128: SDNQ's default size filters quantize Linears of this width (not of 16)
    return Ideogram4Transformer2DModel(
        in_channels=LATENT_CHANNELS * 4, num_layers=2, attention_head_dim=64, num_attention_heads=2,
        intermediate_size=256, adaln_dim=16, llm_features_dim=TAPPED_LAYERS * TEXT_HIDDEN, mrope_section=(16, 8, 8),
    ).eval()


def build_ideogram(out: Path) -> None:
    from diffusers import AutoencoderKLFlux2, FlowMatchEulerDiscreteScheduler, Ideogram4Pipeline

    tokenizer = qwen_tokenizer()
    tokenizer.chat_template = CHAT_TEMPLATE
    with seeded(5001):
        encoder = text_encoder()
    with seeded(5002):
        vae = AutoencoderKLFlux2(block_out_channels=(8, 8), layers_per_block=1, latent_channels=LATENT_CHANNELS,
                                 norm_num_groups=4, sample_size=32,
                                 down_block_types=("DownEncoderBlock2D",) * 2,
                                 up_block_types=("UpDecoderBlock2D",) * 2).eval()
    with seeded(5003):
        cond = transformer()
    with seeded(5004):
        uncond = transformer()
    Ideogram4Pipeline(scheduler=FlowMatchEulerDiscreteScheduler(), vae=vae, text_encoder=encoder, tokenizer=tokenizer,
                      transformer=cond, unconditional_transformer=uncond).save_pretrained(out, safe_serialization=True)
    for sub in ("transformer", "unconditional_transformer"):
        quantize_sdnq(out, sub)


def quantize_sdnq(out: Path, sub: str) -> None:
    """``out/sub`` re-saved SDNQ-quantized, its config independent of where and in which process it was built."""
    import shutil
    import tempfile

    import diffusers
    import sdnq  # noqa: F401 - its compile decision taken outside the dynamo patch (see flux.build_flux_sdnq)
    import torch
    from diffusers import Ideogram4Transformer2DModel

    with torch._dynamo.config.patch(disable=True):
        model = Ideogram4Transformer2DModel.from_pretrained(
            out, subfolder=sub, quantization_config=diffusers.SDNQConfig(weights_dtype="int8"))
    tmp = Path(tempfile.mkdtemp(dir=out))
    model.save_pretrained(tmp, safe_serialization=True)
    shutil.rmtree(out / sub)
    tmp.rename(out / sub)
    config_path = out / sub / "config.json"
    stable_sdnq_config(config_path)
