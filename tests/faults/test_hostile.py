"""Hostile input: every parser fuzzed (hypothesis), hostile files in a watched folder, and
hostile clients on the socket.

kbd promises:
- a parser given any bytes returns blocks or raises kbd's ParseError, nothing else, within
  a few seconds and a bounded amount of memory;
- a hostile file fails alone, listed with a reason ("too-large", "too-slow", "binary"): a
  gzip bomb stops at the size limit, a PDF that would take hours stops at pdf_timeout_s, a
  1 GB file is refused unread, NUL bytes and a 10 MB line are stored (PostgreSQL too), and
  the daemon's memory grows by less than 6 times the size limit (max_file_mb);
- a hostile request gets a 4xx naming the problem, never a 5xx; no request reads a file
  outside the store; slow and stalled clients hold only their own connection; a user other
  than the daemon's cannot connect (socket permissions), nor talk if the socket is opened
  to all (peer credentials);
- framing holds: the body of a refused request is never read as the next request, ambiguous
  lengths are refused and the connection closed, and a request that does not arrive whole
  within the deadline loses its connection however it trickles in.
"""

from __future__ import annotations

import contextlib
import errno
import gzip
import json
import os
import pwd
import random
import re
import socket
import threading
import time
import tracemalloc
import zlib
from collections.abc import Callable
from pathlib import Path
from urllib.parse import quote

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from support.harness import (
    Kbd,
    Outcome,
    TinyModel,
    make_logs,
    make_pdf,
    pdf_bytes,
    pdf_page,
    poll,
    raw_request,
    seconds_held_by_a_trickle,
    shared_dir,
    wait_for,
)

from kbd.errors import KbdError
from kbd.ingest.parsers import ParseError, parse
from kbd.ingest.parsers.html import read_html
from kbd.ingest.parsers.markdown import read_markdown
from kbd.ingest.parsers.rst import read_rst
from kbd.ingest.parsers.text import read_text

EXAMPLE_SECONDS = 5.0  # the most one fuzzed input may take (a PDF stops at 2 s, below)
EXAMPLE_MEMORY = 64 * 2**20  # the most Python memory one fuzzed input may take

# -- parsers, fuzzed ------------------------------------------------------------------------

SEED_PDF = make_pdf([["Incident 42", "node 7 ran out of disk"], ["Fix", "blocks removed"]])
SEED_TEXT = ("# Incident\n\nNode 7 <b>ran</b> out of disk.\n\nTitle\n=====\n\n"
             '{"ts": "2026-11-23", "level": "ERROR", "msg": "disk full"}\n'
             "2026-11-23 10:00:00 disk full on node 7\n")


def mutated(seed: bytes) -> st.SearchStrategy[bytes]:
    """The seed with a few spans overwritten, inserted or cut: near-valid input reaches the
    parser's depths, where random bytes stop at the first check."""
    edit = st.tuples(st.integers(0, len(seed)), st.integers(0, 16), st.binary(max_size=16))

    def apply(edits: list[tuple[int, int, bytes]]) -> bytes:
        data = seed
        for at, cut, insert in edits:
            data = data[:at] + insert + data[at + cut:]
        return data

    return st.lists(edit, max_size=6).map(apply)


TEXTISH = st.one_of(
    st.binary(max_size=2048),
    st.text(max_size=1024).map(str.encode),
    st.text(max_size=512).map(lambda t: t.encode("utf-16")),
    mutated(SEED_TEXT.encode()),
    st.lists(st.sampled_from(["# h", "=====", "<p>", "</p>", "<script>", "```", "{", "}",
                              "\n", "\r\n", "\0", "\x1b[31m", "2026-11-23 10:00:00", "\ufeff",
                              "<!-- ", " -->", "..", "::", "*", "<br>", "&amp;", "\t"]),
             max_size=200).map(lambda parts: "".join(parts).encode()),
)

