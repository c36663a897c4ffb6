"""The daemon's API: HTTP/1.1 with JSON bodies over a Unix domain socket, served by uvicorn.

    curl --unix-socket "$XDG_RUNTIME_DIR/kbd/kbd.sock" http://kbd/status

Every reply is JSON; errors are {"error": {"code", "message", "hint"}} with a 4xx/5xx status.
A request never takes the daemon down: bodies are size-limited, each request must arrive whole
within REQUEST_DEADLINE_S, handlers' exceptions become 500 replies, and handlers run in a
thread pool so the event loop only moves bytes. The socket lives in a 0700 folder with mode
0600, and a peer of another user is refused on its credentials too.

Framing is httptools' (llhttp, node.js's parser): a body is skipped by its length even when
the request is refused before reading it, and ambiguous lengths (Content-Length with
Transfer-Encoding, two Content-Lengths) are refused and the connection closed.
"""

from __future__ import annotations

import asyncio
import inspect
import json
import logging
import os
import re
import socket
import struct
import threading
from asyncio import TimerHandle
from collections.abc import Awaitable, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from http import HTTPStatus
from pathlib import Path
from urllib.parse import parse_qs

import httptools
import uvicorn
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from kbd.errors import ApiError, KbdError

log = logging.getLogger("kbd.api")

MAX_BODY_BYTES = 1 << 20
REQUEST_DEADLINE_S = 10.0  # to send a whole request, from connecting or the previous reply
MAX_TARGET_BYTES = 1 << 16  # the request line's path and query, as http.server allowed
MAX_HEADERS = 100
MAX_HEAD_BYTES = 1 << 17  # request line and headers together: llhttp itself has no limit
HANDLER_THREADS = 64  # handlers that block (the store, a streamed answer) run here
SHUTDOWN_GRACE_S = 3.0  # replies under way at SIGTERM get this long to finish

# the start of a well-formed request line: its method is unknown (501), not malformed (400)
REQUEST_LINE = re.compile(rb"\s*([!#$%&'*+.^_`|~0-9A-Za-z-]+) \S+ HTTP/\d\.\d\r?\n")


# a handler takes (match groups, query parameters, JSON body) and returns a JSON-able value,
# an Iterator of events to stream as NDJSON, or an awaitable of either (a model's answer,
# awaited on the event loop without holding a thread)
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


def json_bytes(value: object) -> bytes:
    """UTF-8 JSON; a lone surrogate (a file name's byte that is not UTF-8, as os.fsdecode
    carries it) is written as its JSON escape, which json.loads turns back into the same
    surrogate, so the client gets the exact path."""
    return json.dumps(value, ensure_ascii=False, default=str).encode("utf-8", "backslashreplace")


def envelope(error: KbdError) -> dict:
    return {"error": {"code": error.code, "message": error.message, "hint": error.hint}}


class ClientGone(Exception):
    """The client closed its connection before its request was read whole."""


# -- the ASGI application ----------------------------------------------------------------------

