"""What the app asks of a ComfyUI models folder: point at it, list what each tab can use, and turn a pick
into the request's ``ModelRef`` (base repo for configs + ``files``) or file path."""

from __future__ import annotations

import json
import os
import re
import threading
from dataclasses import dataclass
from pathlib import Path

from engine.comfy_models.folders import comfy_folders
from engine.comfy_models.index import ComfyIndex, Entry, human_size
from engine.errors import InputError
from engine.requests import ModelRef, SingleFiles

#: transformer architecture -> the diffusers repo whose configs (and missing pieces) it runs with
BASE_REPOS = {
    "flux-dev": "black-forest-labs/FLUX.1-dev",
    "flux-schnell": "black-forest-labs/FLUX.1-schnell",
    "flux-diffusers": "black-forest-labs/FLUX.1-dev",
    "chroma": "lodestones/Chroma1-HD",
    "qwen-image": "Qwen/Qwen-Image",
    "wan22-i2v-a14b": "Wan-AI/Wan2.2-I2V-A14B-Diffusers",
    "wan22-ti2v-5b": "Wan-AI/Wan2.2-TI2V-5B-Diffusers",
}
#: tab -> the transformer architectures its model picker offers
TAB_MODELS = {
    "text_to_image": ("flux-dev", "flux-schnell", "flux-diffusers", "chroma", "qwen-image"),
    "ipadapter": ("flux-dev", "flux-diffusers", "chroma"),
    "lora_stack": ("qwen-image",),
    "i2v": ("wan22-i2v-a14b", "wan22-ti2v-5b"),
}
#: tab -> the other kinds of file it lists
TAB_EXTRAS = {
    "text_to_image": ("vae", "text_encoder"),
    "ipadapter": ("ip_adapter", "image_encoder", "vae", "text_encoder"),
    "lora_stack": ("lora", "vae", "text_encoder"),
    "i2v": ("vae", "text_encoder"),
}
#: text encoder architecture -> the component it fills, per base model family
ENCODER_PARTS = {
    "flux": {"clip-l": "text_encoder", "t5-xxl": "text_encoder_2"},
    "chroma": {"t5-xxl": "text_encoder"},
    "qwen": {"qwen25-vl": "text_encoder"},
    "wan": {"umt5-xxl": "text_encoder"},
}


@dataclass
class WanPair:
    high: Entry
    low: Entry
    how: str  # "by name" or "by header: ... which is which is a guess"

    @property
    def label(self) -> str:
        return f"{self.high.name} + {self.low.name}"


def _family(arch: str) -> str:
    return "flux" if arch.startswith("flux") else arch.split("-")[0].replace("wan22", "wan")


CHOICE_PREFIX = "comfy:"  # a model picker value naming ComfyUI files (JSON after the prefix), never a repo id
VAE_ARCHS = {"vae-flux", "vae-ldm", "vae-wan", "vae-wan22"}
FAMILY_OF_REPO = {repo.casefold(): _family(arch) for arch, repo in BASE_REPOS.items()}


def choice_value(repo_id: str, files: dict[str, str]) -> str:
    return CHOICE_PREFIX + json.dumps({"repo_id": repo_id, "files": files}, sort_keys=True)


def ref_from_choice(value: str, pieces=(), field: str = "model") -> ModelRef:
    """The ModelRef a model picker value stands for: a repo id as it is, or a ComfyUI choice (``choice_value``);
    ``pieces`` ("<arch>:<path>" of VAE / text encoder files) fill the components that fit the model's family."""
    value = (value or "").strip()
    if value.startswith(CHOICE_PREFIX):
        try:
            data = json.loads(value[len(CHOICE_PREFIX):])
            repo, files = str(data["repo_id"]), {str(k): str(v) for k, v in dict(data["files"]).items()}
        except (ValueError, KeyError, TypeError):
            raise InputError(field, "not a valid ComfyUI model choice; pick one from the list") from None
    else:
        repo, files = value, {}
    family = FAMILY_OF_REPO.get(repo.casefold(), "")
    for piece in pieces or ():
        arch, _, path = str(piece).partition(":")
        part = "vae" if arch in VAE_ARCHS else ENCODER_PARTS.get(family, {}).get(arch)
        if not part or not path:
            raise InputError(f"{field}.files", f"{os.path.basename(path) or piece} does not fit {repo or 'this model'}")
        files[part] = path
    try:
        return ModelRef(repo_id=repo, files=SingleFiles(**files))
    except TypeError:
        raise InputError(f"{field}.files", f"unknown single-file component in {sorted(files)}") from None


