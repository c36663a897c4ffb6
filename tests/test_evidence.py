"""What an answer may stand on: matching lines, weak evidence, the citation check, the
grounding check with its extractive fallback, and the loop guard's cut (no model here: the
text engine's tests run them with SmolLM2)."""

from __future__ import annotations

import random
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from kbd.model.text import before_loop, loop_start
from kbd.retrieve import (
    asked_terms,
    question_words,
    quoted_words,
    search_terms,
    weak_evidence,
)
from kbd.runtime import evidence
from kbd.runtime.engines import file_line_numbers, gather
from kbd.runtime.evidence import Line, Shown

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from train import formats  # noqa: E402

LOGHUB = ROOT.parent / "shared" / "data" / "loghub"

FITBIT = ("20171224-0:10:02:436|Step_StandReportReceiver|onReceive action: "
          "android.intent.action.SCREEN_ON totalSteps=7163Calories:153367")
DISK = "081109 214043 2561 ERROR dfs.DataNode: Disk full on datanode 10.251.91.84"


@pytest.mark.parametrize("question, texts", [
    ("Welcher Benutzer hat die Datenbank gelöscht?", [DISK, FITBIT]),
    ("What is it?", [DISK]),  # stop words only: nothing to match
    ("How many calories?", [DISK]),
    # a name the question gives is in no text: they are about something else
    ("Which Kafka topic did the Spark job read from?", ["INFO spark.Job: job 3 read from a"]),
    ("Which version was used in capacity test CT-78?", ["capacity test CT-77 used version 2"]),
])
def test_weak_evidence_when_no_content_term_matches(question, texts):
    assert weak_evidence(question, texts)


@pytest.mark.parametrize("question, text", [
    ("How many calories were burned?", FITBIT),  # a part of the glued 7163Calories
    ("Which datanode failed?", DISK),
    ("Was the disk full on 10.251.91.84?", DISK),  # an address matches as written
    ("Which call checks the SIM pin?", "isSimPinSecure returned false"),  # camelCase parts
    ("Datanode: which one was full?", DISK),  # the first word is capitalized as any is
])
def test_a_matching_term_is_evidence(question, text):
    assert not weak_evidence(question, [text])


def test_a_camel_case_word_is_found_inside_a_longer_one():
    line = "Warning NodeNotReady pod/web-1 Node node-4 status is now: NodeNotReady, stage R12"
    assert evidence.matched_terms(["NotReady", "R1", "Ready", "dead"], line) == {
        "NotReady", "Ready"}


SSHD = "Dec 10 11:03:41 LabSZ sshd[24501]: Accepted publickey for git from 10.0.0.5 port 51000 ssh2"


@pytest.mark.parametrize("question, text, held", [
    # two words of the question, one of the line; and the other way
    ("Who logged in with a public key as git?", SSHD, {"public", "key", "git"}),
    ("Who logged in with publickey as git?", "Accepted public key for git", {"publickey", "git"}),
    # `user` and `time` ask (ANSWER_WORDS): no line need hold them, but they join a term
    ("What was the user name?", "login: username=bob", {"name"}),
    ("When did the connection time out?", "connection timeout after 30 s", {"connection", "out"}),
    ("Which host names resolved?", "resolved hostnames: web-1, web-2", {"names", "resolved"}),
    ("Which filesystem was full?", "the file-system /dev/sda1 is full", {"filesystem", "full"}),
    ("Which file system was full?", "filesystem /dev/sda1 full", {"file", "system", "full"}),
    # joined in the other order, or with a word the question does not have: no compound
    ("How many times did named log a notify?", "authentication failure; logname= uid=0", set()),
    ("Which process ran out of memory?", "connection timeout after 30 s", set()),
    ("Which login failed?", "log in failed", {"failed"}),  # `in`: too short a part
])
def test_a_compound_is_matched_however_it_is_written(question, text, held):
    assert evidence.matched_terms(asked_terms(question), text, search_terms(question)) == held
    assert weak_evidence(question, [text]) == (not held)


def test_a_compound_counts_once_in_coverage():
    """The line's `publickey` holds the question's `public key`, but as one match at its own
    rarity: a runbook's instruction to search for `publickey` is still too little of "Which
    user logged in successfully with a public key?". Frequencies: the answer benchmark's
    store (3788 passages), where no log has the line and the runbook names it once."""
    frequencies = {"logged": 45, "successfully": 3, "public": 0, "key": 3, "git": 3,
                   "publickey": 1}

    def covered(question: str, text: str) -> float:
        return evidence.coverage(asked_terms(question), text, frequencies, 3788,
                                 search_terms(question))

    runbook = "publickey from the attacking address in the last 72 hours."
    assert covered("Which user logged in successfully with a public key?", runbook) < 0.36
    asked = "Who logged in with a public key as git?"
    assert covered(asked, SSHD) >= evidence.COVERAGE_FLOOR
    assert covered(asked, SSHD.replace("publickey", "password")) < evidence.COVERAGE_FLOOR
    assert covered("Who logged in with publickey as git?", SSHD.replace(
        "publickey", "public key")) >= evidence.COVERAGE_FLOOR


@pytest.mark.parametrize("question, quoted", [
    ("Someone used the nonexistent account name 'chen'. Where from?", {"chen"}),
    ('Why did "disk quota exceeded" appear?', {"disk", "quota", "exceeded"}),
    ("Who ran `systemctl restart`?", {"systemctl", "restart"}),
    ("Which of the user's jobs failed, and what's the ‘users’ count?", {"users"}),
    ("What's Bob's IP?", set()),  # apostrophes quote nothing
])
def test_quoted_words(question, quoted):
    assert quoted_words(question) == quoted


CHEN = "Dec 10 07:11:42 LabSZ sshd[24224]: Invalid user chen from 202.100.179.208"


def test_a_quoted_word_weighs_as_a_name():
    """A paraphrase holds few of the line's words: "nonexistent account name 'chen'" is
    sshd's "Invalid user chen". The quoted name is what the user expects the line to write,
    and weighs as an id does; unquoted, the line holds too little of the question.
    Frequencies: the answer benchmark's store (3788 passages); the text is held with its
    file's name, as the engine weighs it."""
    frequencies = {"SSH": 538, "account": 1, "attempt": 423, "attempted": 423, "chen": 2,
                   "come": 1, "login": 4, "name": 447, "nonexistent": 0}
    question = ("Someone attempted an SSH login with the nonexistent account name 'chen'. "
                "Where did that attempt come from?")

    def covered(asked: str) -> float:
        return evidence.coverage(asked_terms(asked), f"{CHEN}\n\nOpenSSH_2k", frequencies, 3788,
                                 search_terms(asked), quoted_words(asked))

    assert covered(question) >= evidence.COVERAGE_FLOOR
    assert covered(question.replace("'chen'", "chen")) < evidence.COVERAGE_FLOOR
    weights = evidence.term_weights(search_terms(question), [CHEN, "POSSIBLE BREAK-IN ATTEMPT "
                                    "from an SSH login account"], quoted_words(question))
    assert weights["chen"] == 3 * weights["account"]


