"""Video files through imageio-ffmpeg: mp4 (h264, yuv420p), webm (VP9) and gif (palette, loop or play once),
with the request JSON beside the video and, where the container has a place for it, inside it (mp4 and webm:
the ``comment`` tag; ffmpeg's gif muxer writes no comments), plus the last frame as a PNG to continue a clip."""

from __future__ import annotations

import errno
import json
from pathlib import Path

import numpy as np
from PIL import Image

from engine import outputs
from engine.files.atomic import MARGIN, OutputSet, check_free, free_bytes, is_disk_full
from engine.outputs import png_info, run_stem

CODECS = {  # format -> (codec, output pixel format)
    "mp4": ("libx264", "yuv420p"),
    "webm": ("libvpx-vp9", "yuv420p"),
    "gif": ("gif", "pal8"),
}
GIF_PALETTE = "split[a][b];[a]palettegen=stats_mode=diff[p];[b][p]paletteuse=dither=bayer"


def to_uint8(frames) -> np.ndarray:
    """(T, H, W, 3) floats in [0, 1] (a diffusers ``output_type="np"`` video) as uint8."""
    arr = np.asarray(frames)
    if arr.dtype != np.uint8:
        arr = (np.clip(arr, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
    if arr.ndim != 4 or arr.shape[-1] != 3:
        raise ValueError(f"expected frames of shape (T, H, W, 3), got {arr.shape}")
    return arr


def write_video(frames, path: Path, fmt: str, fps: int, quality: int = 8, loop: bool = True,
                comment: str = "", tags: dict[str, str] | None = None) -> Path:
    """``tags``: more container metadata (ComfyUI's ``prompt``/``workflow``, as its SaveVideo writes them)."""
    import imageio_ffmpeg

    arr = to_uint8(frames)
    _, h, w, _ = arr.shape
    codec, pix_fmt = CODECS[fmt]
    params: list[str] = []
    if fmt == "gif":
        params += ["-filter_complex", GIF_PALETTE, "-loop", "0" if loop else "-1"]
        quality_arg = None  # the palette decides a gif's quality
    else:
        quality_arg = float(quality)
        if comment:
            params += ["-metadata", f"comment={comment}"]
        for key, value in (tags or {}).items():
            params += ["-metadata", f"{key}={value}"]
        if tags and fmt == "mp4":
            params += ["-movflags", "use_metadata_tags"]  # mp4 keeps only its known tags without it
        if fmt == "webm":
            params += ["-b:v", "0", "-row-mt", "1", "-deadline", "realtime", "-cpu-used", "8"]
    writer = imageio_ffmpeg.write_frames(str(path), (w, h), fps=fps, codec=codec, pix_fmt_out=pix_fmt,
                                         quality=quality_arg, macro_block_size=1, output_params=params,
                                         ffmpeg_log_level="error")
    writer.send(None)  # start ffmpeg
    try:
        for frame in arr:
            writer.send(np.ascontiguousarray(frame))
    finally:
        writer.close()
    return path


def expected_bytes(arr: np.ndarray, fmt: str) -> int:
    """A generous size for the files of one video (a pre-check of free space, before ffmpeg starts): the last
    frame as raw pixels, and the video at a tenth of its raw frames (a gif at half; palette frames compress less)."""
    raw = int(arr.nbytes)
    return raw // arr.shape[0] + raw // (2 if fmt == "gif" else 10) + (1 << 16)


def save_video_result(frames, out_dir: Path, request, text: dict[str, str] | None = None) -> list[str]:
    """Video, request JSON and last frame PNG for ``request`` (an ``I2VRequest``); returns the paths. mp4 and webm
    also carry ``text`` as tags (the app's: ComfyUI's ``prompt`` and ``workflow``); a gif has no place for them (the
    PNG beside it has).
    The three appear together (``OutputSet``): a crash or a full disk leaves all of them or none."""
    out_dir = Path(out_dir)
    stem = run_stem(request.kind, request.seed)
    request_json = json.dumps(request.to_dict())
    arr = to_uint8(frames)
    check_free(out_dir, expected_bytes(arr, request.output_format))
    name = f"{stem}.{request.output_format}"
    with OutputSet(out_dir) as run:
        try:
            write_video(arr, run.path(name), request.output_format, request.fps, request.quality, request.loop,
                        comment=request_json, tags=text or {})
        except OSError as exc:  # ffmpeg's own write error comes back as a broken pipe with its log
            if not is_disk_full(exc) and ("No space left" in str(exc) or free_bytes(out_dir) < MARGIN):
                raise OSError(errno.ENOSPC, "No space left on device (ffmpeg)") from exc
            raise
        if free_bytes(out_dir) < MARGIN:  # imageio-ffmpeg ignores ffmpeg's exit code: a cut trailer looks like this
            raise OSError(errno.ENOSPC, "No space left on device (ffmpeg)")
        run.save_image(f"{stem}-last-frame.png", Image.fromarray(arr[-1]), pnginfo=png_info(request, text))
        run.write_json(f"{stem}.json", outputs.request_json(request))
        files = run.commit(last=f"{stem}.json")
    return [files[0], files[2], files[1]]  # video, request JSON, last frame


def read_video(path: str | Path) -> tuple[np.ndarray, dict]:
    """Decode a video back (frames as uint8 (T, H, W, 3), and ffmpeg's metadata) - for tests and checks."""
    import imageio_ffmpeg

    reader = imageio_ffmpeg.read_frames(str(path))
    meta = next(reader)
    w, h = meta["size"]
    frames = [np.frombuffer(f, dtype=np.uint8).reshape(h, w, 3) for f in reader]
    return np.stack(frames), meta
