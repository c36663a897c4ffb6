"""Standing questions: durations, validation, triggers, and their store on SQLite and
PostgreSQL (questions, answers, the passages answers cite)."""

from __future__ import annotations

from dataclasses import asdict
from datetime import UTC, datetime, timedelta
from types import SimpleNamespace
from zoneinfo import ZoneInfo

import pytest
from apscheduler.triggers.cron import CronTrigger
from apscheduler.triggers.interval import IntervalTrigger
from sqlalchemy import delete, func, select

from kbd.errors import InputError
from kbd.questions.specs import (
    QuestionSpec,
    apscheduler_crontab,
    format_duration,
    parse_duration,
    spec_from_request,
    spec_of,
    trigger_for,
)
from kbd.store import queries as q
from kbd.store import questions as sq
from kbd.store.schema import answer_sources, documents, questions

T0 = datetime(2024, 5, 1, 8, 0, tzinfo=UTC)


class TestDurations:
    @pytest.mark.parametrize("text, seconds", [
        ("90s", 90), ("15m", 900), ("2h", 7200), ("1d", 86_400), ("1w", 604_800),
        ("1h30m", 5400), ("1d2h3m4s", 93_784), (" 45m ", 2700),
    ])
    def test_good(self, text, seconds):
        assert parse_duration(text) == seconds

    @pytest.mark.parametrize("text", [
        "", " ", "15", "m", "0s", "0h0m", "-5m", "1.5h", "15M", "30m1h", "1x", "5 m", "1h1h",
        "١m", "10000w", "15 minutes",
    ])
    def test_bad_names_the_value(self, text):
        with pytest.raises(InputError, match="^" + repr(text).replace(".", r"\.")) as e:
            parse_duration(text)
        assert e.value.hint and "1h30m" in e.value.hint

    @pytest.mark.parametrize("value", [None, 15, 1.5])
    def test_not_a_string(self, value):
        with pytest.raises(InputError, match=f"^{value!r} is not a duration"):
            parse_duration(value)

    @pytest.mark.parametrize("seconds", [1, 59, 60, 90, 3600, 5400, 86_401, 2 * 604_800 + 3600])
    def test_format_round_trips(self, seconds):
        assert parse_duration(format_duration(seconds)) == seconds

    def test_format(self):
        assert format_duration(5400) == "1h30m"
        assert format_duration(604_800 + 90) == "1w1m30s"


