"""The sender against real receivers on the loopback (tests/support/receivers.py), in process, with
short back-off: one alert per change, a receiver that is down for a while gets everything
afterwards in order, an event is given up after give_up_s and shown, each message carries its
event's stable id, and hostile document text arrives escaped for each target."""

from __future__ import annotations

import json
import shutil
from dataclasses import asdict, replace
from datetime import UTC, datetime, timedelta
from types import SimpleNamespace

import pytest
from sqlalchemy import select
from support.harness import wait_for
from support.receivers import SmtpServer, Webhook, read_lines, self_signed, stdin_to_file_argv

from kbd.config import NotifyChannel
from kbd.digest import gather, to_html, to_markdown
from kbd.notify import DeliveryError, deliver, slack_text
from kbd.questions.specs import QuestionSpec
from kbd.sender import Sender, backoff_s
from kbd.store import events as ev
from kbd.store import queries as q
from kbd.store import questions as qs
from kbd.store.digests import record_digest
from kbd.store.schema import passages

FAST = {"retry_first_s": 0.05, "retry_max_s": 0.2, "timeout_s": 1.0}
HOSTILE = "<!channel> & <script>alert(1)</script> ``` </pre> *bold*"


def webhook(hook: Webhook, name: str = "hook", **kw) -> NotifyChannel:
    return NotifyChannel(name=name, type="webhook", url=hook.url, **FAST | kw)


def add_question(store, channels, notify="change") -> int:
    spec = QuestionSpec(text="any disk errors?", schedule_kind="interval", interval_s=60,
                        notify=notify, channels=tuple(channels))
    return store.write(lambda conn: qs.create_question(conn, **asdict(spec)))


def add_passage(store, text: str, path: str = "/var/log/disk.log") -> int:
    def work(conn):
        doc = q.insert_document(conn, path=path, kind="log", size=1, mtime_ns=1,
                                status="ready", tokenizer="tok")
        block = SimpleNamespace(ordinal=0, text=text, first_line=41,
                                last_line=40 + len(text.splitlines()), page=None,
                                byte_start=0, byte_end=len(text), token_count=3,
                                heading=None, split=False)
        q.insert_passages(conn, doc, [block], "tok")
        return conn.execute(select(passages.c.id).where(
            passages.c.document_id == doc)).scalar_one()

    return store.write(work)


def answer(store, qid, text, passage_ids=()) -> int:
    now = datetime.now(UTC)
    return store.write(lambda conn: qs.record_answer(
        conn, question_id=qid, question="any disk errors?", started_at=now, finished_at=now,
        model="m", engine="text", status="ok", error=None, text=text, candidates=1,
        sources=[(i + 1, p, 1.0) for i, p in enumerate(passage_ids)]))


def outbox(store) -> list[dict]:
    with store.read() as conn:
        return list(reversed(ev.recent(conn, limit=None)))


@pytest.fixture
def sending(store):
    started: list[Sender] = []

    def start(*channels: NotifyChannel, poll_s: float = 0.05) -> Sender:
        sender = Sender(store, channels, poll_s=poll_s)
        sender.start()
        started.append(sender)
        return sender

    yield start
    for sender in started:
        sender.stop()


def all_sent(store):
    return lambda: all(e["status"] != "pending" for e in outbox(store))


