"""What an answer may stand on: the lines of the ranked passages that match the question,
and the checks an answer passes after generation.

The text engine shows a small model only the lines that carry the question's terms, with a
line of context, numbered by source; the CPU's cost is the prompt, and a 135M model copies
from three lines far better than it reads five 256-token passages. After generation, a
citation of a source the prompt did not hold is dropped and counted, and an answer that
quotes no key token of the lines shown, or states a number, id or address none of them
holds, gives way to the best line quoted with its place.

Terms match tokens, case-folded, after a light stemming (`failed`, `fails` and `fail` are one
word), and also the parts of glued tokens: `7163Calories`
holds `7163` and `calories`, `isSimPinSecure` holds `sim`, `pin` and `secure`. A term with
inner punctuation (an IP, `blk_-1608`, a path) matches as a substring. A compound matches
however it is written: the question's `public key` is held by a line's `publickey` (and
its `publickey` by `public key`), as `timeout`, `hostname` or `username` are.

The best line is evidence only where it holds most of what the question asks about, each
term weighed by how rare it is in the store (`coverage`): "Which IP tried to log in as the
invalid user jenkins?" over an SSH log finds lines with "invalid user" and an IP, but none
with `jenkins`, the rarest term and the one the question turns on.

Evidence is chosen, weighed and quoted by record, not by line: a Java stack trace or a
journal export record spreads one event over lines, and "Which payment failed because the
socket closed?" is answered by the head line's payment and its `Caused by:` line together.
Coverage reads the record's quoted lines. Records are told by the lines' leading shape, with
no list of formats (`line_groups`); a log whose every line starts with its time keeps each
line a record of its own, and is answered as before.
"""

from __future__ import annotations

import functools
import math
import re
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from itertools import accumulate, product
from typing import NamedTuple

GLUED_PART = re.compile(r"[A-Z]+(?![a-z])|[A-Z]?[a-z]+|\d+")  # camelCase, letters|digits
WORD = re.compile(r"\w+")
SUFFIXES = ("ing", "ed", "es", "e", "s")
COMPOUND_PART = 3  # the shortest part of a compound: `timeout` is time+out, `login` no log+in
# two words of letters with only spaces or hyphens between: a compound may be written so
ADJACENT_WORDS = re.compile(
    rf"(?<!\w)([^\W\d_]{{{COMPOUND_PART},}})[\s-]+(?=([^\W\d_]{{{COMPOUND_PART},}})(?!\w))")
FIELD_MARK = re.compile(r"\w\"?\s*[=:]")
WORD_BEFORE = re.compile(r"([A-Za-z]+)[\s:=#_-]*$")  # the word a number follows: `stage 12`
FIELD_BEFORE = re.compile(r"([A-Za-z][\w.]*)\"?\s*[=:]\s*\"?$")  # a field's name, then its value
SPECIFIC = re.compile(r"\w*\d[\w.:/-]*")  # numbers, ids, addresses, times, dates
VALUE = re.compile(r"(?<![\w.-])(?:(?=[\w.:/-]*[A-Za-z])(?=[\w.:/-]*\d)[\w.:/-]*\w"
                   r"|\d{1,3}(?:\.\d{1,3}){3})")
TIME_OF_DAY = re.compile(r"(?<![\d:])(\d{1,2}):(\d{2})(?::(\d{2}))?(?![\d])")  # 10:32[:05]
# a date (2005.06.04, 17/06/09, Jun 14) or a time of day, with no field's `=` or `:` before
# it, near the line's start: a record's first line, whatever words come before its time
STAMP_NEAR_START = re.compile(
    r"[^=:\n]{0,24}?(?<![\w.])(?:\d{4}[-./]\d{1,2}[-./]\d{1,2}|\d{1,2}[-./]\d{1,2}[-./]\d{2,4}"
    r"|(?:Jan|Feb|Mar|Apr|May|Jun|Jul|Aug|Sep|Oct|Nov|Dec)\s+\d{1,2}\b|\d{1,2}:\d{2}(?!\d))")
SHAPE_RUN = re.compile(r"\d+|[^\W\d_]+|\s+|.")
SHAPE_RUNS = 6  # `2020-02-23 07:37:23,771 ERROR` is `9-9-9 `, `Jun 14 15:16:01` is `a 9 9:`
FIELD_START = re.compile(r"([A-Za-z_][\w.]*)=")  # a `FIELD=value` line's field
HEAD_SHARE = 1 / 3  # a stack trace's head, exception and `Caused by:` lines are a third each
MAX_RECORD_LINES = 50  # a longer run of continuation lines is cut: no head was seen for long
CITATION = re.compile(r"\s?\[(\d+(?:\s*,\s*\d+)*)\]")
MAX_LINE_CHARS = 240  # a longer line (a report's paragraph) is shown by its sentences
SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z0-9])")
SENTENCE_STOP = re.compile(r"[.!?:][\"')\]]*$")  # a line ending so ends its sentence
LIST_ITEM = re.compile(r"\s*(?:[*+-]|\d{1,3}[.)])\s+")
# a report's line of words, a list item's or not; not a table's row, a rule, a Markdown
# heading or a field (`:Author:`)
PROSE = re.compile(r"\s*(?:(?:[*+-]|\d{1,3}[.)])\s+)?[\w(\"'`“‘]")
WRAP_WIDTH = 60  # a line this long that ends mid-sentence was wrapped; a title is shorter
SPECIFIC_WEIGHT = 3.0  # an id, number or address in the question says more than a word
# Words that name what is asked or frame the question ("which IP", "what time", "someone"):
# the line holds the answer, not these words, so their absence says nothing
ANSWER_WORDS = frozenset("""address addresses ip port ports host machine node user client value
number date day hour time times first last many much someone us""".split())
# what a question asks for, and how a line writes it
ANSWER_SHAPES = [(re.compile(asks, re.I), re.compile(shape, re.I)) for asks, shape in [
    (r"\bip\b|(?<!mail )(?<!mac )(?<!memory )\baddress(?:es)?\b",
     r"(?<![\d.])\d{1,3}(?:\.\d{1,3}){3}(?![\d.])"),
    # `port 22`, or a port after an address or a dotted host name (not a time's `18:01`)
    (r"\bports?\b", r"\bport\W{0,3}\d{1,5}\b|(?:\b\d{1,3}(?:\.\d{1,3}){3}|\b[a-z][\w-]*"
                    r"(?:\.[\w-]+)+):\d{2,5}\b"),
    (r"\bhow long\b|\bduration\b",
     r"\b\d+(?:\.\d+)?\s?(?:ms|msecs?|µs|us|ns|s|secs?|seconds?|mins?|minutes?|h|hrs?|hours?"
     r"|days?)\b"),
    (r"\bphone\b", r"\+?\d[\d ()-]{6,}\d"),
]]
# "How much memory does", "How many HDFS bytes did": the amount of what; "What is the
# database password?", "What was the checksum of block ...": the value of what (a phrase of
# words only, no clause after)
ATTRIBUTE = re.compile(
    r"^\W*how (?:much|many) (?P<amount>[\w-]+(?: [\w-]+)?) (?:does|did|do|is|are|was|were|has|have"
    r"|had|will|would|can|could)\b|^\W*(?:what|which) (?:is|was|are|were) the (?P<of>(?:[\w-]+ )"
    r"{0,2}?[\w-]+) of\b|^\W*(?:what|which) (?:is|was|are|were) the (?P<value>(?:[\w-]+ ){0,3}"
    r"[\w-]+)\W*$", re.I)