class TestSpec:
    def test_minimal_request_takes_the_defaults(self):
        spec = spec_from_request({"text": "  what failed?  ", "every": "15m"})
        assert spec == QuestionSpec(text="what failed?", schedule_kind="interval",
                                    interval_s=900)
        assert (spec.cron, spec.timezone, spec.scope, spec.kinds, spec.since_s,
                spec.since_last_run, spec.top_k, spec.max_new_tokens, spec.enabled) == \
            (None, "UTC", (), (), None, False, 5, 128, True)

    def test_full_request(self):
        spec = spec_from_request({
            "text": "which disks filled up?", "cron": " 0  8 * * 1-5 ",
            "timezone": "Europe/Berlin", "scope": ["/var/log", "*/nginx/*.log", "/var/log"],
            "kinds": ["report", "log", "log"], "since": "1d", "top_k": 8,
            "max_new_tokens": 256, "enabled": False,
        })
        assert spec == QuestionSpec(
            text="which disks filled up?", schedule_kind="cron", cron="0 8 * * 1-5",
            timezone="Europe/Berlin", scope=("/var/log", "*/nginx/*.log"),
            kinds=("report", "log"), since_s=86_400, since_last_run=False, top_k=8,
            max_new_tokens=256, enabled=False)

    def test_spec_fields_are_the_table_columns(self):
        spec = spec_from_request({"text": "q", "every": "1h"})
        assert set(asdict(spec)) == sq.SPEC_FIELDS
        assert sq.SPEC_FIELDS | sq.RUN_FIELDS | {"id", "created_at", "updated_at"} == \
            set(questions.c.keys())

    @pytest.mark.parametrize("request_, field", [
        ({"every": "15m"}, "text"),
        ({"text": "   ", "every": "15m"}, "text"),
        ({"text": None, "every": "15m"}, "text"),
        ({"text": 7, "every": "15m"}, "text"),
        ({"text": "x" * 2001, "every": "15m"}, "text"),
        ({"text": "q"}, "every"),
        ({"text": "q", "every": "15"}, "every"),
        ({"text": "q", "every": "0s"}, "every"),
        ({"text": "q", "every": 900}, "every"),
        ({"text": "q", "every": "15m", "cron": "0 8 * * *"}, "cron"),
        ({"text": "q", "cron": "0 8 * *"}, "cron"),
        ({"text": "q", "cron": "0 8 * * * *"}, "cron"),
        ({"text": "q", "cron": "61 8 * * *"}, "cron"),
        ({"text": "q", "cron": "0 8 32 * *"}, "cron"),
        ({"text": "q", "cron": "0 8 * * 8"}, "cron"),
        ({"text": "q", "cron": "0 8 * * fri-mon"}, "cron"),
        ({"text": "q", "cron": "0 8 * * 1/0"}, "cron"),
        ({"text": "q", "cron": "0 8 1 * 1"}, "cron"),
        ({"text": "q", "cron": "every day"}, "cron"),
        ({"text": "q", "cron": 8}, "cron"),
        ({"text": "q", "every": "1h", "timezone": "Mars/Olympus_Mons"}, "timezone"),
        ({"text": "q", "every": "1h", "timezone": "../../etc/passwd"}, "timezone"),
        ({"text": "q", "every": "1h", "timezone": 1}, "timezone"),
        ({"text": "q", "every": "1h", "scope": "/var/log"}, "scope"),
        ({"text": "q", "every": "1h", "scope": ["logs/app"]}, "scope"),
        ({"text": "q", "every": "1h", "scope": [3]}, "scope"),
        ({"text": "q", "every": "1h", "scope": [""]}, "scope"),
        ({"text": "q", "every": "1h", "kinds": ["pdf"]}, "kinds"),
        ({"text": "q", "every": "1h", "kinds": "log"}, "kinds"),
        ({"text": "q", "every": "1h", "since": "lately"}, "since"),
        ({"text": "q", "every": "1h", "since": "1h", "since_last_run": True}, "since"),
        ({"text": "q", "every": "1h", "since_last_run": "yes"}, "since_last_run"),
        ({"text": "q", "every": "1h", "top_k": 0}, "top_k"),
        ({"text": "q", "every": "1h", "top_k": 51}, "top_k"),
        ({"text": "q", "every": "1h", "top_k": "5"}, "top_k"),
        ({"text": "q", "every": "1h", "top_k": True}, "top_k"),
        ({"text": "q", "every": "1h", "max_new_tokens": 0}, "max_new_tokens"),
        ({"text": "q", "every": "1h", "max_new_tokens": 2049}, "max_new_tokens"),
        ({"text": "q", "every": "1h", "enabled": "no"}, "enabled"),
        ({"text": "q", "every": "1h", "every_s": 60}, "every_s"),
    ])
    def test_each_error_names_its_field(self, request_, field):
        with pytest.raises(InputError) as e:
            spec_from_request(request_)
        assert e.value.message.startswith(f"{field}: "), e.value.message

    def test_range_messages(self):
        with pytest.raises(InputError, match="^top_k: must be between 1 and 50$"):
            spec_from_request({"text": "q", "every": "1h", "top_k": 99})
        with pytest.raises(InputError, match="^max_new_tokens: must be between 1 and 2048$"):
            spec_from_request({"text": "q", "every": "1h", "max_new_tokens": -1})

    def test_bad_values_are_named(self):
        with pytest.raises(InputError, match="^every: '15' is not a duration"):
            spec_from_request({"text": "q", "every": "15"})
        with pytest.raises(InputError, match="^cron: '61 8 \\* \\* \\*'"):
            spec_from_request({"text": "q", "cron": "61 8 * * *"})
        with pytest.raises(InputError, match="^timezone: 'Mars/Olympus_Mons'"):
            spec_from_request({"text": "q", "every": "1h", "timezone": "Mars/Olympus_Mons"})

    def test_not_a_mapping(self):
        with pytest.raises(InputError, match="^request: "):
            spec_from_request(["text", "q"])

    def test_since_last_run(self):
        spec = spec_from_request({"text": "q", "every": "1h", "since_last_run": True})
        assert (spec.since_s, spec.since_last_run) == (None, True)

    def test_validate_checks_specs_built_directly(self):
        with pytest.raises(InputError, match="^schedule_kind: "):
            QuestionSpec(text="q", schedule_kind="hourly").validate()
        with pytest.raises(InputError, match="^interval_s: "):
            QuestionSpec(text="q", schedule_kind="interval").validate()
        with pytest.raises(InputError, match="^interval_s: "):
            QuestionSpec(text="q", schedule_kind="cron", cron="0 8 * * *",
                         interval_s=60).validate()
        with pytest.raises(InputError, match="^since: "):
            QuestionSpec(text="q", schedule_kind="interval", interval_s=60, since_s=60,
                         since_last_run=True).validate()
        QuestionSpec(text="q", schedule_kind="cron", cron="0 8 * * *").validate()

    def test_update_keeps_what_is_left_out(self):
        base = spec_from_request({"text": "q", "cron": "0 8 * * *", "since_last_run": True,
                                  "top_k": 7, "timezone": "Asia/Tokyo"})
        spec = spec_from_request({"every": "1h", "since": "1d"}, base=base)
        assert spec == QuestionSpec(text="q", schedule_kind="interval", interval_s=3600,
                                    timezone="Asia/Tokyo", since_s=86_400, top_k=7)
        back = spec_from_request({"cron": "0 9 * * *", "since_last_run": True,
                                  "top_k": None}, base=spec)
        assert (back.schedule_kind, back.cron, back.interval_s, back.since_s,
                back.since_last_run, back.top_k) == ("cron", "0 9 * * *", None, None, True, 5)
        with pytest.raises(InputError, match="^text: "):
            spec_from_request({"text": ""}, base=base)


