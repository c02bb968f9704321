"""Load one piece of a pipeline from a single file (a ComfyUI models folder, or any checkpoint file), with the
configs of a diffusers folder (the repo the request names, or its demo stand-in).

Transformers and VAEs go through diffusers' ``from_single_file`` (its converters turn the original key layout into
diffusers'); text and image encoders through transformers' ``from_pretrained(config=..., state_dict=...)``, which
also renames the older transformers layouts ComfyUI files use. safetensors are memory-mapped (``load_file`` maps the
file copy-on-write, never writing it): a tensor whose dtype already matches is used in place, so no second full
copy sits in RAM. Pickles are read only with ``torch.load(weights_only=True, mmap=True)``.

Stored fp8 in a transformer or VAE stays fp8 as the file holds it (built empty and assigned, never cast up; then
``fp8_storage``: diffusers' layerwise casting, tensor by tensor, so the file's bf16 biases stay bf16): plain
``float8_e4m3fn``, and ComfyUI's *scaled* fp8 (``scale_weight`` per layer) where its keys map one to one onto
diffusers' (Wan, Qwen-Image), scaled per layer at compute time. T5, umT5 and Qwen2.5-VL encoders keep their fp8
(plain or scaled) the same way (``FP8_KEPT_ENCODERS``). Other scaled fp8 (BFL-layout Flux/Chroma, CLIP) is
multiplied out on load (``scaled_fp8``). Wan-layout VAEs (Wan 2.1, 2.2, Qwen-Image) are converted by ``wan_vae`` and loaded directly:
diffusers 0.42.1's single-file path maps only part of them."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

import torch

from engine.comfy_models import scaled_fp8, wan_vae
from engine.comfy_models.detect import strip_transformer_prefix
from engine.comfy_models.fp8_storage import keep_fp8
from engine.comfy_models.header import HeaderError, load_pickle_weights_only
from engine.errors import ModelLoadError

FP8_DTYPES = scaled_fp8.FP8_DTYPES
WAN_VAE_CLASSES = ("AutoencoderKLWan", "AutoencoderKLQwenImage")  # the original Wan VAE layout, converted here
FLUX_MLP_RATIO = 4  # FluxSingleTransformerBlock's fixed mlp_ratio (also Chroma's)


def read_state(path: str) -> dict[str, torch.Tensor]:
    """Every tensor of the file, memory-mapped; a clear ``ModelLoadError`` for a file that cannot be read."""
    name = os.path.basename(path)
    try:
        if path.lower().endswith((".safetensors", ".sft")):
            from safetensors.torch import load_file

            from engine.comfy_models.header import read_safetensors_header

            read_safetensors_header(path)  # empty / truncated files get their own message, not safetensors'
            return load_file(path)
        return load_pickle_weights_only(path)
    except HeaderError as exc:
        raise ModelLoadError(f"{name}: {exc}") from None
    except (OSError, ValueError, RuntimeError) as exc:
        raise ModelLoadError(f"{name}: cannot read the weights ({str(exc).splitlines()[0]})") from None


def flux_family_to_diffusers(state: dict, config: dict, convert) -> dict:
    """diffusers' Flux/Chroma converter with the width taken from the config: upstream splits each single
    block's fused ``linear1`` at FLUX.1's fixed 3072 (``inner_dim = 3072`` in the converter), so the split is done
    here from ``num_attention_heads * attention_head_dim`` and the converter sees meta placeholders of its expected
    size for those two tensors. Everything else (names, qkv chunks, scale/shift swap) is upstream's code."""
    inner = config["num_attention_heads"] * config["attention_head_dim"]
    sizes = (inner, inner, inner, inner * FLUX_MLP_RATIO)
    expected = 3 * 3072 + 3072 * FLUX_MLP_RATIO
    mine = {}
    for key in [k for k in state if k.startswith("single_blocks.") and ".linear1." in k]:
        block = key.split(".")[1]
        part = key.rsplit(".", 1)[1]
        q, k, v, mlp = torch.split(state[key], sizes, dim=0)
        prefix = f"single_transformer_blocks.{block}."
        for name, value in (("attn.to_q", q), ("attn.to_k", k), ("attn.to_v", v), ("proj_mlp", mlp)):
            mine[f"{prefix}{name}.{part}"] = value
        shape = (expected, *state[key].shape[1:]) if part == "weight" else (expected,)
        state[key] = torch.empty(shape[:1] + (0,) * (len(shape) - 1), device="meta")
    converted = convert(state)
    converted.update(mine)
    return converted


