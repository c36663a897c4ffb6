"""The answer-quality benchmark of record: each setting's daemon over a fresh store of the six
loghub logs and the reports in bench/qa/reports/, asked the questions by `kbd eval`. The split
`unseen` asks instead over the seven files train/formats.py makes from seed 123 (syslog, JSON
lines, a Java app's stack traces, an access log, Kubernetes events, a journal export, a
runbook), in formats no loghub file has; `formats` over the seven logs in bench/qa/formats/
(an nginx error log, PostgreSQL's log, logfmt, a CI build log, dmesg, HAProxy, dockerd), in
formats neither has.

    python bench/answers.py [--split dev|heldout] [--sample N] [--settings baseline,current]
    python bench/answers.py --before HEAD~1 --settings baseline,before,current   # a change

A setting is a name, the code its daemon runs (a commit, or None for this working tree) and
config overrides ({section: {key: value}}). `baseline` is main's behaviour at f955b7f, before
the benchmark existed: its code is taken from git into a temporary folder, so the row stays
what it was whatever the config keys of later code. Each setting gets its own home and store,
its daemon starts as a user starts it, the questions wait until every file is stored and the
model has loaded, and this tree's `kbd eval` scores the replies. All rows go side by side into
bench/results/answers.json (or --out).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from io import BytesIO
from itertools import zip_longest
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))  # the daemon harness
sys.path.insert(0, str(ROOT))  # train/, the unseen split's file generators

from support.harness import Kbd, wait_for  # noqa: E402

from kbd.errors import KbdError  # noqa: E402
from train import formats  # noqa: E402

LOGHUB = ROOT.parent / "shared" / "data" / "loghub"
REPORTS = ROOT / "bench" / "qa" / "reports"
SETTINGS = [
    {"name": "baseline", "code": "f955b7f", "config": {"model": {"engine": "text"}}},
    # this tree with the untrained text model writing the answer (checked, the best line if
    # ungrounded)
    {"name": "generate", "code": None,
     "config": {"model": {"engine": "text", "answer": "generate", "text_model": "smollm2-base"}}},
    # ... and with kbd's trained answerer adapter (kbd/data/answerer.safetensors) writing it
    {"name": "trained", "code": None,
     "config": {"model": {"engine": "text", "answer": "generate", "text_model": "smollm2"}}},
    {"name": "current", "code": None, "config": {"model": {"engine": "text"}}},  # the defaults
]
READY_TIMEOUT_S = 1800  # 2 busy cores take minutes to embed every passage


def code_at(commit: str, folder: Path) -> Path:
    """The kbd package as it was at `commit`, unpacked under folder."""
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", commit, "kbd"], check=True,
                             capture_output=True).stdout
    target = folder / f"code-{commit}"
    with tarfile.open(fileobj=BytesIO(archive)) as tar:
        tar.extractall(target, filter="data")
    return target


def toml_tables(config: dict) -> str:
    """Config overrides as TOML tables; values written as JSON, which TOML reads for strings,
    numbers and booleans."""
    return "".join(f"[{section}]\n" + "".join(f"{k} = {json.dumps(v)}\n" for k, v in keys.items())
                   for section, keys in config.items())


def sample(questions: Path, count: int | None, out: Path) -> Path:
    """`count` questions spread evenly over the file (every kind and file is reached), or all,
    taken kind by kind in turn, so a run stopped by --time-limit-s has asked every kind."""
    lines = [line for line in questions.read_text().splitlines() if line.strip()]
    count = min(count or len(lines), len(lines))
    step = len(lines) / count
    by_kind: dict[str, list[str]] = {}
    for line in (lines[int(i * step)] for i in range(count)):
        by_kind.setdefault(json.loads(line)["kind"], []).append(line)
    turns = zip_longest(*by_kind.values())
    out.write_text("".join(line + "\n" for turn in turns for line in turn if line))
    return out


def put_corpus(split: str, watched: Path) -> None:
    """The files the split's questions ask about, into the watched folder."""
    if split == "unseen":
        formats.write_folder(watched, formats.UNSEEN_SEED)
        return
    if split == "formats":
        shutil.copytree(REPORTS.parent / "formats", watched, dirs_exist_ok=True)
        return
    for log in sorted(LOGHUB.glob("*.log")):
        shutil.copy(log, watched)
    shutil.copytree(REPORTS, watched / "reports")