class TestTriggers:
    @pytest.mark.parametrize("expr, expected", [
        ("0 8 * * 1-5", "0 8 * * mon,tue,wed,thu,fri"),
        ("0 8 * * 0", "0 8 * * sun"),
        ("0 8 * * 7", "0 8 * * sun"),
        ("0 8 * * 5-7", "0 8 * * fri,sat,sun"),
        ("0 8 * * 0-6", "0 8 * * *"),
        ("0 8 * * */2", "0 8 * * tue,thu,sat,sun"),
        ("0 8 * * 1/2", "0 8 * * mon,wed,fri,sun"),
        ("0 8 * * SAT,sun", "0 8 * * sat,sun"),
        ("0 8 * * mon-wed", "0 8 * * mon,tue,wed"),
        ("*/5 * 1 * *", "*/5 * 1 * *"),
    ])
    def test_crontab_weekdays_are_read_as_cron_reads_them(self, expr, expected):
        assert apscheduler_crontab(expr) == expected

    def test_cron_weekdays_across_daylight_saving(self):
        spec = spec_from_request({"text": "q", "cron": "0 8 * * 1-5",
                                  "timezone": "America/New_York"})
        trigger = trigger_for(spec)
        assert isinstance(trigger, CronTrigger)
        # Friday 07:00 EST -> 08:00 EST the same day
        assert trigger.get_next_fire_time(None, datetime(2024, 3, 8, 12, tzinfo=UTC)) == \
            datetime(2024, 3, 8, 13, tzinfo=UTC)
        # Saturday -> Monday 08:00, now EDT (the clocks went forward on Sunday the 10th)
        fire = trigger.get_next_fire_time(None, datetime(2024, 3, 9, 12, tzinfo=UTC))
        assert fire == datetime(2024, 3, 11, 12, tzinfo=UTC)
        local = fire.astimezone(ZoneInfo("America/New_York"))
        assert (local.weekday(), local.hour) == (0, 8)

    @pytest.mark.parametrize("day", ["0", "7", "sun"])
    def test_cron_sunday(self, day):
        spec = spec_from_request({"text": "q", "cron": f"30 6 * * {day}",
                                  "timezone": "Europe/Berlin"})
        # from Monday 1 January 2024: Sunday the 7th, 06:30 CET = 05:30 UTC
        assert trigger_for(spec).get_next_fire_time(None, datetime(2024, 1, 1, tzinfo=UTC)) \
            == datetime(2024, 1, 7, 5, 30, tzinfo=UTC)

    def test_interval(self):
        spec = spec_from_request({"text": "q", "every": "15m", "timezone": "Asia/Tokyo"})
        trigger = trigger_for(spec, start_date=datetime(2024, 1, 1, tzinfo=UTC))
        assert isinstance(trigger, IntervalTrigger)
        assert str(trigger.timezone) == "Asia/Tokyo"
        assert trigger.get_next_fire_time(None, datetime(2024, 1, 1, 0, 20, tzinfo=UTC)) == \
            datetime(2024, 1, 1, 0, 30, tzinfo=UTC)
        previous = datetime(2024, 1, 1, 0, 30, tzinfo=UTC)
        assert trigger.get_next_fire_time(previous, previous) == \
            datetime(2024, 1, 1, 0, 45, tzinfo=UTC)

    def test_interval_without_start_fires_one_interval_from_now(self):
        spec = spec_from_request({"text": "q", "every": "2h"})
        now = datetime.now(UTC)
        fire = trigger_for(spec).get_next_fire_time(None, now)
        assert timedelta(hours=2) <= fire - now < timedelta(hours=2, seconds=30)


