"""Answers that need every matching line, not the best one: how many times something was
logged, which occurrence came first or last, the first (or last) one after (before) a
time of day, and which ones, where "Which node went NotReady?" has many answers.

A handful of ranked passages cannot count 43 logrotate failures spread over a 2,000-line log,
and the small model reads three lines. Here the question's intent is read from its words, the
terms that the evidence's best line matched say what an occurrence looks like, the store's
full-text index finds every live passage holding all of them, and the lines holding all of
them are counted or ordered. No model is asked: the answer quotes the line it stands on.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from kbd.runtime import evidence
from kbd.runtime.evidence import TIME_OF_DAY, Line
from kbd.store import Store
from kbd.store import queries as q

SCAN_LIMIT = 5000  # passages read per question; more and the count says "at least"
LISTED = 12  # values named in a list's answer; the rest are counted

# Counting phrasings. "How many <things> were ..." is a count only for things that happen:
# "How many bytes of result did TID 3 send" or "How many executors were lost" ask for a
# value inside one line or report sentence, which the ranked evidence answers.
EVENTS = ("connections|attempts|logins|sessions|failures|errors|warnings|exceptions|restarts|"
          "reboots|crashes|retries|timeouts|disconnects|disconnections|occurrences|events|alerts")
COUNT = re.compile(rf"\bhow (?:many times|often)\b|\bnumber of times\b"
                   rf"|\bhow many (?:{EVENTS}) (?:were|was|did|have|has|had|occurred)\b", re.I)
FIRST = re.compile(r"(?<!\bat )\b(?:first|earliest)\b", re.I)  # "at first" means initially
# "last" as in the latest one; not a window ("in the last hour") nor the verb ("How long did
# the stall last?")
LAST = re.compile(r"(?<!\bin the )(?<!\bover the )(?<!\bduring the )(?<!\bsince the )"
                  r"(?<!\bwithin the )(?<!\bat )\b(?:last|latest|most recent(?:ly)?)\b"
                  r"(?!\s+(?:\d|few|couple|(?:second|minute|hour|day|night|week|month|year|run)s?\b))",
                  re.I)
# "Which node went NotReady?" picks among the values the matching lines write: each one, where
# they write several
VERB = (r"(?:is|was|are|were|did|does|do|has|had|have|\w+ed|went|ran|got|sent|kept|took|made|"
        r"saw|hit|lost|left)\b")
WHICH = re.compile(rf"^\W*which\s+((?:[\w-]+\s+){{0,2}}?[\w-]+)\s+{VERB}", re.I)
WHO = re.compile(rf"^\W*who\s+{VERB}", re.I)  # "Who ran sudo?" asks which users
# "How many different IP addresses failed ...?" counts the values a list names
DISTINCT = re.compile(rf"^\W*how many (?:different|distinct|unique|separate)\s+"
                      rf"((?:[\w-]+\s+){{0,2}}?[\w-]+)\s+{VERB}", re.I)
HOW_LONG_LAST = re.compile(r"^\s*how long\b.*\blast\W*$", re.I)
BOUND = re.compile(r"\b(after|since|before|until)\s+(\d{1,2}:\d{2}(?::\d{2})?)\b", re.I)
MONTHS = ("jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec")
DATE = re.compile(r"\b(jan|feb|mar|apr|may|jun|jul|aug|sep|oct|nov|dec)[a-z]*\.?\s+(\d{1,2})\b",
                  re.I)
ISO_DATE = re.compile(r"\b(\d{4})-(\d{2})-(\d{2})\b")
# Words that say what to do with the lines, not what the lines say
INTENT_WORDS = frozenset("first last latest earliest recent recently most times time many often "
                         "number how count".split())


@dataclass(frozen=True)
class Bound:
    """A time the lines must be past: after it (or before it)."""

    after: bool
    seconds: int  # the time of day
    day: tuple[int, int] | None  # (month, day), where the question names one
    said: str  # as the question says it: "after 10:00 on Dec 10"
    words: frozenset[str]  # the question's words that state it, not what a line must hold


@dataclass(frozen=True)
class Intent:
    kind: str  # count | first | last | list
    bound: Bound | None = None
    noun: str = ""  # the stem of what a list names: `nod` of "Which nodes went NotReady?"


@dataclass(frozen=True)
class Stamp:
    """When a line was logged, as far as it says."""

    year: int | None
    month: int | None
    day: int | None
    seconds: int  # the time of day


@dataclass(frozen=True)
class Match:
    passage_id: int
    path: str
    line: Line
    stamp: Stamp | None


@dataclass
class Answer:
    kind: str  # count | first | last | list
    text: str
    sources: list[tuple[int, int, float, list[int], bool]]  # engines.Cited's fields, in order


def intent(question: str) -> Intent | None:
    """What the question asks of the matching lines: their count, the first or the last
    (optionally past a time bound), or the values they write ("Which node ...", "Who ...",
    "How many different ..."); None when one line answers it."""
    bound = time_bound(question)
    distinct = DISTINCT.match(question)
    if distinct:
        return Intent("list", noun=evidence.stem(distinct[1].split()[-1].lower()))
    if COUNT.search(question):
        return Intent("count", bound)
    first, last = FIRST.search(question), LAST.search(question)
    if last and HOW_LONG_LAST.match(question) and last.end() == len(question.rstrip("?.! ")):
        last = None
    if first and (not last or first.start() < last.start()):
        return Intent("first", bound)
    if last:
        return Intent("last", bound)
    if bound:  # "after 10:00, who ..." asks for the first one past it; "before", the last
        return Intent("first" if bound.after else "last", bound)
    which = WHICH.match(question)
    if which:  # the noun's stem: "Which nodes" names `node-4` too
        return Intent("list", noun=evidence.stem(which[1].split()[-1].lower()))
    return Intent("list", noun="user") if WHO.match(question) else None


def time_bound(question: str) -> Bound | None:
    found = BOUND.search(question)
    if found is None:
        return None
    seconds = day_seconds(TIME_OF_DAY.fullmatch(found[2]))
    if seconds is None:
        return None
    date = DATE.search(question)
    words = {found[2].lower()}
    said = f"{found[1].lower()} {found[2]}"
    day = None
    if date is not None:
        day = (MONTHS.index(date[1].lower()[:3]) + 1, int(date[2]))
        words |= {date[1].lower(), date[2]}
        said += f" on {date[0]}"
    return Bound(found[1].lower() in ("after", "since"), seconds, day, said, frozenset(words))


def day_seconds(time: re.Match | None) -> int | None:
    if time is None:
        return None
    hours, minutes, seconds = int(time[1]), int(time[2]), int(time[3] or 0)
    if hours > 23 or minutes > 59 or seconds > 59:
        return None
    return hours * 3600 + minutes * 60 + seconds


def stamp(text: str) -> Stamp | None:
    """The line's first time of day, with its date where the line has one (`Dec 10` or
    `2015-10-18`); None without a time."""
    seconds = next((s for s in map(day_seconds, TIME_OF_DAY.finditer(text)) if s is not None), None)
    if seconds is None:
        return None
    iso = ISO_DATE.search(text)
    if iso is not None:
        return Stamp(int(iso[1]), int(iso[2]), int(iso[3]), seconds)
    date = DATE.search(text)
    if date is not None:
        return Stamp(None, MONTHS.index(date[1].lower()[:3]) + 1, int(date[2]), seconds)
    return Stamp(None, None, None, seconds)


def past(bound: Bound, when: Stamp | None) -> bool:
    """Whether a line logged then is past the bound; a line without a time is not. The
    bound's day counts where the line has a date."""
    if when is None:
        return False
    moment: tuple[int, ...] = (when.seconds,)
    limit: tuple[int, ...] = (bound.seconds,)
    if bound.day is not None and when.month is not None:
        moment, limit = (when.month, when.day, when.seconds), (*bound.day, bound.seconds)
    return moment > limit if bound.after else moment < limit


