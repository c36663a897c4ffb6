"""Questions asked on a node without a model, answered by a model node through the fleet's
store (docs/fleet.md, "Routed asks"). No node listens on the network: PostgreSQL carries the
question there and the answer back (kbd.store.asks).

    ingest node                          PostgreSQL                      model node
    kbd ask -> API -> RemoteModel --- asks row, NOTIFY kbd_asks ---> AskServer claims it
                                                                      -> its ModelWorker,
    API <- token queue, future <- ask_chunks rows, NOTIFY reply <-- relay   as a local ask

RemoteModel stands in for the model worker on an ingest node: its submit() takes the same
AskRequest and fills the same token queue and future, so the API and the CLI do not change.
An ask whose model node dies, stops or restarts before answering fails once the asker sees
it (a node that dies is silent after fleet.SILENT_PERIODS missed heartbeats: 9 s); an ask
nobody claims fails as soon as no model node is alive.
"""

from __future__ import annotations

import json
import logging
import queue
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass
from datetime import datetime

from kbd.background import Background
from kbd.errors import KbdError, ModelUnavailable
from kbd.retrieve import Scope
from kbd.runtime.worker import AskRequest
from kbd.store import Store, asks

log = logging.getLogger("kbd.asks")

GIVE_UP_S = 900.0  # as long as the API waits for a local answer (kbd.api.routes.ASK_TIMEOUT_S)
KEEP_S = 2 * GIVE_UP_S  # asks older than this are swept: their asker died before deleting them
SWEEP_EVERY_S = 60.0
MAX_IN_FLIGHT = 8  # asks a model node holds at once; past that it leaves them to the others
CHUNK_S = 0.05  # text pieces that come within this long go into one chunk row
RELAY_GRACE_S = 10.0  # at stop, answers under way get this long before the model stops


def options_of(request: AskRequest) -> dict:
    """What the ask row carries besides the question (JSON)."""
    scope = request.scope
    return {"scope": list(scope.paths), "kinds": list(scope.kinds), "since_s": scope.since_s,
            "top_k": request.top_k, "max_new_tokens": request.max_new_tokens,
            "stream": request.tokens is not None}


def request_of(claimed: asks.Claimed) -> AskRequest:
    """The claimed ask as the model worker takes a local one."""
    options = claimed.options
    return AskRequest(question=claimed.question,
                      scope=Scope(paths=tuple(options["scope"]), kinds=tuple(options["kinds"]),
                                  since_s=options["since_s"]),
                      top_k=options["top_k"], max_new_tokens=options["max_new_tokens"],
                      tokens=queue.Queue() if options["stream"] else None)


# -- the asking node -------------------------------------------------------------------------

@dataclass
class Waiting:
    request: AskRequest
    deadline: float  # time.monotonic() past which the ask fails
    seq: int = 0  # the next chunk to read
    sent: bool = False  # committed: until then the ask's row is not there to check


