"""[notify.NAME] channels and the question's notify / channels, refused at start with the key
named; and the outbox rows an answer or a digest writes in its own transaction."""

from __future__ import annotations

import json
from dataclasses import asdict
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from kbd.config import ConfigError, check_secrets, load_config
from kbd.errors import InputError
from kbd.questions.specs import QuestionSpec, spec_from_request
from kbd.store import events as ev
from kbd.store import questions as qs
from kbd.store.digests import record_digest

WEBHOOK = '[notify.hook]\ntype = "webhook"\nurl = "http://127.0.0.1:9/x"\n'
MAIL = ('[notify.mail]\ntype = "email"\nhost = "127.0.0.1"\nport = 2525\nsecurity = "none"\n'
        'mail_from = "kbd@example.org"\nto = ["ops@example.org"]\n')
COMMAND = '[notify.cmd]\ntype = "command"\nargv = ["/bin/cat"]\ntimeout_s = 5\n'


def config(tmp_path, text: str):
    path = tmp_path / "config.toml"
    path.write_text(f'home = "{tmp_path}"\n' + text)
    return load_config(path)


class TestChannels:
    def test_one_of_each_type(self, tmp_path):
        c = config(tmp_path, WEBHOOK + MAIL + COMMAND + '[scheduler]\ndigest_notify = ["mail"]\n')
        assert [x.name for x in c.notify] == ["hook", "mail", "cmd"]
        assert c.channel("cmd").argv == ("/bin/cat",)
        assert c.channel("mail").to == ("ops@example.org",)
        assert c.scheduler.digest_notify == ("mail",)

    @pytest.mark.parametrize("text, words", [
        ('[notify.x]\ntype = "pager"\n', "notify.x.type must be webhook, email, command"),
        ('[notify.x]\ntype = "webhook"\nurl = "http://h"\npassword = "hunter2"\n',
         "secrets are never written"),
        ('[notify.x]\ntype = "webhook"\nurl = "ftp://h"\n', "must start with http"),
        ('[notify.x]\ntype = "webhook"\nurl = "http://h"\nhost = "h"\n', "unknown key"),
        ('[notify.x]\ntype = "webhook"\nurl = "http://h"\ntimeout_s = 0\n',
         "notify.x.timeout_s = 0 is out of range"),
        ('[notify.x]\ntype = "webhook"\nurl = "http://h"\nretry_first_s = 5\n'
         'retry_max_s = 1\n', "retry_max_s = 1 is out of range"),
        ('[notify.x]\ntype = "webhook"\nurl = "http://h"\nformat = "ntfy"\n', "topic"),
        ('[notify.x]\ntype = "command"\nargv = "notify-send hi"\n', "list of strings"),
        ('[notify.x]\ntype = "email"\nhost = "h"\n', "needs host, mail_from and to"),
        ('[scheduler]\ndigest_notify = ["nope"]\n', "which is no [notify.NAME]"),
    ])
    def test_bad_values_are_refused_naming_the_key(self, tmp_path, text, words):
        with pytest.raises(ConfigError) as e:
            config(tmp_path, text)
        assert words in e.value.message

    def test_secrets_come_from_env_or_file(self, tmp_path, monkeypatch):
        c = config(tmp_path, MAIL.replace('security = "none"', 'security = "none"\n'
                                          'username = "kbd"\nsecret_env = "KBD_TEST_PW"'))
        monkeypatch.delenv("KBD_TEST_PW", raising=False)
        with pytest.raises(ConfigError, match=r"\$KBD_TEST_PW, which is not set"):
            check_secrets(c.notify)
        monkeypatch.setenv("KBD_TEST_PW", "pw")
        check_secrets(c.notify)
        secret = tmp_path / "token"
        c = config(tmp_path, WEBHOOK + f'secret_file = "{secret}"\n')
        with pytest.raises(ConfigError, match="cannot read the secret file"):
            check_secrets(c.notify)


class TestQuestionNotify:
    def test_notify_needs_channels(self):
        with pytest.raises(InputError, match="channels: notify = change needs"):
            spec_from_request({"text": "q", "every": "1h", "notify": "change"})
        with pytest.raises(InputError, match="notify: must be change, always, never"):
            spec_from_request({"text": "q", "every": "1h", "notify": "sometimes",
                               "channels": ["a"]})
        spec = spec_from_request({"text": "q", "every": "1h", "notify": "change",
                                  "channels": ["a", "a", "b"]})
        assert spec.channels == ("a", "b")
        with pytest.raises(InputError, match="'b' is no"):
            spec.check_channels({"a"})


