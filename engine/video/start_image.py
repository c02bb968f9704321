"""The start image of a video, as the model needs it: 8-bit RGB at exactly the video size.

Whatever Pillow opens is accepted and said: CMYK and palette images are converted to RGB, 16-bit and float
images are scaled to 8 bits (not clipped), transparency is composed over white. Then the image meets the size:
``crop`` (default) scales it to cover the frame and cuts the overhang equally from both sides, so nothing is
distorted; ``pad`` scales it to fit and fills the bars with black; ``stretch`` resizes to the size (distorts when
the aspect ratios differ). Resampling is Lanczos.
"""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageOps

from engine.errors import InputError


def _to_rgb(im: Image.Image, notes: list[str]) -> Image.Image:
    if im.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        arr = np.asarray(im).astype(np.float64)
        top = 65535.0 if im.mode.startswith("I;16") or arr.max() > 255 else 255.0
        if im.mode == "F":
            top = max(float(arr.max()), 1.0)
        notes.append(f"the {im.mode} image was scaled to 8 bits")
        im = Image.fromarray((np.clip(arr / top, 0, 1) * 255 + 0.5).astype(np.uint8), "L")
    if im.mode in ("RGBA", "LA", "PA") or (im.mode == "P" and "transparency" in im.info):
        rgba = im.convert("RGBA")
        base = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        notes.append("transparency was composed over white")
        return Image.alpha_composite(base, rgba).convert("RGB")
    if im.mode == "CMYK":
        notes.append("the CMYK image was converted to RGB")
    return im.convert("RGB") if im.mode != "RGB" else im


def load_start_image(path: str, width: int, height: int, fit: str = "crop") -> tuple[Image.Image, list[str]]:
    notes: list[str] = []
    try:
        with Image.open(path) as src:
            src.load()
            im = ImageOps.exif_transpose(src)  # phone photos: the pixels as the camera meant them
            im = _to_rgb(im, notes)
    except (OSError, ValueError, Image.DecompressionBombError) as exc:
        raise InputError("image", f"cannot read the start image ({exc})") from None
    if im.size == (width, height):
        return im, notes
    if fit == "stretch":
        return im.resize((width, height), Image.LANCZOS), notes
    if fit == "pad":
        return ImageOps.pad(im, (width, height), Image.LANCZOS, color=(0, 0, 0)), notes
    return ImageOps.fit(im, (width, height), Image.LANCZOS), notes
