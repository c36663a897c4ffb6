"""Ingest on real files: loghub logs, growth, moves, rotation with the real logrotate, bad
files, no model, re-cutting, and compression of the backlog. Runs on SQLite and PostgreSQL."""

from __future__ import annotations

import gzip
import os
import shutil
import subprocess
from pathlib import Path

import pytest
from sqlalchemy import select
from support.harness import lines_of, nonblank_lines

from kbd.ingest import pipeline as ingest_module
from kbd.ingest.pipeline import Ingester, Limits
from kbd.model.tokens import PassageTokenizer
from kbd.runtime.compress import Compressor, compress_backlog, memory_id, open_matrix
from kbd.store import queries as q
from kbd.store.schema import documents, passages

LOGHUB = Path(__file__).resolve().parents[2] / "shared" / "data" / "loghub"
needs_loghub = pytest.mark.skipif(not LOGHUB.is_dir(), reason=f"{LOGHUB} not present")


@pytest.fixture(scope="session")
def tokenizer(e2e_dir) -> PassageTokenizer:
    return PassageTokenizer.load(e2e_dir)


@pytest.fixture
def ingester(store, tokenizer) -> Ingester:
    return Ingester(store, tokenizer)


def live(store, path: Path) -> list:
    with store.read() as conn:
        doc = q.live_document(conn, str(path))
        return q.live_passages(conn, doc.id) if doc else []


def write_log(path: Path, first: int, count: int) -> None:
    with path.open("a") as f:
        for i in range(first, first + count):
            f.write(f"2026-11-23 10:{i // 60:02d}:{i % 60:02d} node {i} disk full error\n")


class TestGrowing:
    """Files handed out while still being written (a busy log, a slow copy)."""

    def test_a_growing_log_gives_its_whole_lines_and_the_half_line_waits(self, ingester,
                                                                          tmp_path):
        path = tmp_path / "app.log"
        write_log(path, 0, 10)
        with path.open("a") as f:
            f.write("2026-11-23 10:00:10 node 10 disk fu")  # the writer is mid-line
        assert ingester.ingest(path, growing=True) == "added"
        assert lines_of(live(ingester.store, path)) == list(range(1, 11))
        assert ingester.ingest(path, growing=True) == "growing"  # no whole line since
        with path.open("a") as f:
            f.write("ll error\n")
        write_log(path, 11, 5)
        assert ingester.ingest(path, growing=True) == "appended"
        rows = live(ingester.store, path)
        assert lines_of(rows) == list(range(1, 17))
        assert "node 10 disk full error" in "\n".join(r.text for r in rows)
        with path.open("a") as f:
            f.write("2026-11-23 10:00:16 node 16 shut down")  # the writer stopped here
        assert ingester.ingest(path) == "appended"  # gone quiet: a last line is a line too
        assert lines_of(live(ingester.store, path)) == nonblank_lines(path)

    def test_a_rescan_leaves_the_files_a_watcher_holds_to_it(self, ingester, tmp_path):
        busy, quiet = tmp_path / "busy.log", tmp_path / "quiet.log"
        write_log(busy, 0, 3)
        write_log(quiet, 0, 3)
        scanned = [(busy, None, "auto"), (quiet, None, "auto")]
        assert ingester.reconcile(scanned, held=lambda path: path == busy) == {"added": 1}
        assert live(ingester.store, busy) == []
        assert ingester.reconcile(scanned) == {"added": 1, "unchanged": 1}

    def test_a_growing_report_waits_until_it_goes_quiet(self, ingester, tmp_path):
        path = tmp_path / "notes.md"
        path.write_text("# Notes\n\nThe first para")
        assert ingester.ingest(path, growing=True) == "growing"
        assert live(ingester.store, path) == []
        assert ingester.ingest(path) == "added"
        assert live(ingester.store, path)


