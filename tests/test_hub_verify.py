"""Verify (re-hash a cache another tool wrote) and catalog-check, against the local fake hub."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
from huggingface_hub import snapshot_download

from engine.__main__ import main as cli
from engine.catalog import check as catalog_check
from engine.catalog.presets import CATALOG_PATH, load_catalog
from engine.hub import download as hub
from engine.hub.verify import verify
from tests.fakehub import FakeHub
from tests.hub_fixtures import REPO, WEIGHTS, Recorder, assert_files, free_port

pytest_plugins = ("tests.hub_fixtures",)  # the fakehub and model_folder fixtures

pytestmark = pytest.mark.timeout(60)


def _plain_client_download(tmp_path: Path, endpoint: str) -> Path:
    """The cache as another tool writes it: huggingface_hub's own snapshot_download, sizes checked only."""
    return Path(snapshot_download(REPO, cache_dir=tmp_path / "hf-home" / "hub", endpoint=endpoint,
                                  allow_patterns=list(hub.DIFFUSERS_PATTERNS)))


def _corrupt(folder: Path, rel: str) -> None:
    blob = Path(os.path.realpath(folder / rel))
    data = bytearray(blob.read_bytes())
    data[-10:] = bytes(b ^ 0xFF for b in data[-10:])  # same size: the client and cache_state cannot tell
    os.chmod(blob, 0o644)
    blob.write_bytes(bytes(data))


def test_verify_finds_and_refetches_a_bad_file_another_tool_cached(fakehub: FakeHub, tmp_path, model_folder):
    folder = _plain_client_download(tmp_path, fakehub.endpoint)
    _corrupt(folder, WEIGHTS)
    assert hub.cache_state(REPO).state == "complete", "trusted by size only"

    rec = Recorder()
    report = verify(REPO, progress=rec)
    assert report.source == "hub" and report.bad == [WEIGHTS] and not report.ok
    assert WEIGHTS in report.summary() and "--repair" in report.summary()
    assert len(report.checked) == 5 and rec.calls[-1][0] == rec.calls[-1][1] > 0

    fakehub.reset_counters()
    repaired = verify(REPO, repair=True)
    assert repaired.refetched == [WEIGHTS] and repaired.ok
    assert fakehub.body_bytes() == fakehub.body_bytes(WEIGHTS) > 0, "only the bad file is fetched again"
    assert_files(folder, model_folder)
    again = verify(REPO)
    assert again.ok and not again.bad and "All files are intact" in again.summary()


def test_verify_offline_uses_the_checksums_the_cache_recorded(fakehub: FakeHub, tmp_path, monkeypatch):
    folder = hub.download(REPO)
    _corrupt(folder, "transformer/config.json")  # a small, non-LFS file: git sha1
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    fakehub.reset_counters()
    report = verify(REPO)
    assert report.source == "cache" and report.bad == ["transformer/config.json"]
    assert fakehub.requests == []

    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{free_port()}")  # unreachable: same fallback, said so
    report = verify(REPO)
    assert report.source == "cache" and "could not be asked" in report.summary()
    assert report.bad == ["transformer/config.json"]


def test_verify_names_missing_files_and_refuses_an_empty_cache(fakehub: FakeHub, tmp_path):
    with pytest.raises(hub.HubError, match="nothing to verify"):
        verify(REPO)
    folder = hub.download(REPO)
    (folder / "tokenizer/vocab.txt").unlink()
    report = verify(REPO)
    assert report.missing == ["tokenizer/vocab.txt"] and not report.ok
    assert verify(REPO, repair=True).refetched == ["tokenizer/vocab.txt"]
    assert (folder / "tokenizer/vocab.txt").is_file()


def test_verify_command(fakehub: FakeHub, tmp_path, capsys):
    folder = hub.download(REPO)
    assert cli(["verify", REPO]) == 0
    _corrupt(folder, WEIGHTS)
    assert cli(["verify", REPO]) == 1
    assert WEIGHTS in capsys.readouterr().out
    assert cli(["verify", REPO, "--repair"]) == 0
    assert "Fetched again and verified" in capsys.readouterr().out
    assert cli(["verify", "no-such-entry"]) == 2


