"""One run handler for every tab: hold the session's cancel slot, run the request on the engine (its downloads
first, then the one GPU call), show the engine's warnings, then the status line, the plan and what was measured.

A tab's handler is then its request and its outputs::

    runner = TabRun(engine, LABELS)
    ...                                                     # the tab's widgets, then the foot of its column:
    memory, run, export_panel = runner.controls("text_to_image", "t2i", cancel_api="text_to_image_cancel")
    ...                                                     # the output column
    runner.plan(plan_request, plan_inputs)

    def run_text_to_image(model, prompt, ..., request: gr.Request = None, progress=gr.Progress()):
        req = build_request(model, prompt, ...)
        result = yield from runner.run(req, request, progress)
        yield runner.done(result, image.updates(result, format_result(result)), model, width, height, steps, ...)

    runner.click(run, run_text_to_image, inputs, image, api_name="text_to_image")

The handler keeps its explicit parameters: Gradio reads them to name the API's parameters and to pass
``gr.Request`` / ``gr.Progress``. Failures anywhere in it (the request's ``InputError`` included) reach the page
in words through ``run_with_feedback``, which ``click`` puts around it.
"""

from __future__ import annotations

import contextvars
import dataclasses
import queue
import threading
from collections.abc import Callable, Generator, Sequence

import gradio as gr

from engine import Result

from . import zerogpu
from .cancel import CancelSlots
from .comfy_io import ExportPanel
from .components import CONTROLS, GPU_POOL, status_line
from .errors import run_with_feedback
from .lora_editor import specs
from .memory_mode import MemoryModeWidget, after_run, memory_mode_widget, plan_text, wire_plan
from .pending import CANCELLED_BEFORE_START, PENDING


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


def cancel_button(slots: CancelSlots, status: gr.Markdown, api_name: str) -> gr.Button:
    button = gr.Button("Cancel", variant="stop", scale=1, min_width=90)

    def cancel(request: gr.Request):
        if slots.cancel(request):
            return "Cancelling: the run stops after the current step…"
        if PENDING.cancel(slots, CancelSlots.key(request)):
            return CANCELLED_BEFORE_START
        return "Nothing to cancel: no run of yours is in progress or waiting."

    cancel._cancel_slots = slots  # ui.pending finds the tab's runs through this button's status line

    button.click(
        cancel, None, status, concurrency_limit=None, concurrency_id=CONTROLS, show_progress="hidden",
        api_name=api_name,
    )
    return button


def done_text(result: Result) -> str:
    return f"Done in {result.timings.get('total', 0.0):.1f} s."


class PreviewReporter:
    """The engine's progress callable, plus ``preview(image, step)``: the i2v runner sends live previews there
    (from the worker thread the run is on); the handler drains them into the page."""

    def __init__(self, progress: gr.Progress):
        self.report = engine_progress(progress)
        self.previews: queue.Queue = queue.Queue()

    def __call__(self, fraction: float, message: str) -> None:
        self.report(fraction, message)

    def preview(self, image, step: int) -> None:
        self.previews.put(image)


def one_stack(stack) -> dict:
    """The LoRA field of a tab with one stack editor."""
    return {"loras": specs(stack)}


def with_stacks(plan_request: Callable, count: int, stack_fields: Callable) -> Callable:
    """``plan_request`` over the first ``count`` values, with the LoRA fields the values after them describe."""

    def build(*values):
        return dataclasses.replace(plan_request(*values[:count]), **stack_fields(*values[count:]))

    return build


