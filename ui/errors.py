"""What a failure looks like on the page: the field named by its widget label, the engine's message, or a
one-line summary of the unexpected with the traceback in the server log only."""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable, Iterator

import gradio as gr

from engine import Cancelled, EngineError, InputError

log = logging.getLogger(__name__)


def field_label(field: str, labels: dict[str, str]) -> str:
    """The widget label for a request field (``model.repo_id`` -> ``Model``), or the field itself."""
    for key in (field, field.split(".")[0].split("[")[0]):
        if key in labels:
            return labels[key]
    return field


def input_error_text(exc: InputError, labels: dict[str, str]) -> str:
    return f"{field_label(exc.field, labels)}: {exc.message}"


def one_line(exc: BaseException) -> str:
    """``Type: message``, first line, at most 300 characters: what the page shows of an unexpected error."""
    return f"{type(exc).__name__}: {exc}".splitlines()[0][:300]


def logged_summary(fn: Callable, exc: BaseException) -> str:
    """Log ``exc`` with its traceback (server side only) and return its one-line summary for the page."""
    log.exception("unexpected failure in %s", getattr(fn, "__name__", fn))
    return one_line(exc)


def unexpected_error(summary: str, **kwargs) -> gr.Error:
    return gr.Error(f"Unexpected error ({summary}). The details are in the server log.", print_exception=False,
                    **kwargs)


def as_gr_error(fn: Callable, exc: Exception) -> gr.Error:
    """``exc`` (raised by ``fn``) as a ``gr.Error`` that carries a message."""
    if isinstance(exc, EngineError):
        return gr.Error(str(exc), title="Check your input" if isinstance(exc, InputError) else "Failed",
                        print_exception=False)
    return unexpected_error(logged_summary(fn, exc))


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
            summary = logged_summary(fn, exc)
            yield {status: f"❌ Unexpected error: {summary}"}
            raise unexpected_error(summary, title="Run failed") from None

    return handler