def _diffusers_class(name: str):
    import diffusers

    cls = getattr(diffusers, name, None)
    if cls is None or not hasattr(cls, "from_single_file"):
        raise ModelLoadError(f"{name} cannot be loaded from a single file with this diffusers version")
    return cls


def load_diffusers_model(path: str, class_name: str, config_folder: Path, subfolder: str,
                         dtype: torch.dtype) -> torch.nn.Module:
    """A diffusers model (transformer, VAE) from ``path`` through ``from_single_file``; its config from
    ``config_folder/subfolder``."""
    from diffusers.loaders import single_file_utils as sfu

    cls = _diffusers_class(class_name)
    name = os.path.basename(path)
    raw = read_state(path)
    stripped = strip_transformer_prefix(raw) if subfolder.startswith("transformer") else {k: k for k in raw}
    state = {new: raw[old] for new, old in stripped.items()}
    scaled = scaled_fp8.is_scaled(state)
    # a transformer whose scales follow their weights through the conversion stays fp8 as stored, scaled per layer
    kept = scaled and subfolder.startswith("transformer") and scaled_fp8.scales_follow_weights(state)
    if kept:
        state = scaled_fp8.split(state, name)
    elif scaled:
        state = scaled_fp8.dequantize(state, dtype, name)
    fp8 = None if scaled and not kept else next((t.dtype for t in state.values() if t.dtype in FP8_DTYPES), None)
    config = cls.load_config(str(config_folder), subfolder=subfolder, local_files_only=True)
    if class_name in WAN_VAE_CLASSES and "decoder.middle.0.residual.0.gamma" in state:
        model = _load_wan_vae(cls, state, config, dtype, name, f"{config_folder.name}/{subfolder}")
        model.single_file_info = {"path": path, "fp8": "scaled (multiplied out)" if scaled else "",
                                  "converted": "Wan VAE layout"}
        return model.eval()
    try:
        if class_name == "FluxTransformer2DModel" and "double_blocks.0.img_attn.qkv.weight" in state:
            state = flux_family_to_diffusers(state, config, sfu.convert_flux_transformer_checkpoint_to_diffusers)
        elif class_name == "ChromaTransformer2DModel" and "double_blocks.0.img_attn.qkv.weight" in state:
            state = flux_family_to_diffusers(state, config, sfu.convert_chroma_transformer_checkpoint_to_diffusers)
        scales = {}
        if fp8:
            model, scales = _load_fp8_as_stored(cls, state, config, dtype, fp8, name,
                                                f"{config_folder.name}/{subfolder}")
        else:
            model = cls.from_single_file(state, config=str(config_folder), subfolder=subfolder, torch_dtype=dtype,
                                         local_files_only=True)
    except (KeyError, ValueError, RuntimeError, IndexError) as exc:
        raise ModelLoadError(f"{name} does not fit {class_name} of {config_folder.name}/{subfolder} "
                             f"({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}); "
                             "pick the file made for this model") from None
    _check_loaded(model, name)
    if fp8:
        # the file's fp8 tensors stay fp8 and compute in the compute dtype; its bf16 biases stay as they are
        # (diffusers' layerwise casting would round them to fp8 too)
        keep_fp8(model, fp8, dtype, scales)
    how = "scaled (kept fp8, scaled per layer)" if kept else "scaled (multiplied out)" if scaled else \
        "stored" if fp8 else ""
    model.single_file_info = {"path": path, "fp8": how}
    return model.eval()


