"""Panorama perception: not built yet; the tab says so in one line."""

from __future__ import annotations

from ..components import not_built


def build(engine) -> None:
    not_built("**Panorama perception** (depth, normal and albedo maps from a panorama (OmniX)) is not built yet in this version of the app.")
