"""Headless use: ``python -m engine run request.json --out DIR`` runs a saved request;
``python -m engine verify REPO [--repair]`` re-hashes a cached model; ``python -m engine catalog-check [--write]``
compares the SDNQ catalog with the hub."""

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
    run.add_argument("--context-parallel", type=int, default=0, metavar="N",
                     help="one image-to-video run over N GPUs (diffusers context parallelism); start it with "
                          "torchrun --nproc-per-node N -m engine run ...")
    verify = sub.add_parser("verify", help="sha256 every cached file of a model against the hub's checksums")
    verify.add_argument("repo", help="hub repo id (owner/name) or catalog entry id")
    verify.add_argument("--revision", default=None)
    verify.add_argument("--repair", action="store_true", help="delete bad files and fetch them (and missing ones) again")
    check = sub.add_parser("catalog-check", help="compare presets/sdnq_catalog.json with the hub")
    check.add_argument("--catalog", type=Path, default=None, help="catalog file (default: presets/sdnq_catalog.json)")
    check.add_argument("--write", action="store_true", help="write the hub's real download sizes into the file")
    args = parser.parse_args(argv)
    if args.command == "verify":
        return _verify(args)
    if args.command == "catalog-check":
        return _catalog_check(args)

    from engine import Engine, EngineError, request_from_dict

    try:
        data = json.loads(args.request.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        print(f"error: cannot read {args.request}: {exc}", file=sys.stderr)
        return 2
    try:
        request = request_from_dict(data)
        parallel = _context_parallel(args, request)
        out = args.out if parallel is None or parallel.is_main else _rank_scratch(parallel)  # rank 0 writes
        device = parallel.device if parallel is not None else args.device
        import comfy_export  # the CLI composes engine + exporter, as the app does: outputs open in ComfyUI

        engine = Engine(device=device, models_dir=args.models_dir, demo=args.demo, outputs_dir=out,
                        output_text=comfy_export.png_text)
        engine.context_parallel = parallel

        def progress(fraction: float, message: str) -> None:
            print(f"[{fraction:5.0%}] {message}", file=sys.stderr)

        result = engine.run(request, progress=progress)
    except EngineError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if parallel is not None and not parallel.is_main:
        return 0
    for f in result.files:
        print(f)
    print(result.summary(), file=sys.stderr)
    return 0


def _context_parallel(args, request):
    if not args.context_parallel:
        return None
    from engine.errors import InputError
    from engine.video.context_parallel import from_torchrun

    if request.kind != "i2v":
        raise InputError("context_parallel", f"splits image-to-video runs only, not {request.kind}")
    return from_torchrun(args.context_parallel)


def _rank_scratch(parallel) -> Path:
    import tempfile

    return Path(tempfile.mkdtemp(prefix=f"context-parallel-rank{parallel.rank}-"))


def _progress_line(done: int, total: int, message: str) -> None:
    share = f"{done / total:5.0%}" if total else "  ?  "
    print(f"\r[{share}] {message[:100]:<100}", end="", file=sys.stderr, flush=True)


def _verify(args) -> int:
    from engine.catalog.presets import catalog_entry, load_catalog
    from engine.errors import EngineError
    from engine.hub.verify import verify

    repo = args.repo
    if "/" not in repo:  # a catalog entry id
        try:
            repo = catalog_entry(load_catalog(), repo).repo_id
        except EngineError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
    try:
        report = verify(repo, revision=args.revision, repair=args.repair, progress=_progress_line)
    except EngineError as exc:
        print(f"\nerror: {exc}", file=sys.stderr)
        return 2
    print(file=sys.stderr)
    print(report.summary())
    return 0 if report.ok else 1


def _catalog_check(args) -> int:
    from engine.catalog import check as catalog_check
    from engine.errors import EngineError

    try:
        return catalog_check.main(args.catalog, args.write)
    except EngineError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
