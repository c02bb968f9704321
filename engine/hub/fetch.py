"""One file into the HF cache's ``blobs/<etag>``: resumed from ``<etag>.incomplete`` under the client's own blob
lock, verified (sha256 / git sha1) before the atomic rename, every failure a message with the bytes kept."""

from __future__ import annotations

import errno
import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from filelock import Timeout as LockTimeout
from huggingface_hub.utils import WeakFileLock
from huggingface_hub.utils.sha import git_hash, sha_fileobj

from engine.hub import http as hub_http
from engine.hub.cache import file_size
from engine.hub.errors import (
    ChecksumMismatchError,
    DownloadInterruptedError,
    HubError,
    HubStalledError,
    NotEnoughDiskError,
)
from engine.hub.progress import Transfer, fmt

logger = logging.getLogger("engine.hub")


def matches(path: Path, expected: str) -> bool:
    """sha256 for LFS files (64 hex), git blob sha1 for the others (40 hex) -- what the hub's ETag is."""
    with open(path, "rb") as f:
        if len(expected) == 64:
            return sha_fileobj(f).hex() == expected.lower()
        return git_hash(f.read()) == expected.lower()


@contextmanager
def blob_lock(lock_path: Path, transfer: Transfer) -> Iterator[None]:
    """The client's own per-blob lock, taken in 1 s slices so that a cancel is seen while waiting."""
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    while True:
        transfer.check()
        try:
            with WeakFileLock(lock_path, timeout=1.0):
                yield
                return
        except LockTimeout:
            continue


@dataclass
class Job:
    path: str  # in the repo
    size: int | None
    expected: str  # sha256 (LFS) or git sha1
    etag: str  # blob name in the cache
    have: int = 0  # bytes already on disk when the call started (counted as done)
    url: str = ""
    headers: dict | None = None


def partial_path(blobs: Path, etag: str) -> Path:
    return blobs / f"{etag}.incomplete"


def have_bytes(blobs: Path, job: Job) -> int:
    """Bytes of ``job`` already on disk: our partial file or the largest orphan the client left."""
    files = [partial_path(blobs, job.etag), *blobs.glob(f"{job.etag}.*.incomplete")]
    size = max((file_size(p) for p in files), default=0)
    return size if job.size is None or size <= job.size else 0


def adopt_orphans(blobs: Path, etag: str) -> None:
    """Under the blob lock no client is writing ``<etag>.<hex>.incomplete``: keep the longest as our partial."""
    ours = partial_path(blobs, etag)
    for orphan in sorted(blobs.glob(f"{etag}.*.incomplete"), key=file_size):
        if file_size(orphan) > file_size(ours):
            os.replace(orphan, ours)
        else:
            orphan.unlink(missing_ok=True)


@contextmanager
def drop_if_empty(part: Path) -> Iterator[None]:
    """On failure or cancel keep a partial file only if it holds something worth resuming."""
    try:
        yield
    except BaseException:
        if file_size(part) == 0:
            part.unlink(missing_ok=True)
        raise


def fetch(job: Job, storage: Path, locks: Path, transfer: Transfer, endpoint: str) -> None:
    """Fetch one file into ``blobs/<etag>``, resuming ``blobs/<etag>.incomplete``; verify before the rename."""
    blobs = storage / "blobs"
    blob, part = blobs / job.etag, partial_path(blobs, job.etag)
    lim = hub_http.limits()
    with blob_lock(locks / f"{job.etag}.lock", transfer):
        if blob.exists():  # another process finished it while we waited for the lock
            transfer.advance((job.size or 0) - job.have, job.path)
            return
        adopt_orphans(blobs, job.etag)
        for attempt in (1, 2):
            have = file_size(part)
            if job.size is not None and have > job.size:
                part.unlink()
                have = 0
            if job.size is None or have < job.size:  # a partial as long as the file only needs its checksum
                get_into(part, have, job, transfer, lim, storage, endpoint)
            if matches(part, job.expected):
                os.replace(part, blob)  # atomic: a blob under its final name is always a verified one
                return
            counted = file_size(part)
            part.unlink(missing_ok=True)
            if counted == 0 or attempt == 2:
                transfer.advance(-counted, f"{job.path} failed its checksum and was deleted")
                raise ChecksumMismatchError(
                    f"{job.path} from {transfer.repo_id} does not match the hub's checksum ({job.expected[:12]}…): "
                    "it was corrupted in transit or on disk and has been deleted. Run the download again; if it "
                    "keeps failing, the mirror at HF_ENDPOINT may be serving a bad copy."
                )
            # the resumed prefix may have been the bad part (written by another tool, a disk error): start over,
            # and say so, since the progress bar goes back by those bytes
            transfer.advance(-counted, f"{job.path} failed its checksum: downloading it again from the start")
            logger.warning("%s: resumed file failed its checksum, downloading it again from the start", job.path)


def get_into(part: Path, have: int, job: Job, transfer: Transfer, lim: hub_http.Limits, storage: Path,
              endpoint: str) -> None:
    """Append the rest of ``job``'s body to ``part``; every failure leaves with a message and the bytes kept."""

    def kept() -> str:
        size = f" of {fmt(job.size)}" if job.size else ""
        return f"{fmt(file_size(part))}{size} of the file"

    # unbuffered: every chunk handed to write() is on disk, so even SIGKILL leaves a valid prefix
    with drop_if_empty(part), open(part, "r+b" if have else "wb", buffering=0) as f:
        f.seek(have)
        try:
            hub_http.get_body(job.url, job.headers or {}, f, have, job.size, transfer, lim, job.path)
        except hub_http.RangeNotSatisfiable:
            # the hub has nothing past what is on disk: the checksum decides between "done" and "start again"
            logger.info("%s: 416 on resume at %d bytes; checking what is on disk", job.path, have)
        except hub_http.Stalled as exc:
            raise HubStalledError(
                f"The hub at {endpoint} stopped answering while sending {job.path} (no data for {exc.seconds:g} s; "
                f"STUDIO_HUB_READ_TIMEOUT). {kept()} are kept; run the download again to resume."
            ) from exc
        except hub_http.BrokeOff as exc:
            raise DownloadInterruptedError(
                f"The download of {job.path} from {endpoint} broke off {exc.tries} times in a row ({exc}). "
                f"{kept()} are kept; run the download again to resume."
            ) from exc
        except hub_http.RetriesExhausted as exc:
            raise HubError(
                f"The hub at {endpoint} answered HTTP {exc.status} for {job.path} on all {exc.tries} tries; it may "
                f"be having trouble. {kept()} are kept; try again later to resume."
            ) from exc
        except OSError as exc:
            if exc.errno == errno.ENOSPC:
                raise NotEnoughDiskError(
                    f"The disk filled up while downloading {job.path} into {storage.parent}. Free some "
                    "space (or point HF_HOME to a larger disk) and run the download again to resume."
                ) from exc
            raise
