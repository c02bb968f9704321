"""PNG text chunks as ComfyUI writes them: ``prompt`` (API JSON) and ``workflow`` (UI JSON), read back with Pillow."""

from __future__ import annotations

import json
import struct
import zlib

from .errors import WorkflowError
from .limits import MAX_JSON_BYTES

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
MAX_TEXT_TOTAL = 4 * MAX_JSON_BYTES  # all text chunks of one PNG together


def png_text(request, demo: bool = False) -> dict[str, str]:
    from .export import both

    api, workflow = both(request, demo)
    return {"prompt": json.dumps(api), "workflow": json.dumps(workflow)}


def read_png_text(data: bytes) -> dict[str, str]:
    """The text chunks (tEXt, zTXt, iTXt) of a PNG, read without decoding a pixel. Why not Pillow: its ``text``
    decodes the whole image when a chunk follows the pixels (a decompression bomb in a 1 MB file), and its text
    limits are process-wide globals. Here each compressed chunk inflates to at most ``MAX_JSON_BYTES``."""
    if data[:8] != PNG_MAGIC:
        raise WorkflowError(f"this is {_kind(data)}; only PNGs carry ComfyUI's workflow")
    text: dict[str, str] = {}
    pos, total = 8, 0
    while pos + 8 <= len(data):
        length, kind = struct.unpack(">I4s", data[pos:pos + 8])
        body = data[pos + 8:pos + 8 + length]
        if len(data) < pos + 12 + length:
            raise WorkflowError("cannot read the file as an image (the PNG is cut short)")
        pos += 12 + length  # length, type, body, CRC
        if kind == b"IEND":
            break
        if kind not in (b"tEXt", b"zTXt", b"iTXt"):
            continue
        key, value = _chunk_text(kind, body)
        total += len(value)
        if total > MAX_TEXT_TOTAL:
            raise WorkflowError(f"the PNG's text chunks hold more than {MAX_TEXT_TOTAL >> 20} MB")
        if key:
            text.setdefault(key, value)
    if not text and pos <= 8:
        raise WorkflowError("cannot read the file as an image (no PNG chunk)")
    return text


def _chunk_text(kind: bytes, body: bytes) -> tuple[str, str]:
    key, sep, rest = body.partition(b"\0")
    if not sep:
        return "", ""
    name = key.decode("latin-1")
    try:
        if kind == b"tEXt":
            return name, rest.decode("latin-1")
        if kind == b"zTXt":
            return name, _inflate(rest[1:], name).decode("latin-1")
        flag, _method, rest = rest[0:1], rest[1:2], rest[2:]  # iTXt: flag, method, language\0, keyword\0, text
        _lang, _, rest = rest.partition(b"\0")
        _translated, _, rest = rest.partition(b"\0")
        raw = _inflate(rest, name) if flag == b"\1" else rest
        return name, raw.decode("utf-8", "replace")
    except zlib.error:
        raise WorkflowError(f"the PNG's {name} chunk is damaged (cannot inflate it)") from None


def _inflate(data: bytes, name: str) -> bytes:
    inflater = zlib.decompressobj()
    out = inflater.decompress(data, MAX_JSON_BYTES + 1)
    if len(out) > MAX_JSON_BYTES or inflater.unconsumed_tail:
        raise WorkflowError(f"the PNG's {name} chunk inflates to more than {MAX_JSON_BYTES >> 20} MB (a "
                            "decompression bomb?); a workflow is far smaller")
    return out


def _kind(data: bytes) -> str:
    for magic, name in ((b"\xff\xd8\xff", "a JPEG image"), (b"RIFF", "a WEBP image"), (b"GIF8", "a GIF image")):
        if data.startswith(magic):
            return name
    return "not a PNG"
