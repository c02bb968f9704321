"""The one error type of the exporter and importer: a message a user can act on, never a traceback."""

from __future__ import annotations


class WorkflowError(ValueError):
    """A workflow that cannot be exported, validated or imported; ``problems`` lists every finding."""

    def __init__(self, message: str, problems: list[str] | None = None):
        self.problems = list(problems or [message])
        super().__init__(message)
