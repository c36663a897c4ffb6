"""What every command shares: KbdError turned into a message and an exit code at this edge,
JSON and source printing, the config, store and daemon client of this run."""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import sys
from collections.abc import Callable
from functools import wraps
from pathlib import Path

import click

from kbd.errors import KbdError

EXIT_NOT_RUNNING = 3
EXIT_UNHEALTHY = 4  # `kbd status`: the daemon runs, but reports a fault
ASK_SOURCE_FIELDS = ("node", "rank", "passage_id", "path", "lines", "cited_lines", "page", "score",
                     "in_prompt")  # a source as `kbd ask --json` prints it (node: a fleet's)


# control characters a log line may hold (ESC above all) that a terminal would act on: a line
# written by whoever can reach a watched log must not retitle, clear or rewrite the terminal
# of whoever reads the answer; tabs and line breaks are text
CONTROLS = {c: f"\\x{c:02x}" for c in (*range(0x20), 0x7F, *range(0x80, 0xA0))
            if chr(c) not in "\n\t"}
C1 = re.compile("[\x7f-\x9f]")  # what JSON leaves unescaped of CONTROLS


class ShownText(io.TextIOWrapper):
    """Standard output with CONTROLS written as their escapes (`\\x1b`), whatever prints."""

    def write(self, text: str) -> int:
        super().write(text.translate(CONTROLS))
        return len(text)


def shown_stdout() -> None:
    """Route standard output through ShownText, written through at once (no buffer of its
    own: a test runner that swaps standard output back loses nothing)."""
    out = sys.stdout
    if isinstance(out, io.TextIOWrapper) and not isinstance(out, ShownText):
        out.flush()
        sys.stdout = ShownText(out.buffer, encoding=out.encoding, errors="backslashreplace",
                               line_buffering=out.line_buffering, write_through=True)


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
    """JSON on standard output; a C1 control character as JSON's escape (`\\u009b`), which
    ShownText would otherwise write as one no JSON reader takes."""
    text = json.dumps(data, ensure_ascii=False, default=str)
    click.echo(C1.sub(lambda m: f"\\u{ord(m[0]):04x}", text))


def get_config():
    from kbd.config import load_config

    return load_config(click.get_current_context().find_root().obj)


def open_store(config, owner: str = ""):
    from kbd.private import private_home
    from kbd.store import Store

    private_home(config.home)
    # a fleet node reads and writes its own documents (docs/fleet.md)
    node = config.node.node_name if config.node.fleet else ""
    return Store.open(config.database_url, config.memory_dir, node, owner)


def client(config):
    from kbd.api.client import Client

    return Client(config.socket_path)


def write_json(path: Path, data: dict) -> None:
    partial = path.with_name(path.name + ".partial")
    partial.write_text(json.dumps(data, indent=1, ensure_ascii=False))
    partial.replace(path)  # a reader never sees half a file


def print_sources(sources: list[dict]) -> None:
    """Each source with its cited lines as path:line, or its place when none is cited."""
    for s in sources:
        cited = " ".join(f"{where(s)}:{n}" for n in s.get("cited_lines") or [])
        unread = "" if s.get("in_prompt", True) else ", not read"
        click.echo(f"[{s['rank']}] {cited or place(s)} ({s['score']:.3f}{unread})")


def where(source: dict) -> str:
    """The file: its path, after its node's name when a fleet's ingest node holds it
    (web-1:/var/log/app.log); a single-host daemon's documents have no node."""
    return f"{source['node']}:{source['path']}" if source.get("node") else source["path"]


def place(source: dict) -> str:
    if source.get("lines"):
        first, last = source["lines"]
        return f"{where(source)}:{first}" + (f"-{last}" if last != first else "")
    if source.get("page"):
        return f"{where(source)} p.{source['page']}"
    return where(source)


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
