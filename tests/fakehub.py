"""A small local stand-in for the Hugging Face hub, for download tests.

It serves folders as model repositories over plain HTTP on 127.0.0.1, with the endpoints the real
``huggingface_hub`` client calls (see ``shared/reference/hub_notes.md``):

- ``GET /api/models/{repo}`` and ``/api/models/{repo}/revision/{rev}``: model info; with ``?blobs=true``
  (``files_metadata=True``) each sibling carries ``size``, ``blobId`` and ``lfs.sha256``.
- ``GET /api/models/{repo}/tree/{rev}[/{path}]?recursive=...``: the tree listing ``snapshot_download`` reads.
- ``HEAD``/``GET /{repo}/resolve/{rev}/{path}``: the file, with ``ETag`` (sha256 for LFS files, git sha1 for
  the others), ``X-Repo-Commit``, ``X-Linked-Etag``/``X-Linked-Size`` (LFS), ``Content-Length`` and
  ``Range`` -> 206.
- errors as the hub sends them, with ``X-Error-Code``: ``RepoNotFound`` (401, as for anonymous callers),
  ``RevisionNotFound``, ``EntryNotFound`` (404) and ``GatedRepo`` (401 without a token, 403 with a wrong one).

No Xet headers are sent, so the client stays on plain HTTP even with ``hf_xet`` installed.

Knobs for tests (all thread-safe): ``throttle_bps`` (body bytes per second), ``cut_after(path, n, times)``
(close the connection after ``n`` body bytes), ``repo.gated``/``repo.token``, ``repo.break_file`` (listed
but 404), ``repo.remove_file`` (gone), ``repo.corrupt_file`` (wrong bytes, right size and headers), and the
counters ``requests``, ``body_bytes(path)``, ``ranges(path)``, ``count(...)``.

Scripted faults, per kind of request (``"info"`` model info, ``"tree"``, ``"head"``/``"get"`` on a file), for the
requests whose path contains ``contains``: ``fail(kind, [503, 500], retry_after="1")`` answers those statuses, one
per request, then serves normally; ``hang(kind)`` accepts and never answers (until ``release()`` or ``stop()``);
``stall_after(path, n)`` sends ``n`` body bytes and then nothing.
"""

from __future__ import annotations

import hashlib
import json
import socket
import sys
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlsplit

LFS_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".model", ".gguf", ".onnx")
_SEND_CHUNK = 16 * 1024


def git_sha1(data: bytes) -> str:
    """The git blob id of ``data`` (what the hub sends as ETag for non-LFS files)."""
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


@dataclass
class RepoFileData:
    path: str
    data: bytes
    lfs: bool

    @property
    def size(self) -> int:
        return len(self.data)

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.data).hexdigest()

    @property
    def pointer(self) -> bytes:
        return f"version https://git-lfs.github.com/spec/v1\noid sha256:{self.sha256}\nsize {self.size}\n".encode()

    @property
    def blob_id(self) -> str:
        # For an LFS file, git stores the pointer: its blob id is the pointer's sha1.
        return git_sha1(self.pointer if self.lfs else self.data)

    @property
    def etag(self) -> str:
        return self.sha256 if self.lfs else git_sha1(self.data)


@dataclass
class FakeRepo:
    repo_id: str
    files: dict[str, RepoFileData]
    commit: str
    gated: bool = False
    token: str | None = None
    broken: set[str] = field(default_factory=set)  # listed, but resolve answers 404 EntryNotFound
    corrupt: set[str] = field(default_factory=set)  # served with wrong bytes of the right size

    def break_file(self, path: str) -> None:
        self.broken.add(path)

    def remove_file(self, path: str) -> None:
        self.files.pop(path)

    def corrupt_file(self, path: str) -> None:
        self.corrupt.add(path)

    def content(self, path: str) -> bytes:
        data = self.files[path].data
        if path in self.corrupt:
            return bytes(b ^ 0x5A for b in data)  # same size, different bytes
        return data


@dataclass
class Request:
    method: str
    path: str  # URL path, unquoted, no query
    range: str | None
    status: int = 0


