"""Digests: what the standing questions answered in a period, from which passages, and what
ingest did meanwhile, as Markdown and as one self-contained HTML page.

A digest is built from the store alone; it never calls the model. gather() reads everything
in one read transaction into a Digest; to_markdown() and to_html() only format it, so both
files of one run show the same thing. Document and answer text is untrusted (a log line may
say "<script>" or "ignore previous instructions"): the HTML escapes every piece of it and
forbids scripts and remote loads by Content-Security-Policy; the Markdown puts passages in
fenced code and escapes the characters that would start HTML, links or images elsewhere.
"""

from __future__ import annotations

import html
import os
import re
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

from kbd.private import private_fd, private_folder
from kbd.questions.specs import format_duration
from kbd.store import Store
from kbd.store import digests as sd
from kbd.store import events as ev
from kbd.store import questions as sq

LIST_LIMIT = 50  # entries per list (documents, failures, failed runs); the rest are counted
PASSAGE_LINES = 20  # a quoted passage is cut after this many lines
FORMATS = ("md", "html")
ACTIVITY = (("added", "Added"), ("changed", "Changed"), ("deleted", "Deleted"),
            ("rotated", "Rotated logs"))
BADGES = {"first": "first answer", "changed": "changed", "new-sources": "new sources",
          "unchanged": "unchanged"}
LOUD = {"first", "changed", "new-sources"}  # badges shown in bold


@dataclass
class Source:
    rank: int
    path: str  # the document's current path
    place: str  # "120-131", "120", "page 3" or ""
    score: float
    text: str  # the passage as it was cited
    live: bool  # False: the file has changed since and this passage is no longer in it

    @property
    def location(self) -> str:
        if self.place.startswith("page"):
            return f"{self.path} ({self.place})"
        return f"{self.path}:{self.place}" if self.place else self.path


@dataclass
class Run:
    """One answer to a standing question."""

    id: int
    status: str  # ok | not-found | nothing-new | failed | skipped
    change: str | None  # first | unchanged | changed | new-sources (ok answers only)
    text: str | None
    error: str | None
    started_at: datetime
    finished_at: datetime
    model: str | None
    sources: list[Source] = field(default_factory=list)


@dataclass
class QuestionReport:
    id: int
    text: str
    schedule: str  # "every 1h" or "cron 0 8 * * 1-5 (Europe/Berlin)"
    enabled: bool
    latest: Run | None  # the newest run in the period, any status; None: no run
    answer: Run | None  # the newest ok run in the period (latest itself when it is ok)
    previous_text: str | None  # the ok answer before `answer`, when answer.change is changed
    runs: dict[str, int]  # runs in the period by status
    failed: list[Run]  # failed runs in the period, newest first, at most LIST_LIMIT

    @property
    def failed_count(self) -> int:
        return self.runs.get("failed", 0)


@dataclass
class Digest:
    """Everything a report shows, gathered from the store."""

    generated_at: datetime  # the period's end
    since: datetime  # the period's start
    questions: list[QuestionReport]
    activity: dict  # as kbd.store.digests.ingest_activity gives it
    backlog: int | None  # passages waiting for compression, as the caller knows it
    model: str | None  # the model loaded now
    # notifications given up in the period (kbd.store.events.recent), newest first
    undelivered: list[dict] = field(default_factory=list)

    @property
    def failed_runs(self) -> int:
        return sum(q.failed_count for q in self.questions)


# -- gathering -------------------------------------------------------------------------------

def _place(source: dict) -> str:
    first, last, page = source["first_line"], source["last_line"], source["page"]
    if first is not None:
        return str(first) if last in (None, first) else f"{first}-{last}"
    return f"page {page}" if page is not None else ""


def node_path(item: dict) -> str:
    """A path as a report shows it: after its node's name in a fleet (web-1:/var/log/x)."""
    return f"{item['node']}:{item['path']}" if item.get("node") else item["path"]


def _run(answer: dict) -> Run:
    return Run(id=answer["id"], status=answer["status"], change=answer.get("change"),
               text=answer.get("text"), error=answer.get("error"),
               started_at=answer["started_at"], finished_at=answer["finished_at"],
               model=answer.get("model"),
               sources=[Source(rank=s["rank"], path=node_path(s), place=_place(s),
                               score=s["score"], text=s["text"], live=bool(s["live"]))
                        for s in answer.get("sources", [])])


def _schedule(question: dict) -> str:
    if question["schedule_kind"] == "interval":
        return f"every {format_duration(question['interval_s'])}"
    return f"cron {question['cron']} ({question['timezone']})"


