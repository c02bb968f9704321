"""Reading and checking an InstantX Flux IP-Adapter file and its SigLIP image encoder, with messages a user can act
on. Nothing here runs code from a file: ``.bin`` pickles go through ``torch.load(weights_only=True)``."""

from __future__ import annotations

import pickle
import zipfile
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps

from engine.adapters.ipadapter_flux import IPLayers, MLPProjModel
from engine.errors import ModelLoadError

#: file names looked for in an adapter folder, in order: a safetensors copy first (no pickle at all), then the
#: published ``ip-adapter.bin``
ADAPTER_FILES = ("ip-adapter.safetensors", "ip-adapter.bin")
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt")
PARTS = ("image_proj", "ip_adapter")


def adapter_file(location: Path, name: str = "") -> Path:
    """The weight file: ``location`` itself when it is a file, else ``name`` (or the first of ``ADAPTER_FILES``)."""
    if location.is_file():
        return location
    candidates = [name] if name else list(ADAPTER_FILES)
    for candidate in candidates:
        if (location / candidate).is_file():
            return location / candidate
    found = sorted(p.name for p in location.iterdir()) if location.is_dir() else []
    raise ModelLoadError(
        f"no IP-Adapter weights ({' or '.join(candidates)}) in {location}; it holds: {', '.join(found[:8]) or 'nothing'}"
    )


def read_adapter_state(path: Path) -> dict[str, dict[str, torch.Tensor]]:
    """``{"image_proj": {...}, "ip_adapter": {...}}`` from a ``.bin`` (nested, as published) or a ``.safetensors``
    (flattened ``image_proj.*`` / ``ip_adapter.*`` keys)."""
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            flat = load_file(str(path))
        except (SafetensorError, OSError) as exc:
            raise ModelLoadError(f"{path.name} is not a readable safetensors file ({exc})") from None
    elif path.suffix in PICKLE_SUFFIXES:
        try:
            flat = _torch_load(path)
        except pickle.UnpicklingError as exc:
            raise ModelLoadError(
                f"{path.name} was refused: it holds Python objects besides tensors, and loading it would run code "
                f"(torch.load with weights_only=True said: {str(exc).splitlines()[0][:200]})"
            ) from None
        except (RuntimeError, EOFError, OSError, zipfile.BadZipFile) as exc:
            raise ModelLoadError(f"{path.name} is not a readable PyTorch file ({str(exc).splitlines()[0]})") from None
    else:
        raise ModelLoadError(f"{path.name}: IP-Adapter weights must be .safetensors or .bin")
    if not isinstance(flat, dict):
        raise ModelLoadError(f"{path.name} holds a {type(flat).__name__}, not a state dict")
    parts: dict[str, dict[str, torch.Tensor]] = {p: {} for p in PARTS}
    for key, value in flat.items():
        if key in PARTS and isinstance(value, dict):  # the published nesting
            parts[key].update({str(k): v for k, v in value.items()})
            continue
        head, _, rest = str(key).partition(".")
        if head in PARTS and rest and isinstance(value, torch.Tensor):
            parts[head][rest] = value
    if not parts["image_proj"] or not parts["ip_adapter"]:
        raise ModelLoadError(f"{path.name} is not an InstantX Flux IP-Adapter: {_what_it_is(flat)}")
    return parts


def _torch_load(path: Path):
    """``torch.load(weights_only=True)``, memory-mapped when the file allows it: the published file is 5.3 GB, and
    with ``mmap`` its tensors are read from the page cache instead of being copied into RAM first."""
    try:
        return torch.load(str(path), map_location="cpu", weights_only=True, mmap=True)
    except RuntimeError as exc:
        if "mmap" not in str(exc):  # not the "legacy format cannot be mmapped" case: a real failure
            raise
        return torch.load(str(path), map_location="cpu", weights_only=True)


def _what_it_is(flat: dict) -> str:
    keys = [str(k) for k in flat]
    if any("ip_adapter_double_stream" in k for k in keys):
        return "it is an XLabs-format Flux IP-Adapter (double_blocks.*.ip_adapter_double_stream_*), a different model"
    if any(k.startswith(("image_proj.proj.weight", "image_proj.norm")) for k in keys) or any(
        "to_k_ip" in k and "attn2" in k for k in keys
    ):
        return "it looks like a Stable Diffusion IP-Adapter, a different model"
    return f"expected image_proj.* and ip_adapter.<i>.to_k_ip/to_v_ip keys, found {', '.join(keys[:4]) or 'no keys'}"


