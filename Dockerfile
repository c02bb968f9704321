# Diffusion Studio on an NVIDIA GPU:  docker build -t diffusion-studio .  then  docker compose up
# Models, the Hugging Face cache and outputs live on volumes, so a new image never downloads weights again.
ARG CUDA_IMAGE=nvidia/cuda:12.8.1-cudnn-runtime-ubuntu22.04
FROM ${CUDA_IMAGE}

# Python 3.11 (the version the pins are checked with) from the deadsnakes PPA; ffmpeg comes with imageio-ffmpeg
ENV DEBIAN_FRONTEND=noninteractive PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN apt-get update && apt-get install -y --no-install-recommends software-properties-common ca-certificates \
    && add-apt-repository -y ppa:deadsnakes/ppa && apt-get update \
    && apt-get install -y --no-install-recommends python3.11 python3.11-venv libgl1 libglib2.0-0 \
    && rm -rf /var/lib/apt/lists/*
RUN python3.11 -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH

# torch's CUDA build first, from PyTorch's index (same pin as requirements.txt; a test checks they agree),
# then the project's pinned requirements, which find torch already satisfied
ARG TORCH_INDEX=https://download.pytorch.org/whl/cu128
RUN pip install torch==2.13.0 --index-url ${TORCH_INDEX}
COPY requirements.txt /app/requirements.txt
RUN pip install -r /app/requirements.txt

# a non-root user owns the volumes; the code is read-only for it
RUN useradd --create-home --uid 1000 studio && mkdir -p /models /outputs && chown studio:studio /models /outputs
COPY --chown=root:root . /app
WORKDIR /app
USER studio
ENV HF_HOME=/models/huggingface GRADIO_SERVER_NAME=0.0.0.0 GRADIO_SERVER_PORT=7860
VOLUME ["/models", "/outputs"]
EXPOSE 7860
HEALTHCHECK --interval=30s --timeout=5s --start-period=120s --retries=3 \
    CMD python -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:7860/', timeout=4)"
CMD ["python", "app.py", "--models-dir", "/models", "--outputs-dir", "/outputs"]
