"""Standing questions and recorded answers, as small functions over a Connection inside the
caller's transaction.

Questions and answers come back as plain dicts: scope and kinds decoded from JSON, times
timezone-aware in UTC (SQLite keeps no zone, so times are stored as UTC wall time and read
back as UTC). Times passed in must be timezone-aware.
"""

from __future__ import annotations

import json
import logging
from datetime import datetime

from sqlalchemy import Connection, Row, and_, delete, func, insert, or_, select, update

from kbd.store import events as ev
from kbd.store.queries import as_utc, to_utc, utcnow
from kbd.store.schema import answer_sources, documents, passages, questions
from kbd.store.schema import answers as answers_table  # answers() is the query below

SPEC_FIELDS = frozenset({"text", "schedule_kind", "cron", "interval_s", "timezone", "scope",
                         "kinds", "since_s", "since_last_run", "top_k", "max_new_tokens",
                         "enabled", "notify", "channels"})
RUN_FIELDS = frozenset({"last_run_at", "next_run_at"})  # the scheduler's; not an edit
STATUSES = ("ok", "not-found", "nothing-new", "failed", "skipped")
NEWEST_FIRST = (answers_table.c.started_at.desc(), answers_table.c.id.desc())

log = logging.getLogger("kbd.scheduler")


def _question_values(fields: dict) -> dict:
    unknown = set(fields) - SPEC_FIELDS - RUN_FIELDS
    if unknown:
        raise TypeError(f"not question fields: {', '.join(sorted(unknown))}")
    values = dict(fields)
    for name in ("scope", "kinds", "channels"):
        if name in values:
            values[name] = json.dumps(list(values[name]))
    for name in RUN_FIELDS & set(values):
        values[name] = to_utc(values[name], name)
    return values


def _question(row: Row) -> dict:
    question = row._asdict()
    question["scope"] = json.loads(row.scope)
    question["kinds"] = json.loads(row.kinds)
    question["channels"] = json.loads(row.channels)
    for name in ("created_at", "updated_at", "last_run_at", "next_run_at"):
        question[name] = as_utc(question[name])
    return question


# -- questions -----------------------------------------------------------------------------

def create_question(conn: Connection, **fields) -> int:
    """Store a standing question (fields as kbd.questions.specs.QuestionSpec names them, already
    validated); the ones left out take the column defaults."""
    at = utcnow()
    values = _question_values(fields) | {"created_at": at, "updated_at": at}
    return conn.execute(insert(questions).values(**values)).inserted_primary_key[0]


def get_question(conn: Connection, question_id: int) -> dict | None:
    row = conn.execute(select(questions).where(questions.c.id == question_id)).first()
    return None if row is None else _question(row)


def list_questions(conn: Connection, enabled: bool | None = None) -> list[dict]:
    """All questions, oldest first; or only the enabled (or disabled) ones."""
    query = select(questions).order_by(questions.c.id)
    if enabled is not None:
        query = query.where(questions.c.enabled == enabled)
    return [_question(r) for r in conn.execute(query)]


def update_question(conn: Connection, question_id: int, **fields) -> bool:
    """Change some fields; False when there is no such question. updated_at moves unless only
    the scheduler's last_run_at / next_run_at change."""
    values = _question_values(fields)
    if set(values) - RUN_FIELDS:
        values["updated_at"] = utcnow()
    if not values:
        return get_question(conn, question_id) is not None
    result = conn.execute(update(questions).where(questions.c.id == question_id)
                          .values(**values))
    return result.rowcount > 0


def set_enabled(conn: Connection, question_id: int, enabled: bool) -> bool:
    """Turn a question on or off; off clears next_run_at (the scheduler sets it again on)."""
    values = {"enabled": enabled} if enabled else {"enabled": False, "next_run_at": None}
    return update_question(conn, question_id, **values)


def delete_question(conn: Connection, question_id: int) -> bool:
    """Delete a question; its answers stay, with question_id null (as ad-hoc answers have)."""
    # The foreign key does the same (ON DELETE SET NULL); this does not rely on SQLite's
    # foreign_keys pragma being on for the connection.
    conn.execute(update(answers_table).where(answers_table.c.question_id == question_id)
                 .values(question_id=None))
    result = conn.execute(delete(questions).where(questions.c.id == question_id))
    return result.rowcount > 0


# -- answers -------------------------------------------------------------------------------

def record_answer(conn: Connection, *, question_id: int | None, question: str,
                  started_at: datetime, finished_at: datetime, model: str | None, engine: str,
                  status: str, error: str | None, text: str | None, candidates: int,
                  sources: list[tuple[int, int, float]],
                  covered_through: int | None = None) -> int | None:
    """Record an answer and the passages it came from, as (rank, passage_id, score) with rank
    1-based; covered_through is the snapshot it was given (kbd.retrieve.Candidates.through).
    An ok answer to a standing question is compared with that question's previous ok
    answer: change is "first" (none before), "unchanged" (same text, same set of passages),
    "new-sources" (same text, other passages) or "changed" (other text). Other answers, and
    ad-hoc ones (question_id None), get change null. None, and nothing recorded, when the
    standing question was deleted while it ran."""
    if status not in STATUSES:
        raise ValueError(f"status must be one of {', '.join(STATUSES)}, got {status!r}")
    if status == "ok" and text is None:
        raise ValueError("an ok answer needs its text")
    if question_id is not None and not _hold_question(conn, question_id):
        log.info("question %d was deleted while it ran: its %s answer is dropped",
                 question_id, status)
        return None
    answer_id = conn.execute(insert(answers_table).values(
        question_id=question_id, question=question,
        started_at=to_utc(started_at, "started_at"), finished_at=to_utc(finished_at, "finished_at"),
        model=model, engine=engine, status=status, error=error, text=text,
        candidates=candidates, covered_through=covered_through)).inserted_primary_key[0]
    if sources:
        conn.execute(insert(answer_sources), [
            {"answer_id": answer_id, "rank": rank, "passage_id": passage_id, "score": score}
            for rank, passage_id, score in sources])
    change = None
    if question_id is not None and status == "ok":
        before = previous_answer(conn, question_id, answer_id)
        change = _change(before, text, {passage_id for _, passage_id, _ in sources})
        conn.execute(update(answers_table).where(answers_table.c.id == answer_id)
                     .values(change=change))
    if question_id is not None:
        _notify(conn, question_id, answer_id, status, change)
    return answer_id


