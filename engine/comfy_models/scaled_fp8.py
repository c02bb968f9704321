"""ComfyUI's scaled fp8 files (``*_fp8_scaled.safetensors``, ``*_fp8_e4m3fn_scaled.safetensors``): each Linear's
``<layer>.weight`` is stored as fp8 and its ``<layer>.scale_weight`` (float32, shape ``[]``) holds the factor the
weight was divided by; a ``scaled_fp8`` tensor marks the file (its dtype is the fp8 dtype; two elements ask
ComfyUI for fp8 matmuls). ComfyUI (``comfy/ops.py`` ``scaled_fp8_ops``) computes with ``weight * scale_weight``;
``comfy/utils.py`` ``convert_old_quants`` renames ``scale_weight`` to the newer ``weight_scale``, so both
spellings are read. ``scale_input`` is an activation hint for fp8 matmuls and has no meaning once the weight is
multiplied out.

A transformer whose keys map one to one onto diffusers' (Wan, Qwen-Image, diffusers-named files) keeps its fp8
weights as stored, with each scale beside its weight, and multiplies per layer at compute time as ComfyUI does
(``split``, ``fp8_storage``): 1 byte a weight in RAM and in every copy to the GPU, and so do T5, umT5 and
Qwen2.5-VL encoders. Everything else (CLIP, the original Flux/Chroma layout, whose conversion splits fused layers a
scale cannot follow) is multiplied out on load into the compute dtype (2 bytes a weight in bf16). A file whose
scales are missing or do not fit their weights is refused, naming the key, rather than loaded silently wrong."""

from __future__ import annotations

import logging

import torch

from engine.errors import ModelLoadError

log = logging.getLogger(__name__)

FP8_DTYPES = (torch.float8_e4m3fn, torch.float8_e5m2)
MARKER = "scaled_fp8"
SCALE_SUFFIXES = (".scale_weight", ".weight_scale")
DROPPED_SUFFIXES = (".scale_input", ".input_scale", ".comfy_quant")
# fp8 tensors ComfyUI casts without a scale (embeddings and lookup tables are not its scaled Linear layers)
UNSCALED_OK = ("embed", "shared.weight", "relative_attention_bias", "lm_head", "position_embedding")


def is_scaled(state: dict) -> bool:
    return MARKER in state or any(k.endswith(SCALE_SUFFIXES) for k in state)


def _layer(key: str) -> str:
    for suffix in SCALE_SUFFIXES:
        if key.endswith(suffix):
            return key[: -len(suffix)]
    return key


def _problem(scale_key: str, scale: tuple, weight: tuple | None) -> str:
    """What is wrong with one scale, in words ("" when nothing): ``scale``/``weight`` are (kind, shape) with kind
    "fp8", "float" or another dtype name."""
    weight_key = _layer(scale_key) + ".weight"
    if weight is None:
        return f"scale {scale_key} has no weight {weight_key}; the file is not a complete scaled fp8 file"
    if weight[0] != "fp8":
        return f"{scale_key} scales {weight_key}, which is {weight[0]}, not fp8; the file's scales do not match its weights"
    if scale[0] not in ("float", "fp8"):
        return f"scale {scale_key} is {scale[0]}, not a float"
    numel = 1
    for n in scale[1]:
        numel *= n
    rows = weight[1][0] if weight[1] else 0
    per_row = numel == rows and (len(scale[1]) == 1 or (len(scale[1]) == 2 and scale[1][1] == 1))
    if numel != 1 and not per_row:
        return (f"scale {scale_key} has shape {list(scale[1])}, which fits neither one scale for {weight_key} "
                f"(shape {list(weight[1])}) nor one per output row")
    return ""


def problems(tensors: dict[str, tuple]) -> list[str]:
    """Every reason, naming the key, why the scaled fp8 file whose tensors are ``tensors`` (key -> (kind, shape),
    see ``_problem``) cannot be restored: a scale without its fp8 weight or of the wrong shape, a file marked
    ``scaled_fp8`` without scales, or (marked) an fp8 layer weight without its scale."""
    scales = {_layer(k) + ".weight": k for k in tensors if k.endswith(SCALE_SUFFIXES)}
    found = [p for p in (_problem(s, tensors[s], tensors.get(w)) for w, s in scales.items()) if p]
    marked = MARKER in tensors
    if marked and not scales:
        found.append(f"it is marked scaled fp8 ({MARKER}) but holds no {SCALE_SUFFIXES[0]} tensors: its scales are "
                     "missing, so its weights cannot be restored")
    elif marked:
        for key, (kind, shape) in tensors.items():
            if kind == "fp8" and key not in scales and key.endswith(".weight") and len(shape) == 2 and \
                    not any(t in key for t in UNSCALED_OK):
                found.append(f"{key} is fp8 but its scale {key[: -len('weight')]}scale_weight is missing; the "
                             "file's scales are incomplete (a damaged or hand-made file)")
                break
    return found


