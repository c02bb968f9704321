"""What a failed download says: ``huggingface_hub`` and network errors mapped to the ``engine.hub.errors`` classes,
with messages the person at the keyboard can act on (a gated repo's licence page, the token, the proxy, the disk)."""

from __future__ import annotations

import errno

from huggingface_hub import constants
from huggingface_hub.errors import (
    EntryNotFoundError,
    GatedRepoError,
    HfHubHTTPError,
    LocalEntryNotFoundError,
    OfflineModeIsEnabled,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)
from huggingface_hub.utils import HFValidationError, validate_repo_id

from engine.errors import Cancelled
from engine.hub import errors
from engine.hub import http as hub_http
from engine.hub.cache import HubEnv


def translate_error(exc: BaseException, env: HubEnv, repo_id: str, revision: str | None) -> BaseException:
    """Map huggingface_hub / network errors to HubError subclasses with messages a user can act on."""
    rev = revision or constants.DEFAULT_REVISION
    if isinstance(exc, (errors.HubError, Cancelled)):
        return exc
    if isinstance(exc, GatedRepoError):  # first: it subclasses RepositoryNotFoundError
        return errors.GatedRepoAccessError(
            f"'{repo_id}' is a gated model: open {env.endpoint}/{repo_id} while logged in, accept its licence, then "
            f"set HF_TOKEN to a read token of that account ({env.endpoint}/settings/tokens)."
            + (" The token currently set has no access to it." if env.token else " No token is set.")
        )
    if isinstance(exc, RepositoryNotFoundError):
        return errors.UnknownRepoError(
            f"Model repository '{repo_id}' was not found on {env.endpoint}. Check the repo id for typos; if it is a "
            "private repository, set HF_TOKEN to a token that can read it."
        )
    if isinstance(exc, RevisionNotFoundError):
        return errors.RevisionMissingError(f"'{repo_id}' has no branch, tag or commit named '{rev}' on {env.endpoint}.")
    if isinstance(exc, EntryNotFoundError) and not isinstance(exc, LocalEntryNotFoundError):
        return errors.FilesMissingError(
            f"A file of the catalog entry is missing from '{repo_id}' ({rev}) on {env.endpoint}: {first_line(exc)}. "
            "The repository changed or the catalog entry is wrong."
        )
    if isinstance(exc, OfflineModeIsEnabled):
        return errors.OfflineNotCachedError(
            f"'{repo_id}' is not fully in the local cache ({env.cache_dir}) and offline mode is on "
            "(HF_HUB_OFFLINE=1). Unset HF_HUB_OFFLINE to download it."
        )
    if isinstance(exc, hub_http.Stalled) or isinstance(exc, hub_http.TIMEOUTS):
        seconds = exc.seconds if isinstance(exc, hub_http.Stalled) else hub_http.limits().read
        return errors.HubStalledError(
            f"The hub at {env.endpoint} stopped answering: no reply within {seconds:g} s "
            "(STUDIO_HUB_READ_TIMEOUT). Try again later; what is already downloaded is kept and will be resumed."
        )
    if isinstance(exc, hub_http.RetriesExhausted):
        return errors.HubError(
            f"The hub at {env.endpoint} answered HTTP {exc.status} for '{repo_id}' on all {exc.tries} tries; it may "
            f"be having trouble. Try again later; what is already downloaded is kept and will be resumed."
        )
    if isinstance(exc, (LocalEntryNotFoundError, *hub_http.STREAM_ERRORS)):
        return errors.HubUnreachableError(
            f"Cannot reach the Hugging Face hub at {env.endpoint}; check your connection (or proxy, or HF_ENDPOINT), "
            f"or set HF_HUB_OFFLINE=1 to use only cached models. ({type(exc).__name__}: {first_line(exc)})"
        )
    if isinstance(exc, HfHubHTTPError):
        status = exc.response.status_code if exc.response is not None else None
        if status in (401, 403):
            return errors.GatedRepoAccessError(
                f"The hub refused access to '{repo_id}' (HTTP {status}). Check that HF_TOKEN is set to a valid "
                "token with read access to this repository."
            )
        return errors.HubError(
            f"The hub at {env.endpoint} answered HTTP {status} for '{repo_id}'; it may be having trouble. Try again "
            f"later. ({first_line(exc)})"
        )
    if isinstance(exc, OSError) and exc.errno == errno.ENOSPC:
        return errors.NotEnoughDiskError(f"The disk holding {env.cache_dir} is full. Free some space and try again.")
    if isinstance(exc, Exception):
        return errors.HubError(f"Downloading '{repo_id}' failed: {type(exc).__name__}: {first_line(exc)}")
    return exc


def check_repo_id(repo_id: str) -> None:
    try:
        validate_repo_id(repo_id)
    except HFValidationError as exc:
        raise errors.UnknownRepoError(f"'{repo_id}' is not a valid repo id: expected 'owner/name'. ({exc})") from exc


def first_line(exc: BaseException) -> str:
    lines = [line for line in str(exc).splitlines() if line.strip()]
    return lines[0] if lines else type(exc).__name__
