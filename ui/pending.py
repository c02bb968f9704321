"""Runs that wait in the queue, so that Cancel can end one before it starts (issue 30, point 6).

A run's cancel slot (``CancelSlots``) exists only once its handler starts; a run still waiting behind another
user's job had nothing to cancel and later ran to the end. So every queued event is registered here the moment
Gradio accepts it (a wrapper around ``Queue.push``), under its session and the cancel slots of its tab; the tab's
Cancel button then takes it out of the queue and answers its caller "Cancelled before it started". A run that
left the queue but has not reached its handler yet gets its cancel event set instead, which the handler picks up
(``claim``) and the engine sees before its first step.

Gradio has no public hook for "an event was queued" nor for dropping one event of a session (its own ``/cancel``
and ``cancels=`` act on a whole session or the running iterator), hence the wrapper; it uses the queue's own lock.
"""

from __future__ import annotations

import asyncio
import threading
from dataclasses import dataclass, field
from typing import Any

CANCELLED_BEFORE_START = "Cancelled before it started."


@dataclass
class Pending:
    session: str
    slots: Any  # the CancelSlots of the tab that queued it
    event: Any  # gradio.queueing.Event
    queue: Any  # the gradio Queue it waits in (one per app: tests serve several apps in one process)
    loop: asyncio.AbstractEventLoop
    cancel: threading.Event = field(default_factory=threading.Event)


class PendingRuns:
    """Queued events per Gradio event id, with the loop and queue they live on."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._runs: dict[str, Pending] = {}
        self._slots_of_fn: dict[int, tuple[Any, Any]] = {}  # id(BlockFunction) -> (it, the CancelSlots of its tab)

    # ------------------------------------------------------------ wiring
    def install(self, app, pool: str) -> None:
        """Find each Cancel button's run events (they share its status line) and watch ``app``'s queue, now and
        after any later ``app.queue(...)`` call (app.py calls it again, which makes a new queue)."""
        cancels = [fn for fn in app.fns.values() if getattr(fn.fn, "_cancel_slots", None) is not None]
        for cancel in cancels:
            status = {block._id for block in cancel.outputs}
            for fn in app.fns.values():
                if fn.concurrency_id == pool and status & {block._id for block in fn.outputs}:
                    self._slots_of_fn[id(fn)] = (fn, cancel.fn._cancel_slots)
        if getattr(app, "_pending_runs", None) is self:
            return
        app._pending_runs = self
        original = app.queue

        def queue(*args, **kwargs):
            result = original(*args, **kwargs)
            self._watch(app._queue)
            return result

        app.queue = queue
        if getattr(app, "_queue", None) is not None:
            self._watch(app._queue)

    def _watch(self, queue) -> None:
        if getattr(queue, "_pending_watched", False):
            return
        push = queue.push

        async def watched_push(body, request, username):
            ok, event_id, state = await push(body, request, username)
            event = queue.event_ids_to_events.get(event_id) if ok and state == "success" else None
            found = self._slots_of_fn.get(id(event.fn)) if event is not None else None
            if found is not None and found[0] is event.fn:
                self._add(Pending(event.session_hash, found[1], event, queue, asyncio.get_running_loop()))
            return ok, event_id, state

        queue.push = watched_push
        queue._pending_watched = True

    def _add(self, run: Pending) -> None:
        with self._lock:
            gone = [i for i, r in self._runs.items() if i not in r.queue.event_ids_to_events]
            for event_id in gone:  # finished or dropped without reaching a handler (e.g. a refused input)
                self._runs.pop(event_id, None)
            self._runs[run.event._id] = run

    # ------------------------------------------------------------ the handler and the Cancel button
    def claim(self, slots) -> threading.Event | None:
        """The cancel event registered for the run now starting (in its handler's thread), or None."""
        from gradio.context import LocalContext

        event_id = LocalContext.event_id.get(None)
        with self._lock:
            run = self._runs.pop(event_id, None) if event_id else None
        return run.cancel if run is not None and run.slots is slots else None

    def cancel(self, slots, session: str | None) -> bool:
        """End this session's queued runs of ``slots``' tab: out of the queue, their callers told. True if any."""
        with self._lock:
            runs = [r for r in self._runs.values() if r.slots is slots and r.session == session]
        if not runs:
            return False
        for run in runs:
            run.cancel.set()  # if it just left the queue, the handler sees this before the first step
            future = asyncio.run_coroutine_threadsafe(self._drop(run.queue, [run]), run.loop)
            try:
                future.result(timeout=10)
            except (TimeoutError, RuntimeError):
                pass  # its cancel event is set: the run ends at its first check
        return True

    async def _drop(self, queue, runs: list[Pending]) -> None:
        from gradio.server_messages import ProcessCompletedMessage

        dropped = []
        async with queue.delete_lock:
            for run in runs:
                waiting = queue.event_queue_per_concurrency_id.get(run.event.concurrency_id)
                if waiting is not None and run.event in waiting.queue:
                    waiting.queue.remove(run.event)
                    queue.event_ids_to_events.pop(run.event._id, None)
                    dropped.append(run)
        with self._lock:
            for run in dropped:
                self._runs.pop(run.event._id, None)
        for run in dropped:
            output = {"error": CANCELLED_BEFORE_START, "title": "Cancelled", "visible": True, "duration": 10}
            queue.send_message(run.event, ProcessCompletedMessage(output=output, success=False, title="Cancelled"))


PENDING = PendingRuns()  # one per process: event ids are unique across apps
