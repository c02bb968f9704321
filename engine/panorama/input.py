"""Reading a panorama for perception: any common file in, an RGB 2:1 image at a size the model takes out.

Upstream (``src/systems/omnix.py:58-68``) asserts 2:1 and resizes anything above 720×1440 to 720×1440 with
LANCZOS, then passes the *original* size on to the pipeline, which fails on such inputs with a shape mismatch;
here the size passed on is the resized one.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from engine.errors import InputError
from engine.files.atomic import write_bytes

MAX_HEIGHT, MAX_WIDTH = 720, 1440  # upstream's perception size cap
MIN_HEIGHT = 64
MAX_INPUT_WIDTH = 8192
MULTIPLE = 16  # Flux: VAE factor 8 times 2x2 packing
FIXES = ("pad", "crop")


def open_image(path: str | Path, field: str = "panorama") -> Image.Image:
    """Decode the whole file (so a truncated one fails here, with a message) and return it as 8-bit RGB."""
    try:
        with Image.open(path) as im:
            im.load()
            image = im.copy()
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise InputError(field, f"cannot read {Path(path).name} as an image ({exc})") from None
    return to_rgb8(image)


def to_rgb8(image: Image.Image) -> Image.Image:
    """8-bit RGB from grayscale, palette, alpha (dropped, as upstream's ``convert('RGB')``) or 16-bit/float data."""
    if image.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        data = np.asarray(image, dtype=np.float64)
        top = 65535.0 if image.mode.startswith("I;16") or data.max() > 255 else 255.0
        if image.mode == "F" and data.max() <= 1.0:
            top = 1.0
        image = Image.fromarray(np.clip(data / top * 255.0 + 0.5, 0, 255).astype(np.uint8), "L")
    return image.convert("RGB")


def aspect_problem(width: int, height: int) -> str | None:
    """Why this size cannot be a perception input, or None."""
    if height < MIN_HEIGHT:
        return f"is {width}×{height}: at least {MIN_HEIGHT} px high is needed (a {2 * MIN_HEIGHT}×{MIN_HEIGHT} panorama)"
    if width > MAX_INPUT_WIDTH:
        return f"is {width}×{height}: at most {MAX_INPUT_WIDTH} px wide is read; scale it down first"
    if width != 2 * height:
        return (f"is {width}×{height}, not an equirectangular 2:1 panorama (it would be {2 * height}×{height}); "
                "pad it or crop it to 2:1 first")
    return None


def check_panorama(path: str | Path) -> Image.Image:
    image = open_image(path)
    problem = aspect_problem(*image.size)
    if problem:
        raise InputError("panorama", problem)
    return image


def perception_size(width: int, height: int) -> tuple[int, int]:
    """(width, height) the model runs at: capped at 1440×720 as upstream, and a multiple of 16 high (2:1 kept)."""
    if height > MAX_HEIGHT or width > MAX_WIDTH:
        width, height = MAX_WIDTH, MAX_HEIGHT
    height = max(MULTIPLE, height // MULTIPLE * MULTIPLE)
    return 2 * height, height


def prepare(image: Image.Image) -> tuple[Image.Image, dict]:
    """The image resized for perception (LANCZOS, as upstream), and what was done to it."""
    size = perception_size(*image.size)
    info = {"input_size": list(image.size), "perception_size": list(size)}
    if size != image.size:
        image = image.resize(size, Image.LANCZOS)
    return image, info


def fix_aspect(path: str | Path, how: str, out_dir: str | Path) -> Path:
    """Write a 2:1 copy of the image: ``pad`` centres it on black (nothing of it is lost),
    ``crop`` cuts the middle 2:1 part out. Returns the new file's path."""
    if how not in FIXES:
        raise InputError("fix", f"must be one of {', '.join(FIXES)}; got {how!r}")
    image = open_image(path)
    w, h = image.size
    if how == "crop":
        if w >= 2 * h:
            left = (w - 2 * h) // 2
            image = image.crop((left, 0, left + 2 * h, h))
        else:
            top = (h - w // 2) // 2
            image = image.crop((0, top, w, top + w // 2))
    else:
        width, height = (w + w % 2, (w + w % 2) // 2) if w > 2 * h else (2 * h, h)
        canvas = Image.new("RGB", (width, height), (0, 0, 0))
        canvas.paste(image, ((width - w) // 2, (height - h) // 2))
        image = canvas
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    dest = out / f"{Path(path).stem}-{how}-{image.size[0]}x{image.size[1]}.png"
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return write_bytes(dest, buffer.getvalue())  # whole or absent, as every file the app writes
