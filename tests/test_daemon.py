"""The daemon as a real subprocess on a tiny checkpoint (CPU), talked to over its real socket:
ingest of loghub logs and a report, `kbd ask` with sources that are real lines, restarts,
hostile and concurrent requests, a second daemon, no model, SIGHUP reload."""

from __future__ import annotations

import json
import shutil
import signal
import socket
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from support.harness import Kbd, raw_request, wait_for

from kbd.api.client import DaemonError
from kbd.errors import KbdError

LOGHUB = Path(__file__).resolve().parents[2] / "shared" / "data" / "loghub"


@pytest.fixture
def kbd(tmp_path, tiny_model):
    k = Kbd(tmp_path, tiny_model)
    for name in ("HDFS_2k.log", "OpenSSH_2k.log"):
        lines = (LOGHUB / name).read_bytes().splitlines(keepends=True)[:300]
        (k.watched / name).write_bytes(b"".join(lines))
    (k.watched / "incident.md").write_text(
        "# Incident 42\n\nNode 7 ran out of disk space at 10:32.\n\n"
        "## Fix\n\nOld HDFS blocks were removed and the datanode restarted.\n")
    k.start()
    yield k
    if k.proc.poll() is None:
        k.stop(signal.SIGKILL)


pytestmark = pytest.mark.skipif(not LOGHUB.is_dir(), reason=f"{LOGHUB} not present")


def file_lines(path: str) -> list[str]:
    return Path(path).read_bytes().decode().splitlines()


class TestAsk:
    def test_answer_sources_are_real_lines(self, kbd):
        kbd.settled(3)
        result = kbd.cli("ask", "Which datanode received a block ?", "--top-k", "3", "--json")
        assert result.returncode == 0, result.stderr
        reply = json.loads(result.stdout)
        assert set(reply) == {"answer", "status", "engine", "model", "citations_dropped",
                              "extractive", "aggregate", "sources"}
        assert reply["status"] == "answered"  # CLaRa answers what it is asked
        assert isinstance(reply["answer"], str) and reply["engine"] == "clara"
        assert [s["rank"] for s in reply["sources"]] == [1, 2, 3]
        for source in reply["sources"]:
            assert set(source) == {"rank", "passage_id", "path", "lines", "cited_lines", "page",
                                   "score", "in_prompt"}
            assert isinstance(source["passage_id"], int) and isinstance(source["score"], float)
            assert Path(source["path"]).parent == kbd.watched
        scores = [s["score"] for s in reply["sources"]]
        assert scores == sorted(scores, reverse=True)
        shown = kbd.client.request("POST", "/ask", {"question": "Which datanode received a "
                                                    "block ?", "top_k": 3})
        for source in shown["sources"]:  # the passage text is exactly those lines of the file
            if source["lines"] is not None and source["path"].endswith(".log"):
                first, last = source["lines"]
                wanted = [ln for ln in file_lines(source["path"])[first - 1:last] if ln.strip()]
                assert source["text"].split("\n") == wanted

    def test_text_output_and_scope(self, kbd):
        kbd.settled(3)
        result = kbd.cli("ask", "What ran out of disk space ?", "--scope",
                         str(kbd.watched / "incident.md"))
        assert result.returncode == 0, result.stderr
        sources = [ln for ln in result.stdout.strip().split("\n") if ln.startswith("[")]
        assert [ln.split("]")[0] for ln in sources] == ["[1", "[2"]  # the report's 2 passages
        assert all(f"{kbd.watched / 'incident.md'}:" in ln for ln in sources)
        nothing = kbd.client.request("POST", "/ask", {"question": "anything ?",
                                                       "scope": ["/nowhere"]})
        assert nothing["status"] == "nothing-new" and nothing["sources"] == []

    def test_streamed_answer(self, kbd):
        kbd.settled(3)
        events = list(kbd.client.stream("/ask", {"question": "which block ?", "stream": True,
                                                 "max_new_tokens": 24}))
        tokens = [e["token"] for e in events if "token" in e]
        done = events[-1]["done"]
        assert len(tokens) >= 2 and "".join(tokens).strip() == done["answer"].strip()
        assert done["sources"] and done["status"] == "answered"

    def test_concurrent_asks(self, kbd):
        kbd.settled(3)
        with ThreadPoolExecutor(max_workers=50) as pool:
            replies = list(pool.map(lambda i: kbd.client.request(
                "POST", "/ask", {"question": f"what happened to block {i} ?", "top_k": 2,
                                 "max_new_tokens": 4}), range(50)))
        assert len(replies) == 50 and all(len(r["sources"]) == 2 for r in replies)
        assert len({r["answer_id"] for r in replies}) == 50


