"""One runner module per request type.

A runner module has ``run(engine, request, progress, cancel) -> Result`` and may have
``prepare(engine, request, progress, cancel)``, which the engine calls *before* it takes the
device lock: downloads belong there, so a long download never blocks another user's run.
"""

from __future__ import annotations

import importlib

from engine.errors import EngineError
from engine.requests import Request

# request kind -> module holding its ``run``; imported on first use (diffusers imports are slow)
RUNNERS = {
    "text_to_image": "text2image",
    "sdnq_generate": "catalog",
    "sdnq_quantize": "quantize",
    "ipadapter": "ipadapter",
    "lora_stack": "lora_stack",
    "i2v": "i2v",
    "perception": "perception",
}


def runner_for(request: Request):
    module = RUNNERS.get(request.kind)
    if module is None:
        raise EngineError(f"{request.title or type(request).__name__} runs are not built yet in this version of the app.")
    return importlib.import_module(f"{__name__}.{module}")
