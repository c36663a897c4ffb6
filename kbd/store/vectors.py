"""A fleet's memory vectors, shared in the store, and the compression backlog shared by its
model nodes under leases (docs/fleet.md).

The backlog is queued as `leases` rows, a text each, held by no node at first. A model node
claims a batch of them: the rows are read `FOR UPDATE SKIP LOCKED` (two nodes claiming at
once take different ones) and given the node, a token naming the claim and an expiry
`lease_s` ahead on the database's clock. A lease past its expiry can be claimed by another
node (`taken_over` counts that). Locking rows of its own table only, a model node needs no
write grant on the ingest nodes' passages.
The vectors are written in one transaction with the release of the lease, and only for the
texts whose lease is still the claim's: a node that wakes after its lease was taken writes
nothing stale. A live node renews its claims at each heartbeat (`renew_leases`), so only a
node that stopped beating loses them. Writers take turns under an advisory lock, so each
memory id's rows are numbered 0, 1, 2 ... with no gap and commit in that order; the commit
NOTIFYs `kbd_memory`.

Each model node keeps a copy of the rows in a local matrix file (a SharedMatrix, which the
memory index reads as it reads a single host's matrix file), appended in row order from the
store: on a notification, and at least every POLL_S seconds in case one was lost
(MemoryFollower).
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from sqlalchemy import Connection, and_, case, delete, func, select, text, tuple_, update
from sqlalchemy.dialects.postgresql import insert as postgresql_insert

from kbd.background import Background
from kbd.store import Store, lock_key
from kbd.store.matrix import MemoryMatrix
from kbd.store.queries import missing_memory, utcnow
from kbd.store.schema import leases, memories, passages

log = logging.getLogger("kbd.memory")

CHANNEL = "kbd_memory"  # NOTIFY channel: new vectors were committed (payload: memory id)
POLL_S = 2.0  # the store is read for new rows at least this often, notified or not
FETCH_ROWS = 256  # rows read from the store at a time while catching up
QUEUE_BATCHES = 8  # the backlog is queued for claims this many batches at a time


@dataclass(frozen=True)
class Lease:
    """A batch of the backlog a node claimed: (text hash, text) pairs, held until the claim's
    expiry and afterwards until another node takes them."""

    fingerprint: str
    node: str
    token: str
    lease_s: float
    items: list[tuple[str, str]]


def queue_backlog(conn: Connection, fingerprint: str, limit: int) -> int:
    """Queue up to `limit` texts of the backlog, oldest first, that are neither compressed nor
    queued: lease rows that no node holds yet (node "", expired from the start). Returns
    how many were queued; a text another node queued at the same moment is skipped."""
    queued = select(leases.c.text_hash).where(
        leases.c.fingerprint == fingerprint, leases.c.text_hash == passages.c.text_hash).exists()
    rows = conn.execute(
        select(passages.c.text_hash, func.min(passages.c.id))
        .where(passages.c.live, missing_memory(fingerprint), ~queued)
        .group_by(passages.c.text_hash).order_by(func.min(passages.c.id)).limit(limit)).all()
    if not rows:
        return 0
    never = datetime(1970, 1, 1, tzinfo=UTC)
    # RETURNING counts the rows that went in (rowcount is -1 for a multi-row INSERT)
    return len(conn.execute(postgresql_insert(leases).values(
        [{"fingerprint": fingerprint, "text_hash": h, "passage_id": first, "node": "",
          "token": "", "claimed_at": never, "expires_at": never}
         for h, first in sorted(rows)])  # one order for every node: two never deadlock
        .on_conflict_do_nothing().returning(leases.c.text_hash)).all())


def claim_batch(conn: Connection, fingerprint: str, node: str, lease_s: float,
                limit: int) -> Lease | None:
    """Claim up to `limit` queued texts that no node holds a live lease on, oldest first:
    never claimed, or their lease expired (taken over). The lease rows are read
    `FOR UPDATE SKIP LOCKED`, so a claim beside this one, not yet committed, is skipped
    rather than waited for, and the two claim different texts. None: nothing to claim."""
    _hold_no_longer_than(conn, lease_s)
    free = list(conn.execute(
        select(leases.c.text_hash)
        .where(leases.c.fingerprint == fingerprint, leases.c.expires_at <= func.now())
        .order_by(leases.c.passage_id).limit(limit)
        .with_for_update(skip_locked=True)).scalars())
    if not free:
        return None
    token = uuid.uuid4().hex
    mine = and_(leases.c.fingerprint == fingerprint, leases.c.text_hash.in_(free))
    conn.execute(update(leases).where(mine).values(
        node=node, token=token, claimed_at=func.now(),
        expires_at=func.now() + timedelta(seconds=lease_s),
        taken_over=leases.c.taken_over + case((leases.c.node == "", 0), else_=1)))
    texts = dict(conn.execute(select(passages.c.text_hash, passages.c.text).where(
        passages.c.text_hash.in_(free), passages.c.live, missing_memory(fingerprint))).all())
    # a text compressed meanwhile, or no longer in any live passage, leaves the queue
    conn.execute(delete(leases).where(mine, leases.c.text_hash.not_in(list(texts))))
    items = [(h, texts[h]) for h in free if h in texts]
    return Lease(fingerprint, node, token, lease_s, items)


def claim_next(store: Store, fingerprint: str, lease_s: float, limit: int) -> Lease | None:
    """Claim the next batch for this node (store.node), queueing more of the backlog first
    when nothing queued is free. The queueing commits on its own: a claim held open never
    keeps another node's queueing waiting."""
    def claim(conn: Connection) -> Lease | None:
        return claim_batch(conn, fingerprint, store.node, lease_s, limit)

    lease = store.write(claim)
    if lease is None and store.write(lambda conn: queue_backlog(conn, fingerprint,
                                                                QUEUE_BATCHES * limit)):
        lease = store.write(claim)
    return lease


