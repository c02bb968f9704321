"""Shared parts of every request: model references, LoRA specs, swap settings, the field checks and the JSON round trip.

Every request is a frozen dataclass that validates itself (``validate()`` raises
``InputError(field, message)``) and round-trips through JSON (``to_dict`` / ``from_dict``),
so that a run can be saved, replayed headless and exported to ComfyUI.
"""

from __future__ import annotations

import dataclasses
import os
import re
import typing
from dataclasses import dataclass, field
from typing import Any, ClassVar

from engine.errors import InputError

MAX_SEED = 2**64 - 1  # ComfyUI's seed range, so an exported seed is always accepted
MAX_SIDE = 4096
MAX_STEPS = 200
DTYPES = ("auto", "float32", "bfloat16", "float16")
_REPO_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,95}/[A-Za-z0-9][A-Za-z0-9._-]{0,95}$")


# ---------------------------------------------------------------- field checks
def check_int(name: str, value: Any, lo: int, hi: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise InputError(name, f"must be a whole number, got {value!r}")
    if not lo <= value <= hi:
        raise InputError(name, f"must be between {lo} and {hi}, got {value}")


def check_float(name: str, value: Any, lo: float, hi: float) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value != value:
        raise InputError(name, f"must be a number, got {value!r}")
    if not lo <= value <= hi:
        raise InputError(name, f"must be between {lo:g} and {hi:g}, got {value:g}")


def check_side(name: str, value: Any, multiple: int = 16) -> None:
    check_int(name, value, multiple, MAX_SIDE)
    if value % multiple:
        lower = value - value % multiple
        raise InputError(
            name, f"must be a multiple of {multiple} (try {lower or multiple} or {lower + multiple}), got {value}"
        )


def check_prompt(name: str, value: Any) -> None:
    if not isinstance(value, str) or not value.strip():
        raise InputError(name, "is empty; describe what you want to see")


def check_choice(name: str, value: Any, choices: typing.Iterable[str]) -> None:
    choices = tuple(choices)
    if value not in choices:
        raise InputError(name, f"must be one of {', '.join(choices)}; got {value!r}")


def check_image(name: str, path: Any) -> None:
    """The path must name an image file that Pillow can decode."""
    if not isinstance(path, str) or not path:
        raise InputError(name, "no image given; upload one")
    if not os.path.isfile(path):
        raise InputError(name, f"image file not found: {path}")
    from PIL import Image, UnidentifiedImageError  # local: keeps request import light

    try:
        with Image.open(path) as im:
            im.verify()
    except Image.DecompressionBombError as exc:  # not an OSError: it would escape as a traceback
        raise InputError(name, f"{os.path.basename(path)} is too large to open safely ({exc})") from None
    except (UnidentifiedImageError, OSError, SyntaxError) as exc:
        raise InputError(name, f"cannot read {os.path.basename(path)} as an image ({exc})") from None


# ---------------------------------------------------------------- base machinery
class _Serialisable:
    """JSON round-trip for (nested) frozen dataclasses."""

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for f in dataclasses.fields(self):  # type: ignore[arg-type]
            out[f.name] = _encode(getattr(self, f.name))
        kind = getattr(type(self), "kind", None)
        if kind:
            out = {"kind": kind, **out}
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any], _prefix: str = ""):
        if not isinstance(data, dict):
            raise InputError(_prefix or "request", f"expected an object, got {type(data).__name__}")
        data = dict(data)
        data.pop("kind", None)
        if not _prefix:  # a saved request JSON also lists the input files it needs (engine.outputs.request_json)
            data.pop("needs", None)
        hints = typing.get_type_hints(cls)
        names = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
        unknown = sorted(set(data) - names)
        if unknown:
            raise InputError(_prefix + unknown[0], f"unknown field for {cls.__name__}")
        kwargs = {k: _decode(hints[k], v, _prefix + k) for k, v in data.items()}
        try:
            return cls(**kwargs)
        except TypeError as exc:  # a required field is missing
            raise InputError(_prefix or "request", str(exc)) from None


def _encode(value: Any) -> Any:
    if isinstance(value, _Serialisable):
        return value.to_dict()
    if isinstance(value, (tuple, list)):
        return [_encode(v) for v in value]
    return value


