"""Generate with an SDNQ-quantized model from the catalog, a local folder, or the demo stand-in."""

from __future__ import annotations

import shutil
import time

from engine.errors import InputError, ModelLoadError, OutOfBudgetError
from engine.jobs import text2image
from engine.requests import CatalogRequest, ModelRef
from engine.result import Result


def compiler_problem(device: str) -> str | None:
    """Why torch.compile cannot work here, or None. Checked first so a missing compiler is a
    message and an eager run, never a crash in the middle of a generation (seed 001, issue #12)."""
    if device.startswith("cuda"):
        try:
            import triton  # noqa: F401
        except ImportError:
            return "torch.compile on a GPU needs Triton (pip install triton); running without compile"
        return None
    if not any(shutil.which(c) for c in ("c++", "g++", "clang++", "cl")):
        return "torch.compile needs a C++ compiler (g++ or clang; MSVC 'cl' on Windows); running without compile"
    return None


def resolve_model(engine, req: CatalogRequest) -> tuple[ModelRef, dict]:
    """The ModelRef to load and the catalog facts about it (empty for a plain folder)."""
    if not req.entry:
        return req.model, {}
    from engine.catalog.presets import catalog_entry, load_catalog

    entry = catalog_entry(load_catalog(), req.entry)
    facts = {"entry": entry.id, "repo_id": entry.repo_id, "architecture": entry.architecture,
             "quantization": entry.quantization, "vram_gb": entry.vram_gb}
    if not entry.supported or not entry.pipeline:
        raise InputError("entry", f"{entry.id} has no diffusers pipeline in this version ({entry.notes})")
    if entry.task != "text_to_image":
        raise InputError("entry", f"{entry.id} is a {entry.task.replace('_', '-')} model; this tab makes images "
                                  "from text (image-to-video models run in the Image to video tab)")
    if engine.demo:
        if not entry.demo:
            raise InputError("entry", f"demo mode has no tiny stand-in for {entry.architecture} models; "
                                      "pick a Flux entry or start without --demo")
        from engine.demo import demo_path

        return ModelRef(path=str(demo_path(engine.models_dir, entry.demo)), dtype=req.model.dtype), facts
    check_fits(engine, entry.vram_bytes, req)
    return ModelRef(repo_id=entry.repo_id, dtype=req.model.dtype), facts


def check_fits(engine, vram_bytes: int, req: CatalogRequest) -> None:
    budget = engine.memory.effective_budget()
    if budget is None or req.swap.mode != "none":
        return
    if vram_bytes > budget:
        raise OutOfBudgetError(
            f"{req.entry} needs about {vram_bytes / 2**30:.0f} GB of VRAM and the budget here is "
            f"{budget / 2**30:.0f} GB with everything resident; pick a memory mode (model offload, adaptive block "
            "swap) or a smaller quantization (uint4 entries)"
        )


def apply_options(pipe, req: CatalogRequest, device: str, warnings: list[str]) -> None:
    transformer = getattr(pipe, "transformer", None) or getattr(pipe, "unet", None)
    if req.use_quantized_matmul and transformer is not None:
        if not device.startswith("cuda"):
            warnings.append("int8 quantized matmul needs a CUDA GPU with Triton; running dequantized matmul")
        else:
            from sdnq.loader import apply_sdnq_options_to_model

            setattr(pipe, "transformer" if hasattr(pipe, "transformer") else "unet",
                    apply_sdnq_options_to_model(transformer, use_quantized_matmul=True))
    if req.use_torch_compile and transformer is not None:
        problem = compiler_problem(device)
        if problem:
            warnings.append(problem)
        elif not getattr(transformer, "_compiled_by_app", False):
            transformer.compile()
            transformer._compiled_by_app = True


def plan_ref(engine, req: CatalogRequest) -> ModelRef:
    return resolve_model(engine, req)[0]


def prepare(engine, req: CatalogRequest, progress, cancel) -> None:
    ref, _ = resolve_model(engine, req)
    engine.store.resolve(ref, progress=engine.download_progress(progress), cancel=cancel)
    text2image.loras.fetch_files(req.loras, progress, cancel)


def run(engine, req: CatalogRequest, progress, cancel) -> Result:
    timings: dict[str, float] = {}
    warnings: list[str] = []
    t0 = time.perf_counter()
    ref, facts = resolve_model(engine, req)
    progress(0.0, f"loading {facts.get('entry') or ref.label}")
    pipe = engine.store.load_pipeline(ref, progress=engine.download_progress(progress), cancel=cancel)
    transformer = getattr(pipe, "transformer", None)
    if transformer is not None and not any(type(m).__name__.startswith("SDNQ") for m in transformer.modules()):
        warnings.append(f"{ref.label} is not SDNQ-quantized; it runs at full precision")
    apply_options(pipe, req, engine.run_device(req.swap), warnings)
    if req.negative_prompt.strip() and "negative_prompt" not in text2image.accepted_kwargs(pipe, {"negative_prompt": 1}):
        warnings.append(f"{type(pipe).__name__} takes no negative prompt; it was not used")
    timings["load"] = time.perf_counter() - t0
    metadata = {"pipeline": type(pipe).__name__, "warnings": warnings, **facts}
    try:
        images = text2image.generate(engine, pipe, req, progress, cancel, timings, metadata, ref.label)
    except RuntimeError as exc:  # torch.compile fails inside the first call, not at .compile()
        if "compile" in str(exc).lower() or "inductor" in str(exc).lower():
            raise ModelLoadError(f"torch.compile failed ({str(exc).splitlines()[0]}); untick torch.compile") from exc
        raise
    return Result(request=req, images=images, timings=timings, metadata=metadata)


def plan_extra(engine, req: CatalogRequest, elem: int):
    """The stack's LoRA layers, inside the transformer's blocks (they stream with them)."""
    return text2image.loras.plan_extra({"transformer": req.loras}, elem)
