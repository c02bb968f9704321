"""Wrong values over the HTTP API get a message naming the widget, on every event of the app.

Gradio checks an API caller's values only inside each component's preprocess, and what it raises there (a
ValueError, a pydantic error) reaches the caller with an empty message unless it is a gr.Error. So every event of
the app goes through one check first: each value against the kind of widget that receives it, with a message
naming the widget by its label. build_app applies it to the whole page, so a new tab is covered without a line.
"""

from __future__ import annotations

import functools
import inspect
import math
from collections.abc import Callable
from typing import Any

import gradio as gr

from . import input_errors
from .errors import as_gr_error


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
        problem = input_problem(block, value) or input_errors.value_problem(block, value)
        if problem:
            raise gr.Error(f"{_label(block)}: {problem}", title="Check your input", print_exception=False)


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
                raise as_gr_error(fn, exc) from None
    elif inspect.iscoroutinefunction(fn):
        @functools.wraps(fn)
        async def wrapper(*args, **kwargs):
            try:
                return await fn(*args, **kwargs)
            except gr.Error:
                raise
            except Exception as exc:
                raise as_gr_error(fn, exc) from None
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
                raise as_gr_error(fn, exc) from None
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
        except Exception as exc:  # a check above let through what Gradio still refuses: say which field and why
            raise gr.Error(input_errors.component_error_text(block_fn, exc, inputs), title="Check your input",
                           print_exception=False) from None

    app.preprocess_data = preprocess_data  # the one step every event's values go through
    for block_fn in app.fns.values():
        if block_fn.fn is not None:
            block_fn.fn = _never_silent(block_fn.fn)
    app._inputs_guarded = True
    return app
