"""Small generators of logs and reports in formats beyond loghub's six, so that the answerer
meets the lines a user's folders hold: syslog, JSON lines, Java stack traces, nginx/Apache
access, Kubernetes events, systemd journal exports, and plain-text reports.

Each generator takes a random.Random and returns (file name, lines). Values are drawn fresh
each call, so two files of one format share their shape but not their specifics: the
look-alike lines that a question's answer must be told apart from.
"""

from __future__ import annotations

import json
import random
from datetime import datetime, timedelta
from pathlib import Path

USERS = ["alice", "bob", "carol", "deploy", "backup", "jenkins", "postgres", "www-data",
         "oracle", "admin", "git", "nagios", "svc_etl", "mkovac", "tnguyen", "ops"]
SERVICES = ["billing", "orders", "auth", "search", "gateway", "inventory", "mailer",
            "scheduler", "reports", "payments", "catalog", "ingest"]
HOSTS = ["web-01", "web-02", "db-1", "cache-3", "worker-7", "edge-2", "build-4", "mon-1"]
PATHS = ["/api/orders", "/api/users", "/login", "/static/app.js", "/health", "/api/cart",
         "/admin/settings", "/api/search", "/metrics", "/api/invoices"]
EXCEPTIONS = ["java.lang.NullPointerException", "java.io.IOException",
              "java.sql.SQLTimeoutException", "java.lang.IllegalStateException",
              "java.util.concurrent.TimeoutException", "java.lang.OutOfMemoryError"]


def ip(rng: random.Random) -> str:
    return f"{rng.choice([10, 172, 192, 203, 198, 51, 85])}.{rng.randint(0, 255)}." \
           f"{rng.randint(0, 255)}.{rng.randint(1, 254)}"


def times(rng: random.Random, n: int) -> list[datetime]:
    t = datetime(rng.randint(2019, 2025), rng.randint(1, 12), rng.randint(1, 28),
                 rng.randint(0, 23), rng.randint(0, 59), rng.randint(0, 59))
    out = []
    for _ in range(n):
        t += timedelta(seconds=rng.choice([0, 1, 1, 2, 3, 5, 8, 13, 30, 61]),
                       milliseconds=rng.randint(0, 999))
        out.append(t)
    return out


def syslog(rng: random.Random, n: int = 400) -> tuple[str, list[str]]:
    host = rng.choice(HOSTS)
    lines = []
    for t in times(rng, n):
        pid, user, addr = rng.randint(200, 40000), rng.choice(USERS), ip(rng)
        port, script = rng.randint(1024, 65000), rng.choice(["backup", "rotate", "sync"])
        msg = rng.choice([
            f"sshd[{pid}]: Accepted publickey for {user} from {addr} port {port} ssh2",
            f"sshd[{pid}]: Failed password for {user} from {addr} port {port} ssh2",
            f"CRON[{pid}]: ({user}) CMD (/usr/local/bin/{script}.sh)",
            f"kernel: Out of memory: Killed process {pid} ({rng.choice(['java', 'node'])})",
            f"systemd[1]: Started Session {rng.randint(1, 900)} of user {user}.",
            f"postfix/smtp[{pid}]: connect to mx{rng.randint(1, 9)}.example.org[{addr}]:25: "
            "Connection timed out",
            f"sudo[{pid}]: {user} : TTY=pts/{rng.randint(0, 9)} ; USER=root ; "
            f"COMMAND=/bin/systemctl restart {rng.choice(SERVICES)}",
            f"kernel: EXT4-fs error (device sd{rng.choice('abc')}{rng.randint(1, 4)}): "
            f"ext4_find_entry:{rng.randint(1000, 1700)}: inode #{rng.randint(2, 900000)}: comm "
            f"{rng.choice(['rsync', 'tar', 'cp'])}: reading directory lblock 0",
            f"dhclient[{pid}]: DHCPACK of {addr} from {ip(rng)}",
        ])
        lines.append(f"{t:%b} {t.day:2d} {t:%H:%M:%S} {host} {msg}")
    return f"{host}-syslog", lines


