"""``to_api`` / ``to_workflow``: one graph builder per request kind, two writers, every export validated."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from . import build_image, validate
from .errors import WorkflowError
from .graph import Graph

EXTRA_KEY = "diffusion_studio"  # workflow["extra"][EXTRA_KEY]: the request, so the app can reopen it exactly
DEMO_NOTE = ("Exported from a demo-mode run: the app ran tiny random-weight stand-ins of these models, so its "
             "images were noise. The graph names the real model files.")


def _builders() -> dict[str, Callable[[Graph, Any], None]]:
    from . import build_i2v, build_ipadapter, build_lora, build_perception

    return {
        "text_to_image": build_image.text_to_image,
        "sdnq_generate": build_image.sdnq_generate,
        "sdnq_quantize": build_image.sdnq_quantize,
        "ipadapter": build_ipadapter.build,
        "perception": build_perception.build,
        "i2v": build_i2v.build,
        "lora_stack": build_lora.build,
    }


def build(request, demo: bool = False) -> Graph:
    """The graph for ``request`` (any kind of ``engine.requests.REQUEST_TYPES``), validated."""
    kind = getattr(request, "kind", None)
    builder = _builders().get(kind)
    if builder is None:
        raise WorkflowError(f"no ComfyUI export for request kind {kind!r}")
    g = Graph()
    builder(g, request)
    if demo:
        g.notes.insert(0, DEMO_NOTE)
    g.notes.insert(0, f"{request.title} run of Diffusion Studio as a ComfyUI graph.")
    g.extra[EXTRA_KEY] = {"request": request.to_dict(), "notes": list(g.notes), "demo": demo}
    validate.check(g.to_api())
    return g


def to_api(request, demo: bool = False) -> dict[str, Any]:
    """The API (``/prompt``) format: ``{"<id>": {"class_type", "inputs", "_meta": {"title"}}}``."""
    return build(request, demo).to_api()


def to_workflow(request, demo: bool = False) -> dict[str, Any]:
    """The UI (editor) format, schema 0.4, that ComfyUI opens from a file or a PNG."""
    return build(request, demo).to_workflow()


def both(request, demo: bool = False) -> tuple[dict[str, Any], dict[str, Any]]:
    g = build(request, demo)
    return g.to_api(), g.to_workflow()