class TestDelivery:
    def test_an_answer_that_changes_sends_one_alert_per_change(self, store, sending,
                                                               tmp_path):
        hook = Webhook().up()
        got = tmp_path / "stdin.jsonl"
        cmd = NotifyChannel(name="cmd", type="command", argv=tuple(stdin_to_file_argv(got)),
                            **FAST)
        qid = add_question(store, ["hook", "cmd"])
        passage = add_passage(store, "2026-12-01 disk sda1 I/O error\nretrying")
        sending(webhook(hook), cmd)
        texts = ["none", "none", "sda1 failing", "sda1 failing", "sda1 failing", "none"]
        for text in texts:
            answer(store, qid, text, [passage])
        wait_for(all_sent(store), what="every event sent")
        changes = ["first", "changed", "changed"]
        assert [r["body"]["event"]["change"] for r in hook.received] == changes
        assert [e["change"] for e in read_lines(got)] == changes
        assert [r["body"]["event"]["answer"] for r in hook.received] == \
            ["none", "sda1 failing", "none"]
        made = outbox(store)
        assert all(e["status"] == "delivered" for e in made)
        assert sorted(hook.keys()) == sorted(e["key"] for e in made if e["channel"] == "hook")
        first = hook.received[0]
        assert first["headers"]["Idempotency-Key"] == first["body"]["idempotency_key"]
        assert "/var/log/disk.log:41-42" in first["body"]["text"]
        assert "    2026-12-01 disk sda1 I/O error" in first["body"]["text"]
        assert f"kbd answers {qid}" in first["body"]["text"]
        hook.down()

    @pytest.mark.parametrize("failure", ["error", "slow", "refused"])
    def test_a_receiver_down_for_a_while_gets_everything_afterwards_in_order(
            self, store, sending, failure):
        hook = Webhook().up()
        if failure == "refused":
            hook.down()
        else:
            hook.mode = failure
            hook.slow_s = 1.5  # past the 0.5 s the client waits
        qid = add_question(store, ["hook"], notify="always")
        sending(webhook(hook, timeout_s=0.5))
        ids = [answer(store, qid, f"answer {n}") for n in range(5)]
        wait_for(lambda: outbox(store)[0]["attempts"] >= 3, what="failed attempts")
        assert all(e["status"] == "pending" for e in outbox(store))
        if failure == "refused":
            hook.up()
        hook.mode = "ok"
        wait_for(all_sent(store), what="every event sent")
        made = outbox(store)
        assert [e["status"] for e in made] == ["delivered"] * 5
        # in order, each once at least; a slow reply the client gave up on may come twice,
        # then with the same id
        first_seen = dict.fromkeys((r["body"]["idempotency_key"], r["body"]["event"]["answer_id"])
                                   for r in hook.received)
        assert [key for key, _ in first_seen] == [e["key"] for e in made]
        assert [answer_id for _, answer_id in first_seen] == ids
        assert made[0]["attempts"] >= 3
        hook.down()

    def test_given_up_after_give_up_s_and_shown_in_status_and_digest(self, store, sending):
        hook = Webhook().up()
        hook.mode = "error"
        qid = add_question(store, ["hook"], notify="always")
        sending(webhook(hook, give_up_s=1.0))
        answer(store, qid, "lost cause")
        wait_for(all_sent(store), what="the event given up")
        (event,) = outbox(store)
        assert event["status"] == "failed" and "HTTP 503" in event["last_error"]
        assert event["attempts"] >= 3
        with store.read() as conn:
            assert ev.counts(conn)["failed"] == 1
        now = datetime.now(UTC)
        text = to_markdown(gather(store, now - timedelta(hours=1), now, None, 0))
        assert "## Notifications not delivered" in text
        assert event["key"] in text
        hook.down()

    def test_backoff_doubles_to_its_cap(self):
        c = NotifyChannel(name="x", type="command", argv=("true",))
        assert [backoff_s(c, n) for n in (1, 2, 3, 4)] == [1, 2, 4, 8]
        assert backoff_s(c, 11) == 600 and backoff_s(c, 10_000) == 600

    def test_command_exit_status_and_timeout(self, tmp_path):
        got = tmp_path / "in.jsonl"
        payload = {"kind": "test", "event_id": "kbd-1", "channel": "c"}
        ok = NotifyChannel(name="c", type="command", argv=tuple(stdin_to_file_argv(got)))
        assert deliver(ok, payload) == "exit 0"
        assert read_lines(got) == [payload]
        bad = NotifyChannel(name="c", type="command",
                            argv=tuple(stdin_to_file_argv(got, exit_code=3)))
        with pytest.raises(DeliveryError, match="exited with 3"):
            deliver(bad, payload)
        slow = NotifyChannel(name="c", type="command", timeout_s=0.5,
                             argv=tuple(stdin_to_file_argv(got, sleep_s=5)))
        with pytest.raises(DeliveryError, match="ran past 0.5 s"):
            deliver(slow, payload)
        missing = NotifyChannel(name="c", type="command", argv=("/nonexistent/notify",))
        with pytest.raises(DeliveryError, match="cannot run"):
            deliver(missing, payload)