class App:
    """Routes each request to its handler and turns what it returns, or raises, into a reply."""

    def __init__(self, router: Router):
        self.router = router
        self.pool = ThreadPoolExecutor(HANDLER_THREADS, thread_name_prefix="kbd-api")

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        status, close = 200, False
        try:
            reply = await self._reply(scope, receive)
        except ClientGone:
            return
        except ApiError as e:
            status, reply = e.status, envelope(e)
            close = e.status in (411, 413)  # a body we will not read: end the connection
        except KbdError as e:
            status, reply = 400 if e.code in ("input", "config") else 503, envelope(e)
        except Exception as e:
            log.exception("%s %s failed", scope["method"], scope["raw_path"])
            status, reply = 500, envelope(KbdError(f"internal error: {e}", code="internal"))
        log.debug("request: %s %s %d", scope["method"], scope["raw_path"], status)
        if isinstance(reply, Iterator):
            await self._stream(reply, receive, send)
        else:
            await send_json(send, status, reply, close)

    async def _reply(self, scope: dict, receive: Callable) -> object:
        path = scope["raw_path"].decode("latin-1")
        handler, groups = self.router.find(scope["method"], path.rstrip("/") or "/")
        query = {k: v[-1] for k, v in parse_qs(scope["query_string"].decode("latin-1"),
                                                  errors="surrogateescape").items()}
        if any("\0" in v for v in query.values()):  # no path or text holds one
            raise ApiError(400, "a query parameter holds a NUL character")
        body = parse_body(await read_body(scope, receive))
        loop = asyncio.get_running_loop()
        reply = await loop.run_in_executor(self.pool, handler, groups, query, body)
        return await reply if inspect.isawaitable(reply) else reply

    async def _stream(self, events: Iterator, receive: Callable, send: Callable) -> None:
        """Newline-delimited JSON events in a chunked reply, each sent as it comes."""
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"application/x-ndjson")]})
        loop, end = asyncio.get_running_loop(), object()
        gone = asyncio.ensure_future(receive())  # http.disconnect once the client leaves
        try:
            while not gone.done():
                event = await loop.run_in_executor(self.pool, next, events, end)
                if event is end:
                    break
                await send({"type": "http.response.body", "more_body": True,
                            "body": json_bytes(event)
                            + b"\n"})
            else:
                log.info("client went away while its answer streamed")
            await send({"type": "http.response.body", "body": b""})
        finally:
            gone.cancel()

    def close(self) -> None:
        self.pool.shutdown(wait=False, cancel_futures=True)


async def read_body(scope: dict, receive: Callable) -> bytes:
    headers = dict(scope["headers"])  # lower-cased; the parser refused a second Content-Length
    if b"transfer-encoding" in headers:
        raise ApiError(411, "send a Content-Length, not a chunked body")
    size = int(headers.get(b"content-length") or 0)  # the parser checked it is a number
    if size > MAX_BODY_BYTES:
        raise ApiError(413, f"body of {size} bytes is over the limit of {MAX_BODY_BYTES}")
    chunks = []
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientGone
        chunks.append(message["body"])
        if not message.get("more_body"):
            return b"".join(chunks)


def parse_body(raw: bytes) -> dict:
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


async def send_json(send: Callable, status: int, reply: object, close: bool = False) -> None:
    data = json_bytes(reply)
    headers = [(b"content-type", b"application/json"),
               (b"content-length", str(len(data)).encode())]
    await send({"type": "http.response.start", "status": status,
                "headers": headers + [(b"connection", b"close")] * close})
    await send({"type": "http.response.body", "body": data})


def forbidden(uid: int) -> Callable[..., Awaitable[None]]:
    """The application a connection from another user gets: 403 to every request."""

    async def refuse(scope: dict, receive: Callable, send: Callable) -> None:
        await send_json(send, 403, envelope(ApiError(403, f"user {uid} may not use this kbd "
                                                          f"daemon")), close=True)

    return refuse


# -- the connection ----------------------------------------------------------------------------

class Refused(Exception):
    """A request the connection refuses before the application sees it."""

    def __init__(self, status: int, message: str):
        super().__init__(status, message)
        self.status, self.message = status, message


