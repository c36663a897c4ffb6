"""Notification channels: an outbox event's payload -> a message for the channel's receiver,
and one delivery attempt.

    webhook  POST JSON (httpx, with timeouts) shaped for slack, matrix, ntfy or generic
    email    smtplib: STARTTLS, TLS or plain, with login; digests as HTML with a text part
    command  a program (argv, no shell) with the payload as JSON on stdin, under a timeout

Every message carries the event's stable id (kbd.store.events): the Message-ID of a mail,
`idempotency_key` in a webhook's body and the Idempotency-Key header, KBD_EVENT_ID and
`event_id` for a command. A repeat after a crash carries the same id, so a receiver can drop
it. Document and answer text is untrusted (a log line may hold `<!channel>` or `</pre>`):
it is escaped for each target: HTML in mail and Matrix HTML, & < > in Slack's mrkdwn, and
code fences are broken so a line cannot close one.

deliver() returns what the receiver said (HTTP 200, the SMTP reply, exit 0) or raises
DeliveryError; the sender (kbd.sender) marks an event delivered only after it returned.
"""

from __future__ import annotations

import html
import json
import os
import smtplib
import ssl
import subprocess
from datetime import UTC, datetime
from email.message import EmailMessage
from email.utils import format_datetime

import httpx

from kbd.config import NotifyChannel, read_secret
from kbd.errors import DeliveryError, KbdError

BADGES = {"first": "first answer", "changed": "answer changed",
          "new-sources": "new sources", "unchanged": "unchanged"}
MAX_TEXT_CHARS = 3500  # a chat message is cut here (Slack and ntfy cut near 4000)
ERROR_CHARS = 300


# -- wording -----------------------------------------------------------------------------

def _one_line(text: str | None, limit: int = 150) -> str:
    line = " ".join((text or "").split())
    return line if len(line) <= limit else line[:limit - 1] + "…"


def title(p: dict) -> str:
    kind = p["kind"]
    if kind == "digest":
        return f"kbd digest: {p['since'][:16]} to {p['generated_at'][:16]} UTC"
    if kind == "test":
        return f"kbd test message for channel {p['channel']}"
    what = {"answer": BADGES.get(p.get("change") or "", p.get("status", "")),
            "failed": "run failed", "skipped": "firings skipped"}[kind]
    return _one_line(f"kbd question {p['question_id']}, {what}: {p['question']}")


def place(source: dict) -> str:
    """path:first-last, path p.N or the path alone."""
    first, last = source.get("first_line"), source.get("last_line")
    if first is not None:
        return f"{source['path']}:{first}" + (f"-{last}" if last not in (None, first) else "")
    if source.get("page") is not None:
        return f"{source['path']} p.{source['page']}"
    return source["path"]


def _links(p: dict) -> str:
    parts = []
    if p.get("answer_id") is not None:
        parts += [f"answer {p['answer_id']}", p["links"]["cli"], p["links"]["api"]]
    return " · ".join([*parts, f"event {p['event_id']}"])


def _body(p: dict) -> str:
    if p["kind"] == "digest":
        return (p.get("markdown") or "") or "Reports: " + ", ".join(p.get("paths", []))
    if p["kind"] == "test":
        return "kbd can reach this channel."
    if p.get("answer") is not None:
        return p["answer"]
    return f"({p['status']}: {p.get('error') or 'no answer'})"


def plain_text(p: dict) -> str:
    """The message as text: title, answer (or why there is none), the cited lines under
    their file:lines, and where to read more."""
    out = [title(p), "", _body(p)]
    for source in p.get("sources", []):
        out += ["", place(source), *[f"    {line}" for line in source["lines"]]]
        if source.get("more_lines"):
            out.append(f"    … {source['more_lines']} more lines")
    return "\n".join([*out, "", _links(p)])


def html_text(p: dict) -> str:
    """The same as HTML, every piece of text escaped."""
    e = html.escape
    out = [f"<p><b>{e(title(p))}</b></p>", f"<p>{e(_body(p))}</p>"]
    for source in p.get("sources", []):
        out.append(f"<p><code>{e(place(source))}</code></p><pre>"
                   f"{e(chr(10).join(source['lines']))}</pre>")
    return "".join([*out, f"<p>{e(_links(p))}</p>"])


