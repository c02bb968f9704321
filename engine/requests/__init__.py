"""Typed requests: the contract between the UI, the engine, the exporter and the tests.

``base`` holds the shared parts (``ModelRef``, ``LoraSpec``, ``SwapSettings``, the field checks, JSON round trip);
one module per request kind holds that kind. Every name stays importable from ``engine.requests``.
"""

from engine.requests.base import (
    DTYPES,
    LORA_FILE_TYPES,
    LORA_WEIGHT_MAX,
    LORA_WEIGHT_MIN,
    MAX_LORAS,
    MAX_SEED,
    MAX_SIDE,
    MAX_STEPS,
    REQUEST_TYPES,
    SINGLE_FILE_PARTS,
    SWAP_MODES,
    LoraSpec,
    ModelRef,
    Request,
    SingleFiles,
    SwapSettings,
    check_lora_stack,
    request_from_dict,
)
from engine.requests.image import SDNQ_DTYPES, CatalogRequest, QuantizeRequest, TextToImageRequest
from engine.requests.ipadapter import IP_NORMS, MAX_REFERENCE_PIXELS, IPAdapterRequest, ReferenceImage
from engine.requests.lora import LORA_BACKENDS, LoraStackRequest
from engine.requests.perception import PERCEPTION_TASKS, PerceptionRequest
from engine.requests.video import (
    ASPECT_RATIOS,
    FIT_MODES,
    MAX_IMAGE_PIXELS,
    RESOLUTIONS,
    STEP_CACHES,
    TURBOWAN_REPO,
    VIDEO_FORMATS,
    VIDEO_RESOLUTIONS,
    I2VRequest,
    TurboWanSettings,
    nearest_4k1,
)

__all__ = [
    "ASPECT_RATIOS", "DTYPES", "FIT_MODES", "IP_NORMS", "LORA_BACKENDS", "LORA_FILE_TYPES", "LORA_WEIGHT_MAX",
    "LORA_WEIGHT_MIN", "MAX_IMAGE_PIXELS", "MAX_LORAS", "MAX_REFERENCE_PIXELS", "MAX_SEED", "MAX_SIDE", "MAX_STEPS",
    "PERCEPTION_TASKS", "REQUEST_TYPES", "RESOLUTIONS", "SDNQ_DTYPES", "SINGLE_FILE_PARTS", "STEP_CACHES",
    "SWAP_MODES", "TURBOWAN_REPO", "VIDEO_FORMATS", "VIDEO_RESOLUTIONS", "CatalogRequest", "I2VRequest",
    "IPAdapterRequest", "LoraSpec", "LoraStackRequest", "ModelRef", "PerceptionRequest", "QuantizeRequest",
    "ReferenceImage", "Request", "SingleFiles", "SwapSettings", "TextToImageRequest", "TurboWanSettings",
    "check_lora_stack", "nearest_4k1", "request_from_dict",
]
