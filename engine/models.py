"""ModelStore: resolve a ModelRef to files, load it with diffusers, share components, register
every module with the memory manager, and never run code that came with a model."""

from __future__ import annotations

import contextlib
import json
import os
import threading
from pathlib import Path
from typing import Any

import torch

from engine.errors import InputError, ModelLoadError
from engine.memory import MemoryManager
from engine.requests import ModelRef

# Libraries a model_index.json may name for its components. Anything else would be a custom
# class imported from the model repo, i.e. remote code: refused.
TRUSTED_LIBRARIES = {"diffusers", "transformers", None}

_ROLE_BY_COMPONENT = {
    "transformer": "transformer", "transformer_2": "transformer", "unet": "transformer",
    "text_encoder": "text_encoder", "text_encoder_2": "text_encoder", "text_encoder_3": "text_encoder",
    "image_encoder": "image_encoder", "vae": "vae",
}


def role_of(component: str) -> str:
    return _ROLE_BY_COMPONENT.get(component, "other")


def torch_dtype(name: str, device: str) -> torch.dtype:
    if name == "auto":
        return torch.bfloat16 if device.startswith("cuda") else torch.float32
    return getattr(torch, name)


def read_model_index(folder: Path) -> dict[str, Any]:
    index = folder / "model_index.json"
    if not index.is_file():
        raise ModelLoadError(
            f"{folder} is not a diffusers model folder (no model_index.json). "
            "Point to the folder that holds model_index.json, transformer/, vae/ ..."
        )
    try:
        return json.loads(index.read_text())
    except json.JSONDecodeError as exc:
        raise ModelLoadError(f"{index} is not valid JSON: {exc}") from None


def check_trusted(folder: Path, index: dict[str, Any]) -> None:
    """Refuse pipelines or components whose classes would be imported from the model repo."""
    import diffusers

    cls = index.get("_class_name")
    if not isinstance(cls, str) or not hasattr(diffusers, cls):
        raise ModelLoadError(
            f"{folder}: pipeline class {cls!r} is not part of diffusers; loading it would run code from "
            "the model repository, which this app never does"
        )
    for name, spec in index.items():
        if name.startswith("_") or not isinstance(spec, list) or len(spec) != 2:
            continue
        library, class_name = spec
        if library not in TRUSTED_LIBRARIES:
            raise ModelLoadError(
                f"{folder}: component {name!r} comes from {library!r}.{class_name}, custom code shipped with the "
                "model; refused (no remote code)"
            )


def module_components(pipe) -> dict[str, torch.nn.Module]:
    return {k: v for k, v in pipe.components.items() if isinstance(v, torch.nn.Module)}


