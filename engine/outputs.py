"""Writing results to disk: PNGs that carry their request and the text chunks the engine's host asked for (the app
passes ComfyUI's ``prompt``/``workflow``: dropped on ComfyUI's canvas they open the graph), and the request JSON
beside them. The engine never imports the exporter: ``Engine(output_text=...)`` hands the chunks in."""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

from PIL import PngImagePlugin

log = logging.getLogger(__name__)


def png_info(request, text: dict[str, str] | None = None) -> PngImagePlugin.PngInfo:
    """The request as JSON plus ``text`` (e.g. ComfyUI's chunks) as PNG text chunks."""
    info = PngImagePlugin.PngInfo()
    info.add_text("request", json.dumps(request.to_dict()))
    for k, v in (text or {}).items():
        info.add_text(k, v)
    return info


def run_stem(kind: str, seed: int | None) -> str:
    stamp = time.strftime("%Y%m%d-%H%M%S") + f"-{int(time.time() * 1000) % 1000:03d}"
    return f"{kind}-{stamp}" + (f"-s{seed}" if seed is not None else "")


def save_request(request, path: Path) -> Path:
    path.write_text(json.dumps(request.to_dict(), indent=2))
    return path


def save_images(images, out_dir: Path, request, text: dict[str, str] | None = None) -> list[str]:
    """Save each image as PNG with the request and ``text`` (ComfyUI's chunks, when the host gives them)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    stem = run_stem(request.kind, getattr(request, "seed", None))
    info = png_info(request, text)
    files = []
    for i, image in enumerate(images):
        path = out_dir / f"{stem}-{i}.png"
        image.save(path, pnginfo=info)
        files.append(str(path))
    files.append(str(save_request(request, out_dir / f"{stem}.json")))
    return files
