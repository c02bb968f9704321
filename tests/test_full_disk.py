"""A full disk loses nothing and breaks nothing: a save that meets ``ENOSPC`` fails with a message saying how
much space is left and how to choose another folder, leaves no partial file (earlier complete runs stay), and a
content-named copy that a full disk cut short is written again instead of trusted.

The disk: a byte quota on every file opened for writing under the test's folder (``open`` is patched, so PIL,
numpy and pathlib all meet it) and ``shutil.disk_usage`` reporting what is left; with root, also a real 64 KiB
tmpfs (ffmpeg's own writes meet that one)."""

from __future__ import annotations

import builtins
import errno
import io
import os
import shutil
import subprocess
from collections import namedtuple
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from engine import Engine
from engine.errors import EngineError
from engine.requests import I2VRequest, PerceptionRequest, TextToImageRequest

FULL = r"the outputs folder is full \(\d+(\.\d)? MB free\); free space or choose another with --outputs-dir"
Usage = namedtuple("Usage", "total used free")


class Quota:
    """At most ``left`` more bytes fit under ``root``; the next write raises ENOSPC after writing what fits."""

    def __init__(self, root: Path, left: int):
        self.root, self.left = str(root), left

    def install(self, monkeypatch) -> None:
        real_open, real_usage, quota = io.open, shutil.disk_usage, self

        class Limited:
            def __init__(self, f):
                self._f = f

            def write(self, data):
                size = len(memoryview(data).cast("B")) if not isinstance(data, str) else len(data.encode())
                if size > quota.left:
                    fits = max(quota.left, 0)
                    if fits:
                        self._f.write(data[:fits])
                    quota.left = 0
                    raise OSError(errno.ENOSPC, "No space left on device")
                quota.left -= size
                return self._f.write(data)

            def __enter__(self):
                return self

            def __exit__(self, *exc):
                self._f.close()

            def __getattr__(self, name):
                return getattr(self._f, name)

        def limited_open(file, mode="r", *args, **kwargs):
            f = real_open(file, mode, *args, **kwargs)
            inside = isinstance(file, (str, os.PathLike)) and os.path.abspath(file).startswith(quota.root)
            return Limited(f) if inside and any(m in mode for m in "wax+") else f

        def usage(path):
            real = real_usage(path)
            if os.path.abspath(path).startswith(quota.root):
                return Usage(real.total, real.used, max(quota.left, 0))
            return real

        monkeypatch.setattr(builtins, "open", limited_open)
        monkeypatch.setattr(io, "open", limited_open)
        monkeypatch.setattr(shutil, "disk_usage", usage)


def leftovers(folder: Path) -> list[str]:
    """Every file under ``folder`` (hidden ones too)."""
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())


@pytest.fixture
def start_image(tmp_path):
    path = tmp_path / "start.png"
    Image.new("RGB", (64, 64), (200, 80, 40)).save(path)
    return str(path)


def save_perception(out: Path, pano_path: Path):
    from engine.jobs.perception import write_outputs

    tasks = ("depth", "normal", "semantic")
    gen = torch.Generator().manual_seed(0)
    maps = {t: torch.rand(3, 32, 64, generator=gen) for t in tasks}
    with Image.open(pano_path) as pano:
        write_outputs(out, PerceptionRequest(panorama=str(pano_path), tasks=tasks, steps=2), maps, pano.convert("RGB"))


def save_pngs(out: Path, _):
    from engine.outputs import save_images

    images = [Image.fromarray(np.random.default_rng(i).integers(0, 255, (96, 96, 3), np.uint8)) for i in range(3)]
    save_images(images, out, TextToImageRequest(prompt="x", width=96, height=96))


def save_mp4(out: Path, start: Path):
    from engine.video.encode import save_video_result

    req = I2VRequest(image=str(start), prompt="go", width=64, height=64, resolution="custom", num_frames=5)
    save_video_result(np.random.default_rng(0).random((5, 64, 64, 3)), out, req)


SAVES = {"perception": save_perception, "images": save_pngs, "video": save_mp4}


@pytest.mark.parametrize("left", [0, 300, 4_000, 30_000])
@pytest.mark.parametrize("kind", list(SAVES))
def test_a_full_disk_fails_the_save_with_words_and_leaves_no_partial_file(tmp_path, monkeypatch, kind, left):
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    pano = inputs / "pano.png"
    Image.new("RGB", (64, 32), (90, 120, 200)).save(pano)
    start = inputs / "start.png"
    Image.new("RGB", (64, 64), (200, 80, 40)).save(start)
    out = tmp_path / "outputs"
    SAVES[kind](out, pano if kind == "perception" else start)  # a complete earlier run: it must survive
    before = leftovers(out)
    Quota(out, left).install(monkeypatch)
    with pytest.raises(EngineError, match=FULL):
        SAVES[kind](out, pano if kind == "perception" else start)
    monkeypatch.undo()
    assert leftovers(out) == before  # nothing partial, nothing of the earlier run lost


