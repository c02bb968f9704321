"""A ComfyUI models folder as a model source (issue 21): ``folders`` (``--comfy-models``, extra_model_paths.yaml),
``header`` + ``detect`` + ``index`` (what each file is, from headers only, cached), ``single_file`` + ``pieces``
(loading through diffusers' ``from_single_file``), ``service`` (what the tabs ask). Nothing here writes into a
scanned folder."""

from engine.comfy_models.folders import ComfyFolders, comfy_folders
from engine.comfy_models.index import ComfyIndex, Entry
from engine.comfy_models.service import BASE_REPOS, CHOICE_PREFIX, ComfyModels, WanPair, choice_value, ref_from_choice

__all__ = ["BASE_REPOS", "CHOICE_PREFIX", "ComfyFolders", "ComfyIndex", "ComfyModels", "Entry", "WanPair", "choice_value", "comfy_folders",
           "ref_from_choice"]
