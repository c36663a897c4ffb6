"""The daemon's API: HTTP/1.1 with JSON bodies over a Unix domain socket.

    curl --unix-socket "$XDG_RUNTIME_DIR/kbd/kbd.sock" http://kbd/status

Every reply is JSON; errors are {"error": {"code", "message", "hint"}} with a 4xx/5xx status.
A request never takes the daemon down: bodies are size-limited, reads time out, handlers'
exceptions become 500 replies, and each connection has its own thread. The socket lives in a
0700 folder with mode 0600, and a peer of another user is refused on its credentials too.
"""

from __future__ import annotations

import json
import logging
import os
import re
import socket
import socketserver
import struct
from collections.abc import Callable, Iterator
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

from kbd.errors import KbdError

log = logging.getLogger("kbd.api")

MAX_BODY_BYTES = 1 << 20
READ_TIMEOUT_S = 10.0


class ApiError(KbdError):
    """An error with an HTTP status, shown to the client as the error envelope."""

    def __init__(self, status: int, message: str, hint: str | None = None,
                 code: str | None = None):
        super().__init__(message, hint, code or HTTPStatus(status).phrase.lower()
                         .replace(" ", "-"))
        self.status = status


# a handler takes (match groups, query parameters, JSON body) and returns a JSON-able value
Handler = Callable[[dict, dict, dict], object]


class Router:
    def __init__(self) -> None:
        self.routes: list[tuple[str, re.Pattern, Handler]] = []

    def add(self, method: str, pattern: str, handler: Handler) -> None:
        self.routes.append((method, re.compile(f"^{pattern}$"), handler))

    def find(self, method: str, path: str) -> tuple[Handler, dict]:
        allowed = False
        for route_method, pattern, handler in self.routes:
            match = pattern.match(path)
            if match:
                if route_method == method:
                    return handler, match.groupdict()
                allowed = True
        if allowed:
            raise ApiError(405, f"{method} is not allowed on {path}")
        raise ApiError(404, f"no such endpoint: {path}", hint="see the API table in README")


class RequestHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "kbd"
    timeout = READ_TIMEOUT_S  # a client that stalls mid-request is dropped
    router: Router  # set on the subclass the server builds
    allowed_uid: int

    def do_GET(self) -> None:  # noqa: N802 - the names http.server looks for
        self._handle("GET")

    def do_POST(self) -> None:  # noqa: N802
        self._handle("POST")

    def do_PATCH(self) -> None:  # noqa: N802
        self._handle("PATCH")

    def do_DELETE(self) -> None:  # noqa: N802
        self._handle("DELETE")

    def _handle(self, method: str) -> None:
        try:
            self._check_peer()
            url = urlsplit(self.path)
            handler, groups = self.router.find(method, url.path.rstrip("/") or "/")
            # a path's bytes that are not UTF-8 come back as os.fsdecode gives them
            query = {k: v[-1] for k, v in parse_qs(url.query, errors="surrogateescape").items()}
            if any("\0" in v for v in query.values()):  # no path or text holds one
                raise ApiError(400, "a query parameter holds a NUL character")
            status, reply = 200, handler(groups, query, self._body())
        except ApiError as e:
            status, reply = e.status, envelope(e)
        except KbdError as e:
            status, reply = 400 if e.code in ("input", "config") else 503, envelope(e)
        except Exception as e:
            log.exception("%s %s failed", method, self.path)
            status, reply = 500, envelope(KbdError(f"internal error: {e}", code="internal"))
        if isinstance(reply, Iterator):
            self._send_stream(reply)
        else:
            self._send(status, reply)

    def _check_peer(self) -> None:
        creds = self.connection.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED,
                                           struct.calcsize("3i"))
        _pid, uid, _gid = struct.unpack("3i", creds)
        if uid not in (self.allowed_uid, 0):
            raise ApiError(403, f"user {uid} may not use this kbd daemon")

    def _body(self) -> dict:
        length = self.headers.get("Content-Length")
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            raise ApiError(411, "send a Content-Length, not a chunked body")
        if not length:
            return {}
        try:
            size = int(length)
        except ValueError as e:
            raise ApiError(400, f"Content-Length {length!r} is not a number") from e
        if size < 0:  # read(-1) would wait for the client to close
            raise ApiError(400, f"Content-Length {length!r} is negative")
        if size > MAX_BODY_BYTES:
            self.close_connection = True  # the unread body would be taken for a request
            raise ApiError(413, f"body of {size} bytes is over the limit of {MAX_BODY_BYTES}")
        raw = self.rfile.read(size)
        if len(raw) < size:
            raise ApiError(400, "the body ended early")
        try:
            body = json.loads(raw) if raw.strip() else {}
            # "\ud800" is valid JSON but no text: the tokenizer and the database refuse it
            text = json.dumps(body, ensure_ascii=False)
            text.encode()
        except (json.JSONDecodeError, UnicodeError, RecursionError) as e:
            raise ApiError(400, f"the body is not valid JSON: {e}") from e
        if "\\u0000" in text:  # PostgreSQL text cannot hold NUL, and no question needs one
            raise ApiError(400, "the body holds a NUL character")
        if not isinstance(body, dict):
            raise ApiError(400, "the body must be a JSON object")
        return body

    def _send(self, status: int, reply: object) -> None:
        data = json_bytes(reply)
        try:
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)
        except (BrokenPipeError, ConnectionResetError):
            log.info("client went away before its reply")  # others are not affected

    def _send_stream(self, events: Iterator) -> None:
        """Newline-delimited JSON events in a chunked reply, each sent as it comes."""
        try:
            self.send_response(200)
            self.send_header("Content-Type", "application/x-ndjson")
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            for event in events:
                data = json_bytes(event) + b"\n"
                self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
                self.wfile.flush()
            self.wfile.write(b"0\r\n\r\n")
        except (BrokenPipeError, ConnectionResetError):
            log.info("client went away while its answer streamed")
            self.close_connection = True

    def send_error(self, code: int, message: str | None = None,
                   explain: str | None = None) -> None:
        """http.server's own refusals (a malformed request line, too many headers, an unknown
        method) in the JSON envelope too, with a status line even to a request too broken to
        name its HTTP version."""
        self.request_version = self.protocol_version
        self.close_connection = True
        self._send(code, envelope(ApiError(code, message or HTTPStatus(code).phrase)))

    def log_message(self, format: str, *args) -> None:  # noqa: A002 - http.server's name
        log.debug("request: " + format, *args)


def json_bytes(value: object) -> bytes:
    """UTF-8 JSON; a lone surrogate (a file name's byte that is not UTF-8, as os.fsdecode
    carries it) is written as its JSON escape, which json.loads turns back into the same
    surrogate, so the client gets the exact path."""
    return json.dumps(value, ensure_ascii=False, default=str).encode("utf-8", "backslashreplace")


def envelope(error: KbdError) -> dict:
    return {"error": {"code": error.code, "message": error.message, "hint": error.hint}}


class UnixServer(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True  # a stuck client never blocks shutdown
    request_queue_size = 128


def serve(socket_path: Path, router: Router) -> UnixServer:
    """Bind the socket (0600 in a 0700 folder) and return the server; call serve_forever()."""
    socket_path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    os.chmod(socket_path.parent, 0o700)
    remove_stale_socket(socket_path)
    handler = type("Handler", (RequestHandler,), {"router": router,
                                                  "allowed_uid": os.getuid()})
    old_umask = os.umask(0o177)
    try:
        server = UnixServer(str(socket_path), handler)
    finally:
        os.umask(old_umask)
    return server


def remove_stale_socket(path: Path) -> None:
    """A socket file left by a crashed daemon: nobody answers on it, so remove it."""
    if not path.exists():
        return
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.connect(str(path))
    except OSError:
        path.unlink()
        log.info("removed a stale socket at %s", path)
        return
    finally:
        probe.close()
    raise KbdError(f"{path}: another process answers on this socket",
                   hint="stop the other kbd daemon first")
