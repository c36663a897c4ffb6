"""Answers from every matching line (kbd.runtime.aggregate): the intent read from the question,
counts
over many passages and files, overlapping passages counted once, first and last, a time bound,
a scope, and the store's all-terms query on SQLite and PostgreSQL. The logs are loghub's,
ingested into a real store; the text engine is the real one with SmolLM2, which these
questions must not reach."""

from __future__ import annotations

import re
import shutil
from pathlib import Path
from types import SimpleNamespace

import pytest
from support.harness import smollm2_missing

from kbd.config import ModelConfig
from kbd.ingest.pipeline import Ingester
from kbd.model.text import SMOLLM2_INSTALL
from kbd.model.tokens import PassageTokenizer
from kbd.retrieve import Scope
from kbd.runtime import aggregate, evidence
from kbd.runtime.engines import load_engine
from kbd.store import Store
from kbd.store import queries as q

LOGHUB = Path(__file__).resolve().parents[2] / "shared" / "data" / "loghub"
LOGROTATE = "logrotate: ALERT exited abnormally"
COUNT_QUESTION = "How many times did logrotate exit abnormally?"


needs_logs = pytest.mark.skipif(not LOGHUB.is_dir(), reason=f"{LOGHUB} not present")


def lines_holding(path: Path, text: str) -> list[int]:
    return [n for n, line in enumerate(path.read_text().splitlines(), 1) if text in line]


@pytest.mark.parametrize("question, kind", [
    ("How many times did logrotate exit abnormally?", "count"),
    ("How often did sshd say it was ignoring max retries?", "count"),
    ("What is the number of times the scanner verified a block?", "count"),
    ("How many connections were closed by 194.190.163.22 before authentication?", "count"),
    ("Which broadcast variable was read first?", "first"),
    ("When did syslogd restart for the first time?", "first"),
    ("What was the earliest error?", "first"),
    ("What was the last progress reported for attempt_1445144423722_0020_m_000000_0?", "last"),
    ("When did syslogd restart for the last time?", "last"),
    ("Which is the most recent failure?", "last"),
    # a value inside one line, not a count of lines
    ("How many bytes of result did TID 3 send to the driver?", None),
    ("How many milliseconds did the executor spend fetching broadcast variable 4?", None),
    ("How many executors were lost to out-of-memory errors in CT-77?", None),
    # "last" the verb, a window, "at first" as "initially"
    ("How long did the HDFS write stall of INC-2041 last?", None),
    ("What failed in the last hour?", None),
    ("Which errors were logged over the last 3 days?", "list"),
    ("How long does fail2ban ban an attacking source at first?", None),
    # "Which": each value the matching lines write, where they write several
    ("Which IP address tried to log in as the invalid user test9?", "list"),
    ("Which node went NotReady?", "list"),
    ("Who restarted the mailer service?", "list"),
    ("Whose certificate expired?", None),
    ("How many different IP addresses failed to log in as root?", "list"),
    ("How many distinct users ran sudo?", "list"),
])
def test_intent_is_read_from_the_question(question, kind):
    found = aggregate.intent(question)
    assert (found and found.kind) == kind


def test_a_time_bound_with_its_day():
    found = aggregate.intent(
        "After 10:00 on Dec 10, what address was the first to fail a password for root?")
    assert found.kind == "first"
    assert (found.bound.after, found.bound.seconds, found.bound.day) == (True, 36000, (12, 10))
    assert found.bound.words == {"10:00", "dec", "10"}
    before = aggregate.intent("Which host failed before 09:30:15?")  # no first/last: the last
    assert (before.kind, before.bound.after, before.bound.seconds) == ("last", False, 34215)
    assert aggregate.intent("How many connections were closed before authentication?").bound \
        is None


def test_line_times_and_the_bound():
    bound = aggregate.intent("After 10:00 on Dec 10, who failed first?").bound
    ssh = aggregate.stamp("Dec 10 10:04:54 LabSZ sshd[24809]: Failed password for root")
    assert ssh == aggregate.Stamp(None, 12, 10, 36294) and aggregate.past(bound, ssh)
    assert not aggregate.past(bound, aggregate.stamp("Dec 10 09:59:59 LabSZ sshd[1]: x"))
    assert aggregate.past(bound, aggregate.stamp("Dec 11 08:00:00 LabSZ sshd[1]: x"))
    hadoop = aggregate.stamp("2015-10-18 18:06:01,840 ERROR [RMCommunicator Allocator]")
    assert hadoop == aggregate.Stamp(2015, 10, 18, 65161)
    assert aggregate.stamp("081109 203615 148 INFO dfs.DataNode") is None  # no HH:MM
    assert not aggregate.past(bound, None)


