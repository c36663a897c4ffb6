"""The daemon's sender: delivers the outbox (kbd.store.events), one thread per channel.

A channel's events go in id order: its oldest pending event is tried, and the next only once
that one is delivered or given up, so a receiver that was down gets everything afterwards in
the order it happened, and one channel that is down never holds up another. A failed
attempt waits retry_first_s, doubling up to retry_max_s; an event still undelivered
give_up_s after it was made is marked failed (shown by `kbd status` and the digest).

An event is marked delivered only after its receiver accepted it, in a transaction of its
own: a kill -9 between the two sends it again, with the same id, so nothing is lost and a
receiver can drop the repeat.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

from kbd.config import NotifyChannel
from kbd.errors import KbdError
from kbd.notify import DeliveryError, deliver
from kbd.store import Store
from kbd.store import events as ev

log = logging.getLogger("kbd.notify")

POLL_S = 0.5  # how often an idle channel looks for new events
MAX_DOUBLINGS = 40  # 2**40 s is past any retry_max_s


def backoff_s(channel: NotifyChannel, failures: int) -> float:
    """The wait after the n-th failed attempt: retry_first_s doubling, at most retry_max_s."""
    doublings = min(max(failures - 1, 0), MAX_DOUBLINGS)
    return min(channel.retry_first_s * 2**doublings, channel.retry_max_s)


class Sender:
    def __init__(self, store: Store, channels: tuple[NotifyChannel, ...],
                 poll_s: float = POLL_S, now: Callable[[], datetime] = lambda: datetime.now(UTC)):
        self.store = store
        self.channels = {c.name: c for c in channels}
        self.poll_s = poll_s
        self.now = now
        self._stopping = threading.Event()
        self._wakes = {name: threading.Event() for name in self.channels}
        self._threads = [threading.Thread(target=self._loop, args=(c,), daemon=True,
                                          name=f"kbd-notify-{c.name}") for c in channels]

    def start(self) -> None:
        for thread in self._threads:
            thread.start()

    def stop(self) -> None:
        self._stopping.set()
        self.wake()
        for thread in self._threads:  # one in a delivery ends with its timeout; don't wait
            thread.join(timeout=1.0)

    def wake(self) -> None:
        """New events were written: look now instead of at the next poll."""
        for event in self._wakes.values():
            event.set()

    def _loop(self, channel: NotifyChannel) -> None:
        wake = self._wakes[channel.name]
        while not self._stopping.is_set():
            try:
                wait_s = self.step(channel)
            except KbdError as e:  # the store: its fault shows in `kbd status`; try later
                log.warning("notify %s: %s", channel.name, e.message)
                wait_s = self.poll_s
            wake.wait(timeout=max(0.0, min(wait_s, self.poll_s)))
            wake.clear()

    def step(self, channel: NotifyChannel) -> float:
        """Deliver the channel's events that are due, in order; seconds until the next one
        is due (or poll_s when none is pending)."""
        while not self._stopping.is_set():
            with self.store.read() as conn:
                event = ev.head(conn, channel.name)
            if event is None:
                return self.poll_s
            wait_s = (event["next_attempt_at"] - self.now()).total_seconds()
            if wait_s > 0:
                return wait_s
            self.attempt(channel, event)
        return 0.0

    def attempt(self, channel: NotifyChannel, event: dict) -> bool:
        """Try one event once and record the outcome; True when it was delivered."""
        try:
            receipt = deliver(channel, event["payload"])
        except DeliveryError as e:
            self._failed(channel, event, e.message)
            return False
        self.store.write(lambda conn: ev.delivered(conn, event["id"], receipt))
        log.info("notify %s: %s event %s delivered (%s)", channel.name, event["kind"],
                 event["key"], receipt)
        return True

    def _failed(self, channel: NotifyChannel, event: dict, error: str) -> None:
        now = self.now()
        delay = backoff_s(channel, event["attempts"] + 1)
        age_s = (now - event["created_at"]).total_seconds()
        if age_s + delay > channel.give_up_s:
            self.store.write(lambda conn: ev.give_up(conn, event["id"], error))
            log.error("notify %s: %s event %s given up after %d attempts over %.0f s: %s",
                      channel.name, event["kind"], event["key"], event["attempts"] + 1,
                      age_s, error)
            return
        self.store.write(lambda conn: ev.retry(conn, event["id"], error,
                                               now + timedelta(seconds=delay)))
        log.warning("notify %s: %s event %s not delivered (attempt %d, again in %.3g s): %s",
                    channel.name, event["kind"], event["key"], event["attempts"] + 1, delay,
                    error)
