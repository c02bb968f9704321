"""Model names as ComfyUI users have them: a local file by its path inside its ComfyUI category folder, a model
reference of the app by the file names of ``presets/comfy_models.json``; and back."""

from __future__ import annotations

import functools
import json
import os
from pathlib import Path, PurePath
from typing import Any

PRESETS = Path(__file__).resolve().parent.parent / "presets" / "comfy_models.json"
#: ComfyUI's models/ sub-folders (folder_paths), the ones whose files a loader combo lists
CATEGORY_FOLDERS = ("diffusion_models", "unet", "checkpoints", "vae", "text_encoders", "clip", "clip_vision", "loras",
                    "ipadapter", "ipadapter-flux", "upscale_models", "controlnet", "style_models", "diffusers")


MODEL_SUFFIXES = (".safetensors", ".sft", ".ckpt", ".pt", ".pth", ".bin", ".gguf")


def comfy_file_name(path: str) -> str:
    """``/x/ComfyUI/models/loras/style/a.safetensors`` -> ``style/a.safetensors`` (as the loader combo lists it);
    a file outside any category folder by its base name."""
    parts = PurePath(path.replace("\\", "/")).parts
    for i in range(len(parts) - 2, -1, -1):
        if parts[i] in CATEGORY_FOLDERS:
            return "/".join(parts[i + 1:])
    return parts[-1] if parts else ""


@functools.lru_cache(maxsize=1)
def presets() -> dict[str, dict[str, Any]]:
    return json.loads(PRESETS.read_text(encoding="utf-8"))["models"]


def entry(repo_id: str) -> dict[str, Any]:
    return presets().get(repo_id, {})


def family(repo_id: str, default: str = "") -> str:
    return entry(repo_id).get("family", default)


def preset_file(repo_id: str, key: str, index: int = 0) -> str:
    names = entry(repo_id).get(key) or []
    return names[index] if len(names) > index else ""


def model_file(ref, piece: str, key: str, index: int = 0, fallback: str = "") -> str:
    """The ComfyUI file name for one piece of a ``ModelRef``: its single file when given (``ref.files``), else the
    preset name of its repo, else a name made from the folder (a local diffusers folder has no ComfyUI file)."""
    given = getattr(ref.files, piece, "") if piece else ""
    if given:
        return comfy_file_name(given)
    name = preset_file(ref.repo_id, key, index) if ref.repo_id else ""
    if name:
        return name
    if fallback:
        return fallback
    if ref.path.lower().endswith(MODEL_SUFFIXES):
        return comfy_file_name(ref.path)
    stem = ref.repo_id.rsplit("/", 1)[-1] if ref.repo_id else os.path.basename(os.path.normpath(ref.path))
    return f"{stem}.safetensors"


def repo_for(name: str, keys: tuple[str, ...] = ("diffusion_models", "checkpoints")) -> str:
    """The app's repo id for a ComfyUI file name (base name compared, case-insensitive), or ``""``."""
    wanted = PurePath(str(name).replace("\\", "/")).name.lower()
    for repo_id, data in presets().items():
        for key in keys:
            if any(PurePath(n).name.lower() == wanted for n in data.get(key) or []):
                return repo_id
    return ""
