"""`kbd model info|answer|paraphrase|pull`: the engine's model, and a CLaRa checkpoint tried
directly, without the daemon."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import click

from kbd.cli.output import (
    get_config,
    human_errors,
    print_json,
)
from kbd.cli.setup import model_pull
from kbd.errors import KbdError


@click.group()
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


model.add_command(model_pull)
