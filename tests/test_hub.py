"""The catalog's download layer (engine/hub/download.py) end to end: the real huggingface_hub client against a local fake hub.

Nothing here touches huggingface.co: HF_ENDPOINT points at tests/fakehub.py on 127.0.0.1, HF_HOME at a tmp dir.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from engine.errors import Cancelled, ModelLoadError
from engine.hub import download as hubmod
from engine.hub.download import (
    ChecksumMismatchError,
    DownloadInterruptedError,
    FilesMissingError,
    GatedRepoAccessError,
    HubUnreachableError,
    NotEnoughDiskError,
    OfflineNotCachedError,
    RevisionMissingError,
    UnknownRepoError,
    cache_state,
    download,
)
from tests.fakehub import FakeHub, git_sha1
from tests.hub_fixtures import REPO, ROOT, WEIGHTS, Recorder, assert_files, free_port, storage_of, total_of

pytest_plugins = ("tests.hub_fixtures",)  # the fakehub and model_folder fixtures


# ----------------------------------------------------------------------------------------------- tests
def test_download_progress_verify_and_cache_hit(fakehub: FakeHub, tmp_path: Path, model_folder: Path):
    total = total_of(model_folder)
    assert cache_state(REPO).state == "absent"
    remote = cache_state(REPO, check_remote=True)
    assert (remote.state, remote.expected_bytes, remote.path) == ("absent", total, None)

    rec = Recorder()
    folder = download(REPO, progress=rec)
    assert_files(folder, model_folder)
    assert folder.parent.name == "snapshots" and folder.is_relative_to(tmp_path / "hf-home" / "hub")

    done = [c[0] for c in rec.calls]
    assert len(rec.calls) > 20, "byte progress should move in small steps"
    assert done == sorted(done), "progress never goes backwards"
    assert all(c[1] == total for c in rec.calls)
    assert rec.calls[-1][0] == total
    assert any(WEIGHTS in c[2] for c in rec.calls)

    state = cache_state(REPO)
    assert (state.state, state.path, state.expected_bytes, state.bytes_on_disk) == ("complete", folder, total, total)

    # a complete cache: no request of any kind, let alone a file body
    fakehub.reset_counters()
    rec2 = Recorder()
    assert download(REPO, progress=rec2) == folder
    assert fakehub.requests == [] and fakehub.resolve_gets() == 0
    assert rec2.calls[-1][:2] == (total, total)


def test_cancel_leaves_partial_and_the_next_call_resumes(fakehub: FakeHub, tmp_path: Path, model_folder: Path):
    rec = Recorder(cancel_at=1_000_000)
    with pytest.raises(Cancelled):
        download(REPO, progress=rec, cancel=rec.cancel)

    state = cache_state(REPO)
    assert state.state == "partial" and state.path is None
    assert 0 < state.bytes_on_disk < total_of(model_folder)
    partials = list((storage_of(tmp_path) / "blobs").glob("*.incomplete"))
    assert len(partials) == 1, "only the file that was cut mid-way is kept as partial (no empty leftovers)"
    kept = partials[0].stat().st_size
    assert kept >= 900_000
    assert not [p for p in (storage_of(tmp_path) / "snapshots").rglob("*") if p.is_file()], "nothing looks complete"

    fakehub.reset_counters()
    rec2 = Recorder()
    folder = download(REPO, progress=rec2)
    assert_files(folder, model_folder)
    size = len((model_folder / WEIGHTS).read_bytes())
    assert fakehub.body_bytes(WEIGHTS) == size - kept < size
    assert fakehub.ranges(WEIGHTS) == [f"bytes={kept}-"]
    assert rec2.calls[0][0] >= kept, "progress starts from what is already on disk"
    assert cache_state(REPO).state == "complete"
    assert not list((storage_of(tmp_path) / "blobs").glob("*.incomplete"))


_CHILD = r"""
import sys, types
root = sys.argv[1]
sys.path.insert(0, root)
pkg = types.ModuleType("engine"); pkg.__path__ = [root + "/engine"]; sys.modules["engine"] = pkg  # skip torch
import huggingface_hub.constants as c
c.DOWNLOAD_CHUNK_SIZE = 64 * 1024
from engine.hub.download import download
download(sys.argv[2])
print("finished")
"""


@pytest.mark.skipif(sys.platform == "win32", reason="SIGKILL")
def test_resume_after_killed_process(fakehub: FakeHub, tmp_path: Path, model_folder: Path):
    fakehub.throttle_bps = 400_000  # ~8 s for the weights: time to kill it mid-file
    child = subprocess.Popen(
        [sys.executable, "-c", _CHILD, str(ROOT), REPO],
        env=dict(os.environ),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    blobs = storage_of(tmp_path) / "blobs"
    deadline = time.monotonic() + 60
    try:
        while time.monotonic() < deadline:
            sizes = [p.stat().st_size for p in blobs.glob("*.incomplete")] if blobs.is_dir() else []
            if sizes and max(sizes) >= 600_000:
                break
            assert child.poll() is None, child.communicate()
            time.sleep(0.02)
        else:
            pytest.fail("the child never got 600 kB into the file")
        os.kill(child.pid, signal.SIGKILL)
    finally:
        child.wait(10)
    assert child.returncode == -signal.SIGKILL
    kept = max(p.stat().st_size for p in blobs.glob("*.incomplete"))
    assert cache_state(REPO).state == "partial"

    fakehub.throttle_bps = None
    fakehub.wait_idle()  # the dead child's connection may still be mid-chunk on the server side
    fakehub.reset_counters()
    folder = download(REPO)
    assert_files(folder, model_folder)  # byte-exact, and download() checked sha256 before linking
    size = len((model_folder / WEIGHTS).read_bytes())
    assert fakehub.body_bytes(WEIGHTS) == size - kept < size
    assert fakehub.ranges(WEIGHTS) == [f"bytes={kept}-"]
    assert cache_state(REPO).state == "complete"


def test_orphan_of_a_killed_plain_client_is_adopted(fakehub: FakeHub, tmp_path: Path, model_folder: Path):
    """huggingface_hub 2.4.0 itself leaves `<etag>.<hex>.incomplete` when killed; we resume from it."""
    data = (model_folder / WEIGHTS).read_bytes()
    sha = fakehub.repos[REPO].files[WEIGHTS].sha256
    blobs = storage_of(tmp_path) / "blobs"
    blobs.mkdir(parents=True)
    (blobs / f"{sha}.1a2b3c4d.incomplete").write_bytes(data[:1_234_567])
    assert cache_state(REPO).state == "partial"

    folder = download(REPO)
    assert_files(folder, model_folder)
    assert fakehub.ranges(WEIGHTS) == ["bytes=1234567-"]
    assert fakehub.body_bytes(WEIGHTS) == len(data) - 1_234_567


def test_half_downloaded_folder_fetches_only_what_is_missing(fakehub: FakeHub, tmp_path: Path, model_folder: Path):
    folder = download(REPO)
    weights = folder / WEIGHTS
    os.unlink(os.path.realpath(weights))
    weights.unlink()
    assert cache_state(REPO).state == "partial"

    fakehub.reset_counters()
    assert download(REPO) == folder
    assert_files(folder, model_folder)
    assert fakehub.resolve_gets() == 1 and fakehub.body_bytes() == len((model_folder / WEIGHTS).read_bytes())


def test_stream_failures(fakehub: FakeHub, tmp_path: Path, model_folder: Path):
    # a connection that drops every 700 kB: the client's own in-call retries resume with Range and finish
    fakehub.cut_after(WEIGHTS, 700_000, times=None)
    folder = download(REPO)
    assert_files(folder, model_folder)
    assert len(fakehub.ranges(WEIGHTS)) >= 4

    # one that never delivers: a clear message once the retries are spent, what arrived is kept
    other = "Disty0/tiny-sdnq-other"
    fakehub.add_repo(other, model_folder)
    fakehub.cut_after(WEIGHTS, 300_000, times=1)
    rec = Recorder()
    original = fakehub._take_cut

    def cut_then_always_zero(path):  # first response: 300 kB, then nothing at all
        after = original(path)
        return 0 if after is None and path == WEIGHTS else after

    fakehub._take_cut = cut_then_always_zero
    with pytest.raises(DownloadInterruptedError, match="run the download again to resume") as info:
        download(other, progress=rec)
    assert isinstance(info.value, ModelLoadError)
    assert cache_state(other).state == "partial"

    fakehub._take_cut = original
    fakehub.clear_cuts()
    fakehub.reset_counters()
    download(other)
    assert fakehub.ranges(WEIGHTS)[0].startswith("bytes=")
    assert fakehub.body_bytes(WEIGHTS) < len((model_folder / WEIGHTS).read_bytes())


def test_unreachable_hub(fakehub: FakeHub, monkeypatch: pytest.MonkeyPatch):
    dead = f"http://127.0.0.1:{free_port()}"
    monkeypatch.setenv("HF_ENDPOINT", dead)
    with pytest.raises(HubUnreachableError) as info:
        download(REPO)
    message = str(info.value).lower()
    assert f"cannot reach the hugging face hub at {dead}" in message
    assert "hf_hub_offline=1" in message
    assert cache_state(REPO).state == "absent"


def test_offline_mode(fakehub: FakeHub, monkeypatch: pytest.MonkeyPatch, model_folder: Path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(OfflineNotCachedError, match="HF_HUB_OFFLINE"):
        download(REPO)
    assert fakehub.requests == []

    monkeypatch.delenv("HF_HUB_OFFLINE")
    folder = download(REPO)
    fakehub.stop()  # offline for real
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert download(REPO) == folder
    assert cache_state(REPO).state == "complete"
    # the same without the flag: a complete cache needs no hub either
    monkeypatch.delenv("HF_HUB_OFFLINE")
    assert download(REPO) == folder


def test_offline_with_partial_cache(fakehub: FakeHub, monkeypatch: pytest.MonkeyPatch):
    rec = Recorder(cancel_at=500_000)
    with pytest.raises(Cancelled):
        download(REPO, progress=rec, cancel=rec.cancel)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(OfflineNotCachedError, match="of it are cached"):
        download(REPO)


def test_unknown_repo_and_bad_ids(fakehub: FakeHub, tmp_path: Path):
    with pytest.raises(UnknownRepoError, match="HF_TOKEN") as info:
        download("Disty0/does-not-exist")
    assert "was not found" in str(info.value)
    assert cache_state("Disty0/does-not-exist").state == "absent"
    with pytest.raises(UnknownRepoError, match="not a valid repo id"):
        download("not a repo id")


def test_gated_repo(fakehub: FakeHub, monkeypatch: pytest.MonkeyPatch, model_folder: Path):
    repo = fakehub.repos[REPO]
    repo.gated, repo.token = True, "hf_good"
    with pytest.raises(GatedRepoAccessError, match="accept its licence") as info:
        download(REPO)
    assert "HF_TOKEN" in str(info.value) and "No token is set" in str(info.value)
    assert f"{fakehub.endpoint}/{REPO}" in str(info.value), "the link points at the hub in use (HF_ENDPOINT)"
    assert "huggingface.co" not in str(info.value)
    assert fakehub.resolve_gets() == 0 and cache_state(REPO).state == "absent"

    monkeypatch.setenv("HF_TOKEN", "hf_wrong")
    with pytest.raises(GatedRepoAccessError, match="has no access"):
        download(REPO)

    monkeypatch.setenv("HF_TOKEN", "hf_good")  # read at call time, not at import
    assert_files(download(REPO), model_folder)


def test_revision_missing(fakehub: FakeHub):
    with pytest.raises(RevisionMissingError, match="no-such-branch"):
        download(REPO, revision="no-such-branch")


def test_files_missing_on_the_hub(fakehub: FakeHub, model_folder: Path):
    with pytest.raises(FilesMissingError, match="no files matching"):
        download(REPO, allow_patterns=["*.gguf"])

    fakehub.repos[REPO].break_file(WEIGHTS)  # listed, but the hub cannot serve it
    with pytest.raises(FilesMissingError, match="missing") as info:
        download(REPO)
    assert WEIGHTS in str(info.value)
    assert fakehub.resolve_gets() == 0, "every file is checked (HEAD) before the first body byte"
    assert cache_state(REPO).state == "absent"


def test_not_enough_disk_is_refused_before_any_body_byte(fakehub: FakeHub, monkeypatch: pytest.MonkeyPatch):
    real = hubmod.shutil.disk_usage

    def tiny_disk(path):
        usage = real(path)
        return type(usage)(usage.total, usage.total - 1_000_000, 1_000_000)

    monkeypatch.setattr(hubmod.shutil, "disk_usage", tiny_disk)
    with pytest.raises(NotEnoughDiskError, match="Not enough disk space") as info:
        download(REPO)
    assert "1.0 MB free" in str(info.value) and "HF_HOME" in str(info.value)
    assert fakehub.resolve_gets() == 0 and fakehub.body_bytes() == 0
    assert cache_state(REPO).state == "absent"


def test_corrupted_bytes_fail_the_checksum(fakehub: FakeHub, tmp_path: Path, model_folder: Path):
    repo = fakehub.repos[REPO]
    repo.corrupt_file(WEIGHTS)  # right size, right headers, wrong bytes
    with pytest.raises(ChecksumMismatchError, match="checksum"):
        download(REPO)
    state = cache_state(REPO)
    assert state.state != "complete" and state.path is None
    blobs = storage_of(tmp_path) / "blobs"
    assert not (blobs / repo.files[WEIGHTS].sha256).exists()
    assert not list(blobs.glob("*.incomplete")), "the bad bytes are deleted, not kept for a resume"

    repo.corrupt.clear()
    fakehub.reset_counters()
    assert_files(download(REPO), model_folder)
    assert fakehub.body_bytes(WEIGHTS) == len((model_folder / WEIGHTS).read_bytes())


def test_bad_resumed_prefix_is_downloaded_again(fakehub: FakeHub, tmp_path: Path, model_folder: Path):
    sha = fakehub.repos[REPO].files[WEIGHTS].sha256
    blobs = storage_of(tmp_path) / "blobs"
    blobs.mkdir(parents=True)
    (blobs / f"{sha}.incomplete").write_bytes(b"\0" * 500_000)  # garbage someone left under our name
    assert_files(download(REPO), model_folder)
    assert fakehub.ranges(WEIGHTS) == ["bytes=500000-"]
    assert fakehub.body_bytes(WEIGHTS) == len((model_folder / WEIGHTS).read_bytes()) - 500_000 + len(
        (model_folder / WEIGHTS).read_bytes()
    )


def test_environment_is_read_at_call_time(fakehub: FakeHub, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    other_cache = tmp_path / "elsewhere"
    monkeypatch.setenv("HF_HUB_CACHE", str(other_cache))  # wins over HF_HOME, as in huggingface_hub
    commit = fakehub.repos[REPO].commit
    folder = download(REPO, revision=commit)
    assert folder == other_cache / ("models--" + REPO.replace("/", "--")) / "snapshots" / commit
    assert cache_state(REPO, revision=commit).state == "complete"
    assert cache_state(REPO).state == "absent", "a commit download writes no refs/main"
    monkeypatch.delenv("HF_HUB_CACHE")
    assert cache_state(REPO, revision=commit).state == "absent"


def test_fakehub_etags_match_git():
    assert git_sha1(b"Hello, World!") == "b45ef6fec89518d314f546fd6c3025367b721684"
