"""Widgets shared by every tab: seed, size, steps, the status line, the image output column.

The run around them (cancel, progress, the engine call) is ``ui/run_handler.py``; how failures read,
``ui/errors.py``; the check of API callers' values, ``ui/api_inputs.py``. Their public names stay importable
from here."""

from __future__ import annotations

import random
from typing import NamedTuple

import gradio as gr

from .api_inputs import guard_api_inputs, input_problem  # noqa: F401  (re-exported)
from .cancel import CancelSlots  # noqa: F401  (re-exported)
from .errors import field_label, input_error_text, run_with_feedback  # noqa: F401  (re-exported)

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


def engine_booted(engine) -> bool:
    """False while the engine has not looked at the device yet: the app builds and serves its page before torch
    has loaded, and what depends on the device (its name, the memory defaults) fills in when the page loads."""
    return getattr(engine, "booted", True)


def when_booted(engine, fn, outputs: list) -> None:
    """Fill ``outputs`` with ``fn()`` when the page loads, if the engine had not booted when the page was built
    (else the builder already put the real values in)."""
    if not engine_booted(engine):
        gr.on(triggers=None, fn=fn, outputs=outputs, show_progress="hidden", api_visibility="private", queue=False)


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


class ImageSettings(NamedTuple):
    width: gr.Slider
    height: gr.Slider
    steps: gr.Slider
    guidance: gr.Slider
    seed: gr.Number
    negative: gr.Textbox
    true_cfg: gr.Slider


def image_settings(prefix: str, d: dict, guidance: float = 3.5, guidance_info: str | None = None,
                   true_cfg_info: str = "1 = off", negative_placeholder: str | None = None) -> ImageSettings:
    """The settings every image tab has, in this order: size, steps and guidance, the seed (id ``<prefix>-seed``),
    and the negative prompt with its true CFG. ``d``: the tab's defaults (``size``, ``max_size``, ``steps``)."""
    width, height = size_sliders(d["size"], d["max_size"])
    with gr.Row():
        steps = steps_slider(d["steps"])
        guidance_slider = gr.Slider(0, 30, value=guidance, step=0.5, label="Guidance", info=guidance_info)
    seed = seed_input(0, elem_id=f"{prefix}-seed")
    with gr.Accordion("Negative prompt", open=False):
        negative = gr.Textbox(label="Negative prompt", lines=1, placeholder=negative_placeholder)
        true_cfg = gr.Slider(1, 30, value=1.0, step=0.5, label="True CFG", info=true_cfg_info)
    return ImageSettings(width, height, steps, guidance_slider, seed, negative, true_cfg)


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
