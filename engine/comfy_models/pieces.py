"""The single-file pieces of one pipeline: which file may stand in for which component (checked from the
header before anything loads), and their loading with the configs of the pipeline's diffusers folder."""

from __future__ import annotations

import os
from pathlib import Path

import torch

from engine.comfy_models import scaled_fp8
from engine.comfy_models.detect import detect
from engine.comfy_models.header import HeaderError, read_table
from engine.errors import InputError, ModelLoadError

#: pipeline family (class name prefix) -> component -> architectures (``detect``) that fit it
FITS = {
    "Flux": {"transformer": {"flux-dev", "flux-schnell", "flux-diffusers"}, "text_encoder": {"clip-l"},
             "text_encoder_2": {"t5-xxl"}, "vae": {"vae-flux", "vae-ldm"}},
    "Chroma": {"transformer": {"chroma"}, "text_encoder": {"t5-xxl"}, "vae": {"vae-flux", "vae-ldm"}},
    "QwenImage": {"transformer": {"qwen-image"}, "text_encoder": {"qwen25-vl"}, "vae": {"vae-wan"}},
    "Wan": {"transformer": {"wan22-i2v-a14b", "wan22-ti2v-5b"}, "transformer_2": {"wan22-i2v-a14b"},
            "text_encoder": {"umt5-xxl"}, "vae": {"vae-wan", "vae-wan22"}},
}
SIGLIP = {"siglip"}


#: weight-holding component folders of a diffusers repo (configs and tokenizers always come along)
REPO_COMPONENTS = ("transformer", "transformer_2", "unet", "vae", "text_encoder", "text_encoder_2", "text_encoder_3",
                   "image_encoder")


def repo_patterns(given: dict[str, str]) -> list[str]:
    """What to download of the base repo when ``given`` components come from single files: configs, tokenizers,
    scheduler, and the weights of the other components only (a Flux transformer file saves its 23 GB download)."""
    from engine.hub.download import DIFFUSERS_PATTERNS

    patterns = [p for p in DIFFUSERS_PATTERNS if not p.endswith(".safetensors")]
    return patterns + [f"{part}/*.safetensors" for part in REPO_COMPONENTS if part not in given]


def family(pipeline_class: str) -> str:
    return next((f for f in FITS if pipeline_class.startswith(f)), "")


def check_piece(pipeline_class: str, part: str, path: str, field: str, folder: Path | None = None) -> None:
    """Refuse, from the header alone, a file that cannot be this component (a Wan file as a Flux transformer,
    a truncated file, a scaled fp8 file with missing or misshapen scales, a VAE of another family than the
    model's, read from ``folder``'s VAE config ...), with a message naming the field."""
    name = os.path.basename(path)
    try:
        table = read_table(path)
    except HeaderError as exc:
        raise InputError(field, f"{name}: {exc}") from None
    except OSError as exc:
        raise InputError(field, f"{name}: cannot read ({exc.strerror or exc})") from None
    found = detect(table, name)
    fits = FITS.get(family(pipeline_class), {}).get(part)
    if fits is None:
        raise InputError(field, f"{pipeline_class} has no {part} that can come from a single file")
    if part == "vae" and folder is not None and found.kind == "vae":  # names both families, before the generic check
        check_vae_family(found, name, pipeline_class, folder / part / "config.json", field)
    if found.arch not in fits:
        what = found.label if found.arch != "unknown" else f"not a recognised model ({found.reason})"
        raise InputError(field, f"{name} is {what}; the {part} of {pipeline_class} needs "
                                f"{' or '.join(sorted(fits))}")
    if scaled_fp8.is_scaled(table.tensors):
        bad = scaled_fp8.problems(scaled_fp8.table_kinds(table))
        if bad:
            raise InputError(field, f"{name}: {bad[0]}")


#: the VAE families, as the user reads them
VAE_FAMILIES = {"vae-flux": "the Flux VAE (LDM layout)", "vae-ldm": "an LDM (SD / Flux layout) VAE",
                "vae-wan": "a Wan 2.1 / Qwen-Image VAE", "vae-wan22": "the Wan 2.2 VAE (TI2V 5B)"}


def wanted_vae(config: dict) -> tuple[set[str], str, int]:
    """(fitting VAE archs, the family in words, latent channels) of a diffusers VAE config."""
    cls = config.get("_class_name", "")
    if cls == "AutoencoderKLQwenImage":
        return {"vae-wan"}, "the Qwen-Image VAE (Wan 2.1 layout)", config.get("z_dim", 16)
    if cls == "AutoencoderKLWan":
        if config.get("is_residual"):
            return {"vae-wan22"}, "the Wan 2.2 VAE (TI2V 5B)", config.get("z_dim", 48)
        return {"vae-wan"}, "the Wan 2.1 VAE (used by Wan 2.2 A14B)", config.get("z_dim", 16)
    return {"vae-flux", "vae-ldm"}, "an LDM VAE (Flux's ae.safetensors)", config.get("latent_channels", 16)


def check_vae_family(found, name: str, pipeline_class: str, config_file: Path, field: str) -> None:
    """A VAE file of another family (or latent width) than the model's own is refused naming both."""
    import json

    try:
        config = json.loads(config_file.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return  # no config to compare with: the load itself will say what does not fit
    archs, family_name, channels = wanted_vae(config)
    have = found.details.get("latent_channels")
    if found.arch not in archs or (have and have != channels):
        raise InputError(field, f"{name} is {VAE_FAMILIES.get(found.arch, found.label)} with {have} latent channels; "
                                f"{pipeline_class} needs {family_name} with {channels} latent channels")


def load_pieces(folder: Path, index: dict, pipeline_class: str, files: dict[str, str],
                dtype: torch.dtype) -> dict[str, torch.nn.Module]:
    """component -> module for each single file in ``files``, configs from ``folder`` (a diffusers folder)."""
    from engine.comfy_models.single_file import load_diffusers_model, load_transformers_model

    out = {}
    for part, path in files.items():
        spec = index.get(part)
        if not isinstance(spec, list) or len(spec) != 2 or spec[0] is None:
            raise ModelLoadError(f"{folder.name} has no {part} component to replace with {os.path.basename(path)}")
        check_piece(pipeline_class, part, path, f"model.files.{part}", folder)
        library, class_name = spec
        loader = load_diffusers_model if library == "diffusers" else load_transformers_model
        out[part] = loader(path, class_name, folder, part, dtype)
    return out
