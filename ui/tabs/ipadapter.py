"""IP-Adapter: not built yet; the tab says so in one line."""

from __future__ import annotations

from ..components import not_built


def build(engine) -> None:
    not_built("**IP-Adapter** (Flux or Chroma images guided by a reference image) is not built yet in this version of the app.")
