"""Model downloads for the SDNQ catalog, through ``huggingface_hub`` (2.4.0) and its cache.

What huggingface_hub already does, and we use as is: the cache layout (``models--org--name/{blobs,snapshots,
refs,trees}``, shared with diffusers and every other HF tool), the hub API (``model_info`` with file sizes and
sha256, the tree listing), HEAD metadata (``get_hf_file_metadata``: ETag, commit, size, CDN location), its HTTP
session (``get_session``: proxies, headers, connection pool), the cache-wide blob locks
(``WeakFileLock``), ``snapshot_download`` (refs, tree cache, snapshot links), the cache readers
(``get_cached_repo_tree``, ``try_to_load_from_cache``) and its error classes.

What it lacks (``shared/reference/hub_notes.md``), and this module adds:

- **Resume across calls and processes.** In 2.4.0 each download writes ``blobs/<etag>.<8 hex>.incomplete``, a
  name unique to that call, and deletes it on failure, so a cancel or a killed process starts the file again.
- **Checksums.** The client checks sizes only; right-size wrong bytes are cached and count as hits.
- **A disk-space check that refuses** (the client only warns, per file), a byte progress callback, cancel with a
  ``threading.Event``, one offline/online decision per call, and messages for the person at the keyboard.
- **Timeouts, retries of 429/5xx, a cancel seen within a fraction of a second, nothing received lost on cancel**:
  ``engine/hub_http.py`` (why the body GET is our own loop and not ``file_download.http_get`` is written there).

Resume design (chosen: *resumable blob prefetch, then snapshot_download links*)
---------------------------------------------------------------------------
1. ``model_info(files_metadata=True)`` gives the commit and, per file, its size and sha256 (LFS) or git sha1.
2. Each missing file is fetched by ``hub_http.get_body`` (``Range: bytes=n-`` over the client's session) into
   ``blobs/<etag>.incomplete`` -- a deterministic name (the one older clients used, and the one
   ``scan_cache_dir`` reports as an incomplete download), appended to across calls, under the same
   ``.locks/<repo>/<etag>.lock`` the client takes, so a concurrent diffusers/``hf download`` waits instead of
   racing us. The file is unbuffered, so a killed process leaves every received byte on disk; the next call
   asks for ``Range: bytes=<size on disk>-``. Orphans the client itself left behind (``<etag>.<hex>.incomplete``
   after a kill) are adopted under that lock.
3. Only after its sha256 / git sha1 matches is the file renamed to ``blobs/<etag>``: a blob under its final name
   is always verified, whatever moment the process dies.
4. ``snapshot_download`` then runs for that commit: it writes ``trees/<commit>.json``, finds every blob present
   and only creates the snapshot links (HEAD requests, no body bytes); ``refs/<branch>`` is written as the
   client writes it. Anything it still downloads itself is checksummed afterwards.

Alternatives rejected: the ``local_dir`` mode is no better in 2.4.0 (same unique temporary name, deleted on
failure) and would leave the shared cache; patching ``_download_to_tmp_and_move`` would tie us to a private
function. Trade-off: bodies always go over plain HTTP (the hub serves Xet-backed files that way too, with
``Range``), so hf_xet's chunk deduplication is not used for the large files.

Environment: ``HF_ENDPOINT``, ``HF_HOME``/``HF_HUB_CACHE``, ``HF_TOKEN`` and ``HF_HUB_OFFLINE`` are read from
``os.environ`` at every call and passed explicitly (``endpoint=``, ``cache_dir=``, ``token=``), because
``huggingface_hub.constants`` freezes them at import time.
"""

from __future__ import annotations

import errno
import functools
import logging
import os
import re
import shutil
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from filelock import Timeout as LockTimeout
from huggingface_hub import (
    HfApi,
    constants,
    get_cached_repo_tree,
    get_hf_file_metadata,
    hf_hub_url,
    snapshot_download,
    try_to_load_from_cache,
)
from huggingface_hub.errors import (
    CachedRepoTreeNotFoundError,
    EntryNotFoundError,
    GatedRepoError,
    HfHubHTTPError,
    LocalEntryNotFoundError,
    OfflineModeIsEnabled,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)
from huggingface_hub.file_download import repo_folder_name
from huggingface_hub.utils import (
    HFValidationError,
    WeakFileLock,
    build_hf_headers,
    filter_repo_objects,
    validate_repo_id,
)
from huggingface_hub.utils.sha import git_hash, sha_fileobj

