"""A local HTTP server that answers `hf_hub_download` the way the Hugging Face Hub does.

huggingface_hub (2.x) sends `HEAD /{repo}/resolve/{revision}/{filename}` and reads `X-Repo-Commit`,
`ETag` (for LFS files the SHA-256 of the content, which also names the cache blob) and
`Content-Length`; then `GET` on the same URL, resuming with `Range: bytes=N-` after a dropped
connection (expects `206` + `Content-Range`). Unknown files answer 404 with `X-Error-Code:
EntryNotFound`. Every request is recorded; the server stops itself after `max_lifetime_s`.
"""

from __future__ import annotations

import hashlib
import re
import socket
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import unquote

COMMIT = "0123456789abcdef0123456789abcdef01234567"
_RESOLVE = re.compile(r"^/(?P<repo>[^/]+/[^/]+)/resolve/(?P<rev>[^/]+)/(?P<file>.+)$")
_RANGE = re.compile(r"^bytes=(\d+)-(\d*)$")


@dataclass
class Request:
    method: str
    path: str
    range: str | None


@dataclass
class HubState:
    files: dict[tuple[str, str], bytes] = field(default_factory=dict)
    """(repo, filename) -> content."""
    etag_override: dict[str, str] = field(default_factory=dict)
    """filename -> ETag to announce instead of the content's SHA-256 (to fake a corrupted transfer)."""
    drop_first_get: dict[str, int] = field(default_factory=dict)
    """filename -> byte count after which its first GET is cut (the connection is closed).

    huggingface_hub reads the body in 10 MiB chunks and resumes from the last whole chunk, so a cut
    beyond 10 MiB is what makes it send a `Range` request."""
    get_delay_s: float = 0.0
    requests: list[Request] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def gets(self, filename: str) -> list[Request]:
        with self.lock:
            return [r for r in self.requests if r.method == "GET" and r.path.endswith("/" + filename)]


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    timeout = 5  # idle keep-alive connections end on their own
    state: HubState  # set on the per-server subclass

    def log_message(self, format: str, *args) -> None:  # keep test output clean
        pass

    def _lookup(self):
        match = _RESOLVE.match(unquote(self.path.split("?", 1)[0]))
        if not match:
            return None, None
        key = (match["repo"], match["file"])
        return match["file"], self.state.files.get(key)

    def _not_found(self) -> None:
        self.send_response(404)
        self.send_header("X-Error-Code", "EntryNotFound")
        self.send_header("X-Error-Message", "Entry not found")
        self.send_header("X-Repo-Commit", COMMIT)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def _record(self) -> None:
        with self.state.lock:
            self.state.requests.append(Request(self.command, self.path, self.headers.get("Range")))

    def _headers(self, filename: str, content: bytes, status: int, length: int, content_range: str | None) -> None:
        etag = self.state.etag_override.get(filename) or hashlib.sha256(content).hexdigest()
        self.send_response(status)
        self.send_header("X-Repo-Commit", COMMIT)
        self.send_header("ETag", f'"{etag}"')
        self.send_header("Accept-Ranges", "bytes")
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(length))
        if content_range:
            self.send_header("Content-Range", content_range)
        self.end_headers()

    def do_HEAD(self) -> None:
        self._record()
        filename, content = self._lookup()
        if content is None:
            return self._not_found()
        self._headers(filename, content, 200, len(content), None)

    def do_GET(self) -> None:
        self._record()
        filename, content = self._lookup()
        if content is None:
            return self._not_found()
        if self.state.get_delay_s:
            time.sleep(self.state.get_delay_s)
        start = 0
        match = _RANGE.match(self.headers.get("Range") or "")
        if match:
            start = int(match[1])
            end = int(match[2]) if match[2] else len(content) - 1
            body = content[start:end + 1]
            self._headers(filename, content, 206, len(body), f"bytes {start}-{end}/{len(content)}")
        else:
            body = content
            self._headers(filename, content, 200, len(body), None)
        with self.state.lock:
            cut = self.state.drop_first_get.pop(filename, None)
        if cut is not None:
            # announce the full length, send part of it, hang up: the client sees an incomplete body
            self.wfile.write(body[:cut])
            self.wfile.flush()
            self.close_connection = True
            try:
                self.connection.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            return
        self.wfile.write(body)


class HubServer:
    """`with HubServer(state) as hub:` -> `hub.endpoint` is the URL to put in HF_ENDPOINT."""

    def __init__(self, state: HubState, *, max_lifetime_s: float = 60.0) -> None:
        handler = type("Handler", (_Handler,), {"state": state})
        self.state = state
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        # a test that hangs must not keep the server alive forever
        self._deadline = threading.Timer(max_lifetime_s, self._server.shutdown)
        self._deadline.daemon = True

    @property
    def endpoint(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def __enter__(self) -> "HubServer":
        self._thread.start()
        self._deadline.start()
        return self

    def __exit__(self, *exc) -> None:
        self._deadline.cancel()
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)
