"""Read a LoRA file, recognise its key layout, and convert it to diffusers/peft keys for one transformer.

Layouts (all seen in the wild for Qwen-Image, and all mapped by seed 004's converter):

- diffusers/peft: ``transformer.<module>.lora_A.weight`` / ``lora_B.weight`` (``.default`` variants too);
- ComfyUI: ``diffusion_model.<module>.lora_A|lora_B|lora_down|lora_up.weight`` (+ ``.alpha``);
- kohya: ``lora_unet_<module with _ for .>.lora_down|lora_up.weight`` + ``.alpha``;
- the module aliases seed 004 maps: ``attn.to_out`` (no ``.0``), ``out_proj`` / ``out_proj_context``,
  ``attn.q_proj`` ..., ``img_mlp.net.0`` (no ``.proj``), and fused ``attn.to_qkv`` / ``attn.add_qkv_proj``
  (split here into q, k, v: one shared A, B cut in three).

Everything is checked *before* the model is touched, so a bad file leaves the stack as it was: not
safetensors (pickles only through ``torch.load(weights_only=True)``), no module of the model hit ("matches 0
of N"), a rank or size mismatch, NaN/inf. Keys that map to nothing are never dropped silently: they are
counted and an example is reported. diffusers' own Qwen converter handles fewer layouts and drops what it
does not know, hence this module.
"""

from __future__ import annotations

import hashlib
import os
import re
import threading
from dataclasses import dataclass, field
from pathlib import Path

import torch

from engine.errors import InputError

# peft's own sub-modules: never targets of a LoRA file
_PEFT_PARTS = {"base_layer", "lora_A", "lora_B", "lora_dropout", "lora_embedding_A", "lora_embedding_B",
               "lora_magnitude_vector"}
_PREFIXES = ("base_model.model.", "model.diffusion_model.", "diffusion_model.", "transformer.", "lora_unet_", "unet.")
_TEXT_ENCODER_PREFIXES = ("lora_te_", "lora_te1_", "lora_te2_", "text_encoder.", "text_encoders.", "te.")
_SUFFIX = re.compile(r"^(?P<base>.+?)\.(?P<tag>lora_A|lora_B|lora_down|lora_up|lora\.down|lora\.up|lora\.A|lora\.B)"
                     r"(?:\.default)?\.weight$")
_ALPHA = re.compile(r"^(?P<base>.+?)\.(?:alpha|lora_alpha)$")
# diff-style keys (lightx2v distill LoRAs): a bias delta, a full weight delta; peft's lora_B bias
_DIFF = re.compile(r"^(?P<base>.+?)\.(?P<tag>diff_b|diff|lora_B\.bias|lora_up\.bias)$")
_UNSUPPORTED = {"lokr_w": "LoKr (LyCORIS)", "hada_w": "LoHa (LyCORIS)", "ia3": "IA3", "dora_scale": "DoRA"}
# flat (``_``-joined) aliases -> the diffusers module names they stand for, applied to the end of a name
_ALIASES = (
    ("_attn_to_qkv", ("_attn_to_q", "_attn_to_k", "_attn_to_v")),
    ("_attn_add_qkv_proj", ("_attn_add_q_proj", "_attn_add_k_proj", "_attn_add_v_proj")),
    ("_attn_to_out", ("_attn_to_out_0",)),
    ("_out_proj_context", ("_attn_to_add_out",)),
    ("_out_proj", ("_attn_to_out_0",)),
    ("_attn_q_proj", ("_attn_to_q",)),
    ("_attn_k_proj", ("_attn_to_k",)),
    ("_attn_v_proj", ("_attn_to_v",)),
    ("_img_mlp_net_0", ("_img_mlp_net_0_proj",)),
    ("_txt_mlp_net_0", ("_txt_mlp_net_0_proj",)),
)


def flat(name: str) -> str:
    return name.replace(".", "_")


