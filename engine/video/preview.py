"""A live preview of a Wan video while it denoises: every few steps, the model's current estimate of the clean
latent (``x0 = x_t - sigma * v`` for flow matching, ``sigma = timestep / 1000``) projected to RGB by a linear map.

The map is fitted per run by least squares on the start image: the condition carries the VAE latent of that
image on latent frame 0, and the image itself (at latent resolution) is the RGB it should give. So the preview
works for any Wan VAE (16 channels for A14B, 48 for TI2V 5B) without stored factors, costs a (z x 3) matmul,
and never touches the VAE. Hooks on the experts read the inputs and outputs; nothing in the pipeline changes.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from PIL import Image

MAX_TILES = 8
TILE_SIDE = 96


class LatentPreview:
    def __init__(self, pipe, start_image: Image.Image, every: int, sink: Callable[[Image.Image, int], None]):
        self.z = int(pipe.vae.config.z_dim)
        self.every = max(1, every)
        self.sink = sink
        self.image = start_image
        self.weights: torch.Tensor | None = None
        self.last_t: float | None = None
        self.step = -1
        self.handles = [m.register_forward_hook(self._after, with_kwargs=True)
                        for m in (getattr(pipe, "transformer", None), getattr(pipe, "transformer_2", None))
                        if m is not None]

    def close(self) -> None:
        for h in self.handles:
            h.remove()
        self.handles = []

    def _fit(self, hidden: torch.Tensor) -> torch.Tensor:
        """Least squares from the image latent (frame 0 of the condition) to the start image's RGB."""
        cond = hidden[0, self.z + 4:, 0] if hidden.shape[1] >= 2 * self.z + 4 else hidden[0, : self.z, 0]
        z, h, w = cond.shape
        rgb = np.asarray(self.image.resize((w, h), Image.BILINEAR), dtype=np.float32) / 127.5 - 1.0
        x = torch.cat([cond.float().reshape(z, -1).T, torch.ones(h * w, 1)], dim=1).cpu()
        y = torch.from_numpy(rgb.reshape(-1, 3))
        ridge = 1e-2 * torch.eye(z + 1)
        return torch.linalg.solve(x.T @ x + ridge, x.T @ y)  # (z + 1, 3)

    def _after(self, module, args, kwargs, output) -> None:
        hidden = kwargs.get("hidden_states", args[0] if args else None)
        timestep = kwargs.get("timestep", args[1] if len(args) > 1 else None)
        if hidden is None or timestep is None:
            return
        t = float(timestep.max())
        if t == self.last_t:  # the second (unconditional) call of the same step
            return
        self.last_t = t
        self.step += 1
        if (self.step + 1) % self.every:
            return
        v = output[0] if isinstance(output, tuple) else getattr(output, "sample", output)
        with torch.no_grad():
            if self.weights is None:
                self.weights = self._fit(hidden)
            x0 = hidden[:, : self.z].float() - (t / 1000.0) * v[:, : self.z].float()
            self.sink(self.render(x0[0].cpu()), self.step)

    def render(self, latent: torch.Tensor) -> Image.Image:
        """(z, T, h, w) latent -> one image: up to ``MAX_TILES`` frames side by side."""
        z, frames, h, w = latent.shape
        picks = np.linspace(0, frames - 1, min(frames, MAX_TILES)).round().astype(int)
        flat = latent.permute(1, 2, 3, 0).reshape(-1, z)
        rgb = torch.cat([flat, torch.ones(flat.shape[0], 1)], dim=1) @ self.weights
        rgb = ((rgb.clamp(-1, 1) + 1) * 127.5).to(torch.uint8).reshape(frames, h, w, 3).numpy()
        scale = max(1, TILE_SIDE // max(h, w))
        tiles = [Image.fromarray(rgb[i]).resize((w * scale, h * scale), Image.NEAREST) for i in picks]
        strip = Image.new("RGB", (sum(t.width for t in tiles), tiles[0].height))
        for i, tile in enumerate(tiles):
            strip.paste(tile, (i * tile.width, 0))
        return strip
