"""Typed requests: the contract between the UI, the engine, the exporter and the tests.

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


@dataclass(frozen=True)
class TextToImageRequest(Request):
    """A plain prompt-to-image run on a diffusers text-to-image pipeline."""

    kind: ClassVar[str] = "text_to_image"
    title: ClassVar[str] = "Text to image"

    model: ModelRef = field(default_factory=lambda: ModelRef(repo_id="black-forest-labs/FLUX.1-dev"))
    prompt: str = ""
    negative_prompt: str = ""
    width: int = 1024
    height: int = 1024
    steps: int = 28
    guidance_scale: float = 3.5  # distilled guidance on Flux, CFG scale elsewhere
    true_cfg_scale: float = 1.0  # real CFG on Flux/Qwen when a negative prompt is given; 1 = off
    seed: int = 0
    swap: SwapSettings = field(default_factory=SwapSettings)

    def validate(self) -> None:
        self.model.validate("model")
        self.validate_generation()

    def validate_generation(self) -> None:
        check_prompt("prompt", self.prompt)
        if not isinstance(self.negative_prompt, str):
            raise InputError("negative_prompt", "must be text")
        check_side("width", self.width)
        check_side("height", self.height)
        check_int("steps", self.steps, 1, MAX_STEPS)
        check_float("guidance_scale", self.guidance_scale, 0.0, 30.0)
        check_float("true_cfg_scale", self.true_cfg_scale, 1.0, 30.0)
        check_int("seed", self.seed, 0, MAX_SEED)
        self.swap.validate("swap")


SDNQ_DTYPES = ("int8", "int7", "int6", "int5", "uint4", "int4", "uint3", "uint2", "float8_e4m3fn", "float8_e5m2")


@dataclass(frozen=True)
class CatalogRequest(TextToImageRequest):
    """Generate with an SDNQ-quantized model: a catalog entry, a local folder or a demo model."""

    kind: ClassVar[str] = "sdnq_generate"
    title: ClassVar[str] = "SDNQ catalog"

    entry: str = ""  # catalog id; when set, it decides the model
    use_quantized_matmul: bool = False
    use_torch_compile: bool = False

    def validate(self) -> None:
        if not self.entry:
            self.model.validate("model")
        elif not isinstance(self.entry, str):
            raise InputError("entry", "must be a catalog id")
        self.validate_generation()


@dataclass(frozen=True)
class QuantizeRequest(Request):
    """Quantize a local diffusers model with SDNQ and save a folder that diffusers loads back."""

    kind: ClassVar[str] = "sdnq_quantize"
    title: ClassVar[str] = "Quantize with SDNQ"

    source: ModelRef = field(default_factory=ModelRef)
    output_name: str = "my-quantized-model"
    weights_dtype: str = "int8"
    group_size: int = 0  # 0 = sdnq's default
    use_svd: bool = False
    svd_rank: int = 32
    components: tuple[str, ...] = ("transformer",)
    # sdnq keeps embedders, final norms and some modulation (AdaLN) layers at 16 bit by default: they are
    # small but sensitive (grid artifacts when quantized at 4 bit). Off: every large Linear is quantized.
    keep_sensitive_layers: bool = True

    def validate(self) -> None:
        self.source.validate("source")
        if not isinstance(self.output_name, str) or not re.match(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$", self.output_name):
            raise InputError("output_name", "use letters, digits, '.', '_' or '-' (a folder name), up to 100 characters")
        check_choice("weights_dtype", self.weights_dtype, SDNQ_DTYPES)
        check_int("group_size", self.group_size, 0, 4096)
        if self.group_size and self.group_size & (self.group_size - 1):
            raise InputError("group_size", f"must be 0 (automatic) or a power of two, got {self.group_size}")
        check_int("svd_rank", self.svd_rank, 1, 1024)
        if not self.components:
            raise InputError("components", "pick at least one component to quantize")


MAX_REFERENCE_PIXELS = 64_000_000  # a reference is squashed to the encoder's 384 px anyway; this only stops bombs
IP_NORMS = ("kv", "k")  # RMSNorm on IP keys and values (ComfyUI pack) or on keys only (InstantX diffusers reference)


def check_reference_image(name: str, path: Any) -> None:
    """A decodable image of sane size: opened and fully read here, so a truncated file or a decompression bomb
    is an error naming the field, never a traceback from inside the run."""
    check_image(name, path)
    from PIL import Image

    try:
        with Image.open(path) as im:
            w, h = im.size
            if w * h > MAX_REFERENCE_PIXELS:
                raise InputError(name, f"{os.path.basename(path)} is {w}×{h} pixels; the limit is "
                                       f"{MAX_REFERENCE_PIXELS // 1_000_000} megapixels (scale it down first)")
            im.load()
    except (OSError, SyntaxError, ValueError) as exc:  # e.g. "image file is truncated"
        raise InputError(name, f"cannot read {os.path.basename(path)} as an image ({exc})") from None


@dataclass(frozen=True)
class ReferenceImage(_Serialisable):
    """One reference image and its own weight (ComfyUI: one chained Apply IPAdapter node per reference)."""

    path: str = ""
    weight: float = 1.0

    def validate(self, name: str = "reference") -> None:
        check_reference_image(f"{name}.path", self.path)
        check_float(f"{name}.weight", self.weight, -1.0, 5.0)


@dataclass(frozen=True)
class IPAdapterRequest(TextToImageRequest):
    """Flux/Chroma generation guided by reference images through the InstantX Flux IP-Adapter.

    The adapter's output in every block is ``sum_i weight_i * scale(step) * ip_i`` where ``scale`` is ``weight``,
    or, with ``ramp``, ComfyUI's Advanced node ramp from ``weight_start`` to ``weight_end`` over ``ramp_steps``
    in-window steps; it acts only while the sigma lies in ``[sigma(end_percent), sigma(start_percent)]``.
    """

    kind: ClassVar[str] = "ipadapter"
    title: ClassVar[str] = "IP-Adapter"

    ip_adapter: ModelRef = field(default_factory=lambda: ModelRef(repo_id="InstantX/FLUX.1-dev-IP-Adapter"))
    ip_adapter_file: str = ""  # file in the adapter repo/folder; "" = ip-adapter.safetensors if there, else .bin
    image_encoder: ModelRef = field(default_factory=lambda: ModelRef(repo_id="google/siglip-so400m-patch14-384"))
    references: tuple[ReferenceImage, ...] = ()
    weight: float = 1.0
    start_percent: float = 0.0
    end_percent: float = 1.0
    ramp: bool = False  # the Advanced node's linear weight ramp instead of the constant weight
    weight_start: float = 0.0
    weight_end: float = 1.0
    ramp_steps: int = 10
    ip_norm: str = "kv"
    offload_preprocessing: bool = True

    def validate(self) -> None:
        super().validate()
        self.ip_adapter.validate("ip_adapter")
        if not isinstance(self.ip_adapter_file, str) or "/" in self.ip_adapter_file or "\\" in self.ip_adapter_file:
            raise InputError("ip_adapter_file", "must be a file name inside the adapter folder")
        if self.ip_adapter_file and not self.ip_adapter_file.endswith((".bin", ".safetensors")):
            raise InputError("ip_adapter_file", "must be a .bin (read with weights_only) or .safetensors file")
        self.image_encoder.validate("image_encoder")
        if not self.references:
            raise InputError("references", "no reference image; upload at least one")
        for i, ref in enumerate(self.references):
            ref.validate(f"references[{i}]")
        check_float("weight", self.weight, -1.0, 5.0)
        check_float("start_percent", self.start_percent, 0.0, 1.0)
        check_float("end_percent", self.end_percent, 0.0, 1.0)
        if self.start_percent >= self.end_percent:
            raise InputError("end_percent", "must be greater than start_percent")
        check_float("weight_start", self.weight_start, -1.0, 5.0)
        check_float("weight_end", self.weight_end, -1.0, 5.0)
        check_int("ramp_steps", self.ramp_steps, 1, 100)
        check_choice("ip_norm", self.ip_norm, IP_NORMS)


PERCEPTION_TASKS = ("depth", "normal", "albedo", "pbr", "semantic")


@dataclass(frozen=True)
class PerceptionRequest(Request):
    """OmniX panorama perception: maps from an equirectangular panorama via Flux + task adapters."""

    kind: ClassVar[str] = "perception"
    title: ClassVar[str] = "Panorama perception"

    model: ModelRef = field(default_factory=lambda: ModelRef(repo_id="black-forest-labs/FLUX.1-dev"))
    adapters: ModelRef = field(default_factory=lambda: ModelRef(repo_id="KevinHuang/OmniX"))
    panorama: str = ""
    tasks: tuple[str, ...] = ("depth", "normal", "albedo")
    prompt: str = ""  # optional words after upstream's "[EQUIRECTANGULAR]"
    steps: int = 28
    guidance_scale: float = 3.5
    seed: int = 0
    seam_blending: bool = True  # upstream's latent padding + blend across the 0°/360° seam
    sphere_mesh: bool = True  # with depth: the panorama on a depth-displaced sphere, as .glb
    swap: SwapSettings = field(default_factory=SwapSettings)

    def validate(self) -> None:
        self.model.validate("model")
        self.adapters.validate("adapters")
        check_image("panorama", self.panorama)
        from engine.panorama.input import check_panorama  # local: keeps request import light

        check_panorama(self.panorama)
        if not self.tasks:
            raise InputError("tasks", "pick at least one map to compute")
        for i, t in enumerate(self.tasks):
            check_choice(f"tasks[{i}]", t, PERCEPTION_TASKS)
        if len(set(self.tasks)) != len(self.tasks):
            raise InputError("tasks", "each map once, please")
        if not isinstance(self.prompt, str):
            raise InputError("prompt", "must be text")
        check_int("steps", self.steps, 1, MAX_STEPS)
        check_float("guidance_scale", self.guidance_scale, 0.0, 30.0)
        check_int("seed", self.seed, 0, MAX_SEED)
        self.swap.validate("swap")


# Seed 003's resolution table (upstream TurboDiffusion's VIDEO_RES_SIZE_INFO), width x height.
VIDEO_RESOLUTIONS: dict[str, dict[str, tuple[int, int]]] = {
    "480": {"16:9": (768, 432), "9:16": (432, 768), "4:3": (640, 480), "3:4": (480, 640), "1:1": (480, 480)},
    "480p": {"16:9": (832, 480), "9:16": (480, 832), "4:3": (640, 480), "3:4": (480, 640), "1:1": (640, 640)},
    "512": {"16:9": (640, 384), "9:16": (384, 640), "4:3": (640, 512), "3:4": (512, 640), "1:1": (512, 512)},
    "720": {"16:9": (1280, 704), "9:16": (704, 1280), "4:3": (960, 704), "3:4": (704, 960), "1:1": (960, 960)},
    "720p": {"16:9": (1280, 720), "9:16": (720, 1280), "4:3": (960, 720), "3:4": (720, 960), "1:1": (960, 960)},
}
RESOLUTIONS = (*VIDEO_RESOLUTIONS, "custom")
ASPECT_RATIOS = ("16:9", "9:16", "4:3", "3:4", "1:1")
VIDEO_FORMATS = ("mp4", "webm", "gif")
FIT_MODES = ("crop", "pad", "stretch")  # how the start image meets the video size
STEP_CACHES = ("none", "first_block", "mag_cache")  # TaylorSeer: see engine/step_cache.py
TURBOWAN_REPO = "TurboDiffusion/TurboWan2.2-I2V-A14B-720P"
MAX_IMAGE_PIXELS = 64 * 2**20  # a start image above 64 MP is refused before it is decoded


def nearest_4k1(n: int) -> tuple[int, int]:
    """The valid frame counts (4k+1) just below and above ``n``."""
    lower = max(1, (n - 1) // 4 * 4 + 1)
    return lower, lower + 4


@dataclass(frozen=True)
class TurboWanSettings(_Serialisable):
    """TurboDiffusion's few-step TurboWan experts (``.pth`` files in upstream's layout) sampled with rCM.

    ``checkpoints`` holds ``TurboWan2.2-I2V-A14B-{high,low}-720P[-quant].pth``; ``high_path``/``low_path`` point at
    files elsewhere. The text encoder, VAE and configs come from the request's Wan 2.2 I2V model."""

    enabled: bool = False
    checkpoints: ModelRef = field(default_factory=lambda: ModelRef(repo_id=TURBOWAN_REPO))
    quantized: bool = True  # the int8 "-quant" files (half the download), dequantised on load
    high_path: str = ""
    low_path: str = ""
    sigma_max: float = 200.0
    ode: bool = False  # upstream samples SDE unless --ode
    attention: str = "original"  # sla / sagesla need SpargeAttn kernels that no maintained package ships

    def file_names(self) -> tuple[str, str]:
        suffix = "-quant" if self.quantized else ""
        return tuple(f"TurboWan2.2-I2V-A14B-{e}-720P{suffix}.pth" for e in ("high", "low"))  # type: ignore[return-value]

    def validate(self, name: str = "turbo") -> None:
        for flag in ("enabled", "quantized", "ode"):
            if not isinstance(getattr(self, flag), bool):
                raise InputError(f"{name}.{flag}", f"must be true or false, got {getattr(self, flag)!r}")
        if not self.enabled:
            return
        if bool(self.high_path) != bool(self.low_path):
            raise InputError(f"{name}.low_path" if self.high_path else f"{name}.high_path",
                             "give both TurboWan expert files (high- and low-noise), or neither")
        for key in ("high_path", "low_path"):
            path = getattr(self, key)
            if path and not os.path.isfile(path):
                raise InputError(f"{name}.{key}", f"file not found: {path}")
            if path and not path.endswith((".pth", ".pt", ".safetensors")):
                raise InputError(f"{name}.{key}", "expects a TurboWan .pth (or .safetensors) checkpoint")
        if not self.high_path:
            self.checkpoints.validate(f"{name}.checkpoints")
        check_float(f"{name}.sigma_max", self.sigma_max, 1.0, 1000.0)
        check_choice(f"{name}.attention", self.attention, ("original",))


