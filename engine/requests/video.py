"""The image-to-video (Wan 2.2, TurboWan) request."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import ClassVar

from engine.errors import InputError
from engine.requests.base import (
    MAX_SEED,
    MAX_STEPS,
    LoraSpec,
    ModelRef,
    Request,
    SwapSettings,
    _Serialisable,
    check_choice,
    check_float,
    check_image,
    check_int,
    check_lora_stack,
    check_prompt,
    check_side,
)

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
STEP_CACHES = ("none", "first_block", "mag_cache")  # TaylorSeer: see engine/speed/step_cache.py
TURBOWAN_REPO = "TurboDiffusion/TurboWan2.2-I2V-A14B-720P"
TURBO_ATTENTION = ("sla", "original")  # the TurboDiffusion loader node's attention_type, less sagesla
SIGMA_MAX_LIMIT = 1600.0  # upstream's README: "sigma_max ... up to 1600" for I2V
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
    sigma_max: float = 200.0  # upstream's I2V default; its README suggests up to 1600 for more motion variety
    ode: bool = False  # upstream samples SDE unless --ode
    attention_type: str = "sla"  # what the released experts were fine-tuned for (engine/video/sla.py); "original"
    # = full attention without their proj_l branch (a warning says so). sagesla needs the SpargeAttn package.
    sla_topk: float = 0.1  # the share of key blocks each query block attends to (upstream's and seed 003's default)

    @classmethod
    def from_dict(cls, data, _prefix: str = ""):
        if isinstance(data, dict) and "attention" in data and "attention_type" not in data:
            data = {**data, "attention_type": data["attention"]}  # requests saved before the field was renamed
            data.pop("attention")
        return super().from_dict(data, _prefix)

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
        check_float(f"{name}.sigma_max", self.sigma_max, 1.0, SIGMA_MAX_LIMIT)
        if self.attention_type == "sagesla":
            raise InputError(f"{name}.attention_type", "sagesla needs the SpargeAttn CUDA package, which this app "
                                                       "does not use; \"sla\" runs the same trained weights")
        check_choice(f"{name}.attention_type", self.attention_type, TURBO_ATTENTION)
        check_float(f"{name}.sla_topk", self.sla_topk, 0.01, 1.0)


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
    # one LoRA stack per expert, as ComfyUI's official template and Wan2GP: ``loras`` on the high-noise expert
    # (the only transformer of TI2V 5B), ``loras_2`` on the low-noise one (``transformer_2``, as guidance_scale_2);
    # with TurboWan on, on its experts (diffusers Wan transformers once converted)
    loras: tuple[LoraSpec, ...] = ()
    loras_2: tuple[LoraSpec, ...] = ()

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
        check_lora_stack("loras", self.loras)
        check_lora_stack("loras_2", self.loras_2)


def check_image_size(name: str, path: str) -> None:
    """Refuse an image too large to decode safely, from its header alone."""
    from PIL import Image

    with Image.open(path) as im:
        w, h = im.size
    if w * h > MAX_IMAGE_PIXELS:
        raise InputError(name, f"{w}x{h} is {w * h / 1e6:.0f} MP; the limit is {MAX_IMAGE_PIXELS / 2**20:.0f} MP "
                               "(scale it down first)")