def _question_report(conn, question: dict, since: datetime, now: datetime) -> QuestionReport:
    found = sd.question_runs(conn, question["id"], since, now, limit=LIST_LIMIT)
    latest = _run(found["latest"]) if found["latest"] else None
    answer = latest if latest and latest.status == "ok" else (
        _run(found["latest_ok"]) if found["latest_ok"] else None)
    previous = None
    if answer is not None and answer.change == "changed":
        before = sq.previous_answer(conn, question["id"], answer.id)
        previous = before["text"] if before else None
    return QuestionReport(
        id=question["id"], text=question["text"], schedule=_schedule(question),
        enabled=question["enabled"],
        latest=latest, answer=answer,
        previous_text=previous, runs=found["counts"],
        failed=[_run(r | {"status": "failed"}) for r in found["failed"]])


def gather(store: Store, since: datetime, now: datetime, model: str | None,
           backlog: int | None) -> Digest:
    """Read the period [since, now) from the store: every standing question with its newest
    run in the period (by start time), and ingest activity. Files that cannot be read are
    all those failing now, whenever they first failed. since and now must be
    timezone-aware."""
    if since.tzinfo is None or now.tzinfo is None:
        raise ValueError("since and now must be timezone-aware")
    if since > now:
        raise ValueError(f"since ({since.isoformat()}) is after now ({now.isoformat()})")
    with store.read() as conn:
        questions = [_question_report(conn, q, since, now) for q in sq.list_questions(conn)]
        activity = sd.ingest_activity(conn, since, now, limit=LIST_LIMIT)
        undelivered = ev.recent(conn, status="failed", since=since, limit=LIST_LIMIT)
    return Digest(generated_at=now.astimezone(UTC), since=since.astimezone(UTC),
                  questions=questions, activity=activity, backlog=backlog, model=model,
                  undelivered=undelivered)


# -- shared wording --------------------------------------------------------------------------

def _when(at: datetime) -> str:
    return at.astimezone().strftime("%Y-%m-%d %H:%M %Z")


def _period(d: Digest) -> str:
    return f"{_when(d.since)} to {_when(d.generated_at)}"


def _one_line(text: str | None) -> str:
    return " ".join((text or "").split())


def _badge(q: QuestionReport) -> str:
    """The state of the question's newest run, in words."""
    if q.latest is None:
        return "no run in this period"
    if q.latest.status == "failed":
        return f"FAILED: {_one_line(q.latest.error) or 'no error recorded'}"
    if q.latest.status == "nothing-new":
        return "nothing new"
    if q.latest.status == "skipped":
        return f"skipped: {_one_line(q.latest.error)}"
    if q.latest.status == "not-found":
        return "nothing found in the knowledge base"
    return BADGES.get(q.latest.change or "", q.latest.change or "answered")


def _runs_line(q: QuestionReport) -> str:
    ran = {status: n for status, n in q.runs.items() if status != "skipped"}
    total, skipped = sum(ran.values()), q.runs.get("skipped", 0)
    parts = [q.schedule] + ([] if q.enabled else ["disabled"])
    if total:
        detail = ", ".join(f"{n} {s}" for s, n in sorted(ran.items()))
        parts.append(f"{total} run{'s' * (total != 1)} in this period ({detail})")
    if skipped:
        parts.append(f"firings skipped {skipped} time{'s' * (skipped != 1)} while a run was "
                     "still going")
    return "; ".join(parts)


def _answer_lead(q: QuestionReport) -> str:
    """What the shown answer is: the newest run's, or an earlier one when the newest had none."""
    run = q.answer
    lead = "Answer" if run is q.latest else "Last answer in this period"
    model = f", model {run.model}" if run.model else ""
    return f"{lead} ({_when(run.finished_at)}{model}):"


def _cut(text: str) -> tuple[list[str], int]:
    """A passage's lines, at most PASSAGE_LINES, and how many were left out."""
    lines = text.rstrip("\n").split("\n")
    return lines[:PASSAGE_LINES], max(0, len(lines) - PASSAGE_LINES)


def _score(source: Source) -> str:
    return f"score {source.score:.3f}" + ("" if source.live else ", no longer in the file")


def _activity_counts(activity: dict) -> str:
    return ", ".join(f"{activity[key]['count']} {key}" for key, _ in ACTIVITY)


def _item_detail(key: str, item: dict) -> str:
    extra = f", rotated {item['rotations']}×" if key == "rotated" else ""
    return f"{item['kind']}, {_when(item['at'])}{extra}"


# -- Markdown --------------------------------------------------------------------------------