@dataclass
class LoraInfo:
    """What the stack editor shows for one file, and the converted weights the composer loads."""

    path: str
    content_hash: str
    file_bytes: int
    layout: str
    rank: int
    ranks: tuple[int, ...]
    targets: tuple[str, ...]  # leaf module kinds hit, e.g. ("to_q", "img_mlp.net.0.proj")
    modules_hit: int
    modules_total: int
    unknown_count: int = 0
    unknown_example: str = ""
    text_encoder_ignored: int = 0  # lora_te* keys: not applied (LoRAs go to the diffusion model only)
    notes: tuple[str, ...] = ()  # what a converter left out, in its words
    state_dict: dict[str, torch.Tensor] = field(default_factory=dict, repr=False)

    def summary(self) -> dict:
        rank = str(self.rank) if len(set(self.ranks)) <= 1 else f"{min(self.ranks)}–{max(self.ranks)}"
        return {
            "file": os.path.basename(self.path), "layout": self.layout, "rank": rank,
            "targets": ", ".join(self.targets), "file_bytes": self.file_bytes,
            "hits": f"{self.modules_hit} of {self.modules_total}" if self.modules_total else
                    f"{self.modules_hit} layers (model not on disk yet)", "unknown_keys": self.unknown_count,
            "unknown_example": self.unknown_example, "hash": self.content_hash[:12],
            "text_encoder_ignored": self.text_encoder_ignored, "notes": list(self.notes),
        }


# ---------------------------------------------------------------- files
_hash_cache: dict[tuple, str] = {}
_hash_lock = threading.Lock()


def content_hash(path: str | os.PathLike) -> str:
    """sha256 of the file's bytes; cached by (path, size, mtime), so an edited file is hashed anew."""
    st = os.stat(path)
    key = (os.path.realpath(path), st.st_size, st.st_mtime_ns)
    with _hash_lock:
        if key in _hash_cache:
            return _hash_cache[key]
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    with _hash_lock:
        _hash_cache[key] = digest.hexdigest()
    return _hash_cache[key]


def read_tensors(path: str | os.PathLike, field_name: str) -> dict[str, torch.Tensor]:
    """The file's tensors. safetensors first; a pickle only if ``torch.load(weights_only=True)`` accepts it."""
    path = Path(path)
    name = path.name
    if path.suffix.lower() == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return load_file(str(path))
        except (SafetensorError, OSError, ValueError) as exc:
            raise InputError(field_name, f"{name} is not a readable safetensors file ({_first_line(exc)})") from None
    try:
        data = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:  # weights_only refuses anything but plain tensors and containers: by design
        raise InputError(field_name, f"{name} is not a safetensors file and torch.load(weights_only=True) refused "
                                     f"it ({_first_line(exc)}); pickles that need code to load are never "
                                     "opened. Convert it to .safetensors") from None
    if isinstance(data, dict) and isinstance(data.get("state_dict"), dict):
        data = data["state_dict"]
    if not isinstance(data, dict) or not all(isinstance(v, torch.Tensor) for v in data.values()):
        raise InputError(field_name, f"{name} holds no LoRA weights (expected a mapping of names to tensors)")
    return data


# ---------------------------------------------------------------- the model's side
def target_table(transformer: torch.nn.Module) -> dict[str, tuple[int | None, int | None]]:
    """module name -> (in_features, out_features) of every Linear-like layer a LoRA may target."""
    table = {}
    for name, module in transformer.named_modules():
        if not name or _PEFT_PARTS.intersection(name.split(".")):
            continue
        if isinstance(module, torch.nn.Linear) or hasattr(module, "base_layer"):
            table[name] = (getattr(module, "in_features", None), getattr(module, "out_features", None))
    return table


def target_table_from_folder(folder: str | os.PathLike) -> dict[str, tuple[int | None, int | None]]:
    """The same table read from a transformer folder's safetensors headers, without loading the weights (the
    editor shows hits before a 20B model is loaded). Quantized files store other shapes: names only there."""
    from safetensors import safe_open

    folder = Path(folder)
    quantized = "quantization_config" in (folder / "config.json").read_text() if (folder / "config.json").is_file() \
        else False
    table: dict[str, tuple[int | None, int | None]] = {}
    for file in sorted(folder.glob("*.safetensors")):
        with safe_open(str(file), framework="pt") as f:
            for key in f.keys():
                if not key.endswith(".weight"):
                    continue
                shape = f.get_slice(key).get_shape()
                if len(shape) == 2:
                    table[key[: -len(".weight")]] = (None, None) if quantized else (shape[1], shape[0])
    return table


