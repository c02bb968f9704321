"""The panorama on a sphere displaced by its predicted distance, as a textured binary glTF (``.glb``).

Written with trimesh's glTF exporter (a maintained library; the viewer, Gradio's ``Model3D``, reads glTF).
Directions follow upstream OmniX's camera rays (``src/systems/omnix.py:114-129``): longitude
``(0.5 - u) * 2π`` and latitude ``(0.5 - v) * π`` for pixel centres ``u, v`` in [0, 1], ``x = cos(lat) cos(lon)``,
``y = sin(lat)``, ``z = cos(lat) sin(lon)``: +Y up, the image centre in front (+X).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from engine.files.atomic import write_bytes

MAX_ROWS = 128  # grid resolution of the mesh (the texture keeps the full panorama)
MIN_RADIUS = 0.05  # so that a zero distance does not collapse the sphere into its centre


def sphere_grid(depth: np.ndarray, rows: int = MAX_ROWS) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(vertices [n, 3], faces [m, 3], uv [n, 2]) of a latitude-longitude grid with radius ``depth``.

    The 360° column is duplicated so that the texture wraps without a smeared strip; it takes column 0's depth."""
    h, w = depth.shape
    rows = min(rows, h)
    cols = min(2 * rows, w)
    ys = ((np.arange(rows) + 0.5) * h / rows).astype(int).clip(0, h - 1)
    xs = ((np.arange(cols) + 0.5) * w / cols).astype(int).clip(0, w - 1)
    radius = MIN_RADIUS + depth[np.ix_(ys, xs)].astype(np.float64)
    radius = np.concatenate([radius, radius[:, :1]], axis=1)  # [rows, cols + 1]
    u = np.concatenate([(np.arange(cols) + 0.5) / cols, [1.0 + 0.5 / cols]])
    v = (np.arange(rows) + 0.5) / rows
    lon = (0.5 - u)[None, :] * 2 * np.pi
    lat = (0.5 - v)[:, None] * np.pi
    dirs = np.stack(np.broadcast_arrays(np.cos(lat) * np.cos(lon), np.sin(lat) * np.ones_like(lon),
                                        np.cos(lat) * np.sin(lon)), axis=-1)
    vertices = (dirs * radius[..., None]).reshape(-1, 3)
    uu, vv = np.meshgrid(u, v)
    uv = np.stack([uu, 1.0 - vv], axis=-1).reshape(-1, 2)  # glTF's v runs bottom-up in trimesh's convention
    idx = np.arange(rows * (cols + 1)).reshape(rows, cols + 1)
    a, b, c, d = idx[:-1, :-1], idx[:-1, 1:], idx[1:, :-1], idx[1:, 1:]
    faces = np.concatenate([np.stack([a, c, b], -1).reshape(-1, 3), np.stack([b, c, d], -1).reshape(-1, 3)])
    return vertices.astype(np.float32), faces.astype(np.int64), uv.astype(np.float32)


def glb_bytes(depth: np.ndarray, panorama: Image.Image, rows: int = MAX_ROWS) -> bytes:
    import trimesh

    vertices, faces, uv = sphere_grid(depth, rows)
    material = trimesh.visual.material.PBRMaterial(baseColorTexture=panorama.convert("RGB"), doubleSided=True,
                                                   metallicFactor=0.0, roughnessFactor=1.0)
    mesh = trimesh.Trimesh(vertices=vertices, faces=faces, process=False,
                           visual=trimesh.visual.TextureVisuals(uv=uv, material=material))
    return trimesh.exchange.gltf.export_glb(trimesh.Scene(mesh))


def write_glb(depth: np.ndarray, panorama: Image.Image, path: str | Path, rows: int = MAX_ROWS) -> Path:
    return write_bytes(path, glb_bytes(depth, panorama, rows))  # atomic: a viewer never opens half a mesh
