"""`kbd questions ...` (standing questions) and `kbd answers` (their history)."""

from __future__ import annotations

import click

from kbd.cli.output import (
    client,
    get_config,
    human_errors,
    place,
    print_answer,
    print_json,
)


@click.group("questions", invoke_without_command=True)
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


@click.command("answers")
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