def terms_to_match(shown: Sequence[evidence.Shown], weights: dict[str, float],
                   found: Intent) -> list[str]:
    """The question's terms that its best evidence line holds, the intent's own words left
    out of both (a line's `18:10:00` is no answer to "after 10:00"): what every line counted
    or ordered must hold. None when that line holds under half the question's terms:
    "cupsd shutdown succeeded" is no occurrence of "When did cupsd start up first?"."""
    skip = INTENT_WORDS | (found.bound.words if found.bound else frozenset())
    asked = {t: w for t, w in weights.items() if t.lower() not in skip}
    if not asked:
        return []
    _, best = evidence.best_line(shown, asked)
    # a term the line holds in a compound is looked for as the line writes it: the full-text
    # index finds `publickey`, not `public` and `key`
    written = evidence.compounds(asked, best.text, list(weights))
    plain = evidence.written_terms(asked, best.text)
    held = [t for t in asked if t in plain or t in written]
    # one term a case: two words of the line may write one compound two ways (`NameSystem`,
    # `FSNamesystem`), and the full-text index folds case
    terms = list({written.get(t, t).lower(): written.get(t, t) for t in held}.values())
    return terms if 2 * len(held) >= len(asked) else []


def holds_all(terms: Sequence[str], text: str) -> bool:
    """Whether the line holds every term; a word is not looked for inside a time of day
    (`10` is not in `05:12:10`), a term with punctuation (an IP, `10:00`) is, as written."""
    words = [t for t in terms if not re.search(r"\W", t)]
    marked = [t for t in terms if re.search(r"\W", t)]
    return (len(evidence.matched_terms(words, TIME_OF_DAY.sub(" ", text))) == len(words)
            and len(evidence.matched_terms(marked, text)) == len(marked))


