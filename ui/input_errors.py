"""Why a widget refused a value, in words and by its label (issue 30, point 4).

Gradio reports a value its component cannot take as "Could not preprocess input component at index 18 (a
`image` component)": no field a user knows, no reason. Here the index becomes the widget's label and the cause a
sentence ("Start image: 30000×30000 is 900 MP; the limit is 64 MP"), and an image too large to decode is refused
from its header, before anything decodes it. Uploads over ``--max-upload-mb`` are refused by Gradio itself
(``max_file_size`` on launch) at the upload, with the limit in its message.
"""

from __future__ import annotations

import os
import re
import struct
from pathlib import Path
from typing import Any

import gradio as gr

MAX_IMAGE_MP = 64  # a 16K×4K panorama is 64 MP; a real start image or reference is a few
DEFAULT_MAX_UPLOAD_MB = 8192  # app.py's --max-upload-mb default (a LoRA of a few GB, a panorama)


def label_of(block) -> str:
    return str(getattr(block, "label", None) or getattr(block, "elem_id", None) or type(block).__name__)


def _upload_folder() -> Path:
    from gradio.utils import get_upload_folder

    return Path(os.path.realpath(get_upload_folder()))


def _png_size(path: str) -> tuple[int, int] | None:
    with open(path, "rb") as f:
        head = f.read(24)
    if head[:8] == b"\x89PNG\r\n\x1a\n" and head[12:16] == b"IHDR":
        return struct.unpack(">II", head[16:24])
    return None


def image_size(path: str) -> tuple[int, int] | int:
    """(width, height) from the file's header without decoding it, or only the pixel count where Pillow refuses
    to even open it (its decompression-bomb check names the count)."""
    from PIL import Image

    size = _png_size(path)
    if size is not None:
        return size
    try:
        with Image.open(path) as im:
            return im.size
    except Image.DecompressionBombError as exc:
        found = re.search(r"\((\d+) pixels\)", str(exc))
        return int(found.group(1)) if found else 0


def _pixels_text(size: tuple[int, int] | int) -> str:
    if isinstance(size, tuple):
        w, h = size
        return f"{w}×{h} is {w * h / 1e6:.0f} MP"
    return f"it is {size / 1e6:.0f} MP"


def value_problem(block, value: Any) -> str | None:
    """An uploaded image over ``MAX_IMAGE_MP``, read from its header (only files in Gradio's upload folder: a path
    anywhere else is Gradio's to refuse, and must not be opened here)."""
    if not isinstance(block, gr.Image) or not isinstance(value, dict) or not isinstance(value.get("path"), str):
        return None
    path = os.path.realpath(value["path"])
    if _upload_folder() not in Path(path).parents or not os.path.isfile(path):
        return None
    try:
        size = image_size(path)
    except (OSError, ValueError, SyntaxError):
        return None  # not an image at all: the component's own message follows
    pixels = size[0] * size[1] if isinstance(size, tuple) else size
    if pixels > MAX_IMAGE_MP * 1e6:
        return f"{_pixels_text(size)}; the limit is {MAX_IMAGE_MP} MP (scale it down first)"
    return None


def cause_text(error: BaseException) -> str:
    """A component's failure in words."""
    from PIL import Image, UnidentifiedImageError

    if isinstance(error, Image.DecompressionBombError):
        found = re.search(r"\((\d+) pixels\)", str(error))
        pixels = int(found.group(1)) if found else 0
        return f"the image is {pixels / 1e6:.0f} MP; the limit is {MAX_IMAGE_MP} MP (scale it down first)"
    if isinstance(error, UnidentifiedImageError):
        return "cannot read the file as an image (not a PNG, JPEG or WEBP, or damaged)"
    if isinstance(error, MemoryError):
        return "too large to load into memory"
    if isinstance(error, FileNotFoundError):
        return "the uploaded file is gone (the upload cache was cleaned); upload it again"
    if isinstance(error, OSError) and "truncated" in str(error).lower():
        return "the file is cut short (a damaged or partial upload)"
    text = str(error).splitlines()[0][:200] if str(error) else type(error).__name__
    return f"cannot use this value ({text})"


def _paths(value: Any) -> list[str]:
    if isinstance(value, dict):
        return [v for k, v in value.items() if k in ("path", "url") and isinstance(v, str)] + \
            [p for v in value.values() if isinstance(v, (dict, list)) for p in _paths(v)]
    if isinstance(value, list):
        return [p for v in value for p in _paths(v)]
    return []


def _index_of(error: BaseException, values: list) -> int | None:
    """Which input failed: Gradio's "at index N", else the input whose file path the message quotes (its
    "not uploaded by a user" refusal names the path only)."""
    found = re.search(r"at index (\d+)", str(error))
    if found:
        return int(found.group(1))
    text = str(error)

    def forms(path: str) -> set[str]:
        return {path, os.path.abspath(path), os.path.realpath(path)} - {""}

    quoted = [i for i, value in enumerate(values) if any(f in text for p in _paths(value) for f in forms(p))]
    with_files = [i for i, value in enumerate(values) if _paths(value)]
    return quoted[0] if quoted else (with_files[0] if len(with_files) == 1 else None)


def component_error_text(block_fn, error: BaseException, values: list | None = None) -> str:
    """The message for a value Gradio's preprocessing refused: "<label>: <why>"."""
    from gradio.exceptions import ComponentProcessingError

    cause = error
    if isinstance(error, ComponentProcessingError):
        cause = error.__cause__ or error.__context__ or error
    inputs = list(getattr(block_fn, "inputs", None) or [])
    index = _index_of(error, list(values or []))
    if index is not None and index < len(inputs):
        label = label_of(inputs[index])
    elif len(inputs) == 1:
        label = label_of(inputs[0])
    else:
        label = "Input"
    if "not uploaded by a user" in str(cause):
        return f"{label}: only a file uploaded to this app can be used (upload it first; a server path is refused)"
    if cause is error and isinstance(error, ComponentProcessingError):
        return f"{label}: cannot use this value"
    return f"{label}: {cause_text(cause)}"
