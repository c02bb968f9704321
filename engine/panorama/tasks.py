"""The OmniX tasks: which adapter files each needs and how its batch is laid out (data only, no torch, so the
ComfyUI exporter can read it too).

Upstream's table (HKU-MMLab/OmniX ``src/pipelines/pipeline_omnix.py:18-26``) and file layout
(``:48-51``): ``<repo>/<task>/<adapter>/pytorch_lora_weights.safetensors``, one adapter per batch item.
"""

from __future__ import annotations

from dataclasses import dataclass

WEIGHT_NAME = "pytorch_lora_weights.safetensors"


@dataclass(frozen=True)
class OmniXTask:
    folder: str  # upstream task name
    adapters: tuple[str, ...]  # one per batch item
    conditions: tuple[int, ...]  # items that hold the clean input latent
    target: int  # the item whose decoded image is the map

    def weight_name(self, adapter: str) -> str:
        return f"{self.folder}/{adapter}/{WEIGHT_NAME}"


#: Our task names -> upstream's ``TASK_ADAPTERS`` entries (``rgb_to_<x>``: rgb condition, item 0; target, item 1).
TASKS: dict[str, OmniXTask] = {
    name: OmniXTask(f"rgb_to_{name}", ("rgb", name), (0,), 1) for name in ("depth", "normal", "albedo", "pbr", "semantic")
}


def allow_patterns(tasks) -> list[str]:
    """What to download from the adapter repo for these tasks (it also holds generation adapters)."""
    return [f"{TASKS[t].folder}/*/{WEIGHT_NAME}" for t in tasks]


def adapter_name(task: str, adapter: str) -> str:
    # unique per task (every task has its own "rgb" adapter); no dots, which peft's ModuleDicts refuse
    return f"omnix_{TASKS[task].folder}_{adapter}"


def lora_files(tasks) -> list[str]:
    """Every adapter file these tasks load, relative to the adapter repo, condition adapters first."""
    return [TASKS[t].weight_name(a) for t in tasks for a in TASKS[t].adapters]
