"""The API's endpoints: each one a small function from (path groups, query, body) to JSON.

    GET  /status                       documents, backlog, model, failed files
    POST /ask                          {"question", "top_k"?, "scope"?, "kinds"?, "since"?,
                                        "max_new_tokens"?} -> {"answer", "status",
                                        "citations_dropped", "extractive", "aggregate",
                                        "sources": [...]}
    GET  /documents?prefix=&limit=     live documents
    GET  /documents/show?path=         one document with its live passages
    GET  /answers?question_id=&limit=  answer history with sources
    GET  /answers/ID                   one answer with its sources
    GET  /notify?limit=                channels and their recent deliveries
    POST /notify/test {"channel"}      send a test message through the outbox
    ... and /questions (see kbd/api/routes.py: questions_routes)
"""

from __future__ import annotations

import asyncio
import queue
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING

from kbd.api.server import ApiError, Router
from kbd.errors import InputError
from kbd.retrieve import Scope
from kbd.store import events as ev
from kbd.store import queries as q
from kbd.store import questions as qs

if TYPE_CHECKING:
    from kbd.config import Config
    from kbd.questions.scheduler import Scheduler
    from kbd.runtime.worker import AskRequest
    from kbd.store import Store

ASK_TIMEOUT_S = 900.0
MAX_NUMBER = 2**63 - 1  # ids and limits past a 64-bit integer would overflow the database


@dataclass(frozen=True)
class Services:
    """What the endpoints use of the daemon, and no more; kbd/daemon.py builds it."""

    store: Store
    submit: Callable[[AskRequest], Future]  # the model worker's queue
    scheduler: Scheduler  # standing questions: sync, remove, run now
    wake_sender: Callable[[], None]  # the notification outbox has new events
    config: Callable[[], Config]  # the config as last loaded (SIGHUP reloads it)
    status: Callable[[], dict]  # GET /status
    write_digest: Callable[..., dict]  # (since_s, formats) -> the files written


def build_router(services) -> Router:
    router = Router()
    router.add("GET", "/status", lambda g, query, body: services.status())
    router.add("POST", "/ask", lambda g, query, body: ask(services, body))
    router.add("GET", "/documents", lambda g, query, body: documents_list(services, query))
    router.add("GET", "/documents/show", lambda g, query, body: document_show(services, query))
    router.add("GET", "/questions", lambda g, query, body: questions_list(services))
    router.add("POST", "/questions", lambda g, query, body: question_create(services, body))
    one = r"/questions/(?P<id>[0-9]+)"
    router.add("GET", one, lambda g, query, body: question_json(get_or_404(services, g)))
    router.add("PATCH", one, lambda g, query, body: question_update(services, g, body))
    router.add("DELETE", one, lambda g, query, body: question_delete(services, g))
    router.add("POST", one + "/pause", lambda g, query, body: question_enable(services, g, False))
    router.add("POST", one + "/resume", lambda g, query, body: question_enable(services, g, True))
    router.add("POST", one + "/run", lambda g, query, body: question_run(services, g))
    router.add("GET", "/answers", lambda g, query, body: answers_list(services, query))
    router.add("GET", r"/answers/(?P<id>[0-9]+)", lambda g, query, body: answer_one(services, g))
    router.add("GET", "/notify", lambda g, query, body: notify_list(services, query))
    router.add("POST", "/notify/test", lambda g, query, body: notify_test(services, body))
    router.add("POST", "/digest", lambda g, query, body: digest_now(services, body))
    router.add("GET", "/digests", lambda g, query, body: digests_list(services, query))
    return router


def field(body: dict, name: str, kind: type, default=None, minimum=None, maximum=None):
    """A typed request field; a wrong type or range is a 400 naming the field."""
    value = body.get(name, default)
    if value is None:
        return None
    if kind is int and isinstance(value, bool) or not isinstance(value, kind):
        raise ApiError(400, f"{name}: expected {kind.__name__}, got {type(value).__name__}")
    if minimum is not None and value < minimum or maximum is not None and value > maximum:
        raise ApiError(400, f"{name}: must be between {minimum} and {maximum}")
    return value