def _decode(hint: Any, value: Any, name: str) -> Any:
    origin = typing.get_origin(hint)
    if isinstance(hint, type) and issubclass(hint, _Serialisable):
        return hint.from_dict(value, name + ".")
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise InputError(name, f"expected a list, got {type(value).__name__}")
        (item,) = {a for a in typing.get_args(hint) if a is not Ellipsis}
        return tuple(_decode(item, v, f"{name}[{i}]") for i, v in enumerate(value))
    return value


# ---------------------------------------------------------------- shared parts
SINGLE_FILE_PARTS = ("transformer", "transformer_2", "vae", "text_encoder", "text_encoder_2", "image_encoder")


@dataclass(frozen=True)
class SingleFiles(_Serialisable):
    """Pieces of a model given as single files (a ComfyUI models folder, or any ``.safetensors``), each an absolute
    path; an empty piece comes from the ModelRef's repo/folder, which also supplies every config. The ComfyUI
    export names each file by its path inside the ComfyUI category folder (``vae/ae.safetensors`` -> ``ae.safetensors``).

    transformer: ``diffusion_models``/``unet``/``checkpoints`` (Wan 2.2 A14B: the high-noise expert);
    transformer_2: the Wan 2.2 A14B low-noise expert; text_encoder: CLIP-L (Flux), T5-XXL (Chroma), umT5 (Wan),
    Qwen2.5-VL (Qwen-Image); text_encoder_2: T5-XXL (Flux); image_encoder: ``clip_vision`` (SigLIP)."""

    transformer: str = ""
    transformer_2: str = ""
    vae: str = ""
    text_encoder: str = ""
    text_encoder_2: str = ""
    image_encoder: str = ""

    def given(self) -> dict[str, str]:
        return {part: getattr(self, part) for part in SINGLE_FILE_PARTS if getattr(self, part)}

    def validate(self, name: str = "files") -> None:
        for part, path in self.given().items():
            if not isinstance(path, str) or not os.path.isfile(path):
                raise InputError(f"{name}.{part}", f"file not found: {path}")


@dataclass(frozen=True)
class ModelRef(_Serialisable):
    """Where a model lives: a hub repo id (downloaded into the HF cache) or a local folder/file; ``files`` swaps in
    single-file pieces (the repo/folder then supplies configs and whatever ``files`` leaves empty)."""

    repo_id: str = ""
    path: str = ""
    revision: str = ""
    subfolder: str = ""
    dtype: str = "auto"  # auto = bfloat16 on an accelerator, float32 on CPU
    files: SingleFiles = field(default_factory=SingleFiles)

    def validate(self, name: str = "model") -> None:
        if bool(self.repo_id) == bool(self.path):
            raise InputError(name, "give either a hub repo id (owner/name) or a local path, not both or neither")
        if self.repo_id and not _REPO_ID.match(self.repo_id):
            raise InputError(f"{name}.repo_id", f"{self.repo_id!r} is not a hub repo id of the form owner/name")
        if self.path and not os.path.exists(self.path):
            raise InputError(f"{name}.path", f"no such file or folder: {self.path}")
        check_choice(f"{name}.dtype", self.dtype, DTYPES)
        if not isinstance(self.files, SingleFiles):
            raise InputError(f"{name}.files", "must be an object of single-file paths")
        self.files.validate(f"{name}.files")

    @property
    def label(self) -> str:
        if self.files.transformer:
            return os.path.basename(self.files.transformer)
        return self.repo_id or os.path.basename(os.path.normpath(self.path))


LORA_WEIGHT_MIN, LORA_WEIGHT_MAX = -2.0, 2.0
LORA_FILE_TYPES = (".safetensors", ".pt", ".pth", ".bin", ".ckpt")  # pickles only via torch.load(weights_only=True)
MAX_LORAS = 32  # per stack: beyond this the summed low-rank branches cost more than they are worth; a clear limit


