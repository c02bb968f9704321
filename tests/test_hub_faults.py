"""Downloads under faults (issue 22), the real client against the local fake hub, every test bounded in time.

A hub that accepts and never answers, a body that stalls, a slow link, scripted 5xx/429 then success, a 416 on
resume: the call ends within a bounded time with a message, a cancel ends it within about a second, nothing
received is lost, and progress never goes back without saying why.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

import huggingface_hub.constants as hf_constants
import pytest

from engine.errors import Cancelled
from engine.hub import download as hubmod
from engine.hub.download import DownloadInterruptedError, HubError, HubStalledError, cache_state, download
from tests.conftest import scaled
from tests.fakehub import FakeHub
from tests.hub_fixtures import REPO, WEIGHTS, Recorder, assert_files, storage_of

pytest_plugins = ("tests.hub_fixtures",)  # the fakehub and model_folder fixtures

pytestmark = pytest.mark.timeout(60)


def _partial_bytes(tmp_path: Path) -> int:
    blobs = storage_of(tmp_path) / "blobs"
    sizes = []
    for p in blobs.glob("*.incomplete") if blobs.is_dir() else ():
        try:
            sizes.append(p.stat().st_size)
        except FileNotFoundError:  # renamed between glob and stat (an orphan adopted): the watcher must not die
            pass
    return max(sizes, default=0)


def _cancel_when(rec: Recorder, condition, poll: float = 0.01) -> dict:
    """Set ``rec.cancel`` from a thread once ``condition()`` holds; returns {"at": monotonic time of the cancel}."""
    mark: dict = {}

    def watch():
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and not condition():
            time.sleep(poll)
        mark["at"] = time.monotonic()
        rec.cancel.set()

    threading.Thread(target=watch, daemon=True).start()
    return mark


def _timed(fn, *args, **kwargs):
    t0 = time.monotonic()
    try:
        fn(*args, **kwargs)
    except BaseException as exc:  # returned, with the time it took
        return exc, time.monotonic() - t0
    return None, time.monotonic() - t0


# ------------------------------------------------------------------------------------------------ no hang
@pytest.mark.parametrize("kind", ["info", "head"])
def test_a_hub_that_never_answers_fails_in_bounded_time(fakehub: FakeHub, monkeypatch, kind):
    monkeypatch.setenv("STUDIO_HUB_READ_TIMEOUT", "0.5")
    fakehub.hang(kind)
    error, took = _timed(download, REPO)
    assert isinstance(error, HubStalledError), error
    assert took < 5, f"took {took:.1f} s"
    message = str(error)
    assert "stopped answering" in message and "resumed" in message and fakehub.endpoint in message


def test_a_tree_listing_that_never_answers_is_bounded_by_the_deadline(fakehub: FakeHub, monkeypatch, tmp_path):
    # snapshot_download's tree call takes no timeout: the watchdog's deadline (2 x (connect + read) + 5 s) ends it
    monkeypatch.setenv("STUDIO_HUB_READ_TIMEOUT", "0.5")
    monkeypatch.setenv("STUDIO_HUB_CONNECT_TIMEOUT", "0.5")
    fakehub.hang("tree")
    error, took = _timed(download, REPO)
    assert isinstance(error, HubStalledError), error
    assert 6 <= took < 12, f"took {took:.1f} s"
    assert "stopped answering" in str(error)
    assert cache_state(REPO).state == "partial", "every file fetched is kept"
    fakehub.release()
    fakehub.reset_counters()
    download(REPO)
    assert fakehub.body_bytes() == 0 and cache_state(REPO).state == "complete"


def test_a_body_that_stalls_fails_in_bounded_time_and_keeps_what_arrived(fakehub: FakeHub, tmp_path, monkeypatch,
                                                                        model_folder):
    monkeypatch.setenv("STUDIO_HUB_READ_TIMEOUT", "0.5")
    fakehub.stall_after(WEIGHTS, 500_000)
    error, took = _timed(download, REPO)
    assert isinstance(error, HubStalledError), error
    assert took < 5
    kept = _partial_bytes(tmp_path)
    assert kept == 500_000
    assert "stopped answering" in str(error) and hubmod._fmt(kept) in str(error) and "resume" in str(error)

    fakehub.release()
    fakehub.reset_counters()
    assert_files(download(REPO), model_folder)
    assert fakehub.ranges(WEIGHTS) == [f"bytes={kept}-"]


# ------------------------------------------------------------------------------------------------- cancel
def test_cancel_on_a_slow_link_is_prompt_and_keeps_every_byte(fakehub: FakeHub, tmp_path, monkeypatch):
    monkeypatch.setattr(hf_constants, "DOWNLOAD_CHUNK_SIZE", 1024 * 1024)  # the app's real step: 5 s a chunk here
    fakehub.throttle_bps = 200_000
    rec = Recorder()
    mark = _cancel_when(rec, lambda: _partial_bytes(tmp_path) >= 150_000)
    error, _ = _timed(download, REPO, progress=rec, cancel=rec.cancel)
    returned = time.monotonic()
    assert isinstance(error, Cancelled), error
    assert returned - mark["at"] < 1.0, f"cancel took {returned - mark['at']:.2f} s"
    fakehub.wait_idle()
    kept = _partial_bytes(tmp_path)
    assert kept >= 150_000, "what was received is kept, even mid-chunk"
    assert f"{cache_state(REPO).state}" == "partial"


def test_cancel_while_the_body_is_stalled(fakehub: FakeHub, tmp_path, monkeypatch):
    monkeypatch.setenv("STUDIO_HUB_READ_TIMEOUT", "30")  # only the cancel can end it in time
    fakehub.stall_after(WEIGHTS, 300_000)
    rec = Recorder()
    mark = _cancel_when(rec, lambda: _partial_bytes(tmp_path) >= 300_000)
    error, took = _timed(download, REPO, progress=rec, cancel=rec.cancel)
    assert isinstance(error, Cancelled), error
    assert time.monotonic() - mark["at"] < scaled(1.0) and took < scaled(10)
    assert _partial_bytes(tmp_path) == 300_000
    fakehub.release()


@pytest.mark.parametrize("kind", ["info", "head", "get"])
def test_cancel_while_waiting_for_the_first_byte(fakehub: FakeHub, monkeypatch, kind):
    monkeypatch.setenv("STUDIO_HUB_READ_TIMEOUT", "30")
    fakehub.hang(kind, contains="" if kind != "get" else WEIGHTS)
    rec = Recorder()
    started = time.monotonic()
    mark = _cancel_when(rec, lambda: time.monotonic() - started > 0.5 and fakehub.count(contains="") > 0)
    error, took = _timed(download, REPO, progress=rec, cancel=rec.cancel)
    assert isinstance(error, Cancelled), error
    assert time.monotonic() - mark["at"] < scaled(1.0) and took < scaled(5)
    fakehub.release()


# ------------------------------------------------------------------------------------------------ retries
def test_transient_server_errors_are_retried(fakehub: FakeHub, model_folder):
    fakehub.fail("info", [503, 500])
    fakehub.fail("head", [502], contains=WEIGHTS)
    fakehub.fail("get", [503, 429], contains=WEIGHTS)
    rec = Recorder()
    assert_files(download(REPO, progress=rec), model_folder)
    messages = [m for _, _, m in rec.calls]
    assert any("HTTP 503, retrying (2/5)" in m for m in messages), messages
    assert any("HTTP 500, retrying (3/5)" in m for m in messages)
    assert any("HTTP 429, retrying (3/5)" in m for m in messages)
    done = [d for d, _, _ in rec.calls]
    assert done == sorted(done)


def test_retry_after_is_honoured_and_retries_are_bounded(fakehub: FakeHub, monkeypatch, model_folder):
    fakehub.fail("info", [503], retry_after="1")
    rec = Recorder()
    error, took = _timed(download, REPO, progress=rec)
    assert error is None and took >= 1.0
    assert any("retrying (2/5) in 1 s" in m for _, _, m in rec.calls)

    other = "Disty0/tiny-sdnq-other"
    fakehub.add_repo(other, model_folder)
    monkeypatch.setenv("STUDIO_HUB_TRIES", "3")
    fakehub.fail("info", [500, 500, 500, 500])
    error, took = _timed(download, other)
    assert isinstance(error, HubError) and "HTTP 500" in str(error) and "all 3 tries" in str(error), error
    assert took < 5


def test_body_retries_exhausted_keep_what_arrived(fakehub: FakeHub, tmp_path):
    fakehub.cut_after(WEIGHTS, 400_000, times=1)
    fakehub.fail("get", [503] * 5, contains=WEIGHTS)
    original = fakehub._take_fault
    first = {"done": False}

    def after_the_first_body(kind, path):  # let the first GET of the weights through, then the 503s
        if kind == "get" and WEIGHTS in path and not first["done"]:
            first["done"] = True
            return None
        return original(kind, path)

    fakehub._take_fault = after_the_first_body
    error, _ = _timed(download, REPO)
    assert isinstance(error, HubError) and "HTTP 503" in str(error) and "all 5 tries" in str(error), error
    assert _partial_bytes(tmp_path) == 400_000 and "400.0 KB" in str(error)


def test_broke_off_message_quotes_the_file_bytes(fakehub: FakeHub, tmp_path):
    fakehub.cut_after(WEIGHTS, 300_000, times=1)
    original = fakehub._take_cut
    fakehub._take_cut = lambda path: 0 if (after := original(path)) is None and path == WEIGHTS else after
    error, took = _timed(download, REPO)
    assert isinstance(error, DownloadInterruptedError), error
    size = fakehub.repos[REPO].files[WEIGHTS].size
    assert f"{hubmod._fmt(300_000)} of {hubmod._fmt(size)} of the file are kept" in str(error)
    assert took < 5


# ----------------------------------------------------------------------------------------------- 416, progress
def test_416_on_resume_is_verified_or_restarted(fakehub: FakeHub, tmp_path, model_folder):
    data = (model_folder / WEIGHTS).read_bytes()
    sha = fakehub.repos[REPO].files[WEIGHTS].sha256
    blobs = storage_of(tmp_path) / "blobs"
    blobs.mkdir(parents=True)
    # the whole file is on disk under its partial name (killed between the last byte and the rename)
    (blobs / f"{sha}.incomplete").write_bytes(data)
    assert_files(download(REPO), model_folder)
    assert fakehub.body_bytes(WEIGHTS) == 0

    # the hub answers 416 to a resume (its file is no longer than what is kept): check, then start again
    other = "Disty0/tiny-sdnq-other"
    fakehub.add_repo(other, model_folder)
    other_blobs = tmp_path / "hf-home" / "hub" / "models--Disty0--tiny-sdnq-other" / "blobs"
    other_blobs.mkdir(parents=True)
    (other_blobs / f"{sha}.incomplete").write_bytes(data[:1_000_000])
    fakehub.fail("get", [416], contains=WEIGHTS)
    fakehub.reset_counters()
    rec = Recorder()
    folder = download(other, progress=rec)
    assert (folder / WEIGHTS).read_bytes() == data
    assert fakehub.body_bytes(WEIGHTS) == len(data)
    _assert_backwards_explained(rec)


def test_progress_never_goes_back_without_a_reason(fakehub: FakeHub, tmp_path, model_folder):
    sha = fakehub.repos[REPO].files[WEIGHTS].sha256
    blobs = storage_of(tmp_path) / "blobs"
    blobs.mkdir(parents=True)
    (blobs / f"{sha}.incomplete").write_bytes(b"\0" * 700_000)  # a bad prefix: fails the checksum, restarts
    rec = Recorder()
    assert_files(download(REPO, progress=rec), model_folder)
    assert _assert_backwards_explained(rec) >= 1


def _assert_backwards_explained(rec: Recorder) -> int:
    steps_back = 0
    for (before, _, _), (after, _, message) in zip(rec.calls, rec.calls[1:]):
        if after < before:
            steps_back += 1
            assert "again from the start" in message, f"progress went back {before} -> {after}: {message!r}"
    return steps_back
