"""kbd eval: the scoring of hand-made replies, the questions file's checks, and a slice of the
benchmark (bench/qa/dev.jsonl) asked of the real daemon on the text engine (SmolLM2)."""

from __future__ import annotations

import json
import re
import shutil
import sys
from pathlib import Path

import pytest
from support.harness import Kbd, smollm2_missing, wait_for

from kbd.errors import KbdError
from kbd.evaluate import (
    Gold,
    QuestionsError,
    answer_right,
    citations_valid,
    gold_rank,
    load_questions,
    parse_question,
    report,
    run,
    score,
    table,
)

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from train import formats  # noqa: E402

ROOT = Path("/data")
QA = Path(__file__).resolve().parents[1] / "bench" / "qa"
LOGHUB = Path(__file__).resolve().parents[2] / "shared" / "data" / "loghub"


def source(path: str, lines=None, page=None, **extra) -> dict:
    return {"rank": 0, "path": path, "lines": lines, "page": page, "score": 1.0} | extra


def question(**fields) -> dict:
    return {"id": "q1", "split": "dev", "question": "Which IP?", "kind": "literal",
            "gold": [{"file": "logs/HDFS_2k.log", "lines": [100, 101]}],
            "accept": [r"10\.251\.91\.84"], "accept_mode": "any", "answerable": True} | fields


GOLD = [Gold("logs/HDFS_2k.log", (100, 101), None)]


def test_gold_rank_is_the_first_source_on_a_gold_line_of_the_gold_file():
    sources = [source("/data/logs/Spark_2k.log", [90, 120]),  # right lines, other file
               source("/data/logs/HDFS_2k.log", [60, 99]),  # right file, lines before
               source("/data/logs/HDFS_2k.log", [101, 130]),  # overlaps the gold's last line
               source("/data/logs/HDFS_2k.log", [95, 105])]
    assert gold_rank(sources, GOLD, ROOT) == 3
    assert gold_rank(sources[:2], GOLD, ROOT) is None


def test_gold_file_is_matched_relative_to_the_data_root_or_by_suffix():
    assert gold_rank([source("/elsewhere/logs/HDFS_2k.log", [100, 100])], GOLD, None) == 1
    assert gold_rank([source("/data/other/HDFS_2k.log", [100, 100])], GOLD, ROOT) is None
    assert gold_rank([source("/data/xlogs/HDFS_2k.log", [100, 100])], GOLD, None) is None


def test_cited_lines_take_the_place_of_the_passage_range():
    """A passage over the gold lines whose cited lines miss them does not hit."""
    assert gold_rank([source("/data/logs/HDFS_2k.log", [60, 140], cited_lines=[70, 71])],
                     GOLD, ROOT) is None
    assert gold_rank([source("/data/logs/HDFS_2k.log", [60, 140], cited_lines=[70, 101])],
                     GOLD, ROOT) == 1


def test_a_pdf_gold_is_its_page():
    gold = [Gold("reports/runbook.pdf", None, 2)]
    assert gold_rank([source("/data/reports/runbook.pdf", page=1),
                      source("/data/reports/runbook.pdf", page=2)], gold, ROOT) == 2


@pytest.mark.parametrize("answer, accept, mode, right", [
    ("The block came from 10.251.91.84.", [r"10\.251\.91\.84"], "any", True),
    ("THE USER WAS FZTU", ["fztu"], "any", True),  # case does not matter
    ("port 36060 from 52.80.34.196", ["52\\.80\\.34\\.196", "36060"], "all", True),
    ("from 52.80.34.196", ["52\\.80\\.34\\.196", "36060"], "all", False),
    ("from 52.80.34.196", ["52\\.80\\.34\\.196", "36060"], "any", True),
    ("no idea", [r"10\.251\.91\.84"], "any", False),
    ("anything", [], "any", False),  # nothing to accept: never right
])
def test_answer_right_by_any_or_all_patterns(answer, accept, mode, right):
    assert answer_right(answer, accept, mode) is right


@pytest.mark.parametrize("answer, valid", [
    ("It failed [1] and again [2].", True),
    ("See [1, 2].", True),
    ("See [3].", False),  # only two sources were in the prompt
    ("See [0].", False),
    ("sshd[24200]: Invalid user admin [preauth]", True),  # a process id is no citation
    ("No citation at all.", True),
    # a quoted line's brackets are the line's: su(pam_unix)[12193], a level [3]
    ('Linux.log:7: "su(pam_unix)[12193]: session opened [3]" [1]', True),
    ('Linux.log:7: "su(pam_unix)[12193]: session opened" [3]', False),
])
def test_citations_must_name_sources_the_prompt_held(answer, valid):
    sources = [source("/a", [1, 1], in_prompt=True), source("/b", [2, 2], in_prompt=True),
               source("/c", [3, 3], in_prompt=False)]
    assert citations_valid(answer, sources) is valid


def test_without_in_prompt_every_source_counts_as_held():
    assert citations_valid("See [3].", [source("/a"), source("/b"), source("/c")])
    assert not citations_valid("See [4].", [source("/a"), source("/b"), source("/c")])


