"""Every file the app writes is whole, and a run's files appear as a set: killed (``os._exit``, as ``kill -9``)
at 20 points of a run's saves, each file left is complete, and after the next start's recovery every set has
its JSON and all its files, or is absent. tests/kill_points.py holds the worker that kills."""

from __future__ import annotations

import json
import re
import struct
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
POINTS = 20
STEM = re.compile(r"^([a-z_0-9]+-\d{8}-\d{6}-\d{3}(?:-s\d+)?)(.*)$")


def run_worker(base: Path, points: list[int]) -> dict:
    proc = subprocess.run([sys.executable, str(ROOT / "tests" / "kill_points.py"), str(base), *map(str, points)],
                          cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return {int(k): v for k, v in json.loads(proc.stdout.strip().splitlines()[-1]).items()}


def broken(path: Path, source_lora: bytes) -> str:
    """Why ``path`` is not a complete file ("" when it is)."""
    from engine.video.encode import read_video

    try:
        if path.suffix == ".png":
            with Image.open(path) as im:
                im.load()
        elif path.suffix == ".npy":
            np.load(path)
        elif path.suffix == ".json":
            json.loads(path.read_text())
        elif path.suffix == ".glb":
            data = path.read_bytes()
            if data[:4] != b"glTF" or struct.unpack("<I", data[8:12])[0] != len(data):
                return "a cut glb"
        elif path.suffix in (".mp4", ".webm", ".gif"):
            frames, _ = read_video(path)
            if len(frames) != 5:
                return f"{len(frames)} of 5 frames"
        elif path.suffix == ".safetensors":
            if path.read_bytes() != source_lora:
                return f"{path.stat().st_size} of {len(source_lora)} bytes"
        else:
            return "an unexpected file"
    except Exception as exc:  # noqa: BLE001 - any failure to read is what the test counts
        return f"unreadable ({type(exc).__name__})"
    return ""


def sets_of(folder: Path) -> dict[str, set[str]]:
    """Files of the outputs folder by run stem: {stem: {suffixes}}."""
    sets: dict[str, set[str]] = defaultdict(set)
    for path in folder.iterdir() if folder.is_dir() else ():
        match = STEM.match(path.name)
        if match:
            sets[match.group(1)].add(match.group(2))
    return sets


def kind_of(stem: str) -> str:
    return stem.split("-", 1)[0]


def check(root: Path, expected: dict[str, set[str]], source_lora: bytes, recover) -> tuple[list[str], list[str]]:
    """(broken visible files, incomplete sets after recovery) of one killed run."""
    outputs, loras = root / "outputs", root / "models" / "loras"
    files = [p for folder in (outputs, loras) if folder.is_dir() for p in folder.iterdir()
             if p.is_file() and not p.name.startswith(".")]
    bad_files = [f"{p.name}: {why}" for p in files if (why := broken(p, source_lora))]
    bad_sets = []
    if recover is not None:  # the next start finishes or removes what the kill interrupted
        for folder in (outputs, loras):
            if folder.is_dir():
                recover(folder)
        left = [p.name for folder in (outputs, loras) if folder.is_dir() for p in folder.iterdir()
                if p.name.startswith(".")]
        bad_sets += [f"left behind: {name}" for name in left]
        bad_files += [f"{p.name}: {why} (after recovery)" for folder in (outputs, loras) if folder.is_dir()
                      for p in folder.iterdir() if p.is_file() and not p.name.startswith(".")
                      and (why := broken(p, source_lora))]
    for stem, suffixes in sets_of(outputs).items():
        want = expected[kind_of(stem)]
        if suffixes != want:
            bad_sets.append(f"{stem}: missing {sorted(want - suffixes)}")
    return bad_files, bad_sets


def test_kill_at_20_points_leaves_only_whole_files_and_whole_sets(tmp_path):
    try:
        from engine.files.atomic import recover
    except ImportError:  # the code before atomic writes: nothing recovers
        recover = None
    full = run_worker(tmp_path / "count", [0])[0]
    assert full["exit"] == 0, full
    expected = {kind_of(stem): suffixes for stem, suffixes in sets_of(tmp_path / "count" / "0" / "outputs").items()}
    assert set(expected) == {"perception", "text_to_image", "i2v"}
    assert {".json", ".mp4", "-last-frame.png"} <= expected["i2v"]
    total = full["events"]
    points = sorted({max(1, round(total * (i + 0.5) / POINTS)) for i in range(POINTS)})
    assert len(points) == POINTS, (total, points)

    results = run_worker(tmp_path / "kill", points)
    source_lora = (tmp_path / "kill" / "inputs" / "upload.safetensors").read_bytes()
    files, sets = {}, {}
    for k in points:
        assert results[k]["exit"] == 137, (k, results[k])  # it died where it was told to
        bad_files, bad_sets = check(tmp_path / "kill" / str(k), expected, source_lora, recover)
        files.update({k: bad_files} if bad_files else {})
        sets.update({k: bad_sets} if bad_sets else {})
    print(f"\nkill -9 at {POINTS} of {total} write events: {sum(map(len, files.values()))} broken files, "
          f"{sum(map(len, sets.values()))} incomplete sets or leftovers")
    assert not files and not sets, json.dumps({"files": files, "sets": sets}, indent=1)


def test_a_set_whose_journal_was_written_is_rolled_forward(tmp_path):
    from engine.files.atomic import STAGING, OutputSet, recover

    run = OutputSet(tmp_path)
    run.write_bytes("a.png", b"x")
    run.write_json("a.json", {"k": 1})
    order = ["a.png", "a.json"]
    (run.stage / "commit.json").write_text(json.dumps({"order": order}))
    stage = run.stage
    from engine.files import atomic as atomic_files

    atomic_files._active.discard(str(stage))  # as if the process that staged it had died
    assert recover(tmp_path) == {"rolled_forward": 1, "removed": 0}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.json", "a.png"]
    assert not (tmp_path / STAGING).exists()


def test_a_failed_set_leaves_nothing(tmp_path):
    from engine.files.atomic import OutputSet

    with pytest.raises(RuntimeError), OutputSet(tmp_path) as run:
        run.write_bytes("b.png", b"x")
        raise RuntimeError("the encoder failed")
    assert list(tmp_path.iterdir()) == []


def test_output_names_must_be_plain(tmp_path):
    from engine.files.atomic import OutputSet

    with OutputSet(tmp_path) as run:
        for bad in ("../x.png", "sub/x.png", "commit.json"):
            with pytest.raises(ValueError, match="not a plain output name"):
                run.path(bad)
    assert list(tmp_path.iterdir()) == []


def test_an_i2v_request_json_keeps_its_start_image_and_replays_after_the_upload_is_gone(models_dir, tmp_path):
    """Gradio cleans its upload cache: the run copies the start image into the outputs (content-named), the JSON
    names the copy and lists the files it needs, and the saved request replays to the same frames."""
    from engine import Engine, I2VRequest, SwapSettings, request_from_dict

    upload = tmp_path / "gradio-cache" / "start.png"
    upload.parent.mkdir()
    Image.fromarray(np.random.default_rng(7).integers(0, 255, (32, 32, 3), np.uint8)).save(upload)
    engine = Engine(device="cpu", models_dir=models_dir, demo=True, outputs_dir=tmp_path / "outputs")
    req = I2VRequest(image=str(upload), prompt="waves", resolution="custom", width=32, height=32, num_frames=5,
                     steps=2, seed=5, swap=SwapSettings(), preview_every=0)
    result = engine.run(req)
    saved = json.loads(Path(next(f for f in result.files if f.endswith(".json"))).read_text())
    kept = Path(saved["image"])
    assert kept.parent == (tmp_path / "outputs" / "start-images").resolve()
    assert kept.read_bytes() == upload.read_bytes()
    needs = {n["field"]: n for n in saved["needs"]}
    assert needs["image"]["path"] == str(kept) and needs["image"]["bytes"] == kept.stat().st_size
    import hashlib

    assert needs["image"]["sha256"] == hashlib.sha256(kept.read_bytes()).hexdigest()
    first = next(f for f in result.files if f.endswith("-last-frame.png"))
    upload.unlink()  # the upload cache was cleaned
    replay = engine.run(request_from_dict(saved))
    again = next(f for f in replay.files if f.endswith("-last-frame.png"))
    with Image.open(first) as a, Image.open(again) as b:
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    # the same image again is not copied twice
    assert len(list((tmp_path / "outputs" / "start-images").iterdir())) == 1
