"""`kbd notify list|test`: notification channels and their deliveries."""

from __future__ import annotations

import sys

import click

from kbd.cli.output import (
    client,
    get_config,
    human_errors,
    print_json,
)


@click.group("notify", invoke_without_command=True)
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