def _notify(conn: Connection, question_id: int, answer_id: int, status: str,
            change: str | None) -> None:
    """The answer's events, per its question's notify mode, in the answer's transaction:
    the outbox holds them exactly when the answer is stored."""
    question = get_question(conn, question_id)
    if question["notify"] == "never" or not question["channels"]:
        return
    first_skip = status == "skipped" and conn.execute(
        select(answers_table.c.id).where(answers_table.c.question_id == question_id,
                                         answers_table.c.status == "skipped",
                                         answers_table.c.id != answer_id).limit(1)
    ).first() is None
    kind = ev.answer_event(question["notify"], status, change, first_skip)
    if kind is None:
        return
    row = conn.execute(select(answers_table).where(answers_table.c.id == answer_id)).one()
    payload = ev.answer_payload(question, with_sources(conn, [row])[0])
    ev.add_events(conn, kind, question["channels"], payload, question_id=question_id,
                  answer_id=answer_id)


def _hold_question(conn: Connection, question_id: int) -> bool:
    """Does the question exist? On PostgreSQL its row is then locked against a delete until
    the transaction ends (SQLite's write transaction already excludes other writers)."""
    return conn.execute(select(questions.c.id).where(questions.c.id == question_id)
                        .with_for_update(read=True, key_share=True)).first() is not None


def covered_through(conn: Connection, question_id: int) -> int | None:
    """The highest passage id the question's runs have covered: its next since-last-run
    window starts after it. None before its first answered run."""
    return conn.execute(select(func.max(answers_table.c.covered_through))
                        .where(answers_table.c.question_id == question_id)).scalar()


def _change(before: dict | None, text: str, passage_ids: set[int]) -> str:
    if before is None:
        return "first"
    if (before["text"] or "").strip() != text.strip():
        return "changed"
    if {s["passage_id"] for s in before["sources"]} != passage_ids:
        return "new-sources"
    return "unchanged"


def answers(conn: Connection, question_id: int | None = None,
            limit: int | None = 20) -> list[dict]:
    """Answers newest first (all of them, ad hoc included, when question_id is None), each
    with its sources resolved to places: rank, score, passage_id, the document's current path,
    first_line / last_line, page, heading, the passage text, and whether it is still live."""
    query = select(answers_table).order_by(*NEWEST_FIRST)
    if question_id is not None:
        query = query.where(answers_table.c.question_id == question_id)
    if limit is not None:
        query = query.limit(limit)
    return with_sources(conn, list(conn.execute(query)))


def answer(conn: Connection, answer_id: int) -> dict | None:
    """One answer with its sources resolved, as answers() gives them."""
    row = conn.execute(select(answers_table).where(answers_table.c.id == answer_id)).first()
    return None if row is None else with_sources(conn, [row])[0]


def previous_answer(conn: Connection, question_id: int, before_answer_id: int | None = None,
                    ok_only: bool = True) -> dict | None:
    """The question's answer just before the given one (by start time, then id), or its
    latest when before_answer_id is None; only ok answers unless ok_only is False."""
    query = select(answers_table).where(answers_table.c.question_id == question_id)
    if ok_only:
        query = query.where(answers_table.c.status == "ok")
    if before_answer_id is not None:
        ref = conn.execute(select(answers_table.c.started_at)
                           .where(answers_table.c.id == before_answer_id)).first()
        if ref is None:
            return None
        query = query.where(or_(answers_table.c.started_at < ref.started_at,
                                and_(answers_table.c.started_at == ref.started_at,
                                     answers_table.c.id < before_answer_id)))
    row = conn.execute(query.order_by(*NEWEST_FIRST).limit(1)).first()
    return None if row is None else with_sources(conn, [row])[0]


def with_sources(conn: Connection, rows: list[Row]) -> list[dict]:
    found: dict[int, list[dict]] = {r.id: [] for r in rows}
    if found:
        cited = conn.execute(
            select(answer_sources.c.answer_id, answer_sources.c.rank, answer_sources.c.score,
                   answer_sources.c.passage_id, passages.c.document_id, documents.c.node,
                   documents.c.path,
                   passages.c.first_line, passages.c.last_line, passages.c.page,
                   passages.c.heading, passages.c.text, passages.c.live)
            .join(passages, passages.c.id == answer_sources.c.passage_id)
            .join(documents, documents.c.id == passages.c.document_id)
            .where(answer_sources.c.answer_id.in_(found))
            .order_by(answer_sources.c.answer_id, answer_sources.c.rank))
        for source in cited:
            found[source.answer_id].append(source._asdict())
    out = []
    for row in rows:
        answer = row._asdict()
        answer["started_at"] = as_utc(row.started_at)
        answer["finished_at"] = as_utc(row.finished_at)
        # a source names its node only in a fleet (docs/fleet.md): a single host's has none
        answer["sources"] = [{k: v for k, v in s.items()
                              if k != "answer_id" and (k != "node" or v)}
                             for s in found[row.id]]
        out.append(answer)
    return out
