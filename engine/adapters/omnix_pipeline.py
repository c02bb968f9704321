"""OmniX panorama perception as a diffusers pipeline over the shared Flux components.

``OmniXPerceptionPipeline(**flux.components)`` holds the very transformer, VAE and text encoders of the Flux
pipeline the other tabs use (one ledger copy); only its ``__call__`` differs. It follows upstream's
``OmniXPipeline.__call__`` (HKU-MMLab/OmniX ``src/pipelines/pipeline_omnix.py:198-468``) step for step, written
over FluxPipeline's own helpers. Where it differs, and why:

- several tasks in one call: the prompt is encoded once and the condition latent is encoded once (each task
  draws the same-shaped noise first, so the encoder's posterior sample sees the same generator state in every
  task); each task's map is what a run of that task alone gives;
- noise and the posterior sample come from one CPU generator seeded per task (upstream uses the global RNG),
  so a seed reproduces on every device;
- the VAE is not patched (it is shared): the seam-aware decode is ``panorama_seam.decode``, the tiling flag is
  set for the encode and restored after it, and only the target item is decoded (upstream decodes the whole
  batch and keeps one image; the VAE works per item, so the kept image is the same);
- the scheduler is a copy of the pipeline's, so its step state never leaks into another tab's run;
- on interrupt the loop stops at once (upstream skips the remaining steps) and nothing is decoded.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
from diffusers import FluxPipeline
from diffusers.pipelines.flux.pipeline_flux import calculate_shift, retrieve_timesteps

from engine.panorama import seam
from engine.panorama.tasks import TASKS

PROMPT = "[EQUIRECTANGULAR]"  # upstream's camera prompt for equirectangular inputs


def perception_prompt(user_text: str = "") -> str:
    text = (user_text or "").strip()
    return f"{PROMPT} {text}" if text else PROMPT


@dataclass
class PerceptionOutput:
    maps: dict[str, torch.Tensor] = field(default_factory=dict)  # task -> [3, H, W] in [0, 1], on the CPU


class OmniXPerceptionPipeline(FluxPipeline):
    @torch.no_grad()
    def __call__(
        self,
        image: torch.Tensor,  # [1, 3, H, W] in [-1, 1] (upstream: x / 127.5 - 1)
        tasks: list[str],
        session,  # OmniXSession: the tasks' adapters are in; task(name) routes the batch to one pair
        prompt: str = PROMPT,
        num_inference_steps: int = 28,
        guidance_scale: float = 3.5,
        seed: int = 0,
        blend_extend: int = seam.BLEND_EXTEND,
        seam_blending: bool = True,
        max_sequence_length: int = 512,
        callback_on_step_end=None,
    ) -> PerceptionOutput | None:
        self._interrupt = False
        device = self._execution_device
        height, width = image.shape[-2:]
        prompt_embeds, pooled, text_ids = self.encode_prompt(
            prompt=prompt, prompt_2=None, device=device, num_images_per_prompt=1,
            max_sequence_length=max_sequence_length,
        )
        channels = self.transformer.config.in_channels // 4
        out, condition, done = PerceptionOutput(), None, 0
        for task in tasks:
            spec = TASKS[task]
            generator = torch.Generator(device="cpu").manual_seed(seed)
            # noise for the whole batch first, as upstream (prepare_latents for num_images_per_prompt items)
            latents, _ = self.prepare_latents(len(spec.adapters), channels, height, width, prompt_embeds.dtype,
                                              device, generator)
            if condition is None:
                condition = self.encode_condition(image, generator)
            with session.task(task):
                latents, done = self._denoise(
                    latents, condition, spec, prompt_embeds, pooled, text_ids, height, width, num_inference_steps,
                    guidance_scale, blend_extend if seam_blending else 0, done, callback_on_step_end,
                )
            if latents is None:  # interrupted
                return None
            out.maps[task] = self.decode_target(latents, spec.target, height, width, seam_blending)
        return out

    def encode_condition(self, image: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """The clean latent of the input: ``(z - shift) * scale`` of a posterior sample, tiled as upstream
        encodes it (its pipeline has VAE tiling on for panoramas)."""
        vae = self.vae
        # the execution device, not ``vae.device``: under an offloading mode the VAE waits off the device (on
        # the meta device with disk offload) until its onload hook runs, and that hook does not move inputs
        with seam.tiling(vae, True):
            dist = vae.encode(image.to(device=self._execution_device, dtype=vae.dtype)).latent_dist
        z = dist.sample(generator=generator)
        return (z - vae.config.shift_factor) * vae.config.scaling_factor

    def _denoise(self, latents, condition, spec, prompt_embeds, pooled, text_ids, height, width, steps, guidance_scale,
                 extend, done, callback):
        n, s = latents.shape[0], self.vae_scale_factor
        channels = self.transformer.config.in_channels // 4
        conds = list(spec.conditions)
        x = self._unpack_latents(latents, height, width, s)
        lat_h, lat_w = x.shape[-2:]
        x[conds] = condition.to(x.dtype)  # the condition slot holds the clean input latent, before the extension
        if extend:
            x = seam.extend(x, extend)
        clean = x[conds].clone()
        ext_w = x.shape[-1]
        img_ids = self._prepare_latent_image_ids(n, lat_h // 2, ext_w // 2, device=x.device, dtype=x.dtype)
        latents = self._pack_latents(x, n, channels, lat_h, ext_w)

        # Flux's dynamic shift on the sequence length of the seam-extended latent (upstream :326-341)
        scheduler = type(self.scheduler).from_config(self.scheduler.config)
        cfg = scheduler.config
        mu = calculate_shift(latents.shape[1], cfg.get("base_image_seq_len", 256), cfg.get("max_image_seq_len", 4096),
                             cfg.get("base_shift", 0.5), cfg.get("max_shift", 1.15))
        sigmas = np.linspace(1.0, 1 / steps, steps)
        timesteps, _ = retrieve_timesteps(scheduler, steps, latents.device, sigmas=sigmas, mu=mu)
        guidance = None
        if self.transformer.config.guidance_embeds:  # FLUX.1-dev: distilled guidance, no CFG pass
            guidance = torch.full([n], guidance_scale, device=latents.device, dtype=torch.float32)
        embeds, pooled_n = prompt_embeds.repeat(n, 1, 1), pooled.repeat(n, 1)

        for t in timesteps:
            if self._interrupt:
                return None, done
            noise_pred = self.transformer(
                hidden_states=latents, timestep=t.expand(n).to(latents.dtype) / 1000, guidance=guidance,
                pooled_projections=pooled_n, encoder_hidden_states=embeds, txt_ids=text_ids, img_ids=img_ids,
                return_dict=False,
            )[0]
            latents = scheduler.step(noise_pred, t, latents, return_dict=False)[0]
            x = self._unpack_latents(latents, height, ext_w * s, s)
            if extend:
                seam.blend_seam(x, extend)
            x[conds] = clean  # re-imposed after every step, after the seam blend (upstream :428-429)
            latents = self._pack_latents(x, n, channels, lat_h, ext_w)
            if callback is not None:
                result = callback(self, done, t, {"latents": latents, "condition": clean}) or {}
                latents = result.get("latents", latents)
            done += 1
        if self._interrupt:
            return None, done
        x = self._unpack_latents(latents, height, ext_w * s, s)
        if extend:
            seam.blend_seam(x, extend)
        return x[..., :lat_w], done

    def decode_target(self, x: torch.Tensor, target: int, height: int, width: int, seam_blending: bool) -> torch.Tensor:
        vae = self.vae
        z = x[target:target + 1] / vae.config.scaling_factor + vae.config.shift_factor
        decoded = seam.decode(vae, z.to(vae.dtype), seam=seam_blending)
        return (decoded[0] / 2 + 0.5).clamp(0, 1).float().cpu()  # the pipeline's postprocess for "pt"
