"""Widgets and wiring shared by every tab: seed, size, steps, the status line, error feedback, cancel."""

from __future__ import annotations

import contextlib
import contextvars
import functools
import inspect
import logging
import math
import random
import threading
from collections.abc import Callable, Iterator
from typing import Any, NamedTuple

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


def file_of(result, suffix: str) -> str | None:
    """The run's first output file ending in ``suffix`` (``".json"``: the saved request), or None."""
    return next((f for f in result.files if f.endswith(suffix)), None)


def download_update(path: str | None):
    """A download button showing ``path``, hidden while there is none."""
    return gr.update(value=path, visible=path is not None)


class ImageOutput(NamedTuple):
    """The output column of an image tab: gallery, timings/files line, and the "Save request JSON" button."""

    gallery: gr.Gallery
    info: gr.Markdown
    save_json: gr.DownloadButton

    def updates(self, result, info_text: str) -> dict:
        """The column after a run: the images, the info line, and the saved request to download."""
        images = [f for f in result.files if f.endswith(".png")]
        return {self.gallery: images, self.info: info_text, self.save_json: download_update(file_of(result, ".json"))}


def image_output(prefix: str) -> ImageOutput:
    """The output column of an image tab (ids ``<prefix>-output``, ``-info``, ``-save-json``)."""
    gallery = gr.Gallery(label="Output", columns=1, height=512, object_fit="contain", elem_id=f"{prefix}-output",
                         buttons=["download", "fullscreen"])
    info = gr.Markdown("", elem_id=f"{prefix}-info")
    save_json = gr.DownloadButton("Save request JSON", visible=False, size="md", elem_id=f"{prefix}-save-json")
    return ImageOutput(gallery, info, save_json)


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


# ---------------------------------------------------------------- wrong values over the HTTP API
# Gradio checks an API caller's values only inside each component's preprocess, and what it raises there (a
# ValueError, a pydantic error) reaches the caller with an empty message unless it is a gr.Error. So every event of
# the app goes through one check first: each value against the kind of widget that receives it, with a message
# naming the widget by its label. build_app applies it to the whole page, so a new tab is covered without a line.
def _shown(value: Any) -> str:
    if value is None:
        return "nothing (null)"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (list, tuple)):
        return "a list"
    if isinstance(value, dict):
        return "an object"
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "…"


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _choice_values(block) -> list:
    return [value for _, value in (getattr(block, "choices", None) or [])]


def _listing(values: list) -> str:
    shown = ", ".join(repr(v) for v in values[:8])
    return shown + (", …" if len(values) > 8 else "")


def _number_problem(block, value: Any) -> str | None:
    lo, hi = getattr(block, "minimum", None), getattr(block, "maximum", None)
    span = f" between {lo:g} and {hi:g}" if lo is not None and hi is not None else (
        f" of at least {lo:g}" if lo is not None else (f" of at most {hi:g}" if hi is not None else ""))
    if not _is_number(value) or (lo is not None and value < lo) or (hi is not None and value > hi):
        return f"expects a number{span}, got {_shown(value)}"
    return None


def _choice_problem(block, value: Any) -> str | None:
    choices = _choice_values(block)
    if getattr(block, "multiselect", False) or isinstance(block, gr.CheckboxGroup):
        items = value if isinstance(value, list) else None
        if items is None or any(isinstance(v, (list, dict)) or v is None for v in items):
            return f"expects a list of choices from {_listing(choices)}; got {_shown(value)}"
        bad = [v for v in items if v not in choices]
        if bad and not getattr(block, "allow_custom_value", False):
            return f"expects a list of choices from {_listing(choices)}; {bad[0]!r} is not one of them"
        return None
    if getattr(block, "allow_custom_value", False):
        return None if isinstance(value, (str, int, float)) and not isinstance(value, bool) else (
            f"expects one of {_listing(choices)} or a text value, got {_shown(value)}")
    if value not in choices or isinstance(value, bool):
        return f"expects one of {_listing(choices)}, got {_shown(value)}"
    return None


