"""Write the benchmark's questions (bench/qa/dev.jsonl and bench/qa/heldout.jsonl) from the
specs below, finding each gold line in the data and checking it.

    python bench/qa/make_questions.py [--data /work/shared/data/loghub]

A spec says what a question asks, which lines answer it (a regex found in the file: the only
line it matches, or the first, last or all of them) and the answer's key (literal text). The
script refuses a spec whose regex finds no line or more lines than it says, whose accepted
answer is not on its gold lines, and an unanswerable question whose look-alike terms occur
anywhere in the data. Every fourth question of each kind is held out. Families ask the same
thing of each entity a log names only once (an invalid user, a broadcast variable, ...); the
rest are written one by one.
"""

from __future__ import annotations

import argparse
import json
import re
from dataclasses import dataclass, field
from pathlib import Path

from pypdf import PdfReader
from questions_spec import write_specs  # bench/qa/, the script's folder

HERE = Path(__file__).resolve().parent
LOGHUB = HERE.parents[2] / "shared" / "data" / "loghub"
HELDOUT_SHARE = 4  # one question in four of each kind is held out


@dataclass
class Spec:
    kind: str
    question: str
    file: str
    find: list[str]  # one regex per gold line group
    accept: list[str]  # literal answer keys, case-insensitive
    pick: str = "only"  # only | first | last | all
    mode: str = "any"
    count: int | None = None  # count questions: how many lines `find` must match


@dataclass
class Unanswerable:
    question: str
    absent: list[str]  # regexes that must occur nowhere in the data
    kind: str = field(default="unanswerable")


SPECS: list[Spec | Unanswerable] = []


def q(kind: str, question: str, file: str, find: str | list[str], accept: str | list[str],
      **options) -> None:
    SPECS.append(Spec(kind, question, file, [find] if isinstance(find, str) else find,
                      [accept] if isinstance(accept, str) else accept, **options))


def no(question: str, *absent: str) -> None:
    SPECS.append(Unanswerable(question, list(absent)))


# -- data --------------------------------------------------------------------------------------

class Data:
    def __init__(self, loghub: Path):
        self.files = {p.name: p.read_text().splitlines() for p in sorted(loghub.glob("*.log"))}
        reports = HERE / "reports"
        for path in sorted(reports.iterdir()):
            if path.suffix == ".pdf":
                self.files[f"reports/{path.name}"] = [
                    page.extract_text() for page in PdfReader(path).pages]  # a page a "line"
            else:
                self.files[f"reports/{path.name}"] = path.read_text().splitlines()

    def matches(self, file: str, pattern: str) -> list[int]:
        regex = re.compile(pattern)
        return [n for n, line in enumerate(self.files[file], 1) if regex.search(line)]

    def anywhere(self, pattern: str) -> list[str]:
        regex = re.compile(pattern, re.IGNORECASE)
        return [f"{name}:{n}" for name, lines in self.files.items()
                for n, line in enumerate(lines, 1) if regex.search(line)]


def gold_lines(data: Data, spec: Spec) -> list[int]:
    lines = []
    for pattern in spec.find:
        found = data.matches(spec.file, pattern)
        if not found:
            raise SystemExit(f"{spec.question!r}: {pattern!r} finds no line of {spec.file}")
        if spec.pick == "only" and len(found) > 1:
            raise SystemExit(f"{spec.question!r}: {pattern!r} finds {len(found)} lines "
                             f"({found[:5]}...), not one")
        if spec.count is not None and len(found) != spec.count:
            raise SystemExit(f"{spec.question!r}: {pattern!r} finds {len(found)} lines, "
                             f"not {spec.count}")
        lines += {"first": found[:1], "last": found[-1:]}.get(spec.pick, found)
    return sorted(set(lines))


def ranges(lines: list[int]) -> list[list[int]]:
    out: list[list[int]] = []
    for line in lines:
        if out and line == out[-1][1] + 1:
            out[-1][1] = line
        else:
            out.append([line, line])
    return out


def record(data: Data, spec: Spec | Unanswerable) -> dict:
    base = {"question": spec.question, "kind": spec.kind}
    if isinstance(spec, Unanswerable):
        for pattern in spec.absent:
            if found := data.anywhere(pattern):
                raise SystemExit(f"{spec.question!r} is answerable: {pattern!r} at {found[:3]}")
        return base | {"gold": [], "accept": [], "accept_mode": "any", "answerable": False}
    lines = gold_lines(data, spec)
    text = "\n".join(data.files[spec.file][n - 1] for n in lines)
    accept = [literal(a) for a in spec.accept]
    if spec.kind != "count":  # a count is not written on the lines it counts
        unseen = [a for a in spec.accept if a.lower() not in text.lower()]
        if unseen and (spec.mode == "all" or len(unseen) == len(spec.accept)):
            raise SystemExit(f"{spec.question!r}: {unseen} not on its gold lines {lines}")
    if spec.file.endswith(".pdf"):
        gold = [{"file": spec.file, "page": n} for n in lines]
    else:
        gold = [{"file": spec.file, "lines": r} for r in ranges(lines)]
    return base | {"gold": gold, "accept": accept, "accept_mode": spec.mode, "answerable": True}


def literal(answer: str) -> str:
    """A regex of the answer as a whole token: "11" is not found inside "1125"."""
    before = r"(?<![\w.])" if re.match(r"\w", answer) else ""
    after = r"(?![\w])" if re.search(r"\w$", answer) else ""
    return before + re.escape(answer) + after


def split_of(spec: Spec | Unanswerable, seen: dict[str, int]) -> str:
    """Every fourth question of each kind is held out, so both splits hold every kind in
    the same shares."""
    seen[spec.kind] = seen.get(spec.kind, 0) + 1
    return "heldout" if seen[spec.kind] % HELDOUT_SHARE == 0 else "dev"


PREFIX = {"HDFS_2k.log": "hdfs", "Hadoop_2k.log": "hadoop", "Spark_2k.log": "spark",
          "Apache_2k.log": "apache", "Linux_2k.log": "linux", "OpenSSH_2k.log": "ssh"}


def question_id(spec: Spec | Unanswerable, counters: dict[str, int]) -> str:
    prefix = "none" if isinstance(spec, Unanswerable) else PREFIX.get(spec.file, "report")
    counters[prefix] = counters.get(prefix, 0) + 1
    return f"{prefix}-{counters[prefix]:03d}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=LOGHUB)
    args = parser.parse_args()
    data = Data(args.data)
    write_specs(data, q, no)
    texts = [s.question for s in SPECS]
    if dupes := {t for t in texts if texts.count(t) > 1}:
        raise SystemExit(f"questions asked twice: {dupes}")
    counters: dict[str, int] = {}
    out = {"dev": [], "heldout": []}
    problems, seen = [], {}
    for spec in SPECS:
        split = split_of(spec, seen)
        try:
            out[split].append({"id": question_id(spec, counters), "split": split}
                              | record(data, spec))
        except SystemExit as problem:
            problems.append(str(problem))
    if problems:
        raise SystemExit("\n".join(problems))
    for split, rows in out.items():
        path = HERE / f"{split}.jsonl"
        path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
        kinds: dict[str, int] = {}
        for r in rows:
            kinds[r["kind"]] = kinds.get(r["kind"], 0) + 1
        print(f"{path.name}: {len(rows)} questions, {kinds}")

if __name__ == "__main__":
    main()
