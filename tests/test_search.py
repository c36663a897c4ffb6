"""Full-text search, the lexical half of the text engine's retrieval: the store's own index
(SQLite FTS5 with bm25(), PostgreSQL tsvector with ts_rank_cd) kept in step with ingest, on
both databases. The fusion with the dense ranking: tests/test_retrieve.py."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from sqlalchemy import select, text
from support.harness import database_at

from kbd.ingest.pipeline import Ingester
from kbd.model.tokens import PassageTokenizer
from kbd.retrieve import bm25, compound_forms, joined_words, lexical_ranking, search_terms
from kbd.store import Store
from kbd.store import queries as q
from kbd.store.schema import documents

ROOT = Path(__file__).resolve().parents[1]
LOGHUB = ROOT.parent / "shared" / "data" / "loghub"
PLANTED = ("081109 214043 2561 ERROR dfs.DataNode: Disk full on datanode 10.251.91.84: "
           "No space left on device")


@pytest.fixture
def ingester(store, e2e_dir) -> Ingester:
    return Ingester(store, PassageTokenizer.load(e2e_dir))


def texts(store: Store, hits: list[tuple[int, float]]) -> list[str]:
    with store.read() as conn:
        places = q.passage_places(conn, [pid for pid, _ in hits])
    return [places[pid].text for pid, _ in hits]


def log(path: Path, lines: list[str]) -> Path:
    path.write_text("".join(f"{line}\n" for line in lines))
    return path


class TestTerms:
    def test_words_without_stop_words_or_outer_punctuation(self):
        assert search_terms("Which node ran out of disk space?") == [
            "node", "ran", "out", "disk", "space"]

    def test_inner_punctuation_stays_one_phrase(self):
        assert search_terms('Who sent "blk_-1608999687919862906" to 10.251.91.84:50010?') == [
            "sent", "blk_-1608999687919862906", "10.251.91.84:50010"]

    def test_glued_words_are_followed_by_their_parts(self):
        assert search_terms("How many 7163Calories today?") == [
            "many", "7163Calories", "7163", "Calories", "today"]
        assert search_terms("isSimPinSecure and HTTPServer") == [
            "isSimPinSecure", "is", "Sim", "Pin", "Secure", "HTTPServer", "HTTP", "Server"]

    def test_hex_and_one_letter_parts_are_not_split_out(self):
        assert search_terms("0x1f3a 3a5f8c2e v2") == ["0x1f3a", "3a5f8c2e", "v2"]

    def test_only_stop_words_are_kept_rather_than_nothing(self):
        assert search_terms("Who was it? who") == ["Who", "was", "it"]
        assert search_terms("??? - -- ...") == []

    def test_compounds_are_searched_written_the_other_way(self):
        """Adjacent words joined (not across a stop word), and a word cut in two, every cut
        with parts of three letters or more that are no stop words."""
        assert joined_words("Who logged in with a public key?") == ["publickey"]
        assert compound_forms("Who logged in with a public key?") == [
            "publickey", "log ged", "pub lic"]
        assert compound_forms("Which timeout?") == ["tim eout", "time out"]
        assert compound_forms("10.0.0.5 ssh2") == []


@pytest.mark.skipif(not LOGHUB.is_dir(), reason=f"{LOGHUB} not present")
def test_question_words_find_the_planted_line(ingester, tmp_path):
    lines = (LOGHUB / "HDFS_2k.log").read_text().splitlines()
    lines.insert(1000, PLANTED)
    ingester.ingest(log(tmp_path / "HDFS_2k.log", lines))
    shutil.copy(LOGHUB / "OpenSSH_2k.log", tmp_path / "OpenSSH_2k.log")
    ingester.ingest(tmp_path / "OpenSSH_2k.log")
    hits = bm25(ingester.store, "Which node ran out of disk space?", None, 5)
    # only the planted line has "disk" and "space"; others have "node" (in DataNode) at most
    assert PLANTED in texts(ingester.store, hits)[0]
    assert all(hits[0][1] > 2 * score for _, score in hits[1:]), hits
    block = "blk_-8775602795571523802"  # a log's own tokens, found as they are written
    found = texts(ingester.store, bm25(ingester.store, f"What happened to {block}?", None, 5))
    assert found and all(block in t for t in found)


@pytest.mark.parametrize("question", [
    "How many calories?", "total steps", "What was 7163?", "7163Calories"])
def test_glued_tokens_are_found_by_their_parts(ingester, tmp_path, question):
    """A log's `7163Calories` is one token to both databases' tokenizers: its parts are
    indexed beside it (the original too), and the question's glued words split the same way."""
    ingester.ingest(log(tmp_path / "steps.log", [
        "20171223-22:15:29:606|Step_LSC|30002312|onStandStepChanged 3579",
        "20171223-22:15:42:001|Step_LSC|30002312|onExtend:1514038530000 14 0 4"]))
    ingester.ingest(log(tmp_path / "health.log", [
        "20171223-22:15:41:672|Step_SPUtils|30002312|getTodayTotalDetailSteps = "
        "totalSteps=7163Calories:153367"]))
    found = texts(ingester.store, bm25(ingester.store, question, None, 5))
    assert "7163Calories" in found[0]


