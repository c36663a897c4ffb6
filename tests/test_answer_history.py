"""`kbd answers ID` as a thread with diffs, `kbd answers` before any run, and `kbd questions
list` with window, channels and last delivery: the CLI over canned daemon replies."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from kbd.cli import cli
from kbd.cli import questions as questions_commands


def source(rank: int, path: str, first: int, last: int) -> dict:
    return {"rank": rank, "passage_id": rank, "path": path, "lines": [first, last],
            "page": None, "score": 1.0}


def answer(answer_id: int, change: str | None, text: str | None, sources=(),
           status: str = "ok", error: str | None = None) -> dict:
    return {"answer_id": answer_id, "question_id": 3, "question": "any disk errors?",
            "answer": text, "status": status, "change": change, "error": error,
            "engine": "text", "model": "m", "started_at": f"2026-12-0{answer_id}T07:00:00Z",
            "finished_at": f"2026-12-0{answer_id}T07:00:01Z", "sources": list(sources)}


QUESTION = {"id": 3, "text": "any disk errors?", "enabled": True, "every": "1h", "cron": None,
            "timezone": "UTC", "scope": [], "kinds": [], "since": None,
            "since_last_run": True, "top_k": 5, "max_new_tokens": 128,
            "last_run_at": None, "next_run_at": "2026-12-06T22:00:00Z",
            "created_at": "2026-12-06T21:00:00Z", "notify": "change", "channels": ["mail"],
            "last_delivery": {"status": "delivered", "channel": "mail", "key": "kbd-1",
                              "finished_at": "2026-12-06T21:30:00Z"}}


@pytest.fixture
def replies(monkeypatch, tmp_path):
    """The daemon's replies by path, as the CLI's client gets them."""
    canned: dict[str, dict] = {}

    class Fake:
        def request(self, method, path, body=None):
            return canned[path.split("?")[0]]

    monkeypatch.setattr(questions_commands, "client", lambda config: Fake())
    monkeypatch.setenv("KBD_CONFIG", str(tmp_path / "none.toml"))
    return canned


def run(*args: str) -> str:
    result = CliRunner().invoke(cli, list(args))
    assert result.exit_code == 0, result.output
    return result.output


def test_a_thread_shows_each_run_with_its_badge_and_what_changed(replies):
    a = source(1, "/var/log/disk.log", 10, 12)
    b = source(2, "/var/log/kern.log", 5, 5)
    replies["/answers"] = {"answers": list(reversed([
        answer(1, "first", "no errors", [a]),
        answer(2, "changed", "sda1 failing\nsince 06:59", [a, b]),
        answer(3, None, None, status="failed", error="model gone"),
        answer(4, "unchanged", "sda1 failing\nsince 06:59", [a, b]),
        answer(5, "new-sources", "sda1 failing\nsince 06:59", [b]),
    ]))}
    out = run("answers", "3")
    lines = out.splitlines()
    assert lines[0] == "#1 2026-12-01T07:00:00Z [first answer]"
    assert "    no errors" in lines and "    [1] /var/log/disk.log:10-12" in lines
    second = lines[lines.index("#2 2026-12-02T07:00:00Z [changed]") + 1:]
    assert second[:5] == ["    @@ -1 +1,2 @@", "    -no errors", "    +sda1 failing",
                          "    +since 06:59", "    + source /var/log/kern.log:5"]
    assert "#3 2026-12-03T07:00:00Z [failed]" in lines and "    model gone" in lines
    fourth = lines[lines.index("#4 2026-12-04T07:00:00Z [unchanged]") + 1]
    assert fourth == "      (answer unchanged)"
    assert lines[-2:] == ["      (answer unchanged)", "    - source /var/log/disk.log:10-12"]


def test_before_any_run_it_says_when_the_first_is_due(replies):
    replies["/answers"] = {"answers": []}
    replies["/questions"] = {"questions": [QUESTION]}
    replies["/questions/3"] = QUESTION
    expected = "no answers yet; the first is due at 2026-12-06T22:00:00Z (question 3)\n"
    assert run("answers") == expected
    assert run("answers", "3") == expected
    replies["/questions"] = {"questions": []}
    assert "no standing question is scheduled" in run("answers")


def test_questions_list_shows_window_next_run_channels_and_last_delivery(replies):
    replies["/questions"] = {"questions": [QUESTION]}
    out = run("questions", "list")
    assert "    window: since the last run" in out
    assert "    next run: 2026-12-06T22:00:00Z" in out
    assert "    notify: change to mail" in out
    assert "    last delivery: delivered to mail at 2026-12-06T21:30:00Z" in out
