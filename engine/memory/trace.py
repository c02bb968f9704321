"""Per-block trace of a streamed run: copy time, compute time, and how long compute waited for a copy.

On CUDA the times come from CUDA events on the two streams (the GPU's own timeline; read once per step after a
synchronize, so tracing costs a sync per step and is an option); on the CPU from the wall clock. This is how a
user picks the number of resident blocks, and how the bench proves that copies hide behind compute.
"""

from __future__ import annotations

import csv
import io
import time
from dataclasses import dataclass
from pathlib import Path

import torch

FIELDS = ("step", "call", "component", "block", "group", "resident", "bytes", "copy_ms", "compute_ms", "wait_ms")


@dataclass
class _Pending:
    row: dict
    copy: tuple | None = None  # (start, end) events or perf_counter floats
    compute: tuple | None = None
    wait: tuple | None = None


class SwapTrace:
    def __init__(self, device: str):
        self.cuda = torch.device(device).type == "cuda"
        self.rows: list[dict] = []
        self._pending: list[_Pending] = []
        self._open: dict[tuple[str, int], _Pending] = {}
        self._copies: dict[tuple[str, int], tuple] = {}
        self.step = 0
        self._calls: dict[str, int] = {}

    # ------------------------------------------------------------ marks
    def _mark(self, stream=None):
        if self.cuda:
            event = torch.cuda.Event(enable_timing=True)
            event.record(stream) if stream is not None else event.record()
            return event
        return time.perf_counter()

    def begin_call(self, component: str) -> None:
        self._calls[component] = self._calls.get(component, 0) + 1

    def copy_started(self, component: str, group: int, stream=None):
        return self._mark(stream)

    def copy_done(self, component: str, group: int, started, stream=None) -> None:
        self._copies[(component, group)] = (started, self._mark(stream))

    def block_start(self, component: str, block: int, group: int, resident: bool, nbytes: int) -> None:
        row = {"step": self.step, "call": self._calls.get(component, 0), "component": component, "block": block,
               "group": group, "resident": int(resident), "bytes": nbytes}
        pending = _Pending(row, copy=self._copies.pop((component, group), None))
        self._open[(component, block)] = pending

    def wait_started(self, component: str, block: int):
        return self._mark()

    def wait_done(self, component: str, block: int, started) -> None:
        pending = self._open.get((component, block))
        if pending is not None:
            pending.wait = (started, self._mark())

    def compute_started(self, component: str, block: int) -> None:
        pending = self._open.get((component, block))
        if pending is not None:
            pending.compute = (self._mark(), None)

    def block_end(self, component: str, block: int) -> None:
        pending = self._open.pop((component, block), None)
        if pending is None or pending.compute is None:
            return
        pending.compute = (pending.compute[0], self._mark())
        self._pending.append(pending)

    def end_step(self, step: int | None = None) -> None:
        """Resolve this step's timings (one synchronize on CUDA) and start the next step."""
        if self.cuda and self._pending:
            torch.cuda.synchronize()
        for p in self._pending:
            row = dict(p.row)
            row["copy_ms"] = self._ms(p.copy)
            row["compute_ms"] = self._ms(p.compute)
            # on the CPU a copy runs inline on the one thread: compute waits for all of it
            row["wait_ms"] = self._ms(p.wait) if (self.cuda or p.wait) else row["copy_ms"]
            self.rows.append(row)
        self._pending.clear()
        self.step = (step + 1) if step is not None else self.step + 1

    def _ms(self, span) -> float:
        if not span or span[1] is None:
            return 0.0
        start, end = span
        if self.cuda:
            return float(start.elapsed_time(end))
        return (end - start) * 1000.0

    # ------------------------------------------------------------ output
    def write_csv(self, path: str | Path) -> Path:
        self.end_step()
        from engine.files.atomic import write_text  # whole or absent, as every file the app writes

        text = io.StringIO(newline="")
        writer = csv.DictWriter(text, fieldnames=FIELDS)
        writer.writeheader()
        for row in self.rows:
            writer.writerow({k: (round(v, 4) if isinstance(v, float) else v) for k, v in row.items()})
        return write_text(Path(path), text.getvalue())

    def summary(self) -> dict:
        copy = sum(r["copy_ms"] for r in self.rows)
        wait = sum(r["wait_ms"] for r in self.rows)
        compute = sum(r["compute_ms"] for r in self.rows)
        hidden = 1.0 - wait / copy if copy > 0 else 1.0
        return {"copy_ms": copy, "compute_ms": compute, "wait_ms": wait, "hidden_fraction": max(0.0, hidden),
                "rows": len(self.rows)}
