"""Reading and checking the hand-edited JSON files in ``presets/``: every problem becomes a :class:`CatalogError`
whose message names the file, the entry (index and id) and the field, e.g.
``sdnq_catalog.json entry 7 (FLUX.2-dev-SDNQ-uint4): download_gb must be a positive number, got -1``.
Entry indexes count from 0, as in the JSON array. The loaders (``presets``, ``model_presets``) build on it."""

from __future__ import annotations

import difflib
import functools
import json
import math
import os
import re
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

from engine.errors import EngineError

PRESETS_DIR = Path(__file__).resolve().parents[2] / "presets"

REPO_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,95}/[A-Za-z0-9][A-Za-z0-9._-]{0,95}$")
PIPELINE_NAME = re.compile(r"^[A-Z][A-Za-z0-9_]*Pipeline$")
SLUG = re.compile(r"^[a-z0-9][a-z0-9._-]{0,99}$")
ID = re.compile(r"^\S(?:.{0,98}\S)?$")


class CatalogError(EngineError):
    """A presets file is missing, is not valid JSON, or holds an entry that breaks the schema."""

    def __init__(self, message: str, *, path: str | os.PathLike | None = None, index: int | None = None,
                 entry_id: str | None = None, field: str | None = None):
        self.path = str(path) if path is not None else None
        self.index = index
        self.entry_id = entry_id
        self.field = field
        super().__init__(message)


PresetError = CatalogError  # the same error for models.json and vram_profiles.json


def read_cached(path: str | os.PathLike | None, default: Path, parse: Callable[[Path], tuple]) -> list:
    """``parse(path)`` (``default`` when no path is given), parsed again only once the file changed on disk."""
    resolved = resolve(path, default)
    return list(_parsed(parse, resolved, mtime(resolved)))


@functools.lru_cache(maxsize=32)
def _parsed(parse: Callable[[Path], tuple], path: Path, _mtime_ns: int) -> tuple:
    return parse(path)


def resolve(path: str | os.PathLike | None, default: Path) -> Path:
    return Path(path).expanduser().resolve() if path is not None else default


def mtime(path: Path) -> int:
    try:
        return path.stat().st_mtime_ns
    except OSError:
        return -1  # the loader reports the missing file


def read_json(path: Path) -> Any:
    name = path.name
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise CatalogError(f"{name}: file not found ({path})", path=path) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise CatalogError(f"{name}: cannot read the file ({exc})", path=path) from None
    try:
        return json.loads(text, parse_constant=_reject_constant)
    except json.JSONDecodeError as exc:
        raise CatalogError(
            f"{name} line {exc.lineno} column {exc.colno}: invalid JSON ({exc.msg})", path=path
        ) from None
    except ValueError as exc:  # NaN / Infinity
        raise CatalogError(f"{name}: invalid JSON ({exc})", path=path) from None


def _reject_constant(token: str) -> Any:
    raise ValueError(f"{token} is not allowed in a presets file")


class Checker:
    """Builds the error messages for one entry of one file."""

    def __init__(self, path: Path, index: int | None = None, entry_id: str | None = None, what: str = "entry"):
        self.path, self.index, self.entry_id, self.what = path, index, entry_id, what

    def where(self) -> str:
        out = self.path.name
        if self.index is not None:
            out += f" {self.what} {self.index}"
        if self.entry_id:
            out += f" ({self.entry_id})"
        return out

    def fail(self, field: str | None, message: str) -> CatalogError:
        prefix = f"{self.where()}: {field} " if field else f"{self.where()}: "
        return CatalogError(prefix + message, path=self.path, index=self.index, entry_id=self.entry_id, field=field)

    # --- field checks; each returns the checked value
    def require(self, data: dict, field: str) -> Any:
        if field not in data:
            raise self.fail(field, "is missing")
        return data[field]

    def string(self, data: dict, field: str, *, empty_ok: bool = False, pattern: re.Pattern | None = None,
               hint: str = "") -> str:
        value = self.require(data, field)
        if not isinstance(value, str):
            raise self.fail(field, f"must be a string, got {show(value)}")
        if not empty_ok and not value.strip():
            raise self.fail(field, "must not be empty")
        if pattern is not None and value and not pattern.match(value):
            raise self.fail(field, f"{hint or 'has a bad format'}, got {value!r}")
        return value

    def optional_string(self, data: dict, field: str, pattern: re.Pattern | None = None, hint: str = "") -> str | None:
        """A string or null; the key itself must be present."""
        if self.require(data, field) is None:
            return None
        return self.string(data, field, pattern=pattern, hint=hint)

    def choice(self, data: dict, field: str, choices: Sequence[str]) -> str:
        value = self.string(data, field)
        if value not in choices:
            raise self.fail(field, f"must be one of {', '.join(choices)}; got {value!r}")
        return value

    def boolean(self, data: dict, field: str, default: bool | None = None) -> bool:
        if default is not None and field not in data:
            return default
        value = self.require(data, field)
        if not isinstance(value, bool):
            raise self.fail(field, f"must be true or false, got {show(value)}")
        return value

    def number(self, data: dict, field: str, *, lo: float = 0.0, positive: bool = False, hi: float = math.inf) -> float:
        value = self.require(data, field)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise self.fail(field, f"must be a {'positive ' if positive else ''}number, got {show(value)}")
        if positive and value <= 0:
            raise self.fail(field, f"must be a positive number, got {show(value)}")
        if not lo <= value <= hi:
            raise self.fail(field, f"must be between {lo:g} and {hi:g}, got {show(value)}")
        return float(value)

    def integer(self, data: dict, field: str, *, lo: int = 1, hi: int = 10**9, optional: bool = False) -> int | None:
        value = self.require(data, field)  # optional: may be null, but must be written out
        if optional and value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, int):
            raise self.fail(field, f"must be a whole number{' or null' if optional else ''}, got {show(value)}")
        if not lo <= value <= hi:
            raise self.fail(field, f"must be between {lo} and {hi}, got {value}")
        return value

    def no_unknown(self, data: dict, known: Iterable[str]) -> None:
        unknown = sorted(k for k in data if k not in set(known) and not k.startswith("_"))
        if unknown:
            hint = difflib.get_close_matches(unknown[0], list(known), n=1)
            raise self.fail(unknown[0], "is not a known field" + (f" (did you mean {hint[0]!r}?)" if hint else ""))


def show(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return f"{value:g}" if isinstance(value, float) else str(value)
    if isinstance(value, str):
        return repr(value)
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "an object"
    return f"a {type(value).__name__}"


def entry_list(path: Path, doc: Any, key: str) -> list:
    check = Checker(path)
    if not isinstance(doc, dict):
        raise check.fail(None, f"the top level must be a JSON object with an {key!r} list")
    if "version" in doc and doc["version"] != 1:
        raise check.fail("version", f"must be 1, got {show(doc['version'])}")
    entries = doc.get(key)
    if not isinstance(entries, list):
        raise check.fail(key, f"must be a list of objects, got {show(entries)}")
    return entries


def entry_checker(path: Path, index: int, raw: Any, what: str = "entry") -> tuple[Checker, dict]:
    entry_id = raw.get("id") if isinstance(raw, dict) and isinstance(raw.get("id"), str) else None
    check = Checker(path, index, entry_id, what)
    if not isinstance(raw, dict):
        raise check.fail(None, f"must be a JSON object, got {show(raw)}")
    return check, raw
