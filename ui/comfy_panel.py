"""The ComfyUI models folder in the page: a settings field (folder + extra_model_paths.yaml) above the tabs, and
per tab a picker listing what the folder holds for that tab (name, size, architecture, dtype, why a file cannot
be used). The tabs' model dropdowns show the folder's files next to the hub choices; every dropdown registered
here is refreshed when the folder changes. The engine does the indexing (``engine.comfy``); nothing here reads
a weight file."""

from __future__ import annotations

import contextvars
import html
from dataclasses import dataclass, field

import gradio as gr

from engine import InputError, ModelRef
from engine.comfy_models import ref_from_choice

from . import sessions

TABLE_HEADERS = ["file (ComfyUI name)", "size", "architecture", "dtype", "note"]
_REGISTRY: contextvars.ContextVar[Registry | None] = contextvars.ContextVar("comfy_registry", default=None)


@dataclass
class Registry:
    """Dropdowns (with their fixed choices) and tables to refresh when the folder is set or rescanned."""

    dropdowns: list[tuple[gr.Dropdown, object, list]] = field(default_factory=list)  # (widget, choices fn, base)
    tables: list[tuple[gr.Dataframe, str]] = field(default_factory=list)
    folder: gr.Textbox | None = None
    config: gr.Textbox | None = None
    use: gr.Button | None = None
    rescan: gr.Button | None = None
    status: gr.Markdown | None = None
    policy: sessions.FolderPolicy = field(default_factory=sessions.FolderPolicy)
    roots: list = field(default_factory=list)  # where a folder set from the page may be


def model_ref(value, pieces=(), field: str = "model") -> ModelRef:
    """A model dropdown value (repo id or ComfyUI choice) and picked VAE / text encoder files -> ModelRef."""
    return ref_from_choice(value or "", pieces or (), field)


def status_text(engine) -> str:
    index = engine.comfy.index()
    if index is None:
        return "No ComfyUI models folder set. Give its `models` folder (or the ComfyUI folder) and/or an `extra_model_paths.yaml`."
    lines = [f"**{html.escape(index.summary())}** · read {index.stats['read']} headers, "
             f"{index.stats['scanned'] - index.stats['read']} from the cache"]
    lines += [f"- {html.escape(p)}" for p in index.problems[:12]]
    if len(index.problems) > 12:
        lines.append(f"- … and {len(index.problems) - 12} more")
    return "\n".join(lines)


def model_choices(engine, tab: str, base: list) -> list:
    return list(base) + engine.comfy.model_choices(tab)


def model_dropdown(engine, tab: str, models: dict[str, str], repos=None, **kwargs) -> gr.Dropdown:
    """A tab's model picker: ``models`` (repo id -> label; ``repos``, the ones to offer, all by default; in demo
    mode each marked as a tiny stand-in) and then the tab's files of the ComfyUI folder, refreshed with it."""
    repos = tuple(repos or models)
    suffix = " (tiny demo stand-in)" if engine.demo else ""
    base = [(models[repo] + suffix, repo) for repo in repos]
    dropdown = gr.Dropdown(model_choices(engine, tab, base), value=repos[0], label="Model", **kwargs)
    register_dropdown(dropdown, lambda: engine.comfy.model_choices(tab), base)
    return dropdown


def register_dropdown(dropdown: gr.Dropdown, choices, base: list | None = None) -> None:
    """Refresh ``dropdown``'s choices (``choices()`` + ``base``) whenever the folder changes."""
    registry = _REGISTRY.get()
    if registry is not None:
        registry.dropdowns.append((dropdown, choices, list(base or [])))


def tab_picker(engine, tab: str, prefix: str, pieces: bool = True, files: dict[str, str] | None = None) -> dict:
    """An accordion listing what the folder holds for ``tab``; with ``pieces`` a multiselect of VAE / text
    encoder files to use instead of the model repo's own, and one dropdown per ``files`` entry (kind -> label,
    e.g. ``{"ip_adapter": "IP-Adapter file"}``; empty = the tab's default). Returns the widgets by name."""
    out = {}
    with gr.Accordion("ComfyUI models folder", open=False, elem_id=f"{prefix}-comfy"):
        gr.Markdown("Files from the folder set in **ComfyUI models folder** at the top. Models appear in the "
                    "Model list above; configs and any piece not picked here come from the model's repo.")
        if pieces:
            out["pieces"] = gr.Dropdown(engine.comfy.piece_choices(tab), value=[], multiselect=True,
                                        label="VAE / text encoders from the folder", info="empty = the repo's own",
                                        elem_id=f"{prefix}-comfy-pieces")
            register_dropdown(out["pieces"], lambda: engine.comfy.piece_choices(tab))
        for kind, label in (files or {}).items():
            base = [("— the default", "")]
            out[kind] = gr.Dropdown(base + engine.comfy.file_choices(kind), value="", label=label,
                                    elem_id=f"{prefix}-comfy-{kind}")
            register_dropdown(out[kind], lambda kind=kind: engine.comfy.file_choices(kind), base)
        table = gr.Dataframe(value=engine.comfy.tab_rows(tab) or None, headers=TABLE_HEADERS, interactive=False,
                             wrap=True, elem_id=f"{prefix}-comfy-files", label="Found for this tab")
        registry = _REGISTRY.get()
        if registry is not None:
            registry.tables.append((table, tab))
    return out