class TestLogs:
    @needs_loghub
    def test_loghub_every_line_once_within_the_limit(self, ingester, tokenizer, tmp_path):
        for name in ("HDFS_2k.log", "OpenSSH_2k.log", "Apache_2k.log"):
            path = Path(shutil.copy(LOGHUB / name, tmp_path / name))
            assert ingester.ingest(path) == "added"
            rows = live(ingester.store, path)
            assert lines_of(rows) == nonblank_lines(path)
            assert all(p.token_count <= tokenizer.max_tokens for p in rows)
            assert tokenizer.count([rows[3].text]) == [rows[3].token_count]
            data = path.read_bytes()
            first = rows[0]
            assert data[first.byte_start:first.byte_end].decode().startswith(
                first.text.split("\n")[0])

    def test_unchanged_is_not_read(self, ingester, tmp_path, monkeypatch):
        path = tmp_path / "app.log"
        write_log(path, 0, 50)
        assert ingester.ingest(path) == "added"
        monkeypatch.setattr("kbd.ingest.pipeline.parse", lambda *a, **k: pytest.fail("re-read"))
        assert ingester.ingest(path) == "unchanged"

    def test_growth_redoes_only_the_last_passage(self, ingester, tmp_path):
        path = tmp_path / "app.log"
        write_log(path, 0, 200)
        ingester.ingest(path)
        before = live(ingester.store, path)
        write_log(path, 200, 100)
        assert ingester.ingest(path) == "appended"
        after = live(ingester.store, path)
        kept = [p.id for p in before[:-1]]
        assert [p.id for p in after[:len(kept)]] == kept  # old passages untouched
        assert lines_of(after) == list(range(1, 301))
        assert [p.ordinal for p in after] == list(range(len(after)))

    def test_partial_last_line_completed(self, ingester, tmp_path):
        path = tmp_path / "app.log"
        write_log(path, 0, 10)
        with path.open("a") as f:
            f.write("2026-11-23 half a li")
        ingester.ingest(path)
        with path.open("a") as f:
            f.write("ne now complete\n")
        assert ingester.ingest(path) == "appended"
        rows = live(ingester.store, path)
        assert rows[-1].text.endswith("half a line now complete")
        assert lines_of(rows) == list(range(1, 12))

    def test_lines_written_between_stat_and_read_wait_for_the_next_ingest(
            self, ingester, tmp_path, monkeypatch):
        """The ingest stores what its stat saw, so the size it records matches the bytes it
        read; the lines written meanwhile come with the next ingest, as an append."""
        path = tmp_path / "race.log"
        write_log(path, 0, 3)
        stages = list(ingest_module.STAGES)
        stages.insert(stages.index(ingest_module.read), lambda ing, job: write_log(path, 3, 2))
        monkeypatch.setattr(ingest_module, "STAGES", stages)
        assert ingester.ingest(path) == "added"
        assert lines_of(live(ingester.store, path)) == [1, 2, 3]
        with ingester.store.read() as conn:
            doc = q.live_document(conn, str(path))
        assert doc.size == doc.offset < path.stat().st_size
        monkeypatch.undo()
        assert ingester.ingest(path) == "appended"
        assert lines_of(live(ingester.store, path)) == nonblank_lines(path) == [1, 2, 3, 4, 5]

    def test_truncated_and_refilled_past_offset(self, ingester, tmp_path):
        path = tmp_path / "app.log"
        write_log(path, 0, 100)
        ingester.ingest(path)
        path.write_text("")  # truncated while kbd was not looking ...
        write_log(path, 500, 150)  # ... and refilled past the old offset
        assert ingester.ingest(path) == "rotated"
        rows = live(ingester.store, path)
        assert "node 500 " in rows[0].text and lines_of(rows) == list(range(1, 151))
        with ingester.store.read() as conn:
            assert q.live_document(conn, str(path)).rotations == 1

    def test_jsonl_and_gz(self, ingester, tmp_path):
        plain = tmp_path / "events.jsonl"
        plain.write_text('{"ts": "2026-11-23T10:00:00", "level": "ERROR", "msg": "disk full"}\n'
                         '{"ts": "2026-11-23T10:00:01", "level": "INFO", "msg": "recovered"}\n')
        packed = tmp_path / "old.log.2.gz"
        packed.write_bytes(gzip.compress(b"line one\nline two\n"))
        assert ingester.ingest(plain) == "added"
        assert ingester.ingest(packed) == "added"
        assert "disk full" in live(ingester.store, plain)[0].text
        assert lines_of(live(ingester.store, packed)) == [1, 2]


