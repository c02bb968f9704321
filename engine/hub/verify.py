"""Verify a cached model byte by byte: sha256 / git sha1 of every file against the hub's metadata.

``download`` checksums what it fetches itself, but a cache written by another tool (plain ``snapshot_download``,
``hf download``, diffusers) was only checked for sizes by that tool, and a disk can rot. huggingface_hub has
``HfApi.verify_repo_checksums``, but it only reports; here a cancel and byte progress are needed on multi-GB
models, the offline case must work, and bad files must be named and, on request, fetched again through the same
resumable, checksummed ``download``.

Where the expected checksums come from: online, ``model_info(files_metadata=True)`` for the cached commit (the
LFS sha256, or the git blob sha1 of a small file); offline (or when the hub cannot be reached) the cache's own
record: a blob in ``blobs/`` is named after the hub's ETag, which is that same sha256 or git sha1.
"""

from __future__ import annotations

import hashlib
import os
import re
import threading
from dataclasses import dataclass, field
from pathlib import Path

from huggingface_hub.utils.sha import git_hash

from engine.errors import Cancelled
from engine.hub import cache as hub_cache
from engine.hub import download as hub
from engine.hub import progress as hub_progress

_HEX = re.compile(r"^(?:[0-9a-f]{40}|[0-9a-f]{64})$")
_READ = 1024 * 1024


@dataclass
class VerifyReport:
    repo_id: str
    commit: str | None
    source: str  # "hub" (its metadata) or "cache" (the blob names, offline)
    checked: list[str] = field(default_factory=list)
    bad: list[str] = field(default_factory=list)  # bytes that do not match
    missing: list[str] = field(default_factory=list)  # the hub lists them, the cache lacks them
    unverifiable: list[str] = field(default_factory=list)  # no checksum known for them
    refetched: list[str] = field(default_factory=list)
    checked_bytes: int = 0
    note: str = ""

    @property
    def ok(self) -> bool:
        return not (self.bad or self.missing) or bool(self.refetched)

    def summary(self) -> str:
        against = "the hub's checksums" if self.source == "hub" else "the checksums recorded in the cache (offline)"
        head = f"{self.repo_id}: {len(self.checked)} files ({hub_progress.fmt(self.checked_bytes)}) checked against {against}"
        lines = [head + (f" ({self.note})" if self.note else "") + "."]
        if self.bad:
            lines.append("Bad (do not match): " + ", ".join(self.bad) + ".")
        if self.missing:
            lines.append("Missing from the cache: " + ", ".join(self.missing) + ".")
        if self.unverifiable:
            lines.append("No checksum known for: " + ", ".join(self.unverifiable) + ".")
        if self.refetched:
            lines.append("Fetched again and verified: " + ", ".join(self.refetched) + ".")
        elif self.bad or self.missing:
            lines.append("Run Verify with re-fetch (or `python -m engine verify REPO --repair`) to fetch them again.")
        else:
            lines.append("All files are intact.")
        return "\n".join(lines)


def _hash(path: Path, expected: str, transfer: hub_progress.Transfer) -> bool:
    """sha256 (64 hex) in 1 MiB reads with progress and cancel; git blob sha1 (40 hex) for the small files."""
    if len(expected) == 40:
        with open(path, "rb") as f:
            data = f.read()
        transfer.advance(len(data), f"Verifying {path.name}")
        return git_hash(data) == expected
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_READ):
            digest.update(chunk)
            transfer.advance(len(chunk), f"Verifying {path.name}")
            transfer.check()
    return digest.hexdigest() == expected


def _expected_from_hub(env, repo_id: str, commit: str, patterns, transfer) -> dict[str, str] | None:
    try:
        info = hub.model_info(env, repo_id, commit, transfer)
    except Cancelled:
        raise
    except Exception:  # unreachable, stalled, 5xx after retries: fall back to the cache's own record
        return None
    siblings = {s.rfilename: s for s in info.siblings or []}
    return {
        rel: ((s.lfs.sha256 if s.lfs is not None else s.blob_id) or "").lower()
        for rel, s in siblings.items() if rel in hub_cache.select(siblings, patterns)
    }


def verify(
    repo_id: str,
    revision: str | None = None,
    allow_patterns=hub.DIFFUSERS_PATTERNS,
    *,
    repair: bool = False,
    progress: hub.ProgressFn | None = None,
    cancel: threading.Event | None = None,
) -> VerifyReport:
    """Re-hash every cached file of ``repo_id`` that ``allow_patterns`` selects; with ``repair``, delete the bad
    ones and fetch what is bad or missing again (resumable and checksummed, as ``download``).

    Raises ``Cancelled``, or a ``HubError`` when nothing of the repo is cached (or a repair download fails).
    """
    env = hub_cache.read_env()
    hub.check_repo_id(repo_id)
    patterns = hub_cache.patterns_of(allow_patterns)
    storage = hub_cache.storage_of(env, repo_id)
    commit = hub_cache.cached_commit(storage, revision)
    snapshot = storage / "snapshots" / commit if commit else None
    if snapshot is None or not snapshot.is_dir():
        raise hub.HubError(f"'{repo_id}' is not in the cache ({env.cache_dir}): nothing to verify. Download it first.")
    present = hub_cache.select(
        [p.relative_to(snapshot).as_posix() for p in sorted(snapshot.rglob("*")) if p.is_file()], patterns
    )
    total = sum(os.path.getsize(snapshot / rel) for rel in present)
    transfer = hub_progress.Transfer(repo_id, total, 0, progress, cancel)
    transfer.report(f"Verifying {repo_id}")

    expected = None if env.offline else _expected_from_hub(env, repo_id, commit, patterns, transfer)
    report = VerifyReport(repo_id, commit, "hub" if expected is not None else "cache")
    if expected is None and not env.offline:
        report.note = f"the hub at {env.endpoint} could not be asked"
    for rel in present:
        path = snapshot / rel
        blob = Path(os.path.realpath(path))
        want = expected.get(rel) if expected is not None else (blob.name if _HEX.match(blob.name) else None)
        if not want:
            report.unverifiable.append(rel)
            transfer.advance(os.path.getsize(path), f"Verifying {rel}")
            continue
        report.checked.append(rel)
        report.checked_bytes += os.path.getsize(path)
        if not _hash(path, want, transfer):
            report.bad.append(rel)
    if expected is not None:
        report.missing = sorted(set(expected) - set(present))

    if repair and (report.bad or report.missing):
        for rel in report.bad:
            link = snapshot / rel
            Path(os.path.realpath(link)).unlink(missing_ok=True)  # the bad blob, shared by every link to it
            link.unlink(missing_ok=True)
        hub.download(repo_id, revision=revision, allow_patterns=allow_patterns, progress=progress, cancel=cancel)
        report.refetched = sorted(report.bad + report.missing)
    return report
