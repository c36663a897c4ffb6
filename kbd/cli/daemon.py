"""`kbd daemon` and `kbd status`."""

from __future__ import annotations

import sys

import click

from kbd.cli.output import (
    EXIT_NOT_RUNNING,
    EXIT_UNHEALTHY,
    client,
    get_config,
    human_errors,
    open_store,
    print_json,
)
from kbd.errors import KbdError


@click.command("status")
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
        if result.get("fleet"):
            print_fleet(result["fleet"])
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
            where = f"{f['node']}:{f['path']}" if f.get("node") else f["path"]
            click.echo(f"failed: {where} ({f['stage']}, {f['code']}): {f['message']}")
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


def print_fleet(fleet: dict) -> None:
    """The nodes sharing the store: role, heartbeat, version, and each one's share of the
    work (an ingest node's documents, the backlog a model node sees); silent ones marked."""
    click.echo(f"node: {fleet['node']} ({fleet['role']})")
    total = sum(n["documents"] or 0 for n in fleet["nodes"]) or 1
    for n in fleet["nodes"]:
        state = "stopped" if n.get("stopped_at") else "SILENT" if n["silent"] else "alive"
        share = (f"{n['documents'] or 0} documents ({100 * (n['documents'] or 0) / total:.0f}%)"
                 if n["role"] == "ingest" else f"backlog {n['backlog']}")
        click.echo(f"  {n['name']}: {n['role']}, {state}, heartbeat {n['heartbeat_age_s']:g} s "
                   f"ago, kbd {n['version']} (schema {n['schema_revision']}), {share}")


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
    if config.node.fleet:  # the other nodes may well be running
        from kbd.node import fleet_status

        result["fleet"] = {"node": config.node.node_name, "role": config.node.role,
                           "nodes": fleet_status(store)}
    return result | {"store": store.safe_url, "engine": config.model.active_engine,
                     "model": model_state}


@click.command("daemon")
@human_errors
def daemon() -> None:
    """Run the daemon in the foreground: watch, ingest, compress, answer, serve the API.

    Under systemd use the unit in systemd/ (Type=notify). SIGHUP reloads watched folders.
    """
    from kbd.daemon import run_daemon

    sys.exit(run_daemon(click.get_current_context().find_root().obj))
