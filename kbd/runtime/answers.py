"""An answer, recorded in the store with its sources, and the JSON that whoever asked gets
back (`kbd ask`, the API, the scheduler)."""

from __future__ import annotations

from datetime import UTC, datetime

from kbd.errors import KbdError
from kbd.runtime.engines import Cited, Reply
from kbd.store import Store, fleet
from kbd.store import queries as q
from kbd.store.questions import record_answer


def record(store: Store, *, question_id: int | None, question: str, started: datetime,
           engine: str, model: str | None, candidates: int, reply: Reply,
           error: Exception | None, through: int | None,
           firing: fleet.Claim | None = None) -> tuple[int, dict]:
    """Store the answer and its sources; its id, and the sources' places by passage id. The
    answer to a fleet's claimed firing is stored only while the claim is still this node's,
    in the transaction that marks the firing done: a firing is answered once."""

    def write(conn):
        answer_id = record_answer(
            conn, question_id=question_id, question=question,
            started_at=started, finished_at=datetime.now(UTC), model=model, engine=engine,
            status=reply.status, error=str(error) if error else None, text=reply.text,
            candidates=candidates, covered_through=through,
            sources=[(s.rank, s.passage_id, s.score) for s in reply.sources])
        if firing is not None and not fleet.finish_firing(conn, firing, answer_id):
            raise KbdError(f"firing {firing.job} at {firing.fire_time:%H:%M:%S} was taken over "
                           "by another node: this answer is not recorded", code="stale-claim")
        return answer_id, q.passage_places(conn, [s.passage_id for s in reply.sources])

    return store.write(write)


def answer_json(answer_id: int, reply: Reply, engine: str, model: str | None, candidates: int,
                places: dict) -> dict:
    return {
        "answer_id": answer_id, "answer": reply.text, "status": reply.status, "engine": engine,
        "model": model, "candidates": candidates,
        "citations_dropped": reply.citations_dropped, "extractive": reply.extractive,
        "aggregate": reply.aggregate,
        "sources": [source_json(s, places[s.passage_id]) for s in reply.sources],
    }


def source_json(source: Cited, place) -> dict:
    """One source as `kbd ask --json` prints it."""
    lines = [place.first_line, place.last_line] if place.first_line is not None else None
    # a fleet's ingest node names the file's host; a single host's document has no node
    node = {"node": place.node} if place.node else {}
    return node | {"rank": source.rank, "passage_id": place.id, "path": place.path,
                   "lines": lines, "cited_lines": source.cited_lines, "page": place.page,
                   "score": round(float(source.score), 6), "in_prompt": source.in_prompt,
                   "text": place.text}