_MD_SPECIAL = re.compile(r"([\\`<>&\[\]])")


def _md(text: str) -> str:
    """Text that Markdown shows as itself: no HTML, links, images or code spans."""
    return _MD_SPECIAL.sub(r"\\\1", text)


def _md_code(text: str) -> str:
    """An inline code span holding text as it is (paths may hold backticks)."""
    fence = "`" * (max((len(m) for m in re.findall("`+", text)), default=0) + 1)
    pad = " " if text.startswith("`") or text.endswith("`") else ""
    return f"{fence}{pad}{text}{pad}{fence}"


def _md_quote(text: str, indent: str = "") -> list[str]:
    """A blockquote of literal text: fenced code inside, so nothing in it is markup."""
    lines, left_out = _cut(text)
    fence = "`" * max(3, max((len(m) for m in re.findall("`{3,}", text)), default=0) + 1)
    out = [f"{indent}> {fence}", *(f"{indent}> {line}".rstrip() for line in lines),
           f"{indent}> {fence}"]
    if left_out:
        out.append(f"{indent}> … {left_out} more line{'s' * (left_out != 1)} not shown")
    return out


def _md_paragraph(text: str, prefix: str = "") -> list[str]:
    return [f"{prefix}{_md(line)}".rstrip() for line in text.strip().split("\n")]


def _md_more(count: int, shown: int) -> list[str]:
    return [f"- and {count - shown} more"] if count > shown else []


def _md_question(q: QuestionReport) -> list[str]:
    out = [f"## {_md(_one_line(q.text))}", "", _md(_runs_line(q)), ""]
    badge = _md(_badge(q))
    out += [f"**{badge}**" if q.latest and (q.latest.change in LOUD
                                             or q.latest.status == "failed") else badge, ""]
    if q.answer is not None:
        out += [_md(_answer_lead(q)), "", *_md_paragraph(q.answer.text or ""), ""]
        if q.answer.sources:
            out += ["Sources:", ""]
            for s in q.answer.sources:
                out += [f"{s.rank}. {_md_code(s.location)} ({_score(s)})", "",
                        *_md_quote(s.text, indent=" " * (len(str(s.rank)) + 2)), ""]
        if q.previous_text is not None:
            out += ["Previous answer:", "", *_md_paragraph(q.previous_text, prefix="> "), ""]
    if q.failed:
        out += [f"Failed runs in this period ({q.failed_count}):", ""]
        out += [f"- {_when(r.started_at)}: {_md(_one_line(r.error) or 'no error recorded')}"
                for r in q.failed]
        out += [*_md_more(q.failed_count, len(q.failed)), ""]
    return out


def to_markdown(d: Digest) -> str:
    out = [f"# kbd digest: {_period(d)}", ""]
    if not d.questions:
        out += ["No standing questions.", ""]
    for q in d.questions:
        out += _md_question(q)
    out += ["## Ingest activity", "", f"Documents: {_activity_counts(d.activity)}.", ""]
    for key, label in ACTIVITY:
        listed = d.activity[key]
        if listed["count"]:
            out += [f"### {label} ({listed['count']})", ""]
            out += [f"- {_md_code(node_path(i))} ({_item_detail(key, i)})" for i in listed["items"]]
            out += [*_md_more(listed["count"], len(listed["items"])), ""]
    failures = d.activity["failures"]
    out += ["## Files that could not be read", ""]
    if not failures["count"]:
        out += ["None.", ""]
    else:
        out += [f"- {_md_code(node_path(f))} — {_md(f['code'])} ({_md(f['stage'])}) — "
                f"{_md(_one_line(f['message']))}" for f in failures["items"]]
        out += [*_md_more(failures["count"], len(failures["items"])), ""]
    if d.undelivered:
        out += ["## Notifications not delivered", ""]
        out += [f"- {_md(_undelivered_line(e))}" for e in d.undelivered] + [""]
    out += ["## Backlog and model", "", f"- Model: {_md(_model_line(d))}",
            f"- Backlog: {_backlog_line(d)}", ""]
    return "\n".join(out)


def _undelivered_line(event: dict) -> str:
    about = f" of question {event['question_id']}" if event["question_id"] else ""
    return (f"{event['kind']} event{about} to {event['channel']} ({event['key']}), given up "
            f"after {event['attempts']} attempts: {_one_line(event['last_error'])}")


def _model_line(d: Digest) -> str:
    return d.model or "none loaded"


def _backlog_line(d: Digest) -> str:
    if d.backlog is None:
        return "unknown"
    return f"{d.backlog} passage{'s' * (d.backlog != 1)} waiting for compression"


