"""The index of a ComfyUI models folder: every weight file with its ComfyUI name, size, architecture and dtype,
from headers only. Cached in a JSON file of the app's own (never inside a scanned folder) and refreshed on each
``refresh()``: a stat walk, re-reading only files whose size or mtime changed. Nothing in a scanned folder is
written, moved or deleted; files are opened read-only.

Bad input never stops the scan: a missing folder, an unreadable file or folder, a symlink loop, an empty,
truncated or refused (pickle needing code) file each becomes a ``problem`` line or an entry with ``error``."""

from __future__ import annotations

import json
import logging
import os
import threading
import zipfile
from dataclasses import asdict, dataclass, field
from pathlib import Path

from engine.comfy_models.detect import detect
from engine.comfy_models.folders import ComfyFolders
from engine.comfy_models.header import PICKLE_SUFFIXES, WEIGHT_SUFFIXES, HeaderError, read_table, weight_dtype

log = logging.getLogger(__name__)
CACHE_VERSION = 1
PICKLE_SCAN_LIMIT = 512 * 2**20  # a legacy (non-zip) pickle cannot be mapped: larger ones are checked at load
UNSUPPORTED_SUFFIXES = {".gguf": "GGUF files need a GGUF loader; use the .safetensors file of this model"}


@dataclass
class Entry:
    path: str  # absolute, as found (a link is not resolved: ComfyUI names it by where it sits)
    name: str  # the ComfyUI name: relative to its category folder, "/"-separated
    category: str
    size: int
    mtime_ns: int
    arch: str = "unknown"
    label: str = "unknown"
    kind: str = "unknown"
    dtype: str = ""
    details: dict = field(default_factory=dict)
    reason: str = ""  # unknown layout: why
    error: str = ""  # unreadable: why

    @property
    def usable(self) -> bool:
        return not self.error and self.arch != "unknown"

    def row(self) -> list:
        """name, size, architecture, dtype, note: one table row."""
        note = self.error or self.reason or ""
        return [self.name, human_size(self.size), self.label if not self.error else "—", self.dtype or "—", note]


def human_size(n: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n} B"


def describe(path: str, name: str, category: str, st: os.stat_result) -> Entry:
    """Read one file's header and classify it; every failure becomes ``error`` text."""
    entry = Entry(path, name, category, st.st_size, st.st_mtime_ns)
    suffix = os.path.splitext(path)[1].lower()
    if suffix in UNSUPPORTED_SUFFIXES:
        entry.reason = UNSUPPORTED_SUFFIXES[suffix]
        return entry
    if suffix in PICKLE_SUFFIXES and st.st_size > PICKLE_SCAN_LIMIT and not zipfile.is_zipfile(path):
        entry.reason = "legacy pickle too large to inspect without loading it; it is checked when loaded"
        return entry
    try:
        table = read_table(path)
    except HeaderError as exc:
        entry.error = str(exc)
        return entry
    except PermissionError:
        entry.error = "cannot read: permission denied"
        return entry
    except OSError as exc:
        entry.error = f"cannot read: {exc.strerror or exc}"
        return entry
    found = detect(table, os.path.basename(path))
    entry.arch, entry.label, entry.kind, entry.details, entry.reason = (
        found.arch, found.label, found.kind, found.details, found.reason)
    entry.dtype = weight_dtype(table)
    if table.format == "pickle":
        entry.details["pickle"] = True
    return entry


