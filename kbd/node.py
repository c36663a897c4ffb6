"""This daemon as a node of a fleet sharing one PostgreSQL store (docs/fleet.md): its row in
`nodes`, written at start, and a heartbeat thread that moves it every HEARTBEAT_S seconds
(with the backlog as this node sees it) and hands the firings of dead nodes to the
scheduler. A node with no heartbeat for SILENT_PERIODS periods is silent in `kbd status`."""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from datetime import datetime

from kbd import __version__
from kbd.background import Background
from kbd.errors import KbdError
from kbd.store import Store, fleet

log = logging.getLogger("kbd.node")

HEARTBEAT_S = 3.0
BACKLOG_EVERY_S = 30.0  # the backlog is counted this often (a count over every passage)


class Heartbeat(Background):
    def __init__(self, store: Store, name: str, role: str,
                 backlog: Callable[[], int | None] = lambda: None,
                 on_beat: Callable[[], object] = lambda: None, every_s: float = HEARTBEAT_S):
        self.store = store
        self.name, self.role = name, role
        self.backlog = backlog  # what this node sees waiting for compression (None: no model)
        self.on_beat = on_beat  # the scheduler's take-over of dead claims, on a model node
        self.every_s = every_s
        self.started_at: datetime | None = None
        self._backlog: tuple[float, int | None] = (float("-inf"), None)  # (counted at, value)
        super().__init__("kbd-heartbeat")

    def register(self) -> datetime:
        """This node's row, new life: claims of its earlier life are dead from now on."""
        self.started_at = self.store.write(lambda conn: fleet.upsert_node(
            conn, self.name, role=self.role, version=__version__,
            schema_revision=Store.schema_head(), pid=os.getpid(), heartbeat_s=self.every_s))
        return self.started_at

    def stop(self) -> None:
        super().stop()
        try:
            self.store.write(lambda conn: fleet.stopped(conn, self.name))
        except KbdError as e:  # it will look silent instead
            log.warning("node %s could not record its stop: %s", self.name, e)

    def _run(self) -> None:
        while not self._stop.wait(self.every_s):
            self.beat()

    def beat(self) -> None:
        """One heartbeat; a store that fails now shows in `kbd status`, and the next beat
        tries again."""
        try:
            counted_at, backlog = self._backlog
            if time.monotonic() - counted_at >= BACKLOG_EVERY_S:
                backlog = self.backlog()
                self._backlog = (time.monotonic(), backlog)
            self.store.write(lambda conn: fleet.heartbeat(conn, self.name, backlog))
            self.on_beat()
        except KbdError as e:
            log.warning("heartbeat of node %s failed: %s", self.name, e)


def fleet_status(store: Store) -> list[dict]:
    """The nodes of the store, as `kbd status` shows them (times as ISO text)."""
    with store.read() as conn:
        nodes = fleet.list_nodes(conn)
    for node in nodes:
        for key in ("started_at", "heartbeat_at", "stopped_at"):
            node[key] = node[key].isoformat() if node[key] else None
    return nodes


class NoScheduler:
    """An ingest node's scheduler: none. Questions are stored here as anywhere; the model
    nodes pick changes up within a heartbeat."""

    def sync(self, question_id: int, catch_up: bool = False) -> None:
        pass

    def remove(self, question_id: int) -> None:
        pass

    def run(self, question_id: int) -> None:
        raise KbdError("this node runs no standing questions (node role ingest)",
                       hint="run it on a node with role model or all", code="no-model")

    def start(self) -> None:
        pass

    def stop(self) -> None:
        pass