def slack_escape(text: str) -> str:
    """Slack mrkdwn: & < > are control characters (links, <!channel>) and must be escaped."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _unfence(text: str) -> str:
    return text.replace("```", "`\u200b`\u200b`")  # a line cannot close the code block


def slack_text(p: dict) -> str:
    out = [f"*{_unfence(slack_escape(title(p)))}*", _unfence(slack_escape(_body(p)))]
    for source in p.get("sources", []):
        quoted = _unfence(slack_escape("\n".join(source["lines"])))
        out.append(f"`{_unfence(slack_escape(place(source)))}`\n```{quoted}```")
    return _cut("\n".join([*out, slack_escape(_links(p))]))


def _cut(text: str) -> str:
    return text if len(text) <= MAX_TEXT_CHARS else text[:MAX_TEXT_CHARS - 1] + "…"


def tls_context(channel: NotifyChannel) -> ssl.SSLContext:
    """Certificates checked against the system's CAs, or only the channel's ca_file."""
    try:
        return ssl.create_default_context(
            cafile=str(channel.ca_file) if channel.ca_file else None)
    except (OSError, ssl.SSLError) as e:
        raise DeliveryError(f"notify.{channel.name}.ca_file {channel.ca_file}: {e}") from e


# -- webhooks ------------------------------------------------------------------------------

def webhook_body(channel: NotifyChannel, p: dict) -> dict:
    key = p["event_id"]
    if channel.format == "slack":
        return {"text": slack_text(p), "idempotency_key": key}
    if channel.format == "matrix":
        return {"msgtype": "m.text", "body": _cut(plain_text(p)),
                "format": "org.matrix.custom.html", "formatted_body": html_text(p),
                "idempotency_key": key}
    if channel.format == "ntfy":
        return {"topic": channel.topic, "title": title(p), "message": _cut(plain_text(p)),
                "tags": ["kbd"], "idempotency_key": key}
    event = {k: v for k, v in p.items() if k not in ("markdown", "html")}
    return {"idempotency_key": key, "title": title(p), "text": plain_text(p), "event": event}


def send_webhook(channel: NotifyChannel, p: dict) -> str:
    url = channel.url or read_secret(channel, channel.url_env, channel.url_file, "url")
    headers = {"Idempotency-Key": p["event_id"], "User-Agent": "kbd"}
    token = read_secret(channel, channel.secret_env, channel.secret_file, "secret")
    if token:
        headers["Authorization"] = f"Bearer {token}"
    method = "POST"
    if channel.format == "matrix":  # the client API's transaction id: Matrix drops repeats
        method, url = "PUT", f"{url.rstrip('/')}/{p['event_id']}"
    try:
        with httpx.Client(timeout=channel.timeout_s, follow_redirects=False,
                          verify=tls_context(channel)) as client:
            reply = client.request(method, url, json=webhook_body(channel, p), headers=headers)
    except httpx.HTTPError as e:
        raise DeliveryError(f"{type(e).__name__}: {e}") from e
    if not reply.is_success:
        raise DeliveryError(f"HTTP {reply.status_code}: {_one_line(reply.text, ERROR_CHARS)}")
    return f"HTTP {reply.status_code}"


# -- mail ----------------------------------------------------------------------------------

def mail_message(channel: NotifyChannel, p: dict) -> EmailMessage:
    """An alert is a short text mail; a digest is its HTML with the Markdown as the text
    alternative. The Message-ID is the event's id, the same on every repeat."""
    message = EmailMessage()
    message["Subject"] = title(p)
    message["From"] = channel.mail_from
    message["To"] = ", ".join(channel.to)
    message["Date"] = format_datetime(datetime.now(UTC))
    message["Message-ID"] = f"<{p['event_id']}@kbd>"
    message["X-Kbd-Event-Id"] = p["event_id"]
    if p["kind"] == "digest" and p.get("html"):
        message.set_content(p.get("markdown") or plain_text(p))
        message.add_alternative(p["html"], subtype="html")
    else:
        message.set_content(plain_text(p))
    return message


def send_mail(channel: NotifyChannel, p: dict) -> str:
    message = mail_message(channel, p)
    password = read_secret(channel, channel.secret_env, channel.secret_file, "secret")
    where = f"{channel.host}:{channel.smtp_port}"
    try:
        if channel.security == "tls":
            smtp = smtplib.SMTP_SSL(channel.host, channel.smtp_port, timeout=channel.timeout_s,
                                    context=tls_context(channel))
        else:
            smtp = smtplib.SMTP(channel.host, channel.smtp_port, timeout=channel.timeout_s)
        with smtp:
            if channel.security == "starttls":
                smtp.starttls(context=tls_context(channel))
            if channel.username:
                smtp.login(channel.username, password)
            refused = smtp.send_message(message)
    except (smtplib.SMTPException, OSError) as e:
        raise DeliveryError(f"{where}: {type(e).__name__}: {_one_line(str(e), ERROR_CHARS)}") \
            from e
    if refused:  # some recipients took it; the others would get a repeat, not a loss
        return f"accepted by {where}, refused for {', '.join(sorted(refused))}"
    return f"accepted by {where}"


# -- commands ------------------------------------------------------------------------------

def run_command(channel: NotifyChannel, p: dict) -> str:
    """argv with the payload as JSON on stdin; no shell. Exit 0 is delivered."""
    env = os.environ | {"KBD_EVENT_ID": p["event_id"], "KBD_EVENT_KIND": p["kind"]}
    try:
        done = subprocess.run(list(channel.argv), input=json.dumps(p).encode(), env=env,
                              capture_output=True, timeout=channel.timeout_s,
                              start_new_session=True, check=False)
    except subprocess.TimeoutExpired as e:
        raise DeliveryError(f"{channel.argv[0]} ran past {channel.timeout_s:g} s") from e
    except OSError as e:
        raise DeliveryError(f"cannot run {channel.argv[0]}: {e.strerror or e}") from e
    if done.returncode != 0:
        said = _one_line(done.stderr.decode(errors="replace"), ERROR_CHARS)
        raise DeliveryError(f"{channel.argv[0]} exited with {done.returncode}"
                            + (f": {said}" if said else ""))
    return "exit 0"


SENDERS = {"webhook": send_webhook, "email": send_mail, "command": run_command}


def deliver(channel: NotifyChannel, payload: dict) -> str:
    """One attempt; what the receiver said, or DeliveryError (a missing secret too)."""
    try:
        return SENDERS[channel.type](channel, payload)
    except DeliveryError:
        raise
    except KbdError as e:  # a secret that cannot be read now
        raise DeliveryError(e.message, hint=e.hint) from e

