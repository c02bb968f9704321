"""The LoRA stack editor, one component shared by every tab that runs a diffusion transformer (Text to image,
IP-Adapter, the SDNQ catalog, Image to video with one per Wan expert, the LoRA stack tab's two stages): an
ordered list of LoRA entries, each a ``LoraSpec`` dict plus its inspection summary.

The stack lives in a hidden ``gr.JSON`` (not a ``gr.State``), so the HTTP API takes and returns it as plain JSON:
``[{"path": ..., "weight": 1.0, "enabled": true, "name": ..., "info": {...}}, ...]``. Every edit is a pure
function from one stack to the next (tested without a browser); ``stack_editor`` only draws it with
``gr.render``, one row per entry, so there is no fixed slot limit.
"""

from __future__ import annotations

import os
from pathlib import Path

import gradio as gr

from engine import EngineError, InputError, LoraSpec
from engine.adapters.lora_presets import list_presets, load_preset, loras_dir, save_preset, store_upload
from engine.demo import FLUX_LORA_FILES, QWEN_LORA_FILES, QWEN_LORA_LAYOUT_FILES, WAN_LORA_FILES, demo_root
from engine.requests import LORA_FILE_TYPES, LORA_WEIGHT_MAX, LORA_WEIGHT_MIN, MAX_LORAS

from . import comfy_panel

SPEC_FIELDS = ("path", "weight", "enabled", "name", "repo_id", "filename", "revision")


# ---------------------------------------------------------------- pure edits
def specs(stack: list[dict] | None, field: str = "loras") -> tuple[LoraSpec, ...]:
    """The request's entries (the inspection summary stays in the UI); a malformed entry names its place."""
    if stack is not None and not isinstance(stack, list):
        raise InputError(field, "expects a list of LoRA entries")
    out = []
    for i, e in enumerate(stack or []):
        if not isinstance(e, dict):
            raise InputError(f"{field}[{i}]", "expects an entry like {\"path\": ..., \"weight\": 1.0}")
        out.append(LoraSpec(**{k: e[k] for k in SPEC_FIELDS if k in e}))
    return tuple(out)


def entries_of(field: str = "loras"):
    """An imported request's stack as the editor's entries (a ``comfy_io.Fill`` getter)."""
    return lambda request: [lora.to_dict() for lora in getattr(request, field, ())]


def add(stack: list[dict] | None, spec: LoraSpec, info: dict) -> list[dict]:
    stack = list(stack or [])
    if len(stack) >= MAX_LORAS:
        raise InputError("loras", f"the stack already holds {MAX_LORAS} LoRAs, the limit")
    for e in stack:
        same = (e.get("repo_id"), e.get("filename")) == (spec.repo_id, spec.filename) if spec.repo_id else \
            os.path.realpath(e.get("path") or "") == os.path.realpath(spec.path)
        if same or (e.get("info", {}).get("hash") and e["info"]["hash"] == info.get("hash")):
            raise InputError("loras", f"{spec.label} is already in the stack; change its strength instead")
    return stack + [{**spec.to_dict(), "info": info}]


def remove(stack: list[dict], index: int) -> list[dict]:
    return [e for i, e in enumerate(stack) if i != index]


def move(stack: list[dict], index: int, delta: int) -> list[dict]:
    stack = list(stack)
    j = index + delta
    if 0 <= index < len(stack) and 0 <= j < len(stack):
        stack[index], stack[j] = stack[j], stack[index]
    return stack


def update(stack: list[dict], index: int, **values) -> list[dict]:
    return [{**e, **values} if i == index else e for i, e in enumerate(stack)]


def entry_text(entry: dict) -> str:
    info = entry.get("info") or {}
    size = info.get("file_bytes", 0) / 2**20
    unknown = f" · ⚠️ {info['unknown_keys']} key(s) not applied (e.g. `{info['unknown_example']}`)" \
        if info.get("unknown_keys") else ""
    return (f"**{entry.get('name') or info.get('file', '?')}** · {info.get('layout', '?')} · rank "
            f"{info.get('rank', '?')} · {size:.2f} MiB · hits {info.get('hits', '?')}  \n"
            f"<small>targets: {info.get('targets', '?')}{unknown}</small>")