class KbdProtocol(HttpToolsProtocol):
    """uvicorn's httptools connection, plus what kbd asks of each one: the peer's credentials,
    one deadline for a whole request (a header line every few seconds must not hold it open),
    limits on the request line and headers, and refusals in the JSON envelope."""

    _deadline: TimerHandle | None = None
    _head_bytes = 0
    _in_head = False

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        uid = peer_uid(transport.get_extra_info("socket"))
        if uid not in (os.getuid(), 0):
            self.app = forbidden(uid)
        self._arm()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        self._unset_keepalive_if_required()
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserCallbackError as e:
            refused = e.__context__  # what the callback raised
            if isinstance(refused, Refused):
                self.refuse(refused.status, refused.message)
            else:  # uvicorn's callbacks refuse what they cannot read (a path not ASCII)
                self.refuse(400, f"malformed request: {refused}")
        except httptools.HttpParserInvalidMethodError:
            line = REQUEST_LINE.match(data)  # at the start of data unless pipelined
            if line:
                self.refuse(501, f"method {line[1].decode()} is not supported")
            else:
                self.refuse(400, "malformed request line")
        except httptools.HttpParserError as e:
            self.refuse(400, f"malformed request: {e}")
        except httptools.HttpParserUpgrade:
            pass  # no protocol switches here: the request is answered as plain HTTP
        else:
            self._head_bytes += len(data) if self._in_head else 0
            if self._head_bytes > MAX_HEAD_BYTES:
                self.refuse(431, f"request line and headers over {MAX_HEAD_BYTES} bytes")

    def refuse(self, status: int, message: str) -> None:
        log.info("refused a request: %d %s", status, message)
        data = json.dumps(envelope(ApiError(status, message))).encode()
        self.transport.write(b"HTTP/1.1 %d %s\r\ncontent-type: application/json\r\n"
                             b"content-length: %d\r\nconnection: close\r\n\r\n%s"
                             % (status, HTTPStatus(status).phrase.encode(), len(data), data))
        self.transport.close()

    # parser callbacks, each after uvicorn's own

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._head_bytes, self._in_head = 0, True

    def on_url(self, url: bytes) -> None:
        super().on_url(url)
        if len(self.url) > MAX_TARGET_BYTES:
            raise Refused(414, f"request target over {MAX_TARGET_BYTES} bytes")

    def on_header(self, name: bytes, value: bytes) -> None:
        super().on_header(name, value)
        if len(self.headers) > MAX_HEADERS:
            raise Refused(431, f"more than {MAX_HEADERS} headers")

    def on_headers_complete(self) -> None:
        self._in_head = False
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        super().on_message_complete()
        self._disarm()  # the request is whole: its handler may take as long as it needs

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if not self.transport.is_closing():
            self._disarm()
            self._arm()  # the next request gets the whole deadline

    # the whole-request deadline

    def _arm(self) -> None:
        self._deadline = self.loop.call_later(REQUEST_DEADLINE_S, self._deadline_passed)

    def _disarm(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _replying(self) -> bool:
        """A request was read whole and its reply is under way, or queued behind another."""
        return bool(self.pipeline) or (self.cycle is not None and not self.cycle.more_body
                                       and not self.cycle.response_complete)

    def _deadline_passed(self) -> None:
        # a pipelined request waits for the reply before it: its time starts after that reply
        self._deadline = None
        if not self.transport.is_closing() and not self._replying():
            log.info("closed a connection that sent no whole request in %.0f s",
                     REQUEST_DEADLINE_S)
            self.transport.close()


def peer_uid(sock: socket.socket) -> int:
    creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    _pid, uid, _gid = struct.unpack("3i", creds)
    return uid


# -- the server --------------------------------------------------------------------------------

class ApiServer:
    """uvicorn on a bound Unix socket, with its event loop in a thread of its own."""

    def __init__(self, sock: socket.socket, socket_path: Path, app: App):
        self.socket_path, self.app = socket_path, app
        self.server = uvicorn.Server(uvicorn.Config(
            app, http=KbdProtocol, loop="asyncio", ws="none", lifespan="off", log_config=None,
            log_level="warning", access_log=False, proxy_headers=False, server_header=False,
            date_header=False, timeout_keep_alive=int(REQUEST_DEADLINE_S),
            timeout_graceful_shutdown=int(SHUTDOWN_GRACE_S)))
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [sock]},
                                       name="kbd-api", daemon=True)

    def start(self) -> None:
        self.thread.start()

    def stop(self) -> None:
        """Stop taking connections, give replies under way a moment, remove the socket."""
        self.server.should_exit = True
        self.thread.join(timeout=SHUTDOWN_GRACE_S + 5)
        self.app.close()
        self.socket_path.unlink(missing_ok=True)


def serve(socket_path: Path, router: Router) -> ApiServer:
    """Bind the socket (0600 in a 0700 folder) and return the server; call start()."""
    socket_path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    os.chmod(socket_path.parent, 0o700)
    remove_stale_socket(socket_path)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old_umask = os.umask(0o177)
    try:
        sock.bind(str(socket_path))
    finally:
        os.umask(old_umask)
    sock.listen(128)  # clients that come before the event loop runs wait, not fail
    return ApiServer(sock, socket_path, App(router))


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