# each parser, as the ingester calls it, and each format reader on its own
TARGETS: dict[str, tuple[Callable[[bytes], object], st.SearchStrategy[bytes]]] = {
    "log": (lambda d: parse(Path("app.log"), d), TEXTISH),
    "log continued": (lambda d: parse(Path("app.log"), d, start_line=9, start_byte=4096),
                      TEXTISH),
    "json lines": (lambda d: parse(Path("events.jsonl"), d), TEXTISH),
    "kind by content": (lambda d: parse(Path("notes"), d), TEXTISH),
    "markdown": (lambda d: parse(Path("r.md"), d), TEXTISH),
    "rst": (lambda d: parse(Path("r.rst"), d), TEXTISH),
    "html": (lambda d: parse(Path("r.html"), d), TEXTISH),
    "text": (lambda d: parse(Path("r.txt"), d), TEXTISH),
    "markdown reader": (lambda d: read_markdown(d.decode("utf-8", "replace")), TEXTISH),
    "rst reader": (lambda d: read_rst(d.decode("utf-8", "replace")), TEXTISH),
    "html reader": (lambda d: read_html(d.decode("utf-8", "replace")), TEXTISH),
    "text reader": (lambda d: read_text(d.decode("utf-8", "replace")), TEXTISH),
    "pdf": (lambda d: parse(Path("r.pdf"), d, pdf_timeout_s=2), mutated(SEED_PDF)),
    "gzip": (lambda d: parse(Path("app.log.gz"), d, max_bytes=2**20),
             st.one_of(mutated(gzip.compress(SEED_TEXT.encode())), st.binary(max_size=512))),
}


def fuzz_parsers(*, examples: int = 100) -> Outcome:
    out = Outcome("parser fuzzing")
    worst = {"seconds": 0.0, "bytes": 0}
    tracemalloc.start()
    try:
        for name, (target, inputs) in TARGETS.items():
            fuzz = settings(max_examples=examples, deadline=None, database=None,
                            suppress_health_check=list(HealthCheck))
            try:
                fuzz(given(inputs)(checked(target, out, worst)))()
            except Exception as e:  # hypothesis re-raises the smallest failing input's error
                out.failures.append(f"{name}: {type(e).__name__}: {e}"[:500])
    finally:
        tracemalloc.stop()
    out.figures = {"parsers": len(TARGETS), "examples_per_parser": examples,
                   "slowest_s": round(worst["seconds"], 3),
                   "peak_mib": round(worst["bytes"] / 2**20, 1)}
    return out


def checked(target: Callable[[bytes], object], out: Outcome,
            worst: dict) -> Callable[[bytes], None]:
    """One fuzzed input through a parser: blocks or a ParseError, in time and memory."""

    def check(data: bytes) -> None:
        out.runs += 1
        tracemalloc.reset_peak()
        begin = time.monotonic()
        with contextlib.suppress(ParseError):  # a refusal with a reason is a promise kept
            target(data)
        took, peak = time.monotonic() - begin, tracemalloc.get_traced_memory()[1]
        worst["seconds"], worst["bytes"] = max(worst["seconds"], took), max(worst["bytes"], peak)
        assert took < EXAMPLE_SECONDS, f"{took:.1f} s on {len(data)} bytes"
        assert peak < EXAMPLE_MEMORY, f"{peak / 2**20:.0f} MiB on {len(data)} bytes"

    return check


def test_fuzz_every_parser():
    out = fuzz_parsers()
    assert out.failures == []
    assert out.runs >= len(TARGETS) * 50  # hypothesis may stop early on a small input space


# -- hostile files ----------------------------------------------------------------------------

def forever_pdf(pages: int = 2000, operators: int = 200_000) -> bytes:
    """A few MB whose pages all draw one content stream that takes pypdf seconds (below its
    per-stream limit): hours for the whole file."""
    stream = "BT /F1 12 Tf " + "(x) Tj " * operators + "ET"
    objects = {
        1: "<< /Type /Catalog /Pages 2 0 R >>",
        2: f"<< /Type /Pages /Kids [{' '.join(f'{5 + k} 0 R' for k in range(pages))}] "
           f"/Count {pages} >>",
        3: "<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>",
        4: f"<< /Length {len(stream)} >>\nstream\n{stream}\nendstream",
    }
    objects |= {5 + k: pdf_page(4) for k in range(pages)}
    return pdf_bytes(objects)