def string_list(body: dict, name: str) -> tuple[str, ...]:
    value = body.get(name) or []
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ApiError(400, f"{name}: expected a list of strings")
    return tuple(value)


def duration_field(body: dict, name: str) -> int | None:
    """A duration such as "24h", in seconds; None when absent."""
    value = field(body, name, str)
    if not value:
        return None
    from kbd.questions.specs import parse_duration

    try:
        return parse_duration(value)
    except InputError as e:
        raise ApiError(400, f"{name}: {e.message}") from e


def scope_from(body: dict) -> Scope:
    kinds = string_list(body, "kinds")
    if set(kinds) - {"log", "report"}:
        raise ApiError(400, "kinds: only log and report")
    return Scope(paths=string_list(body, "scope"), kinds=kinds,
                 since_s=duration_field(body, "since"))


def ask(services, body: dict):
    from kbd.runtime.worker import AskRequest

    question = field(body, "question", str)
    if not question or not question.strip():
        raise ApiError(400, "question: must not be empty")
    if len(question) > 4000:
        raise ApiError(400, "question: longer than 4,000 characters")
    stream = field(body, "stream", bool, False)
    request = AskRequest(question=question.strip(), scope=scope_from(body),
                         top_k=field(body, "top_k", int, None, 1, 50),
                         max_new_tokens=field(body, "max_new_tokens", int, None, 1, 2048),
                         tokens=queue.Queue() if stream else None)
    future = services.submit(request)
    return stream_answer(request) if stream else answer_of(future)


async def answer_of(future: Future) -> dict:
    """The model's answer, awaited on the API's event loop: a waiting ask holds no thread."""
    try:  # shielded: a timeout here must not cancel the request the model worker holds
        return ask_json(await asyncio.wait_for(asyncio.shield(asyncio.wrap_future(future)),
                                               ASK_TIMEOUT_S))
    except TimeoutError as e:
        raise ApiError(504, f"no answer within {ASK_TIMEOUT_S:.0f} s") from e


def stream_answer(request) -> Iterator[dict]:
    """{"token": text} events while the answer is generated, then {"done": answer}."""
    deadline = time.monotonic() + ASK_TIMEOUT_S
    while time.monotonic() < deadline:
        try:
            yield {"token": request.tokens.get(timeout=0.1)}
            continue
        except queue.Empty:
            if not request.future.done():
                continue
        if request.tokens.empty():
            break
    error = request.future.exception(timeout=max(0.0, deadline - time.monotonic()))
    if error is not None:
        yield {"error": {"code": getattr(error, "code", "internal"), "message": str(error)}}
    else:
        yield {"done": ask_json(request.future.result())}


def ask_json(answer: dict) -> dict:
    """An answer as /ask replies: an answer given is "answered" (the store records "ok")."""
    return answer | {"status": "answered" if answer["status"] == "ok" else answer["status"]}


def documents_list(services, query: dict) -> dict:
    limit = int_param(query, "limit", 100)
    with services.store.read() as conn:
        docs = q.live_documents(conn, under=query.get("prefix"))
    return {"documents": [document_json(d) for d in docs[:limit]], "total": len(docs)}


def document_show(services, query: dict) -> dict:
    path = query.get("path")
    if not path:
        raise ApiError(400, "path: required")
    with services.store.read() as conn:
        doc = q.live_document(conn, path)
        if doc is None:
            raise ApiError(404, f"no live document at {path}")
        rows = q.live_passages(conn, doc.id)
    return document_json(doc) | {"passages": [
        {"passage_id": p.id, "ordinal": p.ordinal, "lines": [p.first_line, p.last_line]
         if p.first_line is not None else None, "page": p.page, "tokens": p.token_count,
         "heading": p.heading, "text": p.text} for p in rows]}