# -- the store --------------------------------------------------------------------------------

def add_document(conn, path: str, texts: list[str]) -> tuple[int, list[int]]:
    """A document whose passage i covers lines 10i+1 .. 10i+10; returns (id, passage ids)."""
    doc = q.insert_document(conn, path=path, kind="log", size=1, mtime_ns=1, status="ready",
                            tokenizer="tok")
    q.insert_passages(conn, doc, [SimpleNamespace(
        ordinal=i, text=t, first_line=10 * i + 1, last_line=10 * i + 10, page=None,
        byte_start=None, byte_end=None, token_count=3, heading=f"part {i}", split=False)
        for i, t in enumerate(texts)], "tok")
    return doc, [p.id for p in q.live_passages(conn, doc)]


def create(store, **request) -> int:
    spec = spec_from_request({"text": "what failed?", "every": "1h"} | request)
    return store.write(lambda conn: sq.create_question(conn, **asdict(spec)))


def record(store, question_id, text="disk full on node 7", status="ok", sources=(),
           started_at=T0, question="what failed?", covered_through=None) -> int | None:
    return store.write(lambda conn: sq.record_answer(
        conn, question_id=question_id, question=question, started_at=started_at,
        finished_at=started_at + timedelta(seconds=2), model="clara-e2e@abc", engine="clara",
        status=status, error="boom" if status == "failed" else None,
        text=text if status == "ok" else None, candidates=12, sources=list(sources),
        covered_through=covered_through))