class TestHostileRequests:
    def test_bad_requests_get_4xx_and_the_daemon_stays(self, kbd):
        cases = {
            b"garbage\r\n\r\n": b" 400 ",
            b"POST /ask HTTP/1.1\r\nContent-Length: 5\r\nConnection: close\r\n\r\n{nope": b" 400 ",
            b"POST /ask HTTP/1.1\r\nContent-Length: 99999999\r\nConnection: close\r\n\r\n":
                b" 413 ",
            b"GET /nothing HTTP/1.1\r\nConnection: close\r\n\r\n": b" 404 ",
            b"DELETE /status HTTP/1.1\r\nConnection: close\r\n\r\n": b" 405 ",
        }
        for request, status in cases.items():
            reply = raw_request(kbd.socket, request)
            assert status in reply.split(b"\r\n")[0], (request, reply[:200])
        for body, field in (({"question": 3}, "question"), ({"question": "x", "top_k": "5"},
                            "top_k"), ({"question": "x", "scope": "/a"}, "scope"),
                            ({"question": " "}, "question"), ({"question": "x",
                                                               "since": "soon"}, "since")):
            with pytest.raises(DaemonError) as err:
                kbd.client.request("POST", "/ask", body)
            assert err.value.status == 400 and err.value.message.startswith(field)
        assert kbd.client.request("GET", "/status")["pid"] == kbd.proc.pid

    def test_client_disconnecting_mid_answer(self, kbd):
        kbd.settled(3)
        body = json.dumps({"question": "what failed ?", "max_new_tokens": 64}).encode()
        with socket.socket(socket.AF_UNIX) as s:
            s.connect(str(kbd.socket))
            s.sendall(b"POST /ask HTTP/1.1\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
        reply = kbd.client.request("POST", "/ask", {"question": "still there ?"})
        assert reply["status"] == "answered"


class TestLifecycle:
    def test_restart_keeps_everything(self, kbd):
        before = kbd.settled(3)
        first = kbd.client.request("POST", "/ask", {"question": "which block ?"})
        assert kbd.stop() == 0
        assert not kbd.socket.exists()
        kbd.start()
        after = kbd.settled(3)
        assert after["passages"] == before["passages"]
        again = kbd.client.request("POST", "/ask", {"question": "which block ?"})
        assert again["sources"] == first["sources"] and again["answer"] == first["answer"]

    def test_second_daemon_refuses(self, kbd):
        second = kbd.cli("daemon")
        assert second.returncode == 1
        assert f"pid {kbd.proc.pid}" in second.stderr

    def test_stale_socket_after_kill_9(self, kbd):
        kbd.stop(signal.SIGKILL)
        assert kbd.socket.exists()  # left behind by the crash
        kbd.start()
        assert kbd.client.request("GET", "/status")["pid"] == kbd.proc.pid

    def test_sighup_adds_a_folder(self, kbd, tmp_path):
        kbd.settled(3)
        extra = tmp_path / "extra"
        extra.mkdir()
        (extra / "new.log").write_text("2026-11-23 10:00:00 brand new folder line\n")
        with kbd.config.open("a") as f:
            f.write(f'\n[[folders]]\npath = "{extra}"\n')
        kbd.proc.send_signal(signal.SIGHUP)
        kbd.settled(4)
        assert kbd.cli("status", "--json").returncode == 0


def test_no_model_still_ingests_and_answers_clearly(tmp_path):
    k = Kbd(tmp_path, None, extra='[model]\nengine = "clara"\n')
    shutil.copy(LOGHUB / "Linux_2k.log", k.watched / "Linux_2k.log")
    k.start()
    try:
        wait_for(lambda: k.client.request("GET", "/status")["documents"].get("unchunked"),
                 what="the log stored uncut", tolerate=(KbdError,))
        result = k.cli("ask", "what failed ?")
        assert result.returncode == 1
        assert "no CLaRa model" in result.stderr and "kbd model pull" in result.stderr
        status = json.loads(k.cli("status", "--json").stdout)
        assert status["model"] == "not configured" and status["daemon"] == "running"
    finally:
        k.stop()


def test_cli_without_daemon_exits_3(tmp_path):
    k = Kbd(tmp_path, None)
    result = k.cli("ask", "anything ?")
    assert result.returncode == 3
    assert "not running" in result.stderr


class TestStandingQuestions:
    def answers(self, kbd, question_id: int) -> list:
        reply = kbd.client.request("GET", f"/answers?question_id={question_id}&limit=100")
        return reply["answers"]

    def test_lifecycle_over_the_cli(self, kbd):
        kbd.settled(3)
        added = kbd.cli("questions", "add", "Which block was received ?", "--every", "2s",
                        "--scope", str(kbd.watched / "HDFS_2k.log"), "--top-k", "2", "--json")
        assert added.returncode == 0, added.stderr
        question = json.loads(added.stdout)
        qid = question["id"]
        assert question["every"] == "2s" and question["next_run_at"]
        first = wait_for(lambda: self.answers(kbd, qid), what="a scheduled answer")[-1]
        assert first["status"] == "ok" and first["change"] == "first"
        hdfs = file_lines(str(kbd.watched / "HDFS_2k.log"))
        for source in first["sources"]:
            assert source["path"] == str(kbd.watched / "HDFS_2k.log")
            assert 1 <= source["lines"][0] <= source["lines"][1] <= len(hdfs)
        assert kbd.cli("questions", "pause", str(qid)).returncode == 0
        time.sleep(0.5)  # a run already started may still finish
        paused_count = len(self.answers(kbd, qid))
        time.sleep(4.5)
        assert len(self.answers(kbd, qid)) == paused_count
        ran = kbd.cli("questions", "run", str(qid), "--json")
        assert ran.returncode == 0, ran.stderr
        assert json.loads(ran.stdout)["status"] == "ok"
        assert len(self.answers(kbd, qid)) == paused_count + 1
        edited = kbd.client.request("PATCH", f"/questions/{qid}", {"text": "Which datanode ?",
                                                                   "every": "1h"})
        assert edited["text"] == "Which datanode ?" and edited["every"] == "1h"
        assert edited["enabled"] is False  # still paused
        listed = json.loads(kbd.cli("questions", "list", "--json").stdout)["questions"]
        assert [x["id"] for x in listed] == [qid]
        history = json.loads(kbd.cli("answers", str(qid), "--json").stdout)["answers"]
        assert history[0]["sources"] and history[0]["change"] in ("unchanged", "changed",
                                                                  "new-sources")
        assert kbd.cli("questions", "rm", str(qid)).returncode == 0
        gone = kbd.cli("questions", "show", str(qid))
        assert gone.returncode == 1 and f"no standing question {qid}" in gone.stderr
        assert all(a["question_id"] is None for a in kbd.client.request(
            "GET", "/answers?limit=100")["answers"])

    def test_bad_question_is_refused_with_the_field(self, kbd):
        for body, field in (({"text": "x", "every": "soon"}, "every"),
                            ({"text": "x", "cron": "61 * * * *"}, "cron"),
                            ({"text": "", "every": "1h"}, "text")):
            with pytest.raises(DaemonError) as err:
                kbd.client.request("POST", "/questions", body)
            assert err.value.status == 400 and err.value.message.startswith(field)
        usage = kbd.cli("questions", "add", "x")
        assert usage.returncode == 2


def test_digest_from_the_cli_and_the_api(kbd):
    kbd.settled(3)
    question = kbd.client.request("POST", "/questions", {"text": "Which block was received ?",
                                                         "every": "1d", "top_k": 2})
    answer = kbd.client.request("POST", f"/questions/{question['id']}/run")
    assert answer["status"] == "ok"
    written = kbd.cli("digest", "--json")
    assert written.returncode == 0, written.stderr
    paths = [Path(p) for p in json.loads(written.stdout)["paths"]]
    assert sorted(p.suffix for p in paths) == [".html", ".md"]
    markdown = next(p for p in paths if p.suffix == ".md").read_text()
    assert "Which block was received ?" in markdown
    source = answer["sources"][0]
    assert f"{source['path']}:{source['lines'][0]}" in markdown
    page = next(p for p in paths if p.suffix == ".html").read_text()
    assert "<script" not in page and "Which block was received ?" in page
    by_api = kbd.client.request("POST", "/digest", {"since": "1h", "formats": ["md"]})
    assert len(by_api["paths"]) == 1 and Path(by_api["paths"][0]).exists()
    listed = json.loads(kbd.cli("digest", "--list", "--json").stdout)["digests"]
    assert len(listed) == 2
    single = kbd.cli("digest", "--output", str(kbd.home / "week.html"), "--since", "7d")
    assert single.returncode == 0 and (kbd.home / "week.html").read_text().startswith("<!")


def test_systemd_notify_protocol(tmp_path, tiny_model):
    """Under systemd: READY=1 once the model is loaded, STATUS= lines, watchdog pings."""
    k = Kbd(tmp_path, tiny_model)
    address = str(tmp_path / "notify.sock")
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    listener.bind(address)
    listener.settimeout(60)
    k.env |= {"NOTIFY_SOCKET": address, "WATCHDOG_USEC": "1000000"}
    k.start()
    try:
        seen: list[str] = []
        while not ({"READY=1", "WATCHDOG=1"} <= set(seen)
                   and any(m.startswith("STATUS=") for m in seen)):
            seen.append(listener.recv(4096).decode())
        assert k.client.request("GET", "/status")["model"] == "ready"
        status = next(m for m in seen if m.startswith("STATUS="))
        assert "documents" in status and "backlog" in status
    finally:
        k.stop()
        listener.close()
    assert k.proc.returncode == 0
