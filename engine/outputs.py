"""Writing results to disk: PNGs that carry their request and the text chunks the engine's host asked for (the app
passes ComfyUI's ``prompt``/``workflow``: dropped on ComfyUI's canvas they open the graph), and the request JSON
beside them. The engine never imports the exporter: ``Engine(output_text=...)`` hands the chunks in."""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

from PIL import PngImagePlugin

from engine.files.atomic import OutputSet, file_digest, keep_copy, write_json

log = logging.getLogger(__name__)
NEEDS_KEY = "needs"  # in a request JSON: the input files a replay reads (request_from_dict skips it)
MAX_HASHED_INPUT = 256 * 2**20  # inputs up to this size carry their sha256 (a model file is only sized)


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


def input_files(request) -> list[dict]:
    """The files and folders on this machine that a replay of ``request`` reads (start image, references,
    panorama, LoRA files, local models), each with its request field; files also with size and sha256, so a
    replay can tell a changed input from the one this run used."""
    needs: list[dict] = []

    def walk(value, field: str) -> None:
        if isinstance(value, dict):
            for k, v in value.items():
                walk(v, f"{field}.{k}" if field else k)
        elif isinstance(value, list):
            for i, v in enumerate(value):
                walk(v, f"{field}[{i}]")
        elif isinstance(value, str) and value and len(value) < 4096 and "\n" not in value:
            path = Path(value)
            try:
                if path.is_file():
                    entry = {"field": field, "path": value, "bytes": path.stat().st_size}
                    if entry["bytes"] <= MAX_HASHED_INPUT:
                        entry["sha256"] = file_digest(path)
                    needs.append(entry)
                elif path.is_dir():
                    needs.append({"field": field, "path": value, "folder": True})
            except OSError:  # a name too long or unreadable: not an input file
                pass

    walk(request.to_dict(), "")
    return needs


def request_json(request) -> dict:
    """What the request JSON beside a run's outputs holds: the request (``request_from_dict`` reads it back) and
    ``needs``, the input files it reads."""
    return {**request.to_dict(), NEEDS_KEY: input_files(request)}


def save_request(request, path: Path) -> Path:
    """The request JSON on its own (atomically); a run's set writes it through ``OutputSet`` instead."""
    return write_json(path, request_json(request))


def keep_input(outputs_dir: Path, path: str, folder: str) -> str:
    """A verified, content-named copy of an input file under ``<outputs>/<folder>/`` (so a saved request still
    finds it after Gradio cleans its upload cache); a missing file is left for the request's own check."""
    if not path or not Path(path).is_file():
        return path
    return str(keep_copy(path, Path(outputs_dir) / folder).resolve())


def save_images(images, out_dir: Path, request, text: dict[str, str] | None = None) -> list[str]:
    """Save each image as PNG with the request and ``text`` (ComfyUI's chunks, when the host gives them), and
    the request JSON; the files appear together (``OutputSet``) or not at all."""
    out_dir = Path(out_dir)
    stem = run_stem(request.kind, getattr(request, "seed", None))
    info = png_info(request, text)
    with OutputSet(out_dir) as run:
        for i, image in enumerate(images):
            run.save_image(f"{stem}-{i}.png", image, pnginfo=info)
        run.write_json(f"{stem}.json", request_json(request))
        return run.commit(last=f"{stem}.json")
