"""PNG text chunks as ComfyUI writes them: ``prompt`` (API JSON) and ``workflow`` (UI JSON), read back with Pillow."""

from __future__ import annotations

import io
import json

from .errors import WorkflowError


def png_text(request, demo: bool = False) -> dict[str, str]:
    from .export import both

    api, workflow = both(request, demo)
    return {"prompt": json.dumps(api), "workflow": json.dumps(workflow)}


def read_png_text(data: bytes) -> dict[str, str]:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(data)) as im:
            if im.format != "PNG":
                raise WorkflowError(f"this is a {im.format} image; only PNGs carry ComfyUI's workflow")
            return {k: v for k, v in (getattr(im, "text", None) or im.info).items() if isinstance(v, str)}
    except (UnidentifiedImageError, OSError, SyntaxError) as exc:
        raise WorkflowError(f"cannot read the file as an image ({exc})") from None