class TestQuestionStore:
    def test_round_trip(self, store):
        spec = spec_from_request({"text": "what failed?", "cron": "0 8 * * 1-5",
                                  "timezone": "Europe/Berlin", "scope": ["/var/log"],
                                  "kinds": ["log"], "since": "1d", "top_k": 9})
        qid = store.write(lambda conn: sq.create_question(conn, **asdict(spec)))
        with store.read() as conn:
            question = sq.get_question(conn, qid)
            assert [x["id"] for x in sq.list_questions(conn)] == [qid]
        assert spec_of(question) == spec
        assert question["scope"] == ["/var/log"] and question["kinds"] == ["log"]
        assert question["created_at"].tzinfo == UTC
        assert question["created_at"] == question["updated_at"]
        assert question["last_run_at"] is None and question["next_run_at"] is None

    def test_defaults_come_from_the_columns(self, store):
        qid = store.write(lambda conn: sq.create_question(
            conn, text="q", schedule_kind="interval", interval_s=60))
        with store.read() as conn:
            question = sq.get_question(conn, qid)
        assert spec_of(question) == QuestionSpec(text="q", schedule_kind="interval",
                                                 interval_s=60)

    def test_update_enable_delete(self, store):
        qid = create(store)
        other = create(store, text="who logged in?")
        with store.read() as conn:
            created = sq.get_question(conn, qid)
        changed = spec_from_request({"cron": "0 9 * * *"}, base=spec_of(created))
        assert store.write(lambda conn: sq.update_question(conn, qid, **asdict(changed)))
        with store.read() as conn:
            updated = sq.get_question(conn, qid)
        assert spec_of(updated) == changed and updated["interval_s"] is None
        assert updated["updated_at"] > created["updated_at"]

        berlin = datetime(2024, 6, 1, 9, 0, tzinfo=ZoneInfo("Europe/Berlin"))
        store.write(lambda conn: sq.update_question(conn, qid, last_run_at=T0,
                                                    next_run_at=berlin))
        with store.read() as conn:
            ran = sq.get_question(conn, qid)
        assert ran["updated_at"] == updated["updated_at"]  # the scheduler's times: no edit
        assert ran["next_run_at"] == berlin and ran["next_run_at"].tzinfo == UTC
        assert ran["next_run_at"].hour == 7 and ran["last_run_at"] == T0

        assert store.write(lambda conn: sq.set_enabled(conn, qid, False))
        with store.read() as conn:
            off = sq.get_question(conn, qid)
            assert [x["id"] for x in sq.list_questions(conn, enabled=True)] == [other]
            assert [x["id"] for x in sq.list_questions(conn, enabled=False)] == [qid]
        assert off["enabled"] is False and off["next_run_at"] is None

        assert store.write(lambda conn: sq.delete_question(conn, qid))
        assert not store.write(lambda conn: sq.delete_question(conn, qid))
        assert not store.write(lambda conn: sq.update_question(conn, qid, top_k=3))
        assert not store.write(lambda conn: sq.set_enabled(conn, qid, True))
        with store.read() as conn:
            assert sq.get_question(conn, qid) is None
            assert [x["id"] for x in sq.list_questions(conn)] == [other]

    def test_bad_fields_and_times_are_refused(self, store):
        with pytest.raises(TypeError, match="every"):
            store.write(lambda conn: sq.create_question(conn, text="q", every="1h"))
        qid = create(store)
        with pytest.raises(ValueError, match="timezone-aware"):
            store.write(lambda conn: sq.update_question(conn, qid,
                                                        next_run_at=datetime(2024, 1, 1)))

    def test_delete_keeps_the_answers(self, store):
        qid, kept = create(store), create(store, text="who logged in?")
        record(store, qid)
        record(store, kept, question="who logged in?")
        store.write(lambda conn: sq.delete_question(conn, qid))
        # the foreign key alone does the same: ON DELETE SET NULL, on both databases
        store.write(lambda conn: conn.execute(delete(questions).where(questions.c.id == kept)))
        with store.read() as conn:
            rows = sq.answers(conn)
        assert [(a["question_id"], a["question"]) for a in rows] == \
            [(None, "who logged in?"), (None, "what failed?")]
        assert rows[1]["text"] == "disk full on node 7"


    def test_ids_are_never_reused(self, store, store_url, tmp_path):
        """An old answer's question id never names a newer question, even after the highest
        question is deleted, and after the store is opened again."""
        from kbd.store import Store

        create(store)
        highest = create(store, text="who logged in?")
        store.write(lambda conn: sq.delete_question(conn, highest))
        after_delete = create(store, text="what restarted?")
        assert after_delete > highest
        store.write(lambda conn: sq.delete_question(conn, after_delete))
        reopened = Store.open(store_url, tmp_path / "memory")
        try:
            assert create(reopened, text="which disk?") > after_delete
        finally:
            reopened.close()

    def test_answer_of_a_question_deleted_while_it_ran_is_dropped(self, store, caplog):
        """No foreign key error: the run's answer is dropped with one log line."""
        qid, kept = create(store), create(store, text="who logged in?")
        store.write(lambda conn: sq.delete_question(conn, qid))
        with caplog.at_level("INFO", logger="kbd.scheduler"):
            assert record(store, qid) is None
            assert record(store, qid, status="skipped") is None
        assert caplog.text.count("was deleted while it ran") == 2
        assert record(store, kept, question="who logged in?") is not None
        with store.read() as conn:
            assert [a["question_id"] for a in sq.answers(conn)] == [kept]