def answer(store, qid, text, passage_ids=(), status="ok"):
    now = datetime.now(UTC)
    return store.write(lambda conn: qs.record_answer(
        conn, question_id=qid, question="q", started_at=now, finished_at=now, model="m",
        engine="text", status=status, error="boom" if status != "ok" else None,
        text=text if status == "ok" else None, candidates=1,
        sources=[(i + 1, p, 1.0) for i, p in enumerate(passage_ids)]))


def outbox(store) -> list[dict]:
    with store.read() as conn:
        return [ev.get_event(conn, e["id"]) for e in reversed(ev.recent(conn, limit=None))]


class TestOutbox:
    def test_change_mode_makes_one_event_per_change_and_channel(self, store):
        spec = QuestionSpec(text="q", schedule_kind="interval", interval_s=60,
                            notify="change", channels=("a", "b"))
        qid = store.write(lambda conn: qs.create_question(conn, **asdict(spec)))
        first = answer(store, qid, "disk full")
        answer(store, qid, "disk full")  # unchanged: nothing
        changed = answer(store, qid, "disk ok")
        failed = answer(store, qid, None, status="failed")
        answer(store, qid, None, status="not-found")
        skip = answer(store, qid, None, status="skipped")
        answer(store, qid, None, status="skipped")  # only the first skip is sent
        made = outbox(store)
        assert [(e["answer_id"], e["channel"], e["kind"]) for e in made] == [
            (first, "a", "answer"), (first, "b", "answer"), (changed, "a", "answer"),
            (changed, "b", "answer"), (failed, "a", "failed"), (failed, "b", "failed"),
            (skip, "a", "skipped"), (skip, "b", "skipped")]
        assert len({e["key"] for e in made}) == len(made)
        assert made[2]["payload"]["change"] == "changed"
        assert made[2]["payload"]["answer"] == "disk ok"
        assert made[2]["payload"]["links"]["api"] == f"GET /answers/{changed}"
        assert all(e["status"] == "pending" for e in made)

    def test_never_makes_nothing_and_always_everything(self, store):
        never = QuestionSpec(text="q", schedule_kind="interval", interval_s=60)
        always = QuestionSpec(text="q", schedule_kind="interval", interval_s=60,
                              notify="always", channels=("a",))
        q1 = store.write(lambda conn: qs.create_question(conn, **asdict(never)))
        q2 = store.write(lambda conn: qs.create_question(conn, **asdict(always)))
        for qid in (q1, q2):
            answer(store, qid, "same")
            answer(store, qid, "same")
        assert [e["question_id"] for e in outbox(store)] == [q2, q2]

    def test_a_failed_answer_write_leaves_no_event(self, store):
        spec = QuestionSpec(text="q", schedule_kind="interval", interval_s=60,
                            notify="always", channels=("a",))
        qid = store.write(lambda conn: qs.create_question(conn, **asdict(spec)))

        def record_then_fail(conn):
            now = datetime.now(UTC)
            qs.record_answer(conn, question_id=qid, question="q", started_at=now,
                             finished_at=now, model=None, engine="text", status="ok",
                             error=None, text="x", candidates=0, sources=[])
            raise RuntimeError("crash before commit")

        with pytest.raises(RuntimeError):
            store.write(record_then_fail)
        assert outbox(store) == []

    def test_digest_event_carries_its_content(self, store):
        now = datetime.now(UTC)
        store.write(lambda conn: record_digest(conn, now, now - timedelta(days=1), ["/r.md"],
                                               ["mail"], {"html": "<p>x</p>"}))
        (event,) = outbox(store)
        assert event["kind"] == "digest" and event["payload"]["html"] == "<p>x</p>"
        assert json.loads(json.dumps(event["payload"]))["paths"] == ["/r.md"]


def test_the_readme_example_loads(tmp_path):
    """The README's [notify.NAME] example, one channel per type and format, is a valid config."""
    readme = (Path(__file__).parent.parent / "README.md").read_text()
    section = readme[readme.index("## Notifications"):]
    example = section[section.index("```toml") + 7:]
    c = config(tmp_path, example[:example.index("```")])
    assert {(x.type, x.format if x.type == "webhook" else "") for x in c.notify} == {
        ("webhook", "slack"), ("webhook", "matrix"), ("webhook", "ntfy"), ("email", ""),
        ("command", "")}