def test_a_quoted_name_no_passage_holds_is_weak_evidence():
    """As an id the store lacks: the passages are about another account."""
    text = f"{CHEN}: account locked"
    assert weak_evidence("Where did the account 'zed' log in from?", [text])
    assert not weak_evidence("Where did the account 'chen' log in from?", [text])
    assert not weak_evidence("Where did the account zed log in from?", [text])


SPARK_TASK = ("17/06/09 20:10:55 INFO executor.Executor: Finished task 0.0 in stage 12.0 "
              "(TID 480). 2155 bytes result sent to driver")


@pytest.mark.parametrize("question, held", [
    # the line's 12 is the stage's, not the executor's the question gives it to
    ("How many tasks of stage 99 ran on executor 12?", {"tasks", "stage", "executor"}),
    ("How many tasks of stage 12 ran?", {"tasks", "stage", "12"}),
    ("Which task ran on executor 480?", {"task", "executor", "480"}),  # TID: no word of ours
    ("How many tasks sent 12 bytes?", {"tasks", "sent", "12", "bytes"}),  # no label given
])
def test_a_number_after_another_of_the_questions_words_is_not_held(question, held):
    words = search_terms(question)
    assert evidence.matched_terms(asked_terms(question), SPARK_TASK, words) == held
    full = evidence.coverage(asked_terms(question), SPARK_TASK, {}, 3788, words)
    assert (full == 1.0) == (held == set(asked_terms(question)))


BROADCAST = "17/06/09 20:10:48 INFO broadcast.TorrentBroadcast: Reading broadcast variable 4"


def test_a_unit_is_held_as_a_log_abbreviates_it():
    """"How many milliseconds ...?" is answered by the line that says "took 19 ms", not by
    the one that says the same without a time; in coverage, `ms` counts as rare as it is."""
    question = "How many milliseconds did reading broadcast variable 4 take?"
    started, took = BROADCAST.replace("Reading", "Started reading"), f"{BROADCAST} took 19 ms"
    weights = evidence.term_weights(search_terms(question), [started, took])
    shown = [Shown(1, "Spark_2k.log", [Line(58, started), Line(60, took)],
                   [Line(58, started), Line(60, took)])]
    assert evidence.best_line(shown, weights)[1].number == 60
    assert "milliseconds" in evidence.matched_terms(["milliseconds"], "took 19ms")
    assert not evidence.matched_terms(["milliseconds"], "19 minutes")
    frequencies = {"milliseconds": 0, "ms": 40, "reading": 60, "broadcast": 60,
                   "variable": 60, "4": 900}
    as_rare = dict(frequencies, ms=0)
    terms = asked_terms(question)
    spelled = took.replace(" ms", " milliseconds")
    assert evidence.coverage(terms, took, frequencies, 3788) < evidence.coverage(
        terms, took, as_rare, 3788) == evidence.coverage(terms, spelled, frequencies, 3788)


@pytest.mark.parametrize("question, text, contradicted", [
    ("Which block was reported corrupt by the DataBlockScanner?",
     "081110 083453 13 INFO dfs.DataBlockScanner: Verification succeeded for blk_314",
     {"corrupt"}),
    ("Which datanode was declared dead by the NameNode?",
     "The NameNode did not mark dn-17 as dead because its heartbeats went on", {"dead"}),
    ("Which user logged in successfully?", "Failed password for root from 10.0.0.5",
     {"successfully"}),
    ("Which user logged in successfully?", "Accepted password for root from 10.0.0.5", set()),
    ("Why did the backup fail?", "nightly backup to nas-07 failed: disk quota exceeded", set()),
    ("Why did the backup fail?", "the backup did not fail, it was never started", {"fail"}),
    # both outcomes written: the line may still tell which; not the opposite alone
    ("Which job failed?", "job 7 failed after 3 tries succeeded", set()),
    ("Which network interface went down on combo?",
     "Jul 27 14:41:54 combo network: Bringing up loopback interface:  succeeded", {"down"}),
    ("When did the scheduler stop?", "scheduler started with 4 workers", {"stop"}),
    ("When did the scheduler stop?", "scheduler stopped after it started", set()),
    # a name is no outcome: `Failures` of maxTaskFailuresPerNode
    ("What is maxTaskFailuresPerNode?", "RMContainerRequestor: maxTaskFailuresPerNode is 3", set()),
])
def test_a_line_that_states_the_other_outcome_contradicts_the_question(question, text,
                                                                       contradicted):
    terms = [t for t in asked_terms(question) if t in question_words(question)]
    assert evidence.contradicted(terms, text) == contradicted


def test_a_word_weighs_more_than_the_same_part_of_a_glued_name():
    """"Which payment failed?": a user's failure logged by the class PaymentClient holds
    `payment` only inside a name; the line that says a payment failed is the answer. A glued
    part still counts, half: `7163Calories` holds the calories asked about."""
    question = "Which payment failed?"
    by_class = "ERROR com.example.PaymentClient - Failed to process user 35070"
    by_word = "ERROR com.example.OrderService - Failed to process payment 78123"
    weights = evidence.term_weights(search_terms(question), [by_class, by_word])
    shown = [Shown(1, "billing.log", [Line(1, by_class), Line(2, by_word)],
                   [Line(1, by_class), Line(2, by_word)])]
    assert evidence.best_line(shown, weights)[1].number == 2
    assert evidence.line_weight(by_class, weights) == weights["failed"] + weights["payment"] / 2
    assert evidence.line_weight(FITBIT, {"calories": 1.0}) == 0.5


def test_a_number_that_is_only_another_fields_value_weighs_less_in_choosing_the_line():
    """"Which IP got a 403?" of a store with JSON request logs and an access log: the line
    whose 403 is a latency (ingested JSON reads key=value) ranks first and holds every term,
    yet the access log's 403 is the status asked for. A field the question names, or a bare
    number, counts whole."""
    question = "Which IP got a 403 on /admin/settings?"
    latency = ("2022-02-15T16:02:08.870Z info request served path=/admin/settings status=500 "
               "latency_ms=403 client_ip=10.153.28.155")
    access = ('198.136.179.134 - backup [16/Dec/2022:04:19:41 +0000] "GET /admin/settings '
              'HTTP/1.1" 403 87672 "-" "python-requests/2.31"')
    weights = evidence.term_weights(search_terms(question), [latency, access])
    shown = [Shown(1, "orders.jsonl", [Line(280, latency)], [Line(280, latency)]),
             Shown(2, "access.log", [Line(6, access)], [Line(6, access)])]
    assert evidence.best_line(shown, weights)[1].number == 6
    assert {"403", "admin/settings"} <= evidence.matched_terms(weights, latency)  # coverage
    words = search_terms("Which request got status 403?")
    assert evidence.other_fields(words, 'path=/metrics "status": 403', words) == set()
    words = search_terms("How many steps were 7163?")
    assert evidence.other_fields(words, FITBIT, words) == set()
    assert evidence.other_fields(["403"], "took 403 ms, latency_ms=403", ["403"]) == set()