def document_json(d) -> dict:
    return {"path": d.path, "kind": d.kind, "status": d.status, "size": d.size,
            "rotations": d.rotations, "error": d.error, "first_seen": d.first_seen,
            "changed_at": d.changed_at}


def int_param(query: dict, name: str, default: int) -> int:
    try:
        value = int(query.get(name, default))
    except ValueError as e:
        raise ApiError(400, f"{name}: expected a number") from e
    if not 1 <= value <= MAX_NUMBER:
        raise ApiError(400, f"{name}: must be between 1 and {MAX_NUMBER}")
    return value


# -- standing questions ----------------------------------------------------------------------

def question_json(question: dict) -> dict:
    from kbd.questions.specs import format_duration

    every = question["interval_s"]
    return {
        "id": question["id"], "text": question["text"], "enabled": question["enabled"],
        "every": format_duration(every) if every else None, "cron": question["cron"],
        "timezone": question["timezone"], "scope": question["scope"],
        "kinds": question["kinds"],
        "since": format_duration(question["since_s"]) if question["since_s"] else None,
        "since_last_run": question["since_last_run"], "top_k": question["top_k"],
        "max_new_tokens": question["max_new_tokens"], "last_run_at": question["last_run_at"],
        "next_run_at": question["next_run_at"], "created_at": question["created_at"],
        "notify": question["notify"], "channels": question["channels"],
    }


def questions_list(services) -> dict:
    with services.store.read() as conn:
        return {"questions": [question_json(x) | {"last_delivery": ev.last_delivery(conn,
                                                                                    x["id"])}
                              for x in qs.list_questions(conn)]}


def get_or_404(services, groups: dict) -> dict:
    return stored_or_404(services, groups, qs.get_question, "no standing question")


def stored_or_404(services, groups: dict, read: Callable, missing: str) -> dict:
    """The stored row that `read(conn, id)` finds for the path's id, or a 404 saying so."""
    row_id = int(groups["id"])
    with services.store.read() as conn:
        found = read(conn, row_id) if row_id <= MAX_NUMBER else None
    if found is None:
        raise ApiError(404, f"{missing} {groups['id']}")
    return found


def _spec(services, body: dict, base=None):
    from kbd.questions.specs import spec_from_request

    try:
        spec = spec_from_request(body, base=base)
        spec.check_channels({c.name for c in services.config().notify})
        return spec
    except InputError as e:
        raise ApiError(400, e.message, e.hint) from e


def question_create(services, body: dict) -> dict:
    spec = _spec(services, body)
    question_id = services.store.write(lambda conn: qs.create_question(conn, **asdict(spec)))
    services.scheduler.sync(question_id)
    return question_json(get_or_404(services, {"id": question_id}))


def question_update(services, groups: dict, body: dict) -> dict:
    from kbd.questions.specs import spec_of

    spec = _spec(services, body, base=spec_of(get_or_404(services, groups)))
    question_id = int(groups["id"])
    services.store.write(lambda conn: qs.update_question(conn, question_id, **asdict(spec)))
    services.scheduler.sync(question_id)
    return question_json(get_or_404(services, groups))


def question_delete(services, groups: dict) -> dict:
    question = get_or_404(services, groups)
    services.store.write(lambda conn: qs.delete_question(conn, question["id"]))
    services.scheduler.remove(question["id"])
    return {"deleted": question["id"]}


def question_enable(services, groups: dict, enabled: bool) -> dict:
    question = get_or_404(services, groups)
    services.store.write(lambda conn: qs.set_enabled(conn, question["id"], enabled))
    services.scheduler.sync(question["id"])
    return question_json(get_or_404(services, groups))


def question_run(services, groups: dict) -> dict:
    question = get_or_404(services, groups)
    result = services.scheduler.run(question["id"])
    if result is None:
        with services.store.read() as conn:
            latest = qs.answers(conn, question["id"], limit=1)
        if not latest:
            raise ApiError(409, f"question {question['id']} is already running")
        return answer_json(latest[0])
    return result


