"""Errors the engine raises. Every message is written for the person at the keyboard."""

from __future__ import annotations


class EngineError(Exception):
    """A run could not be done; the message says why in plain words."""


class InputError(EngineError, ValueError):
    """A request field is out of range or unusable.

    ``field`` names the request field (dotted for nested parts, e.g. ``model.path``)
    so that a UI can show the message next to the widget that holds it.
    """

    def __init__(self, field: str, message: str):
        self.field = field
        self.message = message
        super().__init__(f"{field}: {message}")


class ModelLoadError(EngineError):
    """A model could not be found, downloaded, trusted or loaded."""


class OutOfBudgetError(EngineError):
    """A module does not fit in the memory budget even after evicting everything else."""


class Cancelled(EngineError):
    """The user cancelled the run."""

    def __init__(self, message: str = "Cancelled by the user."):
        super().__init__(message)
