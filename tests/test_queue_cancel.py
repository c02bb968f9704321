"""Cancel reaches a run that still waits in the queue (issue 30, point 6): two sessions, one run holding the
device, a second one queued behind it and cancelled; it never reaches the engine, its caller hears "Cancelled
before it started" at once, and a third session's Cancel touches nothing of theirs."""

from __future__ import annotations

import threading
import time

import pytest
from gradio_client import Client
from gradio_client.exceptions import AppError
from gradio_client.utils import Status

from tests.conftest import app_client
from ui.pending import CANCELLED_BEFORE_START

ARGS = ("black-forest-labs/FLUX.1-dev", "", 64, 64, 2, 3.5, 1.0, 1)


def _t2i(client: Client, prompt: str):
    model, negative, *rest = ARGS
    return client.submit(model, prompt, negative, *rest, api_name="/text_to_image")


def _wait_for(predicate, timeout: float = 60) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.02)
    return False


@pytest.fixture
def held_engine(served):
    """The served engine with a hook that holds a run at its first step until ``release`` is set."""
    engine, url = served
    original = engine.run
    started, release, prompts = threading.Event(), threading.Event(), []

    def held_run(request, progress=None, cancel=None):
        prompts.append(request.prompt)

        def hold(fraction, message):
            started.set()
            release.wait(120)
            if progress:
                progress(fraction, message)

        return original(request, hold, cancel)

    engine.run = held_run
    try:
        yield url, started, release, prompts
    finally:
        release.set()
        engine.run = original


def test_a_queued_run_is_cancelled_before_it_starts(held_engine):
    url, started, release, prompts = held_engine
    holder, queued, other = (app_client(url) for _ in range(3))
    job_a = _t2i(holder, "holds the device")
    assert started.wait(120), "the first run never started"
    job_b = _t2i(queued, "waits in the queue")
    assert _wait_for(lambda: job_b.status().code == Status.IN_QUEUE), job_b.status()

    # another session's Cancel finds nothing of its own and leaves both runs alone
    assert other.predict(api_name="/text_to_image_cancel").startswith("Nothing to cancel")
    assert job_b.status().code == Status.IN_QUEUE

    t0 = time.monotonic()
    assert queued.predict(api_name="/text_to_image_cancel") == CANCELLED_BEFORE_START
    with pytest.raises(AppError, match="Cancelled before it started"):
        job_b.result(timeout=30)
    cancel_s = time.monotonic() - t0
    assert not job_a.done(), "the holding run ended early: the cancel was not made while B waited"
    release.set()
    assert job_a.result(timeout=120)[3].startswith("Done")
    assert prompts == ["holds the device"]  # the cancelled run never reached the engine
    assert cancel_s < 2, f"cancelling a queued run took {cancel_s:.2f} s"
    print(f"\ntime to cancel a queued run: {cancel_s * 1000:.0f} ms")

    # the cancelled session runs normally afterwards, and has nothing left to cancel
    assert queued.predict(api_name="/text_to_image_cancel").startswith("Nothing to cancel")
    assert _t2i(queued, "after").result(timeout=120)[3].startswith("Done")
