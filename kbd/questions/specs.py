"""Standing questions: what is asked, over which passages, and when.

A request from the API or CLI ({"text": ..., "every": "15m" | "cron": "0 8 * * 1-5", ...})
becomes a validated, frozen QuestionSpec, whose fields are the questions table's columns:
kbd.store.questions.create_question(conn, **dataclasses.asdict(spec)) stores it. Every error
is an InputError whose message starts with the field it is about.

Crontab expressions are read as cron reads them (day of week 0 or 7 = Sunday). APScheduler
3.x counts weekdays from Monday = 0, so trigger_for rewrites the day-of-week field into
names before building the trigger.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields
from datetime import datetime
from typing import NoReturn
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from apscheduler.triggers.cron import CronTrigger
from apscheduler.triggers.interval import IntervalTrigger

from kbd.errors import InputError

MAX_TEXT_CHARS = 2_000
TOP_K_RANGE = (1, 50)
MAX_NEW_TOKENS_RANGE = (1, 2048)
MAX_DURATION_S = 3650 * 86_400  # ten years; fits the 32-bit integer columns
KINDS = ("log", "report")
DURATION_UNITS = {"w": 604_800, "d": 86_400, "h": 3_600, "m": 60, "s": 1}
DURATION_HINT = "use a whole number and a unit, largest first: 90s, 15m, 2h, 1d, 1w, 1h30m"
_DURATION = re.compile("".join(rf"(?:(?P<{u}>[0-9]+){u})?" for u in DURATION_UNITS))
CRON_DAYS = ("sun", "mon", "tue", "wed", "thu", "fri", "sat")  # cron's numbering, 0 = Sunday
APS_DAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")  # APScheduler 3.x order
REQUEST_FIELDS = ("text", "every", "cron", "timezone", "scope", "kinds", "since",
                  "since_last_run", "top_k", "max_new_tokens", "enabled", "notify", "channels")
# when a question's runs reach its channels: change = a first answer, another answer or other
# sources, a failed run and the first skipped firing; always = every run; never
NOTIFY_MODES = ("change", "always", "never")


def _fail(field: str, problem: str, hint: str | None = None) -> NoReturn:
    raise InputError(f"{field}: {problem}", hint=hint)


# -- durations -------------------------------------------------------------------------------

def parse_duration(value: str) -> int:
    """Seconds in a duration such as 90s, 15m, 2h, 1d, 1w or 1h30m (positive, at most ten
    years); InputError naming the value on anything else."""
    match = _DURATION.fullmatch(value.strip()) if isinstance(value, str) else None
    if not match or not value.strip():
        raise InputError(f"{value!r} is not a duration", hint=DURATION_HINT)
    seconds = sum(int(n) * DURATION_UNITS[u] for u, n in match.groupdict().items() if n)
    if seconds <= 0:
        raise InputError(f"{value!r} is not a positive duration", hint=DURATION_HINT)
    if seconds > MAX_DURATION_S:
        raise InputError(f"{value!r} is longer than ten years", hint=DURATION_HINT)
    return seconds


def format_duration(seconds: int) -> str:
    """5400 -> "1h30m": the inverse of parse_duration, for display."""
    parts = []
    for unit, size in DURATION_UNITS.items():
        count, seconds = divmod(seconds, size)
        if count:
            parts.append(f"{count}{unit}")
    return "".join(parts) or "0s"


# -- crontab ---------------------------------------------------------------------------------

def _cron_day(token: str, expr: str) -> int:
    token = token.lower()
    if token in CRON_DAYS:
        return CRON_DAYS.index(token)
    if token.isascii() and token.isdigit() and int(token) <= 7:
        return int(token)
    _fail("cron", f"{token!r} in {expr!r} is not a day of the week (0-7 or sun-sat; "
                  "0 and 7 are Sunday)")


def _cron_weekdays(field: str, expr: str) -> set[int]:
    """A crontab day-of-week field -> the days it names, 0 = Sunday."""
    days: set[int] = set()
    for item in field.split(","):
        span, _, step = item.partition("/")
        if step and not (step.isascii() and step.isdigit() and int(step) > 0):
            _fail("cron", f"{item!r} in {expr!r} has a bad step")
        if span == "*":
            first, last = 0, 7
        elif "-" in span:
            a, _, b = span.partition("-")
            first, last = _cron_day(a, expr), _cron_day(b, expr)
            if first > last:
                _fail("cron", f"{item!r} in {expr!r} is a backwards range")
        else:
            first = _cron_day(span, expr)
            last = 7 if step else first
        days.update(d % 7 for d in range(first, last + 1, int(step or 1)))
    return days


def apscheduler_crontab(expr: str) -> str:
    """A 5-field crontab, as cron reads it, in the form CronTrigger.from_crontab reads the
    same way: the day-of-week field as APScheduler weekday names."""
    values = expr.split()
    if len(values) != 5:
        _fail("cron", f"{expr!r} has {len(values)} fields; a crontab has 5: "
                      "minute hour day-of-month month day-of-week",
              hint="as in '0 8 * * 1-5': 08:00 on weekdays")
    day_of_month, day_of_week = values[2], values[4]
    if not day_of_month.startswith("*") and not day_of_week.startswith("*"):
        # cron fires when EITHER matches; APScheduler only when both do
        _fail("cron", f"{expr!r} restricts both the day of the month and the day of the week",
              hint="keep one of them '*'")
    if not day_of_week.startswith("*") or "/" in day_of_week:
        days = _cron_weekdays(day_of_week, expr)
        values[4] = "*" if len(days) == 7 else ",".join(
            d for d in APS_DAYS if CRON_DAYS.index(d) in days)
    return " ".join(values)


def _cron_trigger(expr: str, timezone: ZoneInfo) -> CronTrigger:
    try:
        return CronTrigger.from_crontab(apscheduler_crontab(expr), timezone=timezone)
    except ValueError as e:
        _fail("cron", f"{expr!r}: {e}", hint="as in '0 8 * * 1-5': 08:00 on weekdays")


def _zone(name: str) -> ZoneInfo:
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError, TypeError):
        _fail("timezone", f"{name!r} is not a known time zone",
              hint="use an IANA name such as UTC, Europe/Berlin or America/New_York")


# -- the spec --------------------------------------------------------------------------------

@dataclass(frozen=True)
class QuestionSpec:
    """A standing question as stored: field names are the questions table's columns."""

    text: str
    schedule_kind: str  # cron | interval
    cron: str | None = None  # 5-field crontab, read in timezone
    interval_s: int | None = None
    timezone: str = "UTC"  # IANA name
    scope: tuple[str, ...] = ()  # folders, files or globs over document paths; empty: all
    kinds: tuple[str, ...] = ()  # log / report; empty: both
    since_s: int | None = None  # only passages from the last since_s seconds; None: all
    since_last_run: bool = False  # only passages since the previous run started
    top_k: int = 5
    max_new_tokens: int = 128
    enabled: bool = True
    notify: str = "never"  # change | always | never
    channels: tuple[str, ...] = ()  # [notify.NAME] channels its events go to

    def validate(self) -> None:
        """Raise InputError naming the first bad field."""
        if not isinstance(self.text, str) or not self.text.strip():
            _fail("text", "must not be empty")
        if len(self.text) > MAX_TEXT_CHARS:
            _fail("text", f"is {len(self.text):,} characters; the most is {MAX_TEXT_CHARS:,}")
        zone = _zone(self.timezone)
        if self.schedule_kind == "interval":
            if not _is_int(self.interval_s) or not 0 < self.interval_s <= MAX_DURATION_S:
                _fail("interval_s", "must be a positive number of seconds, at most ten years")
            if self.cron is not None:
                _fail("cron", "an interval question has no cron expression")
        elif self.schedule_kind == "cron":
            if not isinstance(self.cron, str):
                _fail("cron", "must be a crontab expression such as '0 8 * * 1-5'")
            _cron_trigger(self.cron, zone)
            if self.interval_s is not None:
                _fail("interval_s", "a cron question has no interval")
        else:
            _fail("schedule_kind", f"must be cron or interval, not {self.schedule_kind!r}")
        _check_scope(self.scope)
        _check_kinds(self.kinds)
        if self.since_s is not None and (not _is_int(self.since_s)
                                         or not 0 < self.since_s <= MAX_DURATION_S):
            _fail("since_s", "must be a positive number of seconds, at most ten years")
        if not isinstance(self.since_last_run, bool):
            _fail("since_last_run", "must be true or false")
        if self.since_s is not None and self.since_last_run:
            _fail("since", "give either since or since_last_run, not both")
        _check_range("top_k", self.top_k, TOP_K_RANGE)
        _check_range("max_new_tokens", self.max_new_tokens, MAX_NEW_TOKENS_RANGE)
        if not isinstance(self.enabled, bool):
            _fail("enabled", "must be true or false")
        if self.notify not in NOTIFY_MODES:
            _fail("notify", f"must be {', '.join(NOTIFY_MODES)}, not {self.notify!r}")
        _check_channels(self.channels)
        if self.notify != "never" and not self.channels:
            _fail("channels", f"notify = {self.notify} needs at least one channel",
                  hint="name [notify.NAME] channels of the config")

    def check_channels(self, known: set[str]) -> None:
        """Refuse a channel the config does not define."""
        for name in self.channels:
            if name not in known:
                _fail("channels", f"{name!r} is no [notify.NAME] channel of the config",
                      hint=f"channels: {', '.join(sorted(known))}" if known else
                      "the config defines no [notify.NAME] channel")


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _check_range(field: str, value, bounds: tuple[int, int]) -> None:
    low, high = bounds
    if not _is_int(value) or not low <= value <= high:
        _fail(field, f"must be between {low} and {high}")