def test_a_word_is_not_found_inside_a_time_of_day():
    state6 = "[Sun Dec 04 05:12:10 2005] [error] mod_jk child workerEnv in error state 6"
    assert not aggregate.holds_all(["error", "state", "10"], state6)
    assert aggregate.holds_all(["error", "state", "6", "05:12:10"], state6)


@pytest.fixture(scope="module")
def logs(tmp_path_factory) -> dict[str, Path]:
    """Linux_2k.log and OpenSSH_2k.log as loghub has them, and a second Linux log: the first
    100 lines of the first, under another name."""
    if not LOGHUB.is_dir():
        pytest.skip(f"{LOGHUB} not present")
    folder = tmp_path_factory.mktemp("logs")
    linux = Path(shutil.copy(LOGHUB / "Linux_2k.log", folder / "Linux_2k.log"))
    short = folder / "linux-b.log"
    short.write_text("".join(linux.read_text().splitlines(keepends=True)[:100]))
    ssh = Path(shutil.copy(LOGHUB / "OpenSSH_2k.log", folder / "OpenSSH_2k.log"))
    return {"linux": linux, "short": short, "ssh": ssh}


@pytest.fixture(scope="module")
def engine(tmp_path_factory, logs, e2e_dir):
    """The text engine (SmolLM2) over the three logs in a SQLite store, cut for the tiny
    CLaRa checkpoint, whose short passages put a log's matching lines in many of them."""
    if smollm2_missing():
        pytest.skip(f"SmolLM2 not installed: {SMOLLM2_INSTALL}")
    folder = tmp_path_factory.mktemp("store")
    store = Store.open(f"sqlite:///{folder / 'kbd.sqlite3'}", folder / "memory")
    ingester = Ingester(store, PassageTokenizer.load(e2e_dir))
    assert ingester.ingest_many([(path, None, "log") for path in logs.values()]) == {"added": 3}
    # weights loaded (generate) for the test that has the model write; the others quote, as
    # the default answer does
    text = load_engine(ModelConfig(engine="text", device="cpu", answer="generate"), store)
    text.answer_by = "quote"
    yield text
    store.close()


def ask(engine, question: str, scope: Scope | None = None):
    (pool,) = engine.pools(1, [scope or Scope()])
    (reply,) = engine.answer([question], [pool], 5, 32, None)
    return reply


@pytest.fixture
def no_model(engine, monkeypatch):
    """The model may not be asked."""
    def refuse(*args, **kwargs):
        raise AssertionError("the model was asked")

    monkeypatch.setattr(engine.text_model, "generate", refuse)


def passage_lines(engine, passage_id: int) -> tuple[int, int]:
    with engine.store.read() as conn:
        place = q.passage_places(conn, [passage_id])[passage_id]
    return place.first_line, place.last_line


def test_a_count_spans_passages_and_files(engine, logs, no_model):
    linux = lines_holding(logs["linux"], LOGROTATE)
    short = lines_holding(logs["short"], LOGROTATE)
    assert (len(linux), short) == (43, [16, 75, 80])  # loghub's Linux_2k.log as known
    reply = ask(engine, COUNT_QUESTION)
    assert (reply.aggregate, reply.status) == ("count", "ok")
    # the same moments in both files: the tie goes to the path; the last is July's line 1904
    assert reply.text.startswith(
        '46 lines match "logrotate", "exit", "abnormally" '
        '(first Linux_2k.log:16, last Linux_2k.log:1904): "Jun 15 04:06:20 combo logrotate: '
        'ALERT exited abnormally with [1]" [1]'), reply.text
    first = reply.sources[0]
    assert first.cited_lines[0] == 16 and first.rank == 1 and first.in_prompt
    low, high = passage_lines(engine, first.passage_id)
    assert low <= 16 <= high
    assert len({s.passage_id for s in reply.sources}) == 5  # matches in many passages
    assert 1904 in reply.sources[-1].cited_lines  # the last line's passage is kept