# ---------------------------------------------------------------- conversion
def _strip_prefix(key: str) -> tuple[str, str]:
    for prefix in _PREFIXES:
        if key.startswith(prefix):
            return key[len(prefix):], prefix
    return key, ""


def _resolve(base: str, flat_names: dict[str, str] | None, aliases=_ALIASES) -> tuple[str, ...] | None:
    """The model module(s) a LoRA key's module part names (several for a fused qkv), or None.
    Without a model (``flat_names`` None) every name is taken as it is."""
    if flat_names is None:
        return (base,)
    fb = flat(base)
    if fb in flat_names:
        return (flat_names[fb],)
    for alias, replacements in aliases:
        if fb.endswith(alias):
            stem = fb[: -len(alias)]
            names = tuple(flat_names.get(stem + r) for r in replacements)
            if all(names):
                return names  # type: ignore[return-value]
    return None


def _layout(prefixes: set[str], tags: set[str]) -> str:
    if "lora_unet_" in prefixes:
        return "kohya"
    if prefixes & {"diffusion_model.", "model.diffusion_model."}:
        return "ComfyUI"
    if tags & {"lora_down", "lora_up", "lora.down", "lora.up"}:
        return "kohya-style (down/up)"
    return "diffusers/peft"


def _classify(tensors, field_name: str, label: str):
    """Split a file's keys into LoRA parts per module base name, text-encoder keys and unknown keys."""
    pairs: dict[str, dict[str, torch.Tensor]] = {}
    unknown: list[str] = []
    text_encoder: list[str] = []
    prefixes: set[str] = set()
    tags: set[str] = set()
    for key, tensor in tensors.items():
        if key.startswith(_TEXT_ENCODER_PREFIXES):
            text_encoder.append(key)
            continue
        rest, prefix = _strip_prefix(key)
        part = None
        if (m := _SUFFIX.match(rest)) is not None:
            part = "A" if m["tag"] in ("lora_A", "lora_down", "lora.down", "lora.A") else "B"
            tags.add(m["tag"])
        elif (m := _DIFF.match(rest)) is not None:
            part = "diff" if m["tag"] == "diff" else "bias"
            tags.add("diff")
        elif (m := _ALPHA.match(rest)) is not None:
            part = "alpha"
        if part is None:
            unknown.append(key)
            continue
        prefixes.add(prefix)
        pairs.setdefault(m["base"], {})[part] = tensor
    return pairs, unknown, text_encoder, prefixes, tags


def _pre_convert(tensors, family: str, field_name: str, label: str):
    """Family layouts diffusers converts (Flux/Chroma: kohya, BFL, XLabs) -> diffusers keys, and its notes."""
    if family not in ("flux", "chroma"):
        return tensors, [], ""
    from engine.adapters import lora_layouts_flux

    if not lora_layouts_flux.needs_conversion(tensors):
        return tensors, [], ""
    layout = "XLabs" if lora_layouts_flux.is_xlabs(tensors) else (
        "kohya" if any(k.startswith("lora_unet_") for k in tensors) else "ComfyUI/BFL")
    try:
        converted, notes = lora_layouts_flux.to_diffusers(tensors)
    except ValueError as exc:
        raise InputError(field_name, f"{label}: {exc}") from None
    return converted, notes, layout


def _as_lora_pair(base: str, parts: dict, in_f, out_f):
    """A diff-style entry as an exact LoRA pair: a full ``.diff`` W (out x in) as A = W, B = I (or A = I, B = W,
    whichever rank min(in, out) is smaller); a bias-only entry (``.diff_b``) as a zero rank-1 pair + bias."""
    if "diff" in parts:
        w = parts.pop("diff")
        if w.ndim != 2:
            return False
        out_n, in_n = w.shape
        if out_n <= in_n:
            parts["A"], parts["B"] = w, torch.eye(out_n, dtype=w.dtype)
        else:
            parts["A"], parts["B"] = torch.eye(in_n, dtype=w.dtype), w
        parts.pop("alpha", None)
        return True
    if "bias" in parts and in_f is not None:
        out_n = parts["bias"].shape[0]
        parts["A"], parts["B"] = torch.zeros(1, in_f), torch.zeros(out_n, 1)
        return True
    return False


