"""Ingest + validate + snapshot of one generated month (six CSV files), timed inside a fresh process."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

from bench.harness import WORK, data, markdown, run_self


def _child_ingest(month: str, home: str) -> None:
    """Runs in a fresh process: time ingest and snapshot in-process (imports excluded), print JSON."""
    from datetime import date

    from pipelines.config import Settings
    from pipelines.db import connect
    from pipelines.ingest import ingest_month
    from pipelines.snapshot import take_snapshot

    settings = Settings(home=Path(home), db_url=None)
    db = connect(settings)
    start = time.perf_counter()
    result = ingest_month(db, settings, Path(month), date(2024, 1, 31))
    ingested = time.perf_counter()
    take_snapshot(db, date(2024, 1, 31))
    done = time.perf_counter()
    db.close()
    print(json.dumps({"ingest_validate_s": ingested - start, "snapshot_s": done - ingested, "rows": result.input_rows}))


def bench_ingest(sizes: list[int]) -> dict:
    rows = []
    for users in sizes:
        month = data(users)
        home = WORK / f"home-{users}"
        shutil.rmtree(home, ignore_errors=True)
        child, wall, peak_mib = run_self("_child-ingest", str(month), str(home))
        work = child["ingest_validate_s"] + child["snapshot_s"]
        rows.append(
            {
                "users": users,
                "csv_rows": child["rows"],
                "ingest_validate_s": round(child["ingest_validate_s"], 2),
                "snapshot_s": round(child["snapshot_s"], 2),
                "total_s": round(work, 2),
                "process_wall_s": round(wall, 2),
                "peak_rss_mib": round(peak_mib),
                "rows_per_s": round(child["rows"] / work),
            }
        )
        print(f"ingest {users:>9,} users: {rows[-1]}", flush=True)
        shutil.rmtree(home, ignore_errors=True)
    return {
        "name": "ingest",
        "backend": "embedded (DuckDB + parquet snapshots)",
        "what": "one month folder (six CSVs): streamflow ingest + snapshot, timed in-process; "
        "peak RSS of the whole process (imports included)",
        "results": rows,
    }


def ingest_table(result: dict) -> str:
    header = ["users", "CSV rows", "ingest + validate (s)", "snapshot (s)", "total (s)", "peak RSS (MiB)", "rows/s"]
    rows = [
        [f"{r['users']:,}", f"{r['csv_rows']:,}", r["ingest_validate_s"], r["snapshot_s"], r["total_s"],
         f"{r['peak_rss_mib']:,}", f"{r['rows_per_s']:,}"]
        for r in result["results"]
    ]  # fmt: skip
    return markdown(header, "rrrrrrr", rows)


CHILDREN = {"_child-ingest": _child_ingest}
BENCH = (bench_ingest, ingest_table, [7043, 100_000, 1_000_000])