# heads that name the answer's form, not a thing a line writes: "What was the name of the
# application?" is answered by a name, "the status code of" by `200`, "the heap size of" by
# `14 GB`, "the cause of" by what the line says
FORM_WORDS = ANSWER_WORDS | frozenset("""name names id ids code codes path paths file files
directory url version size sizes status state level length duration count amount total cause
causes reason reasons result results outcome type kind source origin purpose meaning content
contents message messages""".split())
STOP_LIKE = frozenset("of in on at to for from by with when where while after before".split())
# "Why did X fail?", "What caused ...": the answer states a cause, in words the question
# does not use (a line saying X failed restates it)
WHY = re.compile(r"^\W*why\b|\bwhat (?:caused|causes|made)\b|\b(?:cause|reason)s? (?:of|for)\b",
                 re.I)
CAUSE = re.compile(r"\b(?:because|due to|since|\w+ed by)\b|\w(?:Exception|Error)\b|\b(?:"
                   r"fail(?:ed|ure|s)?|refused|denied|unable|cannot|can't|could not|timed out"
                   r"|timeout|exceeded|no space|not found|no route|already|missing|invalid|unknown"
                   r"|lost|killed|full|result|exit(?:ed)?|code|signal|status|terminated|abort\w*"
                   r"|insufficient|unavailable|expired|exhausted|quota|limit|unreachable|out of"
                   r"|too many|mismatch|overflow|corrupt\w*|reset|closed)\b"
                   # a system call's reason after its failure: `failed (111: Connection
                   # refused)`, nginx's `failed (SSL: error:...:unsupported protocol)`
                   r"|\((?:\d+|[A-Z]{2,}): [^)]+\)", re.I)
# what "Which user ...", "What file ...", "What was the size of ..." ask for, and how a line
# writes one: a line naming what the question names and none of these holds no answer ("Which
# user deleted block X?" over "Deleting block X file /mnt/..."). Only kinds a log writes in a
# form of their own; a person, a name or a code may be any word.
USER_ASKS = re.compile(r"users?|accounts?|user ?names?|logins?", re.I)
KINDS = [(re.compile(asks, re.I), re.compile(writes, re.I)) for asks, writes in [
    (USER_ASKS.pattern,
     # an access log's `IP - admin [` and cron's `(ops) CMD` name their user
     r"(?<![/\w])(?:users?(?:_?(?:id|name))?|user ?names?|accounts?|logins?|lognames?|ruser|r?uid"
     r"|owner|principal)\b(?!/)|\b(?:for|by|as)\s+\(?[a-z_][\w.-]*|\bsudo(?:\[\d+\])?:\s*\w"
     r"|\w@\w|^\S+ \S+ [\w.@-]+ \[|\(\w[\w.-]*\) CMD\b"),
    (r"files?|file ?names?|paths?|director(?:y|ies)",
     r"(?<![\w/])/[\w.-]|\b[\w-]+\.[a-z][a-z\d]{0,4}\b(?!\.)|\b[a-z]:\\"),
    (r"versions?|releases?", r"\b(?:version|release|build)\b|(?<![\d.])v?\d+\.\d+(?:\.\d+)*\b"),
    (r"e-?mails?(?: address(?:es)?)?|mail address(?:es)?", r"[\w.+-]+@[\w-]+(?:\.[\w-]+)+"),
    (r"countr(?:y|ies)|cit(?:y|ies)|locations?",
     r"\b(?:countr(?:y|ies)|cit(?:y|ies)|location|geo\w*)\b"),
    (r"principals?", r"\bprincipal\b|\w@[A-Z]"),
    # an access log writes the response's size after its status: `" 502 83468`
    (r"sizes?", r"\b(?:size|length|len|bytes?)\b|\d\s?(?:[KMGTP]i?B|B)\b|\" [1-5]\d\d \d+\b"),
    (r"temperatures?", r"\btemp\w*|°|\bdegrees?\b|\bcelsius\b"),
]]
# the user a line names, by the first of these forms it writes: sudo's caller (not its
# `USER=root`, whom the command ran as), sshd's `for alice from` and `invalid user admin`, a
# field, cron's `(ops) CMD`, an access log's third field. Not a bare `user X`: sshd writes
# "user unknown" and "user authentication" too.
USER_NAMED = [re.compile(form, re.I) for form in [
    r"\bsudo(?:\[\d+\])?:\s+([\w.-]+) :", r"\bfor\s+(?:invalid\s+user\s+)?([\w.-]+)\s+from\b",
    r"\binvalid\s+user\s+([\w.-]+)", r"(?<![\w.])(?:r?user|user_?name|login)=\"?([\w.@-]+)",
    r"\((\w[\w.-]*)\) CMD\b", r"^\S+ \S+ (\w[\w.@-]*) \[",
]]
# the words of "Which Hadoop version ran ...", "What was the size of ...": up to the verb
ASKED_PHRASE = re.compile(r"^\W*(?:which|what)\s+(?:(?:is|was|are|were)\s+)?(?:the\s+)?"
                          r"((?:[\w-]+\s+){0,2}[\w-]+)", re.I)
