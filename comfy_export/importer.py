"""``from_workflow``: an API or UI workflow (a dict, JSON text or bytes, or a PNG ComfyUI saved) back to a request.

The graph decides: the job is read from the nodes that feed an output, each setting from its node. A workflow this
app exported also carries its request (``extra.diffusion_studio``); a setting whose node still says what that
request would export keeps the request's exact value (full paths, settings ComfyUI has no node for), and every
setting edited in ComfyUI comes from the graph."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

from . import import_report, limits, names, validate
from .errors import WorkflowError
from .export import EXTRA_KEY, to_api
from .import_kinds import check_understood, detect
from .import_video import EXTRACT
from .pngmeta import PNG_MAGIC, read_png_text
from .read_graph import ReadGraph
from .ui_to_api import ui_to_api

MAX_BYTES = 32 * 2**20  # a workflow is kilobytes; a PNG carrying one rarely passes a few MB
log = logging.getLogger(__name__)
IMAGE_KINDS = ("text_to_image", "lora_stack")  # the same graph shape; an embedded request says which tab
NESTED_MERGE = ("turbo", "swap")  # partial objects from the graph update the request's
FILE_ERRORS = ("not found", "no such file", "no image given", "no LoRA file", "cannot read", "give the Nunchaku",
               "upload")


def load_workflow(data: Any) -> dict[str, Any]:
    """A workflow dict from a dict, JSON text/bytes, a PNG's ``workflow``/``prompt`` chunks, or a file path."""
    if isinstance(data, (str, os.PathLike)) and not str(data).lstrip().startswith(("{", "[")) and \
            os.path.isfile(str(data)):
        size = os.path.getsize(data)
        if size > MAX_BYTES:
            raise WorkflowError(_too_big(size))
        data = Path(data).read_bytes()
    if isinstance(data, (bytes, bytearray)):
        if len(data) > MAX_BYTES:
            raise WorkflowError(_too_big(len(data)))
        if bytes(data[:8]) == PNG_MAGIC:
            return _from_png(bytes(data))
        try:
            data = bytes(data).decode("utf-8-sig")
        except UnicodeDecodeError:
            raise WorkflowError("the file is neither JSON text nor a PNG") from None
    if isinstance(data, str):
        if len(data) > MAX_BYTES:
            raise WorkflowError(_too_big(len(data)))
        limits.check_text(data)  # size and nesting before the parser sees it
        try:
            data = json.loads(data)
        except json.JSONDecodeError as exc:
            raise WorkflowError(f"not valid JSON (line {exc.lineno}, column {exc.colno}: {exc.msg})") from None
        except (ValueError, RecursionError) as exc:  # e.g. an integer of 5 000 digits
            raise WorkflowError(f"not valid JSON ({str(exc).splitlines()[0][:120]})") from None
    if not isinstance(data, dict):
        raise WorkflowError("a workflow is a JSON object (ComfyUI's API or UI format)")
    return data


def _too_big(size: int) -> str:
    return f"the file is {size / 2**20:.0f} MB; a workflow (or a PNG carrying one) must be under {MAX_BYTES >> 20} MB"


def _from_png(data: bytes) -> dict[str, Any]:
    text = read_png_text(data)
    for key in ("workflow", "prompt"):
        if key in text:
            try:
                return load_workflow(text[key])
            except WorkflowError as exc:
                raise WorkflowError(f"the PNG's {key} chunk: {exc}") from None
    if "request" in text:  # this app's own PNG from before ComfyUI metadata
        try:
            request = load_workflow(text["request"])
        except WorkflowError as exc:
            raise WorkflowError(f"the PNG's request chunk: {exc}") from None
        return {"extra": {EXTRA_KEY: {"request": request}}, "_request_only": True}
    raise WorkflowError("this PNG carries no ComfyUI workflow (no 'prompt' or 'workflow' text chunk); "
                        "ComfyUI's SaveImage writes them, an image editor usually strips them")