def settings(engine) -> Registry:
    """The settings field above the tabs; call ``wire(registry)`` after the tabs are built."""
    policy = sessions.folder_policy()  # every session shares this folder: an administrator's setting
    registry = Registry(policy=policy, roots=sessions.allowed_roots(engine, policy, (engine.comfy.models_dir,
                                                                                     engine.comfy.config)))
    _REGISTRY.set(registry)
    with gr.Accordion("ComfyUI models folder", open=False, elem_id="comfy-settings"):
        with gr.Row():
            registry.folder = gr.Textbox(engine.comfy.models_dir, label="ComfyUI models folder", scale=3,
                                         placeholder="/path/to/ComfyUI/models", elem_id="comfy-folder",
                                         interactive=policy.editable)
            registry.config = gr.Textbox(engine.comfy.config, label="extra_model_paths.yaml (optional)", scale=3,
                                         placeholder="/path/to/ComfyUI/extra_model_paths.yaml", elem_id="comfy-yaml",
                                         interactive=policy.editable)
            registry.use = gr.Button("Use folder", scale=1, elem_id="comfy-use", visible=policy.editable)
            registry.rescan = gr.Button("Rescan", scale=1, elem_id="comfy-rescan")
        if not policy.editable:
            gr.Markdown(f"Set at launch (`--comfy-models`, `--comfy-config`): {locked_text(policy)}",
                        elem_id="comfy-locked")
        registry.status = gr.Markdown(status_text(engine), elem_id="comfy-status")
    return registry


def locked_text(policy: sessions.FolderPolicy) -> str:
    return (f"the page cannot change the ComfyUI models folder, which every visitor shares, because "
            f"{policy.why_locked}; start the app with --comfy-models (or --folder-settings page) to change it")


def wire(engine, registry: Registry) -> None:
    """Point the engine at the folder (or rescan it) and refresh every registered dropdown and table."""
    _REGISTRY.set(None)
    outputs = [registry.status] + [d for d, _, _ in registry.dropdowns] + [t for t, _ in registry.tables]

    def refreshed() -> list:
        updates = [status_text(engine)]
        for _, choices, base in registry.dropdowns:
            updates.append(gr.update(choices=base + choices()))
        for _, tab in registry.tables:
            updates.append(gr.update(value=engine.comfy.tab_rows(tab) or None))
        return updates

    def use(folder: str, config: str) -> list:
        if not registry.policy.editable:
            raise gr.Error(f"ComfyUI models folder: {locked_text(registry.policy)}.", title="ComfyUI models folder",
                           print_exception=False)
        folder, config = (folder or "").strip(), (config or "").strip()
        if folder or config:
            from engine.comfy_models.folders import check_given

            try:
                check_given(folder, config)
                sessions.check_folder_setting(folder, config, registry.roots)
            except InputError as exc:
                label = registry.config.label if exc.field == "comfy_config" else registry.folder.label
                raise gr.Error(f"{label}: {exc.message}", title="ComfyUI models folder", print_exception=False) from None
            except OSError as exc:  # a name too long, a path through a file...
                raise gr.Error(f"{registry.folder.label}: cannot use this path ({exc.strerror or exc})",
                               title="ComfyUI models folder", print_exception=False) from None
        engine.comfy.configure(folder, config)
        return refreshed()

    registry.use.click(use, [registry.folder, registry.config], outputs, api_name="comfy_models_set",
                       concurrency_id="controls", concurrency_limit=None)
    registry.rescan.click(refreshed, None, outputs, api_name="comfy_models_rescan", concurrency_id="controls",
                          concurrency_limit=None)