def convert(tensors: dict[str, torch.Tensor], table: dict[str, tuple[int | None, int | None]] | None,
            field_name: str, label: str, family: str = "") -> tuple[dict[str, torch.Tensor], dict]:
    """diffusers keys (``transformer.<module>.lora_A/B.weight``, alpha folded into B) and a report.

    ``family`` (``lora_families``: flux, chroma, wan, qwen) picks the layouts and aliases of that model family and
    refuses a LoRA whose keys belong to another. Raises ``InputError(field_name, ...)`` for a file that cannot be
    applied to this model. ``table`` None (the model is not on disk yet): the file's own checks only."""
    from engine.adapters import lora_families
    from engine.adapters.lora_layouts_wan import WAN_ALIASES

    lora_family, example_key = lora_families.key_family(tensors)
    if not lora_families.compatible(lora_family, family):
        raise InputError(field_name, f"{label} is a LoRA for {lora_families.NAMES[lora_family]} (keys like "
                                     f"{example_key}); this model is {lora_families.NAMES.get(family, family)}: it "
                                     f"matches 0 of {len(table or ())} modules of its transformer (the LoRA was "
                                     "made for another model)")
    tensors, notes, pre_layout = _pre_convert(tensors, family, field_name, label)
    aliases = _ALIASES + (WAN_ALIASES if family in ("wan", "") else ())
    flat_names = {flat(n): n for n in table} if table is not None else None
    pairs, unknown, text_encoder, prefixes, tags = _classify(tensors, field_name, label)

    kinds = [v for k, v in _UNSUPPORTED.items() if any(k in u for u in unknown)]
    if kinds and not pairs:
        raise InputError(field_name, f"{label} is a {' / '.join(kinds)} file; only standard LoRA (A/B or down/up "
                                     "pairs) is supported")
    if text_encoder and not pairs:
        raise InputError(field_name, f"{label} holds only text-encoder weights ({len(text_encoder)} keys, e.g. "
                                     f"{text_encoder[0]}); LoRAs apply to the diffusion model here (as ComfyUI's "
                                     "LoraLoaderModelOnly), so this file would change nothing")
    out: dict[str, torch.Tensor] = {}
    hit: set[str] = set()
    ranks: list[int] = []
    zero_skipped = 0
    for base, parts in pairs.items():
        modules = _resolve(base, flat_names, aliases)
        if modules is None:
            if set(parts) <= {"diff", "bias", "alpha"} and all(not v.any() for v in parts.values()):
                zero_skipped += 1  # all-zero norm diffs (lightx2v): no effect, nothing to apply
            else:
                unknown.extend(f"{base}.{p}" for p in parts)
            continue
        in_f, out_f = table[modules[0]] if table is not None else (None, None)
        if ("A" not in parts or "B" not in parts) and not _as_lora_pair(base, parts, in_f, out_f):
            if "bias" in parts or "diff" in parts:
                unknown.append(f"{base} (a diff key on a layer whose size is unknown here)")
                continue
            missing = "lora_B (up)" if "A" in parts else "lora_A (down)"
            raise InputError(field_name, f"{label}: layer {base} has no {missing} weight; the file is incomplete")
        a, b = parts["A"], parts["B"]
        if a.ndim != 2 or b.ndim != 2:
            unknown.append(f"{base} (a {a.ndim}-D LoRA; only Linear layers are supported)")
            continue
        rank = a.shape[0]
        if b.shape[1] != rank:
            raise InputError(field_name, f"{label}: rank mismatch in layer {base}: lora_A is {tuple(a.shape)} (rank "
                                         f"{rank}), lora_B is {tuple(b.shape)} (rank {b.shape[1]})")
        want_out = None if out_f is None else out_f * len(modules)
        if (in_f is not None and a.shape[1] != in_f) or (want_out is not None and b.shape[0] != want_out):
            raise InputError(field_name, f"{label}: layer {base} is {a.shape[1]}→{b.shape[0]} in the file but "
                                         f"{in_f}→{want_out} in this model; the LoRA was made for another model")
        for t, what in ((a, "lora_A"), (b, "lora_B"), (parts.get("bias", a), "bias")):
            if not torch.isfinite(t).all():
                raise InputError(field_name, f"{label}: layer {base} ({what}) holds NaN or infinite values")
        alpha = parts.get("alpha")
        scale = float(alpha) / rank if alpha is not None else 1.0  # peft then runs at alpha = rank (scale 1)
        chunks = b.chunk(len(modules), dim=0)
        bias = parts.get("bias")
        bias_chunks = bias.chunk(len(modules), dim=0) if bias is not None else (None,) * len(modules)
        for module, b_part, bias_part in zip(modules, chunks, bias_chunks):
            out[f"transformer.{module}.lora_A.weight"] = a.contiguous()
            out[f"transformer.{module}.lora_B.weight"] = (b_part * scale if scale != 1.0 else b_part).contiguous()
            if bias_part is not None:
                out[f"transformer.{module}.lora_B.bias"] = bias_part.contiguous()
            hit.add(module)
            ranks.append(rank)
    _zero_biases(out)
    unknown += text_encoder  # after the model's own keys: the example names a key of the transformer first
    if text_encoder:
        notes = [*notes, f"{len(text_encoder)} text-encoder key(s) ignored: LoRAs apply to the diffusion model "
                         "only (as ComfyUI's LoraLoaderModelOnly)"]
    if not hit:
        example = f" (first key: {next(iter(tensors))})" if tensors else ""
        raise InputError(field_name, f"{label} matches 0 of {len(table or ())} modules of this model's transformer; "
                                     f"is it a LoRA for another model?{example}")
    report = {
        "layout": pre_layout or _layout(prefixes, tags), "ranks": tuple(ranks), "modules_hit": len(hit),
        "targets": tuple(sorted({_kind(m) for m in hit})), "unknown_count": len(unknown),
        "unknown_example": unknown[0] if unknown else "", "text_encoder_ignored": len(text_encoder),
        "notes": tuple(notes) + ((f"{zero_skipped} all-zero diff key(s) skipped (no effect)",) if zero_skipped
                                 else ()),
    }
    return out, report


