"""rCM few-step sampling for the TurboWan experts, as upstream thu-ml/TurboDiffusion samples them
(``turbodiffusion/inference/wan2.2_i2v_infer.py``), on diffusers' Wan components.

Upstream: TrigFlow times ``[atan(sigma_max), 1.5, 1.4, 1.0][:steps] + [0]`` mapped to rectified-flow time by
``t -> sin t / (cos t + sin t)``; start ``x = noise * t0`` in float64; at each step ``v = net(x, t * 1000)`` with the time rounded to bf16 as upstream's CUDA run rounds it;
SDE ``x = (1 - t_next) * (x - t_cur * v) + t_next * noise`` (default) or the ODE Euler step
``x = x - (t_cur - t_next) * v``; the high-noise expert runs while ``t_cur >= boundary``; no classifier-free
guidance (rCM is distilled with the condition only). The I2V condition (mask on latent frame 0 + the VAE latent of
[image, zeros]) is what diffusers' ``WanImageToVideoPipeline.prepare_latents`` builds, channel for channel.

Ours differs in two places, on purpose: the noise comes from the run's seeded CPU generator (upstream draws it on
CUDA), so a seed gives the same video on every machine; and the net is diffusers' transformer, called through the
pipeline so the memory modes, step cache contexts, progress and cancel apply as to any other run.
"""

from __future__ import annotations

import math

import torch
from diffusers import WanImageToVideoPipeline
from diffusers.pipelines.wan.pipeline_output import WanPipelineOutput
from diffusers.utils.torch_utils import get_module_execution_device

MID_TIMES = (1.5, 1.4, 1.0)  # upstream's TrigFlow times after the first, for 2..4 steps


def rcm_timesteps(num_steps: int, sigma_max: float = 200.0) -> torch.Tensor:
    """The ``num_steps + 1`` rectified-flow times (float64), the last 0."""
    if not 1 <= num_steps <= 4:
        raise ValueError("rCM samples in 1 to 4 steps")
    t = torch.tensor([math.atan(sigma_max), *MID_TIMES[: num_steps - 1], 0.0], dtype=torch.float64)
    return torch.sin(t) / (torch.cos(t) + torch.sin(t))


def net_timestep(t: float) -> float:
    """The time the net sees, as upstream feeds it: ``(t.float() * 1000).to(bfloat16)`` (its tensors are all bf16
    on CUDA), so 0.9950, 0.9342, 0.8527, 0.6090 for 4 steps arrive as 996, 932, 852, 608."""
    return float((torch.tensor(t, dtype=torch.float32) * 1000).to(torch.bfloat16).float())


def rcm_step(x: torch.Tensor, v: torch.Tensor, t_cur: float, t_next: float, ode: bool,
             generator: torch.Generator | None) -> torch.Tensor:
    if ode:
        return x - (t_cur - t_next) * v
    noise = torch.randn(x.shape, generator=generator, dtype=torch.float32, device="cpu").to(x.device, x.dtype)
    return (1 - t_next) * (x - t_cur * v) + t_next * noise


class TurboWanI2VPipeline(WanImageToVideoPipeline):
    """Wan 2.2 I2V with the TurboWan experts and the rCM loop. Same components as the diffusers pipeline (text
    encoder, VAE and tokenizer shared with it), its own ``__call__``."""

    @torch.no_grad()
    def __call__(self, image, prompt: str, height: int, width: int, num_frames: int, num_inference_steps: int = 4,
                 sigma_max: float = 200.0, boundary: float = 0.9, ode: bool = False,
                 generator: torch.Generator | None = None, output_type: str = "np", max_sequence_length: int = 512,
                 callback_on_step_end=None, **_ignored):
        self._interrupt = False
        device = self._execution_device
        prompt_embeds, _ = self.encode_prompt(prompt=prompt, do_classifier_free_guidance=False,
                                              max_sequence_length=max_sequence_length, device=device)
        dtype = self.transformer.dtype
        prompt_embeds = prompt_embeds.to(dtype)
        z_dim = self.vae.config.z_dim
        pixels = self.video_processor.preprocess(image, height=height, width=width).to(device, dtype=torch.float32)
        shape = (1, z_dim, (num_frames - 1) // self.vae_scale_factor_temporal + 1,
                 height // self.vae_scale_factor_spatial, width // self.vae_scale_factor_spatial)
        noise = torch.randn(shape, generator=generator, dtype=torch.float32, device="cpu")
        _, condition = self.prepare_latents(pixels, 1, z_dim, height, width, num_frames, torch.float32, device,
                                            generator, latents=noise.to(device))
        t_steps = rcm_timesteps(num_inference_steps, sigma_max).tolist()
        x = noise.to(device, torch.float64) * t_steps[0]
        self._num_timesteps = num_inference_steps
        for i, (t_cur, t_next) in enumerate(zip(t_steps[:-1], t_steps[1:], strict=True)):
            if self.interrupt:
                break
            net = self.transformer if t_cur >= boundary or self.transformer_2 is None else self.transformer_2
            hidden = torch.cat([x.to(dtype), condition.to(dtype)], dim=1)
            timestep = torch.full((1,), net_timestep(t_cur), device=device, dtype=torch.float32)
            with net.cache_context("cond"):
                v = net(hidden_states=hidden, timestep=timestep, encoder_hidden_states=prompt_embeds,
                        return_dict=False)[0]
            x = rcm_step(x, v.to(torch.float64), t_cur, t_next, ode, generator)
            if callback_on_step_end is not None:
                callback_on_step_end(self, i, timestep, {"latents": x})
        latents = x.float()
        if output_type == "latent":
            return WanPipelineOutput(frames=latents)
        vae_device = get_module_execution_device(self.vae)
        latents = latents.to(vae_device, self.vae.dtype)
        mean = torch.tensor(self.vae.config.latents_mean).view(1, z_dim, 1, 1, 1).to(latents)
        std = torch.tensor(self.vae.config.latents_std).view(1, z_dim, 1, 1, 1).to(latents)
        video = self.vae.decode(latents * std + mean, return_dict=False)[0]
        video = self.video_processor.postprocess_video(video, output_type=output_type)
        self.maybe_free_model_hooks()
        return WanPipelineOutput(frames=video)
