"""What an import could not carry over, in words: every node on the path to an output that the request cannot
express is named with its settings ("not imported: node 12 ModelSamplingSD3 shift=8.0"), and every file the graph
names that is not in the folders ("missing LoRA file: x.safetensors (node 7), put it in ComfyUI/models/loras").

The rule, so that nothing is dropped silently: a reachable node is either mapped (its type is one the importer
reads, with its settings equal to what the request can hold), safe to ignore (``SAFE_TO_IGNORE``), or it is in
the warnings."""

from __future__ import annotations

import os
from typing import Any

from . import build_base, build_i2v
from .import_nodes import SAFE_TO_IGNORE, UNDERSTOOD
from .read_graph import ReadGraph

#: jobs whose request holds a LoRA stack (perception's OmniX LoRAs are its task adapters, read as tasks)
LORA_KINDS = {"text_to_image", "lora_stack", "ipadapter", "i2v", "perception"}
_FLOAT_TOLERANCE = 1e-6


def _settings(g: ReadGraph, nid: str, names: tuple[str, ...] = ()) -> str:
    """``k=v`` of a node's plain (non-link) inputs, or of ``names`` only."""
    inputs = g.api[nid].get("inputs", {})
    keys = names or tuple(k for k, v in inputs.items() if not (isinstance(v, list) and len(v) == 2))
    parts = []
    for key in keys:
        value = g.value(nid, key)
        if isinstance(value, float):
            value = f"{value:g}"
        elif isinstance(value, str) and len(value) > 40:
            value = value[:37] + "..."
        parts.append(f"{key}={value}")
    return ", ".join(parts)


def _differs(value: Any, expected: float) -> bool:
    try:
        return abs(float(value) - expected) > _FLOAT_TOLERANCE
    except (TypeError, ValueError):
        return True


def _lossy(g: ReadGraph, nid: str, kind: str, job: str) -> str | None:
    """Why a node the importer maps still changes the output in a way the request does not hold, or None."""
    t = g.type(nid)
    if t == "ModelSamplingSD3" and _differs(g.value(nid, "shift"), build_i2v.WAN_SHIFT):
        return _settings(g, nid, ("shift",)) + f" (the app samples Wan with shift {build_i2v.WAN_SHIFT:g})"
    if t == "ModelSamplingAuraFlow" and _differs(g.value(nid, "shift"), build_base.QWEN_SHIFT):
        return _settings(g, nid, ("shift",)) + f" (the app samples Qwen-Image with shift {build_base.QWEN_SHIFT:g})"
    if t in ("ModelSamplingFlux", "CFGNorm"):
        return _settings(g, nid) + " (the app uses the model's own scheduler settings)"
    if t in ("KSampler", "KSamplerAdvanced") and (g.value(nid, "sampler_name") != build_base.SAMPLER
                                                  or g.value(nid, "scheduler") != build_base.SCHEDULER):
        return _settings(g, nid, ("sampler_name", "scheduler")) + " (the app samples with the model's flow-match " \
                                                                  "Euler scheduler)"
    if t == "LoraLoader" and _differs(g.value(nid, "strength_clip", 0.0), 0.0):
        return _settings(g, nid, ("lora_name", "strength_clip")) + " (the text-encoder part of a LoRA is not applied)"
    if t in ("LoraLoaderModelOnly", "LoraLoader") and job not in LORA_KINDS:
        return _settings(g, nid, ("lora_name", "strength_model")) + " (this job takes no LoRA)"
    return None


def node_warnings(g: ReadGraph, job: str) -> list[str]:
    """One line per reachable node that the request cannot express."""
    out = []
    for nid in g.reachable:
        t = g.type(nid)
        if t in SAFE_TO_IGNORE:
            continue
        if t not in UNDERSTOOD:
            settings = _settings(g, nid)
            out.append(f"not imported: node {nid} {t}" + (f" {settings}" if settings else ""))
            continue
        why = _lossy(g, nid, t, job)
        if why:
            out.append(f"not imported: node {nid} {t} {why}")
    return out


def missing_files(request) -> list[str]:
    """LoRA files the graph names that are not in the ComfyUI folders: named, the rest of the graph imports."""
    out = []
    for field_name in ("loras", "loras_2", "stage2_loras"):
        for lora in getattr(request, field_name, ()) or ():
            if lora.path and not lora.repo_id and not os.path.isfile(lora.path):
                out.append(f"missing LoRA file: {os.path.basename(lora.path)} ({field_name}); put it in "
                           "ComfyUI/models/loras (or the app's LoRA folder) and import again")
    return out