def test_a_long_report_line_is_shown_by_its_sentences():
    text = ("The backup ran at 02:00. " * 8 + "It failed: the quota of nas-07 was exceeded. "
            "Nobody was paged.")
    lines = evidence.units(f"# Backups\n\n{text}", 40, None)
    assert lines[0] == Line(40, "# Backups")
    assert all(line.number == 42 for line in lines[1:]) and len(lines) == 11
    records = evidence.records(f"# Backups\n\n{text}", 40, None)
    assert records == [(line,) for line in lines]  # no head shape: a line is a record
    weights = evidence.term_weights(search_terms("Why did the backup fail?"),
                                    [line.text for line in lines])
    shown = evidence.show(1, "backups.md", records, weights, matches=1, context=0)
    assert shown.cited == [Line(42, "It failed: the quota of nas-07 was exceeded.")]


def test_lines_shown_are_the_matching_ones_with_context():
    lines = [Line(100 + i, f"081109 2140{i:02} INFO dfs.DataNode: served block {i}")
             for i in range(20)]
    lines[12] = Line(112, DISK)
    weights = evidence.term_weights(search_terms("Which node had a full disk?"),
                                    [line.text for line in lines])
    shown = evidence.show(1, "HDFS_2k.log", [(line,) for line in lines], weights, matches=2,
                          context=1)
    assert shown.cited == [lines[12]]  # the others hold only node (of DataNode)
    assert [line.number for line in shown.lines] == [111, 112, 113]
    assert evidence.show(2, "a.log", [(Line(1, "eth0 up"),)], weights, matches=2,
                         context=1) is None


def test_citations_of_sources_not_held_are_dropped_and_counted():
    text, dropped = evidence.drop_citations(
        "Disk full on 10.251.91.84 [1] [4], as in [1, 7] and [6].", {1, 2})
    assert (text, dropped) == ("Disk full on 10.251.91.84 [1], as in [1] and.", 3)
    assert evidence.drop_citations("no citation here", {1}) == ("no citation here", 0)


def shown_disk() -> list[Shown]:
    before = Line(1000, "081109 214043 2560 INFO dfs.DataNode: served block blk_7")
    return [Shown(1, "HDFS_2k.log", [before, Line(1001, DISK)], [Line(1001, DISK)])]


@pytest.mark.parametrize("answer, ok", [
    ("Datanode 10.251.91.84 ran out of disk space [1].", True),
    ("The disk was full on the datanode [1].", True),  # a paraphrase of the line's words
    ("The node ran out of disk space.", False),  # only the question's words
    ("Disk full on datanode 10.251.91.84 at 2008-11-09 21:40 [1].", False),  # invented date
    ("The backup failed because of a bug in the backup.exe command.", False),
])
def test_an_answer_is_grounded_when_it_quotes_and_invents_nothing(answer, ok):
    shown = shown_disk()
    assert evidence.grounded(answer, shown[0].cited[0], shown,
                             "Which node ran out of disk space?") is ok


def test_an_answer_copied_from_another_shown_line_is_not_grounded():
    """SmolLM2 copied the context line before the planted one (a block served) when asked
    which node ran out of disk space: every word of it is shown, but it is not the answer."""
    shown = shown_disk()
    copied = "081109 214043 2560 INFO dfs.DataNode: served block blk_7"
    assert not evidence.grounded(copied, shown[0].cited[0], shown,
                                 "Which node ran out of disk space?")


def test_the_extractive_answer_quotes_the_best_line_with_its_place():
    shown = shown_disk() + [Shown(2, "other.log", [Line(5, "disk check ok")],
                                  [Line(5, "disk check ok")])]
    weights = evidence.term_weights(search_terms("Which node ran out of disk space?"),
                                    [DISK, "disk check ok"])
    assert evidence.extractive_answer(shown, weights) == f'HDFS_2k.log:1001: "{DISK}" [1]'


def generated(make, count: int) -> str:
    """The first lines of a file that train/formats.py makes, as a log's passage holds them:
    a log's blank lines are not stored."""
    _, lines = make(random.Random(123))
    return "\n".join(line for line in lines[:count] if line.strip())


def lines_of(records: list[evidence.Record]) -> list[list[str]]:
    return [[line.text for line in record] for record in records]


def test_a_stack_trace_is_one_record_with_its_head_line():
    text = generated(formats.java_trace, 40)
    records = evidence.records(text, 1, None)
    assert lines_of(records)[2] == [
        "2021-02-25 13:17:42,311 ERROR [http-nio-8080-exec-24] com.example.billing."
        "PaymentClient - Failed to process order 45618",
        "java.sql.SQLTimeoutException: row locked by another",
        "at com.example.billing.Dao.load(PaymentClient.java:290)",
        "at com.example.billing.PaymentClient.call(PaymentClient.java:532)",
        "at com.example.billing.PaymentClient.process(PaymentClient.java:537)",
        "Caused by: java.io.IOException: Broken pipe"]
    assert [r[0].number for r in records[:5]] == [1, 2, 3, 9, 10]
    assert all(r[0].text.startswith("2021-02-25 ") for r in records)
    assert [line for r in records for line in r] == evidence.units(text, 1, None)


def test_a_journal_export_record_is_one_record_of_its_fields():
    """Export records (`FIELD=value` lines) among journalctl's short-iso lines, with no blank
    line between them as a log's passage has them: a field seen again starts the next."""
    records = lines_of(evidence.records(generated(formats.journal_export, 60), 1, None))
    assert records[:3] == [
        ["2021-02-25T13:17:06+0000 web-01 orders[22657]: orders.service failed with result "
         "'exit-code'."],
        ["__REALTIME_TIMESTAMP=1614259056963000", "_HOSTNAME=web-01", "_PID=57129",
         "_SYSTEMD_UNIT=payments.service", "PRIORITY=5",
         "MESSAGE=Listening on 203.114.64.157:80"],
        ["2021-02-25T13:17:42+0000 web-01 inventory[45898]: inventory.service: Main process "
         "exited, code=exited, status=32/FAILURE"]]
    assert {len(r) for r in records[:-1]} == {1, 6}  # the last one is cut
    exports = [r for r in records if len(r) == 6]
    assert all(r[0].startswith("__REALTIME_TIMESTAMP=") for r in exports) and len(exports) > 5
    # as exported, blank-separated, the records are the same
    _, lines = formats.journal_export(random.Random(123))
    assert lines_of(evidence.records("\n".join(lines[:60]), 1, None)) == records