def load_transformers_model(path: str, class_name: str, config_folder: Path, subfolder: str,
                            dtype: torch.dtype) -> torch.nn.Module:
    """A transformers model (CLIP, T5, umT5, Qwen2.5-VL, SigLIP) from ``path`` with the folder's config."""
    import transformers

    cls = getattr(transformers, class_name, None)
    if cls is None:
        raise ModelLoadError(f"unknown text/image encoder class {class_name}")
    name = os.path.basename(path)
    state = read_state(path)
    scaled = scaled_fp8.is_scaled(state)
    config = cls.config_class.from_pretrained(str(config_folder / subfolder) if subfolder else str(config_folder))
    fp8 = next((t.dtype for t in state.values() if t.dtype in FP8_DTYPES and t.ndim == 2), None)
    if class_name in FP8_KEPT_ENCODERS and fp8 is not None:
        model = _load_encoder_fp8_as_stored(cls, config, state, dtype, fp8, name, f"{config_folder.name}/{subfolder}")
        model.single_file_info = {"path": path, "fp8": "scaled (kept fp8, scaled per layer)" if scaled else "stored"}
        return model.eval()
    if scaled:  # ComfyUI's *_fp8_scaled encoders: weight * scale_weight, or refused naming the key
        state = scaled_fp8.dequantize(state, dtype, name)
    prefix = {"CLIPTextModel": "text_model.", "SiglipVisionModel": "vision_model."}.get(class_name)
    if prefix and all(k.startswith(prefix) for k in state):  # transformers 4 names (ComfyUI's files); 5 has none
        state = {k[len(prefix):]: v for k, v in state.items()}
    try:
        model, info = cls.from_pretrained(None, config=config, state_dict=state, dtype=dtype, output_loading_info=True)
    except (KeyError, ValueError, RuntimeError) as exc:
        raise ModelLoadError(f"{name} does not fit {class_name} of {config_folder.name}/{subfolder} "
                             f"({str(exc).splitlines()[0]}); pick the file made for this model") from None
    missing = list(info.get("missing_keys") or []) + list(info.get("mismatched_keys") or [])
    if missing:  # transformers would fill these with random values and only warn
        raise ModelLoadError(f"{name} lacks {len(missing)} of {class_name}'s weights (e.g. {missing[0]}); "
                             "it is not a complete file for this model")
    model.single_file_info = {"path": path, "fp8": "scaled (multiplied out)" if scaled else ""}
    return model.eval()


@dataclass(frozen=True)
class KeptFp8:
    """How a transformers encoder's fp8 file stays fp8 as stored: ``lift``, layers whose weight dtype the calling
    module's code reads (cast for that caller's whole forward); ``skip``, layers whose dtype other code reads (cast
    to the compute dtype on load); ``renames``, the older transformers names ComfyUI's files use, as regex -> new
    prefix, applied where a key is not the model's."""

    lift: tuple[str, ...] = ()
    skip: tuple[str, ...] = ()
    renames: tuple[tuple[str, str], ...] = ()


# T5-XXL (Flux, Chroma), umT5-XXL (Wan) and Qwen2.5-VL-7B (Qwen-Image): 4.7, 5.7 and 8.3 billion weights. T5's
# feed-forward casts its hidden states to ``wo``'s dtype; Qwen2.5-VL casts pixels to its patch embedding's (and the
# model's ``dtype`` is that first parameter's), and transformers 5 moved its layers under ``model.``
FP8_KEPT_ENCODERS = {
    "T5EncoderModel": KeptFp8(lift=(r"\.wo$",)),
    "UMT5EncoderModel": KeptFp8(lift=(r"\.wo$",)),
    "Qwen2_5_VLForConditionalGeneration": KeptFp8(
        skip=(r"visual\.patch_embed\.proj$",),
        renames=((r"^visual\.", "model.visual."), (r"^model\.(?!language_model\.|visual\.)", "model.language_model."))),
}


