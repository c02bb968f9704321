"""What crosses between the web front end and an engine replica: request JSON in, events out.

Events are small dicts: ``start`` (which replica), ``progress`` (fraction, message, step by step), ``preview``
(a PNG of the current frame, for image-to-video), then one of ``result`` or ``error``. An error is an event,
not a raised exception, so its kind (bad input naming a field, cancelled, engine message) survives pickling
across processes and hosts; ``raise_error`` turns it back into the engine's own exception on the other side.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

from engine.errors import Cancelled, EngineError, InputError
from engine.requests import request_from_dict
from engine.result import Result


def png_bytes(image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def error_event(exc: BaseException) -> dict:
    if isinstance(exc, InputError):
        return {"event": "error", "type": "input", "field": exc.field, "message": exc.message}
    if isinstance(exc, Cancelled):
        return {"event": "error", "type": "cancelled", "message": str(exc)}
    if isinstance(exc, EngineError):
        return {"event": "error", "type": "engine", "message": str(exc)}
    first = (str(exc).strip().splitlines() or [""])[0]
    return {"event": "error", "type": "engine", "message": f"the replica failed: {type(exc).__name__}: {first}"}


def raise_error(event: dict) -> None:
    kind, message = event.get("type"), event.get("message", "")
    if kind == "input":
        raise InputError(event.get("field", "request"), message)
    if kind == "cancelled":
        raise Cancelled(message)
    raise EngineError(message)


INPUT_FIELDS = ("image", "panorama", "input_image")  # a request's uploaded images (and references[].path)


def _input_paths(data: dict) -> list[tuple[dict, str]]:
    """(the dict holding it, key) for every uploaded image a request JSON names."""
    found = [(data, key) for key in INPUT_FIELDS if isinstance(data.get(key), str) and data[key]]
    found += [(ref, "path") for ref in data.get("references") or () if isinstance(ref, dict) and ref.get("path")]
    return found


def attach_inputs(data: dict) -> dict:
    """The request JSON plus the bytes of the images it names: a replica on another host cannot read the front
    end's upload folder. Models and LoRA files stay paths (a shared ``--models-dir``)."""
    inputs = {}
    for holder, key in _input_paths(data):
        path = Path(holder[key])
        if path.is_file():
            inputs[str(path)] = path.read_bytes()
    return {"request": data, "inputs": inputs}


def receive_inputs(message: dict, folder: Path) -> dict:
    """On the replica: write the attached images under ``folder`` (named by content) and point the request at
    them; a path sent without bytes is left as it is."""
    import copy
    import hashlib

    from engine.files.atomic import write_bytes

    data = copy.deepcopy(message["request"])
    for holder, key in _input_paths(data):
        blob = message.get("inputs", {}).get(holder[key])
        if blob is None:
            continue
        target = folder / f"{hashlib.sha256(blob).hexdigest()[:16]}{Path(holder[key]).suffix}"
        if not target.is_file():
            write_bytes(target, blob)  # whole or absent: a content name must never hold half the content
        holder[key] = str(target)
    return data


def _relative(path: str, root: Path) -> str:
    try:
        return str(Path(path).resolve().relative_to(root.resolve()))
    except ValueError:  # written outside the outputs folder: keep its name only
        return Path(path).name


def pack_result(result: Result, outputs_dir: Path) -> dict:
    """The result with every file it names as bytes, under its path relative to the replica's outputs folder."""
    named = [*result.files, *([result.video_path] if result.video_path else []), *result.maps.values()]
    files: dict[str, bytes] = {}
    for path in dict.fromkeys(str(p) for p in named if p):
        if Path(path).is_file():
            files[_relative(path, outputs_dir)] = Path(path).read_bytes()
    rel = {str(p): _relative(str(p), outputs_dir) for p in named if p}
    return {
        "event": "result",
        "request": result.request.to_dict(),
        "images": [png_bytes(im) for im in result.images],
        "files": files,
        "file_order": [rel[str(p)] for p in result.files],
        "video": rel.get(str(result.video_path)) if result.video_path else None,
        "maps": {caption: rel[str(p)] for caption, p in result.maps.items()},
        "metadata": result.metadata,
        "timings": result.timings,
        "memory": result.memory,
    }


def unpack_result(event: dict, outputs_dir: Path, request=None) -> Result:
    """Write the files into this side's outputs folder (same relative paths) and rebuild the ``Result`` (for
    ``request``, the caller's own, whose image paths are this side's; else the replica's)."""
    from PIL import Image

    local: dict[str, str] = {}
    for rel, data in event["files"].items():
        target = outputs_dir / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)
        local[rel] = str(target)
    images = []
    for data in event["images"]:
        image = Image.open(io.BytesIO(data))
        image.load()
        images.append(image)
    return Result(
        request=request if request is not None else request_from_dict(event["request"]),
        images=images,
        video_path=local.get(event["video"]) if event.get("video") else None,
        maps={caption: local.get(rel, rel) for caption, rel in event["maps"].items()},
        files=[local.get(rel, rel) for rel in event["file_order"]],
        metadata=dict(event.get("metadata") or {}),
        timings=dict(event.get("timings") or {}),
        memory=dict(event.get("memory") or {}),
    )


def describe(event: dict[str, Any]) -> str:
    """A replica's name for messages: ``replica 3f2a (host gpu-node-2)``."""
    return f"replica {event.get('replica', '?')} (host {event.get('host', '?')}, pid {event.get('pid', '?')})"
