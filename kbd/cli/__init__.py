"""The kbd command line. Each function is named after its command; its docstring is the help."""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import sys
from collections.abc import Callable
from functools import wraps
from pathlib import Path

import click

from kbd.errors import KbdError
from kbd.private import UMASK

EXIT_NOT_RUNNING = 3
EXIT_UNHEALTHY = 4  # `kbd status`: the daemon runs, but reports a fault
ASK_SOURCE_FIELDS = ("rank", "passage_id", "path", "lines", "cited_lines", "page", "score",
                     "in_prompt")  # a source as `kbd ask --json` prints it


class NotRunningException(click.ClickException):
    exit_code = EXIT_NOT_RUNNING


def human_errors(func: Callable) -> Callable:
    """Turn KbdError into a clean message and exit 1 (3 when the daemon is not running);
    KBD_DEBUG=1 shows the traceback."""

    @wraps(func)
    def wrapper(*args, **kwargs):
        try:
            return func(*args, **kwargs)
        except KbdError as e:
            if os.environ.get("KBD_DEBUG"):
                raise
            if e.code == "not-running":
                raise NotRunningException(str(e)) from e
            raise click.ClickException(str(e)) from e

    return wrapper


def progress(items: list, label: str):
    """A progress bar on a terminal; on a pipe or in a log, no bar at all."""
    return click.progressbar(items, label=label, file=sys.stderr) if sys.stderr.isatty() \
        else contextlib.nullcontext(items)


def print_json(data) -> None:
    click.echo(json.dumps(data, ensure_ascii=False, default=str))


@click.group()
@click.version_option(package_name="kbd")
@click.option("--config", "config_path", type=click.Path(dir_okay=False, path_type=Path),
              envvar="KBD_CONFIG", help="Config file (default: ~/.config/kbd/config.toml).")
@click.option("-v", "--verbose", is_flag=True, help="Log progress to stderr.")
@click.pass_context
def cli(ctx: click.Context, config_path: Path | None, verbose: bool) -> None:
    """kbd: a local knowledge base that answers questions about your logs and reports."""
    # a file name that is not UTF-8 is printed with Python's escape (\udcff), as log lines
    # show it; in JSON that is the escape json.loads turns back into the exact name
    if isinstance(sys.stdout, io.TextIOWrapper):
        sys.stdout.reconfigure(errors="backslashreplace")
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")  # no bars from weight loading
    os.environ.setdefault("TQDM_DISABLE", "1")  # nor from the GGUF reader's plain tqdm bars
    ctx.obj = config_path


def get_config():
    from kbd.config import load_config

    return load_config(click.get_current_context().find_root().obj)


def open_store(config):
    from kbd.private import private_home
    from kbd.store import Store

    private_home(config.home)
    return Store.open(config.database_url, config.memory_dir)


@cli.command("ingest")
@click.option("--once", is_flag=True, required=True,
              help="Ingest now and exit (the daemon ingests continuously).")
