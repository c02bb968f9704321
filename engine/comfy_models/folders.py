"""Where a ComfyUI install keeps its models: ``--comfy-models DIR`` (a ``models`` folder, or the ComfyUI folder
above it) and the base paths of an ``extra_model_paths.yaml`` (``--comfy-config FILE``), read as ComfyUI's
``utils/extra_config.py`` reads it: each top-level entry has an optional ``base_path`` (relative to the yaml's
folder, ``~`` and ``$VARS`` expanded) and category keys whose values are one path or several, one per line."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from engine.errors import InputError

#: The categories this app reads, with the legacy names ComfyUI maps onto them (folder_paths.py:
#: ``unet`` -> ``diffusion_models``, ``clip`` -> ``text_encoders``).
CATEGORIES = ("diffusion_models", "checkpoints", "vae", "text_encoders", "clip_vision", "loras", "ipadapter",
              "ipadapter-flux")
LEGACY = {"unet": "diffusion_models", "clip": "text_encoders"}
FOLDER_NAMES = {"diffusion_models": ("diffusion_models", "unet"), "text_encoders": ("text_encoders", "clip")}


@dataclass
class ComfyFolders:
    """category -> folders to scan (in order), and what could not be used, in words."""

    folders: dict[str, list[Path]] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)
    sources: list[str] = field(default_factory=list)  # what was given, for the status line

    def add(self, category: str, path: Path) -> None:
        category = LEGACY.get(category, category)
        if category not in CATEGORIES:
            return
        # absolute, symlinks kept (a linked folder keeps its ComfyUI name): the same folder given relatively and
        # through a yaml base path is listed once, and requests record paths that work from any directory
        path = Path(os.path.abspath(path))
        paths = self.folders.setdefault(category, [])
        if path not in paths:
            paths.append(path)

    def roots(self) -> list[Path]:
        return list(dict.fromkeys(p for paths in self.folders.values() for p in paths))


def models_folder(path: str | os.PathLike) -> Path:
    """The ``models`` folder for ``path``: itself, or ``path/models`` when ``path`` is the ComfyUI folder."""
    path = Path(os.path.expanduser(os.fspath(path)))
    if not any((path / c).is_dir() for c in (*CATEGORIES, *LEGACY)) and (path / "models").is_dir():
        return path / "models"
    return path


def add_models_dir(result: ComfyFolders, path: str | os.PathLike) -> None:
    folder = models_folder(path)
    result.sources.append(str(folder))
    if not folder.is_dir():
        result.problems.append(f"ComfyUI models folder {folder} does not exist" if not folder.exists()
                               else f"{folder} is not a folder")
        return
    for category in CATEGORIES:
        for name in FOLDER_NAMES.get(category, (category,)):
            result.add(category, folder / name)


def read_extra_paths(result: ComfyFolders, yaml_file: str | os.PathLike) -> None:
    """Add the folders of an ``extra_model_paths.yaml``; a missing or malformed file is a problem, not a crash."""
    import yaml

    yaml_file = Path(os.path.expanduser(os.fspath(yaml_file)))
    result.sources.append(str(yaml_file))
    try:
        config = yaml.safe_load(yaml_file.read_text(encoding="utf-8"))
    except FileNotFoundError:
        result.problems.append(f"extra_model_paths file {yaml_file} does not exist")
        return
    except (OSError, UnicodeDecodeError) as exc:
        result.problems.append(f"cannot read {yaml_file}: {exc}")
        return
    except yaml.YAMLError as exc:
        result.problems.append(f"{yaml_file.name} is not valid YAML: {str(exc).splitlines()[0]}")
        return
    if not isinstance(config, dict):
        result.problems.append(f"{yaml_file.name}: expected named sections (comfyui:, a111: ...), found none")
        return
    here = yaml_file.resolve().parent
    for section, conf in config.items():
        if conf is None:
            continue
        if not isinstance(conf, dict):
            result.problems.append(f"{yaml_file.name}: section {section!r} is not a table of folders")
            continue
        conf = dict(conf)
        base = conf.pop("base_path", None)
        conf.pop("is_default", None)
        conf.pop("download_model_base", None)
        if base is not None:
            base = os.path.expandvars(os.path.expanduser(str(base)))
            base = Path(base) if os.path.isabs(base) else here / base
        for category, value in conf.items():
            for line in str(value or "").split("\n"):
                line = line.strip()
                if not line:
                    continue
                full = (base / line) if base is not None else (Path(line) if os.path.isabs(line) else here / line)
                result.add(str(category), Path(os.path.normpath(full)))


def comfy_folders(models_dir: str | os.PathLike | None = None, config: str | os.PathLike | None = None) -> ComfyFolders:
    result = ComfyFolders()
    if models_dir:
        add_models_dir(result, models_dir)
    if config:
        read_extra_paths(result, config)
    return result


def check_given(models_dir: str, config: str) -> None:
    """For the settings field: a clear message for a path that cannot be used at all."""
    if not models_dir and not config:
        raise InputError("comfy_models", "give a ComfyUI models folder or an extra_model_paths.yaml")
    if models_dir and not models_folder(models_dir).is_dir():
        raise InputError("comfy_models", f"no such folder: {models_dir}")
    if config and not Path(os.path.expanduser(config)).is_file():
        raise InputError("comfy_config", f"no such file: {config}")
