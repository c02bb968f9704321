"""Tiny Qwen-Image-Edit (and Edit-2509) demo models in the on-disk layout of ``Qwen/Qwen-Image-Edit``.

The real repository: ``model_index.json`` (``QwenImageEditPipeline``, ``processor`` = transformers'
``Qwen2VLProcessor``), ``processor/`` (the Qwen2.5-VL tokenizer files + ``preprocessor_config.json`` of a
``Qwen2VLImageProcessor``), ``tokenizer/``, ``text_encoder/`` (Qwen2.5-VL *with* its vision tower: the edit prompt
is encoded together with the input image), ``transformer/``, ``vae/``, ``scheduler/``. Qwen-Image-Edit-2509 has
the same layout with ``QwenImageEditPlusPipeline`` and a ``video_preprocessor_config.json`` beside it.

Built from the demo ``qwen-image`` folder, as the real Edit models relate to Qwen-Image: the text encoder,
tokenizer and scheduler are the same files; the transformer has Qwen-Image's architecture with its own weights
(so Qwen-Image LoRAs fit it, as real ones do). The VAE is the one part shaped differently from the demo
``qwen-image``: upstream's Edit pipelines always VAE-encode the input image at about 1024x1024 (hard-coded
``calculate_dimensions(1024 * 1024, ...)``), so this VAE downsamples 16x (the real one 8x: 3072 image tokens
instead of 768 at 1 MP, and an attention over 12288 positions in its mid block) and has very few channels, which
keeps one edit near half a second of one CPU core; output sides are multiples of 32 here (16 on the real model).
Its encoder is calibrated to unit latents (``_unit_latents``) so that the input image visibly conditions the edit.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

EDIT_PIPELINE = "QwenImageEditPipeline"
EDIT_PLUS_PIPELINE = "QwenImageEditPlusPipeline"

# Qwen2-VL's vision input: 14 px patches, 2 frames per temporal patch, 2x2 patches merged into one token. The real
# repo allows 3136..12845056 pixels; the tiny one caps the condition image at 112x112 (16 image tokens).
PATCH_SIZE, TEMPORAL_PATCH_SIZE, MERGE_SIZE = 14, 2, 2
MIN_PIXELS, MAX_PIXELS = 56 * 56, 112 * 112
_CLIP_MEAN = [0.48145466, 0.4578275, 0.40821073]
_CLIP_STD = [0.26862954, 0.26130258, 0.27577711]


def preprocessor_config() -> dict:
    """``processor/preprocessor_config.json`` with the keys the real repo's file has (transformers 4.x wrote it)."""
    return {
        "min_pixels": MIN_PIXELS, "max_pixels": MAX_PIXELS, "patch_size": PATCH_SIZE,
        "temporal_patch_size": TEMPORAL_PATCH_SIZE, "merge_size": MERGE_SIZE,
        "image_mean": _CLIP_MEAN, "image_std": _CLIP_STD, "do_convert_rgb": True, "do_normalize": True,
        "do_rescale": True, "do_resize": True, "resample": 3, "rescale_factor": 1 / 255,
        "image_processor_type": "Qwen2VLImageProcessor", "processor_class": "Qwen2VLProcessor",
    }


def video_preprocessor_config() -> dict:
    """``processor/video_preprocessor_config.json`` as Qwen-Image-Edit-2509 ships it."""
    config = preprocessor_config()
    config.update(image_processor_type=None, video_processor_type="Qwen2VLVideoProcessor", fps=2.0,
                  min_frames=4, max_frames=768, do_sample_frames=False)
    return {k: v for k, v in config.items() if v is not None}


def build_qwen_edit(out: Path, qwen: Path, pipeline_class: str = EDIT_PIPELINE, seed: int = 4301) -> None:
    """Write a tiny Edit model to ``out`` from the demo Qwen-Image folder ``qwen``."""
    import torch
    from diffusers import AutoencoderKLQwenImage, QwenImageTransformer2DModel

    from engine.demo.common import seeded as _seeded

    out.mkdir(parents=True, exist_ok=True)
    for part in ("text_encoder", "tokenizer", "scheduler"):  # the same files in the real repos
        shutil.copytree(qwen / part, out / part)
    with _seeded(seed), torch.no_grad():
        config = QwenImageTransformer2DModel.load_config(qwen / "transformer")
        QwenImageTransformer2DModel.from_config(config).eval().save_pretrained(out / "transformer")
    with _seeded(seed + 1), torch.no_grad():
        vae = AutoencoderKLQwenImage(base_dim=4, z_dim=4, dim_mult=[1] * 5, num_res_blocks=0,
                                     temperal_downsample=[False, True, True, True], latents_mean=[0.0] * 4,
                                     latents_std=[1.0] * 4).eval()
        _unit_latents(vae)
    vae.save_pretrained(out / "vae")
    _write_processor(out / "processor", qwen / "tokenizer", plus=pipeline_class == EDIT_PLUS_PIPELINE)
    index = json.loads((qwen / "model_index.json").read_text(encoding="utf-8"))
    index.update(_class_name=pipeline_class, processor=["transformers", "Qwen2VLProcessor"])
    (out / "model_index.json").write_text(json.dumps(dict(sorted(index.items())), indent=2), encoding="utf-8")


def _unit_latents(vae) -> None:
    """Make the random encoder's latents zero-mean, unit-variance per channel, as a trained VAE's are once the
    pipeline applies its ``latents_mean``/``latents_std``. Random encoders put out a large constant per channel
    with tiny image-dependent changes on top, which the transformer's norms wash out: the input image would
    barely change an edit. Folded into ``quant_conv``'s mean rows, so the config keeps mean 0 / std 1 and the
    decoder (which the text-to-image path shares the conventions of) is untouched."""
    import torch

    ramp = torch.linspace(-1, 1, 256)
    calibration = torch.stack([ramp[None].expand(256, 256), ramp[:, None].expand(256, 256),
                               torch.rand(256, 256) * 2 - 1])[None, :, None]  # (1, 3, 1, 256, 256)
    z = vae.encode(calibration).latent_dist.mode()
    mean, std = z.mean(dim=(0, 2, 3, 4)), z.std(dim=(0, 2, 3, 4))
    z_dim = z.shape[1]  # quant_conv's first z_dim outputs are the means, the rest the log-variances
    vae.quant_conv.weight[:z_dim] /= std.view(-1, *[1] * (vae.quant_conv.weight.dim() - 1))
    vae.quant_conv.bias[:z_dim] = (vae.quant_conv.bias[:z_dim] - mean) / std


def _write_processor(folder: Path, tokenizer: Path, plus: bool) -> None:
    """The tokenizer files beside the image processor's config, as ``Qwen2VLProcessor.save_pretrained`` laid them
    out when the real repos were written (transformers 5 would write one ``processor_config.json`` instead)."""
    shutil.copytree(tokenizer, folder)
    (folder / "preprocessor_config.json").write_text(json.dumps(preprocessor_config(), indent=2), encoding="utf-8")
    if plus:
        (folder / "video_preprocessor_config.json").write_text(json.dumps(video_preprocessor_config(), indent=2),
                                                               encoding="utf-8")