def run_setting(setting: dict, split: str, questions: Path, workdir: Path, top_k: int,
                max_new_tokens: int, time_limit_s: float | None) -> dict:
    folder = workdir / setting["name"]
    folder.mkdir()
    code = code_at(setting["code"], workdir) if setting["code"] else ROOT
    config = dict(setting["config"])
    with Kbd(folder, None, ingest=config.pop("ingest", None), extra=toml_tables(config)) as kbd:
        kbd.env["PYTHONPATH"] = str(code)
        put_corpus(split, kbd.watched)
        files = sum(path.is_file() for path in kbd.watched.rglob("*"))
        start = time.perf_counter()
        kbd.start()

        def ready() -> bool:
            status = kbd.status()
            # a user's store is asked once its vectors are in: embedding would share the CPU
            return (status["documents"].get("ready") == files and status["model"] == "ready"
                    and not status.get("dense_backlog"))

        wait_for(ready, timeout=READY_TIMEOUT_S, tolerate=(KbdError,),
                 what=f"{files} files stored, the model loaded and the passages embedded")
        ready_s = time.perf_counter() - start
        out = folder / "eval.json"
        command = [sys.executable, "-m", "kbd", "-v", "eval", str(questions), "--data-root",
                   str(kbd.watched), "--top-k", str(top_k), "--json", str(out),
                   *(["--max-new-tokens", str(max_new_tokens)] if max_new_tokens else [])]
        try:
            done = subprocess.run(command, env=kbd.env | {"PYTHONPATH": str(ROOT)},
                                  capture_output=True, text=True, timeout=time_limit_s)
        except subprocess.TimeoutExpired:  # kbd eval rewrites --json after every question
            done = None
        kbd.stop()
    if done is not None and done.returncode != 0:
        raise SystemExit(f"{setting['name']}: kbd eval failed:\n{done.stderr[-3000:]}")
    if not out.exists():
        raise SystemExit(f"{setting['name']}: no question answered within {time_limit_s} s")
    figures = json.loads(out.read_text())
    print(f"== {setting['name']}", json.dumps(figures["overall"]), flush=True)
    return setting | {"ready_s": ready_s, "complete": done is not None,
                      "overall": figures["overall"], "by_kind": figures["by_kind"],
                      "questions": figures["questions"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--split", choices=["dev", "heldout", "probes", "unseen", "formats"],
                        default="dev",
                        help="probes: questions the team wrote over the same files after the "
                             "rules, to find what the splits do not ask; unseen: questions "
                             "written over train/formats.py's files; formats: over "
                             "bench/qa/formats/ (all three tuned on, as dev is)")
    parser.add_argument("--sample", type=int, help="Only N questions spread over the split.")
    parser.add_argument("--settings", default=",".join(s["name"] for s in SETTINGS),
                        help="Comma-separated names of the settings to run, in order.")
    parser.add_argument("--top-k", type=int, default=5)
    parser.add_argument("--max-new-tokens", type=int,
                        help="Sent with every question; else each engine's own default.")
    parser.add_argument("--time-limit-s", type=float,
                        help="Stop each setting's questions after this long; its row then "
                             "holds the questions answered so far (complete: false).")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "answers.json")
    parser.add_argument("--before", metavar="COMMIT",
                        help="Add a setting `before`: the defaults of kbd at COMMIT (a change's "
                             "parent, to judge the change in the same run).")
    args = parser.parse_args()
    out = args.out.resolve()  # before the working folder moves to a temporary one (below)
    by_name = {s["name"]: s for s in SETTINGS}
    if args.before:
        by_name["before"] = by_name["current"] | {"name": "before", "code": args.before}
    chosen = [by_name[name] for name in args.settings.split(",")]
    results = {"setting": {
        "python": platform.python_version(), "machine": platform.machine(),
        "cpus": os.cpu_count(), "load_average_at_start": os.getloadavg(),
        "split": args.split, "sample": args.sample, "top_k": args.top_k,
        "max_new_tokens": args.max_new_tokens, "time_limit_s": args.time_limit_s,
        "commit": subprocess.run(["git", "-C", str(ROOT), "rev-parse", "HEAD"],
                                 capture_output=True, text=True).stdout.strip()},
        "rows": []}
    with tempfile.TemporaryDirectory(prefix="kbd-answers-") as tmp:
        workdir = Path(tmp)
        # `python -m kbd` puts its working folder first on sys.path: from this tree's root, every
        # setting's daemon would import this tree's kbd, whatever its PYTHONPATH names
        os.chdir(workdir)
        questions = sample(ROOT / "bench" / "qa" / f"{args.split}.jsonl", args.sample,
                           workdir / "questions.jsonl")
        for setting in chosen:
            results["rows"].append(run_setting(setting, args.split, questions, workdir, args.top_k,
                                               args.max_new_tokens, args.time_limit_s))
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=1, ensure_ascii=False))
    for row in results["rows"]:
        print(row["name"], json.dumps(row["overall"]))


if __name__ == "__main__":
    main()