def test_a_video_whose_size_does_not_fit_is_refused_before_ffmpeg_starts(tmp_path, monkeypatch, start_image):
    out = tmp_path / "outputs"
    out.mkdir()
    Quota(out, 50_000).install(monkeypatch)  # the 5 frames are 61 kB raw: the pre-check wants more than that
    started = []
    import imageio_ffmpeg

    monkeypatch.setattr(imageio_ffmpeg, "write_frames", lambda *a, **k: started.append(1))
    from engine.video.encode import save_video_result

    req = I2VRequest(image=start_image, prompt="go", width=64, height=64, resolution="custom", num_frames=5)
    frames = np.random.default_rng(0).random((5, 64, 64, 3))
    monkeypatch.setattr("engine.video.encode.expected_bytes", lambda arr, fmt: 10 * arr.nbytes)
    with pytest.raises(EngineError, match=FULL):
        save_video_result(frames, out, req)
    assert not started and leftovers(out) == []


def test_a_reference_copy_cut_short_is_written_again_not_trusted(tmp_path):
    from ui.tabs.ipadapter import keep_reference

    src = tmp_path / "ref.png"
    Image.fromarray(np.random.default_rng(1).integers(0, 255, (40, 40, 3), np.uint8)).save(src)
    outputs = tmp_path / "outputs"
    first = Path(keep_reference(outputs, str(src)))
    assert first.read_bytes() == src.read_bytes()
    first.write_bytes(b"")  # what a full disk left under the content name
    again = Path(keep_reference(outputs, str(src)))
    assert again == first and again.read_bytes() == src.read_bytes()
    first.write_bytes(src.read_bytes()[:-10] + b"0123456789")  # same size, other bytes
    assert Path(keep_reference(outputs, str(src))).read_bytes() == src.read_bytes()


def test_a_reference_copy_on_a_full_disk_leaves_nothing_under_its_name(tmp_path, monkeypatch):
    from ui.tabs.ipadapter import keep_reference

    src = tmp_path / "ref.png"
    Image.fromarray(np.random.default_rng(2).integers(0, 255, (40, 40, 3), np.uint8)).save(src)
    outputs = tmp_path / "outputs"
    (outputs / "references").mkdir(parents=True)
    Quota(outputs, 100).install(monkeypatch)
    with pytest.raises(EngineError, match=FULL):
        keep_reference(outputs, str(src))
    monkeypatch.undo()
    assert leftovers(outputs) == []


def test_an_uploaded_lora_on_a_full_disk_leaves_nothing(tmp_path, monkeypatch):
    from engine.adapters.lora_presets import store_upload

    src = tmp_path / "style.safetensors"
    src.write_bytes(os.urandom(20_000))
    models = tmp_path / "models"
    (models / "loras").mkdir(parents=True)
    Quota(models, 5_000).install(monkeypatch)
    with pytest.raises(EngineError, match=r"the models folder is full .*--models-dir"):
        store_upload(models, str(src))
    monkeypatch.undo()
    assert leftovers(models) == []
    assert Path(store_upload(models, str(src))).read_bytes() == src.read_bytes()  # and the retry works


def test_a_full_disk_on_an_engine_run_says_so(models_dir, tmp_path, monkeypatch):
    out = tmp_path / "outputs"
    engine = Engine(demo=True, models_dir=models_dir, outputs_dir=out)
    req = TextToImageRequest(prompt="a cat", width=64, height=64, steps=2, seed=1)
    Quota(out, 2_000).install(monkeypatch)
    with pytest.raises(EngineError, match=FULL):
        engine.run(req)
    monkeypatch.undo()
    assert leftovers(out) == [] if out.exists() else True
    assert len(engine.run(req).files) == 2  # the next run, with room, saves


@pytest.fixture
def tiny_tmpfs(tmp_path):
    """A real 64 KiB filesystem (needs root and a kernel that allows the mount here)."""
    mount = tmp_path / "full"
    mount.mkdir()
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(mount)], capture_output=True)
    if proc.returncode:
        pytest.skip(f"cannot mount a tmpfs here: {proc.stderr.decode().strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", str(mount)], check=False)


def test_a_real_64_kib_folder_leaves_no_broken_file(tiny_tmpfs, tmp_path):
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    pano, start = inputs / "pano.png", inputs / "start.png"
    Image.fromarray(np.random.default_rng(3).integers(0, 255, (128, 256, 3), np.uint8)).save(pano)
    Image.new("RGB", (64, 64), (200, 80, 40)).save(start)
    failures = []
    for kind, save in SAVES.items():
        for _ in range(3):  # until the disk is full: the first runs may fit
            try:
                save(tiny_tmpfs, pano if kind == "perception" else start)
            except EngineError as exc:
                failures.append(str(exc))
                break
    assert failures and all("the outputs folder is full" in f for f in failures)
    from test_atomic_outputs import broken

    bad = [name for name in leftovers(tiny_tmpfs) if broken(tiny_tmpfs / name, b"")]
    assert bad == []
