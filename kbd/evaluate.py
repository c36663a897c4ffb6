"""Answer quality measured the way a user meets it: questions with known answer lines asked of
the running daemon, each reply scored on its sources, its answer, its decline and its citations.

A questions file holds one JSON object a line:

    {"id": "hdfs-001", "split": "dev", "question": "...", "kind": "literal",
     "gold": [{"file": "HDFS_2k.log", "lines": [1001, 1001]}], "accept": ["10\\.251\\.91\\.84"],
     "accept_mode": "any", "answerable": true}

`file` is relative to the data root the daemon watched; a PDF's gold names its `page` instead
of `lines`. `accept` holds regular expressions searched case-insensitively in the answer.
Unanswerable questions have `"answerable": false` and empty `gold` and `accept`.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from pathlib import Path

from kbd.errors import KbdError, QuestionsError

KINDS = ("literal", "paraphrase", "two-line", "time", "count", "report", "unanswerable")
DECLINED = "not-found"
QUOTED = re.compile(r'"[^\n]*"')  # a quoted line, from its first quote mark to its last
# [1] or [1, 3] standing alone; "sshd[24200]" quotes a process id, not a source
CITATION = re.compile(r"(?<![\w\]])\[(\d+(?:\s*,\s*\d+)*)\]")


@dataclass(frozen=True)
class Gold:
    file: str  # relative to the data root
    lines: tuple[int, int] | None  # 1-based, inclusive
    page: int | None  # PDFs


@dataclass(frozen=True)
class Question:
    id: str
    split: str
    question: str
    kind: str
    gold: tuple[Gold, ...]
    accept: tuple[str, ...]
    accept_mode: str
    answerable: bool


@dataclass
class Scored:
    id: str
    kind: str
    answerable: bool
    seconds: float
    gold_rank: int | None  # 1-based rank of the first source on a gold line
    answer_right: bool
    declined: bool
    citations_valid: bool
    citations_dropped: int
    status: str | None
    answer: str
    sources: list[str]  # "file:first-last" or "file p.N", best first
    error: str | None = None


def load_questions(path: Path, split: str | None = None,
                   limit: int | None = None) -> list[Question]:
    """The questions of a file (those of `split` if given, the first `limit`); a malformed
    line is refused with its line number and what is wrong with it."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as error:
        raise QuestionsError(f"{path}: cannot read the questions ({error.strerror})") from error
    questions, seen = [], set()
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            question = parse_question(json.loads(line))
        except (ValueError, KeyError, TypeError) as error:
            raise QuestionsError(f"{path}:{number}: {error}",
                                 hint="see kbd/evaluate.py for the format of a question") from None
        if question.id in seen:
            raise QuestionsError(f"{path}:{number}: the id {question.id!r} is used twice")
        seen.add(question.id)
        if split is None or question.split == split:
            questions.append(question)
    return questions[:limit]


def parse_question(raw: dict) -> Question:
    if not isinstance(raw, dict):
        raise ValueError("a question must be a JSON object")
    missing = [k for k in ("id", "question", "answerable") if k not in raw]
    if missing:
        raise ValueError(f"missing {', '.join(missing)}")
    kind = raw.get("kind", "literal")
    if kind not in KINDS:
        raise ValueError(f"kind {kind!r} is not one of {', '.join(KINDS)}")
    mode = raw.get("accept_mode", "any")
    if mode not in ("any", "all"):
        raise ValueError(f"accept_mode {mode!r} must be any or all")
    for pattern in raw.get("accept", []):
        try:
            re.compile(pattern)
        except re.error as error:
            raise ValueError(f"accept pattern {pattern!r} is not a regular expression: "
                             f"{error}") from None
    gold = tuple(parse_gold(g) for g in raw.get("gold", []))
    if raw["answerable"] and not (gold and raw.get("accept")):
        raise ValueError("an answerable question needs gold and accept")
    return Question(str(raw["id"]), raw.get("split", "dev"), raw["question"], kind, gold,
                    tuple(raw.get("accept", [])), mode, bool(raw["answerable"]))


def parse_gold(raw: dict) -> Gold:
    lines = raw.get("lines")
    if lines is not None and not (len(lines) == 2 and 1 <= lines[0] <= lines[1]):
        raise ValueError(f"gold lines {lines} must be [first, last] with 1 <= first <= last")
    if lines is None and raw.get("page") is None:
        raise ValueError(f"gold of {raw.get('file')!r} needs lines or a page")
    return Gold(raw["file"], tuple(lines) if lines else None, raw.get("page"))


def relative_path(path: str, data_root: Path | None) -> str:
    """A source's path as the questions name files: relative to the data root when it lies
    under it, else the whole path (matched by suffix)."""
    if data_root is not None and Path(path).is_relative_to(data_root):
        return Path(path).relative_to(data_root).as_posix()
    return Path(path).as_posix()


def on_gold(source: dict, gold: Gold, data_root: Path | None) -> bool:
    """Whether a source holds a gold line: the gold file (the same relative path, or a path
    ending in it) and the lines it cites (else its passage's range) overlapping the gold's;
    for a PDF, the gold page."""
    path = relative_path(source["path"], data_root)
    if path != gold.file and not path.endswith("/" + gold.file):
        return False
    if gold.lines is None:
        return source.get("page") == gold.page
    cited = source.get("cited_lines")
    if cited:
        return any(gold.lines[0] <= line <= gold.lines[1] for line in cited)
    lines = source.get("lines")
    return bool(lines) and lines[0] <= gold.lines[1] and gold.lines[0] <= lines[1]


def gold_rank(sources: list[dict], gold: Iterable[Gold], data_root: Path | None) -> int | None:
    gold = list(gold)
    return next((rank for rank, source in enumerate(sources, 1)
                 if any(on_gold(source, g, data_root) for g in gold)), None)


