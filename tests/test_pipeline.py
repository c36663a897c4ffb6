"""The watcher feeding the ingester through the worker queue, on real folders and a real
SQLite file: drops, growth, renames, deletes, a burst, and a rescan that finds what the
watcher never reported."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest
from sqlalchemy import func, select
from support.harness import wait_for

from kbd.folders import WatchedFolder
from kbd.ingest import pipeline as ingest_module
from kbd.ingest.pipeline import Ingester, IngestWorker
from kbd.model.tokens import PassageTokenizer
from kbd.store import Store
from kbd.store import queries as q
from kbd.store.schema import documents, passages
from kbd.watch import Watcher


@pytest.fixture
def running(tmp_path, e2e_dir):
    """A watched folder, a store, and the worker + watcher running until the test ends."""
    folder = tmp_path / "watched"
    folder.mkdir()
    store = Store.open(f"sqlite:///{tmp_path / 'kbd.sqlite3'}", tmp_path / "memory")
    outcomes: Counter = Counter()
    folders = [WatchedFolder(folder, include=("*.log", "*.md", "*.gz"))]
    worker = IngestWorker(Ingester(store, PassageTokenizer.load(e2e_dir)), folders,
                          on_done=lambda path, outcome: outcomes.update([outcome]))
    watcher = Watcher(folders, worker.submit, quiet_s=0.3, rescan_interval_s=3600,
                      on_rescan=worker.rescan)
    worker.start()
    watcher.start()
    yield folder, store, worker, outcomes
    watcher.stop()
    worker.stop()
    store.close()


def live_paths(store) -> list[str]:
    with store.read() as conn:
        return [d.path for d in q.live_documents(conn)]


def test_files_follow_the_folder(running):
    folder, store, worker, outcomes = running
    (folder / "a.log").write_text("2026-11-23 10:00:00 disk full on node 7\n")
    (folder / "notes.md").write_text("# Incident\n\nThe disk on node 7 filled up.\n")
    (folder / "ignored.txt").write_text("not included\n")
    wait_for(lambda: len(live_paths(store)) == 2)
    (folder / "a.log").rename(folder / "b.log")
    wait_for(lambda: sorted(Path(p).name for p in live_paths(store)) == ["b.log", "notes.md"])
    assert outcomes["moved"] == 1
    with (folder / "b.log").open("a") as f:
        f.write("2026-11-23 10:05:00 node 7 recovered\n")
    wait_for(lambda: outcomes["appended"] == 1)
    (folder / "notes.md").unlink()
    wait_for(lambda: [Path(p).name for p in live_paths(store)] == ["b.log"])
    with store.read() as conn:
        doc = q.live_document(conn, str(folder / "b.log"))
        assert [p.last_line for p in q.live_passages(conn, doc.id)] == [2]


def test_burst_all_ingested_once(running):
    folder, store, worker, outcomes = running
    for i in range(10_000):
        (folder / f"f{i:04d}.log").write_text(f"2026-11-23 10:00:00 event {i}\n")
    wait_for(lambda: len(live_paths(store)) == 10_000 and worker.idle(), timeout=600)
    with store.read() as conn:  # none twice: no extra document, no passage ever retired
        assert conn.execute(select(func.count()).select_from(documents)).scalar() == 10_000
        assert conn.execute(select(func.count()).select_from(passages)).scalar() == 10_000


def test_an_event_during_the_ingest_of_its_path_is_not_lost(tmp_path, e2e_dir, monkeypatch):
    """Lines written while their file is being ingested, after it was read: their event
    queues the path again rather than being taken for the ingest already under way."""
    folder = tmp_path / "busy"
    folder.mkdir()
    path = folder / "a.log"
    path.write_text("2026-11-23 10:00:00 first\n")
    store = Store.open(f"sqlite:///{tmp_path / 'kbd.sqlite3'}", tmp_path / "memory")
    worker = IngestWorker(Ingester(store, PassageTokenizer.load(e2e_dir)),
                          [WatchedFolder(folder)])
    written = []

    def write_and_report(ing, job):  # after the read: the ingest cannot see these lines
        if not written:
            with path.open("a") as f:
                f.write("2026-11-23 10:00:01 second\n")
            written.append(1)
            worker.submit([path])  # what the watcher does for the write

    stages = list(ingest_module.STAGES)
    stages.insert(stages.index(ingest_module.read) + 1, write_and_report)
    monkeypatch.setattr(ingest_module, "STAGES", stages)
    worker.start()
    try:
        worker.submit([path])
        wait_for(lambda: written and worker.idle())
        with store.read() as conn:
            doc = q.live_document(conn, str(path))
            texts = [p.text for p in q.live_passages(conn, doc.id)]
        assert "second" in "\n".join(texts), texts
    finally:
        worker.stop()
        store.close()


def test_rescan_finds_what_no_event_reported(tmp_path, e2e_dir):
    """No watcher at all (as if every event were lost to an inotify overflow): the rescan
    alone ingests new files and retires deleted ones."""
    folder = tmp_path / "quiet"
    folder.mkdir()
    store = Store.open(f"sqlite:///{tmp_path / 'kbd.sqlite3'}", tmp_path / "memory")
    worker = IngestWorker(Ingester(store, PassageTokenizer.load(e2e_dir)),
                          [WatchedFolder(folder)])
    worker.start()
    try:
        for i in range(5):
            (folder / f"s{i}.log").write_text(f"2026-11-23 line {i}\n")
        worker.rescan()
        wait_for(lambda: len(live_paths(store)) == 5 and worker.idle())
        (folder / "s0.log").unlink()
        (folder / "s1.log").write_text("2026-11-23 rewritten\n")
        worker.rescan()
        wait_for(lambda: len(live_paths(store)) == 4 and worker.idle())
        with store.read() as conn:
            doc = q.live_document(conn, str(folder / "s1.log"))
            assert q.live_passages(conn, doc.id)[0].text == "2026-11-23 rewritten"
    finally:
        worker.stop()
        store.close()