# -- HTML ------------------------------------------------------------------------------------

CSS = """
body { font: 15px/1.5 system-ui, sans-serif; max-width: 60rem; margin: 2rem auto;
       padding: 0 1rem; color: #222; }
h1 { font-size: 1.5rem; } h2 { font-size: 1.2rem; margin-top: 2.5rem; }
section { border-top: 1px solid #ddd; }
.meta, .answered { color: #666; font-size: 0.9rem; }
.badge { display: inline-block; padding: 0 0.5rem; border-radius: 0.3rem; background: #eee; }
.badge.changed, .badge.first, .badge.new-sources { background: #fde68a; font-weight: bold; }
.badge.failed { background: #fecaca; font-weight: bold; }
.badge.skipped { background: #fed7aa; }
.answer { white-space: pre-wrap; }
.where { font-family: ui-monospace, monospace; }
blockquote { margin: 0.3rem 0 0.8rem; padding-left: 0.8rem; border-left: 3px solid #ccc; }
pre { white-space: pre-wrap; word-break: break-word; margin: 0; font-size: 0.85rem; }
.note { color: #666; font-style: italic; }
table { border-collapse: collapse; } td, th { padding: 0.2rem 0.6rem; text-align: left;
  border-bottom: 1px solid #eee; vertical-align: top; }
"""
CSP = "default-src 'none'; style-src 'unsafe-inline'"  # no scripts, no remote anything


def _e(text) -> str:
    return html.escape(str(text), quote=True)


def _html_passage(text: str) -> str:
    lines, left_out = _cut(text)
    note = (f'<p class="note">… {left_out} more line{"s" * (left_out != 1)} not shown</p>'
            if left_out else "")
    return f"<blockquote><pre>{_e(chr(10).join(lines))}</pre>{note}</blockquote>"


def _html_more(count: int, shown: int) -> str:
    return f"<li>and {count - shown} more</li>" if count > shown else ""


def _badge_class(q: QuestionReport) -> str:
    if q.latest is None:
        return "none"
    return q.latest.status if q.latest.status != "ok" else (q.latest.change or "ok")


def _html_question(q: QuestionReport) -> str:
    out = [f'<section class="question" id="question-{q.id}">', f"<h2>{_e(q.text)}</h2>",
           f'<p class="meta">{_e(_runs_line(q))}</p>',
           f'<p><span class="badge {_e(_badge_class(q))}">{_e(_badge(q))}</span></p>']
    if q.answer is not None:
        out.append(f'<p class="answered">{_e(_answer_lead(q))}</p>')
        out.append(f'<p class="answer">{_e((q.answer.text or "").strip())}</p>')
        if q.answer.sources:
            out.append("<h3>Sources</h3><ol>")
            out += [f'<li value="{s.rank}"><span class="where">{_e(s.location)}</span> '
                    f'({_e(_score(s))}){_html_passage(s.text)}</li>' for s in q.answer.sources]
            out.append("</ol>")
        if q.previous_text is not None:
            out.append("<h3>Previous answer</h3>")
            out.append(f'<blockquote><p class="answer">{_e(q.previous_text.strip())}</p>'
                       "</blockquote>")
    if q.failed:
        out.append(f"<h3>Failed runs in this period ({q.failed_count})</h3><ul>")
        out += [f"<li>{_e(_when(r.started_at))}: {_e(_one_line(r.error) or 'no error')}</li>"
                for r in q.failed]
        out.append(_html_more(q.failed_count, len(q.failed)) + "</ul>")
    out.append("</section>")
    return "\n".join(out)


def _html_activity(activity: dict) -> str:
    out = ['<section class="activity">', "<h2>Ingest activity</h2>",
           f"<p>Documents: {_e(_activity_counts(activity))}.</p>"]
    for key, label in ACTIVITY:
        listed = activity[key]
        if listed["count"]:
            out.append(f"<h3>{_e(label)} ({listed['count']})</h3><ul>")
            out += [f'<li><span class="where">{_e(node_path(i))}</span> '
                    f"({_e(_item_detail(key, i))})</li>" for i in listed["items"]]
            out.append(_html_more(listed["count"], len(listed["items"])) + "</ul>")
    out.append("</section>")
    failures = activity["failures"]
    out += ['<section class="failures">', "<h2>Files that could not be read</h2>"]
    if not failures["count"]:
        out.append("<p>None.</p>")
    else:
        out.append("<table><tr><th>File</th><th>Code</th><th>Stage</th><th>Message</th>"
                   "<th>Since</th></tr>")
        out += [f'<tr><td class="where">{_e(node_path(f))}</td><td>{_e(f["code"])}</td>'
                f'<td>{_e(f["stage"])}</td><td>{_e(_one_line(f["message"]))}</td>'
                f'<td>{_e(_when(f["at"]))}</td></tr>' for f in failures["items"]]
        out.append("</table>")
        if failures["count"] > len(failures["items"]):
            out.append(f'<p class="note">and {failures["count"] - len(failures["items"])} '
                       "more</p>")
    out.append("</section>")
    return "\n".join(out)