def test_overlapping_passages_count_once(engine, logs, no_model):
    """A second live passage over lines the first one holds (a re-cut that overlaps) adds no
    line to the count."""
    store = engine.store
    with store.read() as conn:
        document = q.live_document(conn, str(logs["linux"]))
        first = next(p for p in q.live_passages(conn, document.id)
                     if p.first_line <= 16 <= p.last_line)
        ordinals = len(q.live_passages(conn, document.id))
    twin = SimpleNamespace(**{k: getattr(first, k) for k in (
        "text", "token_count", "first_line", "last_line", "page", "byte_start", "byte_end",
        "heading", "split")}, ordinal=ordinals)
    store.write(lambda conn: q.insert_passages(conn, document.id, [twin], first.tokenizer))
    try:
        with store.read() as conn:
            assert len(q.passages_with_all(conn, ["logrotate", "exit", "abnormally"],
                                           1000)) > 2
        matches, cut = aggregate.matching_lines(store, ["logrotate", "exit", "abnormally"],
                                                None, lambda row: None)
        assert (len(matches), cut) == (46, False)
        assert ask(engine, COUNT_QUESTION).text.startswith("46 lines match")
    finally:
        store.write(lambda conn: q.retire_passages(conn, document.id, from_ordinal=ordinals))


def test_first_and_last(engine, logs, no_model):
    restarts = lines_holding(logs["linux"], "syslogd 1.4.1: restart.")
    assert restarts[0] == 146 and len(restarts) > 2
    text = logs["linux"].read_text().splitlines()
    first = ask(engine, "When did syslogd restart for the first time?")
    assert first.aggregate == "first"
    assert first.text.startswith(f'Linux_2k.log:146: "{text[145]}" [1]'), first.text
    assert (first.sources[0].cited_lines, first.sources[0].in_prompt) == ([146], True)
    last = ask(engine, "When did syslogd restart for the last time?")
    assert last.aggregate == "last"
    assert last.text.startswith(f'Linux_2k.log:{restarts[-1]}: "{text[restarts[-1] - 1]}"')
    assert last.sources[0].cited_lines == [restarts[-1]]


def test_the_first_after_a_time(engine, logs, no_model):
    """The bound's time is one some line holds (10:04, not 10:00): gather declines a question
    naming what no ranked passage holds, before the scan is reached."""
    reply = ask(engine, "After 10:04 on Dec 10, what address was the first to fail a "
                        "password for root?")
    lines = logs["ssh"].read_text().splitlines()
    expected = next(n for n, line in enumerate(lines, 1)
                    if "Failed password for root" in line and line[7:15] > "10:04:00")
    assert expected == 972 and "60.2.12.12" in lines[expected - 1]
    assert reply.aggregate == "first"
    assert reply.text.startswith(f'OpenSSH_2k.log:972: "{lines[971]}" [1] (the first after '
                                 f'10:04 on Dec 10 of the lines holding'), reply.text
    assert reply.sources[0].cited_lines == [972]


def test_a_scope_restricts_the_count(engine, logs, no_model):
    reply = ask(engine, COUNT_QUESTION, Scope(paths=(str(logs["short"]),)))
    assert reply.text.startswith('3 lines match "logrotate", "exit", "abnormally" '
                                 '(first linux-b.log:16, last linux-b.log:80)'), reply.text
    assert reply.sources[0].cited_lines[0] == 16


def test_other_questions_are_answered_as_before(engine, monkeypatch):
    """No count or order asked: the answer comes from the ranked evidence, as ever (here the
    model writes it); a count of what no line holds is not found, and nothing is counted."""
    calls = []
    real = engine.text_model.generate
    monkeypatch.setattr(engine, "answer_by", "generate")
    monkeypatch.setattr(engine.text_model, "generate",
                        lambda *a, **k: calls.append(a) or real(*a, **k))
    reply = ask(engine, "What did logrotate alert about?")
    assert (reply.aggregate, reply.status, len(calls)) == (None, "ok", 1)
    assert reply.sources[0].in_prompt and reply.sources[0].cited_lines
    reply = ask(engine, "How many times did the flux capacitor overheat in syslogd?")
    assert (reply.aggregate, reply.status, len(calls)) == (None, "not-found", 1)


