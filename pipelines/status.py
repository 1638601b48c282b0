"""A summary of what is stored: rows per raw table and as_of, quarantined rows, snapshot counts."""

from __future__ import annotations

from typing import Any

from pipelines.db import Database, _as_date


def _iso(value: Any) -> str:
    return _as_date(value).isoformat()


def collect_status(db: Database) -> dict[str, Any]:
    """The stored state as plain JSON-able values (the same dict the CLI prints or emits with ``--json``)."""
    months = [m.isoformat() for m in db.months()]
    tables: dict[str, dict[str, int]] = {}
    quarantined: dict[str, int] = {}
    for row in db.table_counts().itertuples(index=False):
        if row.table_name == "quarantine":
            quarantined[_iso(row.as_of)] = int(row.rows)
            continue
        per = tables.setdefault(row.table_name, {})
        if row.as_of is None or str(row.as_of) in ("NaT", "None", "nan"):
            per["all"] = int(row.rows)  # users: one row per user whatever the month
        else:
            per[_iso(row.as_of)] = int(row.rows)
    snapshots: dict[str, dict[str, int]] = {}
    for row in db.snapshot_counts().itertuples(index=False):
        snapshots.setdefault(row.table_name, {})[_iso(row.as_of)] = int(row.rows)
    snapshot_as_of = sorted({m for per in snapshots.values() for m in per})
    return {
        "months": months,
        "tables": tables,
        "quarantined": sum(quarantined.values()),
        "quarantined_by_as_of": quarantined,
        "snapshots": snapshots,
        "snapshot_as_of": snapshot_as_of,
    }