def as_api(workflow: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """(API graph, embedded request dict or None) of any workflow form."""
    extra = workflow.get("extra") if isinstance(workflow.get("extra"), dict) else {}
    embedded = (extra.get(EXTRA_KEY) or {}).get("request") if isinstance(extra.get(EXTRA_KEY), dict) else None
    if isinstance(workflow.get("nodes"), list):
        return ui_to_api(workflow), embedded
    if isinstance(workflow.get("prompt"), dict) and "class_type" not in workflow["prompt"]:  # a /prompt body
        inner = ((workflow.get("extra_data") or {}).get("extra_pnginfo") or {}).get("workflow")
        if isinstance(inner, dict):
            return as_api(inner)
        return workflow["prompt"], None
    if "nodes" in workflow:
        raise WorkflowError("'nodes' must be a list in a UI workflow")
    return workflow, None


def _norm(value: Any) -> Any:
    return json.loads(json.dumps(value, sort_keys=True))


def _find(name: str, dirs: list[str]) -> str:
    for folder in dirs:
        path = Path(folder) / name
        if name and path.is_file():
            return str(path)
    return name


def _resolve_files(files: dict[str, str], dirs: list[str]) -> dict[str, str]:
    """Pieces found in the folders become their paths; pieces not found come from the model's repo. A transformer
    file that is not here stays by name (the tab then says which file is missing), unless it is one of the preset
    files, whose hub repo then stands in."""
    found = {part: _find(name, dirs) for part, name in files.items()}
    found = {part: path for part, path in found.items() if Path(path).is_absolute() and Path(path).is_file()}
    transformer = files.get("transformer", "")
    if "transformer" in found or not transformer:
        return found
    return {} if names.repo_for(transformer) else {"transformer": transformer}


def _resolve(key: str, value: Any, search: dict[str, list[str]]) -> Any:
    """File names from the graph as paths where the app's folders hold them (else the name: the tab says so)."""
    images, loras, models = search.get("input", []), search.get("loras", []), search.get("diffusion_models", [])
    if key in ("image", "panorama", "input_image"):
        return _find(value, images)
    if key == "references":
        return [{**r, "path": _find(r["path"], images)} for r in value]
    if key in ("loras", "loras_2", "stage2_loras"):
        return [{**r, "path": _find(r["path"], loras)} for r in value]
    if key == "nunchaku_transformer":
        return _find(value, models)
    if key == "model" and "files" in value:
        return {**value, "files": _resolve_files(value["files"], models)}
    if key == "turbo":
        return {k: _find(v, models) if k in ("high_path", "low_path") else v for k, v in value.items()}
    return value


def from_workflow(data: Any, search_dirs: dict[str, list[str]] | None = None, with_warnings: bool = False):
    """The request a workflow describes (raises ``WorkflowError`` with a message naming node and input, and
    nothing else: a hostile file whose shape no reader expected is a ``WorkflowError`` too).
    ``search_dirs``: folders per ComfyUI category (``input``, ``loras``, ``diffusion_models``) where file names of
    the graph are looked up. ``with_warnings``: ``(request, warnings)``, the warnings naming every node on the path
    to an output that the request cannot express and every file not found (``import_report``)."""
    try:
        return _from_workflow(data, search_dirs, with_warnings)
    except WorkflowError:
        raise
    except RecursionError:
        raise WorkflowError("the workflow's links or values nest too deep to read") from None
    except (KeyError, TypeError, AttributeError, IndexError, ValueError) as exc:
        log.warning("workflow import: %s: %s", type(exc).__name__, exc)
        summary = f"{type(exc).__name__}: {exc}".splitlines()[0][:160]
        raise WorkflowError(f"the workflow is malformed where a reader did not expect it ({summary})") from None


def _from_workflow(data: Any, search_dirs: dict[str, list[str]] | None, with_warnings: bool = False):
    from engine.errors import InputError
    from engine.requests import REQUEST_TYPES, request_from_dict

    workflow = load_workflow(data)
    api, embedded = as_api(workflow)
    if isinstance(api, dict):
        limits.check_api_size(api)
    if workflow.get("_request_only"):
        try:
            request = request_from_dict(embedded)
            return (request, []) if with_warnings else request
        except InputError as exc:
            raise WorkflowError(f"the PNG's request: {exc}") from None
    validate.check(api, strict=False)
    graph = ReadGraph(api)
    check_understood(graph)
    kind = detect(graph)
    warnings = import_report.node_warnings(graph, kind)
    if isinstance(embedded, dict) and embedded.get("kind") in IMAGE_KINDS and kind in IMAGE_KINDS:
        kind = embedded["kind"]
    fields = EXTRACT[kind](graph)
    merged: dict[str, Any] = {"kind": kind}
    exported: dict[str, Any] = {}
    if isinstance(embedded, dict) and embedded.get("kind") == kind:
        try:
            exported = EXTRACT[kind](ReadGraph(to_api(request_from_dict(embedded))))
            merged = dict(embedded)
        except (InputError, WorkflowError):
            exported = {}
    for key, value in fields.items():
        if key in exported and _norm(exported[key]) == _norm(value):
            continue  # unchanged in ComfyUI: the request's exact value stays
        value = _resolve(key, value, search_dirs or {})
        if key in NESTED_MERGE and isinstance(merged.get(key), dict):
            value = {**merged[key], **value}
        merged[key] = value
    try:
        request = REQUEST_TYPES[kind].from_dict(merged)
    except InputError as exc:
        raise WorkflowError(f"{exc.field}: {exc.message}") from None
    _check_ranges(request)
    warnings += import_report.missing_files(request)
    return (request, warnings) if with_warnings else request


def _check_ranges(request) -> None:
    """Values outside the app's ranges are named; missing files are not an import error (the tab shows them)."""
    from engine.errors import InputError

    try:
        request.validate()
    except InputError as exc:
        if not any(word in exc.message for word in FILE_ERRORS):
            raise WorkflowError(f"{exc.field}: {exc.message} (outside what the app accepts)") from None
