"""Start (or join) Ray, deploy the engine replicas, and hand back the front end's ``ServeEngine``."""

from __future__ import annotations

import os
from pathlib import Path

from engine.errors import EngineError
from engine.serve import RAY_INSTALL_HINT
from engine.serve.replica import BOARD_NAME, NAMESPACE, EngineReplica, StatusBoard

APP_NAME = "diffusion-studio"
PROJECT_ROOT = Path(__file__).resolve().parents[2]


class ServeUnavailable(EngineError):
    """Ray Serve is not installed; the message says how to install it."""


def import_ray():
    try:
        import ray
        from ray import serve
    except ImportError as exc:
        raise ServeUnavailable(RAY_INSTALL_HINT) from exc
    return ray, serve


def replica_plan(wanted: int, gpus: float, cpus: float) -> tuple[int, dict, str | None, str]:
    """(replicas, Ray resources per replica, engine device, a line saying what was decided and why)."""
    if wanted < 1:
        raise EngineError(f"--serve-replicas must be 1 or more, got {wanted}")
    if gpus >= 1:
        count = min(wanted, int(gpus))
        note = (f"{wanted} replicas asked for but the Ray cluster has {int(gpus)} GPU(s): starting {count}, "
                "one per GPU" if count < wanted else f"{count} replica(s), one GPU each")
        return count, {"num_gpus": 1}, None, note
    count = max(1, min(wanted, int(cpus)))
    note = "no GPU in the Ray cluster: CPU replicas (for testing; runs are slow)"
    if count < wanted:
        note += f"; {wanted} asked for, {count} started (the cluster has {int(cpus)} CPU(s))"
    return count, {"num_cpus": 1}, "cpu", f"{note}; {count} replica(s)"


def start_serve(replicas: int, *, models_dir: Path, outputs_dir: Path, demo: bool, address: str | None = None,
                replica_outputs_dir: Path | None = None, num_cpus: int | None = None, log=print,
                log_to_driver: bool = True, output_text=None):
    """Deploy ``replicas`` engine replicas and return the ``ServeEngine`` the UI runs on.

    ``address``: a running Ray cluster (``ray start --head``; default ``RAY_ADDRESS``), else a local Ray.
    Replicas write into ``replica_outputs_dir`` (default: the same outputs folder); the front end writes what
    they send back into ``outputs_dir``."""
    ray, serve = import_ray()
    from engine.engine import Engine
    from engine.serve.client import ServeEngine

    if not ray.is_initialized():
        address = address or os.environ.get("RAY_ADDRESS") or None
        env = {"PYTHONPATH": os.pathsep.join(p for p in (str(PROJECT_ROOT), os.environ.get("PYTHONPATH")) if p)}
        try:
            ray.init(address=address, namespace=NAMESPACE, include_dashboard=False, num_cpus=num_cpus,
                     runtime_env={"env_vars": env}, log_to_driver=log_to_driver)
        except (ConnectionError, RuntimeError, ValueError) as exc:
            raise EngineError(f"cannot start or reach Ray (address {address or 'local'}): {exc}") from exc
    resources = ray.cluster_resources()
    count, per_replica, device, note = replica_plan(replicas, resources.get("GPU", 0), resources.get("CPU", 1))
    log(note)
    board = ray.remote(num_cpus=0)(StatusBoard).options(
        name=BOARD_NAME, namespace=NAMESPACE, get_if_exists=True, lifetime=None).remote()
    serve.start(proxy_location="Disabled")  # the page calls the deployment through its handle, no HTTP proxy
    options = {"models_dir": str(Path(models_dir).resolve()), "demo": demo, "device": device,
               "outputs_dir": str(Path(replica_outputs_dir or outputs_dir).resolve()),
               "output_text": output_text}  # a function: Ray pickles it by reference, each replica imports it
    deployment = serve.deployment(
        EngineReplica, name="engine", num_replicas=count, ray_actor_options=per_replica,
        max_ongoing_requests=1,  # one job on a replica's device at a time; Serve queues the rest
        health_check_period_s=2, health_check_timeout_s=30, graceful_shutdown_timeout_s=10,
    )
    handle = serve.run(deployment.bind(options, BOARD_NAME), name=APP_NAME, route_prefix=None)
    # plans and default memory settings for this host's device (the head node's GPU, like the replicas'); never runs
    local = Engine(device=None if device is None else "cpu", models_dir=models_dir, demo=demo, outputs_dir=outputs_dir)
    kind = "GPU" if "num_gpus" in per_replica else "CPU"
    return ServeEngine(handle, board, local, count, f"Ray Serve: {count} {kind} replica(s)", note)


def stop_serve() -> None:
    ray, serve = import_ray()
    if ray.is_initialized():
        try:
            serve.delete(APP_NAME)
        except Exception:  # already gone
            pass