@dataclass(frozen=True)
class LoraSpec(_Serialisable):
    """One entry of a LoRA stack: a local file, or a file of a hub repo (``repo_id`` + ``filename``)."""

    path: str = ""
    weight: float = 1.0
    enabled: bool = True
    name: str = ""
    repo_id: str = ""
    filename: str = ""
    revision: str = ""

    @property
    def label(self) -> str:
        return self.name or os.path.basename(self.path or self.filename) or self.repo_id

    def validate(self, name: str = "lora") -> None:
        if self.repo_id:
            if not _REPO_ID.match(self.repo_id):
                raise InputError(f"{name}.repo_id", f"{self.repo_id!r} is not a hub repo id of the form owner/name")
            if not self.filename or self.filename.startswith("/") or ".." in self.filename.split("/"):
                raise InputError(f"{name}.filename", "give the LoRA's file name inside the repo")
            where = self.filename
        else:
            if not self.path:
                raise InputError(f"{name}.path", "no LoRA file given")
            if not os.path.isfile(self.path):
                raise InputError(f"{name}.path", f"LoRA file not found: {self.path}")
            where = self.path
        if not where.lower().endswith(LORA_FILE_TYPES):
            raise InputError(f"{name}.path", f"{os.path.basename(where)} is not a LoRA file "
                                             f"({', '.join(LORA_FILE_TYPES)}; .safetensors preferred)")
        if not isinstance(self.enabled, bool):
            raise InputError(f"{name}.enabled", "must be true or false")
        check_float(f"{name}.weight", self.weight, LORA_WEIGHT_MIN, LORA_WEIGHT_MAX)


def check_lora_stack(name: str, loras: tuple[LoraSpec, ...]) -> None:
    if len(loras) > MAX_LORAS:
        raise InputError(name, f"{len(loras)} LoRAs in one stack; the limit is {MAX_LORAS}")
    seen: dict[tuple, int] = {}
    for i, lora in enumerate(loras):
        if not isinstance(lora, LoraSpec):
            raise InputError(f"{name}[{i}]", "must be a LoRA entry")
        lora.validate(f"{name}[{i}]")
        key = (lora.repo_id, lora.filename) if lora.repo_id else (os.path.realpath(lora.path),)
        if key in seen:
            raise InputError(f"{name}[{i}]", f"{lora.label} is already in the stack as entry {seen[key] + 1}; "
                                             "change that entry's strength instead")
        seen[key] = i

SWAP_MODES = ("none", "model_offload", "block_swap", "adaptive", "chunkwise", "layerwise", "cpu_only")


@dataclass(frozen=True)
class SwapSettings(_Serialisable):
    mode: str = "none"
    max_vram_gb: float = 0.0  # 0 = use what the device has
    blocks_resident: int = 0
    block_size_mb: int = 100
    prefetch: int = 1
    use_streams: bool = True
    trace: bool = False  # per-block copy/compute/wait times, written as CSV beside the output

    def validate(self, name: str = "swap") -> None:
        check_choice(f"{name}.mode", self.mode, SWAP_MODES)
        check_float(f"{name}.max_vram_gb", self.max_vram_gb, 0.0, 1024.0)
        check_int(f"{name}.blocks_resident", self.blocks_resident, 0, 1000)
        check_int(f"{name}.block_size_mb", self.block_size_mb, 1, 100_000)
        check_int(f"{name}.prefetch", self.prefetch, 0, 8)
        for flag in ("use_streams", "trace"):
            if not isinstance(getattr(self, flag), bool):
                raise InputError(f"{name}.{flag}", f"must be true or false, got {getattr(self, flag)!r}")


# ---------------------------------------------------------------- requests
REQUEST_TYPES: dict[str, type[Request]] = {}


class Request(_Serialisable):
    kind: ClassVar[str] = ""
    title: ClassVar[str] = ""

    def __init_subclass__(cls, **kw):
        super().__init_subclass__(**kw)
        if cls.__dict__.get("kind"):
            REQUEST_TYPES[cls.kind] = cls

    def validate(self) -> None:  # pragma: no cover - every request overrides it
        raise NotImplementedError


def request_from_dict(data: dict[str, Any]) -> Request:
    """Build the right request type from a saved JSON object (its ``kind`` decides)."""
    if not isinstance(data, dict):
        raise InputError("request", "a saved request must be a JSON object")
    kind = data.get("kind")
    if kind not in REQUEST_TYPES:
        raise InputError("kind", f"unknown request kind {kind!r}; known: {', '.join(sorted(REQUEST_TYPES))}")
    return REQUEST_TYPES[kind].from_dict(data)
