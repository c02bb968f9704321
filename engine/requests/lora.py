"""The LoRA stack (Qwen-Image) request."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import ClassVar

from engine.errors import InputError
from engine.requests.base import (
    MAX_SIDE,
    MAX_STEPS,
    LoraSpec,
    ModelRef,
    check_choice,
    check_float,
    check_image,
    check_int,
    check_lora_stack,
)
from engine.requests.image import TextToImageRequest

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
