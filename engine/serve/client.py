"""The web front end's engine when the runs go to Ray Serve replicas.

``ServeEngine`` looks like an ``Engine`` to the UI: ``run`` sends the request's JSON to the deployment and
streams progress back, ``memory.snapshot()`` returns one section per replica, and everything that never
touches a device (plans from configs and headers, default memory settings, the models folder) is answered
by a local ``Engine`` that never loads a model.
"""

from __future__ import annotations

import asyncio
import threading
import uuid
from pathlib import Path

from engine.errors import Cancelled, EngineError, InputError
from engine.requests import Request
from engine.result import Result
from engine.serve.wire import attach_inputs, describe, raise_error, unpack_result

_DIED = ("ActorDiedError", "RayActorError", "ActorUnavailableError", "ActorUnschedulableError", "WorkerCrashedError",
         "NodeDiedError", "OwnerDiedError", "ObjectLostError")
_CANCELLED = ("RequestCancelledError", "TaskCancelledError", "CancelledError")


class ReplicaMemory:
    """``engine.memory`` for the UI: the board's latest report of every replica."""

    def __init__(self, board, label: str):
        self._board, self.label = board, label

    def entries(self) -> list[dict]:
        import ray

        try:
            return ray.get(self._board.entries.remote(), timeout=5)
        except Exception:  # the cluster is going away: an empty panel, never a broken page
            return []

    @property
    def budget_bytes(self) -> int | None:
        """What a model may use on a replica: the smallest replica's compute device ("fits my GPU")."""
        totals = [d.get("total") or 0 for e in self.entries() for d in e["snapshot"].get("devices", [])
                  if d.get("device") == e["snapshot"].get("compute_device")]
        return min(totals) if totals else None

    @property
    def compute_device(self) -> str:
        return self.label

    def snapshot(self) -> dict:
        entries = self.entries()
        replicas = [{"label": _label(i, e), "snapshot": e["snapshot"], "job": e.get("job")}
                    for i, e in enumerate(entries)]
        first = entries[0]["snapshot"] if entries else {}
        return {**first, "compute_device": self.label, "replicas": replicas}


def _label(index: int, entry: dict) -> str:
    busy = " · running a job" if entry.get("job") else " · idle"
    return f"replica {index + 1} ({entry['replica']}, {entry['host']}, {entry['device']}){busy}"


class ServeEngine:
    """Runs requests on the Ray Serve deployment; the rest is the local engine's (see the module doc)."""

    def __init__(self, handle, board, local, replicas: int, device_label: str, note: str = ""):
        self._handle, self._board, self._local = handle, board, local
        self.replicas = replicas
        self.concurrent_runs = replicas  # the page lets this many runs go at once; Serve queues the rest
        self.device = device_label
        self.note = note
        self.memory = ReplicaMemory(board, device_label)

    def __getattr__(self, name):  # demo, models_dir, outputs_dir, plan, default_swap, store, ...
        return getattr(self._local, name)

    @property
    def outputs_dir(self) -> Path:
        return Path(self._local.outputs_dir)

    def prepare(self, request: Request, progress=None, cancel=None):
        """Validation only: the replica that takes the job fetches what it needs itself (it may be on another
        host, with its own disk)."""
        if not isinstance(request, Request):
            raise InputError("request", f"expected a request object, got {type(request).__name__}")
        request.validate()

    def run(self, request: Request, progress=None, cancel: threading.Event | None = None) -> Result:
        self.prepare(request)
        return self.run_json(request.to_dict(), progress, cancel, request=request)

    def run_json(self, data: dict, progress=None, cancel: threading.Event | None = None, on_start=None,
                 request: Request | None = None) -> Result:
        """Send one request JSON (as ``python -m engine run`` reads it) to a replica and wait for its result.
        ``on_start(event)`` hears which replica took the job (its id, host and pid) as soon as it starts."""
        job = uuid.uuid4().hex[:12]
        response = self._handle.options(stream=True).run.remote(job, attach_inputs(data))
        done = threading.Event()
        started: dict = {}
        if cancel is not None:
            def forward_cancel() -> None:
                while not done.is_set():
                    if cancel.wait(0.1):
                        response.cancel()  # Serve cancels the coroutine on the replica running the job
                        return

            threading.Thread(target=forward_cancel, name=f"cancel-{job}", daemon=True).start()
        try:
            for event in response:
                kind = event.get("event")
                if kind == "start":
                    started.update(event)
                    if on_start is not None:
                        on_start(event)
                elif kind == "progress" and progress is not None:
                    progress(event["fraction"], event["message"])
                elif kind == "preview":
                    _forward_preview(progress, event)
                elif kind == "error":
                    raise_error(event)
                elif kind == "result":
                    result = unpack_result(event, self.outputs_dir, request)
                    result.metadata.setdefault("replica", {k: started.get(k) for k in ("replica", "host", "pid")})
                    return result
            raise EngineError(f"{describe(started)} ended the job without a result")
        except EngineError:
            raise
        except (Exception, asyncio.CancelledError) as exc:  # asyncio's: a job cancelled while still queued
            name = type(exc).__name__
            if cancel is not None and cancel.is_set() or name in _CANCELLED:
                raise Cancelled() from None
            if name in _DIED or "died" in str(exc).lower():
                who = describe(started) if started else "the replica picked for this job"
                raise EngineError(f"{who} died while running this job ({name}). Ray Serve is starting a new "
                                  "replica and the other replicas go on: run it again.") from None
            raise EngineError(f"the Ray Serve call failed: {name}: {(str(exc).splitlines() or [''])[0]}") from None
        finally:
            done.set()

    def unload_all(self) -> int:
        """Ask every replica to drop its models (each does when idle); returns the modules they hold now."""
        import ray

        count = sum(len(e["snapshot"].get("modules", [])) for e in self.memory.entries())
        ray.get(self._board.request_unload.remote(), timeout=5)
        return count


def _forward_preview(progress, event: dict) -> None:
    sink = getattr(progress, "preview", None)
    if sink is None:
        return
    import io

    from PIL import Image

    image = Image.open(io.BytesIO(event["png"]))
    image.load()
    sink(image, event.get("step", 0))