PYTHON_LOG = """\
2024-05-02 10:15:01,220 INFO worker: job 812 started
2024-05-02 10:15:02,004 ERROR worker: job 812 failed
Traceback (most recent call last):
  File "/srv/app/jobs.py", line 88, in run
    total = parse(row)
  File "/srv/app/jobs.py", line 41, in parse
    return int(field)
ValueError: invalid literal for int() with base 10: 'n/a'
2024-05-02 10:15:03,117 INFO worker: job 813 started"""


def test_a_python_traceback_is_one_record():
    records = evidence.records(PYTHON_LOG, 1, None)
    assert [(r[0].number, r[-1].number) for r in records] == [(1, 1), (2, 8), (9, 9)]
    weights = evidence.term_weights(search_terms("Which job failed with an invalid literal?"),
                                    PYTHON_LOG.split("\n"))
    shown = evidence.show(1, "worker.log", records, weights, matches=1, context=1)
    # cited by the line that matches best, then the head, which adds the job and `failed`;
    # the prompt shows the head as the context of the record's last line
    assert [line.number for line in shown.cited] == [8, 2]
    assert [line.number for line in shown.lines] == [2, 7, 8, 9]
    assert evidence.extractive_answer([shown], weights) == (
        'worker.log:2-8: "2024-05-02 10:15:02,004 ERROR worker: job 812 failed" … '
        '"ValueError: invalid literal for int() with base 10: \'n/a\'" [1]')


@pytest.mark.skipif(not LOGHUB.is_dir(), reason=f"{LOGHUB} not present")
@pytest.mark.parametrize("name", ["Apache_2k.log", "HDFS_2k.log", "Hadoop_2k.log",
                                  "Linux_2k.log", "OpenSSH_2k.log", "Spark_2k.log"])
def test_every_line_of_a_loghub_log_is_a_record_of_its_own(name):
    """Every line starts with its time: records change nothing for these logs."""
    lines = (LOGHUB / name).read_text().split("\n")
    for size in (7, 40):
        for start in range(0, len(lines), size):
            text = "\n".join(lines[start:start + size])
            assert evidence.records(text, 1, None) == [
                (line,) for line in evidence.units(text, 1, None)]


JAVA_PAYMENT = generated(formats.java_trace, 140).split("\n")[130:137]  # lines 131 to 137
SOCKET = "Which payment failed because the socket closed?"


def test_a_record_is_quoted_by_its_head_and_its_matching_lines():
    """The `Caused by:` line matches best, but the payment is named by the head line: both
    are quoted, with the record's lines; its `at ...` lines hold only the head's terms."""
    assert JAVA_PAYMENT[1].endswith("Failed to process payment 78123")
    records = evidence.records("\n".join(JAVA_PAYMENT), 131, None)
    assert [(r[0].number, r[-1].number) for r in records] == [(131, 131), (132, 136),
                                                              (137, 137)]
    weights = evidence.term_weights(search_terms(SOCKET), JAVA_PAYMENT)
    shown = evidence.show(1, "billing-app.log", records, weights, matches=2, context=1)
    assert evidence.best_line([shown], weights)[1].text.endswith("socket closed")
    assert evidence.extractive_answer([shown], weights) == (
        f'billing-app.log:132-136: "{JAVA_PAYMENT[1]}" … "{JAVA_PAYMENT[5]}" [1]')


def test_coverage_reads_the_record_not_the_best_line_alone():
    """The payment and its failure are in the head line: the `Caused by:` line alone holds
    too little of the question (frequencies: rare `payment`, common `closed`)."""
    frequencies = {"payment": 3, "failed": 40, "because": 0, "socket": 5, "closed": 100}
    place = SimpleNamespace(text="\n".join(JAVA_PAYMENT), first_line=131, last_line=137,
                            path="/logs/billing-app.log", heading=None, kind="log")
    found = gather(SOCKET, [(7, 1.0)], True, {7: place}, frequencies, 4000)
    assert [line.number for line in found.shown[0].cited] == [136, 132]
    line_only = evidence.coverage(asked_terms(SOCKET), JAVA_PAYMENT[5], frequencies, 4000,
                                  search_terms(SOCKET))
    assert line_only < evidence.COVERAGE_FLOOR


def test_a_loop_is_cut_to_one_saying():
    phrase = [101, 102, 103, 104, 105, 106]
    ids = [7, 8] + phrase * 40
    assert loop_start(ids) == 8 and before_loop(ids) == [7, 8] + phrase
    twice = [1, 2, 3, 4, 5, 6, 9, 1, 2, 3, 4, 5, 6, 10]  # an id quoted twice is no loop
    assert loop_start(twice) is None and before_loop(twice) == twice


def test_report_lines_are_found_in_the_file(tmp_path):
    report = tmp_path / "incident.md"
    report.write_text("# Incident\n\n\nThe backup failed.\nQuota exceeded on nas-07.\n\n\n"
                      "## Fix\nQuota raised.\n")
    place = SimpleNamespace(path=str(report), kind="report", first_line=1, last_line=9,
                            text="Incident\n\nThe backup failed.\nQuota exceeded on nas-07.\n\n"
                                 "Fix\n\nQuota raised.")
    # the blank lines between paragraphs are one in the text, two in the file
    assert file_line_numbers(place) == [1, None, 4, 5, None, 8, None, 9]
    report.unlink()
    assert file_line_numbers(place) is None


def test_log_lines_after_blank_lines_keep_their_numbers(tmp_path):
    """A log's passage holds its non-blank lines only: a journal export's records are
    separated by blank lines, and counting from the first line would cite the line above."""
    log = tmp_path / "journal.log"
    log.write_text("_PID=1\nMESSAGE=started\n\n_PID=2\nMESSAGE=restart counter is at 42\n")
    place = SimpleNamespace(path=str(log), kind="log", first_line=1, last_line=5,
                            text="_PID=1\nMESSAGE=started\n_PID=2\n"
                                 "MESSAGE=restart counter is at 42")
    assert file_line_numbers(place) == [1, 2, 4, 5]
    lines = evidence.units(place.text, place.first_line, file_line_numbers(place))
    assert lines[-1] == Line(5, "MESSAGE=restart counter is at 42")
    whole = SimpleNamespace(path=str(log), kind="log", first_line=4, last_line=5,
                            text="_PID=2\nMESSAGE=restart counter is at 42")
    assert file_line_numbers(whole) is None  # nothing skipped: counted, the file not read
    log.write_text("rotated\n")  # changed since: counted rather than guessed
    assert file_line_numbers(place) is None


