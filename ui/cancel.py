"""Cancel for the runs of one browser session: a ``threading.Event`` per session's current run."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator

import gradio as gr

from engine import Cancelled

from .pending import CANCELLED_BEFORE_START, PENDING


class CancelSlots:
    """One ``threading.Event`` per browser session's current run.

    Gradio's ``cancels=`` stops only the Python generator; the engine keeps computing until it sees
    its ``cancel`` event between two steps. So the run registers an event here, and the cancel
    button sets the event of its own session (never another user's run).
    """

    def __init__(self) -> None:
        self._events: dict[str, threading.Event] = {}
        self._lock = threading.Lock()

    @staticmethod
    def key(request: gr.Request | None) -> str:
        return (request.session_hash if request is not None else None) or "local"

    def start(self, request: gr.Request | None) -> threading.Event:
        event = PENDING.claim(self) or threading.Event()  # the one registered when the run was queued
        if event.is_set():  # cancelled while it left the queue
            raise Cancelled(CANCELLED_BEFORE_START)
        with self._lock:
            self._events[self.key(request)] = event
        return event

    def finish(self, request: gr.Request | None, event: threading.Event) -> None:
        with self._lock:
            if self._events.get(self.key(request)) is event:
                del self._events[self.key(request)]

    @contextlib.contextmanager
    def held(self, request: gr.Request | None) -> Iterator[threading.Event]:
        """``with slots.held(request) as cancel:``: the session's event, registered while the block runs (a
        generator's block included: closing the generator releases it)."""
        event = self.start(request)
        try:
            yield event
        finally:
            self.finish(request, event)

    def cancel(self, request: gr.Request | None) -> bool:
        with self._lock:
            event = self._events.get(self.key(request))
        if event is None:
            return False
        event.set()
        return True
