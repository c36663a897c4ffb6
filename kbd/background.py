"""The one thread each of kbd's background parts runs (a heartbeat, a follower, a consumer):
started once, stopped by an event its loop checks, joined with a bound so that a stuck
part cannot hold the daemon's shutdown for ever."""

from __future__ import annotations

import threading


class Background:
    """Subclasses implement _run(), looping until self._stop is set, and may extend stop()."""

    join_s: float | None = 10.0  # how long stop() waits for the loop; None: until it ends

    def __init__(self, thread_name: str) -> None:
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=thread_name, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=self.join_s)

    def _run(self) -> None:
        raise NotImplementedError