ROOT_CAUSE = """Root cause

The datanode stored its block files on the root volume because the mount of /data3 failed at
boot on 2026-03-02 and nobody noticed. For twelve days the root volume filled at about
4.1 GB per hour of load. When it was full, the DataXceiver threads raised exceptions on each
block, yet the datanode process stayed up and kept sending heartbeats."""


def test_a_reports_sentence_wrapped_over_lines_is_one_record(tmp_path):
    """A sentence cut by the report's line wrap is quoted whole and cited by every line it
    is written on: the half before the wrap held the question's words, the half after the
    answer."""
    report = tmp_path / "postmortem.md"
    report.write_text(f"# Postmortem INC-2041\n\n## {ROOT_CAUSE}\n")
    place = SimpleNamespace(text=ROOT_CAUSE, first_line=3, last_line=8, path=str(report),
                            heading="Postmortem INC-2041 > Root cause", kind="report")
    question = "How fast did the root volume of the datanode fill up?"
    frequencies = {"root": 9, "volume": 7, "datanode": 40, "fast": 1, "fill": 1, "up": 150}
    found = gather(question, [(7, 1.0)], True, {7: place}, frequencies, 4000)
    reply = found.quote()
    assert reply.text == ('postmortem.md:6-7: "For twelve days the root volume filled at about '
                          '4.1 GB per hour of load." [1]')
    assert reply.sources[0].cited_lines[:2] == [6, 7]  # the best first, each line once
    assert sorted(reply.sources[0].cited_lines) == [5, 6, 7]
    # as a log, the same lines are a record each: the number is cut off the line quoted
    as_log = evidence.records(ROOT_CAUSE, 3, file_line_numbers(place))
    assert (Line(6, "boot on 2026-03-02 and nobody noticed. For twelve days the root volume "
                    "filled at about"),) in as_log


def test_a_reports_headings_tables_and_list_items_are_not_joined_into_sentences():
    text = "\n".join([
        "Capacity test CT-77: Spark log aggregation",  # a title: no sentence goes on below
        "This report measures the job.",
        "| R1 | 24 executors | 41 min",
        "| R2 | 48 executors | 47 min",
        "1. The daily volume fits the window with a margin of 3 hours 8 minutes at",
        "   96 executors.",
        "* Raise executor memory to 16 GB",
        "* Repeat the test as CT-78. It runs in August 2026 or when the daily volume passes",
        "2.5 TB.",
        "===============",
        "Listening on 10.108.244.189:5432",  # a log's lines pasted into a report
        "_SYSTEMD_UNIT=payments.service",
    ])
    records = evidence.records(text, 1, None, prose=True)
    assert [(line.number, line.last, line.text) for (line,) in records] == [
        (1, None, "Capacity test CT-77: Spark log aggregation"),
        (2, None, "This report measures the job."),
        (3, None, "| R1 | 24 executors | 41 min"),
        (4, None, "| R2 | 48 executors | 47 min"),
        (5, 6, "1. The daily volume fits the window with a margin of 3 hours 8 minutes at "
               "96 executors."),
        (7, None, "* Raise executor memory to 16 GB"),
        (8, None, "* Repeat the test as CT-78."),
        (8, 9, "It runs in August 2026 or when the daily volume passes 2.5 TB."),
        (10, None, "==============="),
        (11, None, "Listening on 10.108.244.189:5432"),
        (12, None, "_SYSTEMD_UNIT=payments.service"),
    ]
    assert evidence.place("ct-77.rst", records[4]) == "ct-77.rst:5-6"


def test_the_best_record_holds_what_the_question_names():
    """A report's sentence holds many of the question's words; the log line holding the one
    it quotes is the answer."""
    question = ("Someone attempted an SSH login with the nonexistent account name 'chen'. "
                "Where did that attempt come from?")
    runbook = Line(None, "Each SSH login attempt of an account name that does not exist is "
                         "counted, and someone is paged when an attempt comes from the VPN.")
    sshd = Line(22, "Dec 10 07:11:42 LabSZ sshd[24224]: Invalid user chen from 202.100.179.208")
    shown = [Shown(1, "runbook.pdf", [runbook], [runbook]), Shown(2, "sshd.log", [sshd], [sshd])]
    weights = evidence.term_weights(search_terms(question), [runbook.text, sshd.text],
                                    quoted_words(question))
    assert evidence.best_record(shown, weights, evidence.Focus(quoted_words(question)))[1] == (
        sshd,)
    assert evidence.best_record(shown, weights)[1] == (runbook,)  # 'chen' weighed, not named


def test_a_reports_line_is_weighed_with_its_title_and_section():
    """The title names the report's subject, so it holds words of every question about the
    report; a line under it holds them too."""
    question = "How many executors does the capacity test recommend for logagg-daily?"
    title = Line(2, "Capacity test CT-77: Spark log aggregation on ETL")
    advice = Line(57, "* Run logagg-daily with 96 executors; do not go above 100.")
    head = "Capacity test CT-77: Spark log aggregation on ETL"
    weights = evidence.term_weights(search_terms(question), [title.text, advice.text])
    shown = [Shown(1, "ct-77.rst", [title], [title], heading=head),
             Shown(2, "ct-77.rst", [advice], [advice], heading=f"{head} > Recommendations")]
    assert evidence.best_record(shown, weights)[1] == (advice,)
    bare = [Shown(s.rank, s.where, s.lines, s.cited) for s in shown]
    assert evidence.best_record(bare, weights)[1] == (title,)


@pytest.mark.parametrize("question, lines, answer", [
    ("Which IP address tried to log in as the invalid user pgadmin?",
     ["Dec 10 07:28:03 LabSZ sshd[24245]: input_userauth_request: invalid user pgadmin "
      "[preauth]",
      "Dec 10 07:28:01 LabSZ sshd[24245]: Invalid user pgadmin from 112.95.230.3"], 1),
    ("How long did reading broadcast variable 2 take?",
     ["17/06/09 20:10:48 INFO broadcast.TorrentBroadcast: Started reading broadcast variable 2",
      "17/06/09 20:10:48 INFO broadcast.TorrentBroadcast: Reading broadcast variable 2 took "
      "16 ms"], 1),
    # the shape alone does not choose a line that holds too little of the question
    ("How long did reading broadcast variable 2 take?",
     ["17/06/09 20:10:48 INFO broadcast.TorrentBroadcast: Started reading broadcast variable 2",
      "17/06/09 20:10:49 INFO storage.MemoryStore: Block taken in 16 ms"], 0),
])
def test_a_line_of_the_asked_shape_answers(question, lines, answer):
    records = [(Line(i + 1, text),) for i, text in enumerate(lines)]
    shown = [Shown(1, "x.log", [r[0] for r in records], [r[0] for r in records], records)]
    weights = evidence.term_weights(search_terms(question), lines)
    focus = evidence.Focus(shape=evidence.answer_shape(question))
    assert evidence.best_record(shown, weights, focus)[1] == records[answer]
    assert evidence.best_record(shown, weights)[1] == records[0]  # shape unasked: the first


