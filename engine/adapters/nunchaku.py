"""Nunchaku (SVDQuant W4A4) backend for the LoRA stack: detection, transformer loading, LoRA composition.

The real package (github.com/nunchaku-tech/nunchaku, installed from its wheels) ships
``nunchaku.models.transformers.transformer_qwenimage.NunchakuQwenImageTransformer2DModel`` since 1.0.0 (its
"pythonized model and QwenImage support"), whose quantized layers are ``SVDQW4A4Linear`` with a 16-bit low-rank
branch, and the low-rank packers ``nunchaku.lora.flux.nunchaku_converter.{pack,unpack}_lowrank_weight``. No
release has a Qwen-Image LoRA API (``nunchaku/lora/`` holds only ``flux/``), so the stack is composed as seed
004's pack does it (``engine/adapters/nunchaku_lora.py``). The PyPI project named ``nunchaku`` is an unrelated
package: it imports, but has none of this. ``status()`` tells the cases apart in words the UI shows as is.

A change of the stack re-composes every touched layer from its base; nothing at all happens while the
composition is unchanged. The kernels need a CUDA GPU; the composition itself is plain tensor work and is
tested on CPU (tests/test_nunchaku_compose.py).
"""

from __future__ import annotations

import importlib
import importlib.util
from dataclasses import dataclass

from engine.errors import EngineError

TRANSFORMER_MODULE = "nunchaku.models.transformers.transformer_qwenimage"
TRANSFORMER_CLASS = "NunchakuQwenImageTransformer2DModel"
INSTALL_HINT = "install the wheel for your torch/CUDA from github.com/nunchaku-tech/nunchaku/releases"
MIN_VERSION = "1.0.0"  # the first release with the Qwen-Image transformer (nunchaku commit f86ad47)
CONVERTER_MODULE = "nunchaku.lora.flux.nunchaku_converter"


@dataclass(frozen=True)
class NunchakuStatus:
    available: bool
    reason: str
    version: str = ""


def _version() -> str:
    try:
        from importlib.metadata import version

        return version("nunchaku")
    except Exception:  # not installed as a distribution (a source checkout): the package's own __version__
        import sys

        return str(getattr(sys.modules.get("nunchaku"), "__version__", ""))


def _too_old(version: str) -> str:
    return (f"Nunchaku {version or '(unknown version)'} is too old for Qwen-Image: it needs nunchaku >= "
            f"{MIN_VERSION} ({INSTALL_HINT}).")


def status() -> NunchakuStatus:
    """Whether the real nunchaku (with its Qwen-Image transformer) can be used here, and if not, why."""
    if importlib.util.find_spec("nunchaku") is None:
        return NunchakuStatus(False, f"Nunchaku is not installed ({INSTALL_HINT}).")
    try:
        has_models = importlib.util.find_spec("nunchaku.models") is not None  # imports the package itself
    except (ImportError, ValueError):
        has_models = False
    version = _version()
    if not has_models:
        return NunchakuStatus(
            False, f"The installed 'nunchaku' {version} is an unrelated PyPI package of the same name, not "
                   f"MIT HAN Lab's SVDQuant engine; uninstall it and {INSTALL_HINT}.", version)
    try:
        if importlib.util.find_spec(TRANSFORMER_MODULE) is None:
            return NunchakuStatus(False, _too_old(version), version)
    except (ImportError, ValueError):
        return NunchakuStatus(False, _too_old(version), version)
    try:
        module = importlib.import_module(TRANSFORMER_MODULE)
    except Exception as exc:  # the real package, but its CUDA kernels or this Qwen-Image class do not load
        first = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
        return NunchakuStatus(False, f"Nunchaku {version} is installed but its Qwen-Image transformer does not "
                                     f"load here ({first}); it needs an NVIDIA GPU.", version)
    if not hasattr(module, TRANSFORMER_CLASS):
        return NunchakuStatus(False, _too_old(version), version)
    return NunchakuStatus(True, f"Nunchaku {version} is available.", version)


def load_transformer(path: str, dtype, device: str):
    """The SVDQuant transformer from its single ``svdq-*.safetensors`` file."""
    state = status()
    if not state.available:
        raise EngineError(state.reason)
    cls = getattr(importlib.import_module(TRANSFORMER_MODULE), TRANSFORMER_CLASS)
    return cls.from_pretrained(path, torch_dtype=dtype, device=device)


def lowrank_packers():
    """nunchaku's own packers of the low-rank branch (the kernel's tile order), or a message naming the version."""
    try:
        module = importlib.import_module(CONVERTER_MODULE)
        return module.pack_lowrank_weight, module.unpack_lowrank_weight
    except (ImportError, AttributeError):
        raise EngineError(f"Qwen-Image LoRAs on Nunchaku need {CONVERTER_MODULE}.pack_lowrank_weight / "
                          f"unpack_lowrank_weight, which this nunchaku ({_version() or 'unknown version'}) lacks: "
                          f"it needs nunchaku >= {MIN_VERSION}") from None


class NunchakuComposer:
    """Composes the enabled entries of a stack into the transformer's SVDQuant low-rank branch, only when they
    change (seed 004's lazy composition: its wrapper compares the applied stack with the wanted one before each
    run). ``version`` grows with every change, and the job opens its step cache only after ``apply``, so no cache
    ever holds activations of another composition (seed 004 v1.62's stale-cache fix)."""

    def __init__(self, transformer, packers=None):
        self.transformer = transformer
        self._packers = packers
        self._slots = None
        self._applied: tuple | None = None
        self.composes = 0
        self.version = 0
        self.skipped: list[str] = []

    def _slots_or_new(self):
        from engine.adapters.nunchaku_lora import LowRankSlots

        if self._slots is None:
            pack, unpack = self._packers or lowrank_packers()
            self._slots = LowRankSlots(self.transformer, pack, unpack)
        return self._slots

    def apply(self, items) -> bool:
        """``items``: the run's ``StackItem``s. Returns whether anything had to be recomposed."""
        from engine.adapters.lora_stack import composition
        from engine.adapters.nunchaku_lora import stack_deltas

        wanted = composition(items)
        if wanted == (self._applied or ()):
            return False
        slots = self._slots_or_new()
        # stack order decides the concatenation, as in seed 004 (the sum, and so the result, is the same in any)
        stack = [(i.info.state_dict, float(i.weight)) for i in items if i.enabled and i.weight != 0.0]
        out_features = {name: m.out_features for name, m in self.transformer.named_modules()
                        if hasattr(m, "proj_up") and hasattr(m, "out_features")}
        deltas, self.skipped = stack_deltas(stack, out_features)
        missing = [n for n in deltas if n not in out_features]
        if missing:
            raise EngineError(f"the LoRA targets {missing[0]}, which this Nunchaku transformer has no SVDQuant "
                              f"layer for ({len(missing)} such layer(s)); is it a LoRA for another model?")
        slots.compose(deltas)
        self.composes += 1
        self.version += 1
        self._applied = wanted
        return True

    def reset(self) -> None:
        """Back to the base weights: outside a LoRA-stack run no LoRA may contribute."""
        if self._slots is not None and self._slots.touched:
            self._slots.reset()
            self.version += 1
        self._applied = None
