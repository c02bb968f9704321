"""Continuity across the 0°/360° seam of an equirectangular panorama, as upstream OmniX does it.

Latent (``pipeline_omnix.py:309-310,425-427,455-459``, ``blend_h.py:87-91``): the first ``BLEND_EXTEND`` latent
columns are appended on the right before denoising; after every step the first columns are cross-faded from
those extension columns (column 0 entirely the extension's, column 5 nearly all its own), and after the last step
once more before the extension is cropped. The model sees the seam as an ordinary image edge that continues.

VAE decode (``blend_h.py:18-77``): rows of latent tiles, each decoded full width with the first
``DECODE_EXTRA`` latent columns appended; the decoded extra pixels are cross-faded into the first pixel columns
and dropped. Written here as a function over the VAE's own decoder instead of upstream's method swap on the VAE
object: the VAE is shared with the other tabs, and a patched VAE would leak into their runs.
"""

from __future__ import annotations

import contextlib

import torch

BLEND_EXTEND = 6  # latent columns; upstream's default ``blend_extend``
DECODE_EXTRA = 2  # latent columns appended before decoding (upstream ``tiled_decode``)


def extend(latents: torch.Tensor, columns: int = BLEND_EXTEND) -> torch.Tensor:
    """[b, c, h, w] -> [b, c, h, w + columns]: the first columns repeated on the right."""
    return torch.cat([latents, latents[..., :columns]], dim=-1)


def blend_columns(x: torch.Tensor, extension: torch.Tensor, columns: int) -> torch.Tensor:
    """In place: ``x[..., i] = extension[..., i] * (1 - i/n) + x[..., i] * (i/n)`` for i < n, the cross-fade of
    upstream's ``blend_h`` (a column loop with Python-float weights, so results match upstream bit for bit)."""
    columns = min(columns, x.shape[-1], extension.shape[-1])
    for i in range(columns):
        x[..., i] = extension[..., i] * (1 - i / columns) + x[..., i] * (i / columns)
    return x


def blend_seam(latents: torch.Tensor, columns: int = BLEND_EXTEND) -> torch.Tensor:
    """In place on an extended latent: cross-fade its first columns from its last ``columns`` ones."""
    return blend_columns(latents, latents[..., -columns:], columns)


def seam_error(image: torch.Tensor) -> float:
    """Mean absolute difference between the first and the last pixel column (``[..., h, w]``): how far the two
    sides of the 0°/360° seam disagree."""
    return float((image[..., 0].float() - image[..., -1].float()).abs().mean())


@contextlib.contextmanager
def tiling(vae, enabled: bool = True):
    """VAE tiling switched for one block and restored after it (the VAE object is shared)."""
    saved = getattr(vae, "use_tiling", False)
    vae.use_tiling = enabled
    try:
        yield vae
    finally:
        vae.use_tiling = saved


def decode(vae, z: torch.Tensor, seam: bool = True) -> torch.Tensor:
    """Decode ``z`` (already unscaled) in rows of latent tiles, as upstream's ``tiled_decode`` (always tiled for
    panoramas); with ``seam`` each row also gets the seam cross-fade. Rows overlap and are blended vertically."""
    tile = vae.tile_latent_min_size
    overlap = int(tile * (1 - vae.tile_overlap_factor))
    blend_rows = int(vae.tile_sample_min_size * vae.tile_overlap_factor)
    row_limit = vae.tile_sample_min_size - blend_rows
    width = z.shape[-1]
    if seam:
        z = torch.cat([z, z[..., :DECODE_EXTRA]], dim=-1)
    rows = []
    for top in range(0, z.shape[2], overlap):
        part = z[:, :, top:top + tile, :]
        if vae.post_quant_conv is not None:
            part = vae.post_quant_conv(part)
        rows.append(vae.decoder(part))
    out = []
    for i, row in enumerate(rows):
        if i > 0:
            row = vae.blend_v(rows[i - 1], row, blend_rows)
        scale = row.shape[-1] // z.shape[-1]
        main = row[:, :, :row_limit, :width * scale]
        if seam:
            extra = row[:, :, :row_limit, width * scale:]
            main = blend_columns(main, extra, extra.shape[-1])
        out.append(main)
    return torch.cat(out, dim=2)