def gzip_bomb(megabytes: int) -> bytes:
    packer = zlib.compressobj(9, zlib.DEFLATED, 31)  # wbits 31: gzip framing
    zeros = bytes(2**20)
    return b"".join(packer.compress(zeros) for _ in range(megabytes)) + packer.flush()


def peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise AssertionError(f"no VmHWM for {pid}")


def hostile_files(work: Path, model: TinyModel, *, store_url: str = "", heavy: bool = True,
                  long_line_mb: int = 10, max_file_mb: int = 64,
                  pdf_timeout_s: float = 3) -> Outcome:
    out = Outcome("hostile files")
    extra = f'[store]\nurl = "{store_url}"\n' if store_url else ""
    with Kbd(work, model, ingest={"max_file_mb": max_file_mb, "pdf_timeout_s": pdf_timeout_s},
             extra=extra) as kbd:
        kbd.start_settled(5)
        before_mb = peak_rss_mb(kbd.proc.pid)
        w = kbd.watched
        nul = b"".join(b"2026-11-23 10:00:00 filler line %d\n" % i for i in range(3000))
        (w / "nul.log").write_bytes(nul + b"2026-11-23 10:00:01 a NUL \0 in a line\n")
        refused = {"zeros.log": "binary", "random.log": "binary"}
        (w / "zeros.log").write_bytes(bytes(2**20))
        (w / "random.log").write_bytes(random.Random(7).randbytes(2**16))
        if heavy:
            refused |= {"bomb.log.gz": "too-large", "forever.pdf": "too-slow",
                        "huge.log": "too-large"}
            (w / "bomb.log.gz").write_bytes(gzip_bomb(1024))  # 1 GiB of zeros inside
            (w / "forever.pdf").write_bytes(forever_pdf())
            with open(w / "huge.log", "wb") as f:  # 1 GiB, sparse: costs nothing to make
                f.truncate(2**30)
            words = b"disk full error on node seven "
            (w / "long.log").write_bytes(b"2026-11-23 10:00:00 " + words * (
                long_line_mb * 2**20 // len(words)) + b"\n2026-11-23 10:00:01 after it\n")
        began = time.monotonic()
        slowest, listed = 0.0, {}
        deadline = began + 300
        while time.monotonic() < deadline:
            asked = time.monotonic()
            status = kbd.status()  # the API answers while hostile files are read
            slowest = max(slowest, time.monotonic() - asked)
            listed = {Path(f["path"]).name: f for f in status["failed_files"]}
            if set(refused) <= set(listed) and kbd.consistency(refused_paths(w, refused)).clean:
                break
            time.sleep(0.5)
        took = time.monotonic() - began
        out.absorb(kbd.converged(timeout=60, failed_ok=refused_paths(w, refused)),
                   "after the hostile files")
        for name, code in refused.items():
            out.runs += 1
            failure = listed.get(name)
            out.expect(failure and failure["code"] == code
                       and failure["message"].startswith(str(w / name)),
                       f"{name}: expected a {code} failure naming it, got {failure}")
        grown_mb = peak_rss_mb(kbd.proc.pid) - before_mb
        # a file is held as bytes, as text and as passages while it is ingested
        out.expect(grown_mb < 6 * max_file_mb, f"the daemon grew by {grown_mb:.0f} MB, over "
                                               f"6 times the {max_file_mb} MB size limit")
        out.expect(slowest < 5, f"status took {slowest:.1f} s while hostile files were read")
        out.expect(kbd.proc.poll() is None, "the daemon died")
        out.runs += 2 + heavy  # nul.log, the good logs, long.log
        out.figures = {"store": "postgresql" if store_url else "sqlite",
                       "seconds_to_settle": round(took, 1),
                       "peak_rss_growth_mb": round(grown_mb), "slowest_status_s": round(slowest, 2)}
    return out


def refused_paths(folder: Path, refused: dict[str, str]) -> list[Path]:
    return [folder / name for name in refused]


def test_hostile_files(tmp_path, tiny_model):
    out = hostile_files(tmp_path, tiny_model)
    assert out.failures == [] and out.data_lost == 0


def test_nul_bytes_on_postgresql(tmp_path, tiny_model, store_url):
    """PostgreSQL text cannot hold NUL: a log with a few past the binary sniff is stored."""
    if not store_url.startswith("postgresql"):
        pytest.skip("the SQLite store takes NUL, and test_hostile_files covers it")
    out = hostile_files(tmp_path, tiny_model, store_url=store_url, heavy=False)
    assert out.failures == [] and out.data_lost == 0


# -- hostile clients ------------------------------------------------------------------------

def post(path: str, body: bytes, headers: str = "") -> bytes:
    return (f"POST {path} HTTP/1.1\r\nContent-Length: {len(body)}\r\n{headers}"
            f"Connection: close\r\n\r\n").encode() + body


def get(path: str) -> bytes:
    return f"GET {path} HTTP/1.1\r\nConnection: close\r\n\r\n".encode()


BAD_REQUESTS: dict[str, tuple[bytes, int]] = {  # what, (request, status)
    "garbage": (b"garbage\r\n\r\n", 400),
    "unknown method": (b"BREW /status HTTP/1.1\r\nConnection: close\r\n\r\n", 501),
    "long request line": (b"GET /" + b"a" * 70_000 + b" HTTP/1.1\r\n\r\n", 414),
    "too many headers": (b"GET /status HTTP/1.1\r\n" + b"X-A: b\r\n" * 200 + b"\r\n", 431),
    "length not a number": (post("/ask", b"{}").replace(b"Length: 2", b"Length: 2x"), 400),
    "negative length": (post("/ask", b"").replace(b"Length: 0", b"Length: -5"), 400),
    "chunked body": (b"POST /ask HTTP/1.1\r\nTransfer-Encoding: chunked\r\n"
                     b"Connection: close\r\n\r\n0\r\n\r\n", 411),
    "huge body": (post("/ask", b" " * (2 << 20)), 413),
    "invalid json": (post("/ask", b'{"question": '), 400),
    "not utf-8": (post("/ask", b'{"question": "\xff\xfe"}'), 400),
    "json nested 100k deep": (post("/ask", b"[" * 100_000), 400),
    "lone surrogate": (post("/ask", b'{"question": "\\ud800 what ?"}'), 400),
    "nul in json": (post("/ask", b'{"question": "what\\u0000 ?"}'), 400),
    "json not an object": (post("/ask", b'["question"]'), 400),
    "question a list": (post("/ask", b'{"question": ["x"]}'), 400),
    "top_k a string": (post("/ask", b'{"question": "x", "top_k": "5"}'), 400),
    "top_k huge": (post("/ask", b'{"question": "x", "top_k": 1e308}'), 400),
    "top_k a bool": (post("/ask", b'{"question": "x", "top_k": true}'), 400),
    "tokens negative": (post("/ask", b'{"question": "x", "max_new_tokens": -1}'), 400),
    "scope not strings": (post("/ask", b'{"question": "x", "scope": [1, 2]}'), 400),
    "unknown kind": (post("/ask", b'{"question": "x", "kinds": ["evil"]}'), 400),
    "since absurd": (post("/ask", b'{"question": "x", "since": "99999999999999w"}'), 400),
    "question too long": (post("/ask", json.dumps({"question": "x" * 5000}).encode()), 400),
    "id past 64 bits": (get("/questions/99999999999999999999999"), 404),
    "limit past 64 bits": (get("/answers?limit=99999999999999999999"), 400),
    "nul in a query": (get("/documents/show?path=%00"), 400),
    "bad question spec": (post("/questions", b'{"text": "x", "every": "-1s"}'), 400),
    "bad digest format": (post("/digest", b'{"formats": ["../../evil"]}'), 400),
    # path traversal: document paths are looked up in the store, never opened
    "traversal in show": (get("/documents/show?path=../../../../etc/passwd"), 404),
    "absolute path in show": (get("/documents/show?path=/etc/passwd"), 404),
    "traversal in the url": (get("/../../../etc/passwd"), 404),
}


def hostile_socket(work: Path, model: TinyModel, *, slow_clients: int = 20,
                   rounds: int = 1) -> Outcome:
    out = Outcome("hostile requests")
    with Kbd(work, model) as kbd:
        kbd.start_settled(3)
        threads_before = thread_count(kbd.proc.pid)
        for _ in range(rounds):
            for what, (request, status) in BAD_REQUESTS.items():
                reply = raw_request(kbd.socket, request)
                out.runs += 1
                out.expect(reply.startswith(f"HTTP/1.1 {status} ".encode())
                           and "error" in json.loads(reply.partition(b"\r\n\r\n")[2])
                           and b"root:x:0:0" not in reply,
                           f"{what}: expected {status} and a JSON error, got {reply[:120]!r}")
            asked = kbd.client.request("POST", "/ask", {"question": "x", "scope": [
                "/etc/passwd", "../../../etc", "/etc/*"]})
            out.runs += 1
            out.expect(asked["status"] == "nothing-new" and asked["sources"] == [],
                       f"a scope outside the store gave {asked}")
        slow_clients_hold_their_own(kbd, slow_clients, out)
        stalled_client_is_dropped(kbd, out)
        other_users_are_refused(kbd, out)
        out.expect(poll(lambda: thread_count(kbd.proc.pid) <= threads_before + 2, 30),
                   f"{thread_count(kbd.proc.pid) - threads_before} threads left behind")
        log = kbd.log_text()
        out.expect("Traceback" not in log, f"a traceback in the log: "
                                           f"{log[log.find('Traceback'):][:300]}")
        out.expect(kbd.client.request("POST", "/ask", {"question": "which request failed ?"})
                   ["status"] == "answered", "the daemon no longer answers questions")
    return out


def thread_count(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/task"))


def slow_clients_hold_their_own(kbd: Kbd, clients: int, out: Outcome) -> None:
    """Clients that send their body a byte every 2 s (never tripping the read timeout) while
    a normal client asks for status: it is answered at once."""
    stop = threading.Event()

    def drip() -> None:
        # the request deadline may close them first: that is their only way to end early
        with socket.socket(socket.AF_UNIX) as s, contextlib.suppress(BrokenPipeError,
                                                                    ConnectionResetError):
            s.connect(str(kbd.socket))
            s.sendall(b"POST /ask HTTP/1.1\r\nContent-Length: 1000\r\n\r\n")
            while not stop.wait(2):
                s.sendall(b" ")

    drippers = [threading.Thread(target=drip) for _ in range(clients)]
    for thread in drippers:
        thread.start()
    slowest = 0.0
    for _ in range(10):
        asked = time.monotonic()
        kbd.status()
        slowest = max(slowest, time.monotonic() - asked)
        time.sleep(0.5)
    stop.set()
    for thread in drippers:
        thread.join()
    out.runs += clients
    out.expect(slowest < 1, f"status took {slowest:.1f} s beside {clients} slow clients")
    out.figures["status_beside_slow_clients_s"] = round(slowest, 3)


def stalled_client_is_dropped(kbd: Kbd, out: Outcome) -> None:
    from kbd.api.server import REQUEST_DEADLINE_S

    with socket.socket(socket.AF_UNIX) as s:
        s.settimeout(REQUEST_DEADLINE_S + 20)
        s.connect(str(kbd.socket))
        s.sendall(b"GET /status HTTP/1.1\r\nHost: kbd\r\n")  # and never the blank line
        began = time.monotonic()
        closed = s.recv(100) == b""
        took = time.monotonic() - began
    out.runs += 1
    out.expect(closed and took < REQUEST_DEADLINE_S + 5,
               f"a stalled client held its connection {took:.0f} s")


def connect_as(user: str, socket_path: Path) -> str:
    """GET /status from a forked child that runs as `user`: its reply's status line, or
    "refused: <errno name>" when it cannot connect."""
    record = pwd.getpwnam(user)
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child makes system calls only, then leaves without cleanup
        try:
            os.setgroups([])
            os.setgid(record.pw_gid)
            os.setuid(record.pw_uid)
            with socket.socket(socket.AF_UNIX) as s:
                s.settimeout(10)
                s.connect(str(socket_path))
                s.sendall(get("/status"))
                result = s.recv(200).split(b"\r\n")[0]
        except OSError as e:
            result = f"refused: {errno.errorcode.get(e.errno, e.errno)}".encode()
        os.write(write_end, result)
        os._exit(0)
    os.close(write_end)
    os.waitpid(pid, 0)
    with os.fdopen(read_end, "rb") as reader:
        return reader.read().decode()


def other_users_are_refused(kbd: Kbd, out: Outcome) -> None:
    if os.geteuid() != 0:
        out.figures["other_user"] = "not tested: needs root to switch users"
        return
    folder = kbd.socket.parent
    tried = connect_as("nobody", kbd.socket)
    out.expect(tried == "refused: EACCES", f"nobody connected to the 0700 folder: {tried}")
    folder.chmod(0o755)  # as if someone opened it up: the peer credentials still refuse
    kbd.socket.chmod(0o666)
    try:
        tried = connect_as("nobody", kbd.socket)
    finally:
        folder.chmod(0o700)
        kbd.socket.chmod(0o600)
    out.expect(tried.startswith("HTTP/1.1 403"), f"nobody on an open socket got: {tried}")
    out.runs += 2


def test_hostile_requests(tiny_model):
    with shared_dir() as work:  # `nobody` must reach the socket's own folder to be refused there
        out = hostile_socket(work, tiny_model)
    assert out.failures == [] and out.data_lost == 0


# -- framing ------------------------------------------------------------------------------------

def replies(data: bytes) -> list[tuple[int, dict]]:
    """Each (status, JSON body) in what one connection sent back, framed by Content-Length."""
    found = []
    while data:
        head, _, rest = data.partition(b"\r\n\r\n")
        length = int(re.search(rb"(?i)content-length: *(\d+)", head)[1])
        found.append((int(head.split(b" ")[1]), json.loads(rest[:length])))
        data = rest[length:]
    return found


def test_framing_holds(tmp_path):
    """Each case on the real daemon's socket, as raw bytes: the smuggled request, were it
    read as one, would reply with a stored document."""
    from kbd.api.server import REQUEST_DEADLINE_S

    with Kbd(tmp_path, None, extra='[model]\nengine = "clara"\n') as kbd:
        kbd.start()
        log = make_logs(kbd.watched, 1)[0]
        wait_for(lambda: kbd.live_documents() == 1, what="the log stored", tolerate=(KbdError,))
        smuggled = f"GET /documents/show?path={quote(str(log))} HTTP/1.1\r\n\r\n".encode()
        follow_up = b"GET /status HTTP/1.1\r\nConnection: close\r\n\r\n"
        assert replies(raw_request(kbd.socket, smuggled + follow_up))[0][1]["path"] == str(log)

        def body_of(start: str) -> bytes:
            return f"{start}Content-Length: {len(smuggled)}\r\n\r\n".encode() + smuggled

        refused_unread = {  # refused before their body is read: the next request is answered
            "POST /nope HTTP/1.1\r\n": 404,
            "POST /status HTTP/1.1\r\n": 405,
            "GET /documents/show?path=%00 HTTP/1.1\r\n": 400,
        }
        for start, status in refused_unread.items():
            got = replies(raw_request(kbd.socket, body_of(start) + follow_up))
            assert [s for s, _ in got] == [status, 200], (start, got)
            assert got[1][1]["pid"] == kbd.proc.pid, (start, got)

        refused_and_closed = {  # ambiguous or unread bodies: one error, and the connection ends
            "chunked": (b"POST /ask HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n"
                        + smuggled, (400, 411)),
            "length and chunked": (body_of("POST /ask HTTP/1.1\r\nTransfer-Encoding: "
                                           "chunked\r\n"), (400,)),
            "two lengths": (body_of("POST /ask HTTP/1.1\r\nContent-Length: 2\r\n"), (400,)),
        }
        for what, (request, statuses) in refused_and_closed.items():
            asked = time.monotonic()
            got = replies(raw_request(kbd.socket, request + follow_up, timeout=30))
            took = time.monotonic() - asked
            assert len(got) == 1 and got[0][0] in statuses and "error" in got[0][1], (what, got)
            assert took < REQUEST_DEADLINE_S / 2, f"{what}: the connection stayed {took:.1f} s"

        held = seconds_held_by_a_trickle(kbd.socket, every_s=5, for_s=REQUEST_DEADLINE_S + 15)
        assert held < REQUEST_DEADLINE_S + 3, f"a trickled request held its connection {held} s"
        assert kbd.status()["pid"] == kbd.proc.pid and "Traceback" not in kbd.log_text()