def _zero_biases(out: dict[str, torch.Tensor]) -> None:
    """peft's ``lora_bias`` is per adapter: once one layer has a bias, every lora_B of the file needs one (zero)."""
    if not any(k.endswith(".lora_B.bias") for k in out):
        return
    for key in [k for k in out if k.endswith(".lora_B.weight")]:
        bias_key = key[: -len("weight")] + "bias"
        if bias_key not in out:
            out[bias_key] = torch.zeros(out[key].shape[0], dtype=out[key].dtype)


def _kind(module: str) -> str:
    """``transformer_blocks.3.attn.to_q`` -> ``attn.to_q``: what the layer is, without where."""
    parts = module.split(".")
    for i, p in enumerate(parts):
        if p.isdigit() and i + 1 < len(parts):
            return ".".join(parts[i + 1:])
    return module


def inspect_file(path: str, table: dict[str, tuple[int | None, int | None]] | None, field_name: str,
                 label: str = "", family: str = "") -> LoraInfo:
    """Read, check and convert one LoRA file against a model's module table."""
    label = label or os.path.basename(path)
    if not os.path.isfile(path):
        raise InputError(field_name, f"LoRA file not found: {path}")
    tensors = read_tensors(path, field_name)
    state, report = convert(tensors, table, field_name, label, family)
    ranks = report.pop("ranks")
    return LoraInfo(
        path=str(path), content_hash=content_hash(path), file_bytes=os.path.getsize(path),
        rank=max(ranks), ranks=ranks, modules_total=len(table) if table is not None else 0, state_dict=state,
        **report,
    )


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:200] if text else type(exc).__name__
