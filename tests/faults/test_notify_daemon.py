"""Notifications end to end through the real daemon subprocess (tests/harness.py Kbd), the
text engine answering on the CPU with `[model] answer = "quote"` (the answer is the best
matching log line, quoted with its place), to real receivers on the loopback
(tests/receivers.py).

kbd promises:
- a standing question with notify = "change" sends its first answer and each answer that
  changed, each exactly once (a repeat only under the same idempotency key), and nothing for
  the runs in between whose answer did not change;
- a log line holding HTML, Slack and Markdown control text reaches each receiver as text: the
  Slack body has & < > escaped and no code fence it did not open, the Matrix HTML and the
  digest mail's HTML part have it escaped (no tag, no attribute comes from it), the alert
  mail is text/plain only, and the digest's Markdown keeps it inside fences.
"""

from __future__ import annotations

import html
import json
import re
import sqlite3
import time
from email.message import EmailMessage
from pathlib import Path

from support.harness import Kbd, Outcome, TinyModel, parse_page, wait_for
from support.receivers import SmtpServer, Webhook

from faults.test_injection import outside_fences

RETRY = "retry_first_s = 0.1\nretry_max_s = 1.0\n"
EVERY = "2s"  # the standing question's schedule

# Every word of the question is in the first log, so each weighs about the same, and each
# line appended holds one asked word more than the one before: the quoted best line changes
# with each (the first line holds 3 of 7 words, past the 0.32 needed to answer at all).
QUESTION = "disk raid controller checksum failure array rebuild ?"
FIRST_LOG = ["disk raid controller added", "checksum verification scheduled",
             "failure counter reset", "array inventory taken", "rebuild queue empty"]
LOUDER = ["disk raid controller checksum mismatch on sdb",
          "disk raid controller checksum failure on sdc",
          "disk raid controller checksum failure array sdd degraded",
          "disk raid controller checksum failure array rebuild stalled on sde"]

HOSTILE_QUESTION = "disk failure ?"
HOSTILE = ("disk failure <script>alert(1)</script> & <@channel> <!channel> ``` closing "
           "fence </pre><img src=x onerror=alert(2)> *bold* [link](http://evil.example/x)")


def stamped(n: int, text: str) -> str:
    return f"2026-11-23 10:{n:02d}:00 {text}\n"


def ready(kbd: Kbd, documents: int) -> None:
    """The logs stored and the text engine loaded (its passages are never compressed, so
    the backlog Kbd.settled waits for does not empty)."""
    wait_for(lambda: kbd.live_documents() == documents and kbd.status()["model"] == "ready",
             timeout=120, what=f"{documents} documents stored and the model ready")


def outbox(kbd: Kbd) -> list[dict]:
    with sqlite3.connect(kbd.database_file) as conn:
        conn.row_factory = sqlite3.Row
        return [dict(r) for r in conn.execute(
            "SELECT id, key, channel, kind, answer_id, status FROM events ORDER BY id")]


def all_delivered(kbd: Kbd):
    return lambda: (events := outbox(kbd)) and all(e["status"] == "delivered" for e in events)


def add_question(kbd: Kbd, text: str, *channels: str) -> int:
    """Through the CLI, as a person would."""
    added = kbd.cli("questions", "add", text, "--every", EVERY, "--notify", "change",
                    *[a for c in channels for a in ("--channel", c)], "--json")
    assert added.returncode == 0, added.stderr
    return json.loads(added.stdout)["id"]


# -- one alert per change ------------------------------------------------------------------