def json_lines(rng: random.Random, n: int = 400) -> tuple[str, list[str]]:
    service = rng.choice(SERVICES)
    lines = []
    for t in times(rng, n):
        level = rng.choice(["info"] * 5 + ["warn", "error"])
        record = {"ts": t.isoformat(timespec="milliseconds") + "Z", "level": level,
                  "service": service}
        kind = rng.randrange(4)
        if kind == 0:
            record |= {"msg": "request served", "path": rng.choice(PATHS),
                       "status": rng.choice([200, 200, 201, 404, 500, 503]),
                       "latency_ms": rng.randint(2, 4000), "client_ip": ip(rng)}
        elif kind == 1:
            record |= {"msg": rng.choice(["payment declined", "order created", "cache miss",
                                          "retrying upstream call", "token expired"]),
                       "order_id": f"ord_{rng.getrandbits(24):06x}", "user": rng.choice(USERS)}
        elif kind == 2:
            record |= {"msg": "job finished", "job_id": f"job-{rng.randint(1000, 99999)}",
                       "records": rng.randint(0, 500000), "duration_s": rng.randint(1, 7200)}
        else:
            record |= {"msg": rng.choice(["connection refused", "disk usage high",
                                          "queue backlog growing"]),
                       "host": rng.choice(HOSTS), "value": rng.randint(1, 100)}
        lines.append(json.dumps(record))
    return f"{service}.jsonl", lines


