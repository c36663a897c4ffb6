"""The nodes of a fleet and the firings they claim, as small functions over a Connection
inside the caller's transaction (docs/fleet.md).

Each daemon upserts its `nodes` row at start and moves its heartbeat every few seconds; a
node whose heartbeat is older than SILENT_PERIODS periods is silent. A scheduled firing
(a standing question's, a digest's) is claimed by inserting its (job, fire time) row: the
primary key lets one node in, the others skip it. The claim is finished in the transaction
that records the answer, and only while the claim is still the finisher's, so a firing is
recorded once. A claim whose node went silent, or restarted since it claimed, is dead: any
node running the scheduler takes it over and runs the firing.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy import Connection, func, select, update
from sqlalchemy.dialects.postgresql import insert as postgresql_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert

from kbd.store.queries import as_utc, to_utc, utcnow
from kbd.store.schema import documents, firings, nodes

SILENT_PERIODS = 3  # heartbeats missed before a node counts as silent


def _insert(conn: Connection):
    return postgresql_insert if conn.dialect.name == "postgresql" else sqlite_insert


def db_now(conn: Connection) -> datetime:
    """The database server's clock on PostgreSQL: heartbeats written and read on different
    hosts are compared on one clock, whatever the hosts' own clocks say."""
    if conn.dialect.name == "postgresql":
        return as_utc(conn.execute(select(func.now())).scalar_one())
    return utcnow()


# -- nodes ---------------------------------------------------------------------------------

def upsert_node(conn: Connection, name: str, *, role: str, version: str, schema_revision: str,
                pid: int, heartbeat_s: float) -> datetime:
    """This node starts (again): its row, with a new started_at, which ends the claims it
    made in an earlier life. Returns started_at."""
    at = db_now(conn)
    values = {"role": role, "version": version, "schema_revision": schema_revision, "pid": pid,
              "started_at": at, "heartbeat_at": at, "heartbeat_s": heartbeat_s,
              "stopped_at": None}
    statement = _insert(conn)(nodes).values(name=name, **values)
    conn.execute(statement.on_conflict_do_update(index_elements=["name"], set_=values))
    return at


def heartbeat(conn: Connection, name: str, backlog: int | None) -> None:
    """The node is alive; the backlog (and its documents) as it sees them now."""
    count = (select(func.count()).where(documents.c.node == name,
                                        documents.c.deleted_at.is_(None)).scalar_subquery())
    conn.execute(update(nodes).where(nodes.c.name == name)
                 .values(heartbeat_at=db_now(conn), backlog=backlog, documents=count))


def stopped(conn: Connection, name: str) -> None:
    """The node stopped as asked: `kbd status` says so instead of calling it silent."""
    conn.execute(update(nodes).where(nodes.c.name == name).values(stopped_at=db_now(conn)))


def list_nodes(conn: Connection, now: datetime | None = None) -> list[dict]:
    """Every node that ever ran on the store, with `silent`: no heartbeat for more than
    SILENT_PERIODS of its periods, and not stopped as asked (`stopped_at`)."""
    now = now or db_now(conn)
    listed = []
    for row in conn.execute(select(nodes).order_by(nodes.c.name)):
        node = row._asdict()
        for name in ("started_at", "heartbeat_at", "stopped_at"):
            node[name] = as_utc(node[name])
        age = (now - node["heartbeat_at"]).total_seconds()
        node["heartbeat_age_s"] = round(age, 1)
        node["silent"] = node["stopped_at"] is None and age > SILENT_PERIODS * node["heartbeat_s"]
        listed.append(node)
    return listed


# -- firings -------------------------------------------------------------------------------

@dataclass(frozen=True)
class Claim:
    """A firing a node holds: finish_firing() checks it is still this one."""

    job: str
    fire_time: datetime
    node: str
    claimed_at: datetime


def claim_firing(conn: Connection, job: str, fire_time: datetime, node: str,
                 node_started_at: datetime, question_id: int | None = None) -> Claim | None:
    """Claim a firing for this node; None when another node claimed it first."""
    at = utcnow()
    fire_time = to_utc(fire_time, "fire_time")
    # RETURNING says whether the row went in (rowcount is -1 for an INSERT that returns)
    inserted = conn.execute(_insert(conn)(firings).values(
        job=job, fire_time=fire_time, question_id=question_id, node=node,
        node_started_at=to_utc(node_started_at, "node_started_at"), claimed_at=at)
        .on_conflict_do_nothing().returning(firings.c.job)).first()
    return Claim(job, fire_time, node, at) if inserted is not None else None


