"""Text-to-image, SDNQ catalog and quantize requests."""

from __future__ import annotations

import re
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
    check_choice,
    check_float,
    check_int,
    check_lora_stack,
    check_prompt,
    check_side,
)


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
    # the transformer's LoRA stack, on every image job (Flux, Chroma, Qwen-Image, IP-Adapter, SDNQ catalog)
    loras: tuple[LoraSpec, ...] = ()

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
        check_lora_stack("loras", self.loras)

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