class RemoteModel(Background):
    """An ingest node's model worker: there is no model here, so each question goes to a model
    node through the store and its answer comes back the same way. One thread reads the
    answers, woken by NOTIFY on this node's reply channel or every POLL_S."""

    engine_name = "none"
    join_s = asks.POLL_S + 5  # its loop waits on the listener POLL_S at a time
    state = "none here: asks go to the model nodes (node role ingest)"
    dense = None

    def __init__(self, store: Store, node: str):
        self.store, self.node = store, node
        self._waiting: dict[int, Waiting] = {}
        self._lock = threading.Lock()
        super().__init__("kbd-asks")

    def submit(self, request: AskRequest) -> Future:
        """Send the question to the model nodes; refused at once when none is alive."""
        waiting = Waiting(request, time.monotonic() + GIVE_UP_S)

        def send(conn) -> int:
            if not asks.live_model_nodes(conn):
                raise ModelUnavailable(
                    "no model node is alive in the fleet to answer (this node's role is "
                    "ingest)", engine="none",
                    hint="start a daemon with [node] role = \"model\" on this store; "
                         "`kbd status` lists the nodes and their heartbeats")
            ask_id = asks.insert_ask(conn, self.node, request.question, options_of(request))
            with self._lock:  # before the commit: its first chunk can come right after
                self._waiting[ask_id] = waiting
            return ask_id

        try:
            ask_id = self.store.write(send)
        except Exception:
            with self._lock:  # an insert rolled back: forget it
                for ask_id in [i for i, w in self._waiting.items() if w is waiting]:
                    del self._waiting[ask_id]
            raise
        waiting.sent = True
        log.debug("ask %d sent to the model nodes", ask_id)
        return request.future

    def backlog_model(self) -> None:
        return None

    def wake(self) -> None:
        pass

    def stop(self) -> None:
        super().stop()
        with self._lock:
            ask_ids = list(self._waiting)
        for ask_id in ask_ids:
            self._fail(ask_id, ModelUnavailable("kbd is shutting down", engine="none"))

    def _run(self) -> None:
        listener = asks.Listener(self.store, asks.reply_channel(self.node))
        checked = time.monotonic()
        try:
            while not self._stop.is_set():
                woken = listener.wait(asks.POLL_S)
                # a notification names its ask; a poll (or a lost notification) reads them all
                self._deliver({int(p) for p in woken} if woken else None)
                if time.monotonic() - checked >= asks.POLL_S:
                    self._check()
                    checked = time.monotonic()
        finally:
            listener.close()

    def _deliver(self, ask_ids: set[int] | None) -> None:
        """The new chunks of these asks (None: of every waiting one), handed to the API."""
        with self._lock:
            waiting = {i: w for i, w in self._waiting.items() if ask_ids is None or i in ask_ids}
        if not waiting:
            return
        try:
            with self.store.read() as conn:
                read = {i: asks.chunks_after(conn, i, w.seq) for i, w in waiting.items()}
        except KbdError as e:  # the next poll reads them
            log.warning("reading answers from the store failed: %s", e)
            return
        for ask_id, chunks in read.items():
            for seq, kind, body in chunks:
                waiting[ask_id].seq = seq + 1
                self._take(ask_id, waiting[ask_id].request, kind, body)

    def _take(self, ask_id: int, request: AskRequest, kind: str, body: str) -> None:
        if kind == "token":
            if request.tokens is not None:
                request.tokens.put(body)
            return
        self._forget(ask_id)
        if kind == "done":
            request.future.set_result(json.loads(body))
        else:
            error = json.loads(body)
            request.future.set_exception(KbdError(error["message"], error.get("hint"),
                                                  error["code"]))
        self._delete(ask_id)  # after the answer is handed on: its client waits for no write

    def _check(self) -> None:
        """Fail the asks that can no longer be answered, or waited too long."""
        with self._lock:
            waiting = {i: w for i, w in self._waiting.items() if w.sent}
        if not waiting:
            return
        now = time.monotonic()
        expired = [i for i, w in waiting.items() if w.deadline < now]
        for ask_id in expired:
            self._fail(ask_id, KbdError(f"no answer from the model nodes within "
                                        f"{GIVE_UP_S:.0f} s", code="timeout"))
        try:
            with self.store.read() as conn:
                stalled = asks.stalled(conn, [i for i in waiting if i not in expired])
        except KbdError as e:
            log.warning("checking asks in flight failed: %s", e)
            return
        if stalled:
            self._deliver(set(stalled))  # an answer written just before its node died counts
        for ask_id, why in stalled.items():
            self._fail(ask_id, ModelUnavailable(
                f"{why}: the question was not answered", engine="none",
                hint="ask again: another model node answers it, if one is alive"))

    def _fail(self, ask_id: int, error: KbdError) -> None:
        waiting = self._forget(ask_id)
        if waiting is not None and not waiting.request.future.done():
            log.warning("ask %d failed: %s", ask_id, error.message)
            waiting.request.future.set_exception(error)
        self._delete(ask_id)

    def _forget(self, ask_id: int) -> Waiting | None:
        with self._lock:
            return self._waiting.pop(ask_id, None)

    def _delete(self, ask_id: int) -> None:
        """The ask is done with: delete it from the store (its chunks go with it)."""
        try:
            self.store.write(lambda conn: asks.delete_ask(conn, ask_id))
        except KbdError as e:  # a model node sweeps it later (KEEP_S)
            log.warning("deleting ask %d failed: %s", ask_id, e)


# -- the model node -------------------------------------------------------------------------

