"""Asks routed through a fleet's store (docs/fleet.md, "Routed asks"), as small functions over
a Connection inside the caller's transaction, and the LISTEN connection that wakes a node.

A node without a model inserts its question into `asks` and NOTIFYs ASKS_CHANNEL; a model
node claims the oldest unclaimed ask with FOR UPDATE SKIP LOCKED (one node gets each), and
writes the answer as numbered `ask_chunks` rows (text pieces, then the whole answer or an
error), each with a NOTIFY on the asker's reply channel. NOTIFY is sent at commit, so a
notification never comes before the row it announces. Notifications can be lost (a
connection that drops): both sides also poll, every POLL_S.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from dataclasses import dataclass
from datetime import datetime, timedelta

import psycopg
from sqlalchemy import Connection, delete, func, insert, select, update
from sqlalchemy.exc import OperationalError

from kbd.store import Store, fleet
from kbd.store.queries import as_utc
from kbd.store.schema import ask_chunks, asks

log = logging.getLogger("kbd.asks")

ASKS_CHANNEL = "kbd_asks"  # a new ask waits for a model node; payload: its id
POLL_S = 1.0  # a lost notification delays an ask by at most this long


def reply_channel(node: str) -> str:
    """The channel a node's asks are answered on. A node name may be longer than a channel
    name can be, or need quoting, so the channel is named by the name's hash."""
    return "kbd_reply_" + hashlib.sha256(node.encode()).hexdigest()[:16]


def _notify(conn: Connection, channel: str, payload: str) -> None:
    conn.execute(select(func.pg_notify(channel, payload)))


def answers_asks(node: dict) -> bool:
    """A node (as fleet.list_nodes gives it) that can answer an ask now: a model node that
    heartbeats."""
    return node["role"] == "model" and not node["silent"] and node["stopped_at"] is None


def live_model_nodes(conn: Connection) -> list[str]:
    return [n["name"] for n in fleet.list_nodes(conn) if answers_asks(n)]


# -- the asker -------------------------------------------------------------------------------

def insert_ask(conn: Connection, asker: str, question: str, options: dict) -> int:
    """A new ask, announced to the model nodes at commit; its id."""
    ask_id = conn.execute(insert(asks).values(
        asker=asker, question=question, options=json.dumps(options),
        created_at=func.now()).returning(asks.c.id)).scalar_one()  # the database's clock
    _notify(conn, ASKS_CHANNEL, str(ask_id))
    return ask_id


def chunks_after(conn: Connection, ask_id: int, seq: int) -> list[tuple[int, str, str]]:
    """The ask's chunks from number `seq` on, in order: (seq, kind, body)."""
    return [tuple(r) for r in conn.execute(
        select(ask_chunks.c.seq, ask_chunks.c.kind, ask_chunks.c.body)
        .where(ask_chunks.c.ask_id == ask_id, ask_chunks.c.seq >= seq)
        .order_by(ask_chunks.c.seq))]


def stalled(conn: Connection, ask_ids: list[int]) -> dict[int, str]:
    """Why each of these asks can no longer be answered: its model node died, stopped or
    restarted since it claimed the ask, or nobody claimed it and no model node is alive.
    Asks that can still be answered are left out."""
    nodes = {n["name"]: n for n in fleet.list_nodes(conn)}
    rows = {r.id: r for r in conn.execute(
        select(asks.c.id, asks.c.claimed_by, asks.c.claimer_started_at)
        .where(asks.c.id.in_(ask_ids)))}
    found = {}
    for ask_id in ask_ids:
        row = rows.get(ask_id)
        if row is None:
            found[ask_id] = "the ask is gone from the store"
        elif row.claimed_by is None:
            if not any(answers_asks(n) for n in nodes.values()):
                found[ask_id] = "no model node is alive in the fleet"
        elif why := fleet.gone(nodes.get(row.claimed_by), as_utc(row.claimer_started_at)):
            found[ask_id] = f"model node {row.claimed_by} {why} while answering"
    return found


def delete_ask(conn: Connection, ask_id: int) -> None:
    """The asker is done with it (answered, failed or given up): it goes with its chunks."""
    conn.execute(delete(asks).where(asks.c.id == ask_id))


# -- the model node ----------------------------------------------------------------------------

@dataclass(frozen=True)
class Claimed:
    id: int
    asker: str
    question: str
    options: dict


def claim_ask(conn: Connection, node: str, node_started_at: datetime) -> Claimed | None:
    """The oldest ask nobody claimed, now this node's; None when there is none. SKIP LOCKED:
    nodes claiming at once each get another ask, never the same one."""
    row = conn.execute(select(asks.c.id, asks.c.asker, asks.c.question, asks.c.options)
                       .where(asks.c.claimed_by.is_(None)).order_by(asks.c.id).limit(1)
                       .with_for_update(skip_locked=True)).first()
    if row is None:
        return None
    conn.execute(update(asks).where(asks.c.id == row.id).values(
        claimed_by=node, claimer_started_at=node_started_at, claimed_at=func.now()))
    return Claimed(row.id, row.asker, row.question, json.loads(row.options))


def add_chunk(conn: Connection, ask: Claimed, seq: int, kind: str, body: str) -> bool:
    """Chunk `seq` of the answer, announced to the asker at commit; False (nothing written)
    when the ask is gone: its asker gave up. The ask's row is key-share locked first, so the
    asker cannot delete it between the check and the insert."""
    held = conn.execute(select(asks.c.id).where(asks.c.id == ask.id)
                        .with_for_update(key_share=True)).first()
    if held is None:
        return False
    conn.execute(insert(ask_chunks).values(ask_id=ask.id, seq=seq, kind=kind, body=body))
    _notify(conn, reply_channel(ask.asker), str(ask.id))
    return True


def sweep(conn: Connection, older_than_s: float) -> int:
    """Delete asks older than this, which no asker waits for any more (an asker that died
    before deleting its own); how many."""
    before = fleet.db_now(conn) - timedelta(seconds=older_than_s)
    return conn.execute(delete(asks).where(asks.c.created_at < before)).rowcount


# -- waking up -----------------------------------------------------------------------------------

class Listener:
    """A connection of its own, LISTENing on one channel. wait() returns the payloads that came
    within the timeout (often none: callers poll the tables anyway). A connection that fails
    is logged and opened again at the next wait; notifications sent meanwhile are lost, which
    the callers' polls make up for."""

    def __init__(self, store: Store, channel: str):
        self.store, self.channel = store, channel
        self._conn: Connection | None = None

    def wait(self, timeout_s: float) -> list[str]:
        try:
            if self._conn is None:
                conn = self.store.engine.connect().execution_options(
                    isolation_level="AUTOCOMMIT")  # LISTEN takes effect at once
                conn.exec_driver_sql(f"LISTEN {self.channel}")
                self._conn = conn
            driver = self._conn.connection.driver_connection
            return [n.payload for n in driver.notifies(timeout=timeout_s, stop_after=1)]
        except (OperationalError, psycopg.Error) as e:
            log.warning("listening on %s failed, polling until it works again: %s",
                        self.channel, e)
            self.close()
            time.sleep(timeout_s)
            return []

    def close(self) -> None:
        if self._conn is not None:
            self._conn.invalidate()  # never back to the pool with a LISTEN on it
            self._conn.close()
            self._conn = None
