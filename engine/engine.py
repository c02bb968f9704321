"""The engine: validates a request, takes the device lock, runs the job, returns a Result."""

from __future__ import annotations

import gc
import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path

from engine.errors import EngineError, InputError
from engine.requests import Request
from engine.result import Result

log = logging.getLogger(__name__)
DEFAULT_MODELS_DIR = Path("models")
DEFAULT_OUTPUTS_DIR = Path("outputs")


def _no_progress(fraction: float, message: str) -> None:
    pass


class Engine:
    """One engine per accelerator. Holds no global state, so several can live in one process.

    Constructing one imports neither torch nor diffusers: the device, the memory manager and the model store come up
    on first use (``boot()``), so the app can build its page and answer its first request before torch has loaded.
    """

    def __init__(
        self,
        device: str | None = None,
        models_dir: str | Path | None = None,
        demo: bool = False,
        outputs_dir: str | Path | None = None,
        budget_bytes: int | None = None,
        offload_device: str = "cpu",
        output_text: Callable[[Request, bool], dict[str, str]] | None = None,
    ):
        """``output_text(request, demo)`` gives the text chunks every saved PNG (and mp4/webm tag set) carries besides
        the request: the app passes ``comfy_export.png_text`` so outputs open in ComfyUI. The engine itself never
        imports the exporter (it sits above the engine)."""
        self._device_arg = device
        self._offload_device, self._budget_bytes = offload_device, budget_bytes
        self._boot_lock = threading.Lock()
        self._parts: tuple | None = None  # (device, memory, store) once booted
        self.models_dir = Path(models_dir or DEFAULT_MODELS_DIR)
        self.outputs_dir = Path(outputs_dir or DEFAULT_OUTPUTS_DIR)
        self.demo = demo
        from engine.files.atomic import recover  # what a crash mid-save left: finished, or removed

        recover(self.outputs_dir)
        self.output_text = output_text
        from engine.comfy_models import ComfyModels  # a ComfyUI models folder, once configured (--comfy-models)

        self.comfy = ComfyModels(cache_file=self.models_dir / ".cache" / "comfy-index.json")
        self._device_lock = threading.Lock()
        self._memory_notes: list[dict] = []  # what each memory session of the current run reported

    def boot(self) -> Engine:
        """Import torch and bring up the device, the memory manager and the model store (once; thread-safe).
        Raises RuntimeError/ValueError for a device this machine does not have (``cuda:7`` on one GPU)."""
        if self._parts is None:
            with self._boot_lock:
                if self._parts is None:
                    from engine.memory import MemoryManager
                    from engine.memory.devices import default_compute_device
                    from engine.models import ModelStore

                    device = self._device_arg or default_compute_device()
                    memory = MemoryManager(device, offload_device=self._offload_device, budget_bytes=self._budget_bytes)
                    self._parts = (device, memory, ModelStore(memory, self.models_dir, demo=self.demo))
        return self

    @property
    def booted(self) -> bool:
        return self._parts is not None

    @property
    def device(self) -> str:
        return self.boot()._parts[0]

    @property
    def memory(self):
        return self.boot()._parts[1]

    @property
    def store(self):
        return self.boot()._parts[2]

    def output_text_for(self, request: Request) -> dict[str, str]:
        """The extra text chunks for ``request``'s files; none if the host's writer fails, which must never cost the
        run its output."""
        if self.output_text is None:
            return {}
        try:
            return self.output_text(request, self.demo)
        except Exception as exc:  # an exporter bug or an inexpressible request: the output still gets saved
            log.warning("no workflow metadata for this output: %s", exc)
            return {}

    def inspect_lora(self, model, spec) -> dict:
        """Rank, targets, size and layer hits of one LoRA file for ``model``, from headers only (never a download):
        what the LoRA editor shows beside each row."""
        from engine.jobs.lora_stack import inspect

        return inspect(self, model, spec)

    @property
    def busy(self) -> bool:
        return self._device_lock.locked()

    def prepare(self, request: Request, progress=None, cancel: threading.Event | None = None):
        """Validate and fetch what the run needs (downloads), without the device lock. ``run`` calls it
        too; a UI on a shared GPU (ZeroGPU) calls it first so that downloads never hold a GPU."""
        if not isinstance(request, Request):
            raise InputError("request", f"expected a request object, got {type(request).__name__}")
        request.validate()
        from engine import jobs

        runner = jobs.runner_for(request)
        prepare = getattr(runner, "prepare", None)
        if prepare is not None:
            prepare(self, request, progress or _no_progress, cancel)
        return runner

    def plan(self, request: Request):
        """What the run will do with the compute device (mode, resident blocks, group size, predicted peak and a
        one-line explanation), from configs and safetensors headers only: nothing is loaded."""
        from engine.plan import plan_request

        if not isinstance(request, Request):
            raise InputError("request", f"expected a request object, got {type(request).__name__}")
        swap = getattr(request, "swap", None)
        if swap is not None:
            swap.validate("swap")
        return plan_request(self, request)

    def default_swap(self, job: str):
        """The memory settings to start with for ``job`` ("text_to_image", "i2v") on this machine, from
        ``presets/vram_profiles.json`` for the detected GPU, and a line saying why."""
        from engine.catalog.presets import load_vram_profiles, profile_for_vram
        from engine.requests import SwapSettings

        if not self.memory.compute_device.startswith("cuda"):
            return SwapSettings(), ("No GPU found: runs use the CPU. The modes still work (and give "
                                    "the same pixels) but only save memory on a GPU")
        import torch

        from engine.memory.devices import cuda_stats

        # the device's size only: a full snapshot would read every loaded tensor for one number
        total = cuda_stats(torch.device(self.memory.compute_device).index or 0)["total"]
        profile = profile_for_vram(load_vram_profiles(), total)
        kind = job if job in ("text_to_image", "i2v") else "text_to_image"
        try:
            settings = profile.swap_for(kind)
        except InputError:
            settings = SwapSettings()
        return settings, f"GPU with {total / 2**30:.0f} GiB: the {profile.label} profile"

    def run_device(self, swap) -> str:
        """Where a run with these memory settings computes (cpu_only keeps it off the GPU)."""
        return "cpu" if swap is not None and swap.mode == "cpu_only" else self.device

    def note_memory_session(self, info, stats: dict, trace) -> None:
        """Called by ``run_denoise`` after each pipeline call: the figures go into the run's result."""
        note = {"mode": info.mode, "device": info.device, "reused_hooks": info.reused, "notes": info.notes,
                "layouts": {k: {"resident": v.resident, "groups": len(v.groups)} for k, v in info.layouts.items()},
                **stats}
        if trace is not None:
            path = self.outputs_dir / "traces" / f"swap-trace-{time.strftime('%Y%m%d-%H%M%S')}-{len(self._memory_notes)}.csv"
            note["trace_csv"] = str(trace.write_csv(path))
            note["trace_summary"] = trace.summary()
        self._memory_notes.append(note)

    def run(self, request: Request, progress=None, cancel: threading.Event | None = None) -> Result:
        progress = progress or _no_progress
        runner = self.prepare(request, progress, cancel)
        plan = None
        if getattr(request, "swap", None) is not None:
            from engine.plan import check_budget

            try:
                plan = self.plan(request)
            except InputError:
                raise
            except (OSError, ValueError, KeyError) as exc:  # an unreadable header must not stop the run itself
                log.warning("no memory plan for this run: %s", exc)
            if plan is not None:
                check_budget(request, plan)
        import torch

        from engine.memory import reset_peak
        from engine.outputs import save_images

        with self._device_lock:  # one job on the accelerator at a time
            reset_peak()
            self._memory_notes = []
            t0 = time.perf_counter()
            try:
                result = runner.run(self, request, progress, cancel)
            except torch.OutOfMemoryError as exc:
                from engine.jobs.oom import free_after_failure, out_of_memory

                free_after_failure(self, exc)  # the next run starts as on a fresh engine
                error = out_of_memory(self, request, exc)
                del exc
                raise error from None
            if result.images:
                text = self.output_text_for(request)
                result.files.extend(save_images(result.images, self.outputs_dir, request, text=text))
            result.timings["total"] = time.perf_counter() - t0
            result.memory = self.memory.snapshot()
            self._attach_memory_notes(result, plan)
            progress(1.0, "done")
            return result

    def _attach_memory_notes(self, result: Result, plan) -> None:
        notes = self._memory_notes
        if not notes and plan is None:
            return
        summary = {
            "mode": notes[-1]["mode"] if notes else getattr(plan, "mode", ""),
            "bytes_moved": sum(n["bytes_moved"] for n in notes),
            "peak_compute_bytes": max((n["peak_compute_bytes"] for n in notes), default=0),
            "sessions": notes,
        }
        import torch

        if torch.cuda.is_available() and self.device.startswith("cuda"):
            index = torch.device(self.device)
            summary["cuda_peak_allocated"] = int(torch.cuda.max_memory_allocated(index))
            # what the card really had to give: allocated hides blocks freed before pending stream work completes
            summary["cuda_peak_reserved"] = int(torch.cuda.max_memory_reserved(index))
        if plan is not None:
            summary["plan"] = plan.as_dict()
        result.metadata["memory"] = summary
        warnings = [w for n in notes for w in n["notes"]]
        if warnings:
            result.metadata.setdefault("warnings", []).extend(dict.fromkeys(warnings))
        for n in notes:
            if "trace_csv" in n:
                result.files.append(n["trace_csv"])

    def unload_all(self) -> int:
        """Drop every loaded model (frees VRAM and RAM); refused while a run holds the device.
        Returns how many modules were released."""
        if not self._device_lock.acquire(blocking=False):
            raise EngineError("a run is in progress; unload the models when it has finished")
        from engine.memory.devices import free_cached

        try:
            count = len(self.memory.names())
            self.store.unload_all()
            gc.collect()
            free_cached()
            return count
        finally:
            self._device_lock.release()

    @staticmethod
    def download_progress(progress):
        """Adapt the hub's byte progress to the run's (fraction, message) progress."""

        def on_bytes(done: int, total: int | None, message: str = "") -> None:
            if total:
                progress(min(done / total, 1.0), f"downloading {done / 2**20:.0f}/{total / 2**20:.0f} MiB {message}")
            else:
                progress(0.0, f"downloading {done / 2**20:.0f} MiB {message}")

        return on_bytes