def alert_per_change(work: Path, model: TinyModel | None = None, changes: int = 3,
                     quiet_runs: int = 2) -> Outcome:
    """A question every 2 s, notify = "change", to a generic webhook; `changes` times a line
    is appended that becomes the best match, and after each the test waits for the run that
    answers with it and `quiet_runs` unchanged runs more. The text engine answers (the model
    is not used: the quote is what makes an answer change)."""
    if not 1 <= changes <= len(LOUDER):
        raise ValueError(f"changes must be 1 to {len(LOUDER)}")
    out = Outcome("notify alert per change")
    hook = Webhook().up()
    try:
        with Kbd(work, None, extra=f'[notify.hook]\ntype = "webhook"\nurl = "{hook.url}"\n'
                                    f'timeout_s = 5\n{RETRY}') as kbd:
            log = kbd.watched / "raid.log"
            log.write_text("".join(stamped(n, t) for n, t in enumerate(FIRST_LOG)))
            kbd.start()
            ready(kbd, 1)
            question = add_question(kbd, QUESTION, "hook")
            began = time.monotonic()
            wanted = [1]  # the line each alert should quote, the first answer's too
            wait_quoting(kbd, question, FIRST_LOG[0], quiet_runs)
            for n in range(changes):
                with log.open("a") as f:
                    f.write(stamped(30 + n, LOUDER[n]))
                wanted.append(len(FIRST_LOG) + n + 1)
                wait_quoting(kbd, question, LOUDER[n], quiet_runs)
            wait_for(all_delivered(kbd), timeout=30, what="every event delivered")
            time.sleep(0.5)  # one more sender poll: nothing else may come
            out.figures["seconds"] = round(time.monotonic() - began, 1)
            check_alerts(out, kbd, hook, question, changes, wanted)
            listed = kbd.cli("questions", "list")
            out.expect(listed.returncode == 0 and "notify: change to hook" in listed.stdout
                       and "last delivery: delivered to hook" in listed.stdout,
                       f"kbd questions list: {listed.stdout}{listed.stderr}")
    finally:
        hook.down()
    return out


def wait_quoting(kbd: Kbd, question: int, line: str, quiet_runs: int) -> None:
    """Until a run quotes `line` and `quiet_runs` runs after it have been recorded."""
    def done():
        runs = kbd.runs(question)  # newest first
        quoting = [i for i, a in enumerate(runs) if line in (a["answer"] or "")]
        return quoting and quoting[-1] >= quiet_runs  # runs after the first that quoted it
    try:
        wait_for(done, timeout=60, what=f"a run quoting {line!r} and {quiet_runs} after it")
    except AssertionError as e:
        last = [(a["status"], a["answer"]) for a in kbd.runs(question)[:3]]
        raise AssertionError(f"{e}; the last runs: {last}") from None