@pytest.mark.parametrize("question, written, other", [
    ("Which IP address did it come from?", "from 10.4.17.22 port 22", "from host-7"),
    ("What is the MAC address of eth0?", None, None),
    ("Which port did the listener start on?", "listener on port 62270", "started at 18:01:53"),
    ("Which port did it connect to?", "connect to 10.4.17.22:50010", "at 18:01:53"),
    ("How long did the stall last?", "stalled for 2 hours 35 minutes", "stalled on dn-17"),
    ("What phone number do you call?", "call +44 20 7946 0321", "call the lead"),
    ("Which user logged in?", None, None),
])
def test_the_answer_shape_a_question_asks_for(question, written, other):
    shape = evidence.answer_shape(question)
    assert (shape is None) == (written is None)
    if shape is not None:
        assert shape.search(written) and not shape.search(other)


def test_a_question_asking_for_several_gets_each_of_them():
    """"Which ports" asks for every port the matching lines write: each line is quoted with
    its place and source, one per port."""
    question = "Which ports did the IPC Server listeners start on?"
    lines = ["2015-10-18 18:01:52,902 INFO [main] org.apache.hadoop.ipc.Server: IPC Server "
             "listener started on port 62260",
             "2015-10-18 18:01:53,510 INFO [main] org.apache.hadoop.ipc.Server: IPC Server "
             "listener started on port 62270",
             "2015-10-18 18:01:53,511 INFO [IPC Server Responder] "
             "org.apache.hadoop.ipc.Server: IPC Server Responder: starting"]
    shown = [Shown(1, "hadoop.log", [Line(54, lines[1])], [Line(54, lines[1])]),
             Shown(2, "hadoop.log", [Line(34, lines[0]), Line(35, lines[2])],
                   [Line(34, lines[0]), Line(35, lines[2])])]
    weights = evidence.term_weights(search_terms(question), lines)
    focus = evidence.Focus(shape=evidence.answer_shape(question),
                           several=evidence.SEVERAL.search(question) is not None)
    assert evidence.extractive_answer(shown, weights, focus) == (
        f'hadoop.log:54: "{lines[1]}" [1]; hadoop.log:34: "{lines[0]}" [2]')
    one = evidence.Focus(shape=focus.shape)  # "Which port": the best line alone
    assert evidence.extractive_answer(shown, weights, one) == f'hadoop.log:54: "{lines[1]}" [1]'


def test_records_the_question_cannot_tell_apart_are_quoted_together():
    """Two lines hold the same of "What task attempt did the JVM get handed?": each is
    quoted, so the one naming the attempt is among them; a third that repeats the first's
    values at another time is not, nor one holding less of the question."""
    question = "What task attempt did the JVM jvm_1445144423722_0020_m_000002 get handed?"
    head = ("2015-10-18 18:02:02,510 INFO [IPC Server handler 13 on 62270] "
            "org.apache.hadoop.mapred.TaskAttemptListenerImpl: ")
    lines = [head + "JVM with ID : jvm_1445144423722_0020_m_000002 asked for a task",
             head + "JVM with ID: jvm_1445144423722_0020_m_000002 given task: "
                    "attempt_1445144423722_0020_m_000000_0",
             head.replace("18:02:02,510", "18:02:09,004")
             + "JVM with ID : jvm_1445144423722_0020_m_000002 asked for a task",
             head + "Progress of TaskAttempt attempt_1445144423722_0020_m_000000_0 is : 0.1"]
    cited = [Line(178 + i, text) for i, text in enumerate(lines)]
    shown = [Shown(1, "hadoop.log", cited, cited)]
    weights = evidence.term_weights(search_terms(question), lines)
    assert evidence.extractive_answer(shown, weights) == (
        f'hadoop.log:178: "{lines[0]}" [1]; hadoop.log:179: "{lines[1]}" [1]')


@pytest.mark.parametrize("question, attribute", [
    ("What is the database password?", "password"),
    ("How much memory does the orders database use?", "memory"),
    ("How many HDFS bytes did job job_1445144423722_0020 write in total?", "bytes"),
    ("How many times did sshd log it?", None),  # names the answer's form, not a thing
    ("What was the checksum of the block?", "checksum"),  # the head before "of"
    ("What is the heap size of the executors?", None),  # a measure: `14 GB`
    ("What was the status code of the request to /index.php?", None),  # a form: `200`
    ("What was the name of the Spark application?", None),
    ("What was the CPU temperature when the host throttled?", None),  # a clause
    ("Which is the primary node?", None),
])
def test_the_attribute_a_question_asks_about(question, attribute):
    assert evidence.asked_attribute(question) == attribute


def test_a_line_without_the_asked_attribute_is_no_answer():
    """The runbook line holds the orders database and not its password: not found, the
    nearest sources listed. Where a line holds it, that line answers."""
    runbook = ("Backups of the orders database run every 18 hours and are kept for 3 days.\n"
               "The orders database is served by pg-orders-1 on port 5432.")
    place = SimpleNamespace(text=runbook, first_line=60, last_line=61, kind="report",
                            path="/docs/orders-runbook.md", heading="Orders runbook > Backups")
    frequencies = {"database": 3, "orders": 5, "password": 40, "memory": 30}
    for question in ["What is the database password?",
                     "How much memory does the orders database use?"]:
        found = gather(question, [(7, 1.0)], True, {7: place}, frequencies, 4000)
        assert found.shown == [] and found.not_found().status == "not-found", question
    place.text += "\nThe orders database password is kept in vault path secret/orders."
    found = gather("What is the database password?", [(7, 1.0)], True, {7: place},
                   frequencies, 4000)
    assert "vault path secret/orders" in found.quote().text


def stored(text: str, path: str, first_line: int = 1, kind: str = "log",
           heading: str | None = None) -> SimpleNamespace:
    """A stored passage as gather reads it: its text, file, kind, heading and line range."""
    return SimpleNamespace(text=text, first_line=first_line, kind=kind, path=path,
                           heading=heading, last_line=first_line + text.count("\n"))


@pytest.mark.parametrize("question, excluded", [
    ("Which datanode was decommissioned in INC-2041 besides dn-17?", "dn-17"),
    ("Which golden image did the runbook use before gi-2026.01?", "gi-2026.01"),
    ("Which job ran other than job_1445144423722_0020?", "job_1445144423722_0020"),
    ("Which host failed after the reboot?", None),  # not an id
    ("What did the datanode log after blk_-1608 was received?", None),  # not the last word
])
def test_the_id_a_question_asks_for_another_of(question, excluded):
    assert evidence.Focus.of(question, frozenset()).excluded == excluded


