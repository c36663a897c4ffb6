"""`kbd docs list|show` and `kbd ingest --once`: the documents in the knowledge base."""

from __future__ import annotations

import os
from pathlib import Path

import click

from kbd.cli.model import load_clara
from kbd.cli.output import (
    client,
    get_config,
    human_errors,
    open_store,
    place,
    print_json,
    progress,
)


@click.command("ingest")
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
    from kbd.folders import WatchedFolder, scan
    from kbd.ingest.pipeline import Ingester, Limits
    from kbd.store import queries as q

    config = get_config()
    # one writer, as a daemon; a fleet node's ingest claims its node name, as its daemon
    store = open_store(config, owner=f"kbd ingest --once pid {os.getpid()}")
    if not config.node.fleet:  # the sources table is one host's watched folders
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
    if clara_configured and not no_compress and config.node.role != "ingest":
        from kbd.runtime.compress import compress_backlog

        clara = load_clara(config.model.checkpoint, config.model.base, config.model.device,
                           config.model.dtype)
        compressed = compress_backlog(store, clara, config.model.compress_batch_size,
                                      config.node.lease_s)
    result = {"files": len(files), "outcomes": outcomes, "compressed": compressed}
    if as_json:
        print_json(result)
    else:
        click.echo(f"{len(files)} files: " + ", ".join(f"{v} {k}" for k, v in
                                                    sorted(outcomes.items()) if v))
        click.echo(f"{compressed} passages compressed")


@click.group("docs")
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
