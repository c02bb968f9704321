"""What one visitor may change for everyone (issue 30, point 5): nothing but the shared model cache.

The ComfyUI models folder is read by every tab of every session, so it is an administrator's setting: the page may
change it only where nobody else can reach the page (listening on loopback, without ``--share`` or ``--auth``),
or where the person starting the app said so (``--folder-settings page``); elsewhere the page shows it read-only
and its endpoint refuses. Even then, a folder (and every base path of an ``extra_model_paths.yaml``) must lie
inside an allowed root: the user's home, the models folder, the folders given at launch and ``--allowed-folders``.

Files a handler writes for one session (a panorama padded to 2:1) go to a folder of that session, so that two
visitors' files of the same name never replace each other.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

from engine import InputError

LOOPBACK = ("127.0.0.1", "localhost", "::1")


@dataclass(frozen=True)
class FolderPolicy:
    editable: bool = True  # the page may change the ComfyUI folder (only where the page has one user)
    roots: tuple[str, ...] = ()  # allowed beyond the defaults
    why_locked: str = ""


_policy = FolderPolicy()


def set_folder_policy(policy: FolderPolicy) -> None:
    """Called by app.py before the page is built; the page keeps the policy it was built with."""
    global _policy
    _policy = policy


def folder_policy() -> FolderPolicy:
    return _policy


def policy_for_launch(mode: str, host: str, share: bool, auth, roots: list[str]) -> FolderPolicy:
    """``--folder-settings``: ``page`` (the page may change it), ``locked`` (only the launch flags), ``auto``:
    the page only when nobody else can reach it."""
    reach = [why for why, on in (("--share", share), ("--auth", bool(auth)),
                                 (f"--host {host}", host not in LOOPBACK)) if on]
    if mode == "page" or (mode == "auto" and not reach):
        return FolderPolicy(True, tuple(roots))
    why = "--folder-settings locked" if mode == "locked" else f"the page can be reached by others ({', '.join(reach)})"
    return FolderPolicy(False, tuple(roots), why)


def allowed_roots(engine, policy: FolderPolicy, launch_folders: tuple[str, ...] = ()) -> list[Path]:
    found = [Path.home(), Path(engine.models_dir), *map(Path, launch_folders), *map(Path, policy.roots)]
    return list(dict.fromkeys(Path(os.path.realpath(os.path.expanduser(str(p)))) for p in found if str(p)))


def _inside(path: Path, roots: list[Path]) -> bool:
    real = Path(os.path.realpath(os.path.expanduser(str(path))))
    return any(real == root or root in real.parents for root in roots)


def check_folder_setting(folder: str, config: str, roots: list[Path]) -> None:
    """Refuse a ComfyUI folder, a yaml, or any folder the yaml names, outside ``roots`` (InputError naming it)."""
    from engine.comfy_models.folders import comfy_folders

    shown = ", ".join(str(r) for r in roots)
    for field, path in (("comfy_models", folder), ("comfy_config", config)):
        if path and not _inside(Path(path), roots):
            raise InputError(field, f"{path} is outside the folders this app may read ({shown}); start the app "
                                    "with --allowed-folders to allow another")
    for path in comfy_folders(folder, config).roots():
        if not _inside(path, roots):
            raise InputError("comfy_config", f"the yaml names {path}, outside the folders this app may read "
                                             f"({shown}); start the app with --allowed-folders to allow another")


def session_folder(base: str | os.PathLike, request) -> Path:
    """``base`` / a folder of this browser session (its hash, hashed again: the folder name reveals nothing)."""
    session = (getattr(request, "session_hash", None) or "local") if request is not None else "local"
    return Path(base) / hashlib.sha256(session.encode()).hexdigest()[:16]