def _load_encoder_fp8_as_stored(cls, config, state: dict, dtype: torch.dtype, store: torch.dtype, name: str,
                                where: str) -> torch.nn.Module:
    """A T5 / umT5 / Qwen2.5-VL encoder with its fp8 weights as the file holds them (memory-mapped, scaled per layer
    for a scaled file), the rest in the compute dtype: what ``from_pretrained`` makes of the multiplied-out file, bit for
    bit at compute time, without the compute-dtype copy of the whole encoder in RAM (umT5-XXL: 11.4 GB in bf16,
    6.7 GB here; the token embedding stays fp8 too, cast per lookup). Weights tied by the model (the encoder's
    ``embed_tokens`` is ``shared``) are tied again; tensors the model has no place for are ignored, as transformers
    ignores them; a missing weight is refused."""
    from accelerate import init_empty_weights

    how = FP8_KEPT_ENCODERS[cls.__name__]
    if scaled_fp8.is_scaled(state):
        state = scaled_fp8.split(state, name)
    with init_empty_weights():
        model = cls(config)
    expected = set(model.state_dict())
    suffix = scaled_fp8.SCALE_SUFFIXES[0]
    state = {_renamed(k, expected, how.renames, suffix): v for k, v in state.items()}
    scales = {k[: -len(suffix)] + ".weight": state.pop(k) for k in list(state) if k.endswith(suffix)}
    tensors = {k: v.to(dtype) if v.is_floating_point() and v.dtype != store else v for k, v in state.items()
               if k in expected}
    try:
        model.load_state_dict(tensors, strict=False, assign=True)
    except RuntimeError as exc:
        detail = next((line.strip() for line in str(exc).splitlines() if "size mismatch" in line), str(exc)[:200])
        raise ModelLoadError(f"{name} does not fit {cls.__name__} of {where} ({detail}); pick the file made for "
                             "this model") from None
    model.tie_weights()
    _check_loaded(model, name)
    scales = {w: scaled_fp8.scale_for(s, tensors[w], dtype) for w, s in scales.items() if w in tensors}
    keep = (model._keep_in_fp32_modules or ()) if dtype == torch.float16 else ()  # transformers' fp16 loads keep these fp32
    if keep:  # multiplied out into fp32 now, as transformers' load of the multiplied-out file has them
        for module_name, module in model.named_modules():
            if module_name.rpartition(".")[2] in keep:
                for pname, tensor in module.named_parameters(recurse=False):
                    factor = scales.pop(f"{module_name}.{pname}", None)
                    value = tensor.data.to(dtype)
                    tensor.data = (value * factor if factor is not None else value).float()
    keep_fp8(model, store, dtype, scales, lift=how.lift, skip=how.skip + tuple(rf"\.{k}$" for k in keep))
    return model


def _renamed(key: str, expected: set[str], renames: tuple[tuple[str, str], ...], scale_suffix: str) -> str:
    """``key`` under the model's names: as it is where the model has it (a scale: where the model has its
    weight), else with each of ``renames`` applied."""
    weight = key[: -len(scale_suffix)] + ".weight" if key.endswith(scale_suffix) else key
    if weight in expected:
        return key
    for pattern, prefix in renames:
        key = re.sub(pattern, prefix, key)
    return key


def _load_wan_vae(cls, state: dict, config: dict, dtype: torch.dtype, name: str, where: str) -> torch.nn.Module:
    """A Wan 2.1 / 2.2 / Qwen-Image VAE from its original key layout (``wan_vae``): built empty, the file's
    (memory-mapped) tensors assigned in place, every weight required and no extra one allowed."""
    model = _assign(_empty(cls, config), wan_vae.to_diffusers(state, config), name, where, "VAE")
    if any(p.dtype != dtype for p in model.parameters()):  # in place (memory-mapped) when the file's dtype fits
        model.to(dtype)
    return model