class TestMovesAndDeletes:
    def test_rename_keeps_the_document(self, ingester, tmp_path):
        path = tmp_path / "a.log"
        write_log(path, 0, 30)
        ingester.ingest(path)
        ids = [p.id for p in live(ingester.store, path)]
        moved = tmp_path / "sub" / "b.log"
        moved.parent.mkdir()
        path.rename(moved)
        assert ingester.ingest(moved) == "moved"
        assert [p.id for p in live(ingester.store, moved)] == ids
        assert ingester.ingest(path) == "missing"  # the old path's event finds nothing to do

    def test_delete_then_move_seen_late_revives(self, ingester, tmp_path):
        path = tmp_path / "a.log"
        write_log(path, 0, 30)
        ingester.ingest(path)
        ids = [p.id for p in live(ingester.store, path)]
        target = tmp_path.parent / f"{tmp_path.name}-elsewhere.log"
        path.rename(target)
        assert ingester.ingest(path) == "deleted"  # the delete event came first
        assert live(ingester.store, path) == []
        assert ingester.ingest(target) == "moved"
        assert [p.id for p in live(ingester.store, target)] == ids

    def test_deleted_keeps_passages_but_not_live(self, ingester, tmp_path):
        path = tmp_path / "a.log"
        write_log(path, 0, 30)
        ingester.ingest(path)
        path.unlink()
        assert ingester.ingest(path) == "deleted"
        with ingester.store.read() as conn:
            rows = conn.execute(select(passages.c.live)).all()
            doc = conn.execute(select(documents)).one()
        assert rows and not any(r.live for r in rows)
        assert doc.status == "deleted" and doc.deleted_at is not None

    def test_folder_removed(self, ingester, tmp_path):
        folder = tmp_path / "logs"
        folder.mkdir()
        for name in ("a.log", "b.log"):
            write_log(folder / name, 0, 5)
            ingester.ingest(folder / name)
        shutil.rmtree(folder)
        assert ingester.ingest(folder) == "deleted"
        with ingester.store.read() as conn:
            assert q.live_documents(conn) == []

    def test_atomic_save_rewrites(self, ingester, tmp_path):
        path = tmp_path / "notes.md"
        path.write_text("# Title\n\nfirst version\n")
        ingester.ingest(path)
        temp = tmp_path / "notes.md.tmp"
        temp.write_text("# Title\n\nsecond version\n")
        temp.replace(path)
        assert ingester.ingest(path) in ("rewritten", "rotated", "added")
        assert "second version" in live(ingester.store, path)[0].text
        with ingester.store.read() as conn:
            assert len(q.live_documents(conn)) == 1


def logrotate(tmp_path: Path, log: Path, mode: str) -> None:
    config = tmp_path / "logrotate.conf"
    config.write_text(f"{log} {{\n  rotate 3\n  {mode}\n  nocompress\n  missingok\n}}\n")
    subprocess.run(["logrotate", "-f", "-s", str(tmp_path / "state"), str(config)],
                   check=True, capture_output=True)


@pytest.mark.skipif(shutil.which("logrotate") is None, reason="logrotate not installed")
class TestRotation:
    def all_live_lines(self, store) -> list[str]:
        with store.read() as conn:
            rows = conn.execute(select(passages.c.text).where(passages.c.live)).all()
        return sorted(line for r in rows for line in r.text.split("\n"))

    @pytest.mark.parametrize("mode", ["create", "copytruncate"])
    def test_nothing_lost_or_doubled(self, ingester, tmp_path, mode):
        logs = tmp_path / "logs"
        logs.mkdir()
        path = logs / "app.log"
        write_log(path, 0, 100)
        ingester.ingest(path)
        write_log(path, 100, 20)  # written before the rotation, not yet ingested
        logrotate(tmp_path, path, mode)
        write_log(path, 120, 30)  # the new file
        for p in sorted(logs.iterdir()):
            ingester.ingest(p)
        expected = sorted(f"2026-11-23 10:{i // 60:02d}:{i % 60:02d} node {i} disk full error"
                          for i in range(150))
        assert self.all_live_lines(ingester.store) == expected
        assert (logs / "app.log.1").exists()


