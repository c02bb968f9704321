"""LoRA stack: not built yet; the tab says so in one line."""

from __future__ import annotations

from ..components import not_built


def build(engine) -> None:
    not_built("**LoRA stack** (Qwen-Image with a weighted stack of LoRAs) is not built yet in this version of the app.")