def check_alerts(out: Outcome, kbd: Kbd, hook: Webhook, question: int, changes: int,
                 wanted: list[int]) -> None:
    runs = list(reversed(kbd.runs(question)))  # oldest first
    out.runs = len(runs)
    out.expect(all(a["status"] == "ok" for a in runs),
               f"runs not ok: {[(a['status'], a['answer']) for a in runs if a['status'] != 'ok']}")
    kinds = [a["change"] for a in runs]
    out.expect(kinds[0] == "first" and kinds.count("changed") == changes
               and kinds.count("unchanged") == len(runs) - 1 - changes,
               f"the runs' changes: {kinds}")
    alerted = [a for a in runs if a["change"] in ("first", "changed", "new-sources")]
    quiet = {a["answer_id"] for a in runs} - {a["answer_id"] for a in alerted}
    quoted = [int(m.group(1)) if (m := re.match(r"raid\.log:(\d+):", a["answer"] or ""))
              else None for a in alerted]
    out.expect(quoted == wanted, f"the alerted answers quote lines {quoted}, not {wanted}")

    events = outbox(kbd)
    out.expect([(e["kind"], e["channel"], e["answer_id"]) for e in events]
               == [("answer", "hook", a["answer_id"]) for a in alerted],
               f"outbox {[(e['kind'], e['answer_id']) for e in events]} is not one event per "
               f"first or changed answer {[a['answer_id'] for a in alerted]}")
    keys = hook.keys()
    by_key = {e["key"]: e["answer_id"] for e in events}
    received_ids = [r["body"]["event"]["answer_id"] for r in hook.received]
    lost = [k for k in by_key if k not in keys]
    out.expect(not lost, f"{len(lost)} events never reached the receiver")
    out.expect(list(dict.fromkeys(keys)) == [e["key"] for e in events],
               "alerts first arrived out of their order")
    out.expect(all(by_key.get(k) == i for k, i in zip(keys, received_ids, strict=True)),
               "a key arrived with another event's answer (a repeat under another id)")
    out.expect(not quiet & set(received_ids), "an unchanged run was sent")
    out.expect(all(r["headers"].get("Idempotency-Key") == r["body"]["idempotency_key"]
                   for r in hook.received), "the Idempotency-Key header is not the body's key")
    texts = {r["body"]["event"]["answer_id"]: r["body"]["text"] for r in hook.received}
    for a in alerted:
        text = texts.get(a["answer_id"], "")
        out.expect(a["answer"] in text and f"kbd answers {question}" in text
                   and f"GET /answers/{a['answer_id']}" in text
                   and re.search(r"raid\.log:\d+", text),
                   f"alert for answer {a['answer_id']} lacks the answer, its place or links")
    out.data_lost += len(lost)
    out.figures |= {"runs": len(runs), "unchanged_runs": len(quiet), "events": len(events),
                    "delivered": sum(e["status"] == "delivered" for e in events),
                    "received": len(keys), "duplicates_same_id": len(keys) - len(set(keys)),
                    "lost": len(lost)}


# -- hostile text arrives escaped ------------------------------------------------------------

def hostile_text(work: Path, model: TinyModel | None = None, digest_wait_s: float = 75.0
                 ) -> Outcome:
    """A log line full of markup answered by a standing question sent to a Slack webhook, a
    Matrix one and by mail (aiosmtpd), and the scheduled digest (every minute) sent by mail."""
    out = Outcome("notify hostile text")
    hook = Webhook().up()
    extra = "".join(
        f'[notify.{name}]\ntype = "webhook"\nformat = "{name}"\nurl = "{hook.url}"\n{RETRY}'
        for name in ("slack", "matrix"))
    with SmtpServer() as smtp:
        extra += (f'[notify.mail]\ntype = "email"\nhost = "127.0.0.1"\nport = {smtp.port}\n'
                  f'security = "none"\nmail_from = "kbd@localhost"\nto = ["ops@localhost"]\n'
                  f'{RETRY}[scheduler]\ndigest_cron = "* * * * *"\ndigest_notify = ["mail"]\n')
        try:
            with Kbd(work, None, extra=extra) as kbd:
                (kbd.watched / "hostile.log").write_text(
                    stamped(0, "disk sda1 healthy") + stamped(1, HOSTILE))
                kbd.start()
                ready(kbd, 1)
                began = time.monotonic()
                question = add_question(kbd, HOSTILE_QUESTION, "slack", "matrix", "mail")
                wait_for(lambda: len({r["path"] for r in hook.received}) == 2
                         and alert_mail(smtp), timeout=60,
                         what="the first answer at the Slack and Matrix hooks and by mail")
                answer = kbd.runs(question)[-1]
                out.expect(HOSTILE in (answer["answer"] or ""),
                           f"the first answer does not quote the hostile line: {answer}")
                out.figures["alert_s"] = round(time.monotonic() - began, 1)
                slack = next(r["body"] for r in hook.received if r["path"] == "/hook")
                matrix = next(r["body"] for r in hook.received if r["path"] != "/hook")
                check_slack(out, slack["text"], len(answer["sources"]))
                check_matrix(out, matrix)
                check_alert_mail(out, alert_mail(smtp))
                digest = wait_for(lambda: digest_mail(smtp), timeout=digest_wait_s,
                                  what="the scheduled digest by mail")
                out.figures["digest_s"] = round(time.monotonic() - began, 1)
                check_digest_mail(out, digest)
                wait_for(all_delivered(kbd), timeout=30, what="every event delivered")
                events = outbox(kbd)
                # what each receiver got, by the event's id: a mail's Message-ID, a hook's key
                got = [m["Message-ID"].strip("<>").removesuffix("@kbd") for m in smtp.messages]
                got += hook.keys()
                lost = [e["key"] for e in events if e["key"] not in got]
                out.expect(not lost, f"{len(lost)} events never reached their receiver")
                out.expect(set(got) <= {e["key"] for e in events}, "a message under no event's id")
                out.data_lost += len(lost)
                out.runs = len(events)
                out.figures |= {"events": len(events), "delivered": sum(
                    e["status"] == "delivered" for e in events), "received": len(got),
                    "duplicates_same_id": len(got) - len(set(got)), "lost": len(lost)}
        finally:
            hook.down()
    return out