def folder_choices(engine) -> list[tuple[str, str]]:
    """LoRA files the app knows: its LoRA folder, and the demo LoRAs in demo mode."""
    found = []
    folder = loras_dir(engine.models_dir)
    if folder.is_dir():
        found += [(p.name, str(p)) for p in sorted(folder.iterdir()) if p.suffix.lower() in LORA_FILE_TYPES]
    if engine.demo:
        flux = [r for v in FLUX_LORA_FILES.values() for r in ((v,) if isinstance(v, str) else v)]
        for rel in (*QWEN_LORA_FILES, *QWEN_LORA_LAYOUT_FILES.values(), *flux, *WAN_LORA_FILES.values()):
            found.append((f"{Path(rel).name} (demo)", str(demo_root(engine.models_dir) / rel)))
    return found + engine.comfy.file_choices("lora")  # the ComfyUI folder's loras (and their yaml base paths)


def spec_from_source(engine, path: str = "", repo: str = "", upload: str | None = None) -> LoraSpec:
    if upload:
        return LoraSpec(path=store_upload(engine.models_dir, upload))
    repo = (repo or "").strip()
    if repo:
        repo_id, _, filename = repo.partition(":")
        return LoraSpec(repo_id=repo_id.strip(), filename=filename.strip())
    return LoraSpec(path=(path or "").strip())


def add_source(engine, stack, model_ref, path="", repo="", upload=None) -> list[dict]:
    spec = spec_from_source(engine, path, repo, upload)
    spec.validate("lora")
    return add(stack, spec, engine.inspect_lora(model_ref, spec))


# ---------------------------------------------------------------- widget
def _errors_to_gradio(fn):
    def call(*args):
        try:
            return fn(*args)
        except InputError as exc:
            raise gr.Error(exc.message, title="LoRA not added", print_exception=False) from None
        except EngineError as exc:
            raise gr.Error(str(exc), title="LoRA not added", print_exception=False) from None
    return call


