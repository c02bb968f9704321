"""Memory plans: how a run will use the compute device, worked out from sizes alone (no weights loaded).

The same functions lay out a real run (from the loaded module's tensors) and predict one (from configs and
safetensors headers), so the plan shown before a run is the layout the run then uses.

Pure arithmetic on byte counts: no torch here.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from engine.memory.host_need import host_need
from engine.memory.layouts import (  # noqa: F401  (re-exported: the plan's callers import them from here)
    EFFICIENT_COPY_BYTES,
    STREAMING_MODES,
    ComponentSize,
    GiB,
    Layout,
    MiB,
    adaptive_layout,
    block_swap_layout,
    chunk_layout,
)


@dataclass
class Plan:
    """What a run will do with the compute device, said before it runs."""

    mode: str
    device: str
    budget: int | None
    weights_peak: int  # weights on the compute device at the worst moment
    activations: int  # estimate for the same moment
    run_activations: int = 0  # the estimate while the transformer or the VAE computes (the moment may be an encoder's)
    layouts: dict[str, Layout] = field(default_factory=dict)
    fits: bool = True
    explanation: str = ""
    suggestion: str = ""
    notes: list[str] = field(default_factory=list)
    offload: str = "cpu"
    resident_weights: int = 0  # of weights_peak at the denoising peak: what stays (rest + resident blocks)
    slab_bytes: int = 0  # of weights_peak at the denoising peak: the streaming slabs
    host_bytes: int = 0  # host RAM the mode needs while it runs (pageable + pinned)
    pinned_bytes: int = 0
    host_how: str = ""
    host_available: int | None = None  # RAM this run may use: available now + what the app already holds
    budget_note: str = ""  # where the budget comes from
    alternatives: dict[str, dict] = field(default_factory=dict)  # other modes: host, device and whether they fit
    components: dict[str, int] = field(default_factory=dict)  # component -> bytes as planned (adapters included)

    @property
    def predicted_peak(self) -> int:
        return self.weights_peak + self.activations

    @property
    def host_line(self) -> str:
        """e.g. "block_swap: 14.2 GiB of host RAM, 9.8 pinned"."""
        return f"{self.mode}: {gib(self.host_bytes)} GiB of host RAM, {gib(self.pinned_bytes)} pinned"

    @property
    def host_fits(self) -> bool:
        return self.host_available is None or self.host_bytes <= self.host_available

    def as_dict(self) -> dict:
        return {
            "mode": self.mode, "device": self.device, "budget": self.budget, "weights_peak": self.weights_peak,
            "activations": self.activations, "run_activations": self.run_activations,
            "predicted_peak": self.predicted_peak, "fits": self.fits,
            "explanation": self.explanation, "suggestion": self.suggestion, "notes": list(self.notes),
            "offload": self.offload, "resident_weights": self.resident_weights, "slab_bytes": self.slab_bytes,
            "host_bytes": self.host_bytes, "pinned_bytes": self.pinned_bytes, "host_available": self.host_available,
            "host_line": self.host_line, "budget_note": self.budget_note, "alternatives": dict(self.alternatives),
            "components": dict(self.components),
            "layouts": {k: {"resident": v.resident, "groups": len(v.groups),
                            "group_blocks": max((len(g) for g in v.groups), default=0)}
                        for k, v in self.layouts.items()},
        }


def gib(n: int | float) -> str:
    return f"{n / GiB:.1f}" if n >= GiB / 10 else f"{n / GiB:.3f}"


def human(n: int | float) -> str:
    if n >= GiB:
        return f"{n / GiB:.1f} GiB"
    if n >= MiB:
        return f"{n / MiB:.0f} MB"
    return f"{n / 1024:.0f} KB"


ENCODER_ROLES = ("text_encoder", "image_encoder")


def _peak(plan: Plan, phases: list[tuple[int, int]]) -> None:
    """Set the plan's peak to the worst of its moments, each (weights on the device, activations then): an
    encoder computes with small activations, the transformer and the VAE with the run's estimate, so the encoder's
    moment is not charged the denoising activations (``predicted_peak`` stays weights + activations of that one
    moment)."""
    plan.weights_peak, plan.activations = max(phases, key=lambda p: (p[0] + p[1], p[0]), default=(0, 0))


def _activations_of(comp: ComponentSize, activations: int) -> int:
    """The activations while ``comp`` computes: an encoder's own (``ComponentSize.activations``, plus the
    compute-dtype copy of its largest layer kept in fp8), or the run's estimate for a transformer or the VAE."""
    return comp.activations + comp.compute_copy if comp.role in ENCODER_ROLES else activations


