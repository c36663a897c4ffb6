"""What a digest reads from the store, and the record of digests written, as small functions
over a Connection inside the caller's transaction.

A period is [since, until): it holds since but not until, so a digest whose since is the
previous digest's until repeats nothing. Both must be timezone-aware; times come back
timezone-aware in UTC. Lists are cut at `limit` rows, each with its full count, so a report
can say how many it left out.
"""

from __future__ import annotations

import json
from datetime import datetime

from sqlalchemy import Connection, func, insert, select

from kbd.store.events import add_events
from kbd.store.queries import as_utc, to_utc
from kbd.store.questions import with_sources  # answers with their sources resolved
from kbd.store.schema import answers, digests, documents, failures

# -- ingest activity -------------------------------------------------------------------------

def _within(column, since: datetime, until: datetime) -> list:
    return [column >= since, column < until]


def _listed(conn: Connection, where: list, at_column, limit: int) -> dict:
    count = conn.execute(select(func.count()).select_from(documents).where(*where)).scalar_one()
    rows = conn.execute(select(documents.c.node, documents.c.path, documents.c.kind,
                               documents.c.rotations,
                               at_column.label("at"))
                        .where(*where).order_by(documents.c.path, documents.c.id).limit(limit))
    return {"count": count, "items": [_item(r) for r in rows]}


def _item(row) -> dict:
    """A listed row; its node only in a fleet (a single host's documents have none)."""
    return {k: v for k, v in row._asdict().items() if k != "node" or v} | {
        "at": as_utc(row.at)}


def ingest_activity(conn: Connection, since: datetime, until: datetime,
                    limit: int = 50) -> dict:
    """Documents added, changed (but added before the period), deleted and rotated in the
    period, each {"count": n, "items": [{path, kind, rotations, at}]} in path order; and the
    files that cannot be read now, {"count": n, "items": [{path, stage, code, message, at}]}."""
    since, until = to_utc(since, "since"), to_utc(until, "until")
    c = documents.c
    failed = conn.execute(select(func.count()).select_from(failures)).scalar_one()
    failed_rows = conn.execute(select(failures.c.node, failures.c.path, failures.c.stage,
                                      failures.c.code,
                                      failures.c.message, failures.c.at)
                               .order_by(failures.c.path).limit(limit))
    return {
        "added": _listed(conn, _within(c.first_seen, since, until), c.first_seen, limit),
        "changed": _listed(conn, [*_within(c.changed_at, since, until), c.first_seen < since],
                           c.changed_at, limit),
        "deleted": _listed(conn, _within(c.deleted_at, since, until), c.deleted_at, limit),
        # a rotation moves the document without touching changed_at; the new lines read
        # after it do
        "rotated": _listed(conn, [c.rotations > 0, *_within(c.changed_at, since, until)],
                           c.changed_at, limit),
        "failures": {"count": failed, "items": [_item(r) for r in failed_rows]},
    }


# -- a question's runs in a period -----------------------------------------------------------

def question_runs(conn: Connection, question_id: int, since: datetime, until: datetime,
                  limit: int = 50) -> dict:
    """A question's answers that started in the period: {"counts": {status: n}, "latest":
    the newest (any status), "latest_ok": the newest ok one, both with sources resolved as
    kbd.store.questions.answers gives them, or None; "failed": the failed ones, newest first,
    at most limit, without sources}."""
    since, until = to_utc(since, "since"), to_utc(until, "until")
    a = answers.c
    in_period = [a.question_id == question_id, *_within(a.started_at, since, until)]
    newest = (a.started_at.desc(), a.id.desc())
    counts = dict(conn.execute(select(a.status, func.count()).where(*in_period)
                               .group_by(a.status)).all())
    latest = conn.execute(select(answers).where(*in_period).order_by(*newest).limit(1)).first()
    latest_ok = latest if latest is None or latest.status == "ok" else conn.execute(
        select(answers).where(*in_period, a.status == "ok").order_by(*newest).limit(1)).first()
    failed = conn.execute(select(a.id, a.started_at, a.finished_at, a.model, a.error)
                          .where(*in_period, a.status == "failed").order_by(*newest)
                          .limit(limit))
    resolved = {r["id"]: r for r in with_sources(conn, [r for r in (latest, latest_ok) if r])}
    return {
        "counts": counts,
        "latest": resolved[latest.id] if latest else None,
        "latest_ok": resolved[latest_ok.id] if latest_ok else None,
        "failed": [r._asdict() | {"started_at": as_utc(r.started_at),
                                  "finished_at": as_utc(r.finished_at)} for r in failed],
    }


# -- digest runs -----------------------------------------------------------------------------

def record_digest(conn: Connection, generated_at: datetime, since: datetime,
                  paths: list[str], channels=(), content: dict | None = None) -> int:
    """Record a digest written, and a digest event for each channel (its payload carries
    `content`: the Markdown and HTML as written)."""
    digest_id = conn.execute(insert(digests).values(
        generated_at=to_utc(generated_at, "generated_at"), since=to_utc(since, "since"),
        paths=json.dumps(list(paths)))).inserted_primary_key[0]
    if channels:
        add_events(conn, "digest", channels, (content or {}) | {
            "digest_id": digest_id, "since": since, "generated_at": generated_at,
            "paths": list(paths)}, digest_id=digest_id)
    return digest_id


def list_digests(conn: Connection, limit: int | None = None) -> list[dict]:
    """Digests written, newest first: id, generated_at, since, paths."""
    query = select(digests).order_by(digests.c.generated_at.desc(), digests.c.id.desc())
    if limit is not None:
        query = query.limit(limit)
    return [{"id": r.id, "generated_at": as_utc(r.generated_at), "since": as_utc(r.since),
             "paths": json.loads(r.paths)} for r in conn.execute(query)]