def stack_editor(engine, prefix: str, model_box: gr.components.Component, model_ref_of,
                 title: str = "LoRA stack") -> gr.JSON:
    """Add (LoRA folder, upload, path, hub repo:file), reorder, enable, weigh, remove; save/load presets.
    ``model_ref_of(model_box's value)`` gives the ``ModelRef`` the hits are counted against."""
    stack = gr.JSON([], visible=False, label=title, elem_id=f"{prefix}-stack")
    gr.Markdown(f"**{title}**: strengths {LORA_WEIGHT_MIN:g}…{LORA_WEIGHT_MAX:g}; type a value for a finer one.")

    @gr.render(inputs=stack)
    def rows(entries):
        if not entries:
            gr.Markdown("*No LoRA yet: add one below. The run is then the base model.*",
                        elem_id=f"{prefix}-empty")
        for i, entry in enumerate(entries or []):
            with gr.Row(elem_id=f"{prefix}-row-{i}", equal_height=False, elem_classes=["lora-row"]):
                on = gr.Checkbox(entry.get("enabled", True), label="on", scale=0, min_width=70, interactive=True,
                                 elem_id=f"{prefix}-row-{i}-on")
                weight = gr.Number(entry.get("weight", 1.0), label="strength", minimum=LORA_WEIGHT_MIN,
                                   maximum=LORA_WEIGHT_MAX, step=0.05, scale=0, min_width=110, interactive=True,
                                   elem_id=f"{prefix}-row-{i}-weight")
                with gr.Column(scale=10):
                    gr.Markdown(entry_text(entry), elem_id=f"{prefix}-row-{i}-info")
                up = gr.Button("↑", size="sm", scale=0, min_width=40, elem_id=f"{prefix}-row-{i}-up")
                down = gr.Button("↓", size="sm", scale=0, min_width=40, elem_id=f"{prefix}-row-{i}-down")
                drop = gr.Button("✕", size="sm", scale=0, min_width=40, variant="stop",
                                 elem_id=f"{prefix}-row-{i}-remove")
            on.input(lambda s, v, i=i: update(s, i, enabled=bool(v)), [stack, on], stack, queue=False, api_visibility="private")
            weight.submit(_errors_to_gradio(lambda s, v, i=i: _weight(s, i, v)), [stack, weight], stack, api_visibility="private")
            weight.blur(_errors_to_gradio(lambda s, v, i=i: _weight(s, i, v)), [stack, weight], stack, api_visibility="private")
            up.click(lambda s, i=i: move(s, i, -1), stack, stack, queue=False, api_visibility="private")
            down.click(lambda s, i=i: move(s, i, 1), stack, stack, queue=False, api_visibility="private")
            drop.click(lambda s, i=i: remove(s, i), stack, stack, queue=False, api_visibility="private")

    with gr.Row(equal_height=True):
        pick = gr.Dropdown(folder_choices(engine), label="Add from the LoRA folder", scale=4,
                           elem_id=f"{prefix}-pick")
        comfy_panel.register_dropdown(pick, lambda: folder_choices(engine))
        add_pick = gr.Button("Add", scale=1, elem_id=f"{prefix}-add")
    with gr.Accordion("Other sources: upload, a local path, a hub repo", open=False):
        upload = gr.File(label="Upload into the app's LoRA folder", file_types=list(LORA_FILE_TYPES),
                         type="filepath")
        with gr.Row(equal_height=True):
            path = gr.Textbox(label="Local path", placeholder="/data/loras/style.safetensors", scale=4)
            add_path = gr.Button("Add path", scale=1)
        with gr.Row(equal_height=True):
            repo = gr.Textbox(label="Hub repo : file", placeholder="owner/repo:lora.safetensors", scale=4)
            add_repo = gr.Button("Add from hub", scale=1)
    with gr.Accordion("Save / load this stack as a preset", open=False):
        with gr.Row(equal_height=True):
            preset_name = gr.Textbox(label="Preset name", placeholder="my style", scale=3)
            save = gr.Button("Save stack", scale=1)
        with gr.Row(equal_height=True):
            presets = gr.Dropdown(list_presets(engine.models_dir), label="Saved stacks", scale=3)
            load = gr.Button("Load stack", scale=1)
    note = gr.Markdown("", elem_id=f"{prefix}-note")

    def added(kind):
        def handler(s, model, value):
            ref = model_ref_of(model)
            new = add_source(engine, s, ref, **{kind: value})
            return new, f"Added {new[-1].get('name') or new[-1]['info'].get('file')}.", gr.update(
                choices=folder_choices(engine))
        return _errors_to_gradio(handler)

    for button, box, kind in ((add_pick, pick, "path"), (add_path, path, "path"), (add_repo, repo, "repo")):
        button.click(added(kind), [stack, model_box, box], [stack, note, pick], api_visibility="private")
    upload.upload(added("upload"), [stack, model_box, upload], [stack, note, pick],
                    api_visibility="private")

    def save_stack(s, name):
        saved = save_preset(engine.models_dir, name, specs(s))
        clash = "" if saved.stem == (name or "").strip() else f" (a different stack already has the name {name!r})"
        return f"Saved as `{saved.name}`{clash}.", gr.update(choices=list_presets(engine.models_dir), value=saved.stem)

    def load_stack(name, model):
        if not name:
            raise InputError("preset", "pick a saved stack first")
        ref = model_ref_of(model)
        entries: list[dict] = []
        for spec in load_preset(engine.models_dir, name):
            entries = add(entries, spec, engine.inspect_lora(ref, spec))
        return entries, f"Loaded `{name}` ({len(entries)} LoRA(s))."

    save.click(_errors_to_gradio(save_stack), [stack, preset_name], [note, presets], api_visibility="private")
    load.click(_errors_to_gradio(load_stack), [presets, model_box], [stack, note], api_visibility="private")
    return stack


def _weight(stack, index, value) -> list[dict]:
    if value is None or not LORA_WEIGHT_MIN <= float(value) <= LORA_WEIGHT_MAX:
        raise InputError("weight", f"strength must be between {LORA_WEIGHT_MIN:g} and {LORA_WEIGHT_MAX:g}")
    return update(stack, index, weight=float(value))
