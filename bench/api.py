"""The API's HTTP layer on its Unix socket, server by server: latency, throughput, framing.

    python bench/api.py --before f955b7f --out bench/results/api.json

Each server runs in a child process over the same two routes, handlers that answer at once
(so the HTTP layer alone is timed): GET /status returns a status-sized JSON object, POST /ask
parses a question body and echoes it. Servers:

- kbd: kbd.api.server as it is (uvicorn, kbd's httptools protocol: peer credentials, deadline);
- kbd-before: kbd/api.py of the git revision --before (http.server, a thread per connection);
- uvicorn-h11, hypercorn: kbd.api.server's ASGI app on uvicorn's h11 protocol and on hypercorn,
  where installed (the alternatives weighed); neither has kbd's deadline or peer check.

Latency: one request per connection, as kbd's client sends them, --requests in a row: p50,
p95 in ms. Throughput: --clients threads for --seconds. Framing: the hostile cases of
tests/faults/test_hostile.py::test_framing_holds, each the statuses replied and how long
the connection stayed open.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import types
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))  # the daemon harness

from support.harness import raw_request, seconds_held_by_a_trickle  # noqa: E402

STATUS = {"documents": {"stored": 1234, "failed": 2}, "passages": 56789, "backlog": 0,
          "model": "ready", "engine": "clara", "store": "sqlite:///kbd.sqlite3", "pid": 1,
          "faults": [], "failed_files": [], "folders": ["/var/log/app", "/srv/reports"]}
ASK = json.dumps({"question": "which node ran out of disk ?", "top_k": 5}).encode()
SERVERS = ("kbd", "kbd-before", "uvicorn-h11", "hypercorn")


# -- the child: one server ----------------------------------------------------------------------

def routes(router_class):
    router = router_class()
    router.add("GET", "/status", lambda g, query, body: STATUS)
    router.add("POST", "/ask", lambda g, query, body: {"answer": body["question"], "sources": []})
    router.add("GET", "/documents/show", lambda g, query, body: {"path": query.get("path")})
    return router


def api_at(revision: str) -> types.ModuleType:
    """kbd/api.py as it was at a git revision, as a module of its own."""
    source = subprocess.run(["git", "show", f"{revision}:kbd/api.py"], check=True,
                            capture_output=True, text=True).stdout
    module = types.ModuleType("kbd_api_before")
    exec(compile(source, f"{revision}:kbd/api.py", "exec"), module.__dict__)
    return module


def serve(name: str, path: Path, revision: str) -> None:
    from kbd.api import server as api

    if name == "kbd-before":
        before = api_at(revision)
        before.serve(path, routes(before.Router)).serve_forever()
    elif name == "kbd":
        api.serve(path, routes(api.Router)).start()
        threading.Event().wait()  # until the parent's SIGTERM
    elif name == "uvicorn-h11":
        import uvicorn

        uvicorn.run(api.App(routes(api.Router)), uds=str(path), http="h11", lifespan="off",
                    log_level="warning", access_log=False)
    elif name == "hypercorn":
        import asyncio

        from hypercorn.asyncio import serve as hypercorn_serve
        from hypercorn.config import Config

        config = Config()
        config.bind, config.accesslog, config.errorlog = [f"unix:{path}"], None, None
        asyncio.run(hypercorn_serve(api.App(routes(api.Router)), config))


# -- the parent: clients --------------------------------------------------------------------------

GET_STATUS = b"GET /status HTTP/1.1\r\nHost: kbd\r\nConnection: close\r\n\r\n"
POST_ASK = (b"POST /ask HTTP/1.1\r\nHost: kbd\r\nContent-Type: application/json\r\n"
            b"Content-Length: %d\r\nConnection: close\r\n\r\n%s" % (len(ASK), ASK))


def latency(path: Path, data: bytes, requests: int) -> dict:
    took = []
    for _ in range(requests):
        began = time.perf_counter()
        reply = raw_request(path, data)
        took.append((time.perf_counter() - began) * 1000)
        assert reply.startswith(b"HTTP/1.1 200"), reply[:200]
    took.sort()
    return {"p50_ms": round(took[len(took) // 2], 3),
            "p95_ms": round(took[int(len(took) * 0.95)], 3),
            "mean_ms": round(statistics.fmean(took), 3), "requests": requests}


def throughput(path: Path, data: bytes, clients: int, seconds: float) -> dict:
    done, stop = [0] * clients, threading.Event()

    def client(k: int) -> None:
        while not stop.is_set():
            raw_request(path, data)
            done[k] += 1

    threads = [threading.Thread(target=client, args=(k,)) for k in range(clients)]
    for t in threads:
        t.start()
    time.sleep(seconds)
    stop.set()
    for t in threads:
        t.join()
    return {"requests_per_s": round(sum(done) / seconds, 1), "clients": clients}


def statuses(reply: bytes) -> list[int]:
    """The status of each reply on a connection (the bodies here never hold "HTTP/1.1 ")."""
    return [int(part[:3]) for part in reply.split(b"HTTP/1.1 ")[1:]]


def framing(path: Path, trickle_s: float) -> dict:
    # with Host: h11 refuses a request without one, and that would hide what is tried here
    smuggled = b"GET /documents/show?path=/secret HTTP/1.1\r\nHost: kbd\r\n\r\n"
    follow_up = b"GET /status HTTP/1.1\r\nHost: kbd\r\nConnection: close\r\n\r\n"
    cases = {
        "404 before the body": b"POST /nope HTTP/1.1\r\nHost: kbd\r\nContent-Length: %d\r\n"
                               b"\r\n%s%s" % (len(smuggled), smuggled, follow_up),
        "length and chunked": b"POST /ask HTTP/1.1\r\nHost: kbd\r\nContent-Length: %d\r\n"
                              b"Transfer-Encoding: chunked\r\n\r\n%s%s"
                              % (len(smuggled), smuggled, follow_up),
        "two lengths": b"POST /ask HTTP/1.1\r\nHost: kbd\r\nContent-Length: 2\r\n"
                       b"Content-Length: %d\r\n\r\n{}%s%s" % (len(smuggled), smuggled, follow_up),
    }
    found = {}
    for what, data in cases.items():
        began = time.monotonic()
        reply = raw_request(path, data)
        found[what] = {"statuses": statuses(reply), "smuggled_answered": b"/secret" in reply,
                       "open_s": round(time.monotonic() - began, 2)}
    found["header line every 3 s: held_s"] = round(seconds_held_by_a_trickle(path, 3, trickle_s), 1)
    return found


def measure(name: str, args, work: Path) -> dict:
    path = work / name / "kbd.sock"
    path.parent.mkdir(mode=0o700)
    child = subprocess.Popen([sys.executable, __file__, "--serve", name, "--socket", str(path),
                              "--before", args.before], stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 30
        while not path.exists() or not _answers(path):
            if child.poll() is not None or time.monotonic() > deadline:
                return {"unavailable": (child.stderr.read() if child.poll() is not None
                                        else "no answer in 30 s")[-300:]}
            time.sleep(0.1)
        latency(path, GET_STATUS, 50)  # warm up
        return {"status": latency(path, GET_STATUS, args.requests),
                "ask": latency(path, POST_ASK, args.requests),
                "status_throughput": throughput(path, GET_STATUS, args.clients, args.seconds),
                "framing": framing(path, args.trickle_s)}
    finally:
        child.terminate()
        child.wait(timeout=30)


def _answers(path: Path) -> bool:
    try:
        return raw_request(path, GET_STATUS, timeout=2).startswith(b"HTTP/1.1 200")
    except OSError:
        return False


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--servers", default=",".join(SERVERS))
    parser.add_argument("--before", default="f955b7f", help="the revision with http.server")
    parser.add_argument("--requests", type=int, default=1000)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--trickle-s", type=float, default=24.0)
    parser.add_argument("--out", type=Path)
    parser.add_argument("--serve", help=argparse.SUPPRESS)
    parser.add_argument("--socket", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        return serve(args.serve, args.socket, args.before)
    results = {"machine": {"python": platform.python_version(), "cpus": os.cpu_count(),
                           "load_1m": os.getloadavg()[0]},
               "servers": {}}
    with tempfile.TemporaryDirectory() as work:
        for name in args.servers.split(","):
            results["servers"][name] = measure(name, args, Path(work))
            print(name, json.dumps(results["servers"][name]), flush=True)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(results, indent=1) + "\n")


if __name__ == "__main__":
    main()