class ComfyModels:
    """One per engine; ``configure`` points it at a folder (``--comfy-models``, ``--comfy-config``, or the
    settings field), ``index()`` returns the refreshed index (``None`` when nothing is configured)."""

    def __init__(self, cache_file: str | os.PathLike | None = None):
        self.cache_file = cache_file
        self.models_dir = ""
        self.config = ""
        self._index: ComfyIndex | None = None
        self._lock = threading.Lock()

    def configure(self, models_dir: str | os.PathLike | None = "", config: str | os.PathLike | None = "") -> str:
        """Use these folders from now on; returns the index summary. Bad paths are listed as problems (the
        rest is still indexed); giving neither switches the ComfyUI folder off."""
        models_dir, config = str(models_dir or "").strip(), str(config or "").strip()
        with self._lock:
            self.models_dir, self.config = models_dir, config
            if not models_dir and not config:
                self._index = None
                return "no ComfyUI models folder set"
            self._index = ComfyIndex(comfy_folders(models_dir, config), self.cache_file)
        return self.index().summary()

    def index(self) -> ComfyIndex | None:
        with self._lock:
            return self._index.refresh() if self._index is not None else None

    # ------------------------------------------------------------ listings
    def models(self, tab: str) -> list[Entry]:
        index = self.index()
        return index.of(*TAB_MODELS.get(tab, ())) if index else []

    def files_of(self, kind: str, arch: str = "") -> list[Entry]:
        index = self.index()
        if index is None:
            return []
        return [e for e in index.entries if e.usable and e.kind == kind and (not arch or e.arch == arch)]

    def tab_rows(self, tab: str) -> list[list]:
        """name, size, architecture, dtype, note for every file the tab can use, then the ones it cannot."""
        index = self.index()
        if index is None:
            return []
        kinds = TAB_EXTRAS.get(tab, ())
        archs = TAB_MODELS.get(tab, ())
        mine = [e for e in index.entries if e.usable and (e.arch in archs or e.kind in kinds)]
        return [e.row() for e in mine] + [e.row() for e in index.unusable()]

    def wan_pairs(self) -> list[WanPair]:
        """High/low noise expert pairs of Wan 2.2 I2V A14B: by the names' high/low tokens, else (names unclear)
        two files with the same header signature and the same name apart from one token."""
        experts = self.files_of("transformer", "wan22-i2v-a14b")
        pairs: list[WanPair] = []
        used: set[str] = set()
        highs = [e for e in experts if e.details.get("noise") == "high"]
        lows = [e for e in experts if e.details.get("noise") == "low"]
        for high in highs:
            stem = _without_noise(high.name)
            low = next((e for e in lows if _without_noise(e.name) == stem and e.path not in used), None)
            low = low or next((e for e in lows if e.path not in used and _same_header(high, e)), None)
            if low is not None:
                pairs.append(WanPair(high, low, "by name"))
                used |= {high.path, low.path}
        unclear = [e for e in experts if not e.details.get("noise") and e.path not in used]
        for i, a in enumerate(unclear):
            for b in unclear[i + 1:]:
                if a.path in used or b.path in used or not _same_header(a, b):
                    continue
                pairs.append(WanPair(a, b, "by header (same shapes, names do not say which is high noise: "
                                          f"{a.name} is taken as high)"))
                used |= {a.path, b.path}
        return pairs

    # ------------------------------------------------------------ picker choices
    def model_choices(self, tab: str) -> list[tuple[str, str]]:
        """(label, value) of every transformer file the tab can run (Wan A14B experts as high/low pairs)."""
        out = []
        if tab == "i2v":
            for pair in self.wan_pairs():
                out.append((f"{pair.label} · Wan 2.2 I2V A14B · {pair.high.dtype} (ComfyUI, paired {pair.how})",
                            choice_value(BASE_REPOS["wan22-i2v-a14b"],
                                         {"transformer": pair.high.path, "transformer_2": pair.low.path})))
        for e in self.models(tab):
            if e.arch == "wan22-i2v-a14b":
                continue  # one expert alone cannot run: offered as pairs only
            out.append((f"{e.name} · {e.label} · {e.dtype} · {human_size(e.size)} (ComfyUI)",
                        choice_value(BASE_REPOS[e.arch], {"transformer": e.path})))
        return out

    def piece_choices(self, tab: str) -> list[tuple[str, str]]:
        """(label, "<arch>:<path>") of the VAE and text encoder files a tab's models can take."""
        families = {_family(a) for a in TAB_MODELS.get(tab, ())}
        archs = set(VAE_ARCHS) | {a for f in families for a in ENCODER_PARTS.get(f, {})}
        return [(f"{e.name} · {e.label} · {e.dtype}", f"{e.arch}:{e.path}") for kind in ("vae", "text_encoder")
                for e in self.files_of(kind) if e.arch in archs]

    def file_choices(self, kind: str) -> list[tuple[str, str]]:
        """(label, path) of the usable files of one kind (``lora``, ``ip_adapter``, ``image_encoder``)."""
        return [(f"{e.name} · {e.label} · {e.dtype} (ComfyUI)", e.path) for e in self.files_of(kind)]

    # ------------------------------------------------------------ picks -> request fields
    def entry(self, path: str, field: str) -> Entry:
        index = self.index()
        found = index.find(path) if index else None
        if found is None:
            raise InputError(field, f"{os.path.basename(path) or path!r} is not in the ComfyUI models folder "
                                    "(refresh the list)")
        if not found.usable:
            raise InputError(field, f"{found.name} cannot be used: {found.error or found.reason}")
        return found

    def model_ref(self, transformer: str, field: str = "model", pieces: dict[str, str] | None = None,
                  transformer_2: str = "") -> ModelRef:
        """The ModelRef for a transformer file picked from the folder: its base repo for the configs, the file
        (and any VAE / text encoder files picked for it, ``pieces``: component -> path) as ``files``."""
        entry = self.entry(transformer, field)
        repo = BASE_REPOS.get(entry.arch)
        if repo is None:
            raise InputError(field, f"{entry.name} is {entry.label}, which this app does not run from a single file")
        files = {"transformer": entry.path}
        if transformer_2:
            files["transformer_2"] = self.entry(transformer_2, field).path
        for part, path in (pieces or {}).items():
            if path:
                files[part] = self.entry(path, f"{field}.files.{part}").path
        return ModelRef(repo_id=repo, files=SingleFiles(**files))

    def encoder_pieces(self, arch: str) -> dict[str, str]:
        """The text encoder files that fit this transformer's family, one per component (the first found)."""
        wanted = ENCODER_PARTS.get(_family(arch), {})
        out: dict[str, str] = {}
        for e in self.files_of("text_encoder"):
            part = wanted.get(e.arch)
            if part and part not in out:
                out[part] = e.path
        return out


_NOISE = re.compile(r"high[ _-]?noise|low[ _-]?noise|(?<![a-z])(high|low|hn|ln)(?![a-z])", re.I)


def _without_noise(name: str) -> str:
    return _NOISE.sub("", Path(name).name.lower())


def _same_header(a: Entry, b: Entry) -> bool:
    return a.arch == b.arch and a.size == b.size and a.dtype == b.dtype and a.details.get("dim") == b.details.get("dim")