def test_score_of_answered_declined_and_unanswerable_replies():
    q = parse_question(question())
    hit = {"answer": "From 10.251.91.84 [2].", "status": "answered", "citations_dropped": 1,
           "sources": [source("/data/logs/HDFS_2k.log", [1, 50]),
                       source("/data/logs/HDFS_2k.log", [90, 110])]}
    scored = score(q, hit, 1.5, ROOT)
    assert (scored.gold_rank, scored.answer_right, scored.declined, scored.citations_valid,
            scored.citations_dropped) == (2, True, False, True, 1)
    assert scored.sources == ["logs/HDFS_2k.log:1-50", "logs/HDFS_2k.log:90-110"]
    # a decline that happens to contain the answer is still not a right answer
    declined = score(q, hit | {"status": "not-found"}, 1.0, ROOT)
    assert declined.declined and not declined.answer_right
    # a reply without status (kbd before the not-found path) counts as answered
    nothing = parse_question(question(id="q2", answerable=False, gold=[], accept=[],
                                      kind="unanswerable"))
    old = score(nothing, {"answer": "The answer is: x", "sources": []}, 2.0, ROOT)
    assert not old.declined and old.gold_rank is None


def test_summary_counts_each_figure_over_its_own_questions():
    answerable = parse_question(question())
    unanswerable = parse_question(question(id="q2", question="Who?", answerable=False,
                                           gold=[], accept=[], kind="unanswerable"))
    declined = parse_question(question(id="q3", question="Other?"))
    on_gold = [source("/data/logs/HDFS_2k.log", [100, 100])]
    answered = {"answer": "10.251.91.84 [7]", "status": "answered", "sources": on_gold}
    nothing = {"answer": "Nothing on it.", "status": "not-found", "sources": on_gold}
    replies = {"Which IP?": answered, "Who?": nothing, "Other?": nothing}
    results = run(replies.get, [answerable, unanswerable, declined], ROOT)
    figures = report(results)
    overall = figures["overall"]
    assert overall["questions"] == 3 and overall["answerable"] == 2
    # q3 was declined, yet its sources held the gold line: recall is of the sources alone
    assert overall["recall_at_1"] == 1.0 and overall["mrr"] == 1.0
    assert overall["answer_right"] == 0.5
    assert overall["declined"] == 1.0 and overall["wrong_declines"] == 0.5
    assert overall["citations_invalid"] == 1  # [7] with one source
    assert set(figures["by_kind"]) == {"literal", "unanswerable"}
    lines = table(figures).splitlines()
    assert lines[0].split()[:3] == ["n", "R@1", "R@5"] and lines[-1].startswith("overall")


def test_a_refused_request_fails_its_question_only():
    def ask(text: str) -> dict:
        if text == "bad":
            raise KbdError("question: longer than 4,000 characters", code="bad-request")
        return {"answer": "10.251.91.84", "sources": []}

    questions = [parse_question(question(question="bad")), parse_question(question(id="q2"))]
    results = run(ask, questions, ROOT)
    assert results[0].error and not results[0].answer_right
    assert results[1].answer_right and results[1].error is None


def test_a_stopped_daemon_stops_the_run():
    def ask(text: str) -> dict:
        raise KbdError("the kbd daemon is not running", code="not-running")

    with pytest.raises(KbdError, match="not running"):
        run(ask, [parse_question(question())], ROOT)


@pytest.mark.parametrize("line, problem", [
    ('{"id": "a", "question": "x"}', "missing answerable"),
    ('{"id": "a", "question": "x", "answerable": true}', "needs gold and accept"),
    ('{"id": "a", "question": "x", "answerable": true, "kind": "poem"}', "kind 'poem'"),
    ('{"id": "a", "question": "x", "answerable": true, "accept": ["(x"], '
     '"gold": [{"file": "f", "lines": [1, 1]}]}', "not a regular expression"),
    ('{"id": "a", "question": "x", "answerable": true, "accept": ["x"], '
     '"gold": [{"file": "f", "lines": [5, 2]}]}', "1 <= first <= last"),
    ('not json', "Expecting value"),
])
def test_a_malformed_question_is_refused_with_its_line(tmp_path, line, problem):
    path = tmp_path / "q.jsonl"
    path.write_text(json.dumps(question()) + "\n" + line + "\n")
    with pytest.raises(QuestionsError, match=rf"q\.jsonl:2: .*{problem}"):
        load_questions(path)


def test_the_benchmark_files_load_and_keep_their_splits_apart():
    dev = load_questions(QA / "dev.jsonl")
    heldout = load_questions(QA / "heldout.jsonl")
    assert len(dev) >= 200 and len(heldout) >= 60
    assert {q.split for q in dev} == {"dev"} and {q.split for q in heldout} == {"heldout"}
    for questions in (dev, heldout):
        assert sum(not q.answerable for q in questions) >= 0.15 * len(questions)
    assert not {q.question for q in dev} & {q.question for q in heldout}


