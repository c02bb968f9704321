"""Download and Verify (the SDNQ catalog tab's second part): ``catalog_service.download`` / ``verify`` with a byte
progress bar and their own cancel. Downloads run in their own concurrency group, so they never wait behind a GPU
run (nor a run behind them)."""

from __future__ import annotations

import time
from collections.abc import Callable

import gradio as gr

from engine import Cancelled, InputError
from engine.catalog import service as catalog_service
from engine.catalog.presets import CatalogEntry
from engine.hub import download as engine_hub

from ..cancel import CancelSlots
from ..components import CONTROLS
from ..errors import run_with_feedback
from ..run_handler import threadsafe
from .catalog_text import bytes_text, entry_details, progress_text

DOWNLOADS = "downloads"  # concurrency group of the download button: never the GPU pool
DOWNLOAD_LIMIT = 2  # downloads at once, across all sessions
DOWNLOAD_LABELS = {"entry": "Catalog entry"}


def byte_progress(progress: gr.Progress) -> Callable[[int, int, str], None]:
    """The hub's ``progress(done_bytes, total_bytes, message)`` on a ``gr.Progress`` bar, in bytes."""

    def report(done: int, total: int | None, message: str = "") -> None:
        fraction = min(done / total, 1.0) if total else 0.0
        text = progress_text(done, total)
        if message and not message.startswith(("Downloading", "Verifying")):  # "retrying (2/5)", a restart: say why
            text += f" · {message}"
        progress(fraction, desc=text)

    return threadsafe(report)


def cache_of(entry: CatalogEntry) -> engine_hub.CacheState | None:
    try:
        return engine_hub.cache_state(entry.repo_id)
    except Exception:  # a broken cache folder must not break the page
        return None


def download_panel(engine, entry: gr.Dropdown, details: gr.Markdown, table: gr.Dataframe, filters: list,
                   refresh_table: Callable) -> None:
    """The Download / Verify column beside the picked entry (widgets in the caller's layout, and their wiring).
    ``refresh_table(*filter values)`` redraws the table after a download."""
    download_slots = CancelSlots()
    # taller than a status line: the byte progress bar is drawn over it
    download_status = gr.Markdown("", elem_classes=["run-status"], elem_id="catalog-download-status",
                                  min_height=72, render=False)
    with gr.Row():
        download = gr.Button("Download", variant="secondary", scale=3, elem_id="catalog-download")
        download_cancel = gr.Button("Cancel download", variant="stop", scale=2, min_width=90,
                                    elem_id="catalog-download-cancel")
    with gr.Row():
        verify = gr.Button("Verify", variant="secondary", size="sm", scale=2, elem_id="catalog-verify")
        refetch = gr.Checkbox(label="re-fetch bad files", value=False, scale=3, elem_id="catalog-refetch",
                              info="sha256 of every cached file against the hub's")
    download_status.render()
    gr.Markdown("Downloads go to the Hugging Face cache and resume where they stopped: press Download again "
                "after a cancel or a lost connection. They run beside generation, not in its queue.",
                elem_classes=["catalog-hint"])

    def run_download(entry_id, architecture, quantization, fits_gpu, text, request: gr.Request,
                     progress=gr.Progress()):
        if not (entry_id or "").strip():
            raise InputError("entry", "pick an entry in the table or the dropdown")
        e = catalog_service.entry(entry_id)
        t0 = time.perf_counter()
        with download_slots.held(request) as cancel:
            # no status text while it runs: the byte progress bar is drawn over the status line
            progress(0.0, desc=f"Checking {e.repo_id}")
            try:
                catalog_service.download(e.id, byte_progress(progress), cancel)
            except Cancelled:
                cache = cache_of(e)
                kept = bytes_text(cache.bytes_on_disk if cache else 0)
                gr.Warning(f"Download of {e.id} cancelled; {kept} kept. Press Download again to resume.",
                           title="Cancelled")
                yield {
                    download_status: f"Cancelled: {kept} of {e.id} kept. Press **Download** again to resume.",
                    table: refresh_table(architecture, quantization, fits_gpu, text),
                    details: entry_details(e, cache, engine.demo),
                }
                return
        cache = cache_of(e)
        size = bytes_text(cache.bytes_on_disk if cache else 0)
        yield {
            download_status: f"✅ **{e.id}** is downloaded ({size} in {time.perf_counter() - t0:.1f} s).",
            table: refresh_table(architecture, quantization, fits_gpu, text),
            details: entry_details(e, cache, engine.demo),
        }

    def run_verify(entry_id, repair, architecture, quantization, fits_gpu, text, request: gr.Request,
                   progress=gr.Progress()):
        if not (entry_id or "").strip():
            raise InputError("entry", "pick an entry in the table or the dropdown")
        e = catalog_service.entry(entry_id)
        with download_slots.held(request) as cancel:  # "Cancel download" stops a verify too
            progress(0.0, desc=f"Verifying {e.repo_id}")
            try:
                report = catalog_service.verify(e.id, bool(repair), byte_progress(progress), cancel)
            except Cancelled:
                yield {download_status: f"Verify of {e.id} cancelled."}
                return
        mark = "✅" if report.ok else "⚠️"
        yield {
            download_status: f"{mark} " + report.summary().replace("\n", "\n\n"),
            table: refresh_table(architecture, quantization, fits_gpu, text),
            details: entry_details(e, cache_of(e), engine.demo),
        }

    verify.click(
        run_with_feedback(run_verify, download_status, {**DOWNLOAD_LABELS, "repair": "re-fetch bad files"}),
        [entry, refetch, *filters], [download_status, table, details], api_name="catalog_verify",
        concurrency_limit=DOWNLOAD_LIMIT, concurrency_id=DOWNLOADS, show_progress_on=[download_status],
    )

    def cancel_download(request: gr.Request):
        if download_slots.cancel(request):
            return "Cancelling the download: what arrived is kept…"
        return "Nothing to cancel: no download of yours is in progress."

    download.click(
        run_with_feedback(run_download, download_status, DOWNLOAD_LABELS), [entry, *filters],
        [download_status, table, details], api_name="catalog_download", concurrency_limit=DOWNLOAD_LIMIT,
        concurrency_id=DOWNLOADS, show_progress_on=[download_status],
    ).then(  # after a failure too: a partial download shows as "partial"
        refresh_table, filters, table, concurrency_limit=None, concurrency_id=CONTROLS, show_progress="hidden",
        api_visibility="private",
    )
    download_cancel.click(cancel_download, None, download_status, concurrency_limit=None, concurrency_id=CONTROLS,
                          show_progress="hidden", api_name="catalog_download_cancel")