from . import hub_http
from .errors import Cancelled, ModelLoadError
from .hub_http import STREAM_ERRORS as _STREAM_ERRORS
from .hub_http import TIMEOUTS as _TIMEOUTS

logger = logging.getLogger(__name__)

# What a diffusers pipeline folder needs: model_index.json and the component folders. Root-level weights are
# left out on purpose: repos such as FLUX.1-dev also ship a 24 GB single-file checkpoint (and ae.safetensors)
# at the root that from_pretrained never reads. Pickled weights (*.bin, *.pt, *.pth, *.ckpt) are left out too:
# loading them can run arbitrary code, every catalog model ships safetensors, and fetching both formats would
# download the same weights twice. (fnmatch's "*" crosses "/", so "*/x" means "in any subfolder".)
DIFFUSERS_PATTERNS: tuple[str, ...] = (
    "model_index.json",
    "*/*.json",
    "*/*.txt",
    "*/*.model",
    "*/*.safetensors",
)

MAX_WORKERS = 4  # files fetched in parallel
_HUB = "https://huggingface.co"
_DEFAULT_CHUNK = 10 * 1024 * 1024  # huggingface_hub's DOWNLOAD_CHUNK_SIZE default
_SMOOTH_CHUNK = 1024 * 1024
_COMMIT = re.compile(r"^[0-9a-f]{40}$")
_TRUE = {"1", "ON", "YES", "TRUE"}

ProgressFn = Callable[[int, int, str], None]


# ------------------------------------------------------------------------------------------ errors
class HubError(ModelLoadError):
    """A model could not be fetched from the hub; the message says why and what to do."""


class HubUnreachableError(HubError):
    """The hub cannot be reached (network, proxy, wrong HF_ENDPOINT) and the model is not fully cached."""


class HubStalledError(HubUnreachableError):
    """The hub accepted the connection but stopped answering (STUDIO_HUB_READ_TIMEOUT seconds of silence)."""


class OfflineNotCachedError(HubError):
    """HF_HUB_OFFLINE is set and the model is not (completely) in the cache."""


class UnknownRepoError(HubError):
    """The repo id does not exist on the hub (or is private and no token gives access)."""


class GatedRepoAccessError(HubError):
    """The repo is gated: its licence must be accepted on the hub and HF_TOKEN set."""


class RevisionMissingError(HubError):
    """The branch, tag or commit does not exist in the repo."""


class FilesMissingError(HubError):
    """The catalog entry asks for files the repo does not have."""


class DownloadInterruptedError(HubError):
    """The transfer broke off; what was received is kept and the next call resumes."""


class NotEnoughDiskError(HubError):
    """Not enough free disk space for what is left to download."""


class ChecksumMismatchError(HubError):
    """A downloaded file does not match the hub's checksum; it was deleted."""


# ------------------------------------------------------------------------------------- environment
@dataclass(frozen=True)
class _Env:
    endpoint: str
    cache_dir: Path
    token: str | bool
    offline: bool


