"""A summary of what is stored: rows per raw table and as_of, quarantined rows, snapshot counts, and the as_of
each feature view of the online store holds (a materialize killed half-way leaves them disagreeing)."""

from __future__ import annotations

from typing import Any

from pipelines.config import Settings
from pipelines.db import Database, _as_date


def _iso(value: Any) -> str:
    return _as_date(value).isoformat()


def online_status(settings: Settings) -> dict[str, Any]:
    """The newest as_of materialized into each feature view of the FeatureService, read from the Feast registry.

    ``{"views": {view: "YYYY-MM-DD" | None}, "consistent": bool, "as_of": the common as_of or None}``; the views
    are consistent when they all hold the same as_of (a materialize that died after some views is not). Nothing is
    created: before ``features apply`` the answer says so and names no view.
    """
    from pipelines.errors import NotFound
    from pipelines.online import feature_service, newest_materialized, open_store

    if not settings.is_postgres and not (settings.home / "feast" / "registry.db").is_file():
        return {"views": {}, "consistent": True, "as_of": None, "note": "feature repo not applied yet"}
    store = open_store(settings)
    try:
        service = feature_service(store, settings)
    except NotFound:
        return {"views": {}, "consistent": True, "as_of": None, "note": "feature repo not applied yet"}
    views: dict[str, str | None] = {}
    for projection in service.feature_view_projections:
        newest = newest_materialized(store.get_feature_view(projection.name))
        views[projection.name] = newest.date().isoformat() if newest is not None else None
    held = set(views.values())
    consistent = len(held) <= 1
    return {"views": views, "consistent": consistent, "as_of": held.pop() if consistent and held else None}


def collect_status(db: Database, settings: Settings | None = None) -> dict[str, Any]:
    """The stored state as plain JSON-able values (the same dict the CLI prints or emits with ``--json``); with
    ``settings``, also the online store's as_of per feature view (:func:`online_status`)."""
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
        **({"online": online_status(settings)} if settings is not None else {}),
    }
