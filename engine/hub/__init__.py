"""Downloads into the Hugging Face cache: ``download`` (the entry point, ``download.download(repo, ...)``: resume, progress, cancel, checksums),
``http`` (timeouts and retries), ``fetch`` (one file's bytes), ``cache`` (what the cache holds), ``progress``,
``errors`` (one class per thing a user can act on), ``messages`` (library errors mapped to those, in words) and
``verify`` (re-hash a cache another tool wrote)."""

from engine.hub.cache import CacheState, HubEnv
from engine.hub.download import MAX_WORKERS, cache_state, model_info
from engine.hub.errors import (
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
from engine.hub.messages import check_repo_id, translate_error

__all__ = [
    "MAX_WORKERS", "CacheState", "ChecksumMismatchError", "DownloadInterruptedError", "FilesMissingError",
    "GatedRepoAccessError", "HubEnv", "HubError", "HubStalledError", "HubUnreachableError", "NotEnoughDiskError",
    "OfflineNotCachedError", "RevisionMissingError", "UnknownRepoError", "cache_state", "check_repo_id", "model_info", "translate_error",
]