def _kind(t: torch.Tensor) -> str:
    if t.dtype in FP8_DTYPES:
        return "fp8"
    return "float" if t.is_floating_point() else str(t.dtype).removeprefix("torch.")


def table_kinds(table) -> dict[str, tuple]:
    """A header's tensor table (``header.TensorTable``) as ``problems`` reads it."""
    def kind(dtype: str) -> str:
        return "fp8" if dtype.startswith("F8") else ("float" if dtype in ("F16", "BF16", "F32", "F64") else dtype)
    return {k: (kind(d), tuple(s)) for k, (d, s) in table.tensors.items()}


def dequantize(state: dict[str, torch.Tensor], dtype: torch.dtype, name: str) -> dict[str, torch.Tensor]:
    """``state`` with every scaled fp8 weight replaced by ``weight * scale`` in ``dtype`` and the marker, scale and
    input-scale tensors removed; ``ModelLoadError`` naming the key where ``problems`` finds one."""
    found = problems({k: (_kind(v), tuple(v.shape)) for k, v in state.items()})
    if found:
        raise ModelLoadError(f"{name}: {found[0]}")
    scales = {_layer(k) + ".weight": k for k in state if k.endswith(SCALE_SUFFIXES)}
    out, unscaled = {}, []
    for key, value in state.items():
        if key == MARKER or key.endswith(SCALE_SUFFIXES + DROPPED_SUFFIXES):
            continue
        if key in scales:
            value = value.to(dtype) * scale_for(state[scales[key]], value, dtype)
        elif value.dtype in FP8_DTYPES:
            unscaled.append(key)
        out[key] = value
    if unscaled:
        log.info("%s: %d fp8 tensors without a scale (e.g. %s) are cast as they are, as ComfyUI does", name,
                 len(unscaled), unscaled[0])
    return out


FUSED_LAYOUT = ("double_blocks.", "single_blocks.")  # BFL's Flux/Chroma keys: qkv and linear1 are split on conversion


def scales_follow_weights(keys) -> bool:
    """Whether a transformer file's scales survive its conversion to diffusers' names one to one (a rename per key),
    so that its fp8 weights can stay as stored; ``keys`` without the ComfyUI prefix."""
    return not any(k.startswith(FUSED_LAYOUT) for k in keys)


def split(state: dict[str, torch.Tensor], name: str) -> dict[str, torch.Tensor]:
    """``state`` without the marker and the activation scales, its scales renamed to ``<layer>.scale_weight``
    (the older spelling, which converters rename like the weight beside it). ``ModelLoadError`` naming the key
    where ``problems`` finds one, as ``dequantize``."""
    found = problems({k: (_kind(v), tuple(v.shape)) for k, v in state.items()})
    if found:
        raise ModelLoadError(f"{name}: {found[0]}")
    out = {}
    for key, value in state.items():
        if key == MARKER or key.endswith(DROPPED_SUFFIXES):
            continue
        out[_layer(key) + SCALE_SUFFIXES[0] if key.endswith(SCALE_SUFFIXES) else key] = value
    return out


def scale_for(scale: torch.Tensor, weight: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """The factor ``weight.to(dtype)`` is multiplied by, shaped as ``dequantize`` shapes it (the same product)."""
    scale = scale.to(dtype)
    return scale.reshape(()) if scale.numel() == 1 else scale.reshape(-1, *[1] * (weight.ndim - 1))


def quantize(state: dict[str, torch.Tensor], marker_elements: int = 0,
             fp8: torch.dtype = torch.float8_e4m3fn) -> dict[str, torch.Tensor]:
    """The inverse, as ComfyUI's scaled files are written: every 2-D ``.weight`` (a Linear's; embeddings stay
    as they are) divided by a per-tensor scale (its absolute maximum over the fp8 maximum) and stored as fp8, with
    its ``scale_weight`` (float32, shape ``[]``) and the ``scaled_fp8`` marker. For the demo files and the tests."""
    top = torch.finfo(fp8).max
    out = {MARKER: torch.zeros(marker_elements, dtype=fp8)}
    for key, value in state.items():
        if key.endswith(".weight") and value.ndim == 2 and value.is_floating_point() and \
                not any(t in key for t in UNSCALED_OK):
            scale = (value.detach().float().abs().max() / top).clamp(min=1e-12)
            out[key] = (value.detach().float() / scale).to(fp8)
            out[key[: -len("weight")] + "scale_weight"] = scale.reshape(())
        else:
            out[key] = value
    return out