def store_vectors(conn: Connection, lease: Lease,
                  vectors: dict[str, bytes]) -> tuple[list[str], list[str]]:
    """Write the vectors of the texts whose lease is still this claim's, and release them.
    Returns (hashes written, hashes lost): a lost lease was taken over by another node, and
    nothing of its text is written here."""
    _hold_no_longer_than(conn, lease.lease_s)
    conn.execute(text("SELECT pg_advisory_xact_lock(:key)"),
                 {"key": lock_key(f"kbd memory {lease.fingerprint}")})
    held = set(conn.execute(delete(leases).where(
        leases.c.fingerprint == lease.fingerprint, leases.c.text_hash.in_(list(vectors)),
        leases.c.token == lease.token).returning(leases.c.text_hash)).scalars())
    done = set(conn.execute(select(memories.c.text_hash).where(
        memories.c.fingerprint == lease.fingerprint,
        memories.c.text_hash.in_(list(held)))).scalars())
    hashes = [h for h in vectors if h in held and h not in done]
    if hashes:
        first = shared_rows(conn, lease.fingerprint)
        at = utcnow()
        conn.execute(memories.insert(), [
            {"text_hash": h, "fingerprint": lease.fingerprint, "row": first + i,
             "vector": vectors[h], "created_at": at} for i, h in enumerate(hashes)])
        conn.execute(select(func.pg_notify(CHANNEL, lease.fingerprint)))  # sent at commit
    return hashes, [h for h in vectors if h not in held]


def renew_leases(conn: Connection, tokens: list[str], lease_s: float) -> int:
    """Move the expiry of the claims named by their tokens lease_s ahead (a live node's, at
    each heartbeat); returns how many texts they still hold. A claim taken over has another
    token and is left alone. Rows locked by a claim or a write beside this one are skipped,
    not waited for: a write is releasing them, and a claim taking them over wins."""
    mine = (select(leases.c.fingerprint, leases.c.text_hash)
            .where(leases.c.token.in_(tokens)).with_for_update(skip_locked=True))
    return len(conn.execute(
        update(leases).where(tuple_(leases.c.fingerprint, leases.c.text_hash).in_(mine))
        .values(expires_at=func.now() + timedelta(seconds=lease_s))
        .returning(leases.c.text_hash)).all())


def _hold_no_longer_than(conn: Connection, lease_s: float) -> None:
    """A node stopped (SIGSTOP, a VM paused) inside this transaction would hold its locks
    and keep the other nodes' claims and writes waiting: the server ends its session once
    it has idled a lease long in the transaction, and its work is rolled back."""
    conn.execute(select(func.set_config("idle_in_transaction_session_timeout",
                                        f"{int(lease_s * 1000)}", True)))


