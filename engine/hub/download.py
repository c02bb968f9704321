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
  ``engine/hub/http.py`` (why the body GET is our own loop and not ``file_download.http_get`` is written there).

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

import functools
import logging
import os
import re
import shutil
import threading
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from pathlib import Path
from urllib.parse import urlsplit

from huggingface_hub import (
    HfApi,
    constants,
    get_hf_file_metadata,
    hf_hub_url,
    snapshot_download,
    try_to_load_from_cache,
)
from huggingface_hub.errors import EntryNotFoundError
from huggingface_hub.utils import build_hf_headers

from engine.errors import Cancelled
from engine.hub import http as hub_http
from engine.hub.cache import COMMIT as _COMMIT
from engine.hub.cache import CacheState, HubEnv
from engine.hub.cache import file_size as _file_size
from engine.hub.cache import local_state as _local_state
from engine.hub.cache import patterns_of as _patterns
from engine.hub.cache import read_env as _env
from engine.hub.cache import select as _select
from engine.hub.cache import storage_of as _storage
from engine.hub.errors import (  # noqa: F401  (re-exported: callers catch them as hub.*)
    ChecksumMismatchError,
    DownloadInterruptedError,
    FilesMissingError,
    GatedRepoAccessError,
    HubError,
    HubStalledError,
    HubUnreachableError,
    NotEnoughDiskError,
    OfflineNotCachedError,
    RevisionMissingError,
    UnknownRepoError,
)
from engine.hub.fetch import Job as _Job
from engine.hub.fetch import fetch as _fetch
from engine.hub.fetch import have_bytes as _have
from engine.hub.fetch import matches as _matches
from engine.hub.messages import check_repo_id, first_line, translate_error  # noqa: F401  (also hub.check_repo_id)
from engine.hub.progress import Aborted as _Aborted
from engine.hub.progress import ProgressFn
from engine.hub.progress import Transfer as _Transfer
from engine.hub.progress import bar_class as _bar_class
from engine.hub.progress import fmt as _fmt

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
_DEFAULT_CHUNK = 10 * 1024 * 1024  # huggingface_hub's DOWNLOAD_CHUNK_SIZE default
_SMOOTH_CHUNK = 1024 * 1024



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
    check_repo_id(repo_id)
    remote = None
    if check_remote and not env.offline:
        try:
            info = model_info(env, repo_id, revision, _Transfer(repo_id, 0, 0, None, None))
        except Exception as exc:
            raise translate_error(exc, env, repo_id, revision) from exc
        sizes = {s.rfilename: s.size for s in info.siblings or []}
        remote = {"commit": info.sha, "files": {p: sizes[p] for p in _select(sizes, allow_patterns)}}
    return _local_state(env, repo_id, revision, allow_patterns, remote)


# ----------------------------------------------------------------------------------------- helpers
def _free_bytes(folder: Path) -> int:
    for candidate in (folder, *folder.parents):  # the cache folder may not exist yet
        if candidate.exists():
            return shutil.disk_usage(candidate).free
    return shutil.disk_usage("/").free


def model_info(env: HubEnv, repo_id: str, revision: str | None, transfer: _Transfer):
    """Model info with file sizes and checksums: explicit timeouts (the client's default is none), 429/5xx
    retried with backoff, a cancel seen while it waits."""
    api = HfApi(endpoint=env.endpoint, token=env.token)
    lim = hub_http.limits()
    return hub_http.request(
        lambda: api.model_info(repo_id, revision=revision, files_metadata=True, timeout=lim.timeout),
        transfer, f"Asking {env.endpoint} about {repo_id}", lim,
    )








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
    check_repo_id(repo_id)
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
            logger.warning("could not check %s on the hub (%s); using the cached copy", repo_id, first_line(exc))
            return local.path  # type: ignore[return-value]
        error = translate_error(exc, env, repo_id, revision)
        if isinstance(error, HubUnreachableError) and local.state == "partial":
            error = type(error)(
                f"{error} ({_fmt(local.bytes_on_disk)} of '{repo_id}' are already downloaded and will be resumed.)"
            )
        raise error from exc


def _download_online(env, repo_id, revision, patterns, expected_bytes, transfer: _Transfer, local) -> Path:
    info = model_info(env, repo_id, revision, transfer)
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
            from engine.files.atomic import write_text

            write_text(ref, commit, what="model cache", flag="HF_HOME")  # a cut ref would point at no commit
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
