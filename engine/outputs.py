"""Writing results to disk: PNGs that carry their request and ComfyUI's ``prompt``/``workflow`` chunks (dropped on
ComfyUI's canvas they open the graph), and the request JSON beside them."""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

from PIL import PngImagePlugin

log = logging.getLogger(__name__)


def comfy_text(request, demo: bool = False) -> dict[str, str]:
    """ComfyUI's PNG text chunks for a request (``prompt``: API JSON, ``workflow``: UI JSON); none if the export
    fails, which must never cost the run its output."""
    import comfy_export

    try:
        return comfy_export.png_text(request, demo)
    except comfy_export.WorkflowError as exc:
        log.warning("no ComfyUI metadata for this output: %s", exc)
        return {}


def png_info(request, demo: bool = False, extra_text: dict[str, str] | None = None) -> PngImagePlugin.PngInfo:
    info = PngImagePlugin.PngInfo()
    info.add_text("request", json.dumps(request.to_dict()))
    for k, v in {**comfy_text(request, demo), **(extra_text or {})}.items():
        info.add_text(k, v)
    return info


def run_stem(kind: str, seed: int | None) -> str:
    stamp = time.strftime("%Y%m%d-%H%M%S") + f"-{int(time.time() * 1000) % 1000:03d}"
    return f"{kind}-{stamp}" + (f"-s{seed}" if seed is not None else "")


def save_request(request, path: Path) -> Path:
    path.write_text(json.dumps(request.to_dict(), indent=2))
    return path


def save_images(images, out_dir: Path, request, extra_text: dict[str, str] | None = None,
                demo: bool = False) -> list[str]:
    """Save each image as PNG with the request and ComfyUI's chunks (and any extra chunks) as text chunks."""
    out_dir.mkdir(parents=True, exist_ok=True)
    stem = run_stem(request.kind, getattr(request, "seed", None))
    info = png_info(request, demo, extra_text)
    files = []
    for i, image in enumerate(images):
        path = out_dir / f"{stem}-{i}.png"
        image.save(path, pnginfo=info)
        files.append(str(path))
    files.append(str(save_request(request, out_dir / f"{stem}.json")))
    return files
