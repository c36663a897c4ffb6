"""`kbd digest`: reports written from the store, with or without a daemon."""

from __future__ import annotations

from pathlib import Path

import click

from kbd.cli.daemon import offline_status
from kbd.cli.output import (
    get_config,
    human_errors,
    open_store,
    print_json,
)


@click.command("digest")
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
