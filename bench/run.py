"""StreamFlow benchmarks: `make bench` (or `python bench/run.py --only ingest --sizes 7043 100000`).

Each benchmark runs the real CLI in a child process on a fresh STREAMFLOW_HOME and measures wall time and the
child's peak resident memory (``wait4`` rusage). Results go to ``bench/results/<name>.json`` and to the table
between the ``<!-- bench:<name> -->`` markers of the README.
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
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
WORK = ROOT / "bench" / ".work"
RESULTS = ROOT / "bench" / "results"
STREAMFLOW = str(Path(sys.executable).parent / "streamflow")


def timed(args: list[str], env: dict[str, str]) -> tuple[float, float]:
    """Run a command; return (seconds, peak RSS in MiB) of that child alone."""
    start = time.perf_counter()
    proc = subprocess.Popen(args, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    seconds = time.perf_counter() - start
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"{' '.join(args)} failed: {proc.stderr.read().decode()[-2000:]}")
    return seconds, usage.ru_maxrss / 1024


def _data(users: int) -> Path:
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


def bench_ingest(sizes: list[int]) -> dict:
    rows = []
    for users in sizes:
        month = _data(users)
        home = WORK / f"home-{users}"
        shutil.rmtree(home, ignore_errors=True)
        env = {**os.environ, "STREAMFLOW_HOME": str(home), "STREAMFLOW_DB_URL": ""}
        ingest_s, ingest_mib = timed([STREAMFLOW, "ingest", str(month), "--json"], env)
        snap_s, snap_mib = timed([STREAMFLOW, "snapshot", "--as-of", "2024-01-31", "--json"], env)
        csv_rows = sum(sum(1 for _ in open(p)) - 1 for p in month.glob("*.csv"))
        rows.append(
            {
                "users": users,
                "csv_rows": csv_rows,
                "ingest_validate_s": round(ingest_s, 2),
                "snapshot_s": round(snap_s, 2),
                "total_s": round(ingest_s + snap_s, 2),
                "peak_rss_mib": round(max(ingest_mib, snap_mib)),
                "rows_per_s": round(csv_rows / (ingest_s + snap_s)),
            }
        )
        print(f"ingest {users:>9,} users: {rows[-1]}", flush=True)
        shutil.rmtree(home, ignore_errors=True)
    return {"name": "ingest", "backend": "embedded (DuckDB + parquet snapshots)", "results": rows}


def _machine() -> dict:
    return {"cpus": os.cpu_count(), "python": platform.python_version(), "machine": platform.machine()}


def _readme_table(result: dict) -> str:
    lines = [
        "| users | CSV rows | ingest + validate (s) | snapshot (s) | total (s) | peak RSS (MiB) | rows/s |",
        "|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in result["results"]:
        lines.append(
            f"| {r['users']:,} | {r['csv_rows']:,} | {r['ingest_validate_s']} | {r['snapshot_s']} | "
            f"{r['total_s']} | {r['peak_rss_mib']:,} | {r['rows_per_s']:,} |"
        )
    return "\n".join(lines)


def _update_readme(name: str, table: str) -> None:
    readme = ROOT / "README.md"
    text = readme.read_text()
    pattern = re.compile(rf"(<!-- bench:{name} -->\n).*?(\n<!-- /bench:{name} -->)", re.S)
    if pattern.search(text):
        readme.write_text(pattern.sub(lambda m: m.group(1) + table + m.group(2), text))


BENCHES = {"ingest": (bench_ingest, _readme_table, [7043, 100_000, 1_000_000])}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--only", choices=sorted(BENCHES), action="append")
    parser.add_argument("--sizes", type=int, nargs="+", help="override the sizes of the chosen benchmarks")
    args = parser.parse_args()
    RESULTS.mkdir(parents=True, exist_ok=True)
    for name in args.only or sorted(BENCHES):
        fn, table, sizes = BENCHES[name]
        result = fn(args.sizes or sizes)
        result.update(machine=_machine(), measured_at=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
        (RESULTS / f"{name}.json").write_text(json.dumps(result, indent=2) + "\n")
        _update_readme(name, table(result))


if __name__ == "__main__":
    main()