# words after a kind's name that make it another thing's: a "user agent" is no user
MODIFIED = frozenset("""agent agents system systems descriptor descriptors handle handles limit
limits quota quotas count counts mode modes type types permission permissions group groups
class""".split())
AUXILIARY = frozenset("""is was are were do does did has have had will would can could of in on
at to for from by with""".split())
SHAPE_SHARE = 0.7  # a record of the asked shape is chosen over a better one holding this share
SEVERAL = re.compile(r"\b(?:ips|addresses|ports)\b", re.I)  # more than one asked for
MAX_QUOTED = 3  # records quoted where the question asks for several or cannot tell them apart
# an id of a kind: letters, then digits (`CT-78`, `INC-2041`, `dn-17`, `blk_-1608`, `gi-2026.01`)
KIND_ID = re.compile(r"(?<![\w.-])([A-Za-z]+)([-_]+)(\d[\w.]*?)(?=[^\w]*(?:\s|$))")
# "besides dn-17?", "before gi-2026.01?": the question ends naming one it asks for another of
EXCLUDED = re.compile(r"\b(?:besides|other than|apart from|aside from|except(?: for)?|instead of"
                      r"|before|after)\s+(\S+?)\W*$", re.I)
COVERAGE_FLOOR = 0.36  # the share of the question's weight the best line must hold. On the
# dev questions, quoting: 0.34 declined 39 of 50 unanswerable ones and 15 of 189 answerable,
# 0.36 and 0.38 43 and 14 to 17, 0.40 43 and 19 (bench/results/answers.json has the held-out)


@dataclass(frozen=True)
class Line:
    number: int | None  # the file's line (1-based); None where unknown (a PDF's page)
    text: str
    last: int | None = None  # the line a report's sentence wrapped onto ends on

    def span(self) -> list[int]:
        """The file lines it is written on."""
        if self.number is None:
            return []
        return list(range(self.number, (self.last or self.number) + 1))


Record = tuple[Line, ...]  # one logged event's lines in file order, its head (first) line first


@dataclass
class Shown:
    """One source as the prompt shows it: its rank is the number it is cited by."""

    rank: int
    where: str  # the file's name
    lines: list[Line]  # in file order, matching lines and their context
    cited: list[Line]  # the matching lines, best first
    records: list[Record] = field(default_factory=list)  # the matching records, best first;
    # none given: each cited line is one
    heading: str = ""  # a report's title and section the lines are under

    def __post_init__(self) -> None:
        self.records = self.records or [(line,) for line in self.cited]


@dataclass(frozen=True)
class Focus:
    """What the question names and asks for, beyond its weighed words."""

    names: frozenset[str] = frozenset()  # the words it quotes
    shape: re.Pattern | None = None  # what a line answering it writes (`answer_shape`)
    several: bool = False  # it asks for several of the shape ("Which ports")
    attribute: str | None = None  # what it asks the amount or value of (`asked_attribute`)
    excluded: str | None = None  # the id it asks for another of ("besides dn-17")
    why: frozenset[str] = frozenset()  # for "Why ...?", its words' stems: a cause is not one
    kind: re.Pattern | None = None  # what a line answering it must write (`asked_kind`)
    kind_word: str | None = None  # the question's word naming it: a line holds its value

    @classmethod
    def of(cls, question: str, names: frozenset[str]) -> Focus:
        """The question's focus, with the words it quotes (`names`)."""
        ends = EXCLUDED.search(question)
        excluded = ends[1] if ends and KIND_ID.fullmatch(ends[1]) else None
        why = (frozenset(stem(w.lower()) for w in WORD.findall(question))
               if WHY.search(question) else frozenset())
        word, kind = asked_kind(question) or (None, None)
        return cls(names, answer_shape(question), SEVERAL.search(question) is not None,
                   asked_attribute(question), excluded, why, kind, word)

    def states_cause(self, text: str) -> bool:
        """Whether the text states a cause in words the question does not hold."""
        return any(not {stem(w.lower()) for w in WORD.findall(m[0])} <= self.why
                   for m in CAUSE.finditer(text))


def answer_shape(question: str) -> re.Pattern | None:
    """What a line answering the question writes, where its words say: an IP address for
    "Which IP address", a port's number, a duration for "How long", a phone number."""
    return next((shape for asks, shape in ANSWER_SHAPES if asks.search(question)), None)


def asked_kind(question: str) -> tuple[str, re.Pattern] | None:
    """The question's word naming a kind of its own (`KINDS`) before its verb, and how a line
    writes one: a user for "Which user deleted ...", a version for "Which Hadoop version ran
    ...", a size for "What was the size of ..."."""
    found = ASKED_PHRASE.search(question)
    words = found[1].split() if found else []
    words = words[:next((i for i, w in enumerate(words) if w.lower() in AUXILIARY), len(words))]
    # the first of its words ending a kind's name of one or two words: "user" of "user
    # deleted block", "mail address" of "mail address received"
    return next(((words[end - 1], writes) for end in range(1, len(words) + 1)
                 for asks, writes in KINDS
                 if (asks.fullmatch(words[end - 1]) or asks.fullmatch(" ".join(words[end - 2:end])))
                 and " ".join(words[end:end + 1]).lower() not in MODIFIED), None)


def user_named(text: str) -> str | None:
    """The user the line names (`USER_NAMED`), None where it names none."""
    return next((found[1] for form in USER_NAMED if (found := form.search(text))), None)


def stem(word: str) -> str:
    for suffix in SUFFIXES:
        if word.endswith(suffix) and len(word) - len(suffix) >= 3:
            return word[:-len(suffix)]
    return word


# units as logs write them, by the stem of the word a question uses
UNITS = {stem(word): forms for words, forms in [
    (("millisecond", "milliseconds"), ("ms", "msec", "msecs")),
    (("microsecond", "microseconds"), ("µs", "usec", "usecs")),
    (("second", "seconds"), ("sec", "secs")),
    (("minute", "minutes"), ("min", "mins")),
    (("hour", "hours"), ("hr", "hrs")),
    (("kilobyte", "kilobytes"), ("kb", "kib")),
    (("megabyte", "megabytes"), ("mb", "mib")),
    (("gigabyte", "gigabytes"), ("gb", "gib")),
    (("terabyte", "terabytes"), ("tb", "tib")),
] for word in words}


# outcomes a question may ask about, each with what a line says when the other one happened
OUTCOMES = [
    ("fail failed fails failing failure failures unsuccessful",
     "succeed succeeded succeeds success successful successfully passed completed"),
    ("corrupt corrupted corruption", "verified verification valid intact healthy succeeded"),
    ("dead died", "alive healthy"),
    ("refused rejected denied", "accepted allowed granted permitted"),
    ("disabled", "enabled"),
    ("down", "up"),
    ("stop stopped stopping stops", "start started starting starts"),
]
OPPOSITES = {stem(word): frozenset(stem(w) for w in other.split())
             for pair in OUTCOMES for side, other in (pair, pair[::-1]) for word in side.split()}
