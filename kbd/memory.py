"""Compress the backlog: live passages whose text has no memory under the loaded model.

Runs on the model worker, in batches; ingest never waits for it. Identical texts are
compressed once (the backlog is distinct by text hash), and memory rows are written to the
model's matrix file before the database maps them, so a crash costs at most a redone batch.
"""

from __future__ import annotations

import logging

from kbd.model.clara import memory_to_bytes
from kbd.store import Store
from kbd.store import queries as q
from kbd.store.memory import MemoryFileError, MemoryMatrix

log = logging.getLogger("kbd.memory")


def dtype_name(dtype) -> str:
    return str(dtype).removeprefix("torch.")


def memory_id(clara) -> str:
    """Memory differs with the weights and with the dtype that computed it."""
    return f"{clara.fingerprint}.{dtype_name(clara.dtype)}"


def configured_memory_id(config) -> str:
    """The memory id of the configured model without loading its weights."""
    from kbd.model.checkpoint import fingerprint, read_checkpoint, resolve_base
    from kbd.model.clara import pick_device

    checkpoint = read_checkpoint(config.model.checkpoint)
    _, dtype = pick_device(config.model.device, config.model.dtype)
    base = resolve_base(checkpoint, config.model.base)
    return f"{fingerprint(checkpoint.path, base)}.{dtype_name(dtype)}"


def open_matrix(store: Store, clara) -> MemoryMatrix:
    return MemoryMatrix(store.memory_dir, memory_id(clara), (clara.n_mem, clara.hidden),
                        dtype_name(clara.dtype))


def compress_backlog(store: Store, clara, batch_size: int = 64,
                     max_batches: int | None = None) -> int:
    """Compress waiting passages batch by batch; returns how many texts were compressed."""
    matrix, model = open_matrix(store, clara), memory_id(clara)
    done = batches = 0
    while max_batches is None or batches < max_batches:
        with store.read() as conn:
            items = q.backlog(conn, model, batch_size)
        if not items:
            break
        memory = clara.compress([text for _, text in items])
        try:
            rows = matrix.append([memory_to_bytes(m) for m in memory])
        except MemoryFileError as e:
            store.note_fault("memory", e)
            raise
        store.note_fault("memory", None)
        store.write(lambda conn, items=items, rows=rows: q.add_memories(
            conn, model, zip((h for h, _ in items), rows, strict=True)))
        done += len(items)
        batches += 1
        log.info("compressed %d passages (%d so far)", len(items), done)
    return done
