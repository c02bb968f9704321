"""The panorama perception (OmniX) request."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

from engine.errors import InputError
from engine.requests.base import (
    MAX_SEED,
    MAX_STEPS,
    ModelRef,
    Request,
    SwapSettings,
    check_choice,
    check_float,
    check_image,
    check_int,
)

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