# each outcome's own forms: `stopped` is written for "stop"
FORMS = {stem(word): frozenset(stem(w) for w in side.split())
         for pair in OUTCOMES for side in pair for word in side.split()}
NEGATION = re.compile(r"\b(?:not|never|no|cannot|didn't|wasn't|isn't|won't)\W+(?:\w+\W+){0,4}?$",
                      re.IGNORECASE)


def tokens(text: str) -> set[str]:
    """The stemmed, case-folded words of a text, with the parts of its glued tokens."""
    out = set()
    for word in WORD.findall(text):
        out.add(stem(word.lower()))
        out.update(stem(part.lower()) for part in GLUED_PART.findall(word))
    return out


def matched_terms(terms: Iterable[str], text: str, words: Sequence[str] = ()) -> set[str]:
    """The terms (as given) that the text holds, as written or in a compound written the
    other way (`compounds`, of the question's words), less numbers it holds only as
    another thing's (`misbound`)."""
    terms = list(terms)
    held = written_terms(terms, text)
    if not held.issuperset(terms):
        held |= compounds(terms, text, words).keys() | abbreviated(terms, text).keys()
    return held - misbound(held, text, words)


def unit_forms(term: str) -> tuple[str, ...]:
    """How a log abbreviates the unit the term names (`milliseconds`: ms, msec)."""
    return UNITS.get(stem(term.lower()), ())


def abbreviated(terms: Iterable[str], text: str) -> dict[str, str]:
    """The terms that the text holds only as their unit's abbreviation, each with the one it
    writes: "How many milliseconds did reading broadcast variable 4 take?" is answered by
    Spark's "took 19 ms"."""
    words = tokens(text)
    found = {}
    for term in terms:
        form = next((f for f in unit_forms(term) if stem(f) in words), None)
        if form and stem(term.lower()) not in words:
            found[term] = form
    return found


def numbers_after_words(words: Sequence[str]) -> list[tuple[str, str]]:
    """Each number of the question's words with the word of letters written before it:
    ("stage", "99") of "How many tasks of stage 99 ran?"."""
    return [(word, number) for word, number in zip(words, words[1:], strict=False)
            if word.isalpha() and number.isdigit()]


def misbound(terms: Iterable[str], text: str, words: Sequence[str]) -> set[str]:
    """The numbers among the terms that the question gives after one of its words ("stage
    99", "executor 12") and that the text holds only after another of them: "How many tasks
    of stage 99 ran on executor 12?" is not answered by "Finished task 0.0 in stage 12.0",
    whose 12 is a stage's."""
    words = list(words)
    label = {number: word for word, number in numbers_after_words(words)}
    numbers = [t for t in terms if t in label]
    if not numbers:
        return set()
    asked = word_tokens(tuple(words))
    out = set()
    for number in numbers:
        before = [WORD_BEFORE.search(text, max(0, m.start() - 40), m.start())
                  for m in re.finditer(rf"(?<![\w.]){number}(?![\d])", text)]
        others = {stem(b[1].lower()) for b in before if b} - {stem(label[number].lower())}
        if before and all(b and stem(b[1].lower()) in others & asked for b in before):
            out.add(number)
    return out


def other_fields(terms: Sequence[str], text: str, words: Sequence[str]) -> set[str]:
    """The numbers among the terms that the text holds only as the values of fields the
    question's words do not name: `latency_ms=403` is a weaker 403 for "Which IP got a
    403?" than an access log's bare status, as `"status": 403` is not for "Which request got
    status 403?", nor `totalSteps=7163` for "How many steps?". Structured logs (JSON,
    key=value) hold many numbers, each meaning what its field says."""
    numbers = [t for t in terms if t.isdigit()]
    if not numbers or not FIELD_MARK.search(text):
        return set()
    named = word_tokens(tuple(words))
    out = set()
    for number in numbers:
        places = [m.start() for m in re.finditer(rf"(?<![\d.]){number}(?!\d)", text)]
        fields = [FIELD_BEFORE.search(text, max(0, at - 64), at) for at in places]
        if places and all(f and not tokens(f[1]) & named for f in fields):
            out.add(number)
    return out


@functools.lru_cache(maxsize=256)
def word_tokens(words: tuple[str, ...]) -> frozenset[str]:
    """The tokens of the question's words (cached: read against every line with a field)."""
    return frozenset(tokens(" ".join(words)))


def written_terms(terms: Iterable[str], text: str) -> set[str]:
    """The terms that the text holds as written; a camelCase term also inside a longer word
    (`NotReady` in Kubernetes' `NodeNotReady`, `OOMKill` in `OOMKilling`)."""
    words = tokens(text)
    folded = text.lower()

    def held(term: str) -> bool:
        if re.search(r"\W", term):  # an address, a path, a phrase: as written
            return term.lower() in folded
        return stem(term.lower()) in words or camel_case(term) and term.lower() in folded

    return {t for t in terms if held(t)}


def compounds(terms: Iterable[str], text: str, words: Sequence[str] = ()) -> dict[str, str]:
    """The terms of letters that the text holds only in a compound written the other way,
    each with the compound as the text first writes it: two of the question's words joined,
    in the question's order, in one word of the text (`public` and `key` in `publickey`), or
    a term as two adjacent words (`timeout` in `time out` or `time-out`). No word list: logs
    and people write either form, and "Who logged in with a public key?" turns on the two
    words sshd writes as `publickey`. `words`: the question's words in order (its search
    terms; default the terms), which hold words no line need hold (`user` of "user name",
    ANSWER_WORDS) but which still make a compound with a term."""
    terms = list(terms)
    order = tuple(dict.fromkeys([*words, *terms]))
    position = {word: i for i, word in enumerate(order)}
    forms = word_forms(order)
    found: dict[str, str] = {}
    pieces, pairs = compound_shapes(text)
    for piece in pieces:
        lower = piece.lower()
        for cut in range(COMPOUND_PART, len(lower) - COMPOUND_PART + 1):
            left = forms.get(lower[:cut])
            if not left:  # most cuts end here, before a stem is taken
                continue
            for a, b in product(left, forms.get(stem(lower[cut:]), ())):
                if position[a] < position[b]:  # "named log" is no `logname`
                    found.setdefault(a, piece)
                    found.setdefault(b, piece)
    for joined, written_as in pairs:
        for term in forms.get(joined, ()):
            found.setdefault(term, written_as)
    written = written_terms(found, text) if found else set()
    return {t: compound for t, compound in found.items() if t in terms and t not in written}