@needs_logs
def test_passages_with_all_terms(store, logs, e2e_dir):
    """The store's query on both databases: live passages holding every term, by document
    and first line; a term that PostgreSQL drops as a stop word (`not`) is passed over."""
    ingester = Ingester(store, PassageTokenizer.load(e2e_dir))
    assert ingester.ingest_many([(logs["ssh"], None, "log"), (logs["short"], None, "log")]) \
        == {"added": 2}
    with store.read() as conn:
        rows = q.passages_with_all(conn, ["logrotate", "exited", "abnormally"], 100)
        assert [r.path for r in rows] == [str(logs["short"])] * len(rows)
        assert [r.first_line for r in rows] == sorted(r.first_line for r in rows)
        held = [n for r in rows for n in range(r.first_line, r.last_line + 1)]
        assert {16, 75, 80} <= set(held)
        assert all(re.search("logrotate.*exited abnormally", r.text) for r in rows)
        rows = q.passages_with_all(conn, ["sshd", "not", "identification"], 100)
        found = {n for r in rows for n in range(r.first_line, r.last_line + 1)}
        assert set(lines_holding(logs["ssh"], "Did not receive identification")) <= found
        assert q.passages_with_all(conn, ["logrotate", "identification"], 100) == []
        assert len(q.passages_with_all(conn, ["sshd"], 3)) == 3
        # the coverage rule's weights (engines.gather): passages per term, up to a cap; a
        # word PostgreSQL drops as a stop word counts as common there, not as absent
        counted = q.term_frequencies(conn, ["logrotate", "jenkins", "not", "sshd"], 5)
        assert counted["logrotate"] == min(5, len(
            q.passages_with_all(conn, ["logrotate"], 100)))
        assert (counted["jenkins"], counted["sshd"]) == (0, 5)
        assert counted["not"] >= 1


NODES = [1, 2, 1, 3, 2, 1]  # the node of each NodeNotReady event, in file order
SUDOERS = ["alice", "bob", "alice", "carol"]  # who ran sudo on web-01, in file order


@pytest.fixture(scope="module")
def events(tmp_path_factory, e2e_dir):
    """The quoting text engine over Kubernetes events (`kubectl get events` as text): six
    NodeNotReady events on three nodes, each beside a pod, between other events; and a
    syslog of sudo runs by three users as root, between sshd's lines."""
    if smollm2_missing():
        pytest.skip(f"SmolLM2 not installed: {SMOLLM2_INSTALL}")
    folder = tmp_path_factory.mktemp("events")
    lines = []
    for i, node in enumerate(NODES):
        lines.append(f"2021-09-18T16:{10 + i}:02.057000Z   Normal    Pulled      "
                     f"pod/web-{i}a   Container image pulled on node-{node}")
        lines.append(f"2021-09-18T16:{10 + i}:30.000000Z   Warning   NodeNotReady   "
                     f"pod/web-{i}b   Node node-{node} status is now: NodeNotReady")
    log = folder / "k8s-events.txt"
    log.write_text("\n".join(lines) + "\n")
    syslog = folder / "web-01-syslog"
    syslog.write_text("".join(
        f"Feb 25 13:{10 + i}:49 web-01 sshd[{900 + i}]: Accepted publickey for git from "
        f"10.0.0.{i} port 5{i}000 ssh2\n"
        f"Feb 25 13:{10 + i}:50 web-01 sudo[{100 + i}]: {user} : TTY=pts/{i} ; "
        f"PWD=/home/{user} ; USER=root ; COMMAND=/bin/systemctl restart mailer\n"
        for i, user in enumerate(SUDOERS))
        # pam's line names whom the session is for in no form of a user's own
        + "Feb 25 13:30:50 web-01 sudo[200]: pam_unix(sudo:session): session opened for user "
          "root by (uid=0)\n")
    store = Store.open(f"sqlite:///{folder / 'kbd.sqlite3'}", folder / "memory")
    assert Ingester(store, PassageTokenizer.load(e2e_dir)).ingest_many(
        [(log, None, "log"), (syslog, None, "log")]) == {"added": 2}
    yield load_engine(ModelConfig(engine="text", device="cpu"), store), log
    store.close()


