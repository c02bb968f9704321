"""The HTTP side of catalog downloads: timeouts, retries with backoff, prompt cancel, the resumable body GET.

What huggingface_hub 2.4.0 does not give (checked over loopback, ``shared/reference/hub_notes.md`` and issue 22):

- **Timeouts.** Its HTTP client is built with ``timeout=None`` and ``HfApi.model_info`` passes ``timeout=None``
  through: a hub that accepts the connection and never answers hangs the call for ever. Every request made here
  carries an explicit connect and read timeout (:func:`limits`, tunable by environment variable).
- **Retries of transient server errors.** One 500/503 on the model-info call or the body GET fails the whole
  download. Here 429 and 5xx are retried with bounded exponential backoff that honours ``Retry-After``.
- **Cancel while a request waits.** Its byte loop sees a cancel only when a chunk arrives, and it reports a chunk
  *before* writing it, so a cancel raised from the progress bar drops the chunk in hand (at 200 KB/s with 1 MiB
  chunks nothing is ever kept). :func:`get_body` writes every network read first and checks the cancel after;
  :func:`call` runs a blocking request in a helper thread so the caller returns within a fraction of a second of
  a cancel even when the link is stalled or still waiting for its first byte.

That is why the body GET is our own loop over the client's own session (``get_session``: its proxies, headers
hook and connection pool) instead of ``file_download.http_get``.

Environment (read at every call):

=============================== ======= ===================================================================
``STUDIO_HUB_CONNECT_TIMEOUT``  10      seconds to open a connection to the hub
``STUDIO_HUB_READ_TIMEOUT``     30      seconds without a byte before "the hub stopped answering"
``STUDIO_HUB_TRIES``            5       attempts per request for 429/5xx and for a body that keeps breaking off
``STUDIO_HUB_RETRY_WAIT``       1       first backoff in seconds, doubled per retry
``STUDIO_HUB_RETRY_MAX_WAIT``   60      longest single wait, also the cap on a ``Retry-After``
=============================== ======= ===================================================================
"""

from __future__ import annotations

import contextvars
import email.utils
import logging
import math
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, BinaryIO, Protocol, TypeVar

import httpx2
from huggingface_hub import constants
from huggingface_hub.errors import HfHubHTTPError
from huggingface_hub.utils import get_session, hf_raise_for_status

logger = logging.getLogger(__name__)

RETRY_STATUSES = frozenset({429, 500, 502, 503, 504})
_POLL = 0.05  # seconds between two looks at the cancel flag while a request runs
_T = TypeVar("_T")

STREAM_ERRORS: tuple[type[BaseException], ...] = (httpx2.TransportError,)
TIMEOUTS: tuple[type[BaseException], ...] = (httpx2.ReadTimeout, httpx2.WriteTimeout, httpx2.PoolTimeout)
try:  # the client is on httpx2; catch httpx (v1) too in case a transport built on it is installed
    import httpx as _httpx1

    STREAM_ERRORS += (_httpx1.TransportError,)
    TIMEOUTS += (_httpx1.ReadTimeout, _httpx1.WriteTimeout, _httpx1.PoolTimeout)
except ImportError:  # pragma: no cover
    pass


class Progress(Protocol):
    """What a download call hands down: its cancel check and its progress line (``hub_progress.Transfer``)."""

    def check(self) -> None: ...

    def advance(self, n: int, message: str) -> None: ...

    def report(self, message: str) -> None: ...


# ---------------------------------------------------------------------------------------------- limits
@dataclass(frozen=True)
class Limits:
    connect: float
    read: float
    tries: int
    retry_wait: float
    max_wait: float

    @property
    def timeout(self) -> httpx2.Timeout:
        return httpx2.Timeout(self.read, connect=self.connect)

    @property
    def deadline(self) -> float:
        """A backstop for one request whose library call takes no timeout: connect + read, with slack."""
        return 2 * (self.connect + self.read) + 5


def _env_number(name: str, default: float, lo: float) -> float:
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        value = math.nan
    if not math.isfinite(value) or value < lo:
        logger.warning("%s=%r is not a number >= %g; using %g", name, raw, lo, default)
        return default
    return value


def limits() -> Limits:
    """Timeouts and retry policy from the environment, now."""
    return Limits(
        connect=_env_number("STUDIO_HUB_CONNECT_TIMEOUT", 10.0, 0.01),
        read=_env_number("STUDIO_HUB_READ_TIMEOUT", 30.0, 0.01),
        tries=int(_env_number("STUDIO_HUB_TRIES", 5, 1)),
        retry_wait=_env_number("STUDIO_HUB_RETRY_WAIT", 1.0, 0.0),
        max_wait=_env_number("STUDIO_HUB_RETRY_MAX_WAIT", 60.0, 0.0),
    )


