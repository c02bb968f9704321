"""Image to video: not built yet; the tab says so in one line."""

from __future__ import annotations

from ..components import not_built


def build(engine) -> None:
    not_built("**Image to video** (Wan 2.2 image-to-video) is not built yet in this version of the app.")
