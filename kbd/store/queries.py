"""Every query kbd runs, as small functions over a Connection inside the caller's transaction.

A document is found by (node, path): the connection carries the node it works for
(Store.read and Store.write set it, node_of() reads it), "" for a single-host daemon, so
/var/log/app.log of web-1 and of web-2 are two documents and an ingest node never sees,
changes or retires another node's files."""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime

from sqlalchemy import Connection, Row, and_, delete, func, insert, literal, or_, select, update
from sqlalchemy import text as sql
from sqlalchemy.dialects.postgresql import insert as postgresql_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert

from kbd.store.schema import documents, failures, memories, passages, sources


def node_of(conn: Connection) -> str:
    """The fleet node this connection works for ("" on a single host)."""
    return conn.get_execution_options().get("kbd_node", "")


def utcnow() -> datetime:
    return datetime.now(UTC)


def to_utc(at: datetime | None, name: str) -> datetime | None:
    """A time to store: it must carry a zone (SQLite keeps none, so we store UTC)."""
    if at is None:
        return None
    if at.tzinfo is None:
        raise ValueError(f"{name} must be timezone-aware, got {at!r}")
    return at.astimezone(UTC)


def as_utc(at: datetime | None) -> datetime | None:
    """A stored time, back with its zone (SQLite returns it naive, in UTC)."""
    if at is None:
        return None
    return at.replace(tzinfo=UTC) if at.tzinfo is None else at.astimezone(UTC)


