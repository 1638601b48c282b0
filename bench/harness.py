"""What every benchmark shares: child processes, generated data, markdown tables, results and the README update.

A benchmark module (``bench/ingest.py``, …) holds its ``bench_*`` function, the ``_child_*`` entry points its child
processes run and its README table; it exports ``BENCH = (bench_fn, table_fn, default_sizes)`` and ``CHILDREN``
(``{"_child-name": fn}``). ``bench/run.py`` gathers them and calls :func:`main`. Children are started as
``python bench/run.py _child-name ARG ARG``, so a child imports only what its entry point needs.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
WORK = ROOT / "bench" / ".work"
RESULTS = ROOT / "bench" / "results"
RUN = ROOT / "bench" / "run.py"
STREAMFLOW = str(Path(sys.executable).parent / "streamflow")

Bench = tuple[Callable[[list[int]], dict], Callable[[dict], str], list[int]]


def run_child(args: list[str]) -> tuple[str, float, float]:
    """Run a command; return (stdout, wall seconds, peak RSS in MiB of that child alone)."""
    start = time.perf_counter()
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, text=True)
    out = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(args)} failed with exit code {proc.returncode}")
    return out, time.perf_counter() - start, usage.ru_maxrss / 1024


def run_self(*args: str) -> tuple[dict, float, float]:
    """Run one of the ``_child-*`` entry points (``bench/run.py _child-name …``); return (its last JSON line, wall
    seconds, peak RSS MiB)."""
    out, wall, peak = run_child([sys.executable, str(RUN), *args])
    return json.loads(out.strip().splitlines()[-1]), wall, peak


def data(users: int) -> Path:
    """One generated month (``WORK/data-<users>/month_000``, seed 11), generated once through the CLI."""
    out = WORK / f"data-{users}"
    if not (out / "month_000" / "labels.csv").exists():
        shutil.rmtree(out, ignore_errors=True)
        subprocess.run(
            [
                STREAMFLOW,
                "data",
                "generate",
                "--out",
                str(out),
                "--users",
                str(users),
                "--months",
                "1",
                "--seed",
                "11",
                "--json",
            ],
            check=True,
            stdout=subprocess.DEVNULL,
        )
    return out / "month_000"


def prepared(users: str, home: str):
    """One generated month ingested, snapshotted and applied in Feast; returns (settings, db, store, as_of)."""
    from datetime import date

    from pipelines.config import Settings
    from pipelines.db import connect
    from pipelines.features import apply_repo
    from pipelines.ingest import ingest_month
    from pipelines.online import open_store
    from pipelines.snapshot import take_snapshot

    as_of = date(2024, 1, 31)
    settings = Settings(home=Path(home), db_url=None)
    db = connect(settings)
    ingest_month(db, settings, data(int(users)), as_of)
    take_snapshot(db, as_of)
    apply_repo(settings)
    return settings, db, open_store(settings), as_of


def markdown(header: list[str], align: str, rows: list[list[object]]) -> str:
    """A markdown table; ``align`` has one character per column: l (left) or r (right)."""
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" if a == "l" else "---:" for a in align) + "|"]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def machine() -> dict:
    return {"cpus": os.cpu_count(), "python": platform.python_version(), "machine": platform.machine()}


def update_readme(name: str, table: str) -> None:
    """Replace the table between the ``<!-- bench:<name> -->`` markers of the README (if they are there)."""
    readme = ROOT / "README.md"
    text = readme.read_text()
    pattern = re.compile(rf"(<!-- bench:{name} -->\n).*?(<!-- /bench:{name} -->)", re.S)
    if pattern.search(text):
        readme.write_text(pattern.sub(lambda m: m.group(1) + table + "\n" + m.group(2), text))


def write(name: str, result: dict, table: Callable[[dict], str]) -> None:
    """``bench/results/<name>.json`` and the README table."""
    (RESULTS / f"{name}.json").write_text(json.dumps(result, indent=2) + "\n")
    update_readme(name, table(result))


def main(benches: dict[str, Bench], children: dict[str, Callable[..., None]], description: str | None) -> None:
    """A child's entry point (``_child-name ARG ARG``), or the benchmarks chosen on the command line."""
    if len(sys.argv) == 4 and sys.argv[1] in children:
        children[sys.argv[1]](sys.argv[2], sys.argv[3])
        return
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--only", choices=sorted(benches), action="append")
    parser.add_argument("--sizes", type=int, nargs="+", help="override the sizes of the chosen benchmarks")
    parser.add_argument("--readme-only", action="store_true", help="rewrite the README tables from bench/results")
    parser.add_argument(
        "--no-write", action="store_true", help="print the results instead of writing bench/results and the README"
    )
    args = parser.parse_args()
    RESULTS.mkdir(parents=True, exist_ok=True)
    if args.readme_only:
        for name in args.only or sorted(benches):
            if (RESULTS / f"{name}.json").exists():
                update_readme(name, benches[name][1](json.loads((RESULTS / f"{name}.json").read_text())))
        return
    for name in args.only or sorted(benches):
        fn, table, sizes = benches[name]
        result = fn(args.sizes or sizes)
        result.update(machine=machine(), measured_at=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
        if args.no_write:
            print(json.dumps(result, indent=2), table(result), sep="\n", flush=True)
        else:
            write(name, result, table)