def answer_json(answer: dict) -> dict:
    """An answer from the history, its sources in the shape `kbd ask --json` uses."""
    return {
        "answer_id": answer["id"], "question_id": answer["question_id"],
        "question": answer["question"], "answer": answer["text"], "status": answer["status"],
        "change": answer["change"], "error": answer["error"], "engine": answer["engine"],
        "model": answer["model"],
        "started_at": answer["started_at"], "finished_at": answer["finished_at"],
        "sources": [({"node": s["node"]} if s.get("node") else {}) | {
                     "rank": s["rank"], "passage_id": s["passage_id"], "path": s["path"],
                     "lines": [s["first_line"], s["last_line"]]
                     if s["first_line"] is not None else None,
                     "page": s["page"], "score": s["score"]} for s in answer["sources"]],
    }


def answers_list(services, query: dict) -> dict:
    question_id = int_param(query, "question_id", 0) if "question_id" in query else None
    with services.store.read() as conn:
        found = qs.answers(conn, question_id, limit=int_param(query, "limit", 20))
    return {"answers": [answer_json(a) for a in found]}


def answer_one(services, groups: dict) -> dict:
    return answer_json(stored_or_404(services, groups, qs.answer, "no answer"))


# -- notifications ---------------------------------------------------------------------------

TEST_WAIT_S = 10.0  # past the channel's timeout, for the test message's first attempt


def channel_json(channel) -> dict:
    """A channel as `kbd notify list` shows it: where it sends, never a secret."""
    if channel.type == "webhook":
        target = channel.url.split("?")[0] if channel.url else \
            f"url from {'$' + channel.url_env if channel.url_env else channel.url_file}"
        target = f"{channel.format} {target}"
    elif channel.type == "email":
        target = f"{', '.join(channel.to)} via {channel.host}:{channel.smtp_port} " \
                 f"({channel.security})"
    else:
        target = " ".join(channel.argv)
    return {"name": channel.name, "type": channel.type, "target": target}


def event_json(event: dict) -> dict:
    return {k: event[k] for k in ("id", "key", "channel", "kind", "question_id", "answer_id",
                                  "digest_id", "status", "attempts", "created_at",
                                  "next_attempt_at", "finished_at", "last_error", "receipt")}


def notify_list(services, query: dict) -> dict:
    limit = int_param(query, "limit", 20)
    with services.store.read() as conn:
        recent = ev.recent(conn, limit=limit)
        channels = [channel_json(c) | {"counts": ev.counts_of(conn, c.name)}
                    for c in services.config().notify]
    return {"channels": channels, "deliveries": [event_json(e) for e in recent]}


def notify_test(services, body: dict) -> dict:
    """A test event through the outbox, like any other; the reply is its row once its first
    attempt is made (or after the wait, queued behind the channel's older events)."""

    name = field(body, "channel", str)
    channel = services.config().channel(name) if name else None
    if channel is None:
        raise ApiError(404, f"no channel {name!r}", hint="`kbd notify list` shows the channels")
    (event_id,) = services.store.write(lambda conn: ev.add_events(
        conn, "test", [name], {"question_id": None, "answer_id": None}))
    services.wake_sender()
    deadline = time.monotonic() + channel.timeout_s + TEST_WAIT_S
    while True:
        with services.store.read() as conn:
            event = ev.get_event(conn, event_id)
        if event["attempts"] or event["status"] != "pending" or time.monotonic() > deadline:
            return event_json(event)
        time.sleep(0.1)


# -- digests ---------------------------------------------------------------------------------

def digest_now(services, body: dict) -> dict:
    """{"since"?: "24h", "formats"?: ["md", "html"]} -> the files written."""
    formats = string_list(body, "formats") or ("md", "html")
    if set(formats) - {"md", "html"}:
        raise ApiError(400, "formats: only md and html")
    return services.write_digest(duration_field(body, "since"), formats)


def digests_list(services, query: dict) -> dict:
    from kbd.digest import digest_history

    return {"digests": digest_history(services.store, int_param(query, "limit", 20))}