def layout_for(mode: str, comp: ComponentSize, settings, budget: int | None, activations: int) -> Layout | None:
    """The streaming layout a mode gives one transformer (None for modes that do not stream blocks)."""
    n = len(comp.blocks)
    prefetch = int(settings.prefetch)
    if mode == "block_swap":
        return block_swap_layout(n, int(settings.blocks_resident), prefetch)
    if mode == "chunkwise":
        return chunk_layout(comp.blocks, int(settings.blocks_resident), int(settings.block_size_mb) * MiB, prefetch)
    if mode == "adaptive":
        if budget is None:  # nothing to fit (CPU): keep every block
            return block_swap_layout(n, n, prefetch)
        return adaptive_layout(comp, budget - activations, prefetch)
    return None


def minimum_bytes(components: list[ComponentSize], layers_at_once: int = 2) -> int:
    """What the leanest mode (layerwise) needs on the device: the layer computing (and, with a side stream, the
    next one), or a whole VAE while it decodes (the VAE is model-offloaded, not streamed, in every mode)."""
    leaf = max((c.largest_leaf for c in components if c.role != "vae"), default=0)
    vae = max((c.total for c in components if c.role == "vae"), default=0)
    return max(layers_at_once * leaf, vae)


def plan_swap(components: list[ComponentSize], settings, device: str, budget: int | None,
              activations: int, offload: str = "cpu") -> Plan:
    """Work out the layout, device peak and host RAM of a run in ``settings.mode`` on ``device`` with ``budget``
    bytes, the offloaded weights waiting in ``offload`` ("cpu" or "disk")."""
    plan = _plan_device(components, settings, device, budget, activations)
    plan.offload = offload
    need = host_need(plan.mode, components, plan.layouts, device, offload, plan.weights_peak,
                     bool(getattr(settings, "use_streams", True)))
    plan.host_bytes, plan.pinned_bytes, plan.host_how = need.host, need.pinned, need.how
    plan.explanation += f"; host RAM {gib(need.host)} GiB, {gib(need.pinned)} pinned ({need.how})"
    return plan


def _plan_device(components: list[ComponentSize], settings, device: str, budget: int | None,
                 activations: int) -> Plan:
    mode = settings.mode
    if mode == "cpu_only":
        return _plan_on_cpu(mode, components, device, activations)
    plan = Plan(mode=mode, device=device, budget=budget, weights_peak=0, activations=activations,
                run_activations=activations)
    transformers = [c for c in components if c.streams]
    others = [c for c in components if not c.streams]
    if mode == "none":  # everything resident: the weights with the worst moment's activations
        total = sum(c.total for c in components)
        _peak(plan, [(total, _activations_of(c, activations)) for c in components])
    elif mode == "model_offload":
        _peak(plan, [(c.total, _activations_of(c, activations)) for c in components])
    elif mode == "layerwise":
        streams = device.startswith("cuda") and bool(settings.use_streams)
        plan.weights_peak = minimum_bytes(components, 2 if streams else 1)
    else:
        for comp in transformers:
            layout = layout_for(mode, comp, settings, budget, activations)
            if layout is None:  # show what full streaming would need, and say it does not fit
                plan.fits = False
                plan.layouts.clear()
                plan.weights_peak = max(chunk_layout(t.blocks, 0, 0, int(settings.prefetch)).need(t)
                                        for t in transformers)
                break
            if mode in ("block_swap", "chunkwise") and settings.blocks_resident > len(comp.blocks):
                plan.notes.append(f"{comp.name}: {settings.blocks_resident} resident blocks asked, it has "
                                  f"{len(comp.blocks)}; all of them stay")
            plan.layouts[comp.name] = layout
        if plan.layouts:
            kept = max(plan.layouts[c.name].kept(c) for c in transformers)
            worst = max(transformers, key=lambda c: plan.layouts[c.name].need(c))
            denoise = plan.layouts[worst.name].need(worst)
            plan.resident_weights = plan.layouts[worst.name].kept(worst)
            plan.slab_bytes = plan.layouts[worst.name].window_bytes(worst.blocks)
            # encoders and the VAE come in one at a time; the last expert's resident blocks stay unless they must go
            moments = [(denoise, activations)]
            for c in others:
                act = _activations_of(c, activations)
                moments.append((c.total + (kept if budget is None or c.total + kept + act <= budget else 0), act))
            _peak(plan, moments)
    if budget is not None and plan.predicted_peak > budget:
        plan.fits = False
    plan.explanation = _explain(plan, components)
    if not device.startswith("cuda"):
        plan.notes.append("no GPU here: the run computes on the CPU; the mode's hooks still run, so a GPU machine "
                          "gives the same pixels")
    if not plan.fits:
        plan.suggestion = _suggest(plan, components, activations)
    return plan