def test_camel_case_identifiers_answer_plain_words(ingester, tmp_path):
    ingester.ingest(log(tmp_path / "phone.log", [
        "12-17 19:31:36.263 1795 1825 I PowerManager: isSimPinSecure=false",
        "12-17 19:31:36.264 1795 1825 I PowerManager: screen on, sim card ready"]))
    found = texts(ingester.store, bm25(ingester.store, "Is the SIM PIN secure?", None, 5))
    assert "isSimPinSecure" in found[0]
    assert texts(ingester.store, bm25(ingester.store, "simPin", None, 5)) == found[:1]


def test_adjacent_question_words_rank_as_a_phrase(sqlite_ingester, tmp_path):
    """"variable 2" as the question words it beats lines with "variable" and some other 2."""
    ingester = sqlite_ingester
    for i, took in ((2, 43), (12, 2), (20, 2)):
        ingester.ingest(log(tmp_path / f"v{i}.log", [
            f"17/06/09 20:11:{i:02d} INFO broadcast.TorrentBroadcast: Reading broadcast variable "
            f"{i} took {took} ms"]))
    found = texts(ingester.store, bm25(ingester.store, "How long did reading broadcast "
                                                       "variable 2 take?", None, 3))
    assert "variable 2 took" in found[0]


@pytest.mark.parametrize("question, line", [
    ("Who logged in with a public key?", "Accepted publickey for git from 10.0.0.5 port 51000"),
    ("Who logged in with publickey?", "Accepted public key for git from 10.0.0.5 port 51000"),
    ("Which host name was wrong?", "bad hostname in the certificate: web-1"),
])
def test_a_compound_is_found_however_it_is_written(ingester, tmp_path, question, line):
    """No word of the question but its compound, written the other way, is in the line."""
    ingester.ingest(log(tmp_path / "auth.log", [line]))
    ingester.ingest(log(tmp_path / "other.log", [
        f"Dec 10 06:55:{i:02d} sshd[24200]: Failed password for root from 10.0.0.{i}"
        for i in range(20)]))
    assert texts(ingester.store, bm25(ingester.store, question, None, 5)) == [line]


def test_a_cut_is_not_searched_for_its_one_word(ingester, tmp_path):
    """`timeout` cut as "time out": PostgreSQL drops `out` as a stop word, and the phrase
    must not then find every passage with `time`."""
    ingester.ingest(log(tmp_path / "ntp.log", ["Dec 10 06:55:46 ntpd[311]: time synchronized"]))
    assert bm25(ingester.store, "Which timeout?", None, 5) == []


def test_stop_words_do_not_dominate(ingester, tmp_path):
    ingester.ingest(log(tmp_path / "a.log", [
        f"2026-11-23 10:00:{i:02d} the job of the day is what it is and was" for i in range(30)]
        + ["2026-11-23 10:01:00 disk full on node 7"]))
    hits = bm25(ingester.store, "What is the disk full error?", None, 5)
    assert [t.count("disk full") for t in texts(ingester.store, hits)] == [1]


@pytest.mark.parametrize("question, found", [
    ('the "quoted" one', True), ("node-7 - -x", True), ("NEAR(a b) AND OR NOT", True),
    ("blk_* ^start col:umn", True), ("ÚDRŽBA disku č. 7", True), ("(unbalanced", False),
    ("'; DROP TABLE passages; --", False), ("\\ % _ ?", False)])
def test_any_question_is_a_safe_query(ingester, tmp_path, question, found):
    """Quotes, operators and SQL in a question are its words, never query syntax."""
    ingester.ingest(log(tmp_path / "a.log", ["node-7 quoted NEAR a b: start column 7 disku"]))
    assert len(bm25(ingester.store, question, None, 5)) == found


def test_phrases_match_whole_addresses(ingester, tmp_path):
    for name, address in (("a.log", "10.251.91.84:50010"), ("b.log", "10.251.91.85")):
        ingester.ingest(log(tmp_path / name, [f"2026-11-23 10:00:00 served {address}"]))
    assert texts(ingester.store, bm25(ingester.store, "10.251.91.84", None, 5)) == [
        "2026-11-23 10:00:00 served 10.251.91.84:50010"]
    assert bm25(ingester.store, "10.251.91.86", None, 5) == []


def test_retired_passages_leave_the_index_and_revived_return(ingester, tmp_path):
    path = log(tmp_path / "app.log", ["2026-11-23 10:00:00 alpha failed"])
    ingester.ingest(path)
    with path.open("a") as f:  # growth redoes the last passage: the old one is retired
        f.write("2026-11-23 10:00:01 beta failed\n")
    ingester.ingest(path)
    hits = bm25(ingester.store, "alpha", None, 5)
    assert len(hits) == 1 and "beta" in texts(ingester.store, hits)[0]
    path.unlink()
    ingester.ingest(path)
    assert bm25(ingester.store, "alpha", None, 5) == []
    with ingester.store.read() as conn:
        deleted = conn.execute(select(documents).where(documents.c.path == str(path))).one()
    ingester.store.write(lambda conn: q.revive_document(conn, deleted, str(path)))
    assert bm25(ingester.store, "alpha", None, 5) == hits