@functools.lru_cache(maxsize=256)
def word_forms(words: tuple[str, ...]) -> dict[str, list[str]]:
    """Each word of letters by its lower case and its stem (cached: the same question's words
    are matched against every line read)."""
    forms: dict[str, list[str]] = {}
    for word in words:
        if word.isalpha():
            for form in dict.fromkeys((word.lower(), stem(word.lower()))):
                forms.setdefault(form, []).append(word)
    return forms


@functools.lru_cache(maxsize=4096)
def compound_shapes(text: str) -> tuple[tuple[str, ...], tuple[tuple[str, str], ...]]:
    """The words of letters of a text (and the parts of its glued ones) long enough to cut in
    two, and each two adjacent words as one (stemmed, and as written). Cached: a line is
    matched against the question's terms a few times over (weights, shown lines, the best)."""
    words = (p for word in WORD.findall(text) for p in (word, *GLUED_PART.findall(word))
             if p.isalpha() and len(p) >= 2 * COMPOUND_PART)
    pairs = ((stem((m[1] + m[2]).lower()), text[m.start(1):m.end(2)])
             for m in ADJACENT_WORDS.finditer(text))
    return tuple(dict.fromkeys(words)), tuple(pairs)


def camel_case(term: str) -> bool:
    """A word of letters glued at case changes (`NotReady`): found inside a longer one, it is
    that word, as a short id (`R1`) inside another word is not."""
    return term.isalpha() and len(term) >= 5 and len(GLUED_PART.findall(term)) > 1


def term_weights(terms: Sequence[str], lines: Sequence[str],
                 names: frozenset[str] = frozenset()) -> dict[str, float]:
    """Rarer terms among the lines read weigh more (inverse line frequency); specifics
    (ids, numbers, addresses) and the question's quoted `names` weigh more again."""
    counts = dict.fromkeys(terms, 0)
    for line in lines:
        for term in matched_terms(terms, line):
            counts[term] += 1
    return {t: math.log(1 + len(lines) / (1 + n)) * emphasis(t, names)
            for t, n in counts.items()}


def emphasis(term: str, names: frozenset[str] = frozenset()) -> float:
    """A specific, or a word the question quotes, says more than a word: the user named it
    ("the nonexistent account 'chen'"), and a paraphrase of the rest ("nonexistent account"
    for sshd's "Invalid user") holds none of the other words."""
    return SPECIFIC_WEIGHT if SPECIFIC.fullmatch(term) or term.lower() in names else 1.0


def coverage(terms: Sequence[str], text: str, frequencies: dict[str, int],
             passages: int, words: Sequence[str] = (),
             names: frozenset[str] = frozenset()) -> float:
    """The share of the terms' weight that the text holds, each term weighing
    log(1 + passages / (1 + the passages holding it)), a specific three times that: one the
    store lacks weighs most, and "stage 99" is not answered by a line of stage 12. A compound
    of the text that holds terms (`compounds`, of the question's words) counts once, at the
    lesser of their weight and its own: one word of the line is one match, and a runbook's
    `publickey` would otherwise hold `public` and `key` each as rare as a word the store
    lacks (on the dev questions, two unanswerable ones were then answered)."""
    def weight(term: str) -> float:
        return math.log(1 + passages / (1 + frequencies.get(term, 0))) * emphasis(term, names)

    total = sum(weight(t) for t in terms)
    if not total:
        return 1.0
    written = written_terms(terms, text)
    held = sum(weight(t) for t in sorted(written - misbound(written, text, words)))
    joined: dict[str, list[str]] = {}  # a compound of the text -> the terms it holds
    for term, compound in compounds(terms, text, words).items():
        joined.setdefault(compound, []).append(term)
    held += sum(min(sum(weight(t) for t in held_by), weight(compound.lower()))
                for compound, held_by in sorted(joined.items()))
    # an abbreviation counts as rare as it is: `ms` is in most logs, `milliseconds` in few
    held += sum(min(weight(t), weight(form)) for t, form in sorted(abbreviated(
        set(terms) - written, text).items()))
    return held / total


def asked_attribute(question: str) -> str | None:
    """The thing a question asks the amount or value of, where its form says: the last word of
    "How much memory does ...", "What is the database password?" or "What was the exit code of
    ..." (a noun phrase's head is its last word). A line that holds the rest, the database, and
    not this is about something else of it. None for a word that names the answer's form
    (`FORM_WORDS`: times, number, name, cause)."""
    found = ATTRIBUTE.search(question)
    phrase = (found["amount"] or found["of"] or found["value"]) if found else ""
    words = phrase.lower().split()
    if not words or STOP_LIKE.intersection(words) or words[-1] in FORM_WORDS:
        return None
    return phrase.split()[-1]


def kind_ids(text: str) -> dict[tuple[str, str], set[str]]:
    """The ids the text writes, by kind (their letters, case-folded, and separator)."""
    out: dict[tuple[str, str], set[str]] = {}
    for letters, sep, digits in KIND_ID.findall(text):
        out.setdefault((letters.lower(), sep), set()).add(digits)
    return out


def others_of_kind(name: str, text: str) -> set[str]:
    """The ids of the name's kind the text writes other than it: `CT-77` for `CT-78`."""
    found = KIND_ID.fullmatch(name)
    if not found:
        return set()
    letters, sep, digits = found.groups()
    return kind_ids(text).get((letters.lower(), sep), set()) - {digits}


def other_paths(name: str, text: str) -> set[str]:
    """The paths under the named path's first directory that the text writes other than it:
    `/api/orders/418` for `api/invoices/9616`."""
    top = name.strip("/").split("/")[0]
    if "/" not in name.strip("/") or not top:
        return set()
    found = {m[0].strip("/") for m in re.finditer(rf"/?{re.escape(top)}/[\w.%-]+(?:/[\w.%-]+)*",
                                                   text, re.I)}
    return {path for path in found if path.lower() != name.strip("/").lower()}


