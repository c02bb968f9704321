"""Quantize a diffusers model with SDNQ and save a folder that diffusers (and this app) load back.

The work is sdnq's: the pipeline is loaded with a ``PipelineQuantizationConfig`` that maps each
chosen component to an SDNQ config, then saved with ``save_pretrained``; the saved
``config.json`` files carry ``quant_method="sdnq"``, so a plain ``from_pretrained`` restores it.
"""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

from engine.errors import Cancelled, InputError, ModelLoadError
from engine.models import check_trusted, read_model_index
from engine.requests import QuantizeRequest
from engine.result import Result


def folder_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def quantizable_components(index: dict) -> dict[str, str]:
    """component -> library, for the weight-holding components a model_index.json lists."""
    skip = {"scheduler", "tokenizer", "tokenizer_2", "tokenizer_3", "feature_extractor", "image_processor"}
    return {
        name: spec[0]
        for name, spec in index.items()
        if not name.startswith("_") and isinstance(spec, list) and len(spec) == 2 and spec[0] and name not in skip
    }


def sdnq_config(library: str, req: QuantizeRequest):
    """diffusers models take diffusers' SDNQConfig, transformers models take sdnq's own."""
    options = {
        "weights_dtype": req.weights_dtype,
        "group_size": req.group_size,
        "use_svd": req.use_svd,
        "svd_rank": req.svd_rank,
        "add_skip_keys": req.keep_sensitive_layers,
    }
    if library == "diffusers":
        import diffusers

        return diffusers.SDNQConfig(**options)
    import sdnq

    return sdnq.SDNQConfig(**options)


def quantization_config(index: dict, req: QuantizeRequest):
    from diffusers import PipelineQuantizationConfig

    available = quantizable_components(index)
    for i, comp in enumerate(req.components):
        if comp not in available:
            raise InputError(
                f"components[{i}]", f"this model has no component {comp!r}; it has {', '.join(sorted(available))}"
            )
    return PipelineQuantizationConfig(quant_mapping={c: sdnq_config(available[c], req) for c in req.components})


def output_dir(engine, req: QuantizeRequest) -> Path:
    return engine.models_dir / "sdnq" / req.output_name


def prepare(engine, req: QuantizeRequest, progress, cancel) -> None:
    engine.store.resolve(req.source, progress=engine.download_progress(progress), cancel=cancel)


def run(engine, req: QuantizeRequest, progress, cancel) -> Result:
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    source = engine.store.resolve(req.source, progress=engine.download_progress(progress), cancel=cancel)
    index = read_model_index(source)
    check_trusted(source, index)
    config = quantization_config(index, req)
    out = output_dir(engine, req)
    if out.exists():
        raise InputError("output_name", f"{out} already exists; pick another name or delete that folder")
    before = {c: folder_bytes(source / c) for c in req.components}
    need = folder_bytes(source)
    out.parent.mkdir(parents=True, exist_ok=True)
    free = shutil.disk_usage(out.parent).free
    if need > free:
        raise ModelLoadError(f"not enough disk space in {out.parent}: need about {need / 2**30:.1f} GiB, "
                             f"{free / 2**30:.1f} GiB free")

    if cancel is not None and cancel.is_set():
        raise Cancelled()
    progress(0.1, f"quantizing {', '.join(req.components)} to {req.weights_dtype}")
    # Written under a temporary name and renamed at the end, so a failed or killed run
    # never leaves a half-written folder that looks like a finished model.
    partial = out.parent / f".{req.output_name}.partial-{os.getpid()}"
    shutil.rmtree(partial, ignore_errors=True)
    try:
        with engine.store.transient_pipeline(source, index["_class_name"], tag="quantize",
                                             quantization_config=config) as pipe:
            timings["quantize"] = time.perf_counter() - t0
            if cancel is not None and cancel.is_set():  # between quantizing and saving: nothing written yet
                raise Cancelled()
            progress(0.7, "saving")
            pipe.save_pretrained(str(partial), safe_serialization=True)
        os.replace(partial, out)
    finally:
        shutil.rmtree(partial, ignore_errors=True)
    timings["save"] = time.perf_counter() - t0 - timings.get("quantize", 0.0)
    after = {c: folder_bytes(out / c) for c in req.components}
    sizes = {c: {"before": before[c], "after": after[c]} for c in req.components}
    lines = [f"{c}: {b['before'] / 2**20:.2f} MiB -> {b['after'] / 2**20:.2f} MiB ({b['after'] / max(b['before'], 1):.0%})"
             for c, b in sizes.items()]
    return Result(
        request=req, files=[str(out)], timings=timings,
        metadata={"output": str(out), "sizes": sizes, "summary": "\n".join(lines),
                  "total_before": folder_bytes(source), "total_after": folder_bytes(out)},
    )
