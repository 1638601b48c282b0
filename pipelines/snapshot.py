"""``streamflow snapshot``: freeze one ingested month into the four ``*_snapshots`` tables.

A snapshot of as_of D is built from month D's raw rows only, so re-running it gives the same rows and ingesting a
later month never changes it. Labels are already stored per as_of in ``labels`` and need no copy.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date

from pipelines.db import Database
from pipelines.errors import NotFound


@dataclass
class SnapshotResult:
    as_of: date
    rows: dict[str, int]

    def to_json(self) -> dict:
        return {"as_of": self.as_of.isoformat(), "rows": self.rows}


def take_snapshot(db: Database, as_of: date) -> SnapshotResult:
    """Freeze month ``as_of``.

    Raises:
        NotFound: no month with that as_of was ingested (names the months that were).
    """
    months = db.months()
    if as_of not in months:
        known = ", ".join(m.isoformat() for m in months) or "none yet"
        raise NotFound(
            f"no ingested month has as_of {as_of.isoformat()} (ingested: {known}); run `streamflow ingest` first"
        )
    return SnapshotResult(as_of, db.write_snapshot(as_of))
