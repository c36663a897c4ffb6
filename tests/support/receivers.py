"""Real receivers on the loopback for the notification tests: an SMTP server (aiosmtpd) that
keeps every message, an HTTP server standing in for a webhook that fails on demand (5xx,
a reply slower than the client waits, connection refused), and a command that appends its
stdin to a file."""

from __future__ import annotations

import contextlib
import email
import email.policy
import json
import socket
import ssl
import subprocess
import sys
import threading
import time
from email.message import EmailMessage
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class MailBox:
    """aiosmtpd handler: every message accepted, parsed, in arrival order."""

    def __init__(self) -> None:
        self.messages: list[EmailMessage] = []

    async def handle_DATA(self, server, session, envelope) -> str:
        self.messages.append(email.message_from_bytes(envelope.content,
                                                      policy=email.policy.default))
        return "250 Message accepted for delivery"


class SmtpServer:
    """With `tls` (a certificate and its key), STARTTLS is required and so is a login, over
    TLS only, as `user` / `password`; logins tried are kept in `logins`."""

    def __init__(self, tls: tuple[Path, Path] | None = None, user: str = "kbd",
                 password: str = "") -> None:
        self.box = MailBox()
        self.port = free_port()
        self.logins: list[tuple[str, bool]] = []  # (login, accepted)
        options = {}
        if tls is not None:
            context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            context.load_cert_chain(*tls)

            def authenticator(server, session, envelope, mechanism, auth_data):
                login = auth_data.login.decode()
                ok = (login, auth_data.password.decode()) == (user, password)
                self.logins.append((login, ok))
                return AuthResult(success=ok)

            options = {"tls_context": context, "require_starttls": True,
                       "authenticator": authenticator, "auth_require_tls": True,
                       "auth_required": True}
        self.controller = Controller(self.box, hostname="127.0.0.1", port=self.port,
                                     **options)

    def __enter__(self) -> SmtpServer:
        self.controller.start()
        return self

    def __exit__(self, *exc) -> None:
        self.controller.stop()

    @property
    def messages(self) -> list[EmailMessage]:
        return self.box.messages


class Webhook:
    """An HTTP server on 127.0.0.1 recording each request it accepted (path, headers, JSON
    body). mode: "ok" (200), "error" (503), "slow" (replies after slow_s, past the client's
    timeout), "hold" (records the request, then waits hold_s before its 200: a client killed
    meanwhile never learns it was accepted). down() closes the port (connection refused);
    up() opens it again on the same port."""

    def __init__(self, port: int | None = None) -> None:
        self.port = port or free_port()
        self.mode = "ok"
        self.slow_s = 3.0
        self.hold_s = 1.0
        self.received: list[dict] = []  # accepted requests
        self.attempts = 0  # every request, failed ones too
        self.in_hold = threading.Event()
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hook"

    def up(self) -> Webhook:
        hook = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                with hook._lock:
                    hook.attempts += 1
                mode = hook.mode
                if mode == "error":
                    self._reply(503)
                    return
                if mode == "slow":
                    time.sleep(hook.slow_s)
                with hook._lock:
                    hook.received.append({"path": self.path, "headers": dict(self.headers),
                                          "body": json.loads(body)})
                if mode == "hold":
                    hook.in_hold.set()
                    time.sleep(hook.hold_s)
                self._reply(200)

            do_PUT = do_POST

            def _reply(self, status: int) -> None:
                # a client killed (kill -9) or gone past its timeout no longer listens
                with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                    self.send_response(status)
                    self.send_header("Content-Length", "2")
                    self.end_headers()
                    self.wfile.write(b"{}")

            def log_message(self, *args) -> None:
                pass

        ThreadingHTTPServer.allow_reuse_address = True
        self._server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def down(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def keys(self) -> list[str]:
        with self._lock:
            return [r["body"]["idempotency_key"] for r in self.received]


def stdin_to_file_argv(path: Path, sleep_s: float = 0.0, exit_code: int = 0) -> list[str]:
    """A command channel's argv: append stdin (the event JSON) as one line to `path`."""
    code = ("import sys, time, json; data = sys.stdin.read(); json.loads(data); "
            f"f = open({str(path)!r}, 'a'); f.write(data.replace(chr(10), ' ') + chr(10)); "
            f"f.close(); time.sleep({sleep_s}); sys.exit({exit_code})")
    return [sys.executable, "-c", code]


def read_lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() \
        else []


def self_signed(folder: Path) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1 and localhost, and its key (openssl), for TLS tests."""
    cert, key = folder / "cert.pem", folder / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                    "-subj", "/CN=localhost", "-addext",
                    "subjectAltName=IP:127.0.0.1,DNS:localhost", "-keyout", str(key),
                    "-out", str(cert)], check=True, capture_output=True)
    return cert, key
