"""Named LoRA stacks saved as JSON under the app's data folder (``<models_dir>/lora-stacks/<name>.json``), and
the LoRA folder uploads are copied into (``<models_dir>/loras``).

A preset holds the entries (``LoraSpec.to_dict``) in order. Loading checks every local file is still there and
names each missing one, so a stale preset never half-applies.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

from engine.errors import InputError
from engine.files.atomic import copy_file, write_json
from engine.requests import MAX_LORAS, LoraSpec, check_lora_stack

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9 ._-]{0,63}$")
PRESETS_DIRNAME = "lora-stacks"
LORAS_DIRNAME = "loras"


def presets_dir(models_dir: str | os.PathLike) -> Path:
    return Path(models_dir) / PRESETS_DIRNAME


def loras_dir(models_dir: str | os.PathLike) -> Path:
    return Path(models_dir) / LORAS_DIRNAME


def _check_name(name: str) -> str:
    name = (name or "").strip()
    if not _NAME.match(name):
        raise InputError("preset", "name it with letters, digits, spaces, '.', '_' or '-' (up to 64 characters)")
    return name


def list_presets(models_dir) -> list[str]:
    folder = presets_dir(models_dir)
    return sorted(p.stem for p in folder.glob("*.json")) if folder.is_dir() else []


def save_preset(models_dir, name: str, loras: tuple[LoraSpec, ...]) -> Path:
    name = _check_name(name)
    check_lora_stack("loras", tuple(loras))
    folder = presets_dir(models_dir)
    folder.mkdir(parents=True, exist_ok=True)
    data = {"version": 1, "loras": [s.to_dict() for s in loras]}
    path = folder / f"{name}.json"
    # the folder is shared by every session: a preset of that name holding another stack is never replaced (one
    # visitor cannot change what another's preset runs); the new one is numbered, as clashing LoRA uploads are
    n = 2
    while path.is_file() and _stored(path) != data:
        path, n = folder / f"{name}-{n}.json", n + 1
    # never a half-written preset; a full disk says so and names the flag that moves the folder
    return write_json(path, data, what="models folder", flag="--models-dir")


def _stored(path: Path):
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def load_preset(models_dir, name: str) -> tuple[LoraSpec, ...]:
    name = _check_name(name)
    path = presets_dir(models_dir) / f"{name}.json"
    if not path.is_file():
        raise InputError("preset", f"no saved stack named {name!r}")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        entries = data["loras"]
        if not isinstance(entries, list) or len(entries) > MAX_LORAS:
            raise ValueError("loras must be a list")
        loras = tuple(LoraSpec.from_dict(e, f"loras[{i}].") for i, e in enumerate(entries))
    except (ValueError, KeyError, TypeError) as exc:
        raise InputError("preset", f"{path.name} is not a saved LoRA stack ({exc})") from None
    missing = [s.label for s in loras if not s.repo_id and not os.path.isfile(s.path)]
    if missing:
        raise InputError("preset", f"stack {name!r} names file(s) that are gone: {', '.join(missing)}; put them "
                                   "back or remove them from the stack and save it again")
    check_lora_stack("loras", loras)
    return loras


def store_upload(models_dir, upload_path: str) -> str:
    """Copy an uploaded LoRA into the app's LoRA folder (same name kept; a different file of that name gets a
    numbered one) and return its path there."""
    src = Path(upload_path)
    folder = loras_dir(models_dir)
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / src.name
    n = 1
    while target.exists() and not _same_file(target, src):
        target = folder / f"{src.stem}-{n}{src.suffix}"
        n += 1
    if not target.exists():  # atomic: a crash or a full disk never leaves a cut LoRA under this name
        copy_file(src, target, what="models folder", flag="--models-dir")
    return str(target)


def _same_file(a: Path, b: Path) -> bool:
    if a.stat().st_size != b.stat().st_size:
        return False
    from engine.adapters.lora_files import content_hash

    return content_hash(a) == content_hash(b)