def alert_mail(smtp: SmtpServer) -> EmailMessage | None:
    return next((m for m in smtp.messages if m["Subject"].startswith("kbd question")), None)


def digest_mail(smtp: SmtpServer) -> EmailMessage | None:
    """The first digest that holds the line (one written before the first answer has
    none)."""
    return next((m for m in smtp.messages if m["Subject"].startswith("kbd digest")
                 and "alert(1)" in "".join(parts(m).values())), None)


def parts(mail: EmailMessage) -> dict[str, str]:
    """{content type: decoded text} of a mail's leaf parts."""
    return {p.get_content_type(): p.get_content() for p in mail.walk() if not p.is_multipart()}


def slack_decoded(text: str) -> str:
    """What a Slack client shows: its three entities decoded, the zero-width spaces that
    break a fence dropped."""
    return (text.replace("&lt;", "<").replace("&gt;", ">").replace("&amp;", "&")
            .replace("\u200b", ""))


def check_slack(out: Outcome, text: str, sources: int) -> None:
    """mrkdwn: < > start links and mentions (<!channel>, <@U123>), & entities; ``` fences."""
    out.expect("<" not in text and ">" not in text, f"Slack: a raw < or > in {text!r}")
    out.expect(not re.search(r"&(?!amp;|lt;|gt;)", text), "Slack: a raw & in the text")
    out.expect("&lt;script&gt;alert(1)&lt;/script&gt; &amp; &lt;@channel&gt; &lt;!channel&gt;"
               in text, "Slack: the hostile line is not there escaped")
    out.expect(HOSTILE in slack_decoded(text), "Slack: the line does not read as it was")
    # kbd opens and closes one fence per source it quotes; the line's own ``` is broken
    out.expect(text.count("```") == 2 * sources and "``` closing" not in text,
               f"Slack: the line's ``` is a fence ({text.count('```')} fences, {sources} "
               "sources)")


def check_matrix(out: Outcome, body: dict) -> None:
    page = parse_page(body["formatted_body"])
    out.expect(not {"script", "img", "a", "iframe"} & set(page.tags),
               f"Matrix: a tag from the line: {page.tags}")
    out.expect(not [n for _, n, _ in page.attrs if n.startswith("on") or n in ("src", "href")],
               "Matrix: an attribute from the line")
    out.expect(not page.errors, f"Matrix: the line broke the HTML's nesting: {page.errors}")
    out.expect(HOSTILE in "".join(page.data), "Matrix: the line does not read as text")
    out.expect(HOSTILE in body["body"], "Matrix: the plain body lost the line")


