"""The notification outbox, as small functions over a Connection inside the caller's
transaction.

An event is written in the transaction that records what caused it (an answer, a digest), one
row per channel, with a payload fixed then: what is sent is the same however often it is
sent. Each row has a stable key that every delivery carries, so a receiver can drop a
repeat. A row stays pending until its receiver accepted it (delivered) or it was retried for
its channel's give_up_s (failed). A channel gets its events in id order: only the oldest
pending one of each channel is tried.
"""

from __future__ import annotations

import json
import uuid
from datetime import datetime

from sqlalchemy import Connection, func, insert, select, update

from kbd.store.queries import as_utc, to_utc, utcnow
from kbd.store.schema import events

EVENT_KINDS = ("answer", "failed", "skipped", "digest", "test")
STATUSES = ("pending", "delivered", "failed")
SOURCE_LINES = 12  # cited lines quoted per source in a message
LINE_CHARS = 300


def add_events(conn: Connection, kind: str, channels, payload: dict, *,
               question_id: int | None = None, answer_id: int | None = None,
               digest_id: int | None = None) -> list[int]:
    """One pending event per channel, due now; their ids."""
    if kind not in EVENT_KINDS:
        raise ValueError(f"kind must be one of {', '.join(EVENT_KINDS)}, got {kind!r}")
    at, ids = utcnow(), []
    for channel in dict.fromkeys(channels):
        key = f"kbd-{uuid.uuid4().hex}"
        body = json.dumps(payload | {"kind": kind, "event_id": key, "channel": channel},
                          default=_json_default, sort_keys=True)
        ids.append(conn.execute(insert(events).values(
            key=key, channel=channel, kind=kind, question_id=question_id,
            answer_id=answer_id, digest_id=digest_id, payload=body, status="pending",
            attempts=0, created_at=at, next_attempt_at=at)).inserted_primary_key[0])
    return ids


def _json_default(value):
    if isinstance(value, datetime):
        return value.isoformat()
    raise TypeError(f"{type(value).__name__} is not JSON")


def answer_event(notify: str, status: str, change: str | None, first_skip: bool) -> str | None:
    """The kind of event a question's answer makes under its notify mode, or None."""
    if notify == "never":
        return None
    if status == "failed":
        return "failed"
    if status == "skipped":
        return "skipped" if notify == "always" or first_skip else None
    if notify == "always":
        return "answer"
    return "answer" if status == "ok" and change in ("first", "changed", "new-sources") \
        else None


def answer_payload(question: dict, answer: dict) -> dict:
    """What a message about an answer says: the question, the answer, what changed, and the
    cited lines with file:lines (answer as kbd.store.questions.answers gives it)."""
    return {
        "question_id": question["id"], "question": question["text"],
        "answer_id": answer["id"], "status": answer["status"], "change": answer["change"],
        "answer": answer["text"], "error": answer["error"],
        "started_at": answer["started_at"], "finished_at": answer["finished_at"],
        "sources": [_source(s) for s in answer["sources"]],
        "links": {"cli": f"kbd answers {question['id']}",
                  "api": f"GET /answers/{answer['id']}"},
    }


def _source(source: dict) -> dict:
    lines = source["text"].splitlines()
    shown = [line[:LINE_CHARS] for line in lines[:SOURCE_LINES]]
    return {"rank": source["rank"], "path": source["path"], "first_line": source["first_line"],
            "last_line": source["last_line"], "page": source["page"],
            "score": source["score"], "lines": shown, "more_lines": len(lines) - len(shown)}


def row_dict(row) -> dict:
    event = row._asdict()
    for name in ("created_at", "next_attempt_at", "finished_at"):
        event[name] = as_utc(event[name])
    event["payload"] = json.loads(row.payload)
    return event


def get_event(conn: Connection, event_id: int) -> dict | None:
    row = conn.execute(select(events).where(events.c.id == event_id)).first()
    return None if row is None else row_dict(row)


def head(conn: Connection, channel: str) -> dict | None:
    """The channel's oldest pending event: the only one of the channel that may be sent."""
    row = conn.execute(select(events).where(events.c.status == "pending",
                                            events.c.channel == channel)
                       .order_by(events.c.id).limit(1)).first()
    return None if row is None else row_dict(row)


def delivered(conn: Connection, event_id: int, receipt: str) -> None:
    at = utcnow()
    conn.execute(update(events).where(events.c.id == event_id).values(
        status="delivered", attempts=events.c.attempts + 1, finished_at=at, receipt=receipt,
        last_error=None))


def retry(conn: Connection, event_id: int, error: str, next_at: datetime) -> None:
    conn.execute(update(events).where(events.c.id == event_id).values(
        attempts=events.c.attempts + 1, last_error=error,
        next_attempt_at=to_utc(next_at, "next_at")))


def give_up(conn: Connection, event_id: int, error: str) -> None:
    conn.execute(update(events).where(events.c.id == event_id).values(
        status="failed", attempts=events.c.attempts + 1, finished_at=utcnow(),
        last_error=error))


def counts(conn: Connection) -> dict:
    """{status: n} over every event."""
    found = dict(conn.execute(select(events.c.status, func.count())
                              .group_by(events.c.status)).all())
    return {status: found.get(status, 0) for status in STATUSES}


def counts_of(conn: Connection, channel: str) -> dict:
    """{status: n} over one channel's events."""
    found = dict(conn.execute(select(events.c.status, func.count())
                              .where(events.c.channel == channel)
                              .group_by(events.c.status)).all())
    return {status: found.get(status, 0) for status in STATUSES}


def recent(conn: Connection, channel: str | None = None, status: str | None = None,
           since: datetime | None = None, limit: int | None = 20) -> list[dict]:
    """Events newest first, without payloads' bodies (kind, question and answer ids stay)."""
    query = select(*[c for c in events.c if c.name != "payload"]).order_by(events.c.id.desc())
    if channel is not None:
        query = query.where(events.c.channel == channel)
    if status is not None:
        query = query.where(events.c.status == status)
    if since is not None:
        query = query.where(events.c.finished_at >= to_utc(since, "since"))
    if limit is not None:
        query = query.limit(limit)
    out = []
    for row in conn.execute(query):
        event = row._asdict()
        for name in ("created_at", "next_attempt_at", "finished_at"):
            event[name] = as_utc(event[name])
        out.append(event)
    return out


def last_delivery(conn: Connection, question_id: int) -> dict | None:
    """The latest event of the question that was delivered or given up."""
    row = conn.execute(select(events.c.channel, events.c.status, events.c.finished_at,
                              events.c.key)
                       .where(events.c.question_id == question_id,
                              events.c.status != "pending")
                       .order_by(events.c.finished_at.desc(), events.c.id.desc())
                       .limit(1)).first()
    return None if row is None else row._asdict() | {"finished_at": as_utc(row.finished_at)}