class AskServer(Background):
    """A model node's side: claims the asks other nodes route through the store, up to
    MAX_IN_FLIGHT at once, has its model worker answer each as a local ask (recorded in the
    answer history the same way), and writes the answer back in chunks, one relay thread
    per ask. It also sweeps asks left by askers that died."""

    join_s = asks.POLL_S + 5

    def __init__(self, store: Store, node: str, started_at: datetime,
                 submit: Callable[[AskRequest], Future]):
        self.store, self.node, self.started_at = store, node, started_at
        self.submit = submit
        self._relays: set[threading.Thread] = set()
        self._lock = threading.Lock()
        super().__init__("kbd-ask-server")

    def stop(self) -> None:
        """Claim no more; answers under way get RELAY_GRACE_S to be written back."""
        super().stop()
        deadline = time.monotonic() + RELAY_GRACE_S
        with self._lock:
            relays = list(self._relays)
        for relay in relays:
            relay.join(timeout=max(0.0, deadline - time.monotonic()))

    def _run(self) -> None:
        listener = asks.Listener(self.store, asks.ASKS_CHANNEL)
        swept = float("-inf")
        try:
            while not self._stop.is_set():
                self._claim()
                if time.monotonic() - swept >= SWEEP_EVERY_S:
                    self._sweep()
                    swept = time.monotonic()
                listener.wait(asks.POLL_S)
        finally:
            listener.close()

    def _claim(self) -> None:
        """Claim asks while there are some and room for them."""
        while not self._stop.is_set():
            with self._lock:
                if len(self._relays) >= MAX_IN_FLIGHT:
                    return
            try:
                claimed = self.store.write(
                    lambda conn: asks.claim_ask(conn, self.node, self.started_at))
            except KbdError as e:
                log.warning("claiming asks failed: %s", e)
                return
            if claimed is None:
                return
            log.info("ask %d from node %s claimed", claimed.id, claimed.asker)
            request = request_of(claimed)
            self.submit(request)
            relay = threading.Thread(target=self._relay, args=(claimed, request),
                                     name=f"kbd-ask-{claimed.id}", daemon=True)
            with self._lock:
                self._relays.add(relay)
            relay.start()

    def _relay(self, claimed: asks.Claimed, request: AskRequest) -> None:
        try:
            streamed = self._stream(claimed, request)
            if streamed is not None:
                self._write(claimed, streamed, *final(request.future))
        finally:
            with self._lock:
                self._relays.discard(threading.current_thread())

    def _stream(self, claimed: asks.Claimed, request: AskRequest) -> int | None:
        """Write the text pieces as they are generated, gathered CHUNK_S at a time; the next
        chunk's number, or None when the asker is gone."""
        seq = 0
        if request.tokens is None:
            return seq
        deadline = time.monotonic() + GIVE_UP_S
        while time.monotonic() < deadline:
            try:
                pieces = [request.tokens.get(timeout=0.1)]
            except queue.Empty:
                if request.future.done() and request.tokens.empty():
                    break
                continue
            gathered = time.monotonic() + (CHUNK_S if seq else 0.0)  # the first at once
            while (left := gathered - time.monotonic()) > 0:
                try:
                    pieces.append(request.tokens.get(timeout=left))
                except queue.Empty:
                    break
            if not self._write(claimed, seq, "token", "".join(pieces)):
                return None
            seq += 1
        return seq

    def _write(self, claimed: asks.Claimed, seq: int, kind: str, body: str) -> bool:
        """One chunk; False when the asker is gone (or the store fails: the asker's own
        deadline, or this node's heartbeat, ends its wait)."""
        try:
            if self.store.write(lambda conn: asks.add_chunk(conn, claimed, seq, kind, body)):
                return True
            log.info("ask %d: its asker is gone, the answer is not sent", claimed.id)
        except KbdError as e:
            log.warning("ask %d: writing the answer failed: %s", claimed.id, e)
        return False

    def _sweep(self) -> None:
        try:
            swept = self.store.write(lambda conn: asks.sweep(conn, KEEP_S))
        except KbdError as e:
            log.warning("sweeping old asks failed: %s", e)
            return
        if swept:
            log.info("swept %d asks older than %.0f s that no node waits for", swept, KEEP_S)


def final(future: Future) -> tuple[str, str]:
    """The last chunk of an ask: ("done", the answer's JSON) or ("error", the error's)."""
    try:
        answer = future.result(timeout=GIVE_UP_S)
    except KbdError as e:
        error = {"code": e.code, "message": e.message, "hint": e.hint}
    except TimeoutError:
        error = {"code": "timeout", "message": f"no answer within {GIVE_UP_S:.0f} s"}
    except Exception as e:  # the worker's own failure, as a local ask would show it
        error = {"code": "internal", "message": f"internal error: {e}"}
    else:
        return "done", json.dumps(answer, default=str)
    return "error", json.dumps(error)
