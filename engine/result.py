"""What a run returns."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class Result:
    """Outputs of one run. ``images`` are PIL images; ``files`` the paths written to disk."""

    request: Any
    images: list = field(default_factory=list)
    video_path: str | None = None
    maps: dict[str, Any] = field(default_factory=dict)
    files: list[str] = field(default_factory=list)
    metadata: dict[str, Any] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)
    memory: dict[str, Any] = field(default_factory=dict)

    def summary(self) -> str:
        t = ", ".join(f"{k} {v:.2f}s" for k, v in self.timings.items())
        return f"{type(self.request).__name__}: {len(self.images)} image(s), {len(self.files)} file(s); {t}"