class TestBadFiles:
    def test_each_fails_alone_with_a_reason(self, store, tokenizer, tmp_path):
        ingester = Ingester(store, tokenizer, Limits(max_file_bytes=10_000))
        good = tmp_path / "good.log"
        write_log(good, 0, 5)
        junk = tmp_path / "junk.log"
        junk.write_bytes(bytes(range(256)) * 20)
        pdf = tmp_path / "broken.pdf"
        pdf.write_bytes(b"%PDF-1.4\n1 0 obj garbage")
        big = tmp_path / "big.log"
        big.write_text("x\n" * 6000)
        fifo = tmp_path / "pipe.log"
        os.mkfifo(fifo)
        loop = tmp_path / "loop.log"
        loop.symlink_to(loop)
        outcomes = {p.name: ingester.ingest(p) for p in (junk, pdf, big, fifo, loop, good)}
        assert outcomes == {"junk.log": "failed:binary", "broken.pdf": "failed:corrupt-pdf",
                            "big.log": "failed:too-large", "pipe.log": "failed:not-a-file",
                            "loop.log": "failed:symlink-loop", "good.log": "added"}
        with store.read() as conn:
            failures = {Path(f.path).name: f for f in q.all_failures(conn)}
        assert set(failures) == {"junk.log", "broken.pdf", "big.log", "pipe.log", "loop.log"}
        assert "over the limit" in failures["big.log"].message
        assert str(big) in failures["big.log"].message
        # unchanged: not retried; changed: retried and cleared
        assert ingester.ingest(junk) == "failed-unchanged"
        write_log(junk.with_suffix(".tmp"), 0, 3)
        junk.with_suffix(".tmp").replace(junk)
        assert ingester.ingest(junk) == "added"
        with store.read() as conn:
            assert q.failure_for(conn, str(junk)) is None

    def test_names_not_utf8_are_stored_and_fail_alike(self, ingester, tmp_path):
        """os.fsdecode carries a name's bytes that are not UTF-8 as lone surrogates: the path,
        and a failure's message that names it, go in and come back byte for byte."""
        good = Path(os.fsdecode(os.fsencode(tmp_path) + b"/good\xff.log"))
        write_log(good, 0, 3)
        junk = Path(os.fsdecode(os.fsencode(tmp_path) + b"/junk\xfe.log"))
        junk.write_bytes(bytes(range(256)) * 20)
        assert [ingester.ingest(p) for p in (good, junk)] == ["added", "failed:binary"]
        assert lines_of(live(ingester.store, good)) == [1, 2, 3]
        with ingester.store.read() as conn:
            (failure,) = q.all_failures(conn)
        assert failure.path == str(junk) and str(junk) in failure.message
        assert [ingester.ingest(p) for p in (good, junk)] == ["unchanged", "failed-unchanged"]

    @pytest.mark.skipif(os.geteuid() == 0, reason="root reads files whatever their mode")
    def test_unreadable(self, ingester, tmp_path):
        path = tmp_path / "secret.log"
        write_log(path, 0, 3)
        path.chmod(0)
        assert ingester.ingest(path) == "failed:unreadable"


class TestTokenizers:
    def test_no_model_then_model(self, store, tokenizer, tmp_path):
        path = tmp_path / "app.log"
        write_log(path, 0, 40)
        assert Ingester(store, None).ingest(path) == "added"
        with store.read() as conn:
            doc = q.live_document(conn, str(path))
        assert doc.status == "unchunked" and live(store, path) == []
        assert Ingester(store, None).ingest(path) == "unchanged"
        with_model = Ingester(store, tokenizer)
        assert with_model.recut() == 1
        assert lines_of(live(store, path)) == list(range(1, 41))

    def test_other_tokenizer_recuts_and_keeps_old(self, store, tokenizer, make_checkpoint,
                                                  tmp_path):
        path = tmp_path / "app.log"
        write_log(path, 0, 100)
        Ingester(store, tokenizer).ingest(path)
        old = {p.id for p in live(store, path)}
        small = PassageTokenizer.load(make_checkpoint(doc_max_length=64, compr_rate=16))
        assert Ingester(store, small).recut() == 1
        new = live(store, path)
        assert not old & {p.id for p in new}
        assert all(p.token_count <= 64 for p in new) and len(new) > len(old)
        with store.read() as conn:  # the old cut is retired, not deleted
            assert len(conn.execute(select(passages.c.id).where(
                passages.c.id.in_(old))).all()) == len(old)


