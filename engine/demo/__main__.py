"""python -m engine.demo [models_dir] [--force]: build the demo models and list their sizes."""

from __future__ import annotations

import sys
import time
from pathlib import Path

from engine.demo.build import build_demo_models, folder_size
from engine.demo.names import DEMO_NAMES, LORAS

args = [a for a in sys.argv[1:] if a != "--force"]
target = Path(args[0] if args else "models")
t0 = time.perf_counter()
root = build_demo_models(target, force="--force" in sys.argv)
print(f"demo models in {root} ({time.perf_counter() - t0:.2f} s)")
for name in (*DEMO_NAMES, LORAS):
    print(f"  {name:20s} {folder_size(root / name) / 1e6:7.2f} MB")