def matching_lines(store: Store, terms: Sequence[str], allowed: set[int] | None,
                   line_numbers: Callable) -> tuple[list[Match], bool]:
    """Every line of the allowed live passages (None: all) holding all the terms, once each
    (passages may overlap), in document then line order; and whether the scan stopped at
    SCAN_LIMIT passages."""
    with store.read() as conn:
        rows = q.passages_with_all(conn, terms, SCAN_LIMIT)
    seen: set[tuple] = set()
    found: dict[str, list[Match]] = {}
    for row in rows:
        if allowed is not None and row.id not in allowed:
            continue
        for line in evidence.units(row.text, row.first_line, line_numbers(row)):
            key = (row.path, line.number if line.number is not None else line.text)
            if key in seen or not holds_all(terms, line.text):
                continue
            seen.add(key)
            found.setdefault(row.path, []).append(Match(row.id, row.path, line,
                                                        stamp(line.text)))
    # in line order within a document: a passage read later may start earlier
    ordered = [m for path in found for m in sorted(
        found[path], key=lambda m: (m.line.number is None, m.line.number or 0))]
    return ordered, len(rows) >= SCAN_LIMIT


def pick(matches: Sequence[Match], last: bool) -> Match:
    """The first (or last) line: in file order within a document; across documents by the
    time each one's first (last) line was logged where all of them tell it comparably, else
    by document path."""
    ends: dict[str, Match] = {}
    for m in matches:
        if last or m.path not in ends:
            ends[m.path] = m
    candidates = list(ends.values())
    stamps = [m.stamp for m in candidates]
    if all(s is not None for s in stamps) and len({shape(s) for s in stamps}) == 1:
        chosen = sorted(candidates, key=lambda m: (moment(m.stamp), m.path))
    else:
        chosen = sorted(candidates, key=lambda m: (m.path, m.line.number or 0))
    return chosen[-1] if last else chosen[0]


def shape(s: Stamp) -> tuple[bool, bool]:
    return s.year is not None, s.month is not None


def moment(s: Stamp) -> tuple[int, ...]:
    return tuple(v for v in (s.year, s.month, s.day) if v is not None) + (s.seconds,)


def place(m: Match) -> str:
    name = Path(m.path).name
    return f"{name}:{m.line.number}" if m.line.number is not None else name


def answer(store: Store, question: str, shown: Sequence[evidence.Shown],
           weights: dict[str, float], sources: Sequence[tuple[int, int, float]],
           allowed: set[int] | None, line_numbers: Callable) -> Answer | None:
    """The answer from every matching line, for a question that counts or orders them and
    whose evidence is shown; None for any other question, or when no line matches all the
    best line's terms (the engine then answers as usual)."""
    found = intent(question)
    if found is None or not shown:
        return None
    terms = terms_to_match(shown, weights, found)
    if not terms:
        return None
    matches, cut = matching_lines(store, terms, allowed, line_numbers)
    if found.bound is not None:
        matches = [m for m in matches if past(found.bound, m.stamp)]
    if not matches:
        return None
    # the parts of a glued term are searched for, not worth saying: "workerEnv", not "Env"
    parts = {p.lower() for t in terms for token in q.TOKEN.findall(t) for p in q.glued_parts(token)}
    quoted = ", ".join(f'"{t}"' for t in terms if t.lower() not in parts)
    if found.kind == "list":
        return listed(matches, found.noun, question, quoted, sources)
    first, last = pick(matches, False), pick(matches, True)
    if found.kind == "count":
        n = len(matches)
        where = f" {found.bound.said}" if found.bound else ""
        text = (f"{'At least ' if cut else ''}{n} line{'s' if n != 1 else ''}{where} "
                f"match{'es' if n == 1 else ''} {quoted} (first {place(first)}, last "
                f"{place(last)}): \"{first.line.text}\" [1]")
        return Answer("count", text, cited(matches, [first, last], sources, True))
    chosen = last if found.kind == "last" else first
    which = f"{found.kind} {found.bound.said}" if found.bound else found.kind
    text = (f'{place(chosen)}: "{chosen.line.text}" [1] (the {which} of the lines holding '
            f"{quoted})")
    return Answer(found.kind, text, cited(matches, [chosen], sources, False))


