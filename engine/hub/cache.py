"""What the local HF cache holds for a repo, from disk alone (and the HF_* environment, read when asked):
``engine.hub`` downloads into it, ``engine.hub.verify`` checks it, the catalog shows it."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

from huggingface_hub import constants, get_cached_repo_tree, try_to_load_from_cache
from huggingface_hub.errors import CachedRepoTreeNotFoundError
from huggingface_hub.file_download import repo_folder_name
from huggingface_hub.utils import filter_repo_objects

HUB = "https://huggingface.co"
COMMIT = re.compile(r"^[0-9a-f]{40}$")
TRUE_VALUES = {"1", "ON", "YES", "TRUE"}


# ------------------------------------------------------------------------------------- environment
@dataclass(frozen=True)
class HubEnv:
    endpoint: str
    cache_dir: Path
    token: str | bool
    offline: bool


def read_env() -> HubEnv:
    """Read the HF_* variables now, the way huggingface_hub reads them at import time."""
    env = os.environ

    def path(value: str) -> Path:
        return Path(os.path.expandvars(os.path.expanduser(value)))

    home = env.get("HF_HOME") or os.path.join(env.get("XDG_CACHE_HOME") or "~/.cache", "huggingface")
    cache = env.get("HF_HUB_CACHE") or env.get("HUGGINGFACE_HUB_CACHE") or os.path.join(home, "hub")
    token = (env.get("HF_TOKEN") or env.get("HUGGING_FACE_HUB_TOKEN") or "").strip()
    if not token:
        token_file = path(env.get("HF_TOKEN_PATH") or os.path.join(home, "token"))
        try:
            token = token_file.read_text().strip()
        except OSError:
            token = ""
    offline = (env.get("HF_HUB_OFFLINE") or env.get("TRANSFORMERS_OFFLINE") or "").upper() in TRUE_VALUES
    return HubEnv(
        endpoint=(env.get("HF_ENDPOINT") or HUB).rstrip("/"),
        cache_dir=path(cache).resolve(),
        # False, not None: None would make the client fall back to the token file of the HF_HOME it saw at import
        token=token or False,
        # the client's own flag is frozen at import; if it was set then, its HTTP layer refuses anyway
        offline=offline or constants.HF_HUB_OFFLINE,
    )


# ------------------------------------------------------------------------------------- cache state
@dataclass(frozen=True)
class CacheState:
    state: str  # "absent" | "partial" | "complete"
    bytes_on_disk: int
    expected_bytes: int | None  # None when unknown (offline, no tree listing cached)
    path: Path | None  # the snapshot folder, only when complete

    @property
    def complete(self) -> bool:
        return self.state == "complete"


def storage_of(env: HubEnv, repo_id: str) -> Path:
    return env.cache_dir / repo_folder_name(repo_id=repo_id, repo_type="model")


def cached_commit(storage: Path, revision: str | None) -> str | None:
    revision = revision or constants.DEFAULT_REVISION
    if COMMIT.match(revision):
        return revision
    try:
        return (storage / "refs" / revision).read_text().strip() or None
    except OSError:
        return None


def file_size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0


def incomplete_bytes(storage: Path) -> int:
    # both our `<etag>.incomplete` and the client's orphaned `<etag>.<hex>.incomplete` (what scan_cache_dir reports)
    return sum(file_size(p) for p in (storage / "blobs").glob("*.incomplete"))


def unlinked_blob_bytes(storage: Path) -> int:
    """Verified blobs no snapshot points to yet (fetched, then the process stopped before linking)."""
    blobs = storage / "blobs"
    if not blobs.is_dir():
        return 0
    linked: set[str] = set()
    for root, _dirs, names in os.walk(storage / "snapshots"):
        for name in names:
            linked.add(os.path.basename(os.path.realpath(os.path.join(root, name))))
    return sum(
        file_size(p) for p in blobs.iterdir() if p.suffix != ".incomplete" and p.name not in linked and p.is_file()
    )


def patterns_of(allow_patterns) -> list[str] | None:
    if not allow_patterns:
        return None  # everything
    return [allow_patterns] if isinstance(allow_patterns, str) else list(allow_patterns)


def select(paths, allow_patterns) -> list[str]:
    return list(filter_repo_objects(items=list(paths), allow_patterns=patterns_of(allow_patterns)))


def sum_or_none(sizes) -> int | None:
    sizes = list(sizes)
    return None if None in sizes else sum(sizes)


def local_state(env: HubEnv, repo_id: str, revision: str | None, allow_patterns, remote: dict | None = None):
    """The CacheState from disk alone. ``remote``: {"commit": sha, "files": {path: size}} from the hub, if known."""
    storage = storage_of(env, repo_id)
    if not storage.is_dir():
        return CacheState("absent", 0, sum_or_none(remote["files"].values()) if remote else None, None)
    commit = remote["commit"] if remote else cached_commit(storage, revision)
    files: dict[str, int] | None = None
    if remote:
        files = remote["files"]
    elif commit:
        try:  # the tree listing snapshot_download cached for this commit: the expected files, offline
            tree = get_cached_repo_tree(repo_id, revision=commit, cache_dir=env.cache_dir)
            sizes = {f.path: f.size for f in tree}
            files = {p: sizes[p] for p in select(sizes, allow_patterns)}
        except (CachedRepoTreeNotFoundError, OSError, ValueError):
            files = None
    snapshot = storage / "snapshots" / commit if commit else None
    candidates: list[str] = []
    if files is not None:
        candidates = list(files)
    elif snapshot is not None and snapshot.is_dir():
        found = [p.relative_to(snapshot).as_posix() for p in snapshot.rglob("*") if p.is_file()]
        candidates = select(found, allow_patterns)
    present: dict[str, int] = {}
    for rel in candidates:
        cached = try_to_load_from_cache(repo_id, rel, cache_dir=env.cache_dir, revision=commit) if commit else None
        if isinstance(cached, str) and os.path.isfile(cached):
            size = os.path.getsize(cached)
            if files is None or files[rel] is None or files[rel] == size:
                present[rel] = size
    partial = incomplete_bytes(storage)
    on_disk = sum(present.values()) + partial + unlinked_blob_bytes(storage)
    expected = sum_or_none(files.values()) if files is not None else None
    if files is not None:
        complete = bool(files) and len(present) == len(files)
    else:  # no listing: trust a snapshot with files and no partial download, as huggingface_hub does offline
        complete = bool(present) and partial == 0
    if complete:
        return CacheState("complete", on_disk, expected, snapshot)
    return CacheState("partial" if on_disk else "absent", on_disk, expected, None)
