"""Notifications under faults: the real daemon subprocess sends a standing question's events
to a webhook on the loopback (tests/receivers.py) that is killed mid-delivery or down for a
while.

kbd promises: every event written to the outbox reaches the receiver at least once (lost = 0),
in the order the events were made; a repeat carries the same idempotency key, and no event
arrives under two keys; kill -9 of the daemon while the receiver holds a delivery (it has the
message, kbd has no reply yet) is followed after the restart by the same event with the same
key; a receiver refusing connections for a while gets everything once it is back; `kbd notify
list` and `kbd notify test` work against the running daemon.
"""

from __future__ import annotations

import signal
import sqlite3
import time
from pathlib import Path

from support.harness import Kbd, Outcome, TinyModel, make_logs, wait_for
from support.receivers import Webhook

RETRY = "retry_first_s = 0.1\nretry_max_s = 1.0\n"


def channel_toml(hook: Webhook) -> str:
    return f'[notify.hook]\ntype = "webhook"\nurl = "{hook.url}"\ntimeout_s = 5\n{RETRY}'


def add_question(kbd: Kbd) -> int:
    return kbd.client.request("POST", "/questions", {
        "text": "which request failed ?", "every": "1h", "top_k": 2, "max_new_tokens": 4,
        "notify": "always", "channels": ["hook"]})["id"]


def run(kbd: Kbd, question_id: int) -> None:
    kbd.client.request("POST", f"/questions/{question_id}/run")


def outbox(kbd: Kbd) -> list[tuple[int, str, int, str]]:
    """(id, key, answer_id, status) of every event, in id order, read from the file."""
    with sqlite3.connect(kbd.database_file) as conn:
        return conn.execute("SELECT id, key, answer_id, status FROM events "
                            "ORDER BY id").fetchall()


def all_delivered(kbd: Kbd):
    return lambda: all(status == "delivered" for *_, status in outbox(kbd))


def tally(out: Outcome, kbd: Kbd, hook: Webhook) -> None:
    """Events, deliveries, repeats (each under its event's key) and losses, as figures."""
    events = outbox(kbd)
    keys = hook.keys()
    by_key = {key: answer_id for _, key, answer_id, _ in events}
    received_answers: dict[int, set[str]] = {}
    for r in hook.received:
        received_answers.setdefault(r["body"]["event"]["answer_id"], set()).add(
            r["body"]["idempotency_key"])
    lost = [key for key in by_key if key not in keys]
    first_seen = list(dict.fromkeys(keys))
    out.expect(not lost, f"{len(lost)} events never reached the receiver")
    out.expect(first_seen == [key for _, key, _, _ in events],
               "events first arrived out of their order")
    out.expect(all(len(k) == 1 for k in received_answers.values()),
               "an answer arrived under two keys")
    out.expect(all(by_key.get(k) == r["body"]["event"]["answer_id"]
                   for k, r in zip(keys, hook.received, strict=True)),
               "a key arrived with another event's body")
    out.data_lost += len(lost)
    out.figures |= {"events": len(events),
                    "delivered": sum(s == "delivered" for *_, s in events),
                    "received": len(keys), "duplicates_same_id": len(keys) - len(set(keys)),
                    "lost": len(lost)}


def kill_during_delivery(work: Path, model: TinyModel, kills: int = 2,
                         runs_between: int = 3) -> Outcome:
    out = Outcome("notify kill -9 during delivery")
    hook = Webhook().up()
    hook.mode, hook.hold_s = "hold", 1.5
    try:
        with Kbd(work, model, extra=channel_toml(hook)) as kbd:
            kbd.start()
            make_logs(kbd.watched, 2, lines=20)
            kbd.settled(2)
            question = add_question(kbd)
            for n in range(kills):
                for _ in range(runs_between):
                    run(kbd, question)
                hook.in_hold.clear()
                wait_for(hook.in_hold.is_set, what="a delivery held by the receiver")
                kbd.stop(signal.SIGKILL)
                out.runs += 1
                kbd.start()
                out.expect(poll_true(lambda: len(hook.keys()) > len(set(hook.keys())), 30),
                           f"kill {n + 1}: the held event was not sent again")
            for _ in range(runs_between):
                run(kbd, question)
            hook.mode = "ok"
            wait_for(all_delivered(kbd), timeout=60, what="every event delivered")
            listed = kbd.cli("notify", "list")
            out.expect(listed.returncode == 0 and "hook: webhook generic" in listed.stdout
                       and "delivered" in listed.stdout, f"kbd notify list: {listed}")
            tested = kbd.cli("notify", "test", "hook")
            out.expect(tested.returncode == 0 and "delivered to hook: HTTP 200"
                       in tested.stdout, f"kbd notify test: {tested}")
            tally(out, kbd, hook)
    finally:
        hook.down()
    return out


def receiver_down(work: Path, model: TinyModel, down_s: float = 8.0, runs: int = 4) -> Outcome:
    out = Outcome("notify receiver down")
    hook = Webhook()  # not up: connections refused
    try:
        with Kbd(work, model, extra=channel_toml(hook)) as kbd:
            kbd.start()
            question = add_question(kbd)
            went_down = time.monotonic()
            for _ in range(runs):
                run(kbd, question)
            time.sleep(max(0.0, down_s - (time.monotonic() - went_down)))
            out.expect(hook.keys() == [], "something arrived while the receiver was down")
            hook.up()
            out.runs += 1
            back = time.monotonic()
            wait_for(all_delivered(kbd), timeout=60, what="every event delivered")
            out.figures["down_s"] = round(back - went_down, 1)
            out.figures["caught_up_s"] = round(time.monotonic() - back, 1)
            tally(out, kbd, hook)
    finally:
        hook.down()
    return out


def poll_true(predicate, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return False


def test_kill_9_during_delivery_loses_nothing_and_repeats_carry_the_same_id(tmp_path,
                                                                            tiny_model):
    out = kill_during_delivery(tmp_path, tiny_model)
    assert out.failures == [] and out.data_lost == 0
    assert out.figures["duplicates_same_id"] >= 2 and out.figures["lost"] == 0


def test_a_receiver_down_for_a_while_gets_everything_afterwards_in_order(tmp_path,
                                                                         tiny_model):
    out = receiver_down(tmp_path, tiny_model)
    assert out.failures == [] and out.data_lost == 0
    assert out.figures["events"] == 4 and out.figures["received"] == 4