def _check_scope(scope) -> None:
    if not isinstance(scope, list | tuple):
        _fail("scope", "must be a list of folders, files or globs")
    for entry in scope:
        if not isinstance(entry, str) or not entry.strip():
            _fail("scope", f"{entry!r} is not a folder, file or glob")
        if not entry.startswith(("/", "*")):
            _fail("scope", f"{entry!r} is relative; document paths are absolute",
                  hint="give an absolute folder or file, or a glob such as */nginx/*.log")


def _check_kinds(kinds) -> None:
    if not isinstance(kinds, list | tuple):
        _fail("kinds", "must be a list of log and/or report")
    for kind in kinds:
        if kind not in KINDS:
            _fail("kinds", f"{kind!r} is not a kind; use log and/or report")


def _check_channels(channels) -> None:
    if not isinstance(channels, list | tuple):
        _fail("channels", "must be a list of [notify.NAME] channel names")
    for name in channels:
        if not isinstance(name, str) or not name.strip():
            _fail("channels", f"{name!r} is not a channel name")


def _duration(field: str, value) -> int:
    try:
        return parse_duration(value)
    except InputError as e:
        _fail(field, e.message, hint=e.hint)


def spec_from_request(request: Mapping, base: QuestionSpec | None = None) -> QuestionSpec:
    """Validate a question from the API or CLI: text, exactly one of every (a duration) or
    cron, timezone, scope, kinds, since (a duration) or since_last_run, top_k, max_new_tokens,
    enabled, notify and channels. With base (an update), fields left out keep base's values;
    every replaces a cron and the other way round, and since replaces since_last_run. A field
    given as null goes back to its default."""
    if not isinstance(request, Mapping):
        _fail("request", "must be an object of question fields")
    for key in request:
        if key not in REQUEST_FIELDS:
            _fail(str(key), f"unknown field; known: {', '.join(REQUEST_FIELDS)}")
    given = {k: v for k, v in request.items() if v is not None}
    defaults = {f.name: f.default for f in fields(QuestionSpec)}
    values = asdict(base) if base is not None else {}
    for key in request.keys() - given.keys() - {"every", "cron", "since"}:
        values[key] = defaults[key]

    if "text" in request:
        if not isinstance(given.get("text"), str):
            _fail("text", "must be the question, as a string")
        values["text"] = given["text"].strip()
    elif base is None:
        _fail("text", "must not be empty")

    if "every" in given and "cron" in given:
        _fail("cron", "give either every or cron, not both")
    if "every" in given:
        values |= {"schedule_kind": "interval", "cron": None,
                   "interval_s": _duration("every", given["every"])}
    elif "cron" in given:
        if not isinstance(given["cron"], str):
            _fail("cron", "must be a crontab expression such as '0 8 * * 1-5'")
        values |= {"schedule_kind": "cron", "interval_s": None,
                   "cron": " ".join(given["cron"].split())}
    elif base is None:
        _fail("every", "give a schedule: every (as in 15m) or cron (as in '0 8 * * 1-5')")

    if "since" in request:
        if given.get("since") is not None and given.get("since_last_run") is True:
            _fail("since", "give either since or since_last_run, not both")
        values["since_s"] = None if "since" not in given else _duration("since",
                                                                        given["since"])
        if values["since_s"] is not None and "since_last_run" not in given:
            values["since_last_run"] = False
    if given.get("since_last_run") is True and "since" not in given:
        values["since_s"] = None

    for key in ("timezone", "since_last_run", "top_k", "max_new_tokens", "enabled", "notify"):
        if key in given:
            values[key] = given[key]
    for key, check in (("scope", _check_scope), ("kinds", _check_kinds),
                       ("channels", _check_channels)):
        if key in given:
            check(given[key])
            values[key] = tuple(dict.fromkeys(given[key]))  # in order, without repeats
    if isinstance(values.get("timezone"), str):
        values["timezone"] = values["timezone"].strip()

    spec = QuestionSpec(**values)
    spec.validate()
    return spec


def spec_of(question: Mapping) -> QuestionSpec:
    """The spec of a stored question (a dict from kbd.store.questions)."""
    values = {f.name: question[f.name] for f in fields(QuestionSpec)}
    return QuestionSpec(**values | {"scope": tuple(values["scope"]),
                                    "kinds": tuple(values["kinds"]),
                                    "channels": tuple(values["channels"])})


def trigger_for(spec: QuestionSpec, start_date: datetime | None = None):
    """The APScheduler 3.x trigger for the spec, in its timezone. start_date anchors an
    interval (as in the last run, so a restart keeps the rhythm); cron ignores it."""
    zone = _zone(spec.timezone)
    if spec.schedule_kind == "interval":
        return IntervalTrigger(seconds=spec.interval_s, start_date=start_date, timezone=zone)
    return _cron_trigger(spec.cron, zone)
