"""The hub and catalog tests pass whatever the caller's shell holds (issue 22): run them once more in a child
pytest with HF_HUB_OFFLINE, HF_TOKEN, HF_ENDPOINT and HF_HOME set to hostile values, bounded in time."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
RELEVANT = [
    "tests/test_hub.py", "tests/test_hub_faults.py", "tests/test_hub_verify.py", "tests/test_catalog_flow.py",
    "tests/test_ui_catalog.py", "tests/test_presets.py",
]
LIMIT_S = 420


@pytest.mark.timeout(LIMIT_S + 30)
def test_hub_tests_pass_with_hostile_hf_variables(tmp_path):
    not_a_folder = tmp_path / "hf-home-is-a-file"
    not_a_folder.write_text("HF_HOME points at a file: nothing can be cached here")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "STUDIO_HUB_", "PYTEST_"))}
    env.pop("CI", None)  # CI may pin HF_HOME; here the point is a hostile one
    env.update({
        "HF_HUB_OFFLINE": "1",
        "HF_TOKEN": "hf_hostile_token_that_is_not_valid_anywhere",
        "HF_ENDPOINT": "http://127.0.0.1:9",  # the discard port: nothing answers
        "HF_HOME": str(not_a_folder),
    })
    try:
        done = subprocess.run(
            [sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", "-n", "0", *RELEVANT],
            cwd=ROOT, env=env, capture_output=True, text=True, timeout=LIMIT_S,
        )
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"the hub tests took over {LIMIT_S} s with hostile HF variables:\n{(exc.stdout or '')[-3000:]}")
    tail = (done.stdout + done.stderr)[-4000:]
    assert done.returncode == 0, tail
    assert " passed" in tail and "failed" not in tail