# ---------------------------------------------------------------------------------------------- catalog-check
def _quanto_folder(model_folder: Path, tmp_path: Path) -> Path:
    """The same model in Optimum Quanto's layout: quantization_map.json beside the weights, no SDNQ config."""
    folder = tmp_path / "quanto"
    shutil.copytree(model_folder, folder)
    config = json.loads((folder / "transformer/config.json").read_text())
    config.pop("quantization_config")
    (folder / "transformer/config.json").write_text(json.dumps(config))
    (folder / "transformer/quantization_map.json").write_text(json.dumps({"x.weight": {"weights": "qint8"}}))
    return folder


def test_catalog_check_reports_what_disagrees_and_writes_sizes(fakehub: FakeHub, tmp_path, model_folder, capsys):
    doc = json.loads(CATALOG_PATH.read_text())
    keep = {"FLUX.1-dev-SDNQ-uint4", "FLUX.1-schnell-SDNQ-uint4", "FLUX.1-Krea-dev-SDNQ-uint4",
            "FLUX.1-Kontext-dev-SDNQ-uint4"}
    doc["entries"] = [e for e in doc["entries"] if e["id"] in keep]
    path = tmp_path / "sdnq_catalog.json"
    path.write_text(json.dumps(doc, indent=2))
    fakehub.add_repo("Disty0/FLUX.1-dev-SDNQ-uint4-svd-r32", model_folder)  # right but for its size
    fakehub.add_repo("Disty0/FLUX.1-schnell-SDNQ-uint4-svd-r32", _quanto_folder(model_folder, tmp_path))
    fakehub.add_repo("Disty0/FLUX.1-Kontext-dev-SDNQ-uint4-svd-r32", model_folder)  # says FluxPipeline
    # Krea is not on this hub at all

    findings = {f.entry.id: f for f in (catalog_check.check_entry(e) for e in load_catalog(path))}
    rows = {entry: {r[0]: r for r in f.rows} for entry, f in findings.items()}
    size_gb = findings["FLUX.1-dev-SDNQ-uint4"].hub_gb
    assert set(rows["FLUX.1-dev-SDNQ-uint4"]) == {"download_gb"}
    assert rows["FLUX.1-dev-SDNQ-uint4"]["download_gb"][1:] == ("10.4", f"{size_gb:g}")
    assert "quanto" in rows["FLUX.1-schnell-SDNQ-uint4"]["quant_method"][2]
    assert set(rows["FLUX.1-Krea-dev-SDNQ-uint4"]) == {"repo_id"}
    assert "UnknownRepoError" in rows["FLUX.1-Krea-dev-SDNQ-uint4"]["repo_id"][2]
    assert rows["FLUX.1-Kontext-dev-SDNQ-uint4"]["pipeline"][1:] == ("FluxKontextPipeline", "FluxPipeline")

    before = path.read_text()
    assert cli(["catalog-check", "--catalog", str(path), "--write"]) == 1
    out = capsys.readouterr().out
    assert "quant_method" in out and "FLUX.1-Krea-dev-SDNQ-uint4" in out and "updated download_gb of 3" in out
    after = path.read_text()
    changed = [(a, b) for a, b in zip(before.splitlines(), after.splitlines()) if a != b]
    assert len(changed) == 3 and all('"download_gb"' in a and '"download_gb"' in b for a, b in changed)
    by_id = {e.id: e for e in load_catalog(path)}
    assert by_id["FLUX.1-dev-SDNQ-uint4"].download_gb == size_gb
    assert by_id["FLUX.1-Krea-dev-SDNQ-uint4"].download_gb == 10.4  # unknown on the hub: left alone
    again = {f.entry.id: f for f in (catalog_check.check_entry(e) for e in load_catalog(path))}
    assert again["FLUX.1-dev-SDNQ-uint4"].rows == []
