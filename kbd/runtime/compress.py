"""Compress the backlog: live passages whose text has no memory under the loaded model.

Runs on the model worker, in batches; ingest never waits for it. Identical texts are
compressed once (the backlog is distinct by text hash), and memory rows are written to the
model's matrix file before the database maps them, so a crash costs at most two redone
batches: the one being stored and the one the GPU is computing meanwhile.

A fleet's model nodes share the backlog and the vectors (kbd.store.vectors): each batch is
claimed under a lease, and its vectors go into the store, written only while the lease is
still this node's. A live node renews the leases it holds at each heartbeat, so a batch
slower than the lease is not taken over; a node killed or stopped past its lease loses its
batches to the others.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass

import torch

from kbd.config import NodeConfig
from kbd.model.clara import memory_to_bytes
from kbd.store import Store
from kbd.store import queries as q
from kbd.store.matrix import MemoryFileError, MemoryMatrix
from kbd.store.vectors import Lease, SharedMatrix, claim_next, renew_leases, store_vectors

log = logging.getLogger("kbd.memory")


def dtype_name(dtype) -> str:
    return str(dtype).removeprefix("torch.")


SHARED = "@shared"  # a fleet's memory id: rows numbered by the store, not by a matrix file


def memory_id(clara, shared: bool = False) -> str:
    """Memory differs with the weights and with the dtype that computed it, not with the
    node that computed it: a fleet's model nodes share it. A fleet's rows are numbered by
    the store, a single host's by its matrix file; the id says which, so the two never mix
    on one database."""
    return f"{clara.fingerprint}.{dtype_name(clara.dtype)}" + (SHARED if shared else "")


def configured_memory_id(config) -> str:
    """The memory id of the configured model without loading its weights."""
    from kbd.model.checkpoint import fingerprint, pick_device, read_checkpoint, resolve_base

    checkpoint = read_checkpoint(config.model.checkpoint)
    _, dtype = pick_device(config.model.device, config.model.dtype)
    base = resolve_base(checkpoint, config.model.base)
    shared = SHARED if config.node.fleet else ""
    return f"{fingerprint(checkpoint.path, base)}.{dtype_name(dtype)}{shared}"


def open_matrix(store: Store, clara) -> MemoryMatrix:
    """The matrix the memory index reads: a single host's matrix file, or a fleet node's copy
    of the rows shared in the store, brought up to date now."""
    shape, dtype = (clara.n_mem, clara.hidden), dtype_name(clara.dtype)
    name = memory_id(clara, store.shares_memory)
    if not store.shares_memory:
        return MemoryMatrix(store.memory_dir, name, shape, dtype)
    matrix = SharedMatrix(store, name, shape, dtype)
    matrix.sync()
    return matrix


@dataclass
class Batch:
    """A batch on its way: texts sent to the model, memory on its way to host memory."""

    hashes: list[str]
    memory: torch.Tensor  # [n, m, d] in host memory once `copied` has happened
    copied: torch.cuda.Event | None  # None: already there (a CPU model)
    lease: Lease | None = None  # a fleet's claim on these texts


class Compressor:
    """Compresses the backlog one batch ahead: while the GPU computes a batch, the host stores
    the one before it (rows to the matrix file, then the database) and fetches and tokenizes
    the next, so the GPU never waits on the store (a tenth of the daemon's time otherwise).
    On a fleet each batch is claimed for lease_s seconds before it is computed."""

    def __init__(self, store: Store, clara, lease_s: float = NodeConfig.lease_s):
        self.store = store
        self.clara = clara
        self.model = memory_id(clara, store.shares_memory)
        self.lease_s = lease_s
        self.matrix = None if store.shares_memory else open_matrix(store, clara)
        self.pending: Batch | None = None
        # the tokens of the leases this node holds now (the batch computing, the one being
        # stored), renewed from the heartbeat's thread
        self._held: set[str] = set()
        self._held_lock = threading.Lock()

    def step(self, batch_size: int) -> int:
        """Start the next batch, then store the one before it; returns how many passages were
        stored. 0 with nothing pending: the backlog is done."""
        lease, items = self._take(batch_size)
        try:
            started = self._start(items, lease) if items else None
        except BaseException:  # out of memory, a model error: the batch is given up
            self._let_go(lease)  # unrenewed, its lease expires and any node claims it again
            raise
        previous, self.pending = self.pending, started
        return self._store(previous) if previous else 0

    def _take(self, batch_size: int) -> tuple[Lease | None, list[tuple[str, str]]]:
        """The next batch of the backlog: claimed on a fleet, else past the one in flight."""
        if self.store.shares_memory:
            lease = claim_next(self.store, self.model, self.lease_s, batch_size)
            if lease and lease.items:
                with self._held_lock:
                    self._held.add(lease.token)
            return lease, lease.items if lease else []
        busy = set(self.pending.hashes) if self.pending else set()
        with self.store.read() as conn:
            return None, [(h, text) for h, text in q.backlog(conn, self.model,
                                                             batch_size + len(busy))
                          if h not in busy][:batch_size]

    def renew(self) -> int:
        """Move the leases this node holds lease_s ahead (each heartbeat of a model node);
        returns how many texts they hold. A lease another node took over meanwhile is not
        this node's to renew: its rows carry the other claim's token."""
        with self._held_lock:
            tokens = sorted(self._held)
        if not tokens:
            return 0
        return self.store.write(lambda conn: renew_leases(conn, tokens, self.lease_s))

    def _let_go(self, lease: Lease | None) -> None:
        if lease is not None:
            with self._held_lock:
                self._held.discard(lease.token)

    def finish(self) -> int:
        """Store the batch in flight, if any (stopping: it would be redone otherwise)."""
        previous, self.pending = self.pending, None
        return self._store(previous) if previous else 0

    def _start(self, items: list[tuple[str, str]], lease: Lease | None) -> Batch:
        memory = self.clara.compress([text for _, text in items])
        if not memory.is_cuda:
            return Batch([h for h, _ in items], memory, None, lease)
        host = torch.empty(memory.shape, dtype=memory.dtype, pin_memory=True)
        host.copy_(memory, non_blocking=True)
        copied = torch.cuda.Event()
        copied.record()
        return Batch([h for h, _ in items], host, copied, lease)

    def _store(self, batch: Batch) -> int:
        if batch.copied is not None:
            batch.copied.synchronize()
        if batch.lease is not None:
            return self._store_shared(batch)
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

    def _store_shared(self, batch: Batch) -> int:
        """Into the store, for the texts whose lease is still this batch's."""
        vectors = dict(zip(batch.hashes, (memory_to_bytes(m) for m in batch.memory),
                           strict=True))
        try:
            written, lost = self.store.write(lambda conn: store_vectors(conn, batch.lease,
                                                                        vectors))
        finally:  # written and released, or given up: its lease is no longer renewed
            self._let_go(batch.lease)
        if lost:
            log.warning("stale lease: %d of %d passages of this batch were taken over by "
                        "another node after the lease expired; their vectors are not written",
                        len(lost), len(batch.hashes))
        if written:
            log.info("compressed %d passages", len(written))
        return len(written)


def compress_backlog(store: Store, clara, batch_size: int = 64,
                     lease_s: float = NodeConfig.lease_s) -> int:
    """Compress every waiting passage; returns how many texts were compressed."""
    compressor = Compressor(store, clara, lease_s)
    done = 0
    while True:
        done += compressor.step(batch_size)
        if compressor.pending is None:
            return done
