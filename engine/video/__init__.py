"""Image-to-video beyond diffusers' Wan pipelines: ``turbowan`` (TurboWan checkpoints, converted on load),
``rcm`` (its few-step sampler), ``encode`` (mp4/webm/gif files), ``preview`` (latent previews while sampling),
``start_image`` (fit the start image to the frame) and ``context_parallel`` (one run over several GPUs)."""