def test_scope_reads_past_the_first_hits(ingester, tmp_path):
    ingester.ingest(log(tmp_path / "busy.log", [
        f"2026-11-23 10:{i // 60:02d}:{i % 60:02d} disk error disk error {i}" for i in range(600)]))
    ingester.ingest(log(tmp_path / "quiet.log", [
        f"2026-11-23 11:00:{i:02d} service started and listening" for i in range(20)]
        + ["2026-11-23 11:01:00 one disk error"]))
    with ingester.store.read() as conn:
        quiet = q.live_passages(conn, q.live_document(conn, str(tmp_path / "quiet.log")).id)
    allowed = {p.id for p in quiet}
    best = [pid for pid, _ in bm25(ingester.store, "disk error", None, 12)]
    assert len(best) == 12 and allowed.isdisjoint(best)  # ranked below the busy passages
    assert [pid for pid, _ in bm25(ingester.store, "disk error", allowed, 3)] == [
        p.id for p in quiet if "disk error" in p.text]


def test_identical_texts_count_once(ingester, tmp_path):
    for name in ("a.log", "b.log"):
        ingester.ingest(log(tmp_path / name, ["2026-11-23 10:00:00 kernel panic on node 3"]))
    hits = bm25(ingester.store, "kernel panic", None, 5)
    with ingester.store.read() as conn:
        newest = q.live_passages(conn, q.live_document(conn, str(tmp_path / "b.log")).id)[0]
    assert [pid for pid, _ in hits] == [newest.id]


def test_existing_passages_are_indexed_on_upgrade(store_url, tmp_path):
    """A database at revision 0004 with passages, live and retired, is searchable (live ones
    only) once kbd opens it."""
    with database_at(store_url, "0004") as conn:
        conn.execute(text(
            "INSERT INTO documents (id, path, kind, size, mtime_ns, status, \"offset\", "
            "rotations, first_seen, last_seen, changed_at) VALUES (1, '/old.log', 'log', 1, 1, "
            "'ready', 0, 0, CURRENT_TIMESTAMP, CURRENT_TIMESTAMP, CURRENT_TIMESTAMP)"))
        for pid, body, live in ((1, "old disk full error", True), (2, "old retired disk", False)):
            conn.execute(text(
                "INSERT INTO passages (id, document_id, ordinal, text, text_hash, token_count, "
                "split, tokenizer, live, created_at) VALUES (:id, 1, :id, :t, :h, 3, false, "
                "'tok', :live, CURRENT_TIMESTAMP)"),
                {"id": pid, "t": body, "h": q.text_hash(body), "live": live})
    store = Store.open(store_url, tmp_path / "memory")
    assert [pid for pid, _ in bm25(store, "disk", None, 5)] == [1]
    store.close()


def test_glued_tokens_of_existing_passages_are_split_on_upgrade(store_url, tmp_path):
    """A database at revision 0005 (before glued tokens were split) finds them once kbd
    opens it; their passages' later changes keep the index in step."""
    with database_at(store_url, "0005") as conn:
        conn.execute(text(
            "INSERT INTO documents (id, path, kind, size, mtime_ns, status, \"offset\", "
            "rotations, first_seen, last_seen, changed_at) VALUES (1, '/old.log', 'log', 1, 1, "
            "'ready', 0, 0, CURRENT_TIMESTAMP, CURRENT_TIMESTAMP, CURRENT_TIMESTAMP)"))
        body = "totalSteps=7163Calories:153367"
        conn.execute(text(
            "INSERT INTO passages (id, document_id, ordinal, text, text_hash, token_count, "
            "split, tokenizer, live, created_at) VALUES (1, 1, 0, :t, :h, 3, false, 'tok', "
            "true, CURRENT_TIMESTAMP)"), {"t": body, "h": q.text_hash(body)})
    store = Store.open(store_url, tmp_path / "memory")
    assert [pid for pid, _ in bm25(store, "calories", None, 5)] == [1]
    store.write(lambda conn: q.retire_passages(conn, 1))
    assert bm25(store, "calories", None, 5) == []
    store.close()


def test_a_reports_passage_is_found_by_its_heading(ingester, tmp_path):
    """A question naming the report ("the Spark capacity test") and a row of one of its
    tables finds the table: its title and section are indexed with each passage, so the
    title's passage is not the only one holding the report's name, and far ahead of the rest
    (BM25's vote in the fusion leaves out what scores under half the best)."""
    for path in [ROOT / "bench" / "qa" / "reports" / "capacity-test-ct-77.rst",
                 LOGHUB / "Spark_2k.log"]:
        shutil.copy(path, tmp_path)
        ingester.ingest(tmp_path / path.name)
    question = "How long did run R1 take in the Spark capacity test?"
    found = texts(ingester.store, lexical_ranking(ingester.store, question, None, 5))
    assert any("| R1    | 24" in text for text in found), found
