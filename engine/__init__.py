"""The engine behind the app: requests in, results out. Knows nothing of Gradio."""

from engine.engine import Engine
from engine.errors import Cancelled, EngineError, InputError, ModelLoadError, OutOfBudgetError
from engine.requests import (
    CatalogRequest,
    I2VRequest,
    IPAdapterRequest,
    LoraSpec,
    LoraStackRequest,
    ModelRef,
    PerceptionRequest,
    QuantizeRequest,
    ReferenceImage,
    Request,
    SwapSettings,
    TextToImageRequest,
    request_from_dict,
)
from engine.result import Result

__all__ = [
    "Cancelled", "CatalogRequest", "Engine", "EngineError", "I2VRequest", "IPAdapterRequest", "InputError",
    "LoraSpec", "LoraStackRequest", "ModelLoadError", "ModelRef", "OutOfBudgetError", "PerceptionRequest",
    "QuantizeRequest", "ReferenceImage", "Request", "Result", "SwapSettings", "TextToImageRequest", "request_from_dict",
]