def listed(matches: Sequence[Match], noun: str, question: str, quoted: str,
           sources: Sequence[tuple[int, int, float]]) -> Answer | None:
    """Each value the matching lines write where the question asks which one: the user each
    line names (`evidence.user_named`) where it asks which user or who; else the value each
    line holds and not every other (nor the question) that names the asked noun (`node-4` for
    "Which node", not the `pod/...` beside it) or has the shape asked for (an address); a line
    writing none is counted as such. None where a line writes two, where most lines write none,
    or where all write one value: the best line answers as usual."""
    if evidence.USER_ASKS.fullmatch(noun):
        return told_list([evidence.user_named(m.line.text) for m in matches], question,
                         matches, quoted, sources)
    shape = evidence.answer_shape(question)
    asked = evidence.values(question)
    # each line's values by their case-folded form, as the line writes them
    lines = [{v.lower(): v for v in evidence.VALUE.findall(TIME_OF_DAY.sub(" ", m.line.text))}
             for m in matches]
    # what every line writes tells none apart (one line's values are all it has)
    shared = (set.intersection(*map(set, lines)) if len(lines) > 1 else set()) | asked
    values = []
    for written in lines:
        held = [v for key, v in written.items() if key not in shared
                and (noun in key or shape is not None and shape.fullmatch(v))]
        if len(held) > 1:
            return None
        values.append(held[0] if held else None)
    return told_list(values, question, matches, quoted, sources)


def told_list(values: Sequence[str | None], question: str, matches: Sequence[Match],
              quoted: str, sources: Sequence[tuple[int, int, float]]) -> Answer | None:
    """Each line's value (None: it names none) told as the distinct values with their numbers
    of lines, most often first, and the first line naming one quoted; None for fewer than two
    values, unless the question asks how many different ones there are, or where most lines
    name none."""
    found = Counter(v for v in values if v is not None)
    unnamed = len(values) - sum(found.values())
    if len(found) < (1 if DISTINCT.match(question) else 2) or 2 * unnamed > len(matches):
        return None
    first = pick([m for m, v in zip(matches, values, strict=True) if v is not None], False)
    ordered = [v for v, _ in found.most_common()]  # most often first, then as first seen
    named = ", ".join(f"{v} ({found[v]}{' lines' if i == 0 and found[v] > 1 else ''})"
                      for i, v in enumerate(ordered[:LISTED]))
    more = f" and {len(ordered) - LISTED} more" if len(ordered) > LISTED else ""
    none = f"; {unnamed} line{'s name' if unnamed > 1 else ' names'} none" if unnamed else ""
    text = (f"{len(found)} different, in the {len(matches)} lines holding {quoted}: "
            f'{named}{more}{none}. The first, {place(first)}: "{first.line.text}" [1]')
    return Answer("list", text, cited(matches, [first], sources, True))


def cited(matches: Sequence[Match], answering: Sequence[Match],
          sources: Sequence[tuple[int, int, float]], counted: bool) -> list:
    """The reply's sources: the passage of the answering line first, citing its matching
    lines (a count: all of them; else the one line), then for a count the other passages
    with matching lines (the one with the last kept), else the evidence's ranked passages;
    as many as the evidence had."""
    k = max(len(sources), 1)
    score = {pid: s for _, pid, s in sources}
    lines: dict[int, list[int]] = {}
    for m in matches if counted else answering[:1]:
        if m.line.number is not None and m.line.number not in lines.setdefault(m.passage_id, []):
            lines[m.passage_id].append(m.line.number)
    if counted:
        order = list(dict.fromkeys([answering[0].passage_id]
                                   + [m.passage_id for m in matches]))
        if len(order) > k:  # keep the last line's passage: the answer names its place
            order = order[:k - 1] + [answering[-1].passage_id]
        return [(rank, pid, score.get(pid, 0.0), lines.get(pid, []), True)
                for rank, pid in enumerate(order, 1)]
    order = list(dict.fromkeys([answering[0].passage_id] + [pid for _, pid, _ in sources]))
    return [(rank, pid, score.get(pid, 0.0), lines.get(pid, []), pid in lines)
            for rank, pid in enumerate(order[:k], 1)]