def about_another(names: Iterable[str], text: str) -> set[str]:
    """The ids and paths the question names that the text does not hold though it writes
    another of their kind: "Which Spark version was used in capacity test CT-78?" is not
    answered by the report on CT-77, whatever else of it the report holds, nor "Which user
    got a 418 on /api/invoices/9616?" by a request for /api/orders/418."""
    def another(name: str) -> bool:
        if KIND_ID.fullmatch(name):
            written = {"".join(parts).lower() for parts in KIND_ID.findall(text)}
            return name.lower() not in written and bool(others_of_kind(name, text))
        return name.strip("/").lower() not in text.lower() and bool(other_paths(name, text))

    return {name for name in names if another(name)}


def contradicted(terms: Iterable[str], text: str) -> set[str]:
    """The outcomes the question asks about that the text states otherwise: it holds the
    opposite and not the outcome ("Which block was reported corrupt?" over "Verification
    succeeded for blk_..."), or the outcome only negated ("Which datanode was declared
    dead?" over "The NameNode did not mark dn-17 as dead"). Whole words only: the
    `Failures` of `maxTaskFailuresPerNode` is a name, not an outcome."""
    words = tokens(text)
    return {term for term in terms if (opposite := OPPOSITES.get(stem(term.lower())))
            and (opposite & words and not FORMS[stem(term.lower())] & words
                 or negated(stem(term.lower()), text))}


def negated(outcome: str, text: str) -> bool:
    """Whether the text writes the outcome as a word, and only after a negation."""
    places = [m.start() for m in re.finditer(rf"\b{re.escape(outcome)}\w*", text, re.I)]
    return bool(places) and all(NEGATION.search(text, 0, at) for at in places)


def units(text: str, first_line: int | None, numbers: Sequence[int | None] | None) -> list[Line]:
    """A passage's text as lines with their file line numbers (given, or counted from
    first_line); a long line is cut into its sentences, which keep its number."""
    texts = text.split("\n")
    numbers = line_numbers(texts, first_line, numbers)
    return [Line(number, piece) for number, line in zip(numbers, texts, strict=True)
            for piece in pieces(line)]


def records(text: str, first_line: int | None, numbers: Sequence[int | None] | None,
            prose: bool = False) -> list[Record]:
    """A passage's units grouped into records (`line_groups`); a record of one line is one
    record per sentence, as `units` cuts it. A report's (`prose`) records are its
    sentences, wrapped over lines or not (`sentences`)."""
    texts = text.split("\n")
    numbers = line_numbers(texts, first_line, numbers)
    if prose:
        return [(line,) for line in sentences(texts, numbers)]
    out: list[Record] = []
    for group in line_groups(texts):
        lines = [Line(numbers[i], piece) for i in group for piece in pieces(texts[i])]
        out.extend([(line,) for line in lines] if len(group) == 1 else [tuple(lines)])
    return out


def sentences(texts: Sequence[str], numbers: Sequence[int | None]) -> list[Line]:
    """A report's lines as its sentences: a sentence that a line wraps onto the next is one
    Line spanning both ("the root volume filled at about" / "4.1 GB per hour of load."), and
    a line holding several is cut. A heading, a table's row or a list item starts anew."""
    out: list[Line] = []
    going_on = False  # the last sentence has not ended at the end of its line
    for i, (text, number) in enumerate(zip(texts, numbers, strict=True)):
        marker = LIST_ITEM.match(text)
        start = marker.end() if marker else 0
        cut = [piece.strip() for piece in SENTENCE_END.split(text[start:]) if piece.strip()]
        if cut and marker:  # `1. The daily volume`: the item's number is no sentence
            cut[0] = f"{marker[0].strip()} {cut[0]}"
        for j, piece in enumerate(cut):
            if j == 0 and going_on and wraps(text, texts[i - 1]):
                out[-1] = Line(out[-1].number, f"{out[-1].text} {piece}", number)
            else:
                out.append(Line(number, piece))
        going_on = bool(cut) and not SENTENCE_STOP.search(cut[-1])
    return out


def wraps(text: str, above: str) -> bool:
    """Whether a report's line goes on with the unended sentence of the line above: both are
    prose, not a table's row, a rule or a field (`:Author:`, `_PID=8149`), and it starts no
    list item. A capital may
    start a wrapped line ("Parquet."), but below a short line it starts a sentence below a
    title."""
    return (PROSE.match(above) is not None and PROSE.match(text) is not None
            and LIST_ITEM.match(text) is None
            and not FIELD_START.match(text) and not FIELD_START.match(above)
            and (not text.lstrip()[:1].isupper() or len(above.strip()) >= WRAP_WIDTH))


def line_numbers(texts: Sequence[str], first_line: int | None,
                 numbers: Sequence[int | None] | None) -> Sequence[int | None]:
    if numbers is not None:
        return numbers
    return [None if first_line is None else first_line + i for i in range(len(texts))]


def pieces(line: str) -> list[str]:
    """A line's text, stripped, or its sentences where it is long; none where it is blank."""
    cut = SENTENCE_END.split(line) if len(line) > MAX_LINE_CHARS else [line]
    return [piece.strip() for piece in cut if piece.strip()]


def line_groups(texts: Sequence[str]) -> list[list[int]]:
    """The non-blank lines (by index) grouped into records, in order. With a head shape
    (`head_shape`), a record starts at a head line: one of that shape, or one with a date or
    time near its start (BGL's lines start with level words of many shapes, then their
    time); a line that starts otherwise, or indented, continues it: a stack trace's `at` and
    `Caused by:` lines, a traceback's `File` and `ValueError:`. Without one (Markdown,
    prose, a report), each line is a record of its own. A run of `FIELD=value` lines is a
    record too, and a field it already holds starts the next: a journal export record (a
    log's passage keeps no blank line between them). After a blank line, a record starts."""
    # a field's line is no head: `_PID=23663` holds a value, not the time of a record
    head = head_shape([shape(text) for text in texts if text.strip() and not text[0].isspace()
                       and not FIELD_START.match(text)])
    groups: list[list[int]] = []
    fields: set[str] = set()  # the names of the current record's fields
    for i, text in enumerate(texts):
        if not text.strip():
            continue
        if not groups or len(groups[-1]) >= MAX_RECORD_LINES or not continues(
                text, texts[i - 1], head, fields):
            groups.append([])
            fields = set()
        groups[-1].append(i)
        if named := FIELD_START.match(text):
            fields.add(named[1])
    return groups


