"""Start the web app: ``python app.py [--demo] [--host H] [--port P] [--share] [--auth user:pass] ...``.

Without ``--demo`` and without real weights on this machine (no model folder in the models dir,
no Hugging Face cache entry for a text-to-image model), the app starts in demo mode and says so.
"""

from __future__ import annotations

import argparse
import os
import sys
import threading
import time
from pathlib import Path

DEFAULT_MAX_UPLOAD_MB = 8192  # the largest real inputs: a LoRA of a few GB, a big panorama (ui.input_errors too)
REAL_TEXT_TO_IMAGE_REPOS = ("black-forest-labs/FLUX.1-dev", "lodestones/Chroma1-HD", "Qwen/Qwen-Image")


def parse_auth(value: str) -> tuple[str, str]:
    user, sep, password = value.partition(":")
    if not sep or not user or not password:
        raise argparse.ArgumentTypeError("expected user:password, e.g. --auth alice:s3cret (both parts non-empty)")
    return user, password


def default_host() -> str:
    """127.0.0.1, except where the platform says otherwise (a Hugging Face Space listens on 0.0.0.0)."""
    return os.environ.get("GRADIO_SERVER_NAME") or ("0.0.0.0" if os.environ.get("SPACE_ID") else "127.0.0.1")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python app.py", description="Diffusion Studio: one web app over one engine.")
    p.add_argument("--demo", action="store_true", help="tiny random-weight models (no downloads; images are noise)")
    p.add_argument("--host", default=default_host(), help="address to listen on (0.0.0.0 for all; default %(default)s)")
    p.add_argument("--port", type=int, default=int(os.environ.get("GRADIO_SERVER_PORT") or 7860),
                   help="port (default %(default)s)")
    p.add_argument("--share", action="store_true", help="also open a public gradio.live link")
    p.add_argument("--models-dir", type=Path, default=Path("models"), help="local models (default ./models)")
    p.add_argument("--outputs-dir", type=Path, default=None, help="where images are saved (default ./outputs)")
    p.add_argument("--comfy-models", default="", metavar="DIR",
                   help="a ComfyUI models folder (or the ComfyUI folder) whose files every tab can use, read-only")
    p.add_argument("--comfy-config", default="", metavar="FILE",
                   help="ComfyUI's extra_model_paths.yaml: its base paths are indexed too")
    p.add_argument("--folder-settings", choices=("auto", "page", "locked"), default="auto",
                   help="who sets the ComfyUI models folder, which every visitor shares: 'page' lets the page change "
                        "it, 'locked' only these flags; 'auto' (default) the page only when no one else can reach it "
                        "(loopback host, no --share, no --auth)")
    p.add_argument("--allowed-folders", action="append", default=[], metavar="DIR",
                   help="a folder the page may point the ComfyUI models folder into, beyond your home, the models "
                        "folder and the launch folders (repeat for more)")
    p.add_argument("--max-upload-mb", type=float, default=DEFAULT_MAX_UPLOAD_MB, metavar="MB",
                   help="largest file a visitor may upload (default %(default)g MB: a LoRA of a few GB, a "
                        "panorama); 0 = no limit")
    p.add_argument("--auth", type=parse_auth, default=None, metavar="USER:PASS", help="require this login")
    p.add_argument("--device", default=None, help="cuda, cuda:1 or cpu (default: cuda when available)")
    p.add_argument("--serve-replicas", type=int, default=0, metavar="N",
                   help="run jobs on N Ray Serve engine replicas, one per GPU (pip install -r requirements-serve.txt)")
    p.add_argument("--ray-address", default=None, help="a running Ray cluster (default: RAY_ADDRESS, else a local Ray)")
    args = p.parse_args(argv)
    if not 0 < args.port < 65536:
        p.error(f"--port must be between 1 and 65535, got {args.port}")
    if args.max_upload_mb < 0:
        p.error(f"--max-upload-mb must be 0 (no limit) or more, got {args.max_upload_mb:g}")
    if args.serve_replicas < 0:
        p.error(f"--serve-replicas must be 1 or more (0: no Ray), got {args.serve_replicas}")
    return args


def hf_hub_cache() -> Path:
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"])
    home = Path(os.environ.get("HF_HOME") or Path.home() / ".cache" / "huggingface")
    return home / "hub"


def has_real_weights(models_dir: Path) -> bool:
    """True when a real model folder sits in the models dir or the HF cache holds a text-to-image repo."""
    if models_dir.is_dir():
        for child in models_dir.iterdir():
            if child.name != "demo" and (child / "model_index.json").is_file():
                return True
    cache = hf_hub_cache()
    return any((cache / ("models--" + repo.replace("/", "--"))).is_dir() for repo in REAL_TEXT_TO_IMAGE_REPOS)