class FakeHub:
    """Threaded HTTP server on 127.0.0.1:<free port>. Use as a context manager or call start()/stop()."""

    def __init__(self) -> None:
        self.repos: dict[str, FakeRepo] = {}
        self.throttle_bps: float | None = None
        self.requests: list[Request] = []
        self._body: dict[str, int] = {}
        self._cuts: dict[str, list[int | None]] = {}  # file path -> [after_bytes, times_left (None: always)]
        self._faults: list[dict] = []  # scripted answers, see fail() / hang()
        self._stalls: dict[str, int] = {}  # file path -> body bytes sent before the stream goes silent
        self._release = threading.Event()
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._active = 0  # bodies being sent right now
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # ------------------------------------------------------------------ setup
    def add_repo(self, repo_id: str, folder: str | Path, *, commit: str | None = None) -> FakeRepo:
        folder = Path(folder)
        files = {}
        for p in sorted(folder.rglob("*")):
            if p.is_file():
                rel = p.relative_to(folder).as_posix()
                data = p.read_bytes()
                files[rel] = RepoFileData(rel, data, lfs=rel.endswith(LFS_SUFFIXES) or len(data) > 10_000_000)
        if commit is None:
            digest = hashlib.sha1(repo_id.encode())
            for rel in sorted(files):
                digest.update(rel.encode() + files[rel].etag.encode())
            commit = digest.hexdigest()
        repo = FakeRepo(repo_id, files, commit)
        self.repos[repo_id] = repo
        return repo

    def cut_after(self, path: str, n_bytes: int, times: int | None = 1) -> None:
        """Close the connection after ``n_bytes`` of the body of ``path`` (repo-relative), ``times`` times."""
        with self._lock:
            self._cuts[path] = [n_bytes, times]

    def clear_cuts(self) -> None:
        with self._lock:
            self._cuts.clear()

    def fail(self, kind: str, statuses: list[int], contains: str = "", retry_after: str | None = None) -> None:
        """Answer the next ``len(statuses)`` requests of ``kind`` (info, tree, head, get) with these statuses."""
        with self._lock:
            self._faults.append({"kind": kind, "contains": contains, "statuses": list(statuses),
                                 "retry_after": retry_after, "hang": False})

    def hang(self, kind: str, contains: str = "") -> None:
        """Accept every request of ``kind`` and never answer it (until ``release()`` or ``stop()``)."""
        with self._lock:
            self._faults.append({"kind": kind, "contains": contains, "statuses": [], "hang": True})
        self._release.clear()

    def stall_after(self, path: str, n_bytes: int) -> None:
        """Send ``n_bytes`` of the body of ``path`` (repo-relative), then keep the connection open, silent."""
        with self._lock:
            self._stalls[path] = n_bytes
        self._release.clear()

    def release(self) -> None:
        """End every hang and stall: those connections close."""
        with self._lock:
            self._faults = [f for f in self._faults if not f["hang"]]
            self._stalls.clear()
        self._release.set()

    def _take_fault(self, kind: str, path: str) -> dict | None:
        with self._lock:
            for fault in self._faults:
                if fault["kind"] == kind and fault["contains"] in path:
                    if fault["hang"]:
                        return fault
                    if fault["statuses"]:
                        return {**fault, "status": fault["statuses"].pop(0)}
            return None

    def _silent(self) -> None:
        """Hold a connection open without a byte until released or stopped."""
        while not (self._stopping.is_set() or self._release.is_set()):
            self._stopping.wait(0.05)

    # --------------------------------------------------------------- counters
    def reset_counters(self) -> None:
        with self._lock:
            self.requests.clear()
            self._body.clear()

    def body_bytes(self, path: str | None = None) -> int:
        """Body bytes sent for ``path`` (a repo-relative file path), or for all files."""
        with self._lock:
            if path is None:
                return sum(self._body.values())
            return self._body.get(path, 0)

    def ranges(self, path: str) -> list[str]:
        with self._lock:
            return [r.range for r in self.requests if r.range and r.path.endswith("/" + path) and "/resolve/" in r.path]

    def wait_idle(self, timeout: float = 10.0) -> None:
        """Wait until no body is being sent (e.g. to a client that was just killed) before reading counters."""
        deadline = time.monotonic() + timeout
        while self._active and time.monotonic() < deadline:
            time.sleep(0.01)

    def count(self, method: str | None = None, contains: str = "") -> int:
        with self._lock:
            return sum(1 for r in self.requests if (method is None or r.method == method) and contains in r.path)

    def resolve_gets(self) -> int:
        return self.count("GET", "/resolve/")

    # --------------------------------------------------------------- lifecycle
    @property
    def endpoint(self) -> str:
        assert self._server is not None
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> FakeHub:
        hub = self

        class Handler(_Handler):
            fakehub = hub

        self._stopping.clear()
        self._release.clear()
        self._server = _Server(("127.0.0.1", 0), Handler)
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, name="fakehub", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stopping.set()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def __enter__(self) -> FakeHub:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # ---------------------------------------------------------------- helpers
    def _record(self, req: Request) -> None:
        with self._lock:
            self.requests.append(req)

    def _add_body(self, path: str, n: int) -> None:
        with self._lock:
            self._body[path] = self._body.get(path, 0) + n

    def _take_cut(self, path: str) -> int | None:
        with self._lock:
            cut = self._cuts.get(path)
            if cut is None:
                return None
            after, times = cut
            if times is not None:
                if times <= 0:
                    return None
                cut[1] = times - 1
            return after


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request, client_address) -> None:
        # a client that hangs up (cancel, kill -9, the end of a test) is normal here, not a traceback
        if not isinstance(sys.exc_info()[1], (ConnectionError, TimeoutError)):
            super().handle_error(request, client_address)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    fakehub: FakeHub

    def log_message(self, *args) -> None:  # keep test output quiet
        pass

    # ------------------------------------------------------------- responses
    def _send(self, status: int, body: bytes = b"", headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD" and body:
            self.wfile.write(body)

    def _json(self, obj, status: int = 200) -> None:
        self._send(status, json.dumps(obj).encode(), {"Content-Type": "application/json"})

    def _error(self, status: int, code: str, message: str, extra: dict[str, str] | None = None) -> None:
        headers = {"X-Error-Code": code, "X-Error-Message": message, "Content-Type": "application/json"}
        headers.update(extra or {})
        self._send(status, json.dumps({"error": message}).encode(), headers)

    # --------------------------------------------------------------- routing
    def do_HEAD(self) -> None:
        self._dispatch()

    def do_GET(self) -> None:
        self._dispatch()

    def _dispatch(self) -> None:
        url = urlsplit(self.path)
        path = unquote(url.path)
        query = parse_qs(url.query)
        req = Request(self.command, path, self.headers.get("Range"))
        self.fakehub._record(req)
        parts = [p for p in path.split("/") if p]
        if self._scripted(parts, path):
            return
        try:
            if parts[:2] == ["api", "models"] and len(parts) >= 4:
                repo = self._repo("/".join(parts[2:4]))
                if repo is None:
                    return
                rest = parts[4:]
                if not rest:
                    return self._model_info(repo, "main", query)
                if rest[0] == "revision" and len(rest) >= 2:
                    return self._model_info(repo, "/".join(rest[1:]), query)
                if rest[0] == "tree" and len(rest) >= 2:
                    return self._tree(repo, rest[1], "/".join(rest[2:]), query)
            elif len(parts) >= 5 and parts[2] == "resolve":
                repo = self._repo("/".join(parts[:2]))
                if repo is None:
                    return
                return self._resolve(repo, parts[3], "/".join(parts[4:]))
            self._error(404, "NotFound", f"no route for {path}")
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True

    def _scripted(self, parts: list[str], path: str) -> bool:
        """A scripted fault for this request, if any: hang, or answer its status. True when it was handled."""
        if parts[:2] == ["api", "models"]:
            kind = "tree" if "tree" in parts[4:5] else "info"
        elif len(parts) >= 5 and parts[2] == "resolve":
            kind = self.command.lower()
        else:
            return False
        fault = self.fakehub._take_fault(kind, path)
        if fault is None:
            return False
        if fault["hang"]:
            self.fakehub._silent()
            self.close_connection = True
            return True
        extra = {"Retry-After": fault["retry_after"]} if fault.get("retry_after") else {}
        if fault["status"] == 416:
            extra["Content-Range"] = "bytes */0"
        self._error(fault["status"], "ScriptedFault", f"scripted {fault['status']}", extra)
        return True

    def _repo(self, repo_id: str) -> FakeRepo | None:
        repo = self.fakehub.repos.get(repo_id)
        if repo is None:
            # The hub answers 401 to anonymous callers for repos that do not exist (or are private).
            self._error(401, "RepoNotFound", "Repository not found")
        return repo

    def _commit_for(self, repo: FakeRepo, revision: str) -> str | None:
        if revision in ("main", repo.commit):
            return repo.commit
        self._error(404, "RevisionNotFound", f"Invalid rev id: {revision}")
        return None

    def _authorized(self, repo: FakeRepo) -> bool:
        if not repo.gated:
            return True
        auth = self.headers.get("Authorization", "")
        if repo.token is not None and auth == f"Bearer {repo.token}":
            return True
        message = f"Access to model {repo.repo_id} is restricted. You must have access to it and be authenticated."
        self._error(403 if auth else 401, "GatedRepo", message)
        return False

    # ------------------------------------------------------------- endpoints
    def _model_info(self, repo: FakeRepo, revision: str, query: dict) -> None:
        commit = self._commit_for(repo, revision)
        if commit is None:
            return
        with_blobs = query.get("blobs", ["false"])[0].lower() == "true"
        siblings = []
        for f in repo.files.values():
            sib: dict = {"rfilename": f.path}
            if with_blobs:
                sib["size"] = f.size
                sib["blobId"] = f.blob_id
                if f.lfs:
                    sib["lfs"] = {"size": f.size, "sha256": f.sha256, "pointerSize": len(f.pointer)}
            siblings.append(sib)
        self._json(
            {
                "_id": repo.commit[:24],
                "id": repo.repo_id,
                "modelId": repo.repo_id,
                "sha": commit,
                "private": False,
                "gated": "manual" if repo.gated else False,
                "disabled": False,
                "tags": ["diffusers"],
                "library_name": "diffusers",
                "siblings": siblings,
            }
        )

    def _tree(self, repo: FakeRepo, revision: str, prefix: str, query: dict) -> None:
        if self._commit_for(repo, revision) is None:
            return
        recursive = query.get("recursive", ["false"])[0].lower() in ("true", "1")
        base = prefix.strip("/") + "/" if prefix.strip("/") else ""
        entries: dict[str, dict] = {}
        for f in repo.files.values():
            if not f.path.startswith(base):
                continue
            rel_parts = f.path[len(base) :].split("/")
            # folders between base and the file
            for depth in range(1, len(rel_parts)):
                if not recursive and depth > 1:
                    break
                folder = base + "/".join(rel_parts[:depth])
                entries.setdefault(
                    folder, {"type": "directory", "oid": git_sha1(folder.encode()), "size": 0, "path": folder}
                )
            if recursive or len(rel_parts) == 1:
                entry = {"type": "file", "oid": f.blob_id, "size": f.size, "path": f.path}
                if f.lfs:
                    entry["lfs"] = {"oid": f.sha256, "size": f.size, "pointerSize": len(f.pointer)}
                entries[f.path] = entry
        self._json(sorted(entries.values(), key=lambda e: e["path"]))

    def _resolve(self, repo: FakeRepo, revision: str, file_path: str) -> None:
        commit = self._commit_for(repo, revision)
        if commit is None or not self._authorized(repo):
            return
        f = repo.files.get(file_path)
        if f is None or file_path in repo.broken:
            self._error(404, "EntryNotFound", f"{file_path} does not exist on {revision}", {"X-Repo-Commit": commit})
            return
        headers = {
            "X-Repo-Commit": commit,
            "ETag": f'"{f.etag}"',
            "Accept-Ranges": "bytes",
            "Content-Type": "application/octet-stream",
        }
        if f.lfs:
            headers["X-Linked-Etag"] = f'"{f.etag}"'
            headers["X-Linked-Size"] = str(f.size)
        start, end, status = 0, f.size - 1, 200
        range_header = self.headers.get("Range")
        if range_header and self.command == "GET":
            spec = range_header.strip().removeprefix("bytes=")
            first, _, last = spec.partition("-")
            start = int(first) if first else 0
            end = min(int(last), f.size - 1) if last else f.size - 1
            if start >= f.size:
                self._send(416, b"", {**headers, "Content-Range": f"bytes */{f.size}"})
                return
            status = 206
            headers["Content-Range"] = f"bytes {start}-{end}/{f.size}"
        length = end - start + 1
        self.send_response(status)
        for key, value in headers.items():
            self.send_header(key, value)
        self.send_header("Content-Length", str(length))
        self.end_headers()
        if self.command == "HEAD":
            return
        self._stream(repo.content(file_path)[start : end + 1], file_path)

    def _stream(self, body: bytes, file_path: str) -> None:
        with self.fakehub._lock:
            self.fakehub._active += 1
        try:
            self._stream_body(body, file_path)
        finally:
            with self.fakehub._lock:
                self.fakehub._active -= 1

    def _stream_body(self, body: bytes, file_path: str) -> None:
        hub = self.fakehub
        cut = hub._take_cut(file_path)
        with hub._lock:
            stall = hub._stalls.get(file_path)
        sent = 0
        started = time.monotonic()
        while sent < len(body):
            if hub._stopping.is_set():
                self._abort()
                return
            n = _SEND_CHUNK
            if stall is not None and sent + n > stall:
                n = stall - sent
                if n <= 0:
                    self.wfile.flush()
                    hub._silent()
                    self._abort()
                    return
            if cut is not None:
                n = min(n, cut - sent)
                if n <= 0:
                    self._abort()
                    return
            chunk = body[sent : sent + n]
            self.wfile.write(chunk)
            sent += len(chunk)
            hub._add_body(file_path, len(chunk))
            bps = hub.throttle_bps
            if bps:
                # sleep until the average rate is back under the limit (Event.wait: independent of time.sleep
                # patches in tests)
                delay = sent / bps - (time.monotonic() - started)
                if delay > 0:
                    hub._stopping.wait(delay)
        self.wfile.flush()

    def _abort(self) -> None:
        """Drop the connection mid-body: the client sees a body shorter than Content-Length."""
        try:
            self.wfile.flush()
            self.connection.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.close_connection = True
