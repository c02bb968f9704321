"""Every file the app writes, written so that a crash or a full disk never leaves a broken one behind.

One file: written to a temp file in the same folder, flushed and fsynced, then ``os.replace``d over its name
(the same-folder temp keeps the rename atomic: one filesystem). Readers see the old file or the new one, never
half of one. A temp file left by a crash is hidden (``.name.tmp-…``) and removed by the next write of that name.

A run's files (``OutputSet``): written into a hidden staging folder of the outputs folder, fsynced, then a
journal (``commit.json``) names them all and they move out, the request JSON last. A crash before the journal
leaves only the staging folder (removed at the next start); a crash after it is rolled forward at the next start
(``recover``), so every set ends complete with its JSON or absent.

A full disk (``ENOSPC``): whatever was partly written is removed and the run fails with ``DiskFull``, which says
how much space is left and which flag chooses another folder. Saves whose size is known check first
(``check_free``). Content-named copies (``keep_copy``) are verified by size and hash before reuse, so a copy that
a full disk cut short is replaced instead of trusted.

No library does this set-wise commit (``atomicwrites`` is unmaintained and handles one file), hence this module.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import re
import secrets
import shutil
from collections.abc import Iterator
from pathlib import Path

from engine.errors import EngineError

STAGING = ".staging"  # inside the outputs folder: same filesystem, so moves out of it are renames
JOURNAL = "commit.json"
MARGIN = 1 << 20  # free space kept beyond a known size (filesystem metadata, the JSON)
_FULL = (errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC))
_active: set[str] = set()  # staging folders of this process still being written


class DiskFull(EngineError):
    """The folder a run writes to has no room left; nothing partial was left in it."""

    def __init__(self, folder: str | os.PathLike, what: str = "outputs folder", flag: str = "--outputs-dir"):
        self.folder = Path(folder)
        self.free_bytes = free_bytes(folder)
        mb = self.free_bytes / 2**20
        super().__init__(f"the {what} is full ({mb:.1f} MB free); free space or choose another "
                         f"with {flag} ({self.folder})")


def is_disk_full(exc: BaseException) -> bool:
    return isinstance(exc, OSError) and exc.errno in _FULL


def free_bytes(folder: str | os.PathLike) -> int:
    path = Path(folder)
    while not path.exists() and path != path.parent:
        path = path.parent
    try:
        return shutil.disk_usage(path).free
    except OSError:
        return 0


def check_free(folder: str | os.PathLike, need: int, what: str = "outputs folder", flag: str = "--outputs-dir"):
    """Refuse a save of ``need`` bytes before writing any of it when the folder cannot hold it."""
    if free_bytes(folder) < need + MARGIN:
        raise DiskFull(folder, what, flag)


def fsync_file(path: str | os.PathLike) -> None:
    """Flush a file another program wrote (ffmpeg) to the disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_dir(folder: str | os.PathLike) -> None:
    """Make renames in ``folder`` durable (POSIX: the directory entry lives in the folder)."""
    with contextlib.suppress(OSError):  # not every platform opens folders (Windows)
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _temp_for(path: Path) -> Path:
    return path.with_name(f".{path.name}.tmp-{os.getpid()}-{secrets.token_hex(4)}")


_TEMP = re.compile(r"^\..+\.tmp-(\d+)-[0-9a-f]{8}$")