def java_trace(rng: random.Random, n: int = 400) -> tuple[str, list[str]]:
    service = rng.choice(SERVICES)
    pkg = f"com.example.{service}"
    lines: list[str] = []
    for t in times(rng, n // 4):
        thread = f"http-nio-8080-exec-{rng.randint(1, 40)}"
        stamp = t.strftime("%Y-%m-%d %H:%M:%S,") + f"{t.microsecond // 1000:03d}"
        cls = rng.choice(["OrderService", "PaymentClient", "UserRepository", "CartController"])
        if rng.random() < 0.6:
            lines.append(f"{stamp} INFO [{thread}] {pkg}.{cls} - Handled request "
                         f"{rng.randint(10000, 99999)} in {rng.randint(1, 900)} ms")
            continue
        exc = rng.choice(EXCEPTIONS)
        what = rng.choice(["order", "payment", "user", "cart"])
        lines.append(f"{stamp} ERROR [{thread}] {pkg}.{cls} - Failed to process "
                     f"{what} {rng.randint(10000, 99999)}")
        lines.append(f"{exc}: " + rng.choice(["Connection reset", "timeout after 30000 ms", "null",
                                              "Java heap space", "row locked by another"]))
        for _ in range(rng.randint(2, 5)):
            method = rng.choice(["process", "load", "save", "call", "handle", "validate"])
            lines.append(f"\tat {pkg}.{rng.choice([cls, 'Dao', 'Client'])}.{method}"
                         f"({cls}.java:{rng.randint(20, 900)})")
        if rng.random() < 0.3:
            cause = rng.choice(["Broken pipe", "socket closed"])
            lines.append(f"Caused by: {rng.choice(EXCEPTIONS)}: {cause}")
    return f"{service}-app.log", lines


def access_log(rng: random.Random, n: int = 400) -> tuple[str, list[str]]:
    lines = []
    agents = ["curl/8.4.0", "Mozilla/5.0 (X11; Linux x86_64)", "python-requests/2.31",
              "Googlebot/2.1", "kube-probe/1.28"]
    for t in times(rng, n):
        method = rng.choice(["GET"] * 4 + ["POST", "PUT", "DELETE"])
        path = rng.choice(PATHS) + rng.choice(["", f"/{rng.randint(1, 9999)}"])
        status = rng.choice([200] * 6 + [301, 304, 401, 403, 404, 499, 500, 502, 503])
        lines.append(f'{ip(rng)} - {rng.choice(["-"] * 4 + USERS)} [{t:%d/%b/%Y:%H:%M:%S} +0000] '
                     f'"{method} {path} HTTP/1.1" {status} {rng.randint(0, 90000)} "-" '
                     f'"{rng.choice(agents)}"')
    return rng.choice(["access.log", "nginx-access.log", "apache_access.log"]), lines


def k8s_events(rng: random.Random, n: int = 300) -> tuple[str, list[str]]:
    lines = ["LAST SEEN   TYPE      REASON              OBJECT                      MESSAGE"]
    for t in times(rng, n):
        app = rng.choice(SERVICES)
        pod = f"{app}-{rng.getrandbits(32):08x}"[:len(app) + 6] + f"-{rng.getrandbits(20):05x}"
        node = f"node-{rng.randint(1, 12)}"
        reason, kind, msg = rng.choice([
            ("BackOff", "Warning", f"Back-off restarting failed container {app} in pod {pod}"),
            ("FailedScheduling", "Warning", f"0/{rng.randint(3, 9)} nodes are available: "
                                            f"{rng.randint(1, 9)} Insufficient memory"),
            ("Pulled", "Normal", f'Successfully pulled image "registry.local/{app}:'
                                 f'{rng.randint(1, 3)}.{rng.randint(0, 20)}.{rng.randint(0, 9)}"'),
            ("OOMKilling", "Warning", f"Memory cutgroup out of memory: Killed process "
                                      f"{rng.randint(100, 60000)} ({app})"),
            ("Scheduled", "Normal", f"Successfully assigned default/{pod} to {node}"),
            ("Unhealthy", "Warning", f"Readiness probe failed: HTTP probe failed with "
                                     f"statuscode: {rng.choice([500, 503, 404])}"),
            ("NodeNotReady", "Warning", f"Node {node} status is now: NodeNotReady"),
        ])
        lines.append(f"{t.isoformat()}Z   {kind:<8}  {reason:<18}  pod/{pod:<22}  {msg}")
    return "k8s-events.txt", lines


def journal_export(rng: random.Random, n: int = 120) -> tuple[str, list[str]]:
    host = rng.choice(HOSTS)
    lines = []
    for t in times(rng, n):
        unit = rng.choice(SERVICES) + ".service"
        pid = rng.randint(300, 60000)
        msg = rng.choice([f"{unit} failed with result 'exit-code'.",
                          f"Started {unit}.", f"{unit}: Main process exited, code=exited, "
                                              f"status={rng.randint(1, 143)}/FAILURE",
                          f"Scheduled restart job, restart counter is at {rng.randint(1, 50)}.",
                          f"Listening on {ip(rng)}:{rng.choice([80, 443, 5432, 6379, 8080])}"])
        if rng.random() < 0.5:  # short-iso, as journalctl prints by default
            lines.append(f"{t:%Y-%m-%dT%H:%M:%S}+0000 {host} {unit.split('.')[0]}[{pid}]: {msg}")
            continue
        stamp = int(t.timestamp() * 1e6)
        lines += [f"__REALTIME_TIMESTAMP={stamp}", f"_HOSTNAME={host}", f"_PID={pid}",
                  f"_SYSTEMD_UNIT={unit}", f"PRIORITY={rng.randint(2, 6)}", f"MESSAGE={msg}", ""]
    return f"{host}-journal.txt", lines


def report(rng: random.Random, n: int = 40) -> tuple[str, list[str]]:
    service = rng.choice(SERVICES)
    lines = [f"# {service.title()} runbook", ""]
    facts = [
        lambda: f"The disk alert fires when usage on any volume exceeds "
                f"{rng.randint(60, 95)} percent.",
        lambda: f"Backups of the {service} database run every {rng.randint(2, 24)} "
                f"hours and are kept for {rng.randint(3, 90)} days.",
        lambda: f"The on-call engineer for {service} is {rng.choice(USERS)}, reachable "
                f"on extension {rng.randint(1000, 9999)}.",
        lambda: f"Restart the {service} workers with `systemctl restart "
                f"{service}-worker`; a restart takes about {rng.randint(5, 120)} seconds.",
        lambda: f"The primary {service} host is {rng.choice(HOSTS)} at {ip(rng)}.",
        lambda: f"Incident INC-{rng.randint(1000, 9999)} was caused by an expired TLS "
                f"certificate on {rng.choice(HOSTS)}.",
        lambda: f"Connection pool size was raised from {rng.randint(5, 20)} to "
                f"{rng.randint(30, 200)} after the outage.",
        lambda: f"| {rng.choice(HOSTS)} | {rng.choice(['primary', 'replica'])} | "
                f"{rng.randint(8, 256)} GB | {ip(rng)} |",
        lambda: f"Escalate to the {rng.choice(['database', 'network', 'platform'])} "
                f"team after {rng.randint(10, 60)} minutes without recovery.",
        lambda: f"The error budget for {service} is {rng.choice(['0.1', '0.5', '2'])} "
                "percent per month.",
    ]
    for _ in range(n):
        if rng.random() < 0.12:
            title = rng.choice(["Alerts", "Backups", "Contacts", "Hosts", "Incidents"])
            lines += ["", f"## {title}", ""]
        lines.append(rng.choice(facts)())
    return f"{service}-runbook.md", lines


GENERATORS = [syslog, json_lines, java_trace, access_log, k8s_events, journal_export, report]


UNSEEN_SEED = 123  # the files of bench/qa/unseen.jsonl, which cites their lines


def write_folder(folder: Path, seed: int) -> list[Path]:
    """One file of each format, made in turn from one seed, written into folder: with
    UNSEEN_SEED, the logs of the benchmark's `unseen` split, which no loghub file looks like."""
    rng = random.Random(seed)
    written = []
    for make in GENERATORS:
        name, lines = make(rng)
        path = folder / name
        path.write_text("\n".join(lines) + "\n")
        written.append(path)
    return written