class ModelStore:
    def __init__(self, memory: MemoryManager, models_dir: str | Path, demo: bool = False):
        self.memory = memory
        self.models_dir = Path(models_dir)
        self.demo = demo
        self._pipelines: dict[tuple, Any] = {}
        self._components: dict[tuple, torch.nn.Module] = {}
        self._names: dict[int, str] = {}  # id(module) -> ledger name
        # what runners keep between runs besides pipelines (IP-Adapter pieces and their token cache);
        # dropped with everything else by unload_all
        self.adapters: dict[str, Any] = {}
        self._lock = threading.RLock()

    # ------------------------------------------------------------ resolve
    def demo_dir(self) -> Path:
        from engine.demo import build_demo_models

        return build_demo_models(self.models_dir)

    def resolve(self, ref: ModelRef, progress=None, cancel=None, allow_patterns=None) -> Path:
        """A local folder for this reference: its path, a demo model, a models-dir copy, or the HF cache.
        ``allow_patterns`` picks the files to download from a repo that is not a diffusers folder."""
        if ref.path:
            folder = Path(ref.path)
            if not folder.exists():
                raise InputError("model.path", f"no such file or folder: {folder}")
        else:
            if allow_patterns is None and ref.files.given():  # never download what a single file replaces
                from engine.comfy_models.pieces import repo_patterns

                allow_patterns = repo_patterns(ref.files.given())
            folder = self._resolve_repo(ref, progress, cancel, allow_patterns)
        if ref.subfolder:
            folder = folder / ref.subfolder
            if not folder.exists():
                raise ModelLoadError(f"{ref.label} has no subfolder {ref.subfolder!r}")
        return folder

    def resolve_local(self, ref: ModelRef) -> Path | None:
        """The folder for this reference if it is already on this machine (never downloads), else None."""
        try:
            if ref.path or self.demo or (self.models_dir / ref.repo_id.split("/")[-1]).exists():
                return self.resolve(ref)
        except (InputError, ModelLoadError):
            return None
        try:
            from huggingface_hub import snapshot_download

            folder = Path(snapshot_download(ref.repo_id, revision=ref.revision or None, local_files_only=True,
                                            allow_patterns=["model_index.json"]))
        except Exception:  # not cached (or a broken cache): the plan says so
            return None
        return folder / ref.subfolder if ref.subfolder else folder

    def _resolve_repo(self, ref: ModelRef, progress, cancel, allow_patterns=None) -> Path:
        if self.demo:
            from engine.catalog.presets import demo_for_repo

            preset = demo_for_repo(ref.repo_id)
            if preset is None:
                raise ModelLoadError(
                    f"demo mode has no tiny stand-in for {ref.repo_id}; start without --demo to use real weights"
                )
            return self.demo_dir() / preset
        local = self.models_dir / ref.repo_id.split("/")[-1]
        if local.exists():
            return local
        from engine.hub import download as hub

        patterns = {"allow_patterns": allow_patterns} if allow_patterns else {}
        return hub.download(ref.repo_id, revision=ref.revision or None, progress=progress, cancel=cancel, **patterns)

    # ------------------------------------------------------------ load
    def load_pipeline(self, ref: ModelRef, pipeline_class: str | None = None, progress=None, cancel=None,
                      allow_patterns=None, **kwargs):
        """Load (or reuse) a diffusers pipeline; components already loaded from the same files are shared.
        ``allow_patterns``: download only these files (components passed as None need none of theirs)."""
        folder = self.resolve(ref, progress, cancel, allow_patterns)
        index = read_model_index(folder)
        check_trusted(folder, index)
        cls_name = pipeline_class or index["_class_name"]
        dtype = torch_dtype(ref.dtype, self.memory.compute_device)
        root = str(folder.resolve())
        files = {k: v for k, v in ref.files.given().items() if k not in kwargs}  # an explicit kwarg wins
        key = (root, cls_name, str(dtype), tuple(sorted(kwargs.items())), _file_keys(files))
        with self._lock:
            if key in self._pipelines:
                return self._pipelines[key]
            singles = self._single_files(folder, index, cls_name, files, dtype)
            shared = {n: self._components[(root, n, str(dtype))] for n in index  # an explicit kwarg (None: skip it) wins
                      if (root, n, str(dtype)) in self._components and n not in kwargs and n not in singles}
            pipe = self._from_pretrained(folder, cls_name, ref.label, dtype=dtype, **shared, **singles, **kwargs)
            for name, module in module_components(pipe).items():
                if name not in singles:  # a single-file piece is never shared as the folder's own component
                    self._components[(root, name, str(dtype))] = module
                # a single-file piece is named after its own file (a Wan pair's low-noise expert is not the
                # high-noise file's), the rest after the model
                owner = os.path.basename(files[name]) if name in singles and name in files else ref.label
                self._register(f"{owner}/{name}", module, role_of(name))
            self._pipelines[key] = pipe
            return pipe

    def loaded_parts(self, folder: Path, ref: ModelRef) -> set[str]:
        """Components of ``ref`` (in ``folder``) that a load would take from what is already loaded, at the ref's
        dtype on this device: the folder's shared components and its single files (same file version)."""
        dtype = str(torch_dtype(ref.dtype, self.memory.compute_device))
        root = str(Path(folder).resolve())
        files = ref.files.given()
        with self._lock:
            found = {key[1] for key in self._components if len(key) == 3 and key[0] == root and key[2] == dtype
                     and key[1] not in files}
            for part, stamp in zip(files, _file_keys(files)):
                if ("file", root, part, stamp, dtype) in self._components:
                    found.add(part)
        return found

    def _single_files(self, folder: Path, index: dict, cls_name: str, files: dict[str, str], dtype) -> dict:
        """Modules for the ComfyUI-style single files of a ModelRef (``engine.comfy_models``), each loaded once
        per file version and dtype and shared by every pipeline of that folder that names the same file."""
        if not files:
            return {}
        from engine.comfy_models.pieces import load_pieces

        out, todo, keys = {}, {}, {}
        for part, stamp in zip(files, _file_keys(files)):
            keys[part] = ("file", str(folder.resolve()), part, stamp, str(dtype))  # one copy per file version
            if keys[part] in self._components:
                out[part] = self._components[keys[part]]
            else:
                todo[part] = files[part]
        for part, module in load_pieces(folder, index, cls_name, todo, dtype).items():
            self._components[keys[part]] = out[part] = module
        return out

    @contextlib.contextmanager
    def transient_pipeline(self, folder: Path, pipeline_class: str, tag: str, **kwargs):
        """A pipeline for one job (e.g. quantizing): registered while it lives, never cached or shared."""
        folder = Path(folder)
        check_trusted(folder, read_model_index(folder))
        pipe = self._from_pretrained(folder, pipeline_class, folder.name, **kwargs)
        names = []
        with self._lock:
            for name, module in module_components(pipe).items():
                names.append(self.register_module(f"{folder.name}~{tag}/{name}", module, role_of(name)))
        try:
            yield pipe
        finally:
            with self._lock:
                for module in module_components(pipe).values():
                    self._names.pop(id(module), None)
                for name in names:
                    self.memory.unregister(name)

    @staticmethod
    def _from_pretrained(folder: Path, cls_name: str, label: str, **kwargs):
        import diffusers

        cls = getattr(diffusers, cls_name, None)
        if cls is None or not hasattr(cls, "from_pretrained"):
            raise ModelLoadError(f"unknown diffusers pipeline class {cls_name!r}")
        if _uses_sdnq(folder):
            import sdnq  # noqa: F401  # registers sdnq's quantizer with transformers as well as diffusers
        try:
            pipe = cls.from_pretrained(str(folder), use_safetensors=True, local_files_only=True, **kwargs)
        except (OSError, ValueError) as exc:
            raise ModelLoadError(f"could not load {label} as {cls_name}: {_first_line(exc)}") from exc
        pipe.set_progress_bar_config(disable=True)  # progress goes through the engine's callback
        return pipe

    def _register(self, name: str, module: torch.nn.Module, role: str, part_of=None) -> None:
        if id(module) in self._names:  # shared component: one ledger entry
            return
        base, n = name, 2
        while name in self.memory:  # another module by that name (one encoder file loaded for two model folders)
            name, n = f"{base} ({n})", n + 1
        self.memory.register(name, module, role, part_of=part_of)
        self._names[id(module)] = name

    def register_module(self, name: str, module: torch.nn.Module, role: str, part_of=None) -> str:
        """Register a module the store did not load itself (an adapter, a projector); ``part_of``: the loaded
        module that holds its tensors (LoRA layers inside the transformer)."""
        with self._lock:
            self._register(name, module, role, part_of)
            return self._names[id(module)]

    def unregister_module(self, module: torch.nn.Module) -> None:
        """Drop a module registered with ``register_module`` from the ledger (an adapter being replaced, a removed
        LoRA)."""
        with self._lock:
            name = self._names.pop(id(module), None)
            if name is not None:
                self.memory.unregister(name)

    def module_names(self, pipe) -> list[str]:
        """Ledger names of every weight-holding component of a pipeline."""
        return [self._names[id(m)] for m in module_components(pipe).values() if id(m) in self._names]

    def components_of(self, pipe) -> list:
        """The pipeline's registered weight-holding components, as the memory strategies see them."""
        from engine.memory.strategies import Component

        out = []
        for attr, module in module_components(pipe).items():
            name = self._names.get(id(module))
            if name is not None:
                out.append(Component(name, attr, module, self.memory.entry(name).role))
        return out

    def loaded_pipelines(self) -> list[Any]:
        return list(self._pipelines.values())

    def unload_all(self) -> None:
        with self._lock:
            self.memory.swap.remove()
            for name in set(self._names.values()):
                self.memory.unregister(name)
            self._pipelines.clear()
            self._components.clear()
            self.adapters.clear()
            self._names.clear()


def _file_keys(files: dict[str, str]) -> tuple:
    """(path, (size, mtime)) per single file: a file replaced on disk is loaded again, never served stale."""
    out = []
    for path in files.values():
        try:
            st = Path(path).stat()
            out.append((path, (st.st_size, st.st_mtime_ns)))
        except OSError:
            out.append((path, None))
    return tuple(out)


def _uses_sdnq(folder: Path) -> bool:
    """True when any component's config.json says it was saved quantized with SDNQ."""
    for config in folder.glob("*/config.json"):
        try:
            quant = json.loads(config.read_text()).get("quantization_config") or {}
        except (OSError, json.JSONDecodeError):
            continue
        if quant.get("quant_method") == "sdnq":
            return True
    return False


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__