def sweep_temps(folder: str | os.PathLike) -> int:
    """Remove the temp files that processes which died mid-write left in ``folder``; returns how many."""
    removed = 0
    try:
        names = os.listdir(folder)
    except OSError:
        return 0
    for name in names:
        match = _TEMP.match(name)
        if match and not _alive(int(match.group(1))):
            with contextlib.suppress(OSError):
                os.unlink(os.path.join(folder, name))
                removed += 1
    return removed


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike, what: str = "outputs folder", flag: str = "--outputs-dir") -> Iterator:
    """``with atomic_write(p) as f: f.write(...)``: binary file object; ``p`` appears complete on success and is
    untouched on any failure. A full disk raises ``DiskFull(what, flag)``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    sweep_temps(path.parent)
    tmp = _temp_for(path)
    try:
        with open(tmp, "wb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        with contextlib.suppress(OSError):
            tmp.unlink()
        if is_disk_full(exc):
            raise DiskFull(path.parent, what, flag) from exc
        raise
    fsync_dir(path.parent)


def write_bytes(path, data: bytes, **where) -> Path:
    with atomic_write(path, **where) as f:
        f.write(data)
    return Path(path)


def write_text(path, text: str, **where) -> Path:
    return write_bytes(path, text.encode("utf-8"), **where)


def write_json(path, data, indent: int | None = 2, **where) -> Path:
    return write_text(path, json.dumps(data, indent=indent), **where)


def copy_file(src, dst, **where) -> Path:
    with open(src, "rb") as source, atomic_write(dst, **where) as f:
        shutil.copyfileobj(source, f, 1 << 20)
    return Path(dst)


def file_digest(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def keep_copy(src: str | os.PathLike, folder: str | os.PathLike, **where) -> Path:
    """A copy of ``src`` in ``folder`` named by its content (``<sha256[:20]><suffix>``). An existing file of that
    name is reused only if its size and hash match; one cut short (a full disk, a crash before this module) is
    written again."""
    src = Path(src)
    digest = file_digest(src)
    target = Path(folder) / f"{digest[:20]}{src.suffix.lower()}"
    try:
        if target.stat().st_size == src.stat().st_size and file_digest(target) == digest:
            return target
    except OSError:
        pass  # not there yet
    return copy_file(src, target, **where)


class OutputSet:
    """The files of one run, appearing together: ``path(name)`` is where to write ``name`` (or use the helpers),
    ``commit(json_name)`` moves them all into ``folder``, the JSON last. Used as a context manager it removes
    everything staged when the block fails, and turns a full disk into ``DiskFull``."""

    def __init__(self, folder: str | os.PathLike, what: str = "outputs folder", flag: str = "--outputs-dir"):
        self.folder = Path(folder)
        self.what, self.flag = what, flag
        self.folder.mkdir(parents=True, exist_ok=True)
        recover(self.folder)
        self.stage = self.folder / STAGING / f"{os.getpid()}-{secrets.token_hex(6)}"
        self.stage.mkdir(parents=True)
        _active.add(str(self.stage))
        self.names: list[str] = []

    def __enter__(self) -> OutputSet:
        return self

    def __exit__(self, kind, exc, tb) -> None:
        if str(self.stage) in _active:  # failed, or left without a commit: nothing of it appears
            self.discard()
        if exc is not None:
            if is_disk_full(exc):
                raise DiskFull(self.folder, self.what, self.flag) from exc

    def path(self, name: str) -> Path:
        """The staged path for the output ``name`` (a plain file name); it counts as written once called."""
        if Path(name).name != name or name == JOURNAL:
            raise ValueError(f"not a plain output name: {name!r}")
        if name not in self.names:
            self.names.append(name)
        return self.stage / name

    def final(self, name: str) -> Path:
        return self.folder / name

    def write_bytes(self, name: str, data: bytes) -> Path:
        self.path(name).write_bytes(data)  # staged: fsynced at commit
        return self.final(name)

    def write_json(self, name: str, data, indent: int | None = 2) -> Path:
        return self.write_bytes(name, json.dumps(data, indent=indent).encode("utf-8"))

    def save_image(self, name: str, image, **kwargs) -> Path:
        image.save(self.path(name), **kwargs)
        return self.final(name)

    def save_npy(self, name: str, array) -> Path:
        import numpy as np

        with open(self.path(name), "wb") as f:
            np.save(f, array)
        return self.final(name)

    def commit(self, last: str | None = None) -> list[str]:
        """Move every staged file into the folder (``last``, the request JSON, after all others); returns the
        final paths in the order they were added."""
        names = [n for n in self.names if (self.stage / n).exists()]
        try:
            for name in names:
                fsync_file(self.stage / name)
            order = [n for n in names if n != last] + ([last] if last in names else [])
            journal = self.stage / JOURNAL
            with open(journal, "w", encoding="utf-8") as f:  # from here on the set is rolled forward
                json.dump({"order": order}, f)
                f.flush()
                os.fsync(f.fileno())
            fsync_dir(self.stage)
        except BaseException as exc:
            self.discard()
            if is_disk_full(exc):
                raise DiskFull(self.folder, self.what, self.flag) from exc
            raise
        _finish(self.stage, order, self.folder)
        _active.discard(str(self.stage))
        return [str(self.final(n)) for n in names]

    def discard(self) -> None:
        shutil.rmtree(self.stage, ignore_errors=True)
        _active.discard(str(self.stage))
        _drop_empty(self.stage.parent)


def _finish(stage: Path, order: list[str], folder: Path) -> None:
    for name in order:
        staged = stage / name
        if staged.exists():
            os.replace(staged, folder / name)
    fsync_dir(folder)
    shutil.rmtree(stage, ignore_errors=True)
    _drop_empty(stage.parent)


def _drop_empty(folder: Path) -> None:
    with contextlib.suppress(OSError):
        folder.rmdir()


def _alive(pid: int) -> bool:
    if pid == os.getpid():  # this process: a temp of another thread here may be in use
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # exists, owned by another user
        return True
    return True


def recover(folder: str | os.PathLike) -> dict[str, int]:
    """Finish what a crash interrupted in ``folder``: sets with a journal move out, the rest is removed. Staging
    folders of live processes (another engine writing now) are left alone. Returns counts (for logs and tests)."""
    root = Path(folder) / STAGING
    done = {"rolled_forward": 0, "removed": sweep_temps(folder)}
    if not root.is_dir():
        return done
    for stage in root.iterdir():
        pid = stage.name.split("-", 1)[0]
        if str(stage) in _active or (pid.isdigit() and int(pid) != os.getpid() and _alive(int(pid))):
            continue
        journal = stage / JOURNAL
        try:
            order = json.loads(journal.read_text(encoding="utf-8"))["order"]
        except (OSError, ValueError, KeyError, TypeError):
            shutil.rmtree(stage, ignore_errors=True)
            done["removed"] += 1
            continue
        _finish(stage, [n for n in order if isinstance(n, str) and Path(n).name == n], Path(folder))
        done["rolled_forward"] += 1
    _drop_empty(root)
    return done
