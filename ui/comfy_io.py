"""ComfyUI workflows in the page: an "Export ComfyUI workflow" panel on every tab (API and UI JSON downloads, the API
JSON with a copy button) and the shell's import box, which opens a workflow or a PNG ComfyUI saved in the tab of
its job with the fields filled in. The graphs themselves come from ``comfy_export``."""

from __future__ import annotations

import json
import os
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import gradio as gr

import comfy_export
from comfy_export.export import EXTRA_KEY
from comfy_export.importer import MAX_BYTES
from engine import InputError
from engine.files.atomic import write_text

KEEP = object()  # a field getter's "leave this widget as it is"
IMPORT_LIMIT = 2  # workflow imports parsed at once (each is bounded by comfy_export.limits: < 1 s, < 100 MB)


@dataclass
class Fill:
    """How an imported request fills one tab: the kinds it opens, and per widget a getter from the request."""

    kinds: tuple[str, ...]
    fields: list[tuple[Any, Callable[[Any], Any]]] = field(default_factory=list)


def attr(name: str, kinds: tuple[str, ...] = ()) -> Callable[[Any], Any]:
    def get(request):
        if kinds and request.kind not in kinds:
            return KEEP
        return getattr(request, name, KEEP)
    return get


def attrs(*pairs: tuple[Any, str], kinds: tuple[str, ...] = ()) -> list[tuple[Any, Callable[[Any], Any]]]:
    """(widget, request field) pairs as fill entries."""
    return [(component, attr(name, kinds)) for component, name in pairs]


class ExportPanel:
    def __init__(self, engine, prefix: str, label: str = "ComfyUI workflow"):
        self.engine, self.prefix = engine, prefix
        with gr.Accordion(label, open=False, elem_id=f"{prefix}-comfy"):
            self.button = gr.Button("Export ComfyUI workflow", size="sm", elem_id=f"{prefix}-comfy-export")
            self.status = gr.Markdown("", elem_id=f"{prefix}-comfy-status")
            with gr.Row():
                self.api_file = gr.File(label="API JSON (for /prompt)", interactive=False,
                                        elem_id=f"{prefix}-comfy-api")
                self.ui_file = gr.File(label="Workflow JSON (drop on ComfyUI's canvas)", interactive=False,
                                       elem_id=f"{prefix}-comfy-ui")
            self.code = gr.Code("", language="json", label="API JSON", buttons=["copy"], interactive=False,
                                max_lines=16, elem_id=f"{prefix}-comfy-code")

    def wire(self, make_request: Callable[..., Any], inputs: list) -> None:
        """``make_request(*values of inputs)`` builds the tab's request (raising ``InputError`` naming a field)."""
        engine = self.engine

        def export(*values):
            try:
                request = make_request(*values)
                api, workflow = comfy_export.both(request, demo=engine.demo)
            except (InputError, comfy_export.WorkflowError) as exc:
                return gr.update(), gr.update(), gr.update(), f"Cannot export yet: {exc}"
            folder = Path(engine.outputs_dir) / "comfy"
            folder.mkdir(parents=True, exist_ok=True)
            # a random tail: two sessions exporting in the same millisecond never overwrite each other's files
            stem = f"{request.kind}-{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:8]}"
            api_path, ui_path = folder / f"{stem}-api.json", folder / f"{stem}-workflow.json"
            api_text = json.dumps(api, indent=2)
            write_text(api_path, api_text)  # whole or absent (engine.files.atomic), as every file the app writes
            write_text(ui_path, json.dumps(workflow, indent=2))
            notes = workflow["extra"][EXTRA_KEY]["notes"][1:]
            text = f"Exported {len(api)} nodes." + "".join(f"\n- {n}" for n in notes)
            return str(api_path), str(ui_path), api_text, text

        self.button.click(export, inputs, [self.api_file, self.ui_file, self.code, self.status],
                          api_name=f"{self.prefix}_comfy_export", concurrency_limit=None)


def search_dirs(engine) -> dict[str, list[str]]:
    """Where file names of an imported graph are looked up: the app's folders, ComfyUI's layout inside them."""
    models, outputs = Path(engine.models_dir), Path(engine.outputs_dir)
    found = {"input": [str(outputs / "references"), str(outputs / "inputs"), str(outputs), str(models / "input")],
             "loras": [str(models / "loras")],
             "diffusion_models": [str(models / "diffusion_models"), str(models / "unet"), str(models)]}
    index = engine.comfy.index() if getattr(engine, "comfy", None) is not None else None
    if index is not None:  # the ComfyUI models folder: a graph naming its files opens with exactly them
        for category, paths in index.folders.folders.items():
            key = "loras" if category == "loras" else "diffusion_models"  # every other model file: by name
            found[key] += [str(p) for p in paths]
    return found


def import_box(engine) -> tuple[gr.File, gr.Markdown]:
    with gr.Accordion("Import a ComfyUI workflow", open=False, elem_id="comfy-import-box"):
        upload = gr.File(label="Workflow JSON (API or UI format), or a PNG ComfyUI saved", file_types=[".json", ".png"],
                         elem_id="comfy-import")
        status = gr.Markdown("", elem_id="comfy-import-status")
    return upload, status


def wire_import(engine, upload: gr.File, status: gr.Markdown, tabs: gr.Tabs, fills: dict[str, Fill],
                titles: dict[str, str]) -> None:
    components = [c for fill in fills.values() for c, _ in fill.fields]
    unchanged = [gr.update() for _ in components]

    def on_import(path):
        if not path:
            return [gr.update(), gr.update(), ""] + unchanged
        try:
            if os.path.getsize(path) > MAX_BYTES:
                raise comfy_export.WorkflowError(f"the file is {os.path.getsize(path) / 2**20:.0f} MB; a workflow "
                                                 f"(or a PNG carrying one) must be under {MAX_BYTES >> 20} MB")
            request, warnings = comfy_export.from_workflow(Path(path).read_bytes(), search_dirs(engine),
                                                           with_warnings=True)
        except comfy_export.WorkflowError as exc:
            return [gr.update(), None, f"Cannot import {Path(path).name}: {exc}"] + unchanged
        tab = next((t for t, f in fills.items() if request.kind in f.kinds), None)
        if tab is None:
            return [gr.update(), None, f"No tab runs {request.kind} requests."] + unchanged
        values = []
        for t, fill in fills.items():
            for _, get in fill.fields:
                value = get(request) if t == tab else KEEP
                values.append(gr.update() if value is KEEP else value)
        # what the request cannot express is said, never dropped (issue 31): each node and missing file by name
        note = "".join(f"\n- ⚠️ {w}" for w in warnings)
        return [gr.Tabs(selected=tab), None, f"Opened **{Path(path).name}** in {titles[tab]}.{note}"] + values

    # the box empties after each file, so the next one can be dropped at once
    # its own small group: an import is CPU work in the server process, so a burst of them must queue, not pile up
    upload.upload(on_import, upload, [tabs, upload, status, *components], api_name="comfy_import",
                  concurrency_limit=IMPORT_LIMIT, concurrency_id="comfy_import")
