"""``python -m engine catalog-check``: ask the hub whether ``presets/sdnq_catalog.json`` still tells the truth.

For every entry: does the repo exist (and is it readable), which ``quantization_config.quant_method`` its
components declare (an Optimum Quanto checkpoint has a ``quantization_map.json`` instead and cannot load as SDNQ),
which pipeline class ``model_index.json`` names, and how many bytes the files the app would fetch
(``hub.DIFFUSERS_PATTERNS``) really are. Only small JSON files are read, never weights, and nothing is cached.
``--write`` puts the real sizes into the file, changing nothing else in it.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

from huggingface_hub import hf_hub_url
from huggingface_hub.utils import build_hf_headers, get_session, hf_raise_for_status

from engine.catalog.presets import CATALOG_PATH, CatalogEntry, load_catalog
from engine.files.atomic import write_text
from engine.hub import cache as hub_cache
from engine.hub import download as hub
from engine.hub import http as hub_http
from engine.hub import progress as hub_progress

SIZE_TOLERANCE = 0.03  # a size within 3% of the hub's is left alone


@dataclass
class Finding:
    entry: CatalogEntry
    hub_bytes: int | None = None
    rows: list[tuple[str, str, str]] = field(default_factory=list)  # (field, the catalog says, the hub says)

    @property
    def hub_gb(self) -> float | None:
        return None if self.hub_bytes is None else float(f"{self.hub_bytes / 1e9:.3g}")


def _get_json(env, repo_id: str, commit: str, path: str, transfer, lim: hub_http.Limits):
    url = hf_hub_url(repo_id, path, revision=commit, endpoint=env.endpoint)
    headers = build_hf_headers(token=env.token)

    def fetch():
        response = get_session().get(url, headers=headers, timeout=lim.timeout, follow_redirects=True)
        hf_raise_for_status(response)
        return response.json()

    return hub_http.request(fetch, transfer, f"Reading {repo_id}/{path}", lim)


def check_entry(entry: CatalogEntry) -> Finding:
    env = hub_cache.read_env()
    lim = hub_http.limits()
    transfer = hub_progress.Transfer(entry.repo_id, 0, 0, None, None)
    finding = Finding(entry)
    try:
        info = hub.model_info(env, entry.repo_id, None, transfer)
    except Exception as exc:
        error = hub.translate_error(exc, env, entry.repo_id, None)
        finding.rows.append(("repo_id", entry.repo_id, f"cannot be read: {type(error).__name__}: {error}"))
        return finding
    siblings = {s.rfilename: s for s in info.siblings or []}
    selected = hub_cache.select(siblings, hub.DIFFUSERS_PATTERNS)
    sizes = [siblings[rel].size for rel in selected]
    finding.hub_bytes = None if None in sizes else sum(sizes)
    if not selected:
        finding.rows.append(("repo_id", "a diffusers folder", "no model_index.json / component files"))
        return finding

    try:
        index = _get_json(env, entry.repo_id, info.sha, "model_index.json", transfer, lim)
    except Exception as exc:
        index = {}
        finding.rows.append(("pipeline", entry.pipeline or "null", f"model_index.json unreadable ({exc})"))
    hub_pipeline = index.get("_class_name") if isinstance(index, dict) else None
    if index and entry.pipeline is not None and hub_pipeline != entry.pipeline:
        finding.rows.append(("pipeline", entry.pipeline, str(hub_pipeline)))

    methods: dict[str, str] = {}
    for component in sorted(k for k, v in (index or {}).items() if not k.startswith("_") and isinstance(v, list)):
        if f"{component}/quantization_map.json" in siblings:
            methods[component] = "quanto (quantization_map.json)"
            continue
        if f"{component}/config.json" not in siblings:
            continue
        try:
            config = _get_json(env, entry.repo_id, info.sha, f"{component}/config.json", transfer, lim)
        except Exception:
            continue
        quant = config.get("quantization_config") if isinstance(config, dict) else None
        if isinstance(quant, dict) and quant.get("quant_method"):
            methods[component] = str(quant["quant_method"])
    if "sdnq" not in methods.values():
        said = ", ".join(f"{c}: {m}" for c, m in methods.items()) or "no quantization_config in any component"
        finding.rows.append(("quant_method", "sdnq", said))
    elif any(m != "sdnq" for m in methods.values()):
        others = ", ".join(f"{c}: {m}" for c, m in methods.items() if m != "sdnq")
        finding.rows.append(("quant_method", "sdnq", f"mixed ({others})"))

    if finding.hub_gb is not None:
        if abs(finding.hub_bytes / 1e9 - entry.download_gb) > SIZE_TOLERANCE * max(finding.hub_bytes / 1e9, 1e-9):
            finding.rows.append(("download_gb", f"{entry.download_gb:g}", f"{finding.hub_gb:g}"))
    return finding


def table(findings: list[Finding]) -> str:
    rows = [(f.entry.id, *row) for f in findings for row in f.rows]
    if not rows:
        return f"All {len(findings)} entries agree with the hub."
    head = ("entry", "field", "catalog", "hub")
    widths = [max(len(str(r[i])) for r in [head, *rows]) for i in range(3)]
    out = [" | ".join(str(c).ljust(w) for c, w in zip(head[:3], widths)) + " | " + head[3]]
    out.append("-+-".join("-" * w for w in widths) + "-+-" + "-" * 8)
    out += [" | ".join(str(c).ljust(w) for c, w in zip(r[:3], widths)) + " | " + r[3] for r in rows]
    return "\n".join(out)


def write_sizes(path: Path, findings: list[Finding]) -> list[str]:
    """Set ``download_gb`` of every entry whose size disagrees to the hub's; the rest of the file is untouched."""
    text = path.read_text(encoding="utf-8")
    changed = []
    for f in findings:
        if f.hub_gb is None or not any(field == "download_gb" for field, _, _ in f.rows):
            continue
        anchor = re.search(r'"repo_id"\s*:\s*' + re.escape(json.dumps(f.entry.repo_id)), text)
        if anchor is None:
            continue
        number = re.compile(r'("download_gb"\s*:\s*)(-?[0-9.eE+]+)')
        match = number.search(text, anchor.end())
        if match is None:
            continue
        text = text[: match.start(2)] + f"{f.hub_gb:g}" + text[match.end(2):]
        changed.append(f.entry.id)
    if changed:
        write_text(path, text, what="presets folder", flag="a checkout on another disk")
        load_catalog(path)  # the file is still valid (raises CatalogError otherwise)
    return changed


def main(catalog: Path | None, write: bool, out=print) -> int:
    path = Path(catalog) if catalog else CATALOG_PATH
    entries = load_catalog(path)
    findings = []
    for entry in entries:
        out(f"checking {entry.id} ({entry.repo_id})…")
        findings.append(check_entry(entry))
    out(table(findings))
    if write:
        changed = write_sizes(path, findings)
        out(f"updated download_gb of {len(changed)} entries in {path}" + (f": {', '.join(changed)}" if changed else ""))
    return 1 if any(f.rows for f in findings) else 0
