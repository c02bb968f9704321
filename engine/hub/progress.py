"""Progress and cancel of one download call: the shared byte counter, and the duck-typed tqdm that
huggingface_hub drives."""

from __future__ import annotations

import threading
from collections.abc import Callable

from engine.errors import Cancelled

ProgressFn = Callable[[int, int, str], None]


class Aborted(Exception):
    """Another worker failed: stop this one (its partial file stays for the next call)."""


class Transfer:
    """Shared byte counter, cancel flag and progress callback of one download() call."""

    def __init__(self, repo_id: str, total: int, done: int, progress: ProgressFn | None, cancel):
        self.repo_id, self.total, self.done = repo_id, total, done
        self._progress, self._cancel = progress, cancel
        self.abort = threading.Event()
        self._lock = threading.Lock()

    @property
    def cancelled(self) -> bool:
        return self._cancel is not None and self._cancel.is_set()

    def check(self) -> None:
        if self.cancelled:
            raise Cancelled(f"Download of {self.repo_id} cancelled; what was received is kept and will be resumed.")
        if self.abort.is_set():
            raise Aborted()

    def advance(self, n: int, message: str) -> None:
        with self._lock:  # callbacks under the lock: reports from worker threads arrive in order
            self.done += n
            if self._progress is not None:
                self._progress(self.done, self.total, message)

    def report(self, message: str) -> None:
        with self._lock:
            if self._progress is not None:
                self._progress(self.done, self.total, message)


class ProgressBar:
    """Duck-typed tqdm that huggingface_hub drives (``tqdm_class=``): forwards bytes and raises on cancel.

    Raising from ``update`` is the documented way to stop a download cleanly (hub_notes.md): it propagates out of
    ``snapshot_download``. Subclassed per call with ``_transfer`` and ``_count`` set.
    """

    _transfer: Transfer
    _count: bool = True  # False for snapshot_download's bars: it feeds two byte bars with the same bytes
    _label: str = ""

    def __init__(self, *args, **kwargs) -> None:
        self.total = kwargs.get("total")
        self.n = kwargs.get("initial") or 0
        self.desc = kwargs.get("desc") or ""
        self.unit = kwargs.get("unit", "it")
        self.disable = True
        self._transfer.check()

    def update(self, n: int | float | None = 1) -> None:
        n = int(n or 0)
        self._transfer.check()
        self.n += n
        if self.unit == "B" and self._count:
            self._transfer.advance(n, f"Downloading {self._label or self.desc}")

    # the rest of the tqdm surface huggingface_hub touches
    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        pass

    def refresh(self, *args, **kwargs) -> None:
        pass

    def set_description(self, desc: str | None = None, refresh: bool = True) -> None:
        self.desc = desc or ""

    set_description_str = set_description

    def set_postfix_str(self, *args, **kwargs) -> None:
        pass

    set_postfix = set_postfix_str

    @property
    def format_dict(self) -> dict:
        return {"n": self.n, "total": self.total, "rate": None}


def bar_class(transfer: Transfer, *, count: bool = True, label: str = "") -> type[ProgressBar]:
    return type("CallBar", (ProgressBar,), {"_transfer": transfer, "_count": count, "_label": label})



def fmt(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if abs(n) < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} TB"  # pragma: no cover
