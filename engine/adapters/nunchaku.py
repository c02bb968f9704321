"""Nunchaku (SVDQuant W4A4) backend for the LoRA stack: detection, transformer loading, LoRA composition.

The real package (github.com/nunchaku-tech/nunchaku, installed from its wheels) ships
``nunchaku.models.transformers.transformer_qwenimage.NunchakuQwenImageTransformer2DModel`` and, in its LoRA
releases, ``nunchaku.lora.qwenimage.compose_lora``. The PyPI project named ``nunchaku`` is an unrelated package:
it imports, but has none of this. ``status()`` tells the three cases apart in words the UI shows as is.

Nunchaku has no peft adapters: LoRAs are concatenated onto each quantized layer's low-rank branch. So a change
of the stack re-composes all of it (``compose_lora`` + ``update_lora_params``), and nothing at all happens while
the composition is unchanged. This path needs a CUDA GPU and the real package; it is not exercised on CPU.
"""

from __future__ import annotations

import importlib
import importlib.util
from dataclasses import dataclass

from engine.errors import EngineError

TRANSFORMER_MODULE = "nunchaku.models.transformers.transformer_qwenimage"
TRANSFORMER_CLASS = "NunchakuQwenImageTransformer2DModel"
INSTALL_HINT = "install the wheel for your torch/CUDA from github.com/nunchaku-tech/nunchaku/releases"


@dataclass(frozen=True)
class NunchakuStatus:
    available: bool
    reason: str
    version: str = ""


def _version() -> str:
    try:
        from importlib.metadata import version

        return version("nunchaku")
    except Exception:  # not installed as a distribution (a source checkout): no version to show
        return ""


def status() -> NunchakuStatus:
    """Whether the real nunchaku (with its Qwen-Image transformer) can be used here, and if not, why."""
    if importlib.util.find_spec("nunchaku") is None:
        return NunchakuStatus(False, f"Nunchaku is not installed ({INSTALL_HINT}).")
    version = _version()
    try:
        has_models = importlib.util.find_spec("nunchaku.models") is not None
    except (ImportError, ValueError):
        has_models = False
    if not has_models:
        return NunchakuStatus(
            False, f"The installed 'nunchaku' {version} is an unrelated PyPI package of the same name, not "
                   f"MIT HAN Lab's SVDQuant engine; uninstall it and {INSTALL_HINT}.", version)
    try:
        module = importlib.import_module(TRANSFORMER_MODULE)
    except Exception as exc:  # the real package, but its CUDA kernels or this Qwen-Image class do not load
        first = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
        return NunchakuStatus(False, f"Nunchaku {version} is installed but its Qwen-Image transformer does not "
                                     f"load here ({first}); it needs an NVIDIA GPU.", version)
    if not hasattr(module, TRANSFORMER_CLASS):
        return NunchakuStatus(False, f"Nunchaku {version} has no Qwen-Image transformer; update it.", version)
    return NunchakuStatus(True, f"Nunchaku {version} is available.", version)


def load_transformer(path: str, dtype, device: str):
    """The SVDQuant transformer from its single ``svdq-*.safetensors`` file."""
    state = status()
    if not state.available:
        raise EngineError(state.reason)
    cls = getattr(importlib.import_module(TRANSFORMER_MODULE), TRANSFORMER_CLASS)
    return cls.from_pretrained(path, torch_dtype=dtype, device=device)


class NunchakuComposer:
    """Composes the enabled entries of a stack into the transformer's LoRA branch, only when they change."""

    def __init__(self, transformer):
        self.transformer = transformer
        self._applied: tuple | None = None
        self.composes = 0

    def apply(self, items) -> bool:
        """``items``: the run's ``StackItem``s. Returns whether anything had to be recomposed."""
        from engine.adapters.lora_stack import composition

        wanted = composition(items)
        if wanted == self._applied:
            return False
        by_adapter = {i.adapter: i for i in items}
        if not wanted:
            self.reset()
            self._applied = wanted
            return True
        if not hasattr(self.transformer, "update_lora_params"):
            raise EngineError("this Nunchaku version cannot apply LoRAs to Qwen-Image yet; update nunchaku")
        try:
            from nunchaku.lora.qwenimage import compose_lora
        except ImportError as exc:
            raise EngineError(f"this Nunchaku version has no Qwen-Image LoRA composer ({exc}); update nunchaku") \
                from None
        composed = compose_lora([(dict(by_adapter[a].info.state_dict), w) for a, w in wanted])
        self.transformer.update_lora_params(composed)
        self.composes += 1
        self._applied = wanted
        return True

    def reset(self) -> None:
        """Back to the base weights: outside a LoRA-stack run no LoRA may contribute."""
        if self._applied:
            reset = getattr(self.transformer, "reset_lora", None)
            if reset is not None:
                reset()
            self._applied = None