def shared_rows(conn: Connection, fingerprint: str) -> int:
    """How many rows the store holds for this memory id (they are numbered from 0)."""
    top = conn.execute(select(func.max(memories.c.row)).where(
        memories.c.fingerprint == fingerprint, memories.c.vector.is_not(None))).scalar()
    return 0 if top is None else top + 1


def read_rows(conn: Connection, fingerprint: str, start: int, limit: int) -> list[bytes]:
    """The vectors of rows start, start + 1 ... (up to limit), in row order."""
    return list(conn.execute(
        select(memories.c.vector).where(memories.c.fingerprint == fingerprint,
                                        memories.c.vector.is_not(None),
                                        memories.c.row >= start)
        .order_by(memories.c.row).limit(limit)).scalars())


def lease_rows(conn: Connection, fingerprint: str | None = None) -> list[dict]:
    query = select(leases).order_by(leases.c.claimed_at)
    if fingerprint is not None:
        query = query.where(leases.c.fingerprint == fingerprint)
    return [r._asdict() for r in conn.execute(query)]


class SharedMatrix(MemoryMatrix):
    """This node's copy of a memory id's shared rows: a matrix file (read by the memory index
    as a single host's is) whose row n is the store's row n, filled in row order. A copy
    that does not end as the store's rows do (another store, or one restored from a backup)
    is dropped and read again."""

    def __init__(self, store: Store, fingerprint: str, shape: tuple[int, int], dtype: str):
        super().__init__(store.memory_dir, f"{fingerprint}.shared", shape, dtype)
        self.store = store
        self.fingerprint = fingerprint
        self._lock = threading.Lock()
        n = self.rows()
        if n:
            with store.read() as conn:
                last = read_rows(conn, fingerprint, n - 1, 1)
            if last != self.read([n - 1]):
                log.warning("%s does not match the store's rows: reading them again",
                            self.path)
                self.path.unlink()

    def sync(self) -> int:
        """Append the rows the store has and this copy lacks; returns how many."""
        added = 0
        with self._lock:
            while True:
                with self.store.read() as conn:
                    blobs = read_rows(conn, self.fingerprint, self.rows(), FETCH_ROWS)
                if not blobs:
                    return added
                self.append(blobs)
                added += len(blobs)


class MemoryFollower(Background):
    """Keeps a SharedMatrix in step with the store: LISTEN on its own connection, and a sync
    on each notification or every POLL_S seconds (a notification sent while the connection
    was down is lost; the poll catches up). on_new(n) follows each sync that added rows."""

    def __init__(self, matrix: SharedMatrix, on_new: Callable[[int], None],
                 poll_s: float = POLL_S):
        self.matrix = matrix
        self.on_new = on_new
        self.poll_s = poll_s
        super().__init__("kbd-memory-follow")

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self._listen()
            except Exception as e:  # a lost connection, a server restarting: again soon
                log.warning("following the store's memory vectors: %s; again in %.0f s", e,
                            self.poll_s)
                self._stop.wait(self.poll_s)

    def _listen(self) -> None:
        raw = self.matrix.store.engine.raw_connection()
        pg = raw.driver_connection
        raw.detach()  # this connection is the listener's alone, outside the pool
        try:
            pg.rollback()
            pg.autocommit = True
            pg.execute(f"LISTEN {CHANNEL}")
            self._catch_up()  # rows committed before LISTEN took effect
            polled = time.monotonic()
            while not self._stop.is_set():
                # waits of a second at most: stop() is not kept waiting for a poll
                heard = any(n.payload == self.matrix.fingerprint
                            for n in pg.notifies(timeout=min(1.0, self.poll_s)))
                if heard or time.monotonic() - polled >= self.poll_s:
                    polled = time.monotonic()
                    self._catch_up(heard)
        finally:
            pg.close()

    def _catch_up(self, heard: bool = False) -> None:
        added = self.matrix.sync()
        if added:
            log.debug("%d memory rows from the store (%s)", added,
                      "notified" if heard else "polled")
            self.on_new(added)