class TestCompression:
    def test_backlog_compressed_once(self, store, tokenizer, e2e, tmp_path):
        ingester = Ingester(store, tokenizer)
        for name in ("a.log", "b.log"):  # the same content twice
            write_log(tmp_path / name, 0, 60)
            ingester.ingest(tmp_path / name)
        distinct = {p.text for p in live(store, tmp_path / "a.log")}
        assert compress_backlog(store, e2e, batch_size=2) == len(distinct)
        assert compress_backlog(store, e2e) == 0
        with store.read() as conn:
            rows = q.memory_rows(conn, memory_id(e2e))
            assert q.backlog_size(conn, memory_id(e2e)) == 0
        assert len(rows) == 2 * len(distinct)
        write_log(tmp_path / "a.log", 60, 20)  # growth: only the redone and new passages
        ingester.ingest(tmp_path / "a.log")
        assert 1 <= compress_backlog(store, e2e) <= len(live(store, tmp_path / "a.log"))

    @staticmethod
    def backlog_of(store, tokenizer, e2e, path: Path, lines: int) -> tuple[str, int]:
        """A log of `lines` distinct lines ingested: (memory id, passages waiting)."""
        write_log(path, 0, lines)
        Ingester(store, tokenizer).ingest(path)
        model = memory_id(e2e)
        with store.read() as conn:
            return model, q.backlog_size(conn, model)

    @staticmethod
    def drain(compressor: Compressor, batch_size: int) -> int:
        stored = compressor.step(batch_size)
        while compressor.pending is not None:
            stored += compressor.step(batch_size)
        return stored

    def test_one_batch_in_flight_while_the_one_before_is_stored(self, store, tokenizer, e2e,
                                                                tmp_path):
        model, waiting = self.backlog_of(store, tokenizer, e2e, tmp_path / "app.log", 200)
        assert waiting >= 5
        compressor = Compressor(store, e2e)
        assert compressor.step(2) == 0  # started, nothing stored yet
        first = list(compressor.pending.hashes)
        assert compressor.step(2) == 2  # the first stored while the second is computed
        assert not set(first) & set(compressor.pending.hashes)  # in flight: not fetched again
        with store.read() as conn:
            assert q.backlog_size(conn, model) == waiting - 2
            assert {h for h, _ in q.backlog(conn, model, waiting)}.isdisjoint(first)
        assert 2 + self.drain(compressor, 2) == waiting
        with store.read() as conn:
            assert q.backlog_size(conn, model) == 0
            assert len(q.memory_rows(conn, model)) == len(live(store, tmp_path / "app.log"))

    def test_a_batch_that_fails_to_store_is_redone(self, store, tokenizer, e2e, tmp_path,
                                                   monkeypatch):
        from kbd.store.matrix import MemoryFileError

        model, waiting = self.backlog_of(store, tokenizer, e2e, tmp_path / "app.log", 120)
        compressor = Compressor(store, e2e)
        compressor.step(2)
        real = compressor.matrix.append

        def full(rows):
            monkeypatch.setattr(compressor.matrix, "append", real)  # once
            raise MemoryFileError("disk full")

        monkeypatch.setattr(compressor.matrix, "append", full)
        with pytest.raises(MemoryFileError):
            compressor.step(2)
        assert self.drain(compressor, 2) == waiting  # the lost batch came back
        with store.read() as conn:
            assert q.backlog_size(conn, model) == 0

    def test_finish_stores_the_batch_in_flight(self, store, tokenizer, e2e, tmp_path):
        model, waiting = self.backlog_of(store, tokenizer, e2e, tmp_path / "app.log", 20)
        compressor = Compressor(store, e2e)
        compressor.step(64)
        assert compressor.pending is not None
        assert compressor.finish() == waiting > 0
        assert compressor.pending is None
        with store.read() as conn:
            assert q.backlog_size(conn, model) == 0

    def test_stored_memory_answers(self, store, tokenizer, e2e, tmp_path):
        import torch

        from kbd.model.clara import memory_from_bytes

        path = tmp_path / "app.log"
        write_log(path, 0, 60)
        Ingester(store, tokenizer).ingest(path)
        compress_backlog(store, e2e)
        with store.read() as conn:
            pairs = q.memory_rows(conn, memory_id(e2e))
        matrix = open_matrix(store, e2e)
        stored = torch.stack([memory_from_bytes(b, e2e.dtype, (e2e.n_mem, e2e.hidden))
                              for b in matrix.read([r for _, r in pairs])])
        texts = [p.text for p in live(store, path)]
        cached = e2e.answer_from_memory(["which node had a disk full error ?"], stored,
                                        max_new_tokens=6)
        direct = e2e.answer(["which node had a disk full error ?"], [texts], max_new_tokens=6)
        assert cached[0].indices == direct[0].indices and cached[0].text == direct[0].text