@pytest.mark.skipif(not LOGHUB.is_dir(), reason=f"{LOGHUB} not present")
def test_the_written_probes_hold_their_answers_and_ask_nothing_the_splits_ask():
    """bench/qa/probes.jsonl: each answerable probe's gold line holds an accepted answer."""
    probes = load_questions(QA / "probes.jsonl")
    asked = {q.question for name in ("dev.jsonl", "heldout.jsonl")
             for q in load_questions(QA / name)}
    assert {q.split for q in probes} == {"probes"} and not {q.question for q in probes} & asked
    for probe in (q for q in probes if q.answerable):
        gold = probe.gold[0]
        folder = QA if gold.file.startswith("reports/") else LOGHUB
        assert gold_holds_an_answer(probe, folder / gold.file), probe.id


def gold_holds_an_answer(question, path: Path) -> bool:
    """Whether the question's first gold lines, read from path, hold an accepted answer."""
    gold = question.gold[0]
    lines = path.read_text().splitlines()[gold.lines[0] - 1:gold.lines[1]]
    return any(re.search(p, "\n".join(lines), re.I) for p in question.accept)


def test_the_unseen_split_holds_its_answers_in_the_files_of_its_seed(tmp_path):
    """bench/qa/unseen.jsonl asks over train/formats.py's files of seed 123: each answerable
    question's gold line, in the files made again here, holds an accepted answer."""
    unseen = load_questions(QA / "unseen.jsonl")
    asked = {q.question for name in ("dev.jsonl", "heldout.jsonl", "probes.jsonl")
             for q in load_questions(QA / name)}
    assert {q.split for q in unseen} == {"unseen"} and not {q.question for q in unseen} & asked
    assert sum(not q.answerable for q in unseen) >= 0.3 * len(unseen)
    written = {path.name: path for path in formats.write_folder(tmp_path, formats.UNSEEN_SEED)}
    for question in (q for q in unseen if q.answerable):
        assert gold_holds_an_answer(question, written[question.gold[0].file]), question.id


def test_the_formats_split_holds_its_answers_in_its_files():
    """bench/qa/formats.jsonl asks over the logs in bench/qa/formats/ (formats neither loghub
    nor train/formats.py has): each answerable question's gold line holds an accepted answer,
    and no other split asks its questions."""
    questions = load_questions(QA / "formats.jsonl")
    asked = {q.question for name in ("dev.jsonl", "heldout.jsonl", "probes.jsonl",
                                     "unseen.jsonl") for q in load_questions(QA / name)}
    assert {q.split for q in questions} == {"formats"}
    assert not {q.question for q in questions} & asked
    assert sum(not q.answerable for q in questions) >= 0.3 * len(questions)
    for question in (q for q in questions if q.answerable):
        assert gold_holds_an_answer(question, QA / "formats" / question.gold[0].file), \
            question.id


# -- the slice through the real daemon -------------------------------------------------------

SLICE = ["ssh-001", "ssh-013", "hdfs-001", "hdfs-033", "hadoop-013", "spark-002", "linux-001",
         "report-002", "none-001", "none-005"]


def slice_missing() -> str | None:
    return smollm2_missing() or (None if LOGHUB.is_dir() else f"{LOGHUB} not present")


def all_ready(status: dict, documents: int) -> bool:
    """The text engine leaves CLaRa's compression backlog alone, so it is not waited for."""
    return status["documents"].get("ready") == documents and status["model"] == "ready"


@pytest.mark.skipif(slice_missing() is not None, reason=f"{slice_missing()}")
def test_a_slice_of_the_benchmark_through_the_daemon(tmp_path):
    """Ten dev questions (two unanswerable) asked by `kbd eval` of a daemon watching the
    six logs and the reports: the table and --json come out, every question is scored,
    and the gold line is among the top 5 sources for most answerable ones."""
    questions = tmp_path / "slice.jsonl"
    questions.write_text("".join(line for line in (QA / "dev.jsonl").open()
                                 if json.loads(line)["id"] in SLICE))
    with Kbd(tmp_path, None) as kbd:
        for log in LOGHUB.glob("*.log"):
            shutil.copy(log, kbd.watched)
        shutil.copytree(QA / "reports", kbd.watched / "reports")
        kbd.start()
        wait_for(lambda: all_ready(kbd.status(), 9), timeout=120,
                 what="9 documents stored and the text model loaded")
        out = tmp_path / "eval.json"
        done = kbd.cli("eval", str(questions), "--data-root", str(kbd.watched), "--json",
                       str(out), "--max-new-tokens", "8", timeout=900)
        assert done.returncode == 0, done.stderr
        assert done.stdout.splitlines()[-1].startswith("overall")
        figures = json.loads(out.read_text())
    overall = figures["overall"]
    assert (overall["questions"], overall["unanswerable"], overall["errors"]) == (10, 2, 0)
    assert overall["recall_at_5"] >= 0.6, figures["questions"]
    assert {q["id"] for q in figures["questions"]} == set(SLICE)