def serve_engine(args: argparse.Namespace, demo: bool):
    """The Ray Serve front end's engine; None (with the install line) when Ray is missing: the app then runs on
    the local engine; False when Ray is there but cannot start."""
    import comfy_export
    from engine import EngineError
    from engine.serve.launch import ServeUnavailable, start_serve

    outputs = args.outputs_dir or Path("outputs")
    try:
        return start_serve(args.serve_replicas, models_dir=args.models_dir, outputs_dir=outputs, demo=demo,
                           address=args.ray_address, log=lambda line: print(line, flush=True),
                           output_text=comfy_export.png_text)
    except ServeUnavailable as exc:
        print(f"{exc}. Starting with the local engine instead.", flush=True)
        return None
    except EngineError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return False


def boot_quietly(engine) -> None:
    """Boot the engine off the request path; a failure is logged here and raised again by the first use."""
    try:
        engine.boot()
    except Exception as exc:  # e.g. a broken CUDA driver: the page's first readout reports it
        print(f"warning: the engine could not start yet: {exc}", file=sys.stderr, flush=True)


def main(argv: list[str] | None = None) -> int:
    t0 = time.perf_counter()
    args = parse_args(argv)
    demo = args.demo
    if not demo and not has_real_weights(args.models_dir):
        demo = True
        print(
            f"No real weights found in {args.models_dir} or the Hugging Face cache: starting in DEMO mode "
            "(tiny random-weight models, images are noise). Download a model or pass --models-dir to use real weights.",
            flush=True,
        )

    stages: dict[str, float] = {}  # seconds per startup stage, printed once the server is up (bench/cold_start.py)
    last = [t0]

    def stage(name: str) -> None:
        now = time.perf_counter()
        stages[name], last[0] = now - last[0], now

    from engine import Engine

    stage("engine import")
    if demo:
        from engine.demo import build_demo_models, is_built

        if not is_built(args.models_dir):
            print(f"Building tiny demo models in {args.models_dir / 'demo'} (once)…", flush=True)
        build_demo_models(args.models_dir)

    engine = serve_engine(args, demo) if args.serve_replicas else None
    if engine is False:
        return 2
    try:
        if engine is None:
            engine = Engine(device=args.device, models_dir=args.models_dir, demo=demo, outputs_dir=args.outputs_dir)
            if args.device:  # a device the user named is checked before anything is served (torch loads now)
                engine.boot()
    except (RuntimeError, ValueError) as exc:  # e.g. --device cuda:7 on a one-GPU machine, or a typo
        print(f"error: cannot use device {args.device!r}: {str(exc).splitlines()[0]}", file=sys.stderr)
        return 2

    stage("engine")
    comfy_models, comfy_config = args.comfy_models, args.comfy_config
    if demo and not comfy_models and not comfy_config:  # the demo's own fake ComfyUI install, so the pickers show
        from engine.demo.comfy import build_demo_comfy, yaml_path

        comfy_models, comfy_config = build_demo_comfy(args.models_dir), yaml_path(args.models_dir)
    if comfy_models or comfy_config:
        print(f"ComfyUI models: {engine.comfy.configure(comfy_models, comfy_config)}", flush=True)

    stage("ComfyUI index")
    if "IPython" not in sys.modules:
        # a server, never a notebook: gradio imports IPython (with jedi and prompt_toolkit, 0.2 s of a 2-core start)
        # only to offer its notebook magic; a missing IPython is a case every library here handles
        sys.modules["IPython"] = None
    import ui
    from ui.sessions import policy_for_launch, set_folder_policy

    stage("ui import")
    set_folder_policy(policy_for_launch(args.folder_settings, args.host, args.share, args.auth, args.allowed_folders))
    app = ui.build_app(engine)
    stage("page build")
    _, local_url, share_url = app.launch(
        server_name=args.host, server_port=args.port, share=args.share, auth=args.auth,
        prevent_thread_lock=True, quiet=True, **ui.launch_options(engine, max_upload_mb=args.max_upload_mb),
    )
    stage("server start")
    if not getattr(engine, "booted", True):  # torch and the device come up now, while the first visitor reads the page
        threading.Thread(target=boot_quietly, args=(engine,), name="engine-boot", daemon=True).start()
    print("startup: " + ", ".join(f"{name} {seconds:.2f} s" for name, seconds in stages.items()), flush=True)
    mode = "demo mode" if demo else "real weights"
    print(f"Diffusion Studio ({mode}, device {engine.device}) ready in {time.perf_counter() - t0:.1f} s", flush=True)
    print(f"Open {local_url}", flush=True)
    if share_url:
        print(f"Public link: {share_url}", flush=True)
    try:
        app.block_thread()
    except KeyboardInterrupt:
        pass
    finally:
        app.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
