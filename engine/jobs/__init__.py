"""One runner per request type. A runner is ``run(engine, request, progress, cancel) -> Result``."""

from __future__ import annotations

import importlib

from ..errors import EngineError
from ..requests import Request

# request kind -> module holding its ``run``; imported on first use (diffusers imports are slow)
RUNNERS = {
    "text_to_image": "text2image",
    "sdnq_generate": "catalog",
    "sdnq_quantize": "quantize",
}


def runner_for(request: Request):
    module = RUNNERS.get(request.kind)
    if module is None:
        raise EngineError(f"{request.title or type(request).__name__} runs are not built yet in this version of the app.")
    return importlib.import_module(f"{__name__}.{module}").run