def input_problem(block, value: Any) -> str | None:
    """What is wrong with ``value`` for the widget ``block`` (``None`` when it will do): the sentence after
    "<label>: " in the message an API caller gets."""
    if isinstance(block, (gr.Number, gr.Slider)):
        return _number_problem(block, value)
    if isinstance(block, gr.Checkbox):
        return None if isinstance(value, bool) else f"expects true or false, got {_shown(value)}"
    if isinstance(block, (gr.Dropdown, gr.Radio, gr.CheckboxGroup)):
        return _choice_problem(block, value)
    if isinstance(block, gr.Textbox):
        return None if value is None or isinstance(value, str) else f"expects text, got {_shown(value)}"
    if isinstance(block, gr.JSON):  # structured values (a LoRA stack): the handler checks the entries
        return None if value is None or isinstance(value, (list, dict)) else \
            f"expects JSON (a list or an object), got {_shown(value)}"
    model = getattr(block, "data_model", None)
    if model is not None and value is not None:  # images, files, videos...: Gradio's own data model decides
        try:
            model.model_validate(value, context={"validate_meta": True})
        except Exception:
            kind = type(block).__name__.lower()
            return f"expects {'an' if kind[0] in 'aeiou' else 'a'} {kind} (a file path or URL in a FileData object), got {_shown(value)}"
    return None


def _label(block) -> str:
    return str(getattr(block, "label", None) or getattr(block, "elem_id", None) or type(block).__name__)


def _check_inputs(block_fn, inputs: list, state) -> None:
    for block, value in zip(block_fn.inputs, inputs, strict=False):
        if getattr(block, "stateful", False):
            continue
        if state is not None and block._id in state:  # a widget this session updated (choices, range)
            block = state[block._id]
        problem = input_problem(block, value)
        if problem:
            raise gr.Error(f"{_label(block)}: {problem}", title="Check your input", print_exception=False)


def _as_gr_error(fn: Callable, exc: Exception) -> gr.Error:
    if isinstance(exc, EngineError):
        return gr.Error(str(exc), title="Check your input" if isinstance(exc, InputError) else "Failed",
                        print_exception=False)
    log.exception("unexpected failure in %s", getattr(fn, "__name__", fn))
    summary = f"{type(exc).__name__}: {exc}".splitlines()[0][:300]
    return gr.Error(f"Unexpected error ({summary}). The details are in the server log.", print_exception=False)


def _never_silent(fn: Callable) -> Callable:
    """``fn`` with every exception turned into a ``gr.Error`` that carries a message (same kind of callable, same
    signature: Gradio reads both)."""
    if getattr(fn, "_never_silent", False):
        return fn
    if inspect.isgeneratorfunction(fn):
        @functools.wraps(fn)
        def wrapper(*args, **kwargs):
            try:
                yield from fn(*args, **kwargs)
            except gr.Error:
                raise
            except Exception as exc:
                raise _as_gr_error(fn, exc) from None
    elif inspect.iscoroutinefunction(fn):
        @functools.wraps(fn)
        async def wrapper(*args, **kwargs):
            try:
                return await fn(*args, **kwargs)
            except gr.Error:
                raise
            except Exception as exc:
                raise _as_gr_error(fn, exc) from None
    elif inspect.isasyncgenfunction(fn):
        return fn  # none in this app; left as Gradio runs it
    else:
        @functools.wraps(fn)
        def wrapper(*args, **kwargs):
            try:
                return fn(*args, **kwargs)
            except gr.Error:
                raise
            except Exception as exc:
                raise _as_gr_error(fn, exc) from None
    wrapper._never_silent = True
    return wrapper


def guard_api_inputs(app: gr.Blocks) -> gr.Blocks:
    """Give every event of ``app`` (every tab, present and future) a message for every wrong value.

    Each value an event receives is checked against its widget before Gradio preprocesses it (``input_problem``),
    and every handler's failures become ``gr.Error``s, so an API caller never gets an error without words.
    """
    if getattr(app, "_inputs_guarded", False):
        return app
    original = app.preprocess_data

    async def preprocess_data(block_fn, inputs, state, explicit_call: bool = False):
        _check_inputs(block_fn, inputs, state)
        try:
            return await original(block_fn, inputs, state, explicit_call)
        except gr.Error:
            raise
        except Exception as exc:  # a check above let through what Gradio still refuses: say so, in words
            summary = f"{type(exc).__name__}: {exc}".splitlines()[0][:300]
            raise gr.Error(f"Bad input: {summary}", title="Check your input", print_exception=False) from None

    app.preprocess_data = preprocess_data  # the one step every event's values go through
    for block_fn in app.fns.values():
        if block_fn.fn is not None:
            block_fn.fn = _never_silent(block_fn.fn)
    app._inputs_guarded = True
    return app
