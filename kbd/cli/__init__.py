"""The kbd command line. Each function is named after its command; its docstring is the help."""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

import click

from kbd.cli import ask, daemon, digest, docs, model, notify, questions, setup
from kbd.cli.output import shown_stdout
from kbd.private import UMASK


@click.group()
@click.version_option(package_name="kbd")
@click.option("--config", "config_path", type=click.Path(dir_okay=False, path_type=Path),
              envvar="KBD_CONFIG", help="Config file (default: ~/.config/kbd/config.toml).")
@click.option("-v", "--verbose", is_flag=True, help="Log progress to stderr.")
@click.pass_context
def cli(ctx: click.Context, config_path: Path | None, verbose: bool) -> None:
    """kbd: a local knowledge base that answers questions about your logs and reports."""
    # a file name that is not UTF-8 is printed with Python's escape (\udcff), as log lines
    # show it; in JSON that is the escape json.loads turns back into the exact name; a
    # control character as its escape (output.ShownText)
    shown_stdout()
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")  # no bars from weight loading
    os.environ.setdefault("TQDM_DISABLE", "1")  # nor from the GGUF reader's plain tqdm bars
    ctx.obj = config_path


for command in (ask.ask, ask.eval_, daemon.daemon, daemon.status, digest.digest, docs.docs,
                docs.ingest_once, model.model, notify.notify, questions.questions,
                questions.answers, setup.init, setup.watch):
    cli.add_command(command)


def main() -> None:
    from kbd.config import drop_unusable_xdg_variables

    # everything kbd and the libraries it drives create is its user's alone (kbd.private)
    os.umask(UMASK)
    drop_unusable_xdg_variables()
    cli(prog_name="kbd")


if __name__ == "__main__":
    sys.exit(main())