def _env() -> _Env:
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
    offline = (env.get("HF_HUB_OFFLINE") or env.get("TRANSFORMERS_OFFLINE") or "").upper() in _TRUE
    return _Env(
        endpoint=(env.get("HF_ENDPOINT") or _HUB).rstrip("/"),
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


def _storage(env: _Env, repo_id: str) -> Path:
    return env.cache_dir / repo_folder_name(repo_id=repo_id, repo_type="model")


def _cached_commit(storage: Path, revision: str | None) -> str | None:
    revision = revision or constants.DEFAULT_REVISION
    if _COMMIT.match(revision):
        return revision
    try:
        return (storage / "refs" / revision).read_text().strip() or None
    except OSError:
        return None


def _file_size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0


def _incomplete_bytes(storage: Path) -> int:
    # both our `<etag>.incomplete` and the client's orphaned `<etag>.<hex>.incomplete` (what scan_cache_dir reports)
    return sum(_file_size(p) for p in (storage / "blobs").glob("*.incomplete"))


def _unlinked_blob_bytes(storage: Path) -> int:
    """Verified blobs no snapshot points to yet (fetched, then the process stopped before linking)."""
    blobs = storage / "blobs"
    if not blobs.is_dir():
        return 0
    linked: set[str] = set()
    for root, _dirs, names in os.walk(storage / "snapshots"):
        for name in names:
            linked.add(os.path.basename(os.path.realpath(os.path.join(root, name))))
    return sum(
        _file_size(p) for p in blobs.iterdir() if p.suffix != ".incomplete" and p.name not in linked and p.is_file()
    )


def _patterns(allow_patterns) -> list[str] | None:
    if not allow_patterns:
        return None  # everything
    return [allow_patterns] if isinstance(allow_patterns, str) else list(allow_patterns)


def _select(paths, allow_patterns) -> list[str]:
    return list(filter_repo_objects(items=list(paths), allow_patterns=_patterns(allow_patterns)))


def _sum(sizes) -> int | None:
    sizes = list(sizes)
    return None if None in sizes else sum(sizes)


def _local_state(env: _Env, repo_id: str, revision: str | None, allow_patterns, remote: dict | None = None):
    """The CacheState from disk alone. ``remote``: {"commit": sha, "files": {path: size}} from the hub, if known."""
    storage = _storage(env, repo_id)
    if not storage.is_dir():
        return CacheState("absent", 0, _sum(remote["files"].values()) if remote else None, None)
    commit = remote["commit"] if remote else _cached_commit(storage, revision)
    files: dict[str, int] | None = None
    if remote:
        files = remote["files"]
    elif commit:
        try:  # the tree listing snapshot_download cached for this commit: the expected files, offline
            tree = get_cached_repo_tree(repo_id, revision=commit, cache_dir=env.cache_dir)
            sizes = {f.path: f.size for f in tree}
            files = {p: sizes[p] for p in _select(sizes, allow_patterns)}
        except (CachedRepoTreeNotFoundError, OSError, ValueError):
            files = None
    snapshot = storage / "snapshots" / commit if commit else None
    candidates: list[str] = []
    if files is not None:
        candidates = list(files)
    elif snapshot is not None and snapshot.is_dir():
        found = [p.relative_to(snapshot).as_posix() for p in snapshot.rglob("*") if p.is_file()]
        candidates = _select(found, allow_patterns)
    present: dict[str, int] = {}
    for rel in candidates:
        cached = try_to_load_from_cache(repo_id, rel, cache_dir=env.cache_dir, revision=commit) if commit else None
        if isinstance(cached, str) and os.path.isfile(cached):
            size = os.path.getsize(cached)
            if files is None or files[rel] is None or files[rel] == size:
                present[rel] = size
    partial = _incomplete_bytes(storage)
    on_disk = sum(present.values()) + partial + _unlinked_blob_bytes(storage)
    expected = _sum(files.values()) if files is not None else None
    if files is not None:
        complete = bool(files) and len(present) == len(files)
    else:  # no listing: trust a snapshot with files and no partial download, as huggingface_hub does offline
        complete = bool(present) and partial == 0
    if complete:
        return CacheState("complete", on_disk, expected, snapshot)
    return CacheState("partial" if on_disk else "absent", on_disk, expected, None)


def cache_state(
    repo_id: str,
    revision: str | None = None,
    allow_patterns=DIFFUSERS_PATTERNS,
    *,
    check_remote: bool = False,
) -> CacheState:
    """Where ``repo_id`` stands in the local HF cache, without network unless ``check_remote``.

    "complete": every file the patterns select is in the snapshot with its expected size (downloads made here are
    also checksummed); "partial": something is on disk (files, a half-fetched blob, even from a killed process)
    but not all; "absent": nothing. ``check_remote=True`` asks the hub for the file list and sizes (so
    ``expected_bytes`` is known even before a first download); it raises the same errors as ``download``.
    """
    env = _env()
    _check_repo_id(repo_id)
    remote = None
    if check_remote and not env.offline:
        try:
            info = _model_info(env, repo_id, revision, _Transfer(repo_id, 0, 0, None, None))
        except Exception as exc:
            raise _translate(exc, env, repo_id, revision) from exc
        sizes = {s.rfilename: s.size for s in info.siblings or []}
        remote = {"commit": info.sha, "files": {p: sizes[p] for p in _select(sizes, allow_patterns)}}
    return _local_state(env, repo_id, revision, allow_patterns, remote)


# -------------------------------------------------------------------------------- progress, cancel
class _Aborted(Exception):
    """Another worker failed: stop this one (its partial file stays for the next call)."""


class _Transfer:
    """Shared byte counter, cancel flag and progress callback of one download() call."""

    def __init__(self, repo_id: str, total: int, done: int, progress: ProgressFn | None, cancel):
        self.repo_id, self.total, self.done = repo_id, total, done
        self._progress, self._cancel = progress, cancel
        self.abort = threading.Event()
        self._lock = threading.Lock()

    @property
    def cancelled(self) -> bool:
        return self._cancel is not None and self._cancel.is_set()

    def check(self) -> None:
        if self.cancelled:
            raise Cancelled(f"Download of {self.repo_id} cancelled; what was received is kept and will be resumed.")
        if self.abort.is_set():
            raise _Aborted()

    def advance(self, n: int, message: str) -> None:
        with self._lock:  # callbacks under the lock: reports from worker threads arrive in order
            self.done += n
            if self._progress is not None:
                self._progress(self.done, self.total, message)

    def report(self, message: str) -> None:
        with self._lock:
            if self._progress is not None:
                self._progress(self.done, self.total, message)


class _Bar:
    """Duck-typed tqdm that huggingface_hub drives (``tqdm_class=``): forwards bytes and raises on cancel.

    Raising from ``update`` is the documented way to stop a download cleanly (hub_notes.md): it propagates out of
    ``snapshot_download``. Subclassed per call with ``_transfer`` and ``_count`` set.
    """

    _transfer: _Transfer
    _count: bool = True  # False for snapshot_download's bars: it feeds two byte bars with the same bytes
    _label: str = ""

    def __init__(self, *args, **kwargs) -> None:
        self.total = kwargs.get("total")
        self.n = kwargs.get("initial") or 0
        self.desc = kwargs.get("desc") or ""
        self.unit = kwargs.get("unit", "it")
        self.disable = True
        self._transfer.check()

    def update(self, n: int | float | None = 1) -> None:
        n = int(n or 0)
        self._transfer.check()
        self.n += n
        if self.unit == "B" and self._count:
            self._transfer.advance(n, f"Downloading {self._label or self.desc}")

    # the rest of the tqdm surface huggingface_hub touches
    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        pass

    def refresh(self, *args, **kwargs) -> None:
        pass

    def set_description(self, desc: str | None = None, refresh: bool = True) -> None:
        self.desc = desc or ""

    set_description_str = set_description

    def set_postfix_str(self, *args, **kwargs) -> None:
        pass

    set_postfix = set_postfix_str

    @property
    def format_dict(self) -> dict:
        return {"n": self.n, "total": self.total, "rate": None}


def _bar_class(transfer: _Transfer, *, count: bool = True, label: str = "") -> type[_Bar]:
    return type("_CallBar", (_Bar,), {"_transfer": transfer, "_count": count, "_label": label})


# ----------------------------------------------------------------------------------------- helpers
def _fmt(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if abs(n) < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} TB"  # pragma: no cover


def _free_bytes(folder: Path) -> int:
    for candidate in (folder, *folder.parents):  # the cache folder may not exist yet
        if candidate.exists():
            return shutil.disk_usage(candidate).free
    return shutil.disk_usage("/").free


def _model_info(env: _Env, repo_id: str, revision: str | None, transfer: _Transfer):
    """Model info with file sizes and checksums: explicit timeouts (the client's default is none), 429/5xx
    retried with backoff, a cancel seen while it waits."""
    api = HfApi(endpoint=env.endpoint, token=env.token)
    lim = hub_http.limits()
    return hub_http.request(
        lambda: api.model_info(repo_id, revision=revision, files_metadata=True, timeout=lim.timeout),
        transfer, f"Asking {env.endpoint} about {repo_id}", lim,
    )


def _matches(path: Path, expected: str) -> bool:
    """sha256 for LFS files (64 hex), git blob sha1 for the others (40 hex) -- what the hub's ETag is."""
    with open(path, "rb") as f:
        if len(expected) == 64:
            return sha_fileobj(f).hex() == expected.lower()
        return git_hash(f.read()) == expected.lower()


@contextmanager
def _blob_lock(lock_path: Path, transfer: _Transfer) -> Iterator[None]:
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
class _Job:
    path: str  # in the repo
    size: int | None
    expected: str  # sha256 (LFS) or git sha1
    etag: str  # blob name in the cache
    have: int = 0  # bytes already on disk when the call started (counted as done)
    url: str = ""
    headers: dict | None = None


def _partial_path(blobs: Path, etag: str) -> Path:
    return blobs / f"{etag}.incomplete"


def _have(blobs: Path, job: _Job) -> int:
    """Bytes of ``job`` already on disk: our partial file or the largest orphan the client left."""
    files = [_partial_path(blobs, job.etag), *blobs.glob(f"{job.etag}.*.incomplete")]
    size = max((_file_size(p) for p in files), default=0)
    return size if job.size is None or size <= job.size else 0


def _adopt_orphans(blobs: Path, etag: str) -> None:
    """Under the blob lock no client is writing ``<etag>.<hex>.incomplete``: keep the longest as our partial."""
    ours = _partial_path(blobs, etag)
    for orphan in sorted(blobs.glob(f"{etag}.*.incomplete"), key=_file_size):
        if _file_size(orphan) > _file_size(ours):
            os.replace(orphan, ours)
        else:
            orphan.unlink(missing_ok=True)


@contextmanager
def _drop_if_empty(part: Path) -> Iterator[None]:
    """On failure or cancel keep a partial file only if it holds something worth resuming."""
    try:
        yield
    except BaseException:
        if _file_size(part) == 0:
            part.unlink(missing_ok=True)
        raise


def _fetch(job: _Job, storage: Path, locks: Path, transfer: _Transfer, endpoint: str) -> None:
    """Fetch one file into ``blobs/<etag>``, resuming ``blobs/<etag>.incomplete``; verify before the rename."""
    blobs = storage / "blobs"
    blob, part = blobs / job.etag, _partial_path(blobs, job.etag)
    lim = hub_http.limits()
    with _blob_lock(locks / f"{job.etag}.lock", transfer):
        if blob.exists():  # another process finished it while we waited for the lock
            transfer.advance((job.size or 0) - job.have, job.path)
            return
        _adopt_orphans(blobs, job.etag)
        for attempt in (1, 2):
            have = _file_size(part)
            if job.size is not None and have > job.size:
                part.unlink()
                have = 0
            if job.size is None or have < job.size:  # a partial as long as the file only needs its checksum
                _get_into(part, have, job, transfer, lim, storage, endpoint)
            if _matches(part, job.expected):
                os.replace(part, blob)  # atomic: a blob under its final name is always a verified one
                return
            counted = _file_size(part)
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


def _get_into(part: Path, have: int, job: _Job, transfer: _Transfer, lim: hub_http.Limits, storage: Path,
              endpoint: str) -> None:
    """Append the rest of ``job``'s body to ``part``; every failure leaves with a message and the bytes kept."""

    def kept() -> str:
        size = f" of {_fmt(job.size)}" if job.size else ""
        return f"{_fmt(_file_size(part))}{size} of the file"

    # unbuffered: every chunk handed to write() is on disk, so even SIGKILL leaves a valid prefix
    with _drop_if_empty(part), open(part, "r+b" if have else "wb", buffering=0) as f:
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


def _translate(exc: BaseException, env: _Env, repo_id: str, revision: str | None) -> BaseException:
    """Map huggingface_hub / network errors to HubError subclasses with messages a user can act on."""
    rev = revision or constants.DEFAULT_REVISION
    if isinstance(exc, (HubError, Cancelled)):
        return exc
    if isinstance(exc, GatedRepoError):  # first: it subclasses RepositoryNotFoundError
        return GatedRepoAccessError(
            f"'{repo_id}' is a gated model: open {env.endpoint}/{repo_id} while logged in, accept its licence, then "
            f"set HF_TOKEN to a read token of that account ({env.endpoint}/settings/tokens)."
            + (" The token currently set has no access to it." if env.token else " No token is set.")
        )
    if isinstance(exc, RepositoryNotFoundError):
        return UnknownRepoError(
            f"Model repository '{repo_id}' was not found on {env.endpoint}. Check the repo id for typos; if it is a "
            "private repository, set HF_TOKEN to a token that can read it."
        )
    if isinstance(exc, RevisionNotFoundError):
        return RevisionMissingError(f"'{repo_id}' has no branch, tag or commit named '{rev}' on {env.endpoint}.")
    if isinstance(exc, EntryNotFoundError) and not isinstance(exc, LocalEntryNotFoundError):
        return FilesMissingError(
            f"A file of the catalog entry is missing from '{repo_id}' ({rev}) on {env.endpoint}: {_first_line(exc)}. "
            "The repository changed or the catalog entry is wrong."
        )
    if isinstance(exc, OfflineModeIsEnabled):
        return OfflineNotCachedError(
            f"'{repo_id}' is not fully in the local cache ({env.cache_dir}) and offline mode is on "
            "(HF_HUB_OFFLINE=1). Unset HF_HUB_OFFLINE to download it."
        )
    if isinstance(exc, hub_http.Stalled) or isinstance(exc, _TIMEOUTS):
        seconds = exc.seconds if isinstance(exc, hub_http.Stalled) else hub_http.limits().read
        return HubStalledError(
            f"The hub at {env.endpoint} stopped answering: no reply within {seconds:g} s "
            "(STUDIO_HUB_READ_TIMEOUT). Try again later; what is already downloaded is kept and will be resumed."
        )
    if isinstance(exc, hub_http.RetriesExhausted):
        return HubError(
            f"The hub at {env.endpoint} answered HTTP {exc.status} for '{repo_id}' on all {exc.tries} tries; it may "
            f"be having trouble. Try again later; what is already downloaded is kept and will be resumed."
        )
    if isinstance(exc, (LocalEntryNotFoundError, *_STREAM_ERRORS)):
        return HubUnreachableError(
            f"Cannot reach the Hugging Face hub at {env.endpoint}; check your connection (or proxy, or HF_ENDPOINT), "
            f"or set HF_HUB_OFFLINE=1 to use only cached models. ({type(exc).__name__}: {_first_line(exc)})"
        )
    if isinstance(exc, HfHubHTTPError):
        status = exc.response.status_code if exc.response is not None else None
        if status in (401, 403):
            return GatedRepoAccessError(
                f"The hub refused access to '{repo_id}' (HTTP {status}). Check that HF_TOKEN is set to a valid "
                "token with read access to this repository."
            )
        return HubError(
            f"The hub at {env.endpoint} answered HTTP {status} for '{repo_id}'; it may be having trouble. Try again "
            f"later. ({_first_line(exc)})"
        )
    if isinstance(exc, OSError) and exc.errno == errno.ENOSPC:
        return NotEnoughDiskError(f"The disk holding {env.cache_dir} is full. Free some space and try again.")
    if isinstance(exc, Exception):
        return HubError(f"Downloading '{repo_id}' failed: {type(exc).__name__}: {_first_line(exc)}")
    return exc


def _check_repo_id(repo_id: str) -> None:
    try:
        validate_repo_id(repo_id)
    except HFValidationError as exc:
        raise UnknownRepoError(f"'{repo_id}' is not a valid repo id: expected 'owner/name'. ({exc})") from exc


def _first_line(exc: BaseException) -> str:
    lines = [line for line in str(exc).splitlines() if line.strip()]
    return lines[0] if lines else type(exc).__name__


# ---------------------------------------------------------------------------------------- download
def download(
    repo_id: str,
    *,
    revision: str | None = None,
    allow_patterns=DIFFUSERS_PATTERNS,
    expected_bytes: int | None = None,
    progress: ProgressFn | None = None,
    cancel: threading.Event | None = None,
) -> Path:
    """Make ``repo_id`` (the files ``allow_patterns`` selects) complete and verified in the HF cache.

    Returns the snapshot folder (``.../snapshots/<commit>``) to hand to ``from_pretrained``. A complete cache
    returns at once, with no request at all. ``progress(done_bytes, total_bytes, message)`` is called from worker
    threads, ``done_bytes`` counting what was already on disk. Setting ``cancel`` ends the call within a fraction of a
    second whatever the link does (``Cancelled``); every byte received stays and the next call resumes it, as it does after a killed process.
    ``expected_bytes`` (the catalog size) is used for the disk check only when the hub does not give file sizes.
    Raises ``Cancelled`` or a ``HubError`` subclass (a ``ModelLoadError``) with a message for the user.
    """
    env = _env()
    _check_repo_id(repo_id)
    patterns = _patterns(allow_patterns)
    transfer = _Transfer(repo_id, expected_bytes or 0, 0, progress, cancel)
    transfer.check()
    local = _local_state(env, repo_id, revision, patterns)
    # complete, and proven so by a cached tree listing: no request at all
    if local.complete and (local.expected_bytes is not None or env.offline):
        transfer.total = transfer.done = local.expected_bytes or local.bytes_on_disk
        transfer.report(f"{repo_id} is already downloaded")
        return local.path  # type: ignore[return-value]
    if env.offline:
        kept = f" ({_fmt(local.bytes_on_disk)} of it are cached)" if local.state == "partial" else ""
        raise OfflineNotCachedError(
            f"'{repo_id}' is not fully in the local cache ({env.cache_dir}){kept} and HF_HUB_OFFLINE=1 is set. "
            "Unset HF_HUB_OFFLINE to download it."
        )
    if constants.DOWNLOAD_CHUNK_SIZE == _DEFAULT_CHUNK:
        # a documented module constant (the client's own GETs read it; hub_http.get_body reports progress in its
        # steps up to 1 MiB): 10 MiB steps make progress jumpy. A value someone else set is left alone.
        constants.DOWNLOAD_CHUNK_SIZE = _SMOOTH_CHUNK
    try:
        return _download_online(env, repo_id, revision, patterns, expected_bytes, transfer, local)
    except (HubError, Cancelled):
        raise
    except Exception as exc:  # every failure leaves with a message for the user
        if local.complete:  # complete on disk, only the hub's listing was missing: as the client, use the cache
            logger.warning("could not check %s on the hub (%s); using the cached copy", repo_id, _first_line(exc))
            return local.path  # type: ignore[return-value]
        error = _translate(exc, env, repo_id, revision)
        if isinstance(error, HubUnreachableError) and local.state == "partial":
            error = type(error)(
                f"{error} ({_fmt(local.bytes_on_disk)} of '{repo_id}' are already downloaded and will be resumed.)"
            )
        raise error from exc


def _download_online(env, repo_id, revision, patterns, expected_bytes, transfer: _Transfer, local) -> Path:
    info = _model_info(env, repo_id, revision, transfer)
    commit = info.sha
    siblings = {s.rfilename: s for s in info.siblings or []}
    selected = _select(siblings, patterns)
    if not selected:
        raise FilesMissingError(
            f"'{repo_id}' ({revision or 'main'}) on {env.endpoint} has no files matching {patterns}: the catalog "
            f"entry does not match the repository (it holds: {', '.join(sorted(siblings)[:8]) or 'nothing'})."
        )
    storage = _storage(env, repo_id)
    blobs = storage / "blobs"
    locks = env.cache_dir / ".locks" / storage.name

    jobs: list[_Job] = []
    present = 0
    for rel in selected:
        s = siblings[rel]
        expected = (s.lfs.sha256 if s.lfs is not None else s.blob_id) or ""
        cached = try_to_load_from_cache(repo_id, rel, cache_dir=env.cache_dir, revision=commit)
        if isinstance(cached, str) and (s.size is None or os.path.getsize(cached) == s.size):
            present += os.path.getsize(cached)
            continue
        if expected and _file_size(blobs / expected) == s.size:  # verified earlier, not linked yet
            present += s.size or 0
            continue
        if any(j.etag == expected for j in jobs):
            continue  # same content under two names: one blob, snapshot_download links both
        jobs.append(_Job(rel, s.size, expected, expected))
        jobs[-1].have = _have(blobs, jobs[-1])

    sizes = [siblings[rel].size for rel in selected]
    total = sum(sizes) if None not in sizes else (expected_bytes or 0)
    have = sum(j.have for j in jobs)
    transfer.total, transfer.done = max(total, present + have), present + have
    # Disk space, before any body byte: what is left to fetch against what the cache's disk has free.
    if None not in sizes:
        remaining = sum((j.size or 0) - j.have for j in jobs)
    else:
        remaining = max(0, (expected_bytes or 0) - present - have)
    free = _free_bytes(env.cache_dir)
    if remaining > free:
        raise NotEnoughDiskError(
            f"Not enough disk space for '{repo_id}': {_fmt(remaining)} still to download, but only {_fmt(free)} "
            f"free on the disk holding {env.cache_dir}. Free some space, or set HF_HOME (or HF_HUB_CACHE) to a "
            "folder on a larger disk."
        )
    transfer.report(f"Checking {repo_id}")

    # HEAD every file before the first GET: a file the listing names but the hub cannot serve fails fast,
    # before gigabytes of the others are fetched. Also gives the CDN location and the ETag the cache uses.
    headers = build_hf_headers(token=env.token)
    lim = hub_http.limits()
    for job in jobs:
        transfer.check()
        url = hf_hub_url(repo_id, job.path, revision=commit, endpoint=env.endpoint)
        try:
            meta = hub_http.request(
                lambda url=url: get_hf_file_metadata(url, token=env.token, timeout=lim.timeout, endpoint=env.endpoint),
                transfer, f"Checking {job.path}", lim,
            )
        except EntryNotFoundError as exc:
            raise FilesMissingError(
                f"'{repo_id}' ({revision or 'main'}) lists {job.path} but {env.endpoint} cannot serve it (404): the "
                "file is missing on the hub. The repository changed or the catalog entry is wrong."
            ) from exc
        job.etag = meta.etag or job.etag
        job.expected = job.expected or job.etag
        job.size = job.size if job.size is not None else meta.size
        job.url = meta.location or url
        job.headers = dict(headers)
        if urlsplit(job.url).netloc != urlsplit(env.endpoint).netloc:
            job.headers.pop("authorization", None)  # signed CDN URL: no token to third parties (as the client)

    if jobs:
        blobs.mkdir(parents=True, exist_ok=True)
        (storage / "snapshots").mkdir(exist_ok=True)  # scan_cache_dir / `hf cache` call a repo without it corrupted
        _run_jobs(jobs, storage, locks, transfer, env.endpoint)

    # Links and trees/<commit>.json, by the client itself; every blob is already there. Asked for the commit the
    # model info named (not the branch): it then makes no repo_info call (which takes no timeout) and links exactly
    # what was fetched and checksummed, even if the branch moved meanwhile; refs/<branch> is written below.
    transfer.check()
    before = {p.name for p in blobs.iterdir()} if blobs.is_dir() else set()
    link = functools.partial(
        snapshot_download,
        repo_id,
        revision=commit,
        cache_dir=env.cache_dir,
        endpoint=env.endpoint,
        token=env.token,
        allow_patterns=patterns,
        etag_timeout=lim.read,
        tqdm_class=_bar_class(transfer, count=False),
    )
    # its tree listing call takes no timeout: the deadline bounds it, and a cancel is seen while it waits
    folder = Path(hub_http.request(link, transfer, f"Linking {repo_id}", lim, deadline=lim.deadline))
    _verify_new_blobs(folder, before, transfer)
    if not _COMMIT.match(revision or ""):  # what the client writes for a branch or tag: refs/<name> -> commit
        ref = storage / "refs" / (revision or constants.DEFAULT_REVISION)
        if not ref.is_file() or ref.read_text().strip() != commit:
            ref.parent.mkdir(parents=True, exist_ok=True)
            ref.write_text(commit)
    state = _local_state(env, repo_id, revision, patterns)
    if not state.complete:  # pragma: no cover - defensive: never hand out a half folder
        raise HubError(f"'{repo_id}' is still incomplete after downloading; run the download again.")
    transfer.done = max(transfer.done, transfer.total)
    transfer.report(f"{repo_id} downloaded")
    return folder


def _run_jobs(jobs: list[_Job], storage: Path, locks: Path, transfer: _Transfer, endpoint: str) -> None:
    jobs = sorted(jobs, key=lambda j: -(j.size or 0))  # big ones first: they set the total time
    errors: list[BaseException] = []
    pool = ThreadPoolExecutor(max_workers=min(MAX_WORKERS, len(jobs)), thread_name_prefix="hub-dl")
    pending = {pool.submit(_fetch, job, storage, locks, transfer, endpoint) for job in jobs}
    try:
        # Poll rather than block: a worker stuck in a read on a stalled link must not hold up a cancel (it sees
        # the flag after its chunk in hand, or ends at its read timeout; its partial file stays either way).
        while pending:
            done, pending = wait(pending, timeout=0.05, return_when=FIRST_COMPLETED)
            for future in done:
                exc = future.exception()
                if exc is not None:
                    transfer.abort.set()  # the others stop at their next chunk; their partial files stay
                    errors.append(exc)
            if transfer.cancelled or errors:
                transfer.abort.set()
                wait(pending, timeout=0.5)  # a grace for workers on a live link to write and close their files
                if transfer.cancelled:
                    transfer.check()  # raises Cancelled
                errors.extend(f.exception() or _Aborted() for f in pending if f.done())
                break
    except BaseException:  # e.g. Ctrl-C here: do not wait for the workers to finish their files
        transfer.abort.set()
        raise
    finally:
        pool.shutdown(wait=False, cancel_futures=True)
    if not errors:
        return
    if any(isinstance(e, Cancelled) for e in errors):
        raise next(e for e in errors if isinstance(e, Cancelled))
    raise next((e for e in errors if not isinstance(e, _Aborted)), errors[0])


def _verify_new_blobs(folder: Path, before: set[str], transfer: _Transfer) -> None:
    """Checksum blobs that snapshot_download fetched itself (not through _fetch), e.g. after the branch moved."""
    for root, _dirs, names in os.walk(folder):
        for name in names:
            link = Path(root) / name
            blob = Path(os.path.realpath(link))
            if blob.name in before or not (len(blob.name) in (40, 64) and re.fullmatch(r"[0-9a-f]+", blob.name)):
                continue
            if not _matches(blob, blob.name):
                blob.unlink(missing_ok=True)
                link.unlink(missing_ok=True)
                raise ChecksumMismatchError(
                    f"{link.relative_to(folder)} from {transfer.repo_id} does not match the hub's checksum; it was "
                    "deleted. Run the download again."
                )
