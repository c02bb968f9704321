"""Writing results to disk: PNGs that carry their request, and the request JSON beside them."""

from __future__ import annotations

import json
import time
from pathlib import Path

from PIL import PngImagePlugin


def run_stem(kind: str, seed: int | None) -> str:
    stamp = time.strftime("%Y%m%d-%H%M%S") + f"-{int(time.time() * 1000) % 1000:03d}"
    return f"{kind}-{stamp}" + (f"-s{seed}" if seed is not None else "")


def save_request(request, path: Path) -> Path:
    path.write_text(json.dumps(request.to_dict(), indent=2))
    return path


def save_images(images, out_dir: Path, request, extra_text: dict[str, str] | None = None) -> list[str]:
    """Save each image as PNG with the request (and any extra chunks, e.g. ComfyUI's) as text chunks."""
    out_dir.mkdir(parents=True, exist_ok=True)
    stem = run_stem(request.kind, getattr(request, "seed", None))
    request_json = json.dumps(request.to_dict())
    files = []
    for i, image in enumerate(images):
        info = PngImagePlugin.PngInfo()
        info.add_text("request", request_json)
        for k, v in (extra_text or {}).items():
            info.add_text(k, v)
        path = out_dir / f"{stem}-{i}.png"
        image.save(path, pnginfo=info)
        files.append(str(path))
    files.append(str(save_request(request, out_dir / f"{stem}.json")))
    return files
