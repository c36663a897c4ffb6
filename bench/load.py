"""The fault and load suite's scenarios (tests/faults/), run longer than CI runs them, each on
the real daemon subprocess with a tiny CLaRa checkpoint (CPU). Writes every scenario's runs,
failures, data lost and figures to bench/results/load.json and prints the table of docs/faults.md.

    PYTHONPATH=. python3 bench/load.py                      # all, about 15 minutes on 2 cores
    PYTHONPATH=. python3 bench/load.py --only load,crash    # some of them, updated in the file
    PYTHONPATH=. python3 bench/load.py --ci                 # the sizes CI runs

The scenario functions are the tests' own (imported, not copied); only their sizes differ.
Needs root for the storage faults (a tmpfs, chattr +i) and the other-user socket check, as CI
runs; what cannot run here is recorded as skipped, with the reason.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import shlex
import sys
import tempfile
import time
from collections.abc import Callable
from contextlib import ExitStack
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))  # harness.py and the faults package

from faults.test_crash import crash  # noqa: E402
from faults.test_filesystem import chaos  # noqa: E402
from faults.test_hostile import fuzz_parsers, hostile_files, hostile_socket  # noqa: E402
from faults.test_injection import injection  # noqa: E402
from faults.test_load import load  # noqa: E402
from faults.test_notify_daemon import alert_per_change, hostile_text  # noqa: E402
from faults.test_notify_delivery import kill_during_delivery, receiver_down  # noqa: E402
from faults.test_privacy import privacy  # noqa: E402
from faults.test_storage import (  # noqa: E402
    LOCK_SHOWN_AFTER_S,
    db_locked,
    disk_full,
    immutable_unavailable,
    read_only,
    tmpfs_unavailable,
)
from faults.test_two_daemons import two_daemons  # noqa: E402
from support.harness import (  # noqa: E402
    Outcome,
    TinyModel,
    Unavailable,
    postgresql_database,
    postgresql_server,
    shared_dir,
    unprivileged_unavailable,
)
from support.tiny import write_base_model, write_checkpoint  # noqa: E402

# name: (scenario, its sizes here; CI runs the functions' defaults)
SCENARIOS: dict[str, tuple[Callable[..., Outcome], dict]] = {
    "load": (load, {"clients": 16, "seconds": 60, "files": 1000}),
    "crash": (crash, {"kills_ingest": 12, "kills_scheduled": 8, "files": 600}),
    "two daemons (SQLite)": (two_daemons, {"attempts": 3}),
    "two daemons (PostgreSQL)": (two_daemons, {"attempts": 3}),
    "disk full": (disk_full, {"cycles": 3}),
    "database locked": (db_locked, {"hold_s": LOCK_SHOWN_AFTER_S + 15}),
    "database read-only": (read_only, {"cycles": 3}),
    "filesystem chaos": (chaos, {"storm_files": 200, "storm_rounds": 30, "churn_files": 1000,
                                 "rotate_s": 30}),
    "parser fuzzing": (fuzz_parsers, {"examples": 500}),
    "hostile files": (hostile_files, {"long_line_mb": 50}),
    "hostile requests": (hostile_socket, {"slow_clients": 100, "rounds": 5}),
    "prompt injection": (injection, {"asks": 5}),
    "private store": (privacy, {"files": 200}),
    "notify kill -9 during delivery": (kill_during_delivery, {"kills": 5, "runs_between": 4}),
    "notify receiver down": (receiver_down, {"down_s": 120.0, "runs": 10}),
    "notify alert per change": (alert_per_change, {"changes": 4, "quiet_runs": 3}),
    "notify hostile text": (hostile_text, {}),
}


def run(name: str, sizes: dict, model: TinyModel) -> dict:
    """One scenario in a fresh folder: its Outcome as JSON, or why it could not run."""
    scenario = SCENARIOS[name][0]
    with ExitStack() as stack:
        try:
            if scenario is fuzz_parsers:
                return fuzz_parsers(**sizes).as_json()
            work = stack.enter_context(shared_dir(prefix="kbd-bench-"))
            if name.endswith("(PostgreSQL)"):
                server = stack.enter_context(postgresql_server())
                sizes = sizes | {"store_url": stack.enter_context(postgresql_database(server))}
            if reason := needs(scenario, work):
                return {"skipped": reason}
            if scenario is chaos:  # without setpriv, all but the permission flips
                sizes = sizes | {"unprivileged": unprivileged_unavailable() is None}
            return scenario(work, model, **sizes).as_json()
        except Unavailable as e:
            return {"skipped": str(e)}
        except Exception as e:  # a scenario that blows up broke its promises: one failure
            return {"runs": 0, "failures": 1, "data_lost": 0, "leaked": 0,
                    "failed_promises": [f"{type(e).__name__}: {e}"[:500]]}


def needs(scenario: Callable, work: Path) -> str | None:
    """Why the scenario cannot run here (None: it can)."""
    if scenario is disk_full:
        return tmpfs_unavailable()
    if scenario is read_only:
        return immutable_unavailable(work)
    return None


def table(results: dict) -> str:
    rows = ["| scenario | runs | failures | data lost | leaked | figures |",
            "| --- | --- | --- | --- | --- | --- |"]
    for name, result in results.items():
        if "skipped" in result:
            rows.append(f"| {name} | skipped | | | | {result['skipped']} |")
            continue
        figures = {k: v for k, v in result.items()
                   if k not in ("runs", "failures", "data_lost", "leaked", "failed_promises",
                                "sizes")}
        shown = ", ".join(f"{k} {v}" for k, v in figures.items() if not isinstance(v, dict))
        rows.append(f"| {name} | {result['runs']} | {result['failures']} | "
                    f"{result['data_lost']} | {result.get('leaked', 0)} | {shown} |")
    return "\n".join(rows)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", help="comma-separated scenario names (default: all)")
    parser.add_argument("--ci", action="store_true", help="the sizes CI runs")
    parser.add_argument("--out", type=Path, default=ROOT / "bench/results/load.json")
    args = parser.parse_args()
    names = args.only.split(",") if args.only else list(SCENARIOS)
    unknown = set(names) - set(SCENARIOS)
    if unknown:
        parser.error(f"unknown scenarios {sorted(unknown)}; known: {', '.join(SCENARIOS)}")
    logging.getLogger("pypdf").setLevel(logging.ERROR)  # fuzzed PDFs: one warning each
    with tempfile.TemporaryDirectory(prefix="kbd-bench-model-") as folder:
        base = write_base_model(Path(folder) / "base")
        model = TinyModel(write_checkpoint(Path(folder) / "checkpoint", base), base)
        before = json.loads(args.out.read_text()) if args.only and args.out.exists() else {}
        kept = before.get("scenarios", {})
        command = shlex.join(["python3", "bench/load.py", *sys.argv[1:]])
        commands = [c for c in before.get("setting", {}).get("commands", []) if c != command]
        results: dict[str, dict] = {}
        for name in names:
            sizes = {} if args.ci else SCENARIOS[name][1]
            began = time.monotonic()
            results[name] = run(name, sizes, model) | {
                "wall_s": round(time.monotonic() - began, 1), "sizes": sizes}
            print(f"{name}: {json.dumps(results[name], default=str)}", flush=True)
            args.out.parent.mkdir(parents=True, exist_ok=True)
            args.out.write_text(json.dumps({
                "setting": {"machine": platform.machine(), "cpus": os.cpu_count(),
                            "python": platform.python_version(), "model": "tiny CLaRa, CPU",
                            "commands": [*commands, command]},
                "scenarios": {name: results.get(name) or kept[name]
                              for name in SCENARIOS if name in results or name in kept}},
                indent=2, default=str) + "\n")
    print(table(results))
    return int(any(r.get("failures") or r.get("data_lost") or r.get("leaked")
                   for r in results.values()))


if __name__ == "__main__":
    sys.exit(main())