def finish_firing(conn: Connection, claim: Claim, answer_id: int | None = None) -> bool:
    """Mark the firing done, in the transaction that records its answer; False (write
    nothing then) when the claim is no longer this one: it was taken over."""
    return conn.execute(update(firings).where(
        firings.c.job == claim.job, firings.c.fire_time == claim.fire_time,
        firings.c.node == claim.node, firings.c.claimed_at == claim.claimed_at,
        firings.c.done_at.is_(None)).values(done_at=utcnow(), answer_id=answer_id)).rowcount == 1


RELEASED = datetime(1970, 1, 1, tzinfo=UTC)  # a released claim's node life: dead at once


def release_firing(conn: Connection, claim: Claim) -> None:
    """Give a claimed firing up unanswered: it counts as dead, and is taken over."""
    conn.execute(update(firings).where(
        firings.c.job == claim.job, firings.c.fire_time == claim.fire_time,
        firings.c.node == claim.node, firings.c.claimed_at == claim.claimed_at,
        firings.c.done_at.is_(None)).values(node_started_at=RELEASED))


def defer_firing(conn: Connection, job: str, fire_time: datetime, node: str,
                 question_id: int) -> bool:
    """Claim a firing that this node cannot run now and release it at once, for a free node
    to take over; False (nothing claimed) when the job already has a released firing
    waiting, or another node claimed this one: one waits per job, as a single host skips
    the firings that fall due while a run goes on."""
    waiting = conn.execute(select(firings.c.job).where(
        firings.c.job == job, firings.c.done_at.is_(None),
        firings.c.node_started_at == RELEASED).limit(1)).first()
    if waiting is not None:
        return False
    claim = claim_firing(conn, job, fire_time, node, RELEASED, question_id)
    return claim is not None


def gone(node: dict | None, life: datetime) -> str | None:
    """Why a node (as list_nodes gives it) no longer holds what it claimed in the life that
    started at `life`, in words; None while it does."""
    if node is None:
        return "is gone from the store"
    if node["stopped_at"] is not None:
        return "stopped"
    if node["started_at"] > life:
        return "restarted"
    if node["silent"]:
        return f"went silent (no heartbeat for {node['heartbeat_age_s']:.0f} s)"
    return None


def dead_claims(conn: Connection, now: datetime | None = None) -> list[Claim]:
    """Claims of firings not done whose node is silent, gone or restarted since the claim,
    oldest first."""
    nodes = {n["name"]: n for n in list_nodes(conn, now)}
    rows = conn.execute(
        select(firings.c.job, firings.c.fire_time, firings.c.node, firings.c.claimed_at,
               firings.c.node_started_at)
        .where(firings.c.done_at.is_(None)).order_by(firings.c.fire_time))
    return [Claim(r.job, as_utc(r.fire_time), r.node, as_utc(r.claimed_at)) for r in rows
            if gone(nodes.get(r.node), as_utc(r.node_started_at))]


def take_over(conn: Connection, dead: Claim, node: str,
              node_started_at: datetime) -> Claim | None:
    """Claim a dead claim's firing for this node; None if another node took it first."""
    at = utcnow()
    job, fire_time = dead.job, dead.fire_time
    taken = conn.execute(update(firings).where(
        firings.c.job == job, firings.c.fire_time == fire_time, firings.c.node == dead.node,
        firings.c.claimed_at == dead.claimed_at, firings.c.done_at.is_(None))
        .values(node=node, node_started_at=to_utc(node_started_at, "node_started_at"),
                claimed_at=at, taken_over=firings.c.taken_over + 1)).rowcount
    return Claim(job, fire_time, node, at) if taken == 1 else None


def firing_rows(conn: Connection, job: str | None = None) -> list[dict]:
    query = select(firings).order_by(firings.c.job, firings.c.fire_time)
    if job is not None:
        query = query.where(firings.c.job == job)
    return [r._asdict() for r in conn.execute(query)]


