"""One engine replica of the Ray Serve deployment, and the status board the replicas report to.

A replica holds one ``Engine`` on the GPU Ray gave it (``num_gpus=1`` makes Ray set ``CUDA_VISIBLE_DEVICES``,
so the engine's ``cuda`` is that GPU). ``run`` is an async generator: Serve streams what it yields back to
the caller step by step, and when the caller cancels the request Serve cancels this coroutine on the very
replica that runs it, where the ``CancelledError`` sets the engine's cancel event.

The board exists because a Serve handle routes each call to *some* replica, and a replica accepts one
request at a time (``max_ongoing_requests=1``: the rest queue in Serve), so a readout call would wait behind
a run. Each replica pushes its memory snapshot and its current job to the board every second instead, and
the web page's memory panel reads all of them from there, one section per replica.
"""

from __future__ import annotations

import asyncio
import os
import socket
import threading
import time
from pathlib import Path

from engine.serve.wire import error_event, pack_result, png_bytes, receive_inputs

BOARD_NAME = "diffusion-studio-board"
NAMESPACE = "diffusion-studio"
REPORT_EVERY_S = 1.0


class StatusBoard:
    """A small Ray actor (created by ``launch``): the latest report of every replica, and unload requests."""

    def __init__(self):
        self._entries: dict[str, dict] = {}
        self._unload_generation = 0

    def report(self, entry: dict) -> int:
        entry["seen"] = time.time()
        self._entries[entry["replica"]] = entry
        return self._unload_generation

    def entries(self, max_age_s: float = 15.0) -> list[dict]:
        """Replicas heard from lately (a dead one drops out; its replacement reports under a new id)."""
        now = time.time()
        return sorted((e for e in self._entries.values() if now - e["seen"] <= max_age_s),
                      key=lambda e: (e.get("started", 0.0), e["replica"]))

    def request_unload(self) -> int:
        self._unload_generation += 1
        return self._unload_generation


class _Reporter:
    """The engine's progress callable on a replica: every call becomes a ``progress`` event (and, for a
    video run, ``preview`` events), handed to the event loop from the engine's worker thread."""

    def __init__(self, loop: asyncio.AbstractEventLoop, queue: asyncio.Queue):
        self._loop, self._queue = loop, queue

    def emit(self, event: dict) -> None:
        self._loop.call_soon_threadsafe(self._queue.put_nowait, event)

    def __call__(self, fraction: float, message: str) -> None:
        self.emit({"event": "progress", "fraction": float(fraction), "message": str(message)})

    def preview(self, image, step: int) -> None:
        self.emit({"event": "preview", "step": int(step), "png": png_bytes(image)})


class EngineReplica:
    """The Serve deployment's class (``launch`` wraps it with ``serve.deployment``)."""

    def __init__(self, engine_options: dict, board_name: str = BOARD_NAME):
        import ray
        from ray import serve

        from engine.engine import Engine

        context = serve.get_replica_context()
        self.replica = context.replica_id.unique_id
        self.host, self.pid = socket.gethostname(), os.getpid()
        self.started = time.time()
        self.engine = Engine(**engine_options)
        self.outputs_dir = Path(self.engine.outputs_dir)
        self._board = ray.get_actor(board_name, namespace=NAMESPACE)
        self._job: str | None = None
        self._last: dict = {}
        self._unload_seen = 0
        self._stop = threading.Event()
        self._report()
        threading.Thread(target=self._report_loop, name="board-report", daemon=True).start()

    # ------------------------------------------------------------ readouts
    def _entry(self) -> dict:
        return {"replica": self.replica, "host": self.host, "pid": self.pid, "device": self.engine.device,
                "started": self.started, "job": self._job, "last": dict(self._last),
                "snapshot": self.engine.memory.snapshot()}

    def _report(self) -> None:
        import ray

        generation = ray.get(self._board.report.remote(self._entry()), timeout=10)
        if generation > self._unload_seen and not self.engine.busy:
            self._unload_seen = generation
            self.engine.unload_all()

    def _report_loop(self) -> None:
        while not self._stop.wait(REPORT_EVERY_S):
            try:
                self._report()
            except Exception:  # the board is gone (shutdown) or a run took the device meanwhile: next time
                pass

    def whoami(self) -> dict:
        return {"replica": self.replica, "host": self.host, "pid": self.pid}

    # ------------------------------------------------------------ the run
    async def run(self, job_id: str, message: dict):
        """Run one request (``wire.attach_inputs``: the headless CLI's JSON and its uploaded images); yields
        start, progress/preview, then result or error."""
        from engine.requests import request_from_dict

        loop = asyncio.get_running_loop()
        queue: asyncio.Queue = asyncio.Queue()
        reporter = _Reporter(loop, queue)
        cancel = threading.Event()
        self._job = job_id
        yield {"event": "start", "job": job_id, **self.whoami()}

        def work() -> None:
            try:
                data = receive_inputs(message, self.outputs_dir / "inputs")
                request = request_from_dict(data)  # an unknown kind is refused here, with the known ones
                event = pack_result(self.engine.run(request, reporter, cancel), self.outputs_dir)
            except BaseException as exc:  # every outcome becomes an event: the caller re-raises it
                event = error_event(exc)
            reporter.emit(event)

        worker = loop.run_in_executor(None, work)
        outcome = "failed"
        try:
            while True:
                event = await queue.get()
                if event["event"] in ("result", "error"):
                    outcome = "done" if event["event"] == "result" else event.get("type", "failed")
                    yield event
                    break
                yield event
        except (asyncio.CancelledError, GeneratorExit):
            # the caller cancelled (Serve cancels this task on this replica): stop the engine after its
            # current step, and keep the device until it has stopped so the next job starts clean
            cancel.set()
            outcome = "cancelled"
            await asyncio.shield(worker)
            raise
        finally:
            self._last = {"job": job_id, "outcome": outcome, "cancel_seen": cancel.is_set()}
            self._job = None
            try:
                self._report()
            except Exception:
                pass

    def __del__(self):
        self._stop.set()