@dataclass(frozen=True)
class I2VRequest(Request):
    """Wan 2.2 image-to-video: A14B with two experts switched at a boundary, or TI2V 5B with one; optionally the
    TurboWan few-step experts sampled with rCM. Carries what the ComfyUI export needs for both the core Wan 2.2
    graph and seed 003's TurboDiffusion nodes (loader, sampler and save-video inputs, block swap included)."""

    kind: ClassVar[str] = "i2v"
    title: ClassVar[str] = "Image to video"

    model: ModelRef = field(default_factory=lambda: ModelRef(repo_id="Wan-AI/Wan2.2-I2V-A14B-Diffusers"))
    image: str = ""
    prompt: str = ""
    negative_prompt: str = ""
    resolution: str = "480p"  # a row of VIDEO_RESOLUTIONS, or "custom" (then width/height as given)
    aspect_ratio: str = "16:9"
    width: int = 832
    height: int = 480
    fit: str = "crop"
    num_frames: int = 81
    steps: int = 40
    guidance_scale: float = 3.5  # high-noise expert (the only one on TI2V 5B)
    guidance_scale_2: float = 3.5  # low-noise expert
    boundary_ratio: float = 0.9  # the high-noise expert runs while t >= boundary * 1000
    fps: int = 16
    seed: int = 0
    output_format: str = "mp4"
    quality: int = 8  # 1..10, as the TurboDiffusion save node
    loop: bool = True  # gif only
    step_cache: str = "none"
    cache_threshold: float = 0.05  # First Block Cache: relative change of the first block's output to skip on
    preview_every: int = 2  # steps between live previews; 0 = off
    turbo: TurboWanSettings = field(default_factory=TurboWanSettings)
    swap: SwapSettings = field(default_factory=lambda: SwapSettings(mode="block_swap"))

    @classmethod
    def size_for(cls, resolution: str, aspect_ratio: str) -> tuple[int, int]:
        return VIDEO_RESOLUTIONS[resolution][aspect_ratio]

    def validate(self) -> None:
        self.model.validate("model")
        check_image("image", self.image)
        check_image_size("image", self.image)
        check_prompt("prompt", self.prompt)
        if not isinstance(self.negative_prompt, str):
            raise InputError("negative_prompt", "must be text")
        check_choice("resolution", self.resolution, RESOLUTIONS)
        check_choice("aspect_ratio", self.aspect_ratio, ASPECT_RATIOS)
        check_side("width", self.width)
        check_side("height", self.height)
        if self.resolution != "custom" and (self.width, self.height) != self.size_for(self.resolution,
                                                                                       self.aspect_ratio):
            w, h = self.size_for(self.resolution, self.aspect_ratio)
            raise InputError("resolution", f"{self.resolution} {self.aspect_ratio} is {w}x{h}, not "
                                           f"{self.width}x{self.height}; pick \"custom\" for another size")
        check_choice("fit", self.fit, FIT_MODES)
        check_int("num_frames", self.num_frames, 1, 241)
        if (self.num_frames - 1) % 4:
            lo, hi = nearest_4k1(self.num_frames)
            raise InputError("num_frames", f"must be 4k+1 for Wan (the VAE packs 4 frames after the first); "
                                           f"nearest: {lo} or {hi}, got {self.num_frames}")
        check_int("steps", self.steps, 1, 4 if self.turbo.enabled else MAX_STEPS)
        check_float("guidance_scale", self.guidance_scale, 0.0, 30.0)
        check_float("guidance_scale_2", self.guidance_scale_2, 0.0, 30.0)
        check_float("boundary_ratio", self.boundary_ratio, 0.0, 1.0)
        if not 0.0 < self.boundary_ratio < 1.0:
            raise InputError("boundary_ratio", f"must be strictly between 0 and 1 (0.9 is the usual), got "
                                               f"{self.boundary_ratio:g}")
        check_int("fps", self.fps, 1, 60)
        check_int("seed", self.seed, 0, MAX_SEED)
        check_choice("output_format", self.output_format, VIDEO_FORMATS)
        check_int("quality", self.quality, 1, 10)
        if not isinstance(self.loop, bool):
            raise InputError("loop", f"must be true or false, got {self.loop!r}")
        check_choice("step_cache", self.step_cache, STEP_CACHES)
        if self.step_cache == "mag_cache" and self.turbo.enabled:
            raise InputError("step_cache", "MagCache skips some of many steps; TurboWan's 1-4 rCM steps leave none "
                                           "to skip (pick none or first_block)")
        check_float("cache_threshold", self.cache_threshold, 0.0, 1e9)
        check_int("preview_every", self.preview_every, 0, MAX_STEPS)
        self.turbo.validate("turbo")
        self.swap.validate("swap")