@click.option("--no-compress", is_flag=True, help="Leave the compression backlog queued.")
@click.argument("paths", nargs=-1, type=click.Path(path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@human_errors
def ingest_once(once: bool, no_compress: bool, paths: tuple[Path, ...], as_json: bool) -> None:
    """Ingest PATHS (files or folders; default: the configured folders) once, then compress
    the backlog if CLaRa is the engine and its model is configured.

        kbd ingest --once /var/log/app ~/reports/incident.md
    """
    from kbd.ingest.pipeline import Ingester, Limits
    from kbd.store import queries as q
    from kbd.watch import WatchedFolder, scan

    config = get_config()
    store = open_store(config)
    store.claim(f"kbd ingest --once pid {os.getpid()}")  # as a daemon does: one writer
    store.write(lambda conn: q.sync_sources(conn, config.folders))
    from kbd.model.tokens import PassageTokenizer

    ingester = Ingester(store, PassageTokenizer.configured(config.model),
                        Limits.configured(config.ingest), config.folders)
    if paths:
        folders = [WatchedFolder(p) for p in paths if p.is_dir()]
        ingester.folders += tuple(folders)
        files = [(p, str(f.path), f.kind) for f, p in scan(folders)]
        files += [(p, None, "auto") for p in paths if not p.is_dir()]
        with progress(files, "ingesting") as shown:
            outcomes = ingester.ingest_many(shown)
    else:  # the configured folders, reconciled: what is gone from them is retired
        files = [(p, str(f.path), f.kind) for f, p in scan(config.folders)]
        with progress(files, "ingesting") as shown:
            outcomes = ingester.reconcile(shown)
    outcomes["recut"] = ingester.recut()
    compressed = 0
    clara_configured = config.model.active_engine == "clara" and config.model.checkpoint
    if clara_configured and not no_compress:
        from kbd.runtime.compress import compress_backlog

        clara = load_clara(config.model.checkpoint, config.model.base, config.model.device,
                           config.model.dtype)
        compressed = compress_backlog(store, clara, config.model.compress_batch_size)
    result = {"files": len(files), "outcomes": outcomes, "compressed": compressed}
    if as_json:
        print_json(result)
    else:
        click.echo(f"{len(files)} files: " + ", ".join(f"{v} {k}" for k, v in
                                                    sorted(outcomes.items()) if v))
        click.echo(f"{compressed} passages compressed")


@cli.command("status")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@human_errors
def status(as_json: bool) -> None:
    """Documents, passages, the compression backlog, the model and files that could not be
    read. Without a running daemon it reads the store directly and exits with 3; a daemon
    that reports a fault (a store it cannot write, a thread that died) makes it exit with 4."""
    config = get_config()
    try:
        result = client(config).request("GET", "/status")
        running = True
    except KbdError as e:
        if e.code != "not-running":
            raise
        result, running = offline_status(config), False
    result["daemon"] = "running" if running else "not running"
    if as_json:
        print_json(result)
    else:
        click.echo(f"daemon: {result['daemon']}")
        click.echo(f"store: {result['store']}")
        click.echo(f"engine: {result['engine']}")
        click.echo(f"model: {result['model']}")
        docs = ", ".join(f"{n} {s}" for s, n in sorted(result["documents"].items())) or "none"
        click.echo(f"documents: {docs}")
        click.echo(f"passages: {result['passages']}")
        later = " (when engine = clara)" if result["engine"] == "text" else ""
        click.echo(f"backlog: {result['backlog']} passages to compress{later}")
        if result.get("dense_backlog"):  # the daemon's, with the dense ranker installed
            click.echo(f"dense ranker: {result['dense_backlog']} passages still to embed")
        for f in result["failed_files"]:
            click.echo(f"failed: {f['path']} ({f['stage']}, {f['code']}): {f['message']}")
        for f in result.get("faults", []):  # the daemon's; an offline status has none
            click.echo(f"fault: {f['place']}: {f['message']} (hint: {f['hint']})")
        notify = result.get("notify")
        if notify and any(notify[k] for k in ("pending", "delivered", "failed")):
            click.echo(f"notifications: {notify['delivered']} delivered, {notify['pending']} "
                       f"pending, {notify['failed']} given up")
            for e in notify["given_up"]:
                click.echo(f"not delivered: {e['kind']} event {e['key']} to {e['channel']} "
                           f"after {e['attempts']} attempts: {e['last_error']}")
            for name in notify["unknown_channels"]:
                click.echo(f"waiting: events for channel {name}, which the config no longer "
                           "has")
    if not running:
        sys.exit(EXIT_NOT_RUNNING)
    if result.get("faults"):
        sys.exit(EXIT_UNHEALTHY)


def offline_status(config) -> dict:
    from kbd.store import queries as q

    store = open_store(config)
    model, model_state = None, "not configured: passages wait for a model"
    if config.model.active_engine == "text":
        model_state = f"text model {config.model.text_model} (loads when the daemon starts)"
    elif config.model.checkpoint is not None:
        from kbd.runtime.compress import configured_memory_id

        try:
            model = configured_memory_id(config)
            model_state = f"{config.model.checkpoint} (memory {model})"
        except KbdError as e:
            model_state = f"cannot be loaded: {e.message}"
    with store.read() as conn:
        result = q.status(conn, model)
    return result | {"store": store.safe_url, "engine": config.model.active_engine,
                     "model": model_state}


def client(config):
    from kbd.api.client import Client

    return Client(config.socket_path)


@cli.command("daemon")
@human_errors
def daemon() -> None:
    """Run the daemon in the foreground: watch, ingest, compress, answer, serve the API.

    Under systemd use the unit in systemd/ (Type=notify). SIGHUP reloads watched folders.
    """
    from kbd.daemon import run_daemon

    sys.exit(run_daemon(click.get_current_context().find_root().obj))


@cli.command("ask")
@click.argument("question")
@click.option("--top-k", type=click.IntRange(1, 50), help="Passages to answer from.")
@click.option("--scope", multiple=True, help="Folder, file or glob the sources must be in.")
@click.option("--kind", "kinds", multiple=True, type=click.Choice(["log", "report"]))
@click.option("--since", help="Only passages ingested in the last DURATION (e.g. 24h).")
@click.option("--max-new-tokens", type=click.IntRange(1, 2048),
              help="Longest answer in tokens (default: the engine's, 64 for text, 128 for CLaRa).")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@human_errors
def ask(question, top_k, scope, kinds, since, max_new_tokens, as_json) -> None:
    """Ask the knowledge base; prints the answer and its numbered sources.

        kbd ask "Which node ran out of disk space?" --scope /var/log/hdfs --since 24h
    """
    body = {"question": question, "top_k": top_k, "scope": list(scope), "kinds": list(kinds),
            "since": since, "max_new_tokens": max_new_tokens}
    if not as_json and sys.stdout.isatty():  # a person watching: show the answer as it comes
        reply = stream_ask(client(get_config()), body)
        print_sources(reply["sources"])
        return
    reply = client(get_config()).request("POST", "/ask", body)
    if as_json:
        sources = [{k: s[k] for k in ASK_SOURCE_FIELDS} for s in reply["sources"]]
        print_json({k: reply[k] for k in ("answer", "status", "engine", "model",
                                          "citations_dropped", "extractive",
                                          "aggregate")}
                   | {"sources": sources})
        return
    print_answer(reply, False)


@cli.command("eval")
@click.argument("questions_file", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--data-root", type=click.Path(file_okay=False, path_type=Path),
              help="Folder the questions' gold files are relative to (else matched by suffix).")
@click.option("--top-k", default=5, show_default=True, type=click.IntRange(1, 50),
              help="Sources asked for each question.")
@click.option("--split", help="Only the questions of this split (e.g. dev).")
@click.option("--limit", type=click.IntRange(1), help="Only the first N questions.")
@click.option("--max-new-tokens", type=click.IntRange(1, 2048),
              help="Longest answer; else the engine's default.")
@click.option("--json", "json_out", type=click.Path(dir_okay=False, path_type=Path),
              help="Write the figures and every question's outcome to this file.")
@human_errors
def eval_(questions_file, data_root, top_k, split, limit, max_new_tokens, json_out) -> None:
    """Score the running daemon on a questions file: gold lines among the sources
    (recall@1/@5, MRR), right answers, declined unanswerable questions, citations, latency.

        kbd eval bench/qa/dev.jsonl --data-root ~/logs --json results.json
    """
    from kbd import evaluate

    questions = evaluate.load_questions(questions_file, split, limit)
    if not questions:
        raise KbdError(f"{questions_file}: no questions"
                       + (f" in split {split!r}" if split else ""))
    kbd_client = client(get_config())
    root = data_root.resolve() if data_root else None

    def ask(question: str) -> dict:
        body = {"question": question, "top_k": top_k}
        return kbd_client.request("POST", "/ask", body | (
            {"max_new_tokens": max_new_tokens} if max_new_tokens else {}))

    scored_so_far: list = []
    about = {"questions_file": str(questions_file), "split": split, "top_k": top_k,
             "max_new_tokens": max_new_tokens}

    def note(scored) -> None:
        # --json is rewritten after every question: a run stopped after hours keeps its scores
        scored_so_far.append(scored)
        if json_out:
            write_json(json_out, evaluate.report(scored_so_far) | about)
        if logging.getLogger().isEnabledFor(logging.INFO):
            click.echo(f"{scored.id}: gold at rank {scored.gold_rank}, right "
                       f"{scored.answer_right}, {scored.status}, {scored.seconds:.1f} s", err=True)

    click.echo(evaluate.table(evaluate.report(evaluate.run(ask, questions, root, note))))


def write_json(path: Path, data: dict) -> None:
    partial = path.with_name(path.name + ".partial")
    partial.write_text(json.dumps(data, indent=1, ensure_ascii=False))
    partial.replace(path)  # a reader never sees half a file


def stream_ask(kbd_client, body: dict) -> dict:
    """Print the answer's text as it is generated; return the finished answer. An answer
    replaced after generation (a quoted line instead of an ungrounded one, or citations
    dropped) is printed again as it stands."""
    streamed = ""
    for event in kbd_client.stream("/ask", body | {"stream": True}):
        if "token" in event:
            streamed += event["token"]
            click.echo(event["token"], nl=False)
        elif "error" in event:
            raise KbdError(event["error"]["message"], code=event["error"]["code"])
        else:
            done = event["done"]
            if streamed:
                click.echo()
            if done["answer"] != streamed.strip():
                click.echo(f"{'Checked: ' if streamed else ''}{done['answer']}")
            return done
    raise KbdError("the daemon closed the stream before the answer was done")


def print_sources(sources: list[dict]) -> None:
    """Each source with its cited lines as path:line, or its place when none is cited."""
    for s in sources:
        cited = " ".join(f"{s['path']}:{n}" for n in s.get("cited_lines") or [])
        unread = "" if s.get("in_prompt", True) else ", not read"
        click.echo(f"[{s['rank']}] {cited or place(s)} ({s['score']:.3f}{unread})")


def place(source: dict) -> str:
    if source.get("lines"):
        first, last = source["lines"]
        return f"{source['path']}:{first}" + (f"-{last}" if last != first else "")
    if source.get("page"):
        return f"{source['path']} p.{source['page']}"
    return source["path"]


@cli.group("questions", invoke_without_command=True)
@click.pass_context
def questions(ctx: click.Context) -> None:
    """Standing questions, answered on a schedule (default: list them)."""
    if ctx.invoked_subcommand is None:
        ctx.invoke(questions_list)


def print_question(question: dict, as_json: bool) -> None:
    if as_json:
        print_json(question)
        return
    when = f"every {question['every']}" if question["every"] else f"cron {question['cron']!r}"
    state = "" if question["enabled"] else " (paused)"
    click.echo(f"{question['id']}: {question['text']}  [{when} {question['timezone']}]{state}")
    if question["scope"]:
        click.echo(f"    scope: {', '.join(question['scope'])}")
    window = (f"the last {question['since']}" if question["since"] else
              "since the last run" if question["since_last_run"] else "all passages")
    click.echo(f"    window: {window}")
    if question["next_run_at"]:
        click.echo(f"    next run: {question['next_run_at']}")
    if question.get("notify", "never") != "never":
        click.echo(f"    notify: {question['notify']} to {', '.join(question['channels'])}")
    last = question.get("last_delivery")
    if last:
        click.echo(f"    last delivery: {last['status']} to {last['channel']} at "
                   f"{last['finished_at']}")


@questions.command("add")
@click.argument("text")
@click.option("--every", help="Interval, e.g. 15m, 6h, 1d.")
@click.option("--cron", help='Crontab schedule, e.g. "0 7 * * 1-5".')
@click.option("--timezone", default="UTC", show_default=True, help="IANA zone for --cron.")
@click.option("--scope", multiple=True, help="Folder, file or glob the sources must be in.")
@click.option("--kind", "kinds", multiple=True, type=click.Choice(["log", "report"]))
@click.option("--since", help="Only passages ingested in the last DURATION.")
@click.option("--since-last-run", is_flag=True, help="Only what arrived since the last run.")
@click.option("--top-k", type=click.IntRange(1, 50), default=5, show_default=True)
@click.option("--max-new-tokens", type=click.IntRange(1, 2048), default=128,
              show_default=True)
@click.option("--notify", type=click.Choice(["change", "always", "never"]), default="never",
              show_default=True, help="When runs are sent to the channels.")
@click.option("--channel", "channels", multiple=True, help="A [notify.NAME] channel.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@human_errors
def questions_add(text, every, cron, timezone, scope, kinds, since, since_last_run, top_k,
                  max_new_tokens, notify, channels, as_json) -> None:
    """Add a standing question; prints it with its id.

        kbd questions add "Which services failed?" --every 1h --since-last-run
    """
    if bool(every) == bool(cron):
        raise click.UsageError("give exactly one of --every and --cron")
    body = {"text": text, "every": every, "cron": cron, "timezone": timezone,
            "scope": list(scope), "kinds": list(kinds), "since": since,
            "since_last_run": since_last_run, "top_k": top_k, "max_new_tokens": max_new_tokens,
            "notify": notify, "channels": list(channels)}
    body = {k: v for k, v in body.items() if v is not None}
    print_question(client(get_config()).request("POST", "/questions", body), as_json)


@questions.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@human_errors
def questions_list(as_json: bool = False) -> None:
    """List standing questions."""
    reply = client(get_config()).request("GET", "/questions")
    if as_json:
        print_json(reply)
        return
    for question in reply["questions"]:
        print_question(question, False)


def question_command(name: str, method: str, suffix: str, doc: str):
    """`kbd questions show|rm|pause|resume ID`: one request each."""

    @questions.command(name, help=doc)
    @click.argument("question_id", type=int)
    @click.option("--json", "as_json", is_flag=True, help="Print JSON.")
    @human_errors
    def command(question_id: int, as_json: bool) -> None:
        reply = client(get_config()).request(method, f"/questions/{question_id}{suffix}")
        if "deleted" in reply:
            print_json(reply) if as_json else click.echo(f"deleted question {question_id}")
        else:
            print_question(reply, as_json)

    return command


questions_show = question_command("show", "GET", "", "Show one standing question.")
questions_rm = question_command("rm", "DELETE", "", "Delete a question (its answers stay).")
questions_pause = question_command("pause", "POST", "/pause", "Stop running a question.")
questions_resume = question_command("resume", "POST", "/resume", "Run a question again.")


@questions.command("run")
@click.argument("question_id", type=int)
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@human_errors
def questions_run(question_id: int, as_json: bool) -> None:
    """Run a standing question now and print its answer."""
    reply = client(get_config()).request("POST", f"/questions/{question_id}/run")
    print_answer(reply, as_json)


def print_answer(reply: dict, as_json: bool) -> None:
    sources = [{k: s[k] for k in ASK_SOURCE_FIELDS if k in s} for s in reply["sources"]]
    if as_json:
        print_json({k: v for k, v in reply.items() if k != "sources"} | {"sources": sources})
        return
    if reply["answer"] is not None:
        click.echo(reply["answer"])
    else:  # failed or skipped: say why
        click.echo(f"({reply['status']}" + (f": {reply['error']})" if reply.get("error")
                                             else ")"))
    print_sources(sources)


@cli.command("answers")
@click.argument("question_id", type=int, required=False)
@click.option("--limit", default=20, show_default=True, type=click.IntRange(1))
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@human_errors
def answers(question_id: int | None, limit: int, as_json: bool) -> None:
    """Answer history. With a question id, its thread, oldest first: each run with its badge
    and what changed since the previous answer (a diff of the answer and of the sources);
    without, every answer newest first (with `kbd ask`'s).

        kbd answers 3 --limit 10
    """
    kbd = client(get_config())
    query = f"limit={limit}" + (f"&question_id={question_id}" if question_id else "")
    reply = kbd.request("GET", f"/answers?{query}")
    if as_json:
        print_json(reply)
        return
    if not reply["answers"]:
        click.echo(no_answers_yet(kbd, question_id))
        return
    if question_id:
        print_thread(reply["answers"])
        return
    for answer in reply["answers"]:
        tag = answer["change"] or answer["status"]
        click.echo(f"#{answer['answer_id']} {answer['started_at']} [{tag}] {answer['question']}")
        print_answer(answer, False)


BADGES = {"first": "first answer", "changed": "changed", "new-sources": "new sources",
          "unchanged": "unchanged"}


def no_answers_yet(kbd, question_id: int | None) -> str:
    """What `kbd answers` says before any run: when the first one is due."""
    if question_id:
        due = [kbd.request("GET", f"/questions/{question_id}")]
    else:
        due = [q for q in kbd.request("GET", "/questions")["questions"] if q["enabled"]]
    due = sorted((q for q in due if q["next_run_at"]), key=lambda q: q["next_run_at"])
    if not due:
        return "no answers yet, and no standing question is scheduled " \
               "(kbd questions add TEXT --every 1h)"
    return (f"no answers yet; the first is due at {due[0]['next_run_at']} "
            f"(question {due[0]['id']})")


def print_thread(newest_first: list[dict]) -> None:
    """One question's runs, oldest first; each ok answer after the first shows its change
    as a diff of the text (- before, + now) and of the sources' places."""
    import difflib

    before = None
    for answer in reversed(newest_first):
        badge = BADGES.get(answer["change"] or "", answer["status"])
        click.echo(f"#{answer['answer_id']} {answer['started_at']} [{badge}]")
        if answer["status"] != "ok":
            click.echo(f"    {answer['error'] or answer['status']}")
            continue
        places = [place(s) for s in answer["sources"]]
        if before is None:
            click.echo("\n".join(f"    {line}" for line in answer["answer"].splitlines()))
            click.echo("".join(f"    [{s['rank']}] {p}\n" for s, p in
                               zip(answer["sources"], places, strict=True)), nl=False)
        else:
            diff = list(difflib.unified_diff(before["answer"].splitlines(),
                                             answer["answer"].splitlines(), lineterm="", n=1))
            for line in diff[2:] or ["  (answer unchanged)"]:
                click.echo(f"    {line}")
            old = [place(s) for s in before["sources"]]
            for p in old:
                if p not in places:
                    click.echo(f"    - source {p}")
            for p in places:
                if p not in old:
                    click.echo(f"    + source {p}")
        before = answer


@cli.group("notify", invoke_without_command=True)
@click.pass_context
def notify(ctx: click.Context) -> None:
    """Notification channels ([notify.NAME] in config.toml) (default: list them)."""
    if ctx.invoked_subcommand is None:
        ctx.invoke(notify_list)


@notify.command("list")
@click.option("--limit", default=20, show_default=True, type=click.IntRange(1))
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@human_errors
def notify_list(limit: int = 20, as_json: bool = False) -> None:
    """The channels and their recent deliveries, newest first."""
    reply = client(get_config()).request("GET", f"/notify?limit={limit}")
    if as_json:
        print_json(reply)
        return
    if not reply["channels"]:
        click.echo("no channels: add [notify.NAME] tables to config.toml")
    for c in reply["channels"]:
        counts = ", ".join(f"{n} {s}" for s, n in c["counts"].items())
        click.echo(f"{c['name']}: {c['type']} {c['target']} ({counts})")
    if reply["deliveries"]:
        click.echo("recent:")
    for e in reply["deliveries"]:
        about = f" question {e['question_id']}" if e["question_id"] else ""
        outcome = e["receipt"] if e["status"] == "delivered" else e["last_error"] or ""
        click.echo(f"  {e['created_at']} {e['channel']} {e['kind']}{about} {e['status']} "
                   f"after {e['attempts']} attempt{'s' * (e['attempts'] != 1)} {outcome} "
                   f"[{e['key']}]")


@notify.command("test")
@click.argument("name")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@human_errors
def notify_test(name: str, as_json: bool) -> None:
    """Send a test message through a channel; exits 1 if it was not delivered.

        kbd notify test ops-mail
    """
    event = client(get_config()).request("POST", "/notify/test", {"channel": name})
    if as_json:
        print_json(event)
    elif event["status"] == "delivered":
        click.echo(f"delivered to {name}: {event['receipt']} [{event['key']}]")
    else:
        why = event["last_error"] or "queued behind older events"
        click.echo(f"not delivered to {name} yet: {why}; tried again from "
                   f"{event['next_attempt_at']} [{event['key']}]")
    if event["status"] != "delivered":
        sys.exit(1)


@cli.command("digest")
@click.option("--since", help="Period to cover, e.g. 24h (default: since the last digest).")
@click.option("--format", "fmt", type=click.Choice(["md", "html"]),
              help="Only this format (default: both).")
@click.option("--output", type=click.Path(dir_okay=False, path_type=Path),
              help="Write the digest to this file instead of the reports folder.")
@click.option("--list", "list_", is_flag=True, help="List the digests written so far.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@human_errors
def digest(since, fmt, output, list_, as_json) -> None:
    """Write a digest now: each standing question's latest answer with its sources, failed
    runs, ingest activity and unreadable files, as Markdown and self-contained HTML.
    Reads the store only (no GPU); works with or without a running daemon.

        kbd digest --since 7d --format html --output week.html
    """
    from datetime import UTC, datetime, timedelta

    from kbd import digest as digests
    from kbd.questions.specs import parse_duration

    config = get_config()
    store = open_store(config)
    if list_:
        history = digests.digest_history(store)
        if as_json:
            print_json({"digests": history})
        for d in [] if as_json else history:
            click.echo(f"{d['generated_at']}  since {d['since']}  {' '.join(d['paths'])}")
        return
    now = datetime.now(UTC)
    since_at = (now - timedelta(seconds=parse_duration(since)) if since
                else digests.default_since(store, now))
    status = offline_status(config)
    if output is not None:
        fmt = fmt or ("html" if output.suffix.lower() in (".html", ".htm") else "md")
        d = digests.gather(store, since_at, now, status["model"], status["backlog"])
        output.write_text(digests.RENDER[fmt](d), encoding="utf-8", errors="backslashreplace")
        result = {"paths": [str(output)], "since": since_at, "generated_at": now}
    else:
        result = digests.write_digest(store, config.reports_dir, since_at, now,
                                      status["model"], status["backlog"],
                                      (fmt,) if fmt else digests.FORMATS)
    if as_json:
        print_json(result)
    else:
        for path in result["paths"]:
            click.echo(path)


@cli.group("docs")
def docs() -> None:
    """Documents in the knowledge base."""


@docs.command("list")
@click.option("--prefix", help="Only documents under this folder.")
@click.option("--limit", default=100, show_default=True, type=click.IntRange(1))
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@human_errors
def docs_list(prefix, limit, as_json) -> None:
    """List live documents."""
    from urllib.parse import urlencode

    query = urlencode({k: v for k, v in {"prefix": prefix, "limit": limit}.items() if v},
                      errors="surrogateescape")  # a folder whose name is not UTF-8
    reply = client(get_config()).request("GET", f"/documents?{query}")
    if as_json:
        print_json(reply)
        return
    for d in reply["documents"]:
        click.echo(f"{d['path']}  {d['kind']}  {d['status']}")
    click.echo(f"{reply['total']} documents")


@docs.command("show")
@click.argument("path", type=click.Path(path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@human_errors
def docs_show(path: Path, as_json: bool) -> None:
    """Show one document and its passages with their lines or pages."""
    from urllib.parse import quote

    reply = client(get_config()).request(
        "GET", f"/documents/show?path={quote(os.path.abspath(path), errors='surrogateescape')}")
    if as_json:
        print_json(reply)
        return
    click.echo(f"{reply['path']} ({reply['kind']}, {reply['status']})")
    for p in reply["passages"]:
        where = place({"path": "", "lines": p["lines"], "page": p["page"]}).lstrip(":")
        click.echo(f"--- passage {p['ordinal']} {where} ({p['tokens']} tokens)")
        click.echo(p["text"])


@cli.group()
def model() -> None:
    """Inspect the engine's model, and try a CLaRa checkpoint directly, without the daemon."""


checkpoint_option = click.option(
    "--checkpoint", required=True, type=click.Path(file_okay=False),
    help="CLaRa checkpoint folder, e.g. CLaRa-7B-E2E/compression-16.")
base_option = click.option(
    "--base", type=click.Path(file_okay=False),
    help="Local folder of the base model (default: the config's decoder_model_name).")
device_options = [
    click.option("--device", default="auto", show_default=True,
                 help="cpu, cuda, cuda:N or auto."),
    click.option("--dtype", default="auto", show_default=True,
                 type=click.Choice(["auto", "float32", "bfloat16", "float16"]),
                 help="auto: bfloat16 on a GPU, float32 on the CPU."),
]


def with_model_options(func: Callable) -> Callable:
    for option in reversed([checkpoint_option, base_option, *device_options]):
        func = option(func)
    return func


def load_clara(checkpoint: str, base: str | None, device: str, dtype: str):
    from kbd.model.clara import Clara  # torch loads only for the commands that need it

    return Clara.load(checkpoint, base, device=device, dtype=dtype)


@model.command("info")
@click.option("--checkpoint", type=click.Path(file_okay=False),
              help="A CLaRa checkpoint folder (default: the configured engine's model).")
@base_option
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@human_errors
def model_info(checkpoint: str | None, base: str | None, as_json: bool) -> None:
    """Show the engine in use and its model: for CLaRa the checkpoint's stage, compression,
    sizes, adapters and fingerprint; for the text engine the model's name and file.

    Reads the model's files only; with --base the fingerprint covers the base too.

    \b
        kbd model info
        kbd model info --checkpoint ~/models/CLaRa-7B-E2E/compression-16 --json
    """
    from pathlib import Path

    from kbd.model.checkpoint import describe, fingerprint, read_checkpoint, resolve_base

    configured = None if checkpoint else get_config().model
    if configured is not None and configured.active_engine == "text":
        from kbd.model.text import describe as describe_text

        info = describe_text(configured.text_model)
    else:
        if configured is not None:
            if configured.checkpoint is None:
                raise KbdError("the engine is clara, but no CLaRa checkpoint is configured",
                               hint="kbd model pull, or pass --checkpoint")
            checkpoint, base = str(configured.checkpoint), base or configured.base
        ckpt = read_checkpoint(checkpoint)
        base_dir = resolve_base(ckpt, base) if base else None
        info = {"engine": "clara"} | describe(ckpt, fingerprint(Path(checkpoint), base_dir))
    if as_json:
        print_json(info)
    else:
        for key, value in info.items():
            click.echo(f"{key}: {', '.join(value) if isinstance(value, list) else value}")


@model.command("answer")
@with_model_options
@click.option("--top-k", type=click.IntRange(min=1),
              help="Passages to answer from (default: the checkpoint's generation_top_k).")
@click.option("--max-new-tokens", default=128, show_default=True, type=click.IntRange(min=1))
@click.option("--question", "-q", required=True, help="The question.")
@click.option("--doc", "docs", multiple=True, required=True, help="A candidate passage.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@human_errors
def model_answer(checkpoint, base, device, dtype, top_k, max_new_tokens, question, docs,
                 as_json) -> None:
    """Answer QUESTION from the given passages, as CLaRa's generate_from_questions does.

    E2E checkpoints rank the passages and answer from the top-k; Instruct checkpoints answer
    from all of them in the given order (they cannot rank, so --top-k is refused).

        kbd model answer --checkpoint CK --base BASE -q "Why did node 7 fail?" \\
            --doc "..." --doc "..." --json
    """
    from kbd.errors import CapabilityError
    from kbd.model.checkpoint import QUERY_REASONER

    clara = load_clara(checkpoint, base, device, dtype)
    stage = clara.config.stage_name
    if QUERY_REASONER in clara.adapters:
        result = clara.answer([question], [list(docs)], top_k, max_new_tokens)[0]
        text, indices, scores = result.text, result.indices, result.scores
    elif stage == "base":
        raise CapabilityError(f"{checkpoint}: a base checkpoint cannot answer questions",
                              hint="use `kbd model paraphrase` to see what it kept")
    elif top_k is not None:
        raise CapabilityError(f"{checkpoint}: an {stage} checkpoint has no "
                              "query_reasoner_adapter, so it cannot rank (--top-k)",
                              hint="drop --top-k to answer from all passages in order")
    else:
        text = clara.answer_given([question], [list(docs)], max_new_tokens)[0]
        indices, scores = list(range(len(docs))), None
    if as_json:
        print_json({"answer": text, "indices": indices, "scores": scores})
        return
    click.echo(text)
    for rank, i in enumerate(indices, 1):
        score = f" ({scores[rank - 1]:.3f})" if scores else ""
        click.echo(f"[{rank}] doc {i}{score}: {docs[i][:70]}")


@model.command("paraphrase")
@with_model_options
@click.option("--max-new-tokens", default=128, show_default=True, type=click.IntRange(min=1))
@click.option("--doc", "docs", multiple=True, required=True, help="A passage.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@human_errors
def model_paraphrase(checkpoint, base, device, dtype, max_new_tokens, docs, as_json) -> None:
    """Tell each passage back from its memory alone: what the compression kept."""
    clara = load_clara(checkpoint, base, device, dtype)
    texts = clara.paraphrase(list(docs), max_new_tokens)
    if as_json:
        print_json({"paraphrases": texts})
    else:
        for i, text in enumerate(texts):
            click.echo(f"[{i}] {text}")


from kbd.cli import setup  # noqa: E402,F401  registers init, watch, model pull


def main() -> None:
    from kbd.config import drop_unusable_xdg_variables

    # everything kbd and the libraries it drives create is its user's alone (kbd.private)
    os.umask(UMASK)
    drop_unusable_xdg_variables()
    cli(prog_name="kbd")


if __name__ == "__main__":
    sys.exit(main())
