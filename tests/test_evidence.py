"""What an answer may stand on: matching lines, weak evidence, the citation check, the
grounding check with its extractive fallback, and the loop guard's cut (no model here: the
text engine's tests run them with SmolLM2)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from kbd.model.text import before_loop, loop_start
from kbd.retrieve import asked_terms, quoted_words, search_terms, weak_evidence
from kbd.runtime import evidence
from kbd.runtime.engines import file_line_numbers
from kbd.runtime.evidence import Line, Shown

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
    weights = evidence.term_weights(search_terms("Why did the backup fail?"),
                                    [line.text for line in lines])
    shown = evidence.show(1, "backups.md", lines, weights, matches=1, context=0)
    assert shown.cited == [Line(42, "It failed: the quota of nas-07 was exceeded.")]


def test_lines_shown_are_the_matching_ones_with_context():
    lines = [Line(100 + i, f"081109 2140{i:02} INFO dfs.DataNode: served block {i}")
             for i in range(20)]
    lines[12] = Line(112, DISK)
    weights = evidence.term_weights(search_terms("Which node had a full disk?"),
                                    [line.text for line in lines])
    shown = evidence.show(1, "HDFS_2k.log", lines, weights, matches=2, context=1)
    assert shown.cited == [lines[12]]  # the others hold only node (of DataNode)
    assert [line.number for line in shown.lines] == [111, 112, 113]
    assert evidence.show(2, "a.log", [Line(1, "eth0 up")], weights, matches=2, context=1) is None


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