def test_ids_of_a_kind():
    text = "Capacity test CT-77 on dn-17 and DN-18, blk_-1608 and blk_-1609; x86_64, UTF-8."
    assert evidence.others_of_kind("CT-78", text) == {"77"}
    assert evidence.others_of_kind("dn-17", text) == {"18"}
    assert evidence.others_of_kind("blk_-1608", text) == {"1609"}
    assert evidence.others_of_kind("INC-2041", text) == set()
    assert evidence.about_another(["CT-78", "dn-17", "INC-2041", "Spark"], text) == {"CT-78"}


def test_a_record_about_another_id_of_the_named_kind_is_no_answer():
    """The report on CT-77 holds the Spark version and mentions CT-78 only as the next test:
    asked of CT-78 it is not found. "Besides dn-17" asks for another datanode: a line that
    names only dn-17 is no answer, one naming another is."""
    report = ("Capacity test CT-77 ran on the ETL cluster in July 2026.\n"
              "The Spark version was 3.5.1 and the Python version 3.11.7.\n"
              "Repeat the test as CT-78 in August 2026 or when the volume passes 2.5 TB.")
    place = stored(report, "/docs/capacity-test-ct-77.rst", kind="report",
                   heading="Capacity test CT-77: Spark log aggregation")
    frequencies = {"Spark": 70, "version": 17, "used": 19, "capacity": 8, "test": 76,
                   "CT-78": 1, "CT-77": 3}
    found = gather("Which Spark version was used in capacity test CT-78?", [(3, 1.0)], True,
                   {3: place}, frequencies, 3800)
    assert found.shown == [] and found.not_found().status == "not-found"
    found = gather("Which Spark version was used in capacity test CT-77?", [(3, 1.0)], True,
                   {3: place}, frequencies, 3800)
    assert "3.5.1" in found.quote().text

    timeline = "| 11:05 | dn-17 decommissioned; 312 blocks re-replicated from other nodes |"
    place = stored(timeline, "/docs/postmortem-inc-2041.md", 34, "report", "INC-2041 > Timeline")
    frequencies = {"datanode": 40, "decommissioned": 2, "INC-2041": 4, "dn-17": 6}
    question = "Which datanode was decommissioned in INC-2041 besides dn-17?"
    found = gather(question, [(5, 1.0)], True, {5: place}, frequencies, 3800)
    assert found.shown == []
    place.text += "\n| 11:40 | dn-23 decommissioned after its disks failed |"
    place.last_line = 35
    assert "dn-23" in gather(question, [(5, 1.0)], True, {5: place}, frequencies,
                             3800).quote().text


def test_the_value_of_a_thing_the_line_does_not_write_is_not_found():
    """"What was the checksum of block X?" over the line deleting X: the line names the block
    and not a checksum, so it is no answer; the size of X is, where a line writes it."""
    hdfs = ("081110 220811 19 INFO dfs.FSDataset: Deleting block blk_-5718504625725408070 file "
            "/mnt/hadoop/dfs/data/current/blk_-5718504625725408070\n"
            "081110 220907 19 INFO dfs.DataNode$PacketResponder: Received block "
            "blk_-5718504625725408070 of size 67108864 from /10.251.106.10")
    place = stored(hdfs, "/logs/HDFS_2k.log", 1007)
    frequencies = {"blk_-5718504625725408070": 3, "checksum": 0, "size": 300, "deleted": 40,
                   "received": 500, "block": 1500}
    found = gather("What was the checksum of block blk_-5718504625725408070 when it was "
                   "deleted?", [(9, 1.0)], True, {9: place}, frequencies, 4000)
    assert found.shown == [] and found.not_found().status == "not-found"
    found = gather("What was the size of block blk_-5718504625725408070?", [(9, 1.0)], True,
                   {9: place}, frequencies, 4000)
    assert "of size 67108864" in found.quote().text


@pytest.mark.parametrize("question, writes, lacks", [
    ("Which user deleted block blk_1?", "sshd[9]: Failed password for root from 1.2.3.4",
     "dfs.FSDataset: Deleting block blk_1 file /mnt/hadoop/dfs/data/current/blk_1"),
    ("Which user sent the PUT to /health/6662?",
     '203.250.56.102 - deploy [16/Dec/2022:04:20:53 +0000] "PUT /health/6662 HTTP/1.1" 502 83',
     "ftpd[23935]: connection from 210.245.165.136 () at Sun Jul 17 09:44:07 2005"),
    ("Which user ran backup.sh from cron?", "CRON[1677]: (ops) CMD (/usr/local/bin/backup.sh)",
     "allocateBlock: /user/root/randtxt/_temporary/part-00011"),  # a path's `user` is none
    ("Which file did ftpd transfer?", "CRON[1677]: (ops) CMD (/usr/local/bin/backup.sh)",
     "ftpd[23935]: connection from 210.245.165.136 () at Sun Jul 17 09:44:07 2005"),
    ("Which file did the kernel fail to read on sdc4?", "EXT4-fs error: reading /etc/fstab",
     "EXT4-fs error (device sdc4): inode #500748: comm rsync: reading directory lblock 0"),
    ("Which Hadoop version ran the MapReduce job?", "Hadoop 2.7.3 started",
     "JobImpl: Number of reduces for job job_1445144423722_0020:1"),
    ("Which email address received the alert?", "alert sent to oncall@example.com",
     "| 10:41 | Block receive errors traced to dn-17 |"),
    ("What was the size of block blk_1 when it was received?", "Received block blk_1 of size 6",
     "Receiving block blk_1 src: /10.251.126.22:58984 dest: /10.251.126.22:50010"),
    ("What was the size of the response to the PUT of /health/6662?",
     '1.2.3.4 - - [16/Dec/2022] "PUT /health/6662 HTTP/1.1" 502 83468 "-"', "PUT /health/6662"),
    ("Which country did 183.62.140.253 connect from?", "geoip: 183.62.140.253 country=CN",
     "sshd[25291]: authentication failure; rhost=183.62.140.253"),
])
def test_a_kind_asked_for_and_how_a_line_writes_it(question, writes, lacks):
    _, kind = evidence.asked_kind(question)
    assert kind.search(writes) and not kind.search(lacks)


@pytest.mark.parametrize("question", [
    "What user agent sent the PUT to /health/6662?",  # a user agent is no user
    "Which block did user root delete?",  # asks for a block
    "Which IP address did the user log in from?",
    "What was the name of the application?",  # a name may be any word
])
def test_no_kind_of_its_own_is_asked_for(question):
    assert evidence.asked_kind(question) is None