class TabRun:
    """What every tab's Run button does around the tab's own request and outputs (see the module docstring).

    One per run button: it owns the button's cancel slots (one event per browser session), the engine call
    (wrapped in ``spaces.GPU`` on ZeroGPU), the status line, the error mapping and the memory widget's plan.
    """

    def __init__(self, engine, labels: dict[str, str] | None = None):
        self.engine = engine
        self.labels = labels or {}
        self.slots = CancelSlots()
        self.on_gpu = zerogpu.engine_call(engine)  # on ZeroGPU only this call holds a GPU
        self.status: gr.Markdown | None = None
        self.memory: MemoryModeWidget | None = None
        self.plan_request: Callable | None = None

    # ------------------------------------------------------------ widgets and wiring
    def run_row(self, prefix: str, cancel_api: str, label: str = "Run") -> gr.Button:
        """Run and Cancel side by side with the status line (``self.status``) under them; ids ``<prefix>-run``
        and ``<prefix>-status``. Returns the Run button."""
        self.status = status_line(render=False, elem_id=f"{prefix}-status")
        with gr.Row():
            run = gr.Button(label, variant="primary", scale=3, elem_id=f"{prefix}-run")
            cancel_button(self.slots, self.status, api_name=cancel_api)
        self.status.render()
        return run

    def controls(self, job: str, prefix: str, cancel_api: str) -> tuple[MemoryModeWidget, gr.Button, ExportPanel]:
        """The foot of a tab's settings column: the memory-mode widget (the VRAM advice for ``job``), Run and
        Cancel over the status line, and the ComfyUI export panel. Returns (memory widget, Run button, panel)."""
        self.memory = memory_mode_widget(self.engine, job, prefix)
        run = self.run_row(prefix, cancel_api)
        return self.memory, run, ExportPanel(self.engine, prefix)

    def plan(self, plan_request: Callable, inputs: list, stacks: Sequence = (),
             stack_fields: Callable | None = None) -> None:
        """Show the memory plan for ``plan_request(*values of inputs)`` as they change; after a run, ``done``
        shows it again with what was measured. ``stacks``: the tab's LoRA stack editors, whose values follow
        ``inputs`` (here and in ``done``'s plan values); ``stack_fields(*their values)`` gives the request's LoRA
        fields (default: one stack, ``loras``), so that the plan counts the bytes of the stack's layers."""
        if stacks:
            plan_request = with_stacks(plan_request, len(inputs), stack_fields or one_stack)
            inputs = [*inputs, *stacks]
        self.plan_request = plan_request
        wire_plan(self.engine, self.memory, plan_request, inputs)

    def click(self, button: gr.Button, handler: Callable, inputs: list, outputs: Sequence, *, api_name: str,
              show_progress_on: list | None = None, concurrency_id: str = GPU_POOL):
        """``button`` runs ``handler`` in the GPU pool (one run at a time), with failures shown in words. The
        event's outputs are the tab's ``outputs``, then the status line, then the memory widget's plan and plot."""
        outputs = list(outputs)
        if self.status not in outputs:
            outputs.append(self.status)
        if self.memory is not None:
            outputs += [self.memory.plan, self.memory.trace_plot]
        return button.click(
            run_with_feedback(handler, self.status, self.labels), inputs, outputs, api_name=api_name,
            concurrency_limit=1, concurrency_id=concurrency_id, show_progress_on=show_progress_on or outputs[:1],
        )

    # ------------------------------------------------------------ inside the handler
    def run(self, req, request: gr.Request | None, progress: gr.Progress, *, start: dict | None = None,
            preview: gr.components.Component | None = None) -> Generator[dict, None, Result]:
        """Run ``req`` for this browser session: ``result = yield from runner.run(...)``.

        Yields the "Running…" status (merged with ``start``, the tab's own first updates), and with ``preview``
        the live previews while the run is on a worker thread. The cancel slot is held from the first yield to
        the end of the run, so the Cancel button of this session (and only this one) stops it between steps."""
        with self.slots.held(request) as cancel:
            yield {self.status: "Running…", **(start or {})}
            reporter = PreviewReporter(progress) if preview is not None else engine_progress(progress)
            zerogpu.check(req)  # on ZeroGPU a run over the platform's limit is refused before anything downloads
            self.engine.prepare(req, reporter, cancel)  # downloads never hold the GPU
            if preview is None:
                result = self.on_gpu(req, reporter, cancel)
            else:
                result = yield from self._streaming_previews(req, reporter, cancel, preview)
        for warning in result.metadata.get("warnings") or []:
            gr.Warning(warning, title="Note")
        return result

    def _streaming_previews(self, req, reporter: PreviewReporter, cancel: threading.Event, preview):
        box: dict = {}

        def work():
            try:
                box["result"] = self.on_gpu(req, reporter, cancel)
            except BaseException as exc:  # re-raised in the handler, where the feedback wrapper sees it
                box["error"] = exc

        worker = threading.Thread(target=work, name="tab-run", daemon=True)
        worker.start()
        while worker.is_alive() or not reporter.previews.empty():
            try:
                yield {preview: reporter.previews.get(timeout=0.25)}
            except queue.Empty:
                continue
        worker.join()
        if "error" in box:
            raise box["error"]
        return box["result"]

    def done(self, result: Result, updates: dict, *plan_values, status: str | None = None) -> dict:
        """The last update of a run: the tab's ``updates``, the status line ("Done in …" unless ``status``) and,
        with a memory widget, the plan for ``plan_values`` with what was measured, and the trace plot."""
        out = {**updates, self.status: status or done_text(result)}
        if self.memory is not None:
            plan_line = plan_text(self.engine, self.plan_request, *plan_values)
            out.update(after_run(self.engine, self.memory, result, plan_line))
        return out