def _plan_on_cpu(mode: str, components: list[ComponentSize], device: str, activations: int) -> Plan:
    total = sum(c.total for c in components)
    plan = Plan(mode=mode, device="cpu", budget=None, weights_peak=0 if device.startswith("cuda") else total,
                activations=activations)
    plan.explanation = f"cpu_only: the run computes on the CPU with about {human(total)} of weights in RAM" + (
        "; the GPU stays free" if device.startswith("cuda") else "")
    return plan


def _explain(plan: Plan, components: list[ComponentSize]) -> str:
    of = f" of {gib(plan.budget)} GiB" if plan.budget else ""
    peak = f"predicted peak {gib(plan.predicted_peak)} GiB{of}"
    if plan.mode == "none":
        return f"none: every component resident ({human(plan.weights_peak)} of weights); {peak}"
    if plan.mode == "model_offload":
        return f"model_offload: one component on the GPU at a time, largest {human(plan.weights_peak)}; {peak}"
    if plan.mode == "layerwise":
        return f"layerwise: every layer streams in as it computes; {peak} (lowest memory, slowest)"
    if not plan.layouts:
        return f"{plan.mode}: the transformer does not fit even with every block streaming; {peak}"
    parts = []
    for comp in components:
        layout = plan.layouts.get(comp.name)
        if layout is None:
            continue
        sizes = layout.group_bytes(comp.blocks)
        group = f", {human(max(sizes))} groups" if sizes else ""
        parts.append(f"{layout.resident} of {len(comp.blocks)} blocks resident{group}")
    unique = list(dict.fromkeys(parts))
    weights = (f"weights on the GPU while denoising {human(plan.resident_weights + plan.slab_bytes)} = "
               f"{human(plan.resident_weights)} resident + {human(plan.slab_bytes)} slabs")
    if plan.weights_peak > plan.resident_weights + plan.slab_bytes:
        weights += f", {human(plan.weights_peak)} while an encoder or the VAE computes beside the resident blocks"
    return f"{plan.mode}: {'; '.join(unique)}; {weights}; {peak}"


def _suggest(plan: Plan, components: list[ComponentSize], activations: int) -> str:
    need = minimum_bytes(components) + activations
    if plan.budget is not None and need > plan.budget:
        return (f"nothing fits in {gib(plan.budget)} GiB: even layer streaming needs about {gib(need)} GiB; "
                "pick a smaller size or fewer frames, or a quantized catalog entry")
    if plan.mode in ("none", "model_offload"):
        return "try adaptive (block swap sized to this GPU) or layerwise, or a quantized catalog entry"
    return "try layerwise (streams every layer), a smaller size, or a quantized catalog entry"