def continues(text: str, above: str, head: str | None, fields: set[str]) -> bool:
    """Whether the line continues the record of the line above it (`line_groups`)."""
    if not above.strip():
        return False
    if named := FIELD_START.match(text):
        return FIELD_START.match(above) is not None and named[1] not in fields
    return head is not None and (text[0].isspace() or shape(text) != head
                                 and STAMP_NEAR_START.match(text) is None)


def shape(text: str) -> str:
    """The line's leading character classes, runs collapsed: digits 9, letters a, spaces one
    space, other characters as they are. `2020-02-23 07:37:23,771 ERROR` and `2021-11-02
    10:01:09,004 INFO` are both `9-9-9 `."""
    runs = SHAPE_RUN.findall(text[:64])[:SHAPE_RUNS]
    return "".join("9" if r[0].isdigit() else "a" if r[0].isalpha() else " " if r.isspace()
                   else r for r in runs)


def head_shape(shapes: Sequence[str]) -> str | None:
    """The most common of the lines' shapes where it holds a digit (a timestamp, a date, a
    counter) and starts two lines and HEAD_SHARE of them at least; of equally common
    shapes, one with a digit. Prose is mostly `a a a ` (words and spaces), and the odd `a a
    9 ` of a table's rows or a sentence is not a log's time."""
    counts = Counter(shapes)
    top = max(counts, key=lambda s: (counts[s], "9" in s), default="")
    return top if "9" in top and counts[top] >= max(2, HEAD_SHARE * len(shapes)) else None


def show(rank: int, where: str, records: list[Record], weights: dict[str, float],
         matches: int, context: int, heading: str = "") -> Shown | None:
    """The source's best `matches` records by matched weight (the others at least half the
    best one's: a record holding only a common term is no match), each cited by its best
    line, and its head where that holds terms the best line lacks; shown by its best line
    with `context` lines before and after, and its head. None when no record matches."""
    scored = sorted(((record_weight(r, weights), -i, i) for i, r in enumerate(records)),
                    reverse=True)
    if not scored or scored[0][0] <= 0:
        return None
    best = [i for score, _, i in scored[:matches] if score >= scored[0][0] / 2]
    lines = [line for record in records for line in record]
    starts = list(accumulate((len(r) for r in records), initial=0))
    keep, cited = set(), []
    for i in best:
        at = starts[i] + records[i].index(best_in(records[i], weights))
        keep.update(range(max(0, at - context), min(len(lines), at + context + 1)))
        keep.add(starts[i])
        cited.append(lines[at])
        if at != starts[i] and matched_terms(weights, records[i][0].text) - matched_terms(
                weights, lines[at].text):
            cited.append(records[i][0])
    return Shown(rank, where, [lines[j] for j in sorted(keep)], cited,
                 [records[i] for i in best], heading)


def drop_citations(text: str, held: set[int]) -> tuple[str, int]:
    """The text without citations of sources the prompt did not hold, and how many there
    were; `[1, 7]` with 7 not held becomes `[1]`."""
    dropped = 0

    def keep(match: re.Match) -> str:
        nonlocal dropped
        numbers = [n.strip() for n in match[1].split(",")]
        kept = [n for n in numbers if int(n) in held]
        dropped += len(numbers) - len(kept)
        return f"{match[0][:len(match[0]) - len(match[0].lstrip())]}[{', '.join(kept)}]" \
            if kept else ""

    return CITATION.sub(keep, text), dropped


def key_tokens(line: str) -> set[str]:
    """The tokens of a line that an answer drawn from it would repeat: its specifics and
    its longer words."""
    return {w.lower().rstrip(".:-/") for w in SPECIFIC.findall(line)} | {
        w for w in tokens(line) if len(w) >= 4 and not w.isdigit()}


def invented(answer: str, shown: Sequence[Shown], question: str) -> set[str]:
    """Specifics (numbers, ids, addresses, dates) in the answer that neither the question nor
    a shown line holds as a whole (a block id's digits in another id are no match)."""
    held = "\n".join([question] + [line.text for s in shown for line in s.lines])
    return {w for w in (w.strip(".:-/") for w in SPECIFIC.findall(CITATION.sub("", answer)))
            if not re.search(rf"(?<!\w){re.escape(w)}(?!\w)", held, re.IGNORECASE)}


def said(text: str) -> set[str]:
    """The words and the specifics of a text, as grounded compares them."""
    return tokens(text) | {w.lower() for w in SPECIFIC.findall(text)}


def grounded(answer: str, best: Line, shown: Sequence[Shown], question: str) -> bool:
    """Whether the answer repeats key tokens of the best matching line beyond the question's
    own words (those no other shown line holds, where it has some), and invents no
    specifics. Only the best line: on the dev questions a kept answer drawn from any shown
    line was right 34 times in 80, the best line quoted 71 in 100, and a 135M model copies a
    neighbouring line as readily as the one that answers."""
    answered, asked = said(answer), said(question)
    own = key_tokens(best.text) - asked
    # what only the best line says: a log's neighbours share its date, level and class
    others = set().union(*(key_tokens(line.text) for s in shown for line in s.lines
                           if line != best))
    return bool((own - others or own) & answered) and not invented(answer, shown, question)


def line_weight(text: str, weights: dict[str, float]) -> float:
    """The matched terms' weight; a number that is only another field's value counts half
    (`other_fields`): of two lines with the question's 403, the one whose 403 is not a
    latency is the better. It still counts, and coverage counts it whole: a user asking for
    "a 403" of JSON logs means their `"status": 403`. So does a word held only as a part of a
    glued name: "Which payment failed?" is told by "Failed to process payment 78123", not by
    a user's failure that the class `PaymentClient` logged."""
    # summed in one order: a set's order follows the process's string hashing, and floats
    # summed in another order can break a tie between lines otherwise
    keyed = other_fields(list(weights), text, list(weights))
    whole = {stem(word.lower()) for word in WORD.findall(text)}
    return sum(weights[t] / (2 if t in keyed or t.isalpha() and stem(t.lower()) not in whole
                             else 1)
               for t in sorted(matched_terms(weights, text)))


def record_weight(record: Record, weights: dict[str, float]) -> float:
    """The weight of the terms matched anywhere in the record (`line_weight`)."""
    return line_weight("\n".join(line.text for line in record), weights)


def best_in(record: Record, weights: dict[str, float]) -> Line:
    """The record's line with the most matched weight; of equals, the first."""
    return max(record, key=lambda line: line_weight(line.text, weights))


