"""Widgets and wiring shared by every tab: seed, size, steps, the status line, error feedback, cancel."""

from __future__ import annotations

import contextvars
import functools
import logging
import random
import threading
from collections.abc import Callable, Iterator

import gradio as gr

from engine import Cancelled, EngineError, InputError

log = logging.getLogger(__name__)

SEED_MAX = 2**32 - 1  # what the random button draws from; the engine accepts up to 2**64 - 1
GPU_POOL = "gpu"  # every event that runs the engine shares this concurrency group (limit 1)
CONTROLS = "controls"  # cancel buttons and readouts: never wait behind a run


# ---------------------------------------------------------------- value helpers
def as_int(value):
    """Widgets hand numbers over as floats (``64.0``); requests want ints. Anything else is left for
    the request's own validation to reject with a message naming the field."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


def field_label(field: str, labels: dict[str, str]) -> str:
    """The widget label for a request field (``model.repo_id`` -> ``Model``), or the field itself."""
    for key in (field, field.split(".")[0].split("[")[0]):
        if key in labels:
            return labels[key]
    return field


def input_error_text(exc: InputError, labels: dict[str, str]) -> str:
    return f"{field_label(exc.field, labels)}: {exc.message}"


# ---------------------------------------------------------------- widgets
def seed_input(value: int = 0, elem_id: str | None = None) -> gr.Number:
    """A seed box with a "random" button in its corner that draws a new seed."""
    dice = gr.Button("random", size="sm")
    seed = gr.Number(value=value, label="Seed", precision=0, minimum=None, buttons=[dice], elem_id=elem_id)
    dice.click(lambda: random.randint(0, SEED_MAX), None, seed, queue=False, api_visibility="private")
    return seed


def size_sliders(default: int, maximum: int = 2048) -> tuple[gr.Slider, gr.Slider]:
    with gr.Row():
        width = gr.Slider(16, maximum, value=default, step=16, precision=0, label="Width")
        height = gr.Slider(16, maximum, value=default, step=16, precision=0, label="Height")
    return width, height


def steps_slider(default: int, maximum: int = 100) -> gr.Slider:
    return gr.Slider(1, maximum, value=default, step=1, precision=0, label="Steps")


def status_line(render: bool = True, elem_id: str | None = None) -> gr.Markdown:
    """The line under the run button: running, done, cancelled, or which field is wrong."""
    return gr.Markdown("", elem_classes=["run-status"], elem_id=elem_id, render=render)


def run_row(slots: CancelSlots, prefix: str, cancel_api: str) -> tuple[gr.Markdown, gr.Button]:
    """Run and Cancel side by side with the status line under them (ids ``<prefix>-run``/``-status``)."""
    status = status_line(render=False, elem_id=f"{prefix}-status")
    with gr.Row():
        run = gr.Button("Run", variant="primary", scale=3, elem_id=f"{prefix}-run")
        cancel_button(slots, status, api_name=cancel_api)
    status.render()
    return status, run


def image_output(prefix: str) -> tuple[gr.Gallery, gr.Markdown, gr.DownloadButton]:
    """The output column of an image tab: gallery, timings/files line, and the "Save request JSON" button."""
    gallery = gr.Gallery(label="Output", columns=1, height=512, object_fit="contain", elem_id=f"{prefix}-output",
                         buttons=["download", "fullscreen"])
    info = gr.Markdown("", elem_id=f"{prefix}-info")
    save_json = gr.DownloadButton("Save request JSON", visible=False, size="md", elem_id=f"{prefix}-save-json")
    return gallery, info, save_json


def not_built(text: str) -> gr.Markdown:
    """The one line a tab shows while its job is not built yet."""
    return gr.Markdown(text, elem_classes=["not-built"])


# ---------------------------------------------------------------- progress and cancel
def threadsafe(fn: Callable) -> Callable:
    """``fn`` callable from any thread. ``gr.Progress`` finds its event through context variables, which the
    hub's download worker threads do not inherit: there, the call runs in a copy of the handler's context."""
    context = contextvars.copy_context()
    owner = threading.get_ident()

    def call(*args, **kwargs):
        if threading.get_ident() == owner:
            return fn(*args, **kwargs)
        return context.copy().run(fn, *args, **kwargs)

    return call


def engine_progress(progress: gr.Progress) -> Callable[[float, str], None]:
    """The engine's ``progress(fraction, message)`` shown on a ``gr.Progress`` bar (downloads report from
    worker threads, hence ``threadsafe``)."""

    def report(fraction: float, message: str) -> None:
        progress(max(0.0, min(1.0, fraction)), desc=message)

    return threadsafe(report)


def run_on_engine(engine, on_gpu: Callable, req, progress: gr.Progress, cancel: threading.Event):
    """Fetch what the run needs first (on ZeroGPU a download must not hold the GPU), then run it through
    ``on_gpu`` (the engine call, wrapped in ``spaces.GPU`` on Spaces)."""
    report = engine_progress(progress)
    engine.prepare(req, report, cancel)
    return on_gpu(req, report, cancel)


def image_run_updates(result, info_text: str) -> tuple:
    """(gallery files, info line, "Save request JSON" button update, status) after an image run."""
    images = [f for f in result.files if f.endswith(".png")]
    saved = next((f for f in result.files if f.endswith(".json")), None)
    return (images, info_text, gr.update(value=saved, visible=saved is not None),
            f"Done in {result.timings.get('total', 0.0):.1f} s.")


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
        event = threading.Event()
        with self._lock:
            self._events[self.key(request)] = event
        return event

    def finish(self, request: gr.Request | None, event: threading.Event) -> None:
        with self._lock:
            if self._events.get(self.key(request)) is event:
                del self._events[self.key(request)]

    def cancel(self, request: gr.Request | None) -> bool:
        with self._lock:
            event = self._events.get(self.key(request))
        if event is None:
            return False
        event.set()
        return True


def cancel_button(slots: CancelSlots, status: gr.Markdown, api_name: str) -> gr.Button:
    button = gr.Button("Cancel", variant="stop", scale=1, min_width=90)

    def cancel(request: gr.Request):
        if slots.cancel(request):
            return "Cancelling: the run stops after the current step…"
        return "Nothing to cancel: no run of yours is in progress."

    button.click(
        cancel, None, status, concurrency_limit=None, concurrency_id=CONTROLS, show_progress="hidden",
        api_name=api_name,
    )
    return button


# ---------------------------------------------------------------- errors
def run_with_feedback(fn: Callable[..., Iterator], status: gr.Markdown, labels: dict[str, str] | None = None):
    """Wrap a run handler (a generator yielding output updates) so that failures reach the page in words.

    - ``InputError``: the status line names the field (by its widget label) and a ``gr.Error`` pops up;
    - ``Cancelled``: a ``gr.Warning`` and a "Cancelled" status;
    - ``EngineError``: a ``gr.Error`` with the engine's message;
    - anything else: a ``gr.Error`` with a one-line summary; the traceback goes to the server log only.

    ``functools.wraps`` keeps ``fn``'s signature, which Gradio reads to pass ``gr.Request``/``gr.Progress``.
    """
    labels = labels or {}

    @functools.wraps(fn)
    def handler(*args, **kwargs):
        try:
            yield from fn(*args, **kwargs)
        except InputError as exc:
            text = input_error_text(exc, labels)
            yield {status: f"⚠️ **{field_label(exc.field, labels)}**: {exc.message}"}
            raise gr.Error(text, title="Check your input", print_exception=False) from None
        except Cancelled as exc:
            gr.Warning(str(exc), title="Cancelled")
            yield {status: "Cancelled."}
        except EngineError as exc:
            log.warning("run failed: %s", exc)
            yield {status: f"❌ {exc}"}
            raise gr.Error(str(exc), title="Run failed", print_exception=False) from None
        except gr.Error:
            raise
        except Exception as exc:
            log.exception("unexpected failure in %s", getattr(fn, "__name__", fn))
            summary = f"{type(exc).__name__}: {exc}".splitlines()[0][:300]
            yield {status: f"❌ Unexpected error: {summary}"}
            raise gr.Error(
                f"Unexpected error ({summary}). The details are in the server log.", title="Run failed",
                print_exception=False,
            ) from None

    return handler