def answer_right(answer: str, accept: Iterable[str], mode: str) -> bool:
    found = [re.search(pattern, answer, re.IGNORECASE) is not None for pattern in accept]
    return bool(found) and (all(found) if mode == "all" else any(found))


def citations_valid(answer: str, sources: list[dict]) -> bool:
    """Every [n] in the answer names a source the prompt held (all of them, when the reply
    does not say which). Text in double quotes is a quoted line, not the answer's own words:
    `sshd[24206]` inside it is the line's, not a citation."""
    held = sum(1 for s in sources if s.get("in_prompt", True))
    own = QUOTED.sub('""', answer)
    cited = [int(n) for group in CITATION.findall(own) for n in group.split(",")]
    return all(1 <= n <= held for n in cited)


def source_place(source: dict, data_root: Path | None) -> str:
    path = relative_path(source["path"], data_root)
    if source.get("lines"):
        return f"{path}:{source['lines'][0]}-{source['lines'][1]}"
    return f"{path} p.{source.get('page')}"


def score(question: Question, reply: dict, seconds: float, data_root: Path | None) -> Scored:
    sources = reply.get("sources", [])
    answer = reply.get("answer") or ""
    declined = reply.get("status") == DECLINED
    return Scored(
        id=question.id, kind=question.kind, answerable=question.answerable, seconds=seconds,
        gold_rank=gold_rank(sources, question.gold, data_root) if question.answerable else None,
        answer_right=question.answerable and not declined and answer_right(
            answer, question.accept, question.accept_mode),
        declined=declined, citations_valid=citations_valid(answer, sources),
        citations_dropped=int(reply.get("citations_dropped", 0)), status=reply.get("status"),
        answer=answer, sources=[source_place(s, data_root) for s in sources])


def failed(question: Question, seconds: float, error: KbdError) -> Scored:
    """A question whose request the daemon refused: counted as wrong, not declined."""
    return Scored(question.id, question.kind, question.answerable, seconds, None, False, False,
                  True, 0, None, "", [], error=str(error))


def run(ask: Callable[[str], dict], questions: list[Question], data_root: Path | None,
        on_scored: Callable[[Scored], None] = lambda s: None) -> list[Scored]:
    """Ask each question in turn and score its reply; a refused request fails that question
    only (a daemon that is not running stops the run)."""
    results = []
    for question in questions:
        start = time.perf_counter()
        try:
            reply = ask(question.question)
        except KbdError as error:
            if error.code == "not-running":
                raise
            scored = failed(question, time.perf_counter() - start, error)
        else:
            scored = score(question, reply, time.perf_counter() - start, data_root)
        on_scored(scored)
        results.append(scored)
    return results


def percentile(values: list[float], p: float) -> float | None:
    """The nearest-rank percentile (p in 0..1), None for no values."""
    ordered = sorted(values)
    return ordered[round(p * (len(ordered) - 1))] if ordered else None


def share(flags: list[bool]) -> float | None:
    return sum(flags) / len(flags) if flags else None


def summarize(results: list[Scored]) -> dict:
    """Overall figures; recall, MRR, right answers and wrong declines are over the answerable
    questions, `declined` over the unanswerable ones."""
    answerable = [r for r in results if r.answerable]
    unanswerable = [r for r in results if not r.answerable]
    seconds = [r.seconds for r in results]
    return {
        "questions": len(results), "answerable": len(answerable),
        "unanswerable": len(unanswerable),
        "recall_at_1": share([r.gold_rank == 1 for r in answerable]),
        "recall_at_5": share([r.gold_rank is not None and r.gold_rank <= 5 for r in answerable]),
        "mrr": (sum(1 / r.gold_rank for r in answerable if r.gold_rank) / len(answerable)
                if answerable else None),
        "answer_right": share([r.answer_right for r in answerable]),
        "declined": share([r.declined for r in unanswerable]),
        "wrong_declines": share([r.declined for r in answerable]),
        "citations_invalid": sum(not r.citations_valid for r in results),
        "citations_dropped": sum(r.citations_dropped for r in results),
        "errors": sum(r.error is not None for r in results),
        "p50_s": percentile(seconds, 0.5), "p95_s": percentile(seconds, 0.95),
    }


def report(results: list[Scored]) -> dict:
    """Overall figures, figures per kind, and every question's outcome."""
    kinds = sorted({r.kind for r in results}, key=lambda k: KINDS.index(k))
    return {"overall": summarize(results),
            "by_kind": {k: summarize([r for r in results if r.kind == k]) for k in kinds},
            "questions": [asdict(r) for r in results]}


COLUMNS = (("n", "questions", "{}"), ("R@1", "recall_at_1", "{:.2f}"),
           ("R@5", "recall_at_5", "{:.2f}"), ("MRR", "mrr", "{:.2f}"),
           ("right", "answer_right", "{:.2f}"), ("declined", "declined", "{:.2f}"),
           ("wrong-decl", "wrong_declines", "{:.2f}"), ("bad-cite", "citations_invalid", "{}"),
           ("p50 s", "p50_s", "{:.1f}"), ("p95 s", "p95_s", "{:.1f}"))


def table(figures: dict) -> str:
    """The report as a text table: a row per kind, then the overall row."""
    rows = [("", *(title for title, _, _ in COLUMNS))]
    for name, summary in [*figures["by_kind"].items(), ("overall", figures["overall"])]:
        rows.append((name, *("-" if summary[key] is None else fmt.format(summary[key])
                             for _, key, fmt in COLUMNS)))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(cell.ljust(w) if i == 0 else cell.rjust(w)
                               for i, (cell, w) in enumerate(zip(row, widths, strict=True)))
                     for row in rows)
