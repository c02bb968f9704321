"""The errors of ``engine.hub``'s downloads: one class per thing a person at the keyboard can act on."""

from __future__ import annotations

from engine.errors import ModelLoadError


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
