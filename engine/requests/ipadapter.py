"""The IP-Adapter request and its reference images."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any, ClassVar

from engine.errors import InputError
from engine.requests.base import ModelRef, _Serialisable, check_choice, check_float, check_image, check_int
from engine.requests.image import TextToImageRequest

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
