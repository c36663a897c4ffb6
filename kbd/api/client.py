"""Talk to the daemon over its Unix socket; the CLI reaches the daemon only through here."""

from __future__ import annotations

import http.client
import json
import socket
from collections.abc import Iterator
from pathlib import Path

from kbd.errors import DaemonError, DaemonNotRunning, KbdError


class _UnixConnection(http.client.HTTPConnection):
    def __init__(self, path: Path, timeout: float):
        super().__init__("kbd", timeout=timeout)
        self.socket_path = path

    def connect(self) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(self.timeout)
        self.sock.connect(str(self.socket_path))


class Client:
    def __init__(self, socket_path: Path, timeout_s: float = 600.0):
        self.socket_path = socket_path
        self.timeout_s = timeout_s

    def stream(self, path: str, body: dict) -> Iterator[dict]:
        """POST and yield the newline-delimited JSON events of a streamed reply."""
        connection = _UnixConnection(self.socket_path, self.timeout_s)
        try:
            try:
                connection.request("POST", path, body=json.dumps(body).encode(),
                                   headers={"Content-Type": "application/json"})
                response = connection.getresponse()
            except (FileNotFoundError, ConnectionRefusedError) as e:
                raise self._not_running() from e
            if response.status >= 400:
                self._raise(response.status, response.reason, response.read())
            for line in response:
                yield json.loads(line)
        finally:
            connection.close()

    def _not_running(self) -> DaemonNotRunning:
        return DaemonNotRunning(f"the kbd daemon is not running (no answer on "
                                f"{self.socket_path})",
                                hint="start it with `kbd daemon` or `systemctl --user start kbd`")

    def _raise(self, status: int, reason: str, raw: bytes):
        error = (json.loads(raw) if raw else {}).get("error", {})
        raise DaemonError(status, error.get("message", reason), error.get("hint"),
                          error.get("code"))

    def request(self, method: str, path: str, body: dict | None = None):
        connection = _UnixConnection(self.socket_path, self.timeout_s)
        data = json.dumps(body).encode() if body is not None else None
        headers = {"Content-Type": "application/json"} if data is not None else {}
        try:
            connection.request(method, path, body=data, headers=headers)
            response = connection.getresponse()
            raw = response.read()
        except (FileNotFoundError, ConnectionRefusedError) as e:
            raise self._not_running() from e
        except TimeoutError as e:
            raise KbdError(f"the daemon did not answer within {self.timeout_s:.0f} s") from e
        finally:
            connection.close()
        if response.status >= 400:
            self._raise(response.status, response.reason, raw)
        return json.loads(raw) if raw else None
