"""MagCache on the Wan 2.2 experts: diffusers' ``MagCacheConfig`` hooks, with the per-model calibration they need.

MagCache skips a step when the accumulated change of the residual magnitude (``mag_ratios``: the mean ratio of
``|residual_t| / |residual_t-1|`` per step) stays below a threshold. The ratios depend on the checkpoint, the
scheduler and the step count, and diffusers ships them only for Flux. So the first run of a model at a step count
and boundary is a **calibration run**: it skips nothing (its frames equal a run without a cache), and two small
hooks of ours on each expert's first and last block record the ratios, per cache context (cond and uncond), the
quantity diffusers' ``calibrate=True`` mode computes. We record them ourselves because diffusers' calibration
only prints its list at the end of the run and clears it. The ratios are saved under
``<models_dir>/mag-cache/`` and every later run with the same key uses them through diffusers' own hooks.

Differences from upstream MagCache (Zehong-Ma/MagCache, which calibrates cond and uncond separately and
interleaves them): diffusers' config takes one curve per transformer, so we store the mean of the cond and
uncond curves; each expert gets its own curve over the steps it runs (high-noise: t >= boundary).
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
from pathlib import Path

import torch

from engine.errors import EngineError

log = logging.getLogger(__name__)

DIRNAME = "mag-cache"
_HEAD, _TAIL = "studio_mag_ratio_head", "studio_mag_ratio_tail"
EXPERTS = ("transformer", "transformer_2")


def expert_steps(pipe, steps: int, boundary_ratio: float | None) -> dict[str, int]:
    """How many of ``steps`` each expert runs: the high-noise ``transformer`` while t >= boundary x 1000 (the
    pipeline's own rule), ``transformer_2`` after; a one-transformer model runs them all."""
    if getattr(pipe, "transformer_2", None) is None or boundary_ratio is None:
        return {"transformer": steps}
    scheduler = copy.deepcopy(pipe.scheduler)
    scheduler.set_timesteps(steps, device="cpu")
    boundary = boundary_ratio * pipe.scheduler.config.num_train_timesteps
    high = int((scheduler.timesteps >= boundary).sum())
    return {name: n for name, n in (("transformer", high), ("transformer_2", steps - high)) if n}


def calibration_path(models_dir, model_key: dict, steps: int, boundary_ratio: float | None) -> Path:
    text = json.dumps({"model": model_key, "steps": steps, "boundary": boundary_ratio}, sort_keys=True)
    return Path(models_dir) / DIRNAME / f"{hashlib.sha256(text.encode()).hexdigest()[:24]}.json"


def load_ratios(path: Path, counts: dict[str, int]) -> dict[str, list[float]] | None:
    """The saved curves if every expert has one of the right length, else None (calibrate)."""
    try:
        ratios = json.loads(path.read_text(encoding="utf-8"))["ratios"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if not isinstance(ratios, dict) or any(len(ratios.get(name) or ()) != n for name, n in counts.items()):
        return None
    return {name: [float(r) for r in ratios[name]] for name in counts}


def mag_config(threshold: float, steps: int, ratios: list[float]):
    from diffusers import MagCacheConfig

    return MagCacheConfig(threshold=threshold, num_inference_steps=steps, mag_ratios=list(ratios))


# ---------------------------------------------------------------- calibration hooks
def _hooks():
    # local: diffusers' hook classes are only needed when a calibration runs
    from diffusers.hooks import HookRegistry, ModelHook
    from diffusers.hooks.hooks import BaseState, StateManager

    class RatioState(BaseState):
        def __init__(self):
            self.head_input = None
            self.previous = None

        def reset(self):
            self.head_input = None
            self.previous = None

    class Stateful(ModelHook):
        _is_stateful = True  # so the pipeline's cache_context("cond"/"uncond") reaches the state manager

        def reset_state(self, module):  # the engine resets every run's hook state; the curves are kept apart
            self.state_manager.reset()
            return module

    class Head(Stateful):
        def __init__(self, states):
            super().__init__()
            self.state_manager = states

        def pre_forward(self, module, *args, **kwargs):
            self.state_manager.get_state().head_input = args[0] if args else kwargs["hidden_states"]
            return args, kwargs

    class Tail(Stateful):
        def __init__(self, states, curves: dict[str, list[float]]):
            super().__init__()
            self.state_manager, self.curves = states, curves

        def post_forward(self, module, output):
            state = self.state_manager.get_state()
            hidden = output[0] if isinstance(output, tuple) else output
            residual = (hidden - state.head_input).float()
            if state.previous is None:
                ratio = 1.0
            else:
                ratio = (torch.linalg.norm(residual, dim=-1) /
                         (torch.linalg.norm(state.previous, dim=-1) + 1e-8)).mean().item()
            self.curves.setdefault(self.state_manager.context.name, []).append(ratio)
            state.previous = residual
            return output

    return HookRegistry, StateManager, RatioState, Head, Tail


class Calibration:
    """Records the magnitude-ratio curve of each expert during one run; ``save`` writes them when complete."""

    def __init__(self, pipe, counts: dict[str, int], path: Path):
        registry_cls, states_cls, state_cls, head_cls, tail_cls = _hooks()
        self.counts, self.path = counts, path
        self.curves: dict[str, dict[str, list[float]]] = {}
        self._registries, self._roots = [], []
        for name in counts:
            blocks = getattr(getattr(pipe, name), "blocks", None)
            if not blocks:
                raise EngineError(f"MagCache needs the transformer's blocks; {name} has none")
            states = states_cls(state_cls)
            self.curves[name] = {}
            head = registry_cls.check_if_exists_or_initialize(blocks[0])
            head.register_hook(head_cls(states), _HEAD)
            tail = registry_cls.check_if_exists_or_initialize(blocks[-1])
            tail.register_hook(tail_cls(states, self.curves[name]), _TAIL)
            self._registries += [(head, _HEAD), (tail, _TAIL)]
            self._roots.append(registry_cls.check_if_exists_or_initialize(getattr(pipe, name)))
        for root in self._roots:  # its cached list of child registries predates ours: cache_context must reach them
            root.invalidate_child_registries_cache()

    def remove(self) -> None:
        for registry, name in self._registries:
            if name in registry.hooks:
                registry.remove_hook(name, recurse=False)
        for root in self._roots:
            root.invalidate_child_registries_cache()
        self._registries.clear()
        self._roots.clear()

    def save(self, model_key: dict) -> bool:
        """Write the curves (mean over cond/uncond) if every expert ran all its steps; a cancelled run saves none."""
        ratios = {}
        for name, n in self.counts.items():
            curves = [c for c in self.curves[name].values() if len(c) == n]
            if not curves:
                return False
            ratios[name] = [sum(values) / len(values) for values in zip(*curves)]
        from engine.files.atomic import DiskFull, write_json

        try:
            write_json(self.path, {"model": model_key, "steps": self.counts, "ratios": ratios}, indent=1,
                       what="models folder", flag="--models-dir")
        except (DiskFull, OSError) as exc:  # the run's video is fine; only the next run calibrates again
            log.warning("MagCache calibration not saved: %s", exc)
            return False
        return True


def prepare(pipe, models_dir, model_key: dict, steps: int, boundary_ratio: float | None):
    """For one run: ``(mag, calibration)``: the saved curves as ``apply_step_cache`` takes them, or None and a
    Calibration that records them during this run (remove it after the run, ``save`` it after a complete one)."""
    counts = expert_steps(pipe, steps, boundary_ratio)
    path = calibration_path(models_dir, model_key, steps, boundary_ratio)
    ratios = load_ratios(path, counts)
    if ratios is not None:
        return {name: (n, ratios[name]) for name, n in counts.items()}, None
    return None, Calibration(pipe, counts, path)