def text_hash(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


# -- glued tokens ----------------------------------------------------------------------------

# A token as the full-text tokenizers cut it (a run of letters and digits) and the parts of a
# glued one: capitals before a capitalized word, a word, capitals, digits.
TOKEN = re.compile(r"[^\W_]+")
GLUED_PART = re.compile(r"[A-Z]+(?=[A-Z][a-z])|[A-Z]?[a-z]+|[A-Z]+|[0-9]+")
HEX = re.compile(r"(0x)?[0-9a-fA-F]+")


def glued_parts(token: str) -> list[str]:
    """The parts of a token glued at letter/digit or camelCase boundaries (`7163Calories`:
    7163, Calories; `isSimPinSecure`: is, Sim, Pin, Secure), one-character parts left out;
    [] when it is not glued. Hex numbers and non-ASCII words are not split: their parts would
    be noise."""
    if not token.isascii() or HEX.fullmatch(token):
        return []
    parts = GLUED_PART.findall(token)
    return [p for p in parts if len(p) > 1] if len(parts) > 1 else []


def search_extra(text: str, heading: str | None = None) -> str:
    """What the full-text index holds beside a passage's text: the distinct parts of its glued
    tokens, so that "calories" finds `totalSteps=7163Calories:153367`, and a report's title
    and section (its heading), so that a question naming the report ("the capacity test")
    finds the passage of its answer, not only the title's."""
    parts = dict.fromkeys(p for token in TOKEN.findall(text) for p in glued_parts(token))
    return " ".join([*parts, heading] if heading else parts)


# -- sources -------------------------------------------------------------------------------

def sync_sources(conn: Connection, folders: Sequence) -> None:
    """Record the configured watched folders (WatchedFolder); ones no longer named are marked
    removed, not deleted, so their documents keep a source."""
    at = utcnow()
    known = {r.path: r for r in conn.execute(select(sources))}
    named = set()
    for folder in folders:
        path = str(folder.path)
        named.add(path)
        values = {"kind": folder.kind, "include": json.dumps(list(folder.include)),
                  "exclude": json.dumps(list(folder.exclude)), "polling": folder.polling,
                  "removed_at": None}
        if path in known:
            conn.execute(update(sources).where(sources.c.path == path).values(**values))
        else:
            conn.execute(insert(sources).values(path=path, added_at=at, **values))
    for path, row in known.items():
        if path not in named and row.removed_at is None:
            conn.execute(update(sources).where(sources.c.path == path).values(removed_at=at))


def active_sources(conn: Connection) -> list[Row]:
    return list(conn.execute(select(sources).where(sources.c.removed_at.is_(None))
                             .order_by(sources.c.path)))


# -- documents -----------------------------------------------------------------------------

def live_document(conn: Connection, path: str) -> Row | None:
    return conn.execute(select(documents).where(documents.c.node == node_of(conn),
                                                documents.c.path == path,
                                                documents.c.deleted_at.is_(None))).first()


def documents_with_identity(conn: Connection, device: int, inode: int) -> list[Row]:
    """Live or deleted documents last seen with this (device, inode), newest first."""
    return list(conn.execute(
        select(documents).where(documents.c.node == node_of(conn), documents.c.device == device,
                                documents.c.inode == inode)
        .order_by(documents.c.deleted_at.is_not(None), documents.c.changed_at.desc())))


def live_documents(conn: Connection, under: str | None = None) -> list[Row]:
    query = select(documents).where(documents.c.node == node_of(conn),
                                    documents.c.deleted_at.is_(None))
    if under is not None:
        query = query.where(documents.c.path.startswith(under.rstrip("/") + "/",
                                                        autoescape=True))
    return list(conn.execute(query.order_by(documents.c.path)))


def insert_document(conn: Connection, **fields) -> int:
    at = utcnow()
    fields = {"first_seen": at, "last_seen": at, "changed_at": at} | fields
    if node_of(conn):  # else the column's default: a single-host document has no node
        fields.setdefault("node", node_of(conn))
    return conn.execute(insert(documents).values(**fields)).inserted_primary_key[0]


def update_document(conn: Connection, document_id: int, **fields) -> None:
    conn.execute(update(documents).where(documents.c.id == document_id)
                 .values(last_seen=utcnow(), **fields))


def retire_document(conn: Connection, document_id: int) -> None:
    """Deleted: never a candidate again, but its passages stay for the answers that cite them."""
    at = utcnow()
    retire_passages(conn, document_id, at=at)
    update_document(conn, document_id, deleted_at=at, status="deleted")


def revive_document(conn: Connection, document: Row, path: str) -> None:
    """A deleted document found again under a new path (a move seen as delete + create)."""
    conn.execute(update(passages).where(passages.c.document_id == document.id,
                                        passages.c.retired_at == document.deleted_at)
                 .values(live=True, retired_at=None))
    update_document(conn, document.id, path=path, deleted_at=None, status="ready")


# -- passages ------------------------------------------------------------------------------

def live_passages(conn: Connection, document_id: int) -> list[Row]:
    return list(conn.execute(
        select(passages).where(passages.c.document_id == document_id, passages.c.live)
        .order_by(passages.c.ordinal)))


def retire_passages(conn: Connection, document_id: int, from_ordinal: int = 0,
                    at: datetime | None = None) -> None:
    conn.execute(update(passages).where(passages.c.document_id == document_id,
                                        passages.c.live, passages.c.ordinal >= from_ordinal)
                 .values(live=False, retired_at=at or utcnow()))


def insert_passages(conn: Connection, document_id: int, cut: Sequence, tokenizer: str) -> None:
    """Store chunk.Passage records for a document."""
    if not cut:
        return
    at = utcnow()
    conn.execute(insert(passages), [{
        "document_id": document_id, "ordinal": p.ordinal, "text": p.text,
        "text_hash": text_hash(p.text), "search_extra": search_extra(p.text, p.heading),
        "token_count": p.token_count,
        "first_line": p.first_line, "last_line": p.last_line, "page": p.page,
        "byte_start": p.byte_start, "byte_end": p.byte_end, "heading": p.heading,
        "split": p.split, "tokenizer": tokenizer, "live": True, "created_at": at,
    } for p in cut])


# -- failures ------------------------------------------------------------------------------

def record_failure(conn: Connection, path: str, stage: str, code: str, message: str,
                   size: int | None, mtime_ns: int | None) -> None:
    clear_failure(conn, path)
    conn.execute(insert(failures).values(node=node_of(conn), path=path, stage=stage, code=code,
                                         message=message, size=size, mtime_ns=mtime_ns,
                                         at=utcnow()))


def failure_for(conn: Connection, path: str) -> Row | None:
    return conn.execute(select(failures).where(failures.c.node == node_of(conn),
                                               failures.c.path == path)).first()


def clear_failure(conn: Connection, path: str) -> None:
    conn.execute(delete(failures).where(failures.c.node == node_of(conn),
                                        failures.c.path == path))


def all_failures(conn: Connection) -> list[Row]:
    return list(conn.execute(select(failures).order_by(failures.c.at.desc())))


# -- memory ----------------------------------------------------------------------------------

def missing_memory(fingerprint: str):
    """A condition on passages: the text has no memory under this model yet."""
    return ~select(memories.c.id).where(memories.c.fingerprint == fingerprint,
                                        memories.c.text_hash == passages.c.text_hash).exists()


def backlog(conn: Connection, fingerprint: str, limit: int) -> list[tuple[str, str]]:
    """(text hash, text) of live passages with no memory under this model, oldest first."""
    first = (select(passages.c.text_hash, func.min(passages.c.id).label("id"))
             .where(passages.c.live, missing_memory(fingerprint))
             .group_by(passages.c.text_hash).order_by(func.min(passages.c.id)).limit(limit)
             .subquery())
    rows = conn.execute(select(passages.c.text_hash, passages.c.text)
                        .join(first, passages.c.id == first.c.id).order_by(passages.c.id))
    return [(r.text_hash, r.text) for r in rows]


def backlog_size(conn: Connection, fingerprint: str | None) -> int:
    """Distinct live texts waiting for compression (with no model: all of them)."""
    query = select(func.count(func.distinct(passages.c.text_hash))).where(passages.c.live)
    if fingerprint is not None:
        query = query.where(missing_memory(fingerprint))
    return conn.execute(query).scalar_one()


def add_memories(conn: Connection, fingerprint: str, rows: Iterable[tuple[str, int]]) -> None:
    """Map text hashes to memory rows; a hash that already has a row keeps it."""
    at = utcnow()
    values = [{"text_hash": h, "fingerprint": fingerprint, "row": r, "created_at": at}
              for h, r in rows]
    dialect_insert = postgresql_insert if conn.dialect.name == "postgresql" else sqlite_insert
    conn.execute(dialect_insert(memories).on_conflict_do_nothing(), values)


def memory_rows(conn: Connection, fingerprint: str) -> list[tuple[int, int]]:
    """(passage id, memory row) of every live passage whose memory exists: the candidates."""
    return [(r.id, r.row) for r in conn.execute(
        select(passages.c.id, memories.c.row)
        .join(memories, and_(memories.c.text_hash == passages.c.text_hash,
                             memories.c.fingerprint == fingerprint))
        .where(passages.c.live).order_by(passages.c.id))]


def candidate_rows(conn: Connection, model: str | None) -> list[Row]:
    """Every live passage that has memory under this model, with what scopes filter on.
    With no model (the text engine reads text) every live passage, its memory row -1."""
    query = (select(passages.c.id, documents.c.path, documents.c.kind, passages.c.created_at)
             .join(documents, documents.c.id == passages.c.document_id)
             .where(passages.c.live).order_by(passages.c.id))
    if model is None:
        return list(conn.execute(query.add_columns(literal(-1).label("row"))))
    return list(conn.execute(query.add_columns(memories.c.row).join(
        memories, and_(memories.c.text_hash == passages.c.text_hash,
                       memories.c.fingerprint == model))))


def candidates_through(conn: Connection, model: str | None) -> int:
    """The highest passage id up to which every live passage is one of candidate_rows: the
    newest passage, or under a model the one before the first still waiting for memory."""
    newest = conn.execute(select(func.max(passages.c.id))).scalar() or 0
    if model is None:
        return newest
    waiting = conn.execute(select(func.min(passages.c.id))
                           .where(passages.c.live, missing_memory(model))).scalar()
    return newest if waiting is None else waiting - 1


def search_passages(conn: Connection, terms: Sequence[str], limit: int,
                    held: Sequence[str] = ()) -> list[Row]:
    """Live passages holding any of the terms (each one matched as a phrase), and one of the
    `held` phrases if any are given, best first by the database's BM25-style ranking of the
    terms: (id, text_hash, score), higher scores better."""
    if not terms:
        return []
    if conn.dialect.name == "sqlite":
        # each term a quoted FTS5 string, so its punctuation and words like NEAR are text
        match = " OR ".join(fts5_string(t) for t in terms)
        if held:
            match = f"({match}) AND ({' OR '.join(fts5_string(t) for t in held)})"
        return list(conn.execute(sql(
            "SELECT p.id, p.text_hash, -bm25(passages_fts) AS score FROM passages_fts "
            "JOIN passages p ON p.id = passages_fts.rowid WHERE passages_fts MATCH :match "
            "ORDER BY score DESC, p.id DESC LIMIT :limit"), {"match": match, "limit": limit}))
    params = {f"t{i}": t for i, t in enumerate(terms)}
    held_params = {f"h{i}": t for i, t in enumerate(held)}
    held_match = (" AND p.search_vector @@ (" + " || ".join(
        f"phraseto_tsquery('english', :{name})" for name in held_params) + ")") if held else ""
    return list(conn.execute(sql(
        f"SELECT p.id, p.text_hash, ts_rank_cd(p.search_vector, q.query) AS score "
        f"FROM passages p, (SELECT {any_phrase(params)} AS query) q "
        f"WHERE p.live AND p.search_vector @@ q.query{held_match} "
        "ORDER BY score DESC, p.id DESC LIMIT :limit"), params | held_params | {"limit": limit}))


def fts5_string(term: str) -> str:
    return '"' + term.replace('"', '""') + '"'


def any_phrase(params: dict[str, str]) -> str:
    """A tsquery matching any of the named phrases. A phrase PostgreSQL would cut short,
    dropping a stop word of its own (`out` of "time out", a cut of the question's `timeout`),
    is left out: the word left is a term already or one the question does not have, which
    would find every passage holding it."""
    return " || ".join(
        f"(CASE WHEN numnode(phraseto_tsquery('english', :{name})) = "
        f"numnode(phraseto_tsquery('simple', :{name})) THEN phraseto_tsquery('english', :{name}) "
        "ELSE ''::tsquery END)" for name in params)


def term_frequencies(conn: Connection, terms: Sequence[str], cap: int) -> dict[str, int]:
    """How many live passages hold each term (matched as search_passages matches it), counted
    up to `cap`: beyond it a term is common, and counting further costs time on a big store."""
    if conn.dialect.name == "sqlite":
        query = ("SELECT count(*) FROM (SELECT 1 FROM passages_fts WHERE passages_fts MATCH "
                 ":match LIMIT :cap) t")
    else:
        # a term PostgreSQL drops as a stop word (`not`) matches nothing there: it is common
        query = ("SELECT CASE WHEN numnode(phraseto_tsquery('english', :match)) = 0 THEN :cap "
                 "ELSE (SELECT count(*) FROM (SELECT 1 FROM passages p WHERE p.live AND "
                 "p.search_vector @@ phraseto_tsquery('english', :match) LIMIT :cap) t) END")
    sqlite = conn.dialect.name == "sqlite"
    return {term: conn.execute(sql(query), {
        "match": fts5_string(term) if sqlite else term, "cap": cap,
    }).scalar_one() for term in terms}


def count_live_passages(conn: Connection) -> int:
    return conn.execute(select(func.count()).where(passages.c.live)).scalar_one()


def passages_with_all(conn: Connection, terms: Sequence[str], limit: int) -> list[Row]:
    """Live passages holding every one of the terms (each matched as a phrase), with their
    place as passage_places gives it, by document and first line, at most `limit`: the
    passages a count or a first/last question scans whole, not the best few."""
    if not terms:
        return []
    # the index holds a glued word and its parts, not its other runs of parts: `NotReady` of
    # `NodeNotReady` is found by Not and Ready (the caller checks each line for the whole term)
    terms = list(dict.fromkeys(part for t in terms
                               for part in (t.isalpha() and glued_parts(t) or [t])))
    order = "ORDER BY p.document_id, p.first_line, p.page, p.id LIMIT :limit"
    if conn.dialect.name == "sqlite":
        match = " AND ".join(fts5_string(t) for t in terms)
        ids = conn.execute(sql(
            "SELECT p.id FROM passages_fts JOIN passages p ON p.id = passages_fts.rowid "
            f"WHERE passages_fts MATCH :match AND p.live {order}"),
            {"match": match, "limit": limit}).scalars().all()
    else:
        params = {f"t{i}": t for i, t in enumerate(terms)}
        # a term of stop words only (`not`) is an empty query, which && passes over: the
        # caller checks every line for every term anyway
        query = " && ".join(f"phraseto_tsquery('english', :{name})" for name in params)
        ids = conn.execute(sql(
            f"SELECT p.id FROM passages p, (SELECT {query} AS query) q "
            f"WHERE p.live AND p.search_vector @@ q.query {order}"),
            params | {"limit": limit}).scalars().all()
    places = passage_places(conn, ids)  # through the schema's types: paths come back as written
    return [places[i] for i in ids]


def passage_places(conn: Connection, passage_ids: Sequence[int]) -> dict[int, Row]:
    """Where passages come from: document path, lines or page, and their text."""
    rows = conn.execute(
        select(passages.c.id, passages.c.first_line, passages.c.last_line, passages.c.page,
               passages.c.text, passages.c.heading, documents.c.path, documents.c.kind,
               documents.c.node)
        .join(documents, documents.c.id == passages.c.document_id)
        .where(passages.c.id.in_(list(passage_ids))))
    return {r.id: r for r in rows}


# -- status --------------------------------------------------------------------------------

def counts(conn: Connection, fingerprint: str | None) -> dict:
    by_status = dict(conn.execute(select(documents.c.status, func.count())
                                  .group_by(documents.c.status)).all())
    live = conn.execute(select(func.count()).where(passages.c.live)).scalar_one()
    return {
        "documents": by_status,
        "passages": live,
        "failures": conn.execute(select(func.count()).select_from(failures)).scalar_one(),
        "backlog": backlog_size(conn, fingerprint),
    }


def status(conn: Connection, fingerprint: str | None) -> dict:
    """What `kbd status` shows from the store: counts, backlog and files that failed."""
    return counts(conn, fingerprint) | {"failed_files": [
        {"node": f.node, "path": f.path, "stage": f.stage, "code": f.code, "message": f.message}
        for f in all_failures(conn)]}


def documents_to_recut(conn: Connection, tokenizer: str) -> list[Row]:
    """Live documents not yet cut, or cut for another tokenizer."""
    return list(conn.execute(select(documents).where(
        documents.c.node == node_of(conn), documents.c.deleted_at.is_(None),
        or_(documents.c.tokenizer.is_(None), documents.c.tokenizer != tokenizer))))
