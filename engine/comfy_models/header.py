"""What a weight file holds, read without loading a tensor: the safetensors header (names, dtypes, shapes, byte
ranges, metadata), checked against the file's size so that a truncated or empty file is named as such; for a
pickle (``.ckpt``/``.pt``/``.pth``/``.bin``) the tensor table via ``torch.load(weights_only=True, mmap=True)``,
which never runs code from the file and maps rather than reads the tensor bytes."""

from __future__ import annotations

import json
import os
import struct
from dataclasses import dataclass, field

SAFETENSORS_SUFFIXES = (".safetensors", ".sft")
PICKLE_SUFFIXES = (".ckpt", ".pt", ".pth", ".bin")
WEIGHT_SUFFIXES = SAFETENSORS_SUFFIXES + PICKLE_SUFFIXES
MAX_HEADER_BYTES = 100 * 2**20  # the largest real headers (fp8 checkpoints with scales) are a few MB

# bytes per element of the safetensors dtypes
DTYPE_BYTES = {"F64": 8, "I64": 8, "U64": 8, "F32": 4, "I32": 4, "U32": 4, "F16": 2, "BF16": 2, "I16": 2, "U16": 2,
               "F8_E4M3": 1, "F8_E5M2": 1, "I8": 1, "U8": 1, "BOOL": 1}


class HeaderError(ValueError):
    """The file cannot be read as a weight file; the message says why in words."""


@dataclass
class TensorTable:
    """name -> (dtype, shape) of every tensor in a file, and the file's metadata."""

    tensors: dict[str, tuple[str, tuple[int, ...]]]
    metadata: dict[str, str] = field(default_factory=dict)
    format: str = "safetensors"

    def shape(self, key: str) -> tuple[int, ...] | None:
        entry = self.tensors.get(key)
        return entry[1] if entry else None


def read_safetensors_header(path: str) -> TensorTable:
    """The header of a safetensors file; ``HeaderError`` for an empty, truncated or malformed one."""
    size = os.path.getsize(path)
    if size == 0:
        raise HeaderError("the file is empty (0 bytes); it was probably not downloaded completely")
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise HeaderError(f"the file is {size} bytes, too short for a safetensors header")
        (n,) = struct.unpack("<Q", head)
        if n > MAX_HEADER_BYTES or 8 + n > size:
            raise HeaderError(f"its header claims {n} bytes but the file has {size}: truncated or not safetensors")
        raw = f.read(n)
    try:
        header = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise HeaderError(f"the header is not valid JSON ({exc.__class__.__name__}): not a safetensors file") from None
    if not isinstance(header, dict):
        raise HeaderError("the header is not a table of tensors")
    metadata = header.pop("__metadata__", None) or {}
    tensors: dict[str, tuple[str, tuple[int, ...]]] = {}
    end = 0
    for name, info in header.items():
        try:
            dtype, shape, (_, stop) = info["dtype"], tuple(int(s) for s in info["shape"]), info["data_offsets"]
        except (KeyError, TypeError, ValueError):
            raise HeaderError(f"tensor {name!r} has a malformed entry in the header") from None
        tensors[name] = (dtype, shape)
        end = max(end, int(stop))
    if 8 + n + end > size:
        missing = 8 + n + end - size
        raise HeaderError(f"truncated: the tensors need {8 + n + end} bytes, the file has {size} "
                          f"({missing} missing); download it again")
    return TensorTable(tensors, {str(k): str(v) for k, v in metadata.items()})


_TORCH_DTYPES = {"float32": "F32", "float16": "F16", "bfloat16": "BF16", "float8_e4m3fn": "F8_E4M3",
                 "float8_e5m2": "F8_E5M2", "float64": "F64", "int64": "I64", "int32": "I32", "int8": "I8",
                 "uint8": "U8", "bool": "BOOL", "int16": "I16"}


def flatten_state(obj, prefix: str = "") -> dict:
    """A (nested) pickled checkpoint as one flat name -> tensor dict; ``state_dict``/``model`` wrappers and
    nested parts (``{"image_proj": {...}}``) become dotted prefixes."""
    import torch

    out = {}
    if isinstance(obj, torch.Tensor):
        out[prefix.rstrip(".")] = obj
    elif isinstance(obj, dict):
        for key in ("state_dict", "model", "module"):  # the usual training-script wrappers
            if set(obj) == {key} or (key == "state_dict" and key in obj and isinstance(obj[key], dict)):
                return flatten_state(obj[key], prefix)
        for key, value in obj.items():
            out.update(flatten_state(value, f"{prefix}{key}."))
    return out


def load_pickle_weights_only(path: str, mmap: bool = True) -> dict:
    """The flat tensor dict of a pickled checkpoint, or ``HeaderError`` saying why it is refused. Only
    ``torch.load(weights_only=True)``: a pickle that needs anything else would run code, and is never loaded."""
    import pickle

    import torch

    if os.path.getsize(path) == 0:
        raise HeaderError("the file is empty (0 bytes); it was probably not downloaded completely")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except pickle.UnpicklingError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise HeaderError(f"refused: this pickle needs more than plain tensors to load ({first}); loading it "
                          "could run code, so it is never opened. Use a .safetensors copy") from None
    except RuntimeError as exc:
        if mmap and "mmap" in str(exc):  # the legacy (non-zip) format cannot be mapped: read it instead
            return load_pickle_weights_only(path, mmap=False)
        raise HeaderError(f"cannot read it as a PyTorch checkpoint: {str(exc).splitlines()[0]}") from None
    except (OSError, EOFError, ValueError) as exc:
        raise HeaderError(f"cannot read it as a PyTorch checkpoint (truncated or not a checkpoint): "
                          f"{str(exc).splitlines()[0] if str(exc) else type(exc).__name__}") from None
    flat = flatten_state(obj)
    if not flat:
        raise HeaderError("the checkpoint holds no tensors")
    return flat


def read_pickle_table(path: str) -> TensorTable:
    tensors = load_pickle_weights_only(path)
    table = {k: (_TORCH_DTYPES.get(str(v.dtype).removeprefix("torch."), str(v.dtype)), tuple(v.shape))
             for k, v in tensors.items()}
    return TensorTable(table, format="pickle")


def read_table(path: str) -> TensorTable:
    if path.lower().endswith(SAFETENSORS_SUFFIXES):
        return read_safetensors_header(path)
    return read_pickle_table(path)


def weight_dtype(table: TensorTable) -> str:
    """A label for how the weights are stored: the dtype holding most bytes, "scaled fp8" when the file carries
    ComfyUI's per-layer ``scale_weight`` tensors (or the ``scaled_fp8`` marker)."""
    totals: dict[str, int] = {}
    for dtype, shape in table.tensors.values():
        n = 1
        for s in shape:
            n *= s
        totals[dtype] = totals.get(dtype, 0) + n * DTYPE_BYTES.get(dtype, 4)
    if not totals:
        return "?"
    main = max(totals, key=totals.get)
    scaled = "scaled_fp8" in table.tensors or any(k.endswith(".scale_weight") for k in table.tensors)
    labels = {"BF16": "bf16", "F16": "fp16", "F32": "fp32", "F8_E4M3": "fp8 e4m3fn", "F8_E5M2": "fp8 e5m2",
              "I8": "int8", "U8": "uint8"}
    label = labels.get(main, main.lower())
    fp8 = next((d for d, _ in table.tensors.values() if d.startswith("F8")), "")
    if scaled and fp8:  # the fp8 weights are what makes the file (a tiny one may hold more bytes in its norms)
        label = f"scaled {labels.get(fp8, fp8.lower())}"
    return label
