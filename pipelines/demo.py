"""``streamflow demo``: the main job on the embedded default, from an empty ``STREAMFLOW_HOME``."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from pipelines.config import Settings
from pipelines.db import connect
from pipelines.generate import generate
from pipelines.ingest import ingest_month
from pipelines.months import infer_as_of
from pipelines.snapshot import take_snapshot
from pipelines.status import collect_status


def run_demo(settings: Settings, *, users: int, months: int, seed: int, log: Callable[[str], None]) -> dict[str, Any]:
    """Generate ``months`` month folders under ``STREAMFLOW_HOME/data``, ingest and snapshot each.

    Returns:
        The stored state (:func:`pipelines.status.collect_status`) after the run.
    """
    data_dir = settings.home / "data"
    log(f"generating {months} month(s) of {users:,} users into {data_dir}")
    generated = generate(data_dir, users=users, months=months, seed=seed)
    db = connect(settings)
    try:
        for month in generated.months:
            as_of = infer_as_of(month.folder)
            result = ingest_month(db, settings, month.folder, as_of)
            log(f"ingested {month.folder.name}: {result.loaded:,} rows loaded, {result.quarantined:,} quarantined")
            snap = take_snapshot(db, as_of)
            log(f"snapshot as_of {as_of}: {sum(snap.rows.values()):,} rows in {len(snap.rows)} tables")
        return collect_status(db)
    finally:
        db.close()