class TestMail:
    def channel(self, smtp: SmtpServer) -> NotifyChannel:
        return NotifyChannel(name="mail", type="email", host="127.0.0.1", port=smtp.port,
                             security="none", mail_from="kbd@example.org",
                             to=("ops@example.org",), **FAST)

    def test_alert_is_short_text_with_cited_lines_and_stable_message_id(self, store, sending):
        with SmtpServer() as smtp:
            qid = add_question(store, ["mail"])
            passage = add_passage(store, f"disk full {HOSTILE}")
            answer(store, qid, "disk full on sda1", [passage])
            sending(self.channel(smtp))
            wait_for(all_sent(store), what="the mail sent")
            (message,) = smtp.messages
            (event,) = outbox(store)
            assert message["Message-ID"] == f"<{event['key']}@kbd>"
            assert message["Subject"] == f"kbd question {qid}, first answer: any disk errors?"
            assert message.get_content_type() == "text/plain"
            body = message.get_content()
            assert "disk full on sda1" in body and "/var/log/disk.log:41" in body
            assert f"    disk full {HOSTILE}" in body  # plain text: shown as it is

    def test_digest_is_html_with_a_text_alternative_and_escaped(self, store, sending):
        with SmtpServer() as smtp:
            qid = add_question(store, [])
            passage = add_passage(store, HOSTILE)
            answer(store, qid, f"found {HOSTILE}", [passage])
            now = datetime.now(UTC)
            d = gather(store, now - timedelta(hours=1), now + timedelta(seconds=1), None, 0)
            store.write(lambda conn: record_digest(
                conn, d.generated_at, d.since, ["/r.md"], ["mail"],
                {"markdown": to_markdown(d), "html": to_html(d)}))
            sending(self.channel(smtp))
            wait_for(all_sent(store), what="the digest sent")
            (message,) = smtp.messages
            assert message.get_content_type() == "multipart/alternative"
            html_part = message.get_body(("html",)).get_content()
            text_part = message.get_body(("plain",)).get_content()
            assert "<script>" not in html_part and "&lt;script&gt;" in html_part
            assert "&lt;!channel&gt;" in html_part
            assert "any disk errors?" in text_part

    def test_starttls_and_login_with_the_password_from_the_environment(self, tmp_path,
                                                                         monkeypatch):
        if shutil.which("openssl") is None:
            pytest.skip("openssl makes the test certificate")
        cert, key = self_signed(tmp_path)
        monkeypatch.setenv("KBD_TEST_SMTP_PASSWORD", "s3cret")
        payload = {"kind": "test", "event_id": "kbd-tls", "channel": "mail"}
        with SmtpServer(tls=(cert, key), password="s3cret") as smtp:
            plain = self.channel(smtp)
            channel = replace(plain, security="starttls", username="kbd", ca_file=cert,
                              timeout_s=5, secret_env="KBD_TEST_SMTP_PASSWORD")
            assert deliver(channel, payload).startswith("accepted by 127.0.0.1")
            assert smtp.logins == [("kbd", True)]
            assert smtp.messages[0]["Message-ID"] == "<kbd-tls@kbd>"
            with pytest.raises(DeliveryError, match="CERTIFICATE_VERIFY_FAILED"):
                deliver(replace(channel, ca_file=None), payload)  # not a trusted CA
            with pytest.raises(DeliveryError):  # the server wants STARTTLS first
                deliver(plain, payload)
            monkeypatch.setenv("KBD_TEST_SMTP_PASSWORD", "wrong")
            with pytest.raises(DeliveryError):  # refused (smtplib then tries LOGIN, which
                deliver(replace(channel, timeout_s=1), payload)  # this server leaves hanging)
            assert ("kbd", False) in smtp.logins
            assert len(smtp.messages) == 1

    def test_refused_connection_is_a_delivery_error(self):
        with SmtpServer() as smtp:
            channel = self.channel(smtp)
        with pytest.raises(DeliveryError, match="127.0.0.1"):
            deliver(channel, {"kind": "test", "event_id": "kbd-1", "channel": "mail"})


class TestEscaping:
    def payload(self) -> dict:
        return {"kind": "answer", "event_id": "kbd-x", "channel": "c", "question_id": 1,
                "question": "q <b>", "answer_id": 2, "status": "ok", "change": "changed",
                "answer": HOSTILE, "error": None,
                "links": {"cli": "kbd answers 1", "api": "GET /answers/2"},
                "sources": [{"rank": 1, "path": "/l/<x>.log", "first_line": 3, "last_line": 3,
                             "page": None, "score": 1.0, "lines": [HOSTILE], "more_lines": 0}]}

    def test_slack_mrkdwn_escapes_control_characters_and_fences(self):
        text = slack_text(self.payload())
        assert "<" not in text and ">" not in text.replace("&gt;", "")
        assert "&lt;!channel&gt; &amp; &lt;script&gt;" in text
        # one code block, the cited lines': the document's fences can neither open nor close one
        assert text.count("```") == 2

    def test_matrix_html_is_escaped_and_slack_arrives_escaped(self):
        hook = Webhook().up()
        try:
            for fmt in ("matrix", "slack"):
                deliver(webhook(hook, format=fmt), self.payload())
            matrix, slack = hook.received
            assert matrix["path"] == "/hook/kbd-x"  # PUT with the event id as txnId
            assert "<script>" not in matrix["body"]["formatted_body"]
            assert "&lt;script&gt;" in matrix["body"]["formatted_body"]
            assert "<!channel>" not in slack["body"]["text"]
            assert json.dumps(slack["body"]).count("kbd-x") == 2
        finally:
            hook.down()
