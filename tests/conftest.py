"""Shared test setup: a quiet, hub-free environment and the tiny demo models, built once per session."""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
from pathlib import Path

import pytest

# Must happen before sdnq, huggingface_hub or gradio are first imported.
os.environ.setdefault("SDNQ_USE_TORCH_COMPILE", "0")  # sdnq's torch.compile costs seconds per shape on CPU
os.environ["HF_HUB_DISABLE_TELEMETRY"] = "1"
os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"
if not (os.environ.get("CI") and os.environ.get("HF_HOME")):
    # never touch the user's Hugging Face cache: a fresh, empty one per test session
    _hf_home = tempfile.mkdtemp(prefix="test-hf-home-")
    os.environ["HF_HOME"] = _hf_home
    atexit.register(shutil.rmtree, _hf_home, ignore_errors=True)


@pytest.fixture(scope="session")
def models_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A models directory holding ``demo/`` (every tiny demo model), built once for the whole session."""
    from engine.demo import build_demo_models

    path = tmp_path_factory.mktemp("models")
    build_demo_models(path)
    return path
