"""Video files through imageio-ffmpeg: mp4 (h264, yuv420p), webm (VP9) and gif (palette, loop or play once),
with the request JSON beside the video and, where the container has a place for it, inside it (mp4 and webm:
the ``comment`` tag; ffmpeg's gif muxer writes no comments), plus the last frame as a PNG to continue a clip."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image

from engine.outputs import png_info, run_stem, save_request

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


def save_video_result(frames, out_dir: Path, request, text: dict[str, str] | None = None) -> list[str]:
    """Video, request JSON and last frame PNG for ``request`` (an ``I2VRequest``); returns the paths. mp4 and webm
    also carry ``text`` as tags (the app's: ComfyUI's ``prompt`` and ``workflow``); a gif has no place for them (the
    PNG beside it has)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    stem = run_stem(request.kind, request.seed)
    request_json = json.dumps(request.to_dict())
    arr = to_uint8(frames)
    video = write_video(arr, out_dir / f"{stem}.{request.output_format}", request.output_format, request.fps,
                        request.quality, request.loop, comment=request_json, tags=text or {})
    last = out_dir / f"{stem}-last-frame.png"
    Image.fromarray(arr[-1]).save(last, pnginfo=png_info(request, text))
    saved = save_request(request, out_dir / f"{stem}.json")
    return [str(video), str(saved), str(last)]


def read_video(path: str | Path) -> tuple[np.ndarray, dict]:
    """Decode a video back (frames as uint8 (T, H, W, 3), and ffmpeg's metadata) - for tests and checks."""
    import imageio_ffmpeg

    reader = imageio_ffmpeg.read_frames(str(path))
    meta = next(reader)
    w, h = meta["size"]
    frames = [np.frombuffer(f, dtype=np.uint8).reshape(h, w, 3) for f in reader]
    return np.stack(frames), meta
