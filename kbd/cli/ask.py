"""`kbd ask` and `kbd eval`: questions to the running daemon."""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import click

from kbd.cli.output import (
    ASK_SOURCE_FIELDS,
    client,
    get_config,
    human_errors,
    print_answer,
    print_json,
    print_sources,
    write_json,
)
from kbd.errors import KbdError


@click.command("ask")
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
        sources = [{k: s[k] for k in ASK_SOURCE_FIELDS if k in s} for s in reply["sources"]]
        print_json({k: reply[k] for k in ("answer", "status", "engine", "model",
                                          "citations_dropped", "extractive",
                                          "aggregate")}
                   | {"sources": sources})
        return
    print_answer(reply, False)


@click.command("eval")
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
