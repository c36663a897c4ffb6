"""Compress the backlog: live passages whose text has no memory under the loaded model.

Runs on the model worker, in batches; ingest never waits for it. Identical texts are
compressed once (the backlog is distinct by text hash), and memory rows are written to the
model's matrix file before the database maps them, so a crash costs at most two redone
batches: the one being stored and the one the GPU is computing meanwhile.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch

from kbd.model.clara import memory_to_bytes
from kbd.store import Store
from kbd.store import queries as q
from kbd.store.matrix import MemoryFileError, MemoryMatrix

log = logging.getLogger("kbd.memory")


def dtype_name(dtype) -> str:
    return str(dtype).removeprefix("torch.")


def memory_id(clara, node: str = "") -> str:
    """Memory differs with the weights and with the dtype that computed it. A fleet's model
    node keeps its memory rows in a matrix file on its own disk, so its rows are its own:
    the id names the node (memory vectors shared in the store are not built yet)."""
    return f"{clara.fingerprint}.{dtype_name(clara.dtype)}" + (f"@{node}" if node else "")


def configured_memory_id(config) -> str:
    """The memory id of the configured model without loading its weights."""
    from kbd.model.checkpoint import fingerprint, pick_device, read_checkpoint, resolve_base

    checkpoint = read_checkpoint(config.model.checkpoint)
    _, dtype = pick_device(config.model.device, config.model.dtype)
    base = resolve_base(checkpoint, config.model.base)
    return f"{fingerprint(checkpoint.path, base)}.{dtype_name(dtype)}"


def open_matrix(store: Store, clara) -> MemoryMatrix:
    return MemoryMatrix(store.memory_dir, memory_id(clara, store.node), (clara.n_mem, clara.hidden),
                        dtype_name(clara.dtype))


@dataclass
class Batch:
    """A batch on its way: texts sent to the model, memory on its way to host memory."""

    hashes: list[str]
    memory: torch.Tensor  # [n, m, d] in host memory once `copied` has happened
    copied: torch.cuda.Event | None  # None: already there (a CPU model)


class Compressor:
    """Compresses the backlog one batch ahead: while the GPU computes a batch, the host stores
    the one before it (rows to the matrix file, then the database) and fetches and tokenizes
    the next, so the GPU never waits on the store (a tenth of the daemon's time otherwise)."""

    def __init__(self, store: Store, clara):
        self.store = store
        self.clara = clara
        self.matrix, self.model = open_matrix(store, clara), memory_id(clara, store.node)
        self.pending: Batch | None = None

    def step(self, batch_size: int) -> int:
        """Start the next batch, then store the one before it; returns how many passages were
        stored. 0 with nothing pending: the backlog is done."""
        busy = set(self.pending.hashes) if self.pending else set()
        with self.store.read() as conn:
            items = [(h, text) for h, text in q.backlog(conn, self.model, batch_size + len(busy))
                     if h not in busy][:batch_size]
        started = self._start(items) if items else None
        previous, self.pending = self.pending, started
        return self._store(previous) if previous else 0

    def finish(self) -> int:
        """Store the batch in flight, if any (stopping: it would be redone otherwise)."""
        previous, self.pending = self.pending, None
        return self._store(previous) if previous else 0

    def _start(self, items: list[tuple[str, str]]) -> Batch:
        memory = self.clara.compress([text for _, text in items])
        if not memory.is_cuda:
            return Batch([h for h, _ in items], memory, None)
        host = torch.empty(memory.shape, dtype=memory.dtype, pin_memory=True)
        host.copy_(memory, non_blocking=True)
        copied = torch.cuda.Event()
        copied.record()
        return Batch([h for h, _ in items], host, copied)

    def _store(self, batch: Batch) -> int:
        if batch.copied is not None:
            batch.copied.synchronize()
        try:
            rows = self.matrix.append([memory_to_bytes(m) for m in batch.memory])
        except MemoryFileError as e:
            self.store.note_fault("memory", e)
            raise
        self.store.note_fault("memory", None)
        self.store.write(lambda conn: q.add_memories(
            conn, self.model, zip(batch.hashes, rows, strict=True)))
        log.info("compressed %d passages", len(batch.hashes))
        return len(batch.hashes)


def compress_backlog(store: Store, clara, batch_size: int = 64) -> int:
    """Compress every waiting passage; returns how many texts were compressed."""
    compressor = Compressor(store, clara)
    done = 0
    while True:
        done += compressor.step(batch_size)
        if compressor.pending is None:
            return done
