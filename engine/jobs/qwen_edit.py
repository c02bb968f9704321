"""Qwen-Image-Edit pieces the store cannot load by itself: the Qwen2-VL processor without torchvision.

transformers 5 builds ``Qwen2VLProcessor`` from three parts, the image processor, the tokenizer *and* a video
processor, and its video processors need torchvision. Where torchvision is installed, diffusers loads the
processor from ``processor/`` as usual (nothing here is used). Where it is not (torchvision's CPU wheel has to
match the CPU torch build exactly, which many installs do not have), the same files are loaded into an
image-only subclass: the Edit pipelines pass images and never videos to their processor, so nothing they call
changes; the image half falls back to transformers' PIL image processor, which reads the same
``preprocessor_config.json``.
"""

from __future__ import annotations

import functools
from pathlib import Path

from engine.errors import ModelLoadError

EDIT_PIPELINES = ("QwenImageEditPipeline", "QwenImageEditPlusPipeline")


def is_edit_pipeline(class_name: str) -> bool:
    return class_name in EDIT_PIPELINES


@functools.lru_cache(maxsize=1)
def _image_only_class():
    from transformers import Qwen2VLProcessor

    class ImageOnlyQwen2VLProcessor(Qwen2VLProcessor):
        """``Qwen2VLProcessor`` with its image processor and tokenizer only (no ``video_processor``)."""

        def __init__(self, image_processor=None, tokenizer=None, chat_template=None, **kwargs):
            # ProcessorMixin takes its parts from this signature: video_processor is no longer one of them
            super().__init__(image_processor, tokenizer, None, chat_template=chat_template, **kwargs)

    return ImageOnlyQwen2VLProcessor


def needs_own_processor() -> bool:
    from transformers.utils import is_torchvision_available

    return not is_torchvision_available()


def load_processor(folder: Path):
    """The ``processor/`` of an Edit model folder as an image-only ``Qwen2VLProcessor``."""
    import logging

    from transformers.utils import logging as tlog

    path = Path(folder) / "processor"
    if not (path / "preprocessor_config.json").is_file():
        raise ModelLoadError(f"{folder} has no processor/preprocessor_config.json: not a Qwen-Image-Edit folder")
    level = tlog.get_verbosity()
    tlog.set_verbosity(logging.ERROR)  # "requires torchvision, falling back to the PIL processor": said above
    try:
        return _image_only_class().from_pretrained(str(path), local_files_only=True)
    except (OSError, ValueError, KeyError) as exc:
        raise ModelLoadError(f"could not load the Qwen2-VL processor of {folder}: {exc}") from None
    finally:
        tlog.set_verbosity(level)


def pipeline_kwargs(store, folder: Path) -> dict:
    """What ``ModelStore.load_pipeline`` must be given to load an Edit pipeline from ``folder``: the processor,
    when transformers cannot build it. Kept per folder in the store's adapters (one object, so the pipeline
    cache key stays the same from run to run), dropped by ``unload_all``."""
    if not needs_own_processor():
        return {}
    key = f"qwen-edit-processor:{Path(folder).resolve()}"
    if key not in store.adapters:
        store.adapters[key] = load_processor(folder)
    return {"processor": store.adapters[key]}