def check_image_size(name: str, path: str) -> None:
    """Refuse an image too large to decode safely, from its header alone."""
    from PIL import Image

    with Image.open(path) as im:
        w, h = im.size
    if w * h > MAX_IMAGE_PIXELS:
        raise InputError(name, f"{w}x{h} is {w * h / 1e6:.0f} MP; the limit is {MAX_IMAGE_PIXELS / 2**20:.0f} MP "
                               "(scale it down first)")


LORA_BACKENDS = ("diffusers", "nunchaku")


@dataclass(frozen=True)
class LoraStackRequest(TextToImageRequest):
    """Qwen-Image generation with an ordered, weighted stack of LoRAs, and an optional second stage
    (image-to-image refine, optionally upscaled) with its own stack, as in seed 004's multi-stage workflows."""

    kind: ClassVar[str] = "lora_stack"
    title: ClassVar[str] = "LoRA stack"

    model: ModelRef = field(default_factory=lambda: ModelRef(repo_id="Qwen/Qwen-Image"))
    loras: tuple[LoraSpec, ...] = ()
    input_image: str = ""  # given: Qwen-Image-Edit (the model must be an Edit model)
    step_cache: float = 0.0  # First Block Cache threshold; 0 = off
    backend: str = "diffusers"  # "nunchaku": SVDQuant weights, when the real nunchaku package is installed
    nunchaku_transformer: str = ""  # the svdq-*.safetensors file for the nunchaku backend
    stage2: bool = False
    stage2_loras: tuple[LoraSpec, ...] = ()
    stage2_strength: float = 0.5  # how much of stage 1's image the refine may change (img2img strength)
    stage2_steps: int = 0  # 0 = same as stage 1
    stage2_upscale: float = 1.0

    def validate(self) -> None:
        super().validate()
        check_lora_stack("loras", self.loras)
        if self.input_image:
            check_image("input_image", self.input_image)
        check_float("step_cache", self.step_cache, 0.0, 1e9)
        check_choice("backend", self.backend, LORA_BACKENDS)
        if self.backend == "nunchaku" and not os.path.isfile(self.nunchaku_transformer or ""):
            raise InputError("nunchaku_transformer", "give the Nunchaku svdq-*.safetensors transformer file")
        if self.stage2:
            check_lora_stack("stage2_loras", self.stage2_loras)
            check_float("stage2_strength", self.stage2_strength, 0.01, 1.0)
            check_int("stage2_steps", self.stage2_steps, 0, MAX_STEPS)
            check_float("stage2_upscale", self.stage2_upscale, 1.0, 4.0)
            for side in ("width", "height"):
                value = round(getattr(self, side) * self.stage2_upscale)
                if value % 16 or value > MAX_SIDE:
                    raise InputError("stage2_upscale", f"gives a {side} of {value} px; it must be a multiple of 16 "
                                                       f"up to {MAX_SIDE}")