class ComfyIndex:
    """The files of ``folders``; ``refresh()`` rescans (cheap when nothing changed)."""

    def __init__(self, folders: ComfyFolders, cache_file: str | os.PathLike | None = None):
        self.folders = folders
        self.cache_file = Path(cache_file) if cache_file else None
        if self.cache_file is not None and any(_inside(self.cache_file, root) for root in folders.roots()):
            self.cache_file = None  # read-only: the cache never goes into a scanned folder
        self.entries: list[Entry] = []
        self.problems: list[str] = []
        self.stats = {"scanned": 0, "read": 0}
        self._cache = self._load_cache()
        self._lock = threading.Lock()

    # ------------------------------------------------------------ scan
    def refresh(self) -> ComfyIndex:
        with self._lock:
            entries, problems, read = [], list(self.folders.problems), 0
            for category, roots in self.folders.folders.items():
                for root in roots:
                    if not root.is_dir():
                        continue
                    for path, name, st, problem in _walk(root):
                        if problem:
                            problems.append(problem)
                            continue
                        cached = self._cache.get(path)
                        if cached and cached.size == st.st_size and cached.mtime_ns == st.st_mtime_ns and \
                                cached.category == category:
                            entries.append(cached)
                            continue
                        entries.append(describe(path, name, category, st))
                        read += 1
            self.entries, self.problems = entries, problems
            self.stats = {"scanned": len(entries), "read": read}
            self._cache = {e.path: e for e in entries}
            if read:
                self._save_cache()
            return self

    # ------------------------------------------------------------ queries
    def find(self, path: str) -> Entry | None:
        return next((e for e in self.entries if e.path == path), None)

    def of(self, *archs: str, kind: str = "") -> list[Entry]:
        return [e for e in self.entries if e.usable and (e.arch in archs or (kind and e.kind == kind))]

    def unusable(self) -> list[Entry]:
        return [e for e in self.entries if not e.usable]

    def summary(self) -> str:
        usable = sum(e.usable for e in self.entries)
        roots = len([r for r in self.folders.roots() if r.is_dir()])
        text = f"{len(self.entries)} files in {roots} folders: {usable} usable, {len(self.entries) - usable} not"
        return text + (f"; {len(self.problems)} problems" if self.problems else "")

    # ------------------------------------------------------------ cache
    def _load_cache(self) -> dict[str, Entry]:
        if self.cache_file is None or not self.cache_file.is_file():
            return {}
        try:
            data = json.loads(self.cache_file.read_text(encoding="utf-8"))
            if data.get("version") != CACHE_VERSION:
                return {}
            return {e["path"]: Entry(**e) for e in data.get("entries", [])}
        except (OSError, ValueError, TypeError, KeyError) as exc:
            log.warning("ignoring the ComfyUI index cache %s: %s", self.cache_file, exc)
            return {}

    def _save_cache(self) -> None:
        if self.cache_file is None:
            return
        from engine.files.atomic import DiskFull, write_json

        try:  # atomic, and a failed write leaves no temp file behind
            write_json(self.cache_file, {"version": CACHE_VERSION, "entries": [asdict(e) for e in self.entries]},
                       indent=None, what="models folder", flag="--models-dir")
        except (OSError, DiskFull) as exc:  # a read-only or full app folder only costs the cache
            log.warning("cannot write the ComfyUI index cache %s: %s", self.cache_file, exc)


def _inside(path: Path, root: Path) -> bool:
    try:
        path.resolve().relative_to(root.resolve())
        return True
    except (ValueError, OSError):
        return False


def _walk(root: Path):
    """(path, ComfyUI name, stat, None) for each weight file under ``root`` (links followed), or
    (None, None, None, problem). A folder reached twice through links (a loop) is visited once."""
    seen: set[tuple[int, int]] = set()
    stack = [root]
    while stack:
        folder = stack.pop()
        try:
            st = folder.stat()
        except OSError as exc:
            yield None, None, None, f"{folder}: cannot open ({exc.strerror or exc})"
            continue
        if (st.st_dev, st.st_ino) in seen:
            yield None, None, None, f"{folder}: a symlink loop (this folder is already indexed); skipped"
            continue
        seen.add((st.st_dev, st.st_ino))
        try:
            children = sorted(os.scandir(folder), key=lambda d: d.name)
        except OSError as exc:
            yield None, None, None, f"{folder}: cannot list ({exc.strerror or exc}); skipped"
            continue
        subfolders = []
        for child in children:
            if child.name.startswith("."):
                continue
            try:
                is_dir = child.is_dir()  # follows links
            except OSError:
                is_dir = False
            if is_dir:
                subfolders.append(Path(child.path))
                continue
            lower = child.name.lower()
            if not lower.endswith(WEIGHT_SUFFIXES) and os.path.splitext(lower)[1] not in UNSUPPORTED_SUFFIXES:
                continue
            name = Path(child.path).relative_to(root).as_posix()
            try:
                st = os.stat(child.path)
            except OSError as exc:
                broken = os.path.islink(child.path)
                yield None, None, None, (f"{name}: a broken link" if broken else
                                         f"{name}: cannot read ({exc.strerror or exc})")
                continue
            yield child.path, name, st, None
        stack.extend(reversed(subfolders))