def _load_fp8_as_stored(cls, state: dict, config: dict, dtype: torch.dtype, store: torch.dtype, name: str,
                        where: str) -> tuple[torch.nn.Module, dict[str, torch.Tensor]]:
    """An fp8 file's model with its fp8 tensors as the file holds them (memory-mapped, never cast up) and every
    other float in the compute dtype, and its scales (parameter name -> factor, for ``keep_fp8``; none for plain
    fp8). diffusers' ``from_single_file`` casts each tensor to ``torch_dtype`` as it loads (its loader lets fp8
    through only for a quantizer), so the model would sit in RAM at twice its fp8 size until stored back as fp8;
    here it is converted with diffusers' own mapping and assigned instead."""
    from diffusers.loaders import single_file_model as sfm

    mapping = sfm.SINGLE_FILE_LOADABLE_CLASSES.get(cls.__name__, {}).get("checkpoint_mapping_fn")
    model = _empty(cls, config)
    expected = model.state_dict()
    weights = {k: v for k, v in state.items() if not k.endswith(scaled_fp8.SCALE_SUFFIXES[0])}
    if mapping is not None and sfm._should_convert_state_dict_to_diffusers(expected, weights):
        state = mapping(checkpoint=state, **sfm._get_mapping_function_kwargs(mapping, config=config))
    scales = {k[: -len(scaled_fp8.SCALE_SUFFIXES[0])] + ".weight": state.pop(k) for k in list(state)
              if k.endswith(scaled_fp8.SCALE_SUFFIXES[0])}
    orphan = next((w for w in scales if w not in state or state[w].dtype != store), None)
    if orphan is not None:
        raise ModelLoadError(f"{name}: the scale of {orphan} has no fp8 weight after conversion to diffusers' names")
    tensors = {k: v.to(dtype) if v.is_floating_point() and v.dtype != store else v for k, v in state.items()}
    model = _assign(model, tensors, name, where, "model")
    return model, {w: scaled_fp8.scale_for(s, tensors[w], dtype) for w, s in scales.items()}


def _empty(cls, config: dict) -> torch.nn.Module:
    """``cls`` built from ``config`` with its weights on the meta device (no memory), for ``_assign``."""
    from accelerate import init_empty_weights

    with init_empty_weights():
        return cls.from_config(config)


def _assign(model: torch.nn.Module, tensors: dict, name: str, where: str, what: str) -> torch.nn.Module:
    """``tensors`` assigned in place into the empty ``model``: every weight required, no extra one allowed, a shape
    mismatch refused naming the layer."""
    cls = type(model)
    try:
        result = model.load_state_dict(tensors, strict=False, assign=True)
    except RuntimeError as exc:  # a shape mismatch: a model of another size than the config's
        detail = next((line.strip() for line in str(exc).splitlines() if "size mismatch" in line), str(exc)[:200])
        raise ModelLoadError(f"{name} does not fit {cls.__name__} of {where} ({detail}); pick the {what} made for "
                             "this model") from None
    if result.missing_keys or result.unexpected_keys:
        found = (f"lacks {len(result.missing_keys)} of its weights (e.g. {result.missing_keys[0]})"
                 if result.missing_keys else
                 f"holds {len(result.unexpected_keys)} tensors it has no place for (e.g. {result.unexpected_keys[0]})")
        raise ModelLoadError(f"{name} {found} as {cls.__name__} of {where}; it is not this model's {what}")
    _check_loaded(model, name)
    return model


def _check_loaded(model: torch.nn.Module, name: str) -> None:
    """Every weight must have come from the file: one left on the meta device (or randomly initialised by a
    loader that only warns) would give noise without an error."""
    missing = [k for k, p in model.named_parameters() if p.device.type == "meta"]
    if missing:
        raise ModelLoadError(f"{name} lacks {len(missing)} of the model's weights (e.g. {missing[0]}); "
                             "it is not a complete file for this model")