def check_alert_mail(out: Outcome, mail: EmailMessage) -> None:
    """An alert is a short text mail: no HTML part that could interpret the line."""
    out.expect(not mail.is_multipart() and mail.get_content_type() == "text/plain",
               f"alert mail is {mail.get_content_type()}, not text/plain only")
    out.expect(HOSTILE in mail.get_content(), "alert mail: the line is not quoted as it was")
    out.expect(re.fullmatch(r"<kbd-[0-9a-f]{32}@kbd>", mail["Message-ID"] or ""),
               f"alert mail: Message-ID {mail['Message-ID']!r}")
    out.expect("\n" not in str(mail["Subject"]), "alert mail: a line break in the Subject")


def check_digest_mail(out: Outcome, mail: EmailMessage) -> None:
    """The digest is HTML with its Markdown as the text alternative."""
    found = parts(mail)
    out.expect(set(found) == {"text/plain", "text/html"}, f"digest mail parts: {sorted(found)}")
    page = parse_page(found.get("text/html", ""))
    out.expect(not {"script", "img", "a", "iframe", "object", "embed"} & set(page.tags),
               f"digest HTML: a tag from the line: {sorted(set(page.tags))}")
    out.expect(not [n for _, n, _ in page.attrs if n.startswith("on") or n in ("src", "href")],
               "digest HTML: an attribute from the line")
    out.expect(HOSTILE in "".join(page.data), "digest HTML: the line does not read as text")
    out.expect(html.escape("<script>alert(1)</script>", quote=False)
               in found.get("text/html", ""), "digest HTML: <script> not escaped")
    # outside its fences the digest backslash-escapes what would start HTML, a link or an
    # image (kbd.digest._md): nothing of the line may be left unescaped there
    unescaped = re.sub(r"\\.", "", outside_fences(found.get("text/plain", "")))
    out.expect(not re.search(r"[<>\[\]&]", unescaped),
               f"digest Markdown: markup outside a fence: {unescaped[:400]!r}")
    out.expect(HOSTILE in found.get("text/plain", "").replace("\r\n", "\n"),
               "digest Markdown: the line is not quoted as it was in a fence")


# -- the tests -------------------------------------------------------------------------------

def test_an_answer_that_changes_sends_exactly_one_alert_per_change(tmp_path):
    out = alert_per_change(tmp_path)
    assert out.failures == [] and out.data_lost == 0, out.failures
    assert out.figures["events"] == out.figures["delivered"] == 4  # the first answer, 3 changes
    assert out.figures["lost"] == 0 and out.figures["unchanged_runs"] >= 2 * 4


def test_hostile_document_text_arrives_escaped(tmp_path):
    out = hostile_text(tmp_path)
    assert out.failures == [] and out.data_lost == 0, out.failures
    assert out.figures["events"] >= 4  # the alert on 3 channels, the digest


def test_the_checks_see_what_is_not_escaped():
    """The Slack and Markdown checks above fail on the line as it is, and pass on kbd's own
    rendering of it, so a passing scenario means something."""
    from kbd.notify import slack_text

    payload = {"kind": "answer", "question_id": 1, "question": HOSTILE_QUESTION,
               "answer_id": 2, "status": "ok", "change": "first", "answer": HOSTILE,
               "event_id": "kbd-x", "links": {"cli": "kbd answers 1", "api": "GET /answers/2"},
               "sources": [{"path": "/w/hostile.log", "first_line": 2, "last_line": 2,
                            "page": None, "lines": [HOSTILE]}]}
    raw, escaped = Outcome("raw"), Outcome("escaped")
    check_slack(raw, f"*title*\n{HOSTILE}\n```{HOSTILE}```", 1)
    check_slack(escaped, slack_text(payload), 1)
    assert len(raw.failures) == 4 and escaped.failures == []
    mail = EmailMessage()
    mail.set_content(f"# digest\n\n{HOSTILE}\n")
    mail.add_alternative(f"<p>{HOSTILE}</p>", subtype="html")
    with_markup = Outcome("markup")
    try:
        check_digest_mail(with_markup, mail)
    except AssertionError:  # parse_page: the line's </pre> closes nothing
        with_markup.failures.append("HTML nesting")
    assert with_markup.failures
