"""Headless use: ``python -m engine run request.json --out DIR`` runs a saved request."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m engine", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run a saved request JSON (the same JSON the UI saves)")
    run.add_argument("request", type=Path)
    run.add_argument("--out", type=Path, default=Path("outputs"), help="where to write the results")
    run.add_argument("--models-dir", type=Path, default=None)
    run.add_argument("--demo", action="store_true", help="use the built-in tiny demo models")
    run.add_argument("--device", default=None, help="cuda, cuda:1, cpu (default: cuda when available)")
    args = parser.parse_args(argv)

    from . import Engine, EngineError, request_from_dict

    try:
        data = json.loads(args.request.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        print(f"error: cannot read {args.request}: {exc}", file=sys.stderr)
        return 2
    try:
        request = request_from_dict(data)
        engine = Engine(device=args.device, models_dir=args.models_dir, demo=args.demo, outputs_dir=args.out)

        def progress(fraction: float, message: str) -> None:
            print(f"[{fraction:5.0%}] {message}", file=sys.stderr)

        result = engine.run(request, progress=progress)
    except EngineError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    for f in result.files:
        print(f)
    print(result.summary(), file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
