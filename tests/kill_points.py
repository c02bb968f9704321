"""A worker that ``kill -9``s a run's saves at chosen points (tests/test_atomic_outputs.py).

Run as ``python tests/kill_points.py ROOT K1 K2 ...``. It imports everything once, then for each point K forks a
child that writes one run of every kind of output (a perception set with all five tasks and the sphere mesh, an
image set, a video set, an uploaded LoRA) into ``ROOT/K/`` and dies with ``os._exit`` at its K-th write event:
an open for writing (leaves a 0-byte file), a ``write`` (half of it written first: a cut file), a rename, or a
video frame sent to ffmpeg. K = 0 runs to the end and prints the number of events. The hooks patch ``open``,
``os.replace``/``os.rename`` and ``imageio_ffmpeg.write_frames``: they see the app's writes whatever helper
makes them, so the same test measures the code before and after atomic writes. This process is the children's
subreaper, so the ffmpeg a killed child leaves running is waited for before the folder is checked.
"""

from __future__ import annotations

import builtins
import io
import json
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

FRAMES = 5
SIZE = 64


def inputs(root: Path) -> dict[str, str]:
    from PIL import Image

    root.mkdir(parents=True, exist_ok=True)
    pano, start, lora = root / "pano.png", root / "start.png", root / "upload.safetensors"
    Image.new("RGB", (2 * SIZE, SIZE), (90, 120, 200)).save(pano)
    Image.new("RGB", (SIZE, SIZE), (200, 80, 40)).save(start)
    lora.write_bytes(os.urandom(300_000))
    return {"pano": str(pano), "start": str(start), "lora": str(lora)}


def workload(out: Path, files: dict[str, str]) -> None:
    import numpy as np
    import torch
    from PIL import Image

    from engine.adapters.lora_presets import store_upload
    from engine.jobs.perception import write_outputs
    from engine.outputs import save_images
    from engine.requests import I2VRequest, PerceptionRequest, TextToImageRequest
    from engine.video.encode import save_video_result

    gen = torch.Generator().manual_seed(0)
    tasks = ("depth", "normal", "albedo", "pbr", "semantic")
    maps = {t: torch.rand(3, SIZE, 2 * SIZE, generator=gen) for t in tasks}
    perception = PerceptionRequest(panorama=files["pano"], tasks=tasks, steps=2)
    with Image.open(files["pano"]) as pano:
        write_outputs(out / "outputs", perception, maps, pano.convert("RGB"))
    images = [Image.fromarray(np.full((SIZE, SIZE, 3), 40 * i, np.uint8)) for i in range(2)]
    save_images(images, out / "outputs", TextToImageRequest(prompt="x", width=SIZE, height=SIZE))
    video = I2VRequest(image=files["start"], prompt="go", width=SIZE, height=SIZE, resolution="custom",
                       num_frames=FRAMES)
    rng = np.random.default_rng(0)
    save_video_result(rng.random((FRAMES, SIZE, SIZE, 3)), out / "outputs", video)
    store_upload(out / "models", files["lora"])


class Killer:
    def __init__(self, root: Path, kill_at: int):
        self.root, self.kill_at, self.events = str(root), kill_at, 0

    def event(self) -> bool:
        """Counts one event; True when this one is where the process dies."""
        self.events += 1
        return self.events == self.kill_at

    def mine(self, path) -> bool:
        try:
            return os.path.abspath(os.fspath(path)).startswith(self.root)
        except TypeError:  # a file descriptor
            return False

    def install(self) -> None:
        import imageio_ffmpeg

        real_open, real_replace, real_rename, real_frames = io.open, os.replace, os.rename, \
            imageio_ffmpeg.write_frames
        killer = self

        class Watched:
            def __init__(self, f):
                self._f = f

            def write(self, data):
                if killer.event():
                    view = memoryview(data).cast("B") if not isinstance(data, str) else data
                    self._f.write(view[: len(view) // 2])
                    self._f.flush()
                    os._exit(137)
                return self._f.write(data)

            def __enter__(self):
                return self

            def __exit__(self, *exc):
                self._f.close()

            def __iter__(self):
                return iter(self._f)

            def __getattr__(self, name):
                return getattr(self._f, name)

        def watched_open(file, mode="r", *args, **kwargs):
            f = real_open(file, mode, *args, **kwargs)
            if any(m in mode for m in "wax+") and killer.mine(file):
                if killer.event():
                    os._exit(137)
                return Watched(f)
            return f

        def watched_move(real):
            def move(src, dst, *args, **kwargs):
                if killer.mine(dst) and killer.event():
                    os._exit(137)
                return real(src, dst, *args, **kwargs)
            return move

        def watched_frames(*args, **kwargs):
            gen = real_frames(*args, **kwargs)

            class Sender:
                def send(self, frame):
                    if killer.event():
                        os._exit(137)
                    return gen.send(frame)

                def close(self):
                    return gen.close()
            return Sender()

        builtins.open = io.open = watched_open
        os.replace, os.rename = watched_move(real_replace), watched_move(real_rename)
        imageio_ffmpeg.write_frames = watched_frames


def child(root: Path, kill_at: int, files: dict[str, str], report_fd: int) -> None:
    killer = Killer(root, kill_at)
    killer.install()
    try:
        workload(root, files)
    except BaseException as exc:  # pragma: no cover - reported to the test
        os.write(report_fd, json.dumps({"error": repr(exc)}).encode())
        os._exit(3)
    os.write(report_fd, json.dumps({"events": killer.events}).encode())
    os._exit(0)


def become_subreaper() -> None:
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(36, 1, 0, 0, 0)  # PR_SET_CHILD_SUBREAPER
    except (OSError, AttributeError):  # pragma: no cover - not Linux: orphans go to init
        pass


def reap_all() -> None:
    while True:
        try:
            os.waitpid(-1, 0)
        except ChildProcessError:
            return


def main(argv: list[str]) -> None:
    base, points = Path(argv[0]).resolve(), [int(a) for a in argv[1:]]
    files = inputs(base / "inputs")
    # import and warm everything the children use, so each child only writes
    import numpy as np
    import trimesh  # noqa: F401

    import engine.jobs.perception  # noqa: F401
    import engine.video.encode  # noqa: F401
    from engine.panorama.maps import depth_colormap
    from engine.panorama.mesh import sphere_grid  # noqa: F401

    depth_colormap(np.zeros((4, 8), np.float32))
    import comfy_export  # noqa: F401

    become_subreaper()
    results = {}
    for k in points:
        root = base / str(k)
        root.mkdir(parents=True, exist_ok=True)
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:
            os.close(r)
            child(root, k, files, w)
        os.close(w)
        _, status = os.waitpid(pid, 0)
        report = os.read(r, 1 << 16).decode() or "{}"
        os.close(r)
        reap_all()  # the ffmpeg a killed child left behind
        results[k] = {"exit": os.waitstatus_to_exitcode(status), **json.loads(report)}
    print(json.dumps(results))


if __name__ == "__main__":
    main(sys.argv[1:])