# ---------------------------------------------------------------------------------------------- errors
class Stalled(Exception):
    """The hub accepted the request but sent nothing for ``seconds``."""

    def __init__(self, what: str, seconds: float):
        self.what, self.seconds = what, seconds
        super().__init__(f"no answer to {what} within {seconds:g} s")


class RetriesExhausted(Exception):
    """A transient server error (429/5xx) outlasted every retry."""

    def __init__(self, what: str, status: int | None, tries: int, cause: BaseException):
        self.what, self.status, self.tries, self.cause = what, status, tries, cause
        super().__init__(f"{what}: HTTP {status} on all {tries} tries")


class BrokeOff(Exception):
    """The body stream kept breaking off without delivering anything new."""

    def __init__(self, tries: int, cause: BaseException):
        self.tries, self.cause = tries, cause
        super().__init__(f"{type(cause).__name__}: {cause}")


class RangeNotSatisfiable(Exception):
    """HTTP 416 to a resume request: the partial file is as long as (or longer than) the file on the hub."""


# ------------------------------------------------------------------------------------ waiting, retrying
def sleep(seconds: float, progress: Progress) -> None:
    """``time.sleep`` that a cancel interrupts."""
    end = time.monotonic() + seconds
    while True:
        progress.check()
        left = end - time.monotonic()
        if left <= 0:
            return
        time.sleep(min(_POLL, left))


def call(fn: Callable[[], _T], progress: Progress, what: str, deadline: float | None = None) -> _T:
    """Run a blocking hub request in a helper thread and wait for it, watching the cancel flag.

    A cancel (or the ``deadline``, for library calls that cannot be given a timeout) returns at once; the helper
    thread is left to end at its own timeout (daemon: it never holds up the process's exit).
    """
    box: dict[str, Any] = {}
    done = threading.Event()

    def target() -> None:
        try:
            box["value"] = fn()
        except BaseException as exc:  # handed to the waiting thread as is
            box["error"] = exc
        finally:
            done.set()

    context = contextvars.copy_context()  # progress bars find their event through context variables
    threading.Thread(target=context.run, args=(target,), name="hub-call", daemon=True).start()
    start = time.monotonic()
    while not done.wait(_POLL):
        progress.check()
        if deadline is not None and time.monotonic() - start > deadline:
            raise Stalled(what, deadline)
    if "error" in box:
        raise box["error"]
    return box["value"]


def status_of(exc: BaseException) -> int | None:
    response = getattr(exc, "response", None)
    return getattr(response, "status_code", None)


def retry_wait(response: Any, retry: int, lim: Limits) -> float:
    """Seconds before retry number ``retry`` (1 = the first): ``Retry-After`` when the server sent one, else
    exponential backoff; never more than ``lim.max_wait``."""
    header = (getattr(response, "headers", None) or {}).get("Retry-After")
    if header:
        header = header.strip()
        try:
            return max(0.0, min(float(header), lim.max_wait))
        except ValueError:
            try:
                when = email.utils.parsedate_to_datetime(header)
                return max(0.0, min(when.timestamp() - time.time(), lim.max_wait))
            except (TypeError, ValueError, OverflowError):
                pass
    return min(lim.retry_wait * 2 ** (retry - 1), lim.max_wait)


def retrying(attempt: Callable[[], _T], progress: Progress, what: str, lim: Limits) -> _T:
    """``attempt()`` until it returns, the one retry loop of every hub request: 429/5xx are retried with bounded
    backoff honouring ``Retry-After`` and "retrying (2/5)" on the progress line, then :class:`RetriesExhausted`;
    other HTTP errors pass through. A read timeout is not retried: the hub stopped answering (:class:`Stalled`)."""
    for answer in range(1, lim.tries + 1):
        try:
            return attempt()
        except HfHubHTTPError as exc:
            status = status_of(exc)
            if status not in RETRY_STATUSES:
                raise
            if answer == lim.tries:
                raise RetriesExhausted(what, status, lim.tries, exc) from exc
            wait = retry_wait(exc.response, answer, lim)
            progress.report(f"{what}: the hub answered HTTP {status}, retrying ({answer + 1}/{lim.tries}) in "
                            f"{wait:.0f} s")
            sleep(wait, progress)
        except TIMEOUTS as exc:
            raise Stalled(what, lim.read) from exc
    raise AssertionError("unreachable")  # pragma: no cover


