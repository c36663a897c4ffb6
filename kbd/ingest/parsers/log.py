"""Logs: one Block per non-blank line, with its exact line number and byte range.

Lines are found in the bytes, not in decoded text, so offsets stay exact whatever the
encoding and even where a line holds invalid bytes. A line that is a JSON object is rendered
as readable text: time, level and message first, then the other fields as key=value.
"""

from __future__ import annotations

import json
from collections.abc import Iterator

from kbd.ingest.parsers.blocks import SNIFF_BYTES, Block, Decoded, decode

# Field names looked for, in order of preference, to lead a rendered JSON line.
TIME_KEYS = ("timestamp", "@timestamp", "time", "ts", "datetime", "date", "asctime")
LEVEL_KEYS = ("level", "severity", "levelname", "lvl", "loglevel")
MESSAGE_KEYS = ("message", "msg", "text", "log", "event")


def read_log(data: bytes, decoded: Decoded, start_line: int = 1,
             start_byte: int = 0) -> list[Block]:
    """Blocks of a log; `data` starts at byte start_byte of the file, on line start_line."""
    blocks = []
    for number, (start, end) in enumerate(line_spans(data, decoded), start_line):
        line = data[start:end].decode(decoded.codec, "replace")
        if line.strip():
            blocks.append(Block(render(line), number, number, None, start_byte + start,
                                start_byte + end, None))
    return blocks


def line_spans(data: bytes, decoded: Decoded) -> Iterator[tuple[int, int]]:
    """The byte range of each line, without its "\\n" or "\\r\\n"; a last line without a
    line break is a line too."""
    newline, cr = "\n".encode(decoded.codec), "\r".encode(decoded.codec)
    start = decoded.bom
    while start < len(data):
        end = find_aligned(data, newline, start)
        stop = len(data) if end < 0 else end
        if stop - len(cr) >= start and data[stop - len(cr):stop] == cr:
            stop -= len(cr)
        yield start, stop
        if end < 0:
            return
        start = end + len(newline)


def whole_lines(data: bytes) -> int:
    """How many bytes at the start of `data` are whole lines: up to and with its last line
    break, so a line still being written is left for later."""
    decoded = decode(data[:SNIFF_BYTES])
    newline = "\n".encode(decoded.codec)
    end = len(data)
    while (at := data.rfind(newline, decoded.bom, end)) >= 0:
        if (at - decoded.bom) % len(newline) == 0:  # in UTF-16 they may straddle two chars
            return at + len(newline)
        end = at + len(newline) - 1
    return 0


def find_aligned(data: bytes, unit: bytes, start: int) -> int:
    """data.find(unit, start) at a character boundary: in UTF-16 the bytes of "\\n" can also
    straddle two characters."""
    at = data.find(unit, start)
    while at >= 0 and (at - start) % len(unit):
        at = data.find(unit, at + 1)
    return at


def render(line: str) -> str:
    """A JSON-object line as "time level message key=value ..."; any other line as it is."""
    if not line.lstrip().startswith("{"):
        return line
    try:
        record = json.loads(line)
    except ValueError:
        return line
    if not isinstance(record, dict) or not record:
        return line
    fields = dict(record)
    lead = [pop_first(fields, keys) for keys in (TIME_KEYS, LEVEL_KEYS, MESSAGE_KEYS)]
    parts = [text for text in lead if text]
    parts += [f"{key}={quoted(value)}" for key, value in fields.items()]
    return " ".join(parts) or line  # {"msg": ""} has nothing better to show


def pop_first(fields: dict, keys: tuple[str, ...]) -> str | None:
    """The value of the first of `keys` present (any letter case), removed from fields."""
    for wanted in keys:
        for key in fields:
            if key.lower() == wanted:
                value = fields.pop(key)
                return value if isinstance(value, str) else compact(value)
    return None


def quoted(value: object) -> str:
    """A value as key=value shows it: bare when it is one word, else as JSON."""
    if isinstance(value, str) and value and not any(ch.isspace() or ch in "\"=" for ch in value):
        return value
    return compact(value)


def compact(value: object) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))