def to_html(d: Digest) -> str:
    """One self-contained page: inline style, no scripts, nothing loaded from elsewhere."""
    title = f"kbd digest: {_period(d)}"
    body = [_html_question(q) for q in d.questions] or ["<p>No standing questions.</p>"]
    return "\n".join([
        "<!DOCTYPE html>", '<html lang="en">', "<head>", '<meta charset="utf-8">',
        f'<meta http-equiv="Content-Security-Policy" content="{_e(CSP)}">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{_e(title)}</title>", f"<style>{CSS}</style>", "</head>", "<body>",
        f"<h1>{_e(title)}</h1>", *body, _html_activity(d.activity),
        *(['<section class="undelivered">', "<h2>Notifications not delivered</h2>", "<ul>",
           *[f"<li>{_e(_undelivered_line(e))}</li>" for e in d.undelivered], "</ul>",
           "</section>"] if d.undelivered else []),
        '<section class="status">', "<h2>Backlog and model</h2>",
        f"<ul><li>Model: {_e(_model_line(d))}</li><li>Backlog: {_e(_backlog_line(d))}</li>"
        "</ul>", "</section>", "</body>", "</html>", ""])


# -- writing ---------------------------------------------------------------------------------

RENDER = {"md": to_markdown, "html": to_html}


def _claim(reports_dir: Path, stem: str, formats: tuple[str, ...]) -> list[Path]:
    """Create empty files stem.<format> for every format, or stem-2, stem-3, ... when a
    name is taken; never overwrites, even when another writer races us."""
    for n in range(1, 10_000):
        name = stem if n == 1 else f"{stem}-{n}"
        paths = [reports_dir / f"{name}.{fmt}" for fmt in formats]
        if any(p.exists() for p in paths):
            continue
        made = []
        try:
            for p in paths:
                os.close(private_fd(p, os.O_WRONLY | os.O_EXCL))
                made.append(p)
            return paths
        except FileExistsError:
            for p in made:
                p.unlink()
    raise FileExistsError(f"{reports_dir}: no free name for {stem}")


def write_digest(store: Store, reports_dir: Path, since: datetime, now: datetime,
                 model: str | None, backlog: int | None, formats=FORMATS,
                 notify: tuple[str, ...] = ()) -> dict:
    """Gather the period [since, now), write reports_dir/digest-YYYY-MM-DD-HHMM.<format>
    (now's local date and time; -2, -3, ... when taken), and record the run, with an event
    for each channel in `notify` in the same transaction."""
    formats = tuple(dict.fromkeys(formats))
    unknown = [f for f in formats if f not in RENDER]
    if not formats or unknown:
        raise ValueError(f"formats must be some of {', '.join(FORMATS)}, got {formats!r}")
    d = gather(store, since, now, model, backlog)
    texts = [RENDER[fmt](d) for fmt in formats]
    private_folder(reports_dir)
    paths = _claim(reports_dir, f"digest-{now.astimezone():%Y-%m-%d-%H%M}", formats)
    for path, text in zip(paths, texts, strict=True):
        # a file name that is not UTF-8 is written as \udcNN
        path.write_text(text, encoding="utf-8", errors="backslashreplace")
    names = [str(p) for p in paths]
    content = {"markdown": to_markdown(d), "html": to_html(d)} if notify else {}
    store.write(lambda conn: sd.record_digest(conn, d.generated_at, d.since, names, notify,
                                              content | {"failed_runs": d.failed_runs}))
    return {"paths": names, "since": d.since, "generated_at": d.generated_at,
            "questions": len(d.questions), "failed_runs": d.failed_runs}


def digest_history(store: Store, limit: int | None = None) -> list[dict]:
    """Digests written, newest first: generated_at, since, paths."""
    with store.read() as conn:
        return sd.list_digests(conn, limit)


def default_since(store: Store, now: datetime) -> datetime:
    """A digest covers what happened since the previous one (or the last day, for the first)."""
    previous = digest_history(store, limit=1)
    return previous[0]["generated_at"] if previous else now - timedelta(days=1)
