"""The API's endpoints: each one a small function from (path groups, query, body) to JSON.

    GET  /status                       documents, backlog, model, failed files
    POST /ask                          {"question", "top_k"?, "scope"?, "kinds"?, "since"?,
                                        "max_new_tokens"?} -> {"answer", "sources": [...]}
    GET  /documents?prefix=&limit=     live documents
    GET  /documents/show?path=         one document with its live passages
    GET  /answers?question_id=&limit=  answer history with sources
    ... and /questions (see kbd/routes.py: questions_routes)
"""

from __future__ import annotations

from concurrent.futures import TimeoutError as FutureTimeout

from kbd.api import ApiError, Router
from kbd.errors import InputError
from kbd.retrieve import Scope
from kbd.store import queries as q

ASK_TIMEOUT_S = 900.0


def build_router(daemon) -> Router:
    router = Router()
    router.add("GET", "/status", lambda g, query, body: daemon.status())
    router.add("POST", "/ask", lambda g, query, body: ask(daemon, body))
    router.add("GET", "/documents", lambda g, query, body: documents_list(daemon, query))
    router.add("GET", "/documents/show", lambda g, query, body: document_show(daemon, query))
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


def scope_from(body: dict) -> Scope:
    since = field(body, "since", str)
    kinds = string_list(body, "kinds")
    if set(kinds) - {"log", "report"}:
        raise ApiError(400, "kinds: only log and report")
    since_s = None
    if since:
        from kbd.questions import parse_duration

        try:
            since_s = parse_duration(since)
        except InputError as e:
            raise ApiError(400, f"since: {e.message}") from e
    return Scope(paths=string_list(body, "scope"), kinds=kinds, since_s=since_s)


def ask(daemon, body: dict) -> dict:
    from kbd.model.worker import AskRequest

    question = field(body, "question", str)
    if not question or not question.strip():
        raise ApiError(400, "question: must not be empty")
    if len(question) > 4000:
        raise ApiError(400, "question: longer than 4,000 characters")
    request = AskRequest(question=question.strip(), scope=scope_from(body),
                         top_k=field(body, "top_k", int, None, 1, 50),
                         max_new_tokens=field(body, "max_new_tokens", int, 128, 1, 2048))
    future = daemon.model.submit(request)
    try:
        return future.result(timeout=ASK_TIMEOUT_S)
    except FutureTimeout as e:
        raise ApiError(504, f"no answer within {ASK_TIMEOUT_S:.0f} s") from e


def documents_list(daemon, query: dict) -> dict:
    limit = int_param(query, "limit", 100)
    with daemon.store.read() as conn:
        docs = q.live_documents(conn, under=query.get("prefix"))
    return {"documents": [document_json(d) for d in docs[:limit]], "total": len(docs)}


def document_show(daemon, query: dict) -> dict:
    path = query.get("path")
    if not path:
        raise ApiError(400, "path: required")
    with daemon.store.read() as conn:
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
    if value < 1:
        raise ApiError(400, f"{name}: must be at least 1")
    return value