class TestAnswerStore:
    def test_snapshot_edge_stops_before_passages_waiting_for_memory(self, store):
        """A run's covered_through: under a model, every live passage up to it has memory;
        with none (the text engine), every passage stored."""
        doc, (p1, p2, p3) = store.write(lambda conn: add_document(conn, "/a.log",
                                                                  ["a", "b", "c"]))
        with store.read() as conn:
            hashes = {p.id: p.text_hash for p in q.live_passages(conn, doc)}
        store.write(lambda conn: q.add_memories(conn, "fp", [(hashes[p1], 0), (hashes[p3], 1)]))
        with store.read() as conn:
            assert q.candidates_through(conn, "fp") == p1  # p2 still waits for memory
            assert q.candidates_through(conn, None) == p3
        store.write(lambda conn: q.add_memories(conn, "fp", [(hashes[p2], 2)]))
        with store.read() as conn:
            assert q.candidates_through(conn, "fp") == p3
            assert q.candidates_through(conn, "other") == p1 - 1

    def test_covered_through(self, store):
        """The highest passage id a question's runs have covered; failed and skipped runs,
        and other questions, move it not."""
        qid, other = create(store), create(store, text="other")
        with store.read() as conn:
            assert sq.covered_through(conn, qid) is None
        record(store, qid, covered_through=5, started_at=T0)
        record(store, qid, status="nothing-new", covered_through=9,
               started_at=T0 + timedelta(minutes=1))
        record(store, qid, status="failed", started_at=T0 + timedelta(minutes=2))
        record(store, qid, status="skipped", started_at=T0 + timedelta(minutes=3))
        record(store, other, covered_through=40, question="other")
        with store.read() as conn:
            assert sq.covered_through(conn, qid) == 9
            assert sq.covered_through(conn, other) == 40

    def test_change(self, store):
        _, (p1, p2, p3) = store.write(lambda conn: add_document(conn, "/a.log", ["a", "b", "c"]))
        qid, other = create(store), create(store, text="other")
        at = (T0 + timedelta(minutes=i) for i in range(100))

        def change(status="ok", text="A", sources=(), question_id=qid):
            answer = record(store, question_id, text=text, status=status, sources=sources,
                            started_at=next(at))
            with store.read() as conn:
                (row,) = [a for a in sq.answers(conn, limit=None) if a["id"] == answer]
            return row["change"]

        assert change(sources=[(1, p1, 0.9), (2, p2, 0.5)]) == "first"
        assert change(sources=[(1, p2, 0.8), (2, p1, 0.7)]) == "unchanged"  # same passages
        assert change(sources=[(1, p1, 0.9), (2, p3, 0.5)]) == "new-sources"
        assert change(status="failed") is None
        assert change(status="nothing-new") is None
        assert change(text="B", sources=[(1, p1, 0.9), (2, p3, 0.5)]) == "changed"
        assert change(text="B", sources=[(1, p1, 0.9), (2, p3, 0.5)]) == "unchanged"
        assert change(text="B", sources=[(1, p1, 0.9), (2, p3, 0.5)],
                      question_id=None) is None  # ad hoc
        assert change(text="B", sources=[(1, p1, 0.9)], question_id=other) == "first"

    def test_previous_answer(self, store):
        qid = create(store)
        first = record(store, qid, text="A", started_at=T0)
        failed = record(store, qid, status="failed", started_at=T0 + timedelta(minutes=1))
        last = record(store, qid, text="B", started_at=T0 + timedelta(minutes=2))
        with store.read() as conn:
            assert sq.previous_answer(conn, qid, last)["id"] == first
            assert sq.previous_answer(conn, qid, last, ok_only=False)["id"] == failed
            assert sq.previous_answer(conn, qid, first) is None
            assert sq.previous_answer(conn, qid)["id"] == last

    def test_sources_resolve_to_places(self, store):
        doc, (p1, p2) = store.write(lambda conn: add_document(
            conn, "/var/log/app.log", ["disk full on node 7", "root login from 10.0.0.1"]))
        answer = record(store, None, sources=[(1, p2, 0.875), (2, p1, 0.25)])
        # the file moves, then goes: sources show its current path and the passage's lines
        store.write(lambda conn: q.update_document(conn, doc, path="/var/log/app.log.1"))
        store.write(lambda conn: q.retire_document(conn, doc))
        with store.read() as conn:
            (row,) = sq.answers(conn)
        assert row["id"] == answer and row["question_id"] is None and row["change"] is None
        assert (row["model"], row["engine"], row["status"], row["candidates"]) == \
            ("clara-e2e@abc", "clara", "ok", 12)
        assert row["started_at"] == T0 and row["finished_at"] == T0 + timedelta(seconds=2)
        assert row["sources"] == [
            {"rank": 1, "score": pytest.approx(0.875), "passage_id": p2, "document_id": doc,
             "path": "/var/log/app.log.1", "first_line": 11, "last_line": 20, "page": None,
             "heading": "part 1", "text": "root login from 10.0.0.1", "live": False},
            {"rank": 2, "score": pytest.approx(0.25), "passage_id": p1, "document_id": doc,
             "path": "/var/log/app.log.1", "first_line": 1, "last_line": 10, "page": None,
             "heading": "part 0", "text": "disk full on node 7", "live": False},
        ]

    def test_cited_passages_stay_and_sources_go_with_their_answer(self, store):
        doc, (p1,) = store.write(lambda conn: add_document(conn, "/a.log", ["a"]))
        answer = record(store, None, sources=[(1, p1, 0.5)])
        with pytest.raises(Exception, match="(?i)foreign key"):
            store.write(lambda conn: conn.execute(delete(documents)
                                                  .where(documents.c.id == doc)))
        with pytest.raises(Exception, match="(?i)unique|duplicate"):
            record(store, None, sources=[(1, p1, 0.5), (1, p1, 0.4)])
        store.write(lambda conn: conn.execute(delete(sq.answers_table)
                                              .where(sq.answers_table.c.id == answer)))
        with store.read() as conn:
            assert conn.execute(select(func.count()).select_from(answer_sources)).scalar() == 0

    def test_bad_records_are_refused(self, store):
        with pytest.raises(ValueError, match="status"):
            record(store, None, status="done")
        with pytest.raises(ValueError, match="timezone-aware"):
            record(store, None, started_at=datetime(2024, 1, 1))
        with pytest.raises(ValueError, match="text"):
            record(store, None, text=None)

    def test_newest_first_and_limit(self, store):
        qid, other = create(store), create(store, text="other")
        minutes = [3, 0, 4, 1, 2]  # recorded out of order
        ids = {m: record(store, qid, text=f"t{m}", started_at=T0 + timedelta(minutes=m))
               for m in minutes}
        tie = record(store, qid, text="tie", started_at=T0 + timedelta(minutes=4))
        ad_hoc = record(store, None, started_at=T0 + timedelta(minutes=9))
        theirs = record(store, other, started_at=T0 - timedelta(minutes=1))
        with store.read() as conn:
            assert [a["id"] for a in sq.answers(conn, qid, limit=3)] == [tie, ids[4], ids[3]]
            assert [a["id"] for a in sq.answers(conn, qid, limit=None)] == \
                [tie, ids[4], ids[3], ids[2], ids[1], ids[0]]
            everything = [a["id"] for a in sq.answers(conn)]
            assert everything[0] == ad_hoc and everything[-1] == theirs
            assert len(everything) == 8
            assert len(sq.answers(conn, limit=2)) == 2
            assert [a["id"] for a in sq.answers(conn, other)] == [theirs]