def test_which_lists_every_value_of_the_matching_lines(events):
    """ "Which node went NotReady?" over six such events on three nodes names the three,
    most often first, with how many lines each, and quotes the first line; the pods beside
    them are not what was asked."""
    engine, log = events
    reply = ask(engine, "Which node went NotReady?")
    assert reply.aggregate == "list", reply.text
    assert reply.text.startswith('3 different, in the 6 lines holding "node", "NotReady": '
                                 "node-1 (3 lines), node-2 (2), node-3 (1). The first, "
                                 "k8s-events.txt:2:"), reply.text
    assert "pod/" not in reply.text.split(". The first")[0]
    cited = sorted(n for s in reply.sources for n in s.cited_lines)
    assert cited == lines_holding(log, "NodeNotReady") == [2, 4, 6, 8, 10, 12]


@pytest.mark.parametrize("question, told", [
    ("Which nodes went NotReady?", "3 different, in the 6 lines"),
    ("How many different nodes went NotReady?", "3 different, in the 6 lines"),
    ("How many distinct nodes did pod/web-3b go NotReady on?", "1 different, in the 1 lines"),
])
def test_how_many_different_values_and_plurals(events, question, told):
    """A plural noun names its values as the singular does; "how many different" is
    answered by the list, one value included."""
    engine, _ = events
    reply = ask(engine, question)
    assert (reply.aggregate, reply.text[:len(told)]) == ("list", told), reply.text


def test_a_glued_word_of_the_question_is_counted_in_a_longer_one(events):
    """The question's `NotReady` is written inside `NodeNotReady`: the index holds the
    parts of that word, and every line is counted."""
    engine, _ = events
    reply = ask(engine, "How many times did a node go NotReady?")
    assert (reply.aggregate, reply.text.split(" (")[0]) == (
        "count", '6 lines match "node", "NotReady"'), reply.text


def test_which_of_one_value_is_answered_by_its_line(events):
    """Every matching line writes the same node, or a user name (no value of a shape): the
    best line is quoted as ever."""
    engine, _ = events
    reply = ask(engine, "Which node did pod/web-3b go NotReady on?")
    assert (reply.aggregate, reply.status) == (None, "ok") and "node-3" in reply.text


@pytest.mark.parametrize("question", ["Which user ran sudo on web-01?", "Who ran sudo on web-01?"])
def test_which_user_lists_the_users_the_lines_name(events, question):
    """A user is named in a form of its own (sudo's caller, not the `USER=root` it ran as):
    each one with its number of lines, and the lines naming none counted."""
    engine, _ = events
    reply = ask(engine, question)
    assert reply.aggregate == "list", reply.text
    assert reply.text.startswith("3 different, in the 5 lines holding ") and \
        "alice (2 lines), bob (1), carol (1); 1 line names none. The first, web-01-syslog:2:" \
        in reply.text, reply.text


@pytest.mark.parametrize("line, user", [
    ("web-01 sudo[22969]: postgres : TTY=pts/1 ; USER=root ; COMMAND=/bin/ls", "postgres"),
    ("LabSZ sshd[24206]: Failed password for invalid user webmaster from 1.2.3.4 port 22",
     "webmaster"),
    ("LabSZ sshd[24208]: Accepted password for fztu from 119.137.62.142 port 49116 ssh2",
     "fztu"),
    ("combo sshd(pam_unix)[19939]: authentication failure; logname= uid=0 euid=0 tty=NODEVssh "
     "ruser= rhost=218.188.2.4  user=root", "root"),
    ("web-01 CRON[4401]: (ops) CMD (/usr/local/bin/backup.sh)", "ops"),
    ('10.1.2.3 - admin [25/Feb/2023:13:19:49 +0000] "GET /api/invoices/9616 HTTP/1.1" 503 12',
     "admin"),
    ("LabSZ sshd[24200]: Received disconnect from 1.2.3.4: 11: Bye Bye [preauth]", None),
    ("LabSZ sshd[24254]: input_userauth_request: invalid user test9 [preauth]", "test9"),
    ("LabSZ sshd[24201]: pam_unix(sshd:auth): check pass; user unknown", None),
    ("LabSZ sshd[24361]: Failed password for invalid user  0101 from 5.188.10.180 port 36279",
     "0101"),
])
def test_the_user_a_line_names(line, user):
    assert evidence.user_named(line) == user