def test_a_line_writing_no_value_of_the_asked_kind_is_no_answer():
    """"Which user deleted block X?" over the line deleting X: it names the block and no
    user, so nothing is found; "Which file ..." of the same line is answered by its path."""
    hdfs = ("081110 220811 19 INFO dfs.FSDataset: Deleting block blk_-5718504625725408070 file "
            "/mnt/hadoop/dfs/data/current/blk_-5718504625725408070")
    place = stored(hdfs, "/logs/HDFS_2k.log", 1007)
    frequencies = {"blk_-5718504625725408070": 3, "deleted": 40, "deleting": 40, "block": 1500}
    found = gather("Which user deleted block blk_-5718504625725408070?", [(9, 1.0)], True,
                   {9: place}, frequencies, 4000)
    assert found.shown == [] and found.not_found().status == "not-found"
    found = gather("Which file held block blk_-5718504625725408070 when it was deleted?",
                   [(9, 1.0)], True, {9: place}, frequencies, 4000)
    assert "/mnt/hadoop/dfs/data/current" in found.quote().text


def test_a_line_writing_the_asked_kind_holds_the_word_naming_it():
    """"Which file did CRON run for ops?": cron's line writes the file's path, not the word
    "file", and answers; without a path in it, the same line holds too little."""
    cron = "Feb 25 13:19:49 web-01 CRON[1677]: (ops) CMD (/usr/local/bin/backup.sh)"
    frequencies = {"file": 0, "CRON": 34, "run": 3, "ops": 36}  # as in the unseen split
    question = "Which file did CRON run for ops?"
    found = gather(question, [(4, 1.0)], True, {4: stored(cron, "/logs/web-01-syslog", 15)},
                   frequencies, 505)
    assert "/usr/local/bin/backup.sh" in found.quote().text
    bare = cron.replace("/usr/local/bin/backup.sh", "backup")
    found = gather(question, [(4, 1.0)], True, {4: stored(bare, "/logs/web-01-syslog", 15)},
                   frequencies, 505)
    assert found.shown == []


def test_why_is_answered_by_a_line_stating_a_cause():
    """"Why could the kernel not register its security module?": of the kernel's lines the one
    stating why (`already ... initialized`, `failed`) answers, though another holds more of the
    question's words; where no line states a cause in words the question does not use ("Failed
    to renew lease" restates "fail"), nothing is found."""
    kernel = ("Jul 27 14:41:58 combo kernel: selinux_register_security:  Registering secondary "
              "module capability\n"
              "Jul 27 14:41:58 combo kernel: There is already a security framework initialized, "
              "register_security failed.")
    place = stored(kernel, "/logs/Linux_2k.log", 1946)
    frequencies = {"kernel": 14, "register": 14, "security": 15, "module": 2, "not": 161}
    found = gather("Why could the kernel not register its security module?", [(4, 1.0)], True,
                   {4: place}, frequencies, 3800)
    assert "already a security framework initialized" in found.quote().text
    lease = ("2015-10-18 18:08:33,537 WARN [LeaseRenewer:msrabi@msra-sa-41:9000] "
             "org.apache.hadoop.hdfs.LeaseRenewer: Failed to renew lease for "
             "[DFSClient_NONMAPREDUCE_1537864556_1] for 356 seconds.  Will retry shortly ...")
    place = stored(lease, "/logs/Hadoop_2k.log", 1997)
    frequencies = {"lease": 30, "renewer": 30, "msra-sa-41": 200, "fail": 900, "caused": 0}
    found = gather("What caused the lease renewer on msra-sa-41 to fail?", [(4, 1.0)], True,
                   {4: place}, frequencies, 3800)
    assert found.shown == [] and found.not_found().status == "not-found"
    assert not evidence.Focus.of("When did the lease renewer fail?", frozenset()).why


@pytest.mark.parametrize("line, states", [
    ('[crit] 1202#1202: *5041 SSL_do_handshake() failed (SSL: error:14209102:SSL routines:'
     'tls_early_post_process_client_hello:unsupported protocol) while SSL handshaking', True),
    ("[error] 1202#1202: *5017 connect() failed (111: Connection refused) while connecting to "
     "upstream, client: 10.4.77.12", True),
    ("[error] 1202#1202: *5041 SSL_do_handshake() failed while SSL handshaking", False),
])
def test_a_system_calls_reason_is_a_cause(line, states):
    """nginx writes why a call failed in parentheses after it, a code and its reason: that
    states a cause of "Why did the SSL handshake fail?"; the failure alone restates it."""
    focus = evidence.Focus.of("Why did the SSL handshake fail for 10.9.3.201?", frozenset())
    assert focus.states_cause(line) is states


def test_why_quotes_the_cause_under_a_stack_traces_head():
    """A Java stack trace is one record: "Why did payment 39695 fail?" quotes its head and the
    exception under it, which states the cause; the log level ERROR is no cause."""
    log = ("2020-02-23 07:38:24,833 ERROR [http-nio-8080-exec-38] com.example.inventory."
           "UserRepository - Failed to process payment 39695\n"
           "java.lang.NullPointerException: Connection reset\n"
           "\tat com.example.inventory.UserRepository.process(UserRepository.java:314)\n"
           "2020-02-23 07:38:25,655 INFO [http-nio-8080-exec-23] com.example.inventory."
           "CartController - Handled request 10770 in 45 ms")
    place = stored(log, "/logs/inventory-app.log", 7)
    frequencies = {"payment": 40, "39695": 2, "fail": 60}
    found = gather("Why did payment 39695 fail?", [(2, 1.0)], True, {2: place}, frequencies, 900)
    assert found.quote().text == (
        'inventory-app.log:7-9: "2020-02-23 07:38:24,833 ERROR [http-nio-8080-exec-38] '
        'com.example.inventory.UserRepository - Failed to process payment 39695" … '
        '"java.lang.NullPointerException: Connection reset" [1]')
    head = log.splitlines()[0]
    place.text, place.last_line = head, 7  # the head alone restates the question
    found = gather("Why did payment 39695 fail?", [(2, 1.0)], True, {2: place}, frequencies, 900)
    assert found.shown == []


def test_a_request_for_another_path_is_no_answer():
    """"Which user got a 418 on /api/invoices/9616?": an access log's request for
    /api/orders/418 holds the 418 only in another path under /api, so nothing is found; the
    request for the named path answers."""
    access = ('172.123.207.9 - jenkins [16/Dec/2022:04:43:22 +0000] "GET /api/orders/418 '
              'HTTP/1.1" 200 28964 "-" "python-requests/2.31"')
    place = stored(access, "/logs/access.log", 120)
    frequencies = {"got": 0, "418": 1, "api/invoices/9616": 1}
    question = "Which user got a 418 on /api/invoices/9616?"
    assert gather(question, [(6, 1.0)], True, {6: place}, frequencies, 500).shown == []
    assert evidence.other_paths("api/invoices/9616", access) == {"api/orders/418"}
    place.text = access.replace("/api/orders/418", "/api/invoices/9616").replace(" 200 ", " 418 ")
    assert "jenkins" in gather(question, [(6, 1.0)], True, {6: place}, frequencies,
                               500).quote().text
