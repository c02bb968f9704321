"""Perception maps as files people can use: previews to look at, and data to compute with.

Per task, from the decoded target image (``[3, H, W]`` in [0, 1]) as upstream reads it (``src/systems/omnix.py``):
- depth (distance): mean of the three channels, in [0, 1]; a Spectral-colormapped preview (upstream's
  ``DepthVisualizer``, i.e. diffusers' Marigold ``visualize_depth``), a 16-bit grayscale PNG
  (``round(d * 65535)``, as upstream's colormap-free output) and the float32 ``.npy``;
- normal: the RGB image, and unit vectors ``normalize(2 * rgb - 1)`` as float32 ``.npy``;
- albedo: the RGB image;
- pbr: channel 0 roughness, channel 1 metallic, each an 8-bit and a float32 map;
- semantic: the RGB image, and class ids: the release publishes no class list, so ids index the distinct
  colours the model painted (Pillow's median-cut quantization), kept with that palette in an indexed PNG,
  a ``.npy`` of ids and a palette JSON.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from engine.files.atomic import OutputSet

SEMANTIC_CLASSES = 32  # the most distinct colours kept as classes


@dataclass
class TaskMaps:
    previews: list[tuple[Path, str]] = field(default_factory=list)  # (preview PNG, caption)
    files: list[Path] = field(default_factory=list)
    arrays: dict[str, np.ndarray] = field(default_factory=dict)


def to_rgb8(rgb: np.ndarray) -> Image.Image:
    return Image.fromarray(np.clip(rgb * 255.0 + 0.5, 0, 255).astype(np.uint8), "RGB")


def to_gray8(x: np.ndarray) -> Image.Image:
    return Image.fromarray(np.clip(x * 255.0 + 0.5, 0, 255).astype(np.uint8), "L")


def to_gray16(x: np.ndarray) -> Image.Image:
    """A 16-bit grayscale PNG image of values in [0, 1]."""
    return Image.fromarray(np.clip(x * 65535.0 + 0.5, 0, 65535).astype(np.uint16))


def read_gray16(path: str | Path) -> np.ndarray:
    with Image.open(path) as im:
        return np.asarray(im).astype(np.uint16)


def depth_colormap(depth: np.ndarray) -> Image.Image:
    from diffusers.pipelines.marigold.marigold_image_processing import MarigoldImageProcessor

    return MarigoldImageProcessor.visualize_depth(depth.astype(np.float32), val_min=0.0, val_max=1.0,
                                                  color_map="Spectral")[0]


def semantic_classes(rgb: Image.Image, classes: int = SEMANTIC_CLASSES) -> tuple[np.ndarray, np.ndarray, Image.Image]:
    """(ids [H, W] uint8, palette [n, 3] uint8, indexed PNG image) from the painted colours."""
    indexed = rgb.quantize(colors=classes, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE)
    ids = np.asarray(indexed, dtype=np.uint8)
    used = int(ids.max()) + 1
    palette = np.asarray(indexed.getpalette()[: 3 * used], dtype=np.uint8).reshape(used, 3)
    return ids, palette, indexed


def encode(task: str, image: torch.Tensor, run: OutputSet, stem: str, pnginfo=None) -> TaskMaps:
    """Write one task's files into the run's set (names ``<stem>-<map>.<ext>``); returns previews and the paths
    the files will have once the set is committed."""
    rgb = image.permute(1, 2, 0).numpy().astype(np.float32)  # [H, W, 3] in [0, 1]
    out = TaskMaps()

    def save(image_or_array, name: str) -> Path:
        name = f"{stem}-{name}"
        if isinstance(image_or_array, np.ndarray):
            path = run.save_npy(name, image_or_array)
        else:
            path = run.save_image(name, image_or_array, **({"pnginfo": pnginfo} if name.endswith(".png") else {}))
        out.files.append(path)
        return path

    if task == "depth":
        depth = rgb.mean(axis=-1)
        out.arrays["depth"] = depth
        preview = depth_colormap(depth)
        shown = save(preview, "depth.png")
        save(to_gray16(depth), "depth16.png")
        save(depth, "depth.npy")
        out.previews.append((shown, "depth (distance)"))
    elif task == "normal":
        vectors = rgb * 2.0 - 1.0
        vectors /= np.maximum(np.linalg.norm(vectors, axis=-1, keepdims=True), 1e-6)
        out.arrays["normal"] = vectors.astype(np.float32)
        preview = to_rgb8(rgb)
        shown = save(preview, "normal.png")
        save(out.arrays["normal"], "normal.npy")
        out.previews.append((shown, "normal"))
    elif task == "albedo":
        preview = to_rgb8(rgb)
        out.arrays["albedo"] = rgb
        shown = save(preview, "albedo.png")
        out.previews.append((shown, "albedo"))
    elif task == "pbr":
        for channel, name in ((0, "roughness"), (1, "metallic")):
            values = np.ascontiguousarray(rgb[..., channel])
            out.arrays[name] = values
            preview = to_gray8(values)
            shown = save(preview, f"{name}.png")
            save(values, f"{name}.npy")
            out.previews.append((shown, name))
    elif task == "semantic":
        preview = to_rgb8(rgb)
        ids, palette, indexed = semantic_classes(preview)
        out.arrays["semantic_ids"] = ids
        shown = save(preview, "semantic.png")
        save(indexed, "semantic-classes.png")
        save(ids, "semantic-ids.npy")
        out.files.append(run.write_json(f"{stem}-semantic-palette.json",
                                        {"classes": [{"id": i, "rgb": c.tolist()} for i, c in enumerate(palette)]},
                                        indent=None))
        out.previews.append((shown, f"semantic ({len(palette)} classes)"))
    else:  # pragma: no cover - requests validate their tasks
        raise ValueError(f"unknown perception task {task!r}")
    return out


def expected_bytes(tasks, width: int, height: int) -> int:
    """An upper bound of what ``encode`` writes for ``tasks`` at this size (raw pixels for each PNG, exact for
    each ``.npy``), for a free-space check before the first file."""
    px = width * height
    per_task = {"depth": 3 * px + 2 * px + 4 * px, "normal": 3 * px + 12 * px, "albedo": 3 * px,
                "pbr": 2 * (px + 4 * px), "semantic": 3 * px + px + px + (1 << 12)}
    return sum(per_task.get(t, 16 * px) + (1 << 12) for t in tasks)