class Candidate(NamedTuple):
    """A record as best_records weighs it: what of the question it names, then its weight,
    then its source's rank (the better first)."""

    named: float
    weight: float
    rank: int  # the source's rank, negated: higher is better
    said: str  # its lines under its source's heading
    source: Shown
    record: Record

    def order(self) -> tuple[float, float, int]:
        return self.named, self.weight, self.rank


def best_record(shown: Sequence[Shown], weights: dict[str, float],
                focus: Focus = Focus()) -> tuple[Shown, Record]:
    """The matching record holding the most of what the question names (`named`), then with
    the most matched weight; of equals, the better-ranked. A report's long sentence holds
    many of a question's words, and the log line holding its quoted 'chen' only that. A
    report's line is weighed with its title and section: else its title, which names the
    report's subject, would answer every question about the report. Where the question asks
    for a shape (`answer_shape`), a record writing it is chosen over a better one that does
    not, if it holds as much of what is named and SHAPE_SHARE of the weight: sshd's "Invalid
    user pgadmin from 112.95.230.3" over "invalid user pgadmin [preauth]" for the IP."""
    return best_records(shown, weights, focus)[0]


def best_records(shown: Sequence[Shown], weights: dict[str, float],
                 focus: Focus = Focus()) -> list[tuple[Shown, Record]]:
    """The best record (`best_record`) and, where the question asks for several of its shape
    ("Which ports did the listeners start on?"), the others that would be chosen as well,
    each writing another value of it, up to MAX_QUOTED. A record holding the attribute the
    question asks about ("How many reduces"), or another id of the kind it asks for another of
    ("besides dn-17"), is chosen as one writing its shape is. Otherwise the best and the
    records the question cannot tell from it (as much named and matched weight) that write
    values it does not, up to MAX_QUOTED: "What task attempt did the JVM get handed?" holds
    as much of "JVM ... asked for a task" as of "JVM ... given task: attempt_...", and only
    the second answers."""
    named_weights = {t: weights[t] for t in named(weights, focus.names)}
    candidates = []
    for source in shown:
        for record in source.records:
            said = "\n".join([source.heading, *(line.text for line in record)])
            candidates.append(Candidate(line_weight(said, named_weights),
                                        line_weight(said, weights), -source.rank, said,
                                        source, record))
    top = max(candidates, key=Candidate.order)

    def writes_what_is_asked(said: str) -> bool:
        return ((focus.shape is None or focus.shape.search(said) is not None)
                and (focus.attribute is None or bool(matched_terms([focus.attribute], said)))
                and (focus.excluded is None or bool(others_of_kind(focus.excluded, said)))
                and (not focus.why or focus.states_cause(said))
                and (focus.kind is None or focus.kind.search(said) is not None))

    # a cause is what "Why" asks: a line stating one answers, however few of its words it holds
    fitting = sorted((c for c in candidates if c.named == top.named
                      and (c.weight >= SHAPE_SHARE * top.weight or focus.why)
                      and writes_what_is_asked(c.said)),
                     key=Candidate.order, reverse=True) if (focus.shape or focus.attribute
                                                            or focus.excluded or focus.why
                                                            or focus.kind) else []
    if focus.several and focus.shape and fitting:
        chosen: dict[str, tuple[Shown, Record]] = {}  # one record a value of the shape
        for c in fitting:
            chosen.setdefault(focus.shape.search(c.said)[0], (c.source, c.record))
        return list(chosen.values())[:MAX_QUOTED]
    best = (fitting or [top])[0]
    quoted, seen = [best], values(best.said)
    for c in sorted(fitting or candidates, key=Candidate.order, reverse=True):
        if (len(quoted) < MAX_QUOTED and (c.named, c.weight) == (best.named, best.weight)
                and values(c.said) - seen):
            quoted.append(c)
            seen |= values(c.said)
    return [(c.source, c.record) for c in quoted]


def values(text: str) -> set[str]:
    """The values a text writes that tell one event from another of its kind: ids and
    addresses (letters with digits, dotted numbers), not times, dates or counts."""
    return {v.lower() for v in VALUE.findall(text)}


def named(terms: Iterable[str], names: frozenset[str]) -> list[str]:
    """The terms that name what the question is about: the words it quotes, and its ids and
    addresses (a specific with more than digits: a bare number is often a count)."""
    return [t for t in terms if t.lower() in names or SPECIFIC.fullmatch(t) and not t.isdigit()]


def best_line(shown: Sequence[Shown], weights: dict[str, float],
              focus: Focus = Focus()) -> tuple[Shown, Line]:
    """The best record's best line."""
    source, record = best_record(shown, weights, focus)
    return source, best_in(record, weights)


def quoted(record: Record, weights: dict[str, float], focus: Focus = Focus()) -> list[Line]:
    """The record's lines an answer quotes, in file order: its head, its best line, any other
    line holding a term that the lines before it do not (a stack trace's many `at
    ...PaymentClient` lines repeat the head's `payment`), and for "Why ...?" the first line
    stating a cause (the exception under "Failed to process payment 39695")."""
    best = best_in(record, weights)
    held = matched_terms(weights, record[0].text) | matched_terms(weights, best.text)
    cause = next((line for line in record if focus.why and focus.states_cause(line.text)), None)
    out = []
    for line in record:
        new = matched_terms(weights, line.text) - held
        if line is record[0] or line is best or line is cause or new:
            out.append(line)
            held |= new
    return out


def record_text(record: Record, weights: dict[str, float], focus: Focus = Focus()) -> str:
    """What the record says of the question: its quoted lines."""
    return "\n".join(line.text for line in quoted(record, weights, focus))


def extractive_answer(shown: Sequence[Shown], weights: dict[str, float],
                      focus: Focus = Focus()) -> str:
    """The best record quoted with its place and source number: its one line, or its quoted
    lines with the record's line range; where the question asks for several, each of the
    best records (`best_records`)."""
    return "; ".join(f"{place(source.where, record)}: "
                     + " … ".join(f'"{line.text}"' for line in quoted(record, weights, focus))
                     + f" [{source.rank}]"
                     for source, record in best_records(shown, weights, focus))


def place(where: str, record: Record) -> str:
    """The file's name with the record's line, or its first and last lines, where known."""
    numbers = [number for line in record for number in line.span()]
    if not numbers:
        return where
    if numbers[0] == numbers[-1]:
        return f"{where}:{numbers[0]}"
    return f"{where}:{numbers[0]}-{numbers[-1]}"