def request(fn: Callable[[], _T], progress: Progress, what: str, lim: Limits, deadline: float | None = None) -> _T:
    """``call(fn)`` (a blocking library request, in a helper thread) with the hub's retries (:func:`retrying`)."""
    return retrying(lambda: call(fn, progress, what, deadline), progress, what, lim)


# ------------------------------------------------------------------------------------------ the body GET
def get_body(url: str, headers: dict, f: BinaryIO, start: int, size: int | None, progress: Progress, lim: Limits,
             label: str) -> int:
    """Append the body of ``url`` from byte ``start`` to ``f`` (positioned there); returns the bytes now in ``f``.

    Every network read is written before the cancel flag is looked at, so a cancel keeps all that arrived. A
    broken stream resumes with ``Range`` inside the call; it gives up (:class:`BrokeOff`) after ``lim.tries``
    breaks in a row that brought nothing new. 429/5xx are retried with backoff (:class:`RetriesExhausted`);
    silence for ``lim.read`` seconds raises :class:`Stalled`; 416 raises :class:`RangeNotSatisfiable`; other
    HTTP errors raise the client's own ``HfHubHTTPError`` subclasses.
    """
    body = _Body(url, headers, f, start, size, progress, lim, label)
    return retrying(body.resume, progress, label, lim)


class _Body:
    """One file's body GET, across the breaks and retries of one :func:`get_body` call."""

    def __init__(self, url: str, headers: dict, f: BinaryIO, start: int, size: int | None, progress: Progress,
                 lim: Limits, label: str):
        self.url, self.headers, self.f, self.start, self.size = url, headers, f, start, size
        self.progress, self.lim, self.label = progress, lim, label
        self.have = start
        self.failures = 0  # breaks in a row without a new byte
        self.step = max(64 * 1024, min(constants.DOWNLOAD_CHUNK_SIZE, 1024 * 1024))  # progress granularity

    def resume(self) -> int:
        """GET from what is on disk until the body is complete, resuming after each break of the stream. HTTP
        errors and timeouts go to the caller's retry loop."""
        while True:
            self.progress.check()
            self.got = 0
            try:
                return self._get()
            except TIMEOUTS:
                raise
            except STREAM_ERRORS as exc:
                if isinstance(exc, httpx2.ConnectError) and self.have == self.start and not self.got:
                    raise  # never reached the server: nothing to resume, the caller says "cannot reach"
                self.failures = 0 if self.got else self.failures + 1
                if self.failures >= self.lim.tries:
                    raise BrokeOff(self.failures, exc) from exc
                logger.info("%s broke off at %d bytes (%s); resuming", self.label, self.have, exc)
                sleep(min(self.lim.retry_wait, self.lim.max_wait), self.progress)

    def _get(self) -> int:
        f, progress, label = self.f, self.progress, self.label
        hdrs = {**self.headers, "Accept-Encoding": "identity"}  # the real byte count; no gzip under a Range
        if self.have:
            hdrs["Range"] = f"bytes={self.have}-"
        with get_session().stream("GET", self.url, headers=hdrs, timeout=self.lim.timeout,
                                  follow_redirects=True) as r:
            if r.status_code == 416:
                raise RangeNotSatisfiable()
            if r.status_code >= 400:
                r.read()
                hf_raise_for_status(r)
            if self.have and r.status_code != 206:  # the server ignored the Range: start the file again
                f.seek(0)
                f.truncate()
                progress.advance(-self.have, f"{label}: the server does not resume, downloading it again from the start")
                self.have = 0
            pending = 0
            for chunk in r.iter_bytes():
                if not chunk:
                    continue
                f.write(chunk)  # first: what arrived is on disk before any cancel is raised
                f.flush()  # in the file, not Python's buffer: a killed process keeps it too
                self.have += len(chunk)
                self.got += len(chunk)
                pending += len(chunk)
                if pending >= self.step:
                    progress.advance(pending, f"Downloading {label}")
                    pending = 0
                if self.size is None or self.have < self.size:  # a file complete on disk is kept whole: verified, named
                    progress.check()
            if pending:
                progress.advance(pending, f"Downloading {label}")
        if self.size is not None and self.have < self.size:  # a body that ended early without a client error
            raise httpx2.RemoteProtocolError(f"the body ended at {self.have} of {self.size} bytes")
        return self.have