def _load_strict(module: torch.nn.Module, state: dict[str, torch.Tensor], what: str, name: str) -> None:
    """``load_state_dict(strict=True)`` (as the ComfyUI pack does), with a message naming what does not fit."""
    expected = module.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"missing keys {', '.join(f'{what}.{k}' for k in missing[:4])}"
                         + (f" and {len(missing) - 4} more" if len(missing) > 4 else ""))
        if unexpected:
            parts.append(f"unexpected keys {', '.join(f'{what}.{k}' for k in unexpected[:4])}"
                         + (f" and {len(unexpected) - 4} more" if len(unexpected) > 4 else ""))
        raise ModelLoadError(f"{name} does not fit this model: {'; '.join(parts)}")
    for k, t in expected.items():
        if tuple(state[k].shape) != tuple(t.shape):
            raise ModelLoadError(
                f"{name} does not fit this model: {what}.{k} has shape {list(state[k].shape)}, the model needs "
                f"{list(t.shape)}"
            )
    module.load_state_dict(state, strict=True, assign=True)  # built on meta: the file's tensors become the weights


def build_projector(state: dict[str, torch.Tensor], name: str) -> MLPProjModel:
    """The projector sized from its own weights (upstream hard-codes 1152 -> 128 x 4096)."""
    try:
        first, last, norm = state["proj.0.weight"], state["proj.2.weight"], state["norm.weight"]
    except KeyError as exc:
        raise ModelLoadError(f"{name} does not fit this model: missing keys image_proj.{exc.args[0]}") from None
    cross = norm.shape[0]
    if last.shape[0] % cross:
        raise ModelLoadError(f"{name}: image_proj.proj.2 has {last.shape[0]} outputs, not a multiple of {cross}")
    with torch.device("meta"):  # no full-size float32 copy before the weights arrive (2.3 GiB in bf16 at real size)
        projector = MLPProjModel(first.shape[1], cross, last.shape[0] // cross)
    _load_strict(projector, state, "image_proj", name)
    return projector.eval()


def build_layers(state: dict[str, torch.Tensor], transformer, name: str) -> IPLayers:
    """One IP layer per attention processor of ``transformer``, loaded strictly."""
    config = transformer.config
    inner = config.num_attention_heads * config.attention_head_dim
    with torch.device("meta"):
        layers = IPLayers(len(transformer.attn_processors), config.joint_attention_dim, inner)
    _load_strict(layers, state, "ip_adapter", name)
    return layers.eval()


def check_fits(projector: MLPProjModel, transformer, encoder_width: int, name: str) -> None:
    if projector.cross_attention_dim != transformer.config.joint_attention_dim:
        raise ModelLoadError(
            f"{name} makes tokens of width {projector.cross_attention_dim}; this model's text width "
            f"(joint_attention_dim) is {transformer.config.joint_attention_dim}"
        )
    if projector.image_embed_dim != encoder_width:
        raise ModelLoadError(
            f"{name} expects image embeddings of width {projector.image_embed_dim}; the image encoder gives "
            f"{encoder_width} (use the encoder the adapter was trained with)"
        )


def load_image_encoder(folder: Path, dtype: torch.dtype, label: str, file: str = ""):
    """SigLIP vision tower and its image processor from a local folder (a hub snapshot or the demo); ``file``: the
    weights from a single file instead (a ComfyUI ``clip_vision`` file), with the folder's config."""
    from transformers import SiglipImageProcessor, SiglipVisionModel

    try:
        if file:
            from engine.comfy_models.single_file import load_transformers_model

            encoder = load_transformers_model(file, "SiglipVisionModel", folder, "", dtype)
        else:
            encoder = SiglipVisionModel.from_pretrained(str(folder), dtype=dtype, local_files_only=True)
        processor = SiglipImageProcessor.from_pretrained(str(folder), local_files_only=True)
    except (OSError, ValueError, KeyError) as exc:
        raise ModelLoadError(f"could not load {label} as a SigLIP image encoder: {str(exc).splitlines()[0]}") from None
    return encoder.eval(), processor


# ---------------------------------------------------------------- reference images
def reference_rgb(path: str) -> Image.Image:
    """Any Pillow-readable image as 8-bit RGB: EXIF rotation applied, 16-bit and float scaled (not clipped),
    transparency composited over white, CMYK/palette/grayscale converted."""
    with Image.open(path) as opened:
        im = ImageOps.exif_transpose(opened)
        im.load()
    if im.mode in ("I", "I;16", "I;16B", "I;16L", "I;16N", "F"):
        arr = np.asarray(im, dtype=np.float64)
        top = 1.0 if im.mode == "F" and arr.max() <= 1.0 else (65535.0 if arr.max() > 255 else 255.0)
        im = Image.fromarray(np.clip(arr / top * 255.0 + 0.5, 0, 255).astype(np.uint8), mode="L")
    if im.mode in ("RGBA", "LA", "PA") or (im.mode == "P" and "transparency" in im.info):
        rgba = im.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        im = Image.alpha_composite(white, rgba)
    return im.convert("RGB")
