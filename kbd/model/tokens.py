"""The model's tokenizer as ingest needs it: passage lengths and encoder inputs, no weights.

Passage boundaries depend on the tokenizer alone, so ingest can cut passages that fit
`doc_max_length` as soon as a checkpoint (or its base) is on disk, long before the GPU has the
model loaded. Without a checkpoint the text engine's model cuts them, to the same length.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from pathlib import Path

from kbd.model.checkpoint import ClaraConfig, load_tokenizer, read_checkpoint, resolve_base

ENCODER_WRAP_TOKENS = 3  # <ENC>, bos, eos around every passage
TEXT_PASSAGE_TOKENS = 256  # CLaRa's doc_max_length: passages look alike whichever engine cut them


def vocabulary_identity(tokenizer, max_tokens: int) -> str:
    """The cut of passages depends on the vocabulary and the limit, not on the weights."""
    vocab = json.dumps(sorted(tokenizer.get_vocab().items()), ensure_ascii=False)
    return hashlib.sha256(f"{vocab}|{max_tokens}".encode()).hexdigest()[:16]


class PassageTokenizer:
    def __init__(self, tokenizer, config: ClaraConfig):
        self.tokenizer = tokenizer
        self.config = config
        self.max_tokens = config.doc_max_length
        self.mem_ids: list[int] = tokenizer.convert_tokens_to_ids(config.mem_tokens)
        self.identity = vocabulary_identity(tokenizer, self.max_tokens)

    @classmethod
    def load(cls, checkpoint: str | Path, base: str | Path | None = None) -> PassageTokenizer:
        ckpt = read_checkpoint(checkpoint)
        base_dir = ckpt.path if ckpt.has_tokenizer and base is None else resolve_base(ckpt, base)
        return cls(load_tokenizer(ckpt, base_dir), ckpt.config)

    @classmethod
    def configured(cls, model) -> PassageTokenizer | TextPassageTokenizer | None:
        """The tokenizer passages are cut for ([model] in config.toml): the CLaRa checkpoint's
        whichever engine answers, so that switching engines never re-cuts them; else the text
        engine's model; None for CLaRa with no checkpoint yet."""
        if model.checkpoint is not None:
            return cls.load(model.checkpoint, model.base)
        if model.active_engine != "text":
            return None
        from kbd.model.text import load_tokenizer, locate

        return TextPassageTokenizer(load_tokenizer(locate(model.text_model)))

    def _wrapped_ids(self, texts: Sequence[str]) -> list[list[int]]:
        tok = self.tokenizer
        wrapped = [f"<ENC>{tok.bos_token}{t}{tok.eos_token}" for t in texts]
        return tok(wrapped, add_special_tokens=False)["input_ids"]

    def count(self, texts: Sequence[str]) -> list[int]:
        """Passage tokens as the encoder sees them (the wrapping tokens not counted)."""
        return [len(ids) - ENCODER_WRAP_TOKENS for ids in self._wrapped_ids(texts)]

    @property
    def longest_row(self) -> int:
        """Tokens of the longest row encoder_ids() gives."""
        return self.max_tokens + ENCODER_WRAP_TOKENS + len(self.mem_ids)

    def encoder_ids(self, texts: Sequence[str]) -> tuple[list[list[int]], list[int]]:
        """Token ids for compression or query encoding, and how many were cut off each.

        `<ENC>` + bos + text + eos without automatic special tokens, cut on the right at
        doc_max_length + 3 tokens (as the reference does, so an overlong passage loses its eos
        first, then its tail), then the memory tokens."""
        budget = self.max_tokens + ENCODER_WRAP_TOKENS
        ids = self._wrapped_ids(texts)
        dropped = [max(0, len(x) - budget) for x in ids]
        return [x[:budget] + self.mem_ids for x in ids], dropped


class TextPassageTokenizer:
    """Passages for the text engine when no CLaRa checkpoint is configured, counted in the
    text model's own tokens."""

    def __init__(self, tokenizer, max_tokens: int = TEXT_PASSAGE_TOKENS):
        self.tokenizer = tokenizer
        self.max_tokens = max_tokens
        self.identity = vocabulary_identity(tokenizer, max_tokens)

    def count(self, texts: Sequence[str]) -> list[int]:
        return [len(ids) for ids in
                self.tokenizer(list(texts), add_special_tokens=False)["input_ids"]]
