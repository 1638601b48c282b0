"""Feast on the snapshots: ``streamflow features apply``, ``features materialize`` and ``dataset build``.

The Feast repo is ``feature_repo/`` (definitions in ``features.py``); opening the store and the online lookup the
transformer uses live in :mod:`pipelines.online`, which the servers import without this stage.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import sys
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, redirect_stdout
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import pandas as pd

from pipelines.config import Settings
from pipelines.db import Database
from pipelines.errors import NotFound, StreamflowError
from pipelines.online import feature_names, feature_service, null_rules, open_store

log = logging.getLogger(__name__)


def as_of_timestamp(as_of: date) -> datetime:
    """The event timestamp of a snapshot: the as_of at 00:00 UTC (see docs/architecture.md)."""
    return datetime(as_of.year, as_of.month, as_of.day, tzinfo=UTC)


@contextmanager
def _importable(repo: Path) -> Iterator[None]:
    """Let Feast's ``parse_repo`` import the repo's modules fresh (it imports by path relative to the cwd)."""

    def forget_repo_modules() -> None:
        for name in [n for n, m in sys.modules.items() if str(getattr(m, "__file__", "") or "").startswith(str(repo))]:
            sys.modules.pop(name)

    before_cwd, before_path = os.getcwd(), list(sys.path)
    forget_repo_modules()
    os.chdir(repo)
    sys.path.insert(0, str(repo))
    try:
        yield
    finally:
        os.chdir(before_cwd)
        sys.path[:] = before_path
        forget_repo_modules()


@dataclass
class ApplyResult:
    entities: list[str]
    feature_views: list[str]
    feature_services: list[str]
    features: list[str]

    def to_json(self) -> dict[str, Any]:
        return self.__dict__ | {"feature_count": len(self.features)}


def apply_repo(settings: Settings) -> ApplyResult:
    """Register the repo's definitions in the Feast registry (what ``feast apply`` does), idempotently."""
    from feast.repo_operations import parse_repo

    store = open_store(settings)
    repo = settings.feature_repo.resolve()
    with _importable(repo):
        contents = parse_repo(repo)
    objects = [*contents.data_sources, *contents.entities, *contents.feature_views, *contents.feature_services]
    store.apply(objects)
    service = store.get_feature_service(settings.feature_service)
    return ApplyResult(
        entities=sorted(e.name for e in contents.entities if not e.name.startswith("__")),
        feature_views=sorted(v.name for v in contents.feature_views),
        feature_services=sorted(s.name for s in contents.feature_services),
        features=feature_names(service),
    )


def _require_snapshot(db: Database, as_of: date) -> None:
    counts = db.snapshot_counts()
    taken = sorted({pd.Timestamp(v).date() for v in counts["as_of"]}) if len(counts) else []
    if as_of not in taken:
        known = ", ".join(d.isoformat() for d in taken) or "none yet"
        raise NotFound(
            f"no snapshot for as_of {as_of.isoformat()} (snapshots: {known}); "
            f"run `streamflow snapshot --as-of {as_of.isoformat()}` first"
        )


# ------------------------------------------------------------------------------------------------ materialize


@dataclass
class MaterializeResult:
    as_of: date
    feature_views: list[str]
    skipped: str | None = None
    dropped_users: int = 0  # users of an earlier materialization of this as_of its snapshot no longer holds: blanked

    def to_json(self) -> dict[str, Any]:
        return {
            "as_of": self.as_of.isoformat(),
            "feature_views": self.feature_views,
            "skipped": self.skipped,
            "dropped_users": self.dropped_users,
        }


def materialize(settings: Settings, db: Database, as_of: date, store=None) -> MaterializeResult:
    """Load the snapshot of ``as_of`` into the online store.

    Incremental and idempotent: the window is exactly that snapshot; materializing it again writes the same
    values; an as_of older than what the online store already holds is skipped, so the online store never goes
    back in time. Users an earlier materialization of the same as_of wrote and its snapshot no longer holds (a
    corrected re-ingest dropped them) get blank rows: they read as missing, like unknown users.

    Raises:
        NotFound: the snapshot does not exist, or the repo was never applied.
    """
    _require_snapshot(db, as_of)
    store = store or open_store(settings)
    service = feature_service(store, settings)
    views = [store.get_feature_view(p.name) for p in service.feature_view_projections]
    start = as_of_timestamp(as_of)
    end = start + timedelta(days=1)
    newest = max((v.most_recent_end_time for v in views if v.most_recent_end_time), default=None)
    if newest is not None and newest.astimezone(UTC) > end:
        held = (newest.astimezone(UTC) - timedelta(days=1)).date()
        skipped = f"online store already holds a newer as_of ({held}); nothing done"
        return MaterializeResult(as_of, [], skipped=skipped)
    # Feast prints progress (stdout belongs to the CLI's summary or JSON); its dask engine warns about a pandas
    # deprecation on every view
    with redirect_stdout(sys.stderr), warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=FutureWarning, module=r"dask\.")
        store.materialize(start_date=start, end_date=end, feature_views=[v.name for v in views])
    current = db.snapshot_user_ids(as_of)
    dropped = db.online_users(as_of).difference(current)
    if len(dropped):
        _blank_rows(store, views, dropped, start)
    db.record_online_users(as_of, current)  # last: a run that dies before it blanks the same users again
    return MaterializeResult(as_of, [v.name for v in views], dropped_users=len(dropped))


def _blank_rows(store, views, user_ids: pd.Index, stamp: datetime) -> None:
    """Overwrite the online rows of ``user_ids`` with NULL features stamped ``stamp``: the online store has no
    per-key delete, and a row as new as the month's cannot be told stale by its timestamp, so these users (dropped
    from the month by a corrected re-ingest) read as missing rows, like unknown users."""
    provider = store._get_provider()  # write_to_online_store refuses all-NULL rows; its provider writes them as is
    for view in views:
        frame = pd.DataFrame({key: list(user_ids) for key in view.join_keys})
        frame[view.batch_source.timestamp_field] = stamp
        for feature in view.features:
            frame[feature.name] = pd.Series([None] * len(user_ids), dtype=object)
        provider.ingest_df(view, frame)


# ------------------------------------------------------------------------------------------------ training set


def _missing_mask(frame: pd.DataFrame, names: Sequence[str], service) -> pd.DataFrame:
    """True where a feature is missing; a NULL the data contract allows is not missing."""
    mask = frame[list(names)].isna()
    for feature, (column, value) in null_rules(service).items():
        if feature in mask and column in frame:
            mask[feature] &= frame[column].astype(object).ne(value).to_numpy()
    return mask


@dataclass
class DatasetResult:
    as_of: date
    path: Path
    manifest_path: Path
    manifest: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "as_of": self.as_of.isoformat(),
            "rows": self.manifest["rows"],
            "label_rate": self.manifest["label_rate"],
            "path": str(self.path),
            "manifest": str(self.manifest_path),
            "content_sha256": self.manifest["content_sha256"],
        }


def content_hash(frame: pd.DataFrame) -> str:
    """A hash of the rows and columns of a frame, independent of how it was written to disk."""
    digest = hashlib.sha256()
    digest.update(json.dumps([str(c) for c in frame.columns]).encode())
    digest.update(pd.util.hash_pandas_object(frame, index=False).to_numpy().tobytes())
    return digest.hexdigest()


def build_dataset(settings: Settings, db: Database, as_of: date, store=None) -> DatasetResult:
    """The training set of ``as_of``: that month's labelled users, their features as of ``as_of`` through
    ``get_historical_features`` (point-in-time correct), and their ``churn_label`` of the same month.

    Raises:
        NotFound: no snapshot or no labels for ``as_of``, or the repo was never applied.
    """
    _require_snapshot(db, as_of)
    labels = db.query("SELECT user_id, churn_label FROM labels WHERE as_of = ? ORDER BY user_id", (as_of,))
    if labels.empty:
        raise NotFound(f"no labels stored for as_of {as_of.isoformat()}; ingest that month first")
    store = store or open_store(settings)
    service = feature_service(store, settings)
    names = feature_names(service)
    entity_df = pd.DataFrame({"user_id": labels["user_id"], "event_timestamp": as_of_timestamp(as_of)})
    joined = store.get_historical_features(entity_df=entity_df, features=service).to_df()
    frame = (
        joined.drop(columns=["event_timestamp"])
        .merge(labels.astype({"churn_label": "int64"}), on="user_id", how="inner", validate="one_to_one")
        .sort_values("user_id", kind="stable")
        .reset_index(drop=True)
    )[["user_id", *names, "churn_label"]]
    if len(frame) != len(labels):
        raise StreamflowError(f"training set for {as_of}: {len(frame)} rows for {len(labels)} labelled users")
    folder = settings.datasets_dir / as_of.isoformat()
    folder.mkdir(parents=True, exist_ok=True)
    path, manifest_path = folder / "training.parquet", folder / "manifest.json"
    tmp = path.with_suffix(".parquet.tmp")
    frame.to_parquet(tmp, index=False)
    os.replace(tmp, path)
    missing = _missing_mask(frame, names, service)
    manifest = {
        "as_of": as_of.isoformat(),
        "rows": len(frame),
        "label_rate": round(float(frame["churn_label"].mean()), 6),
        "feature_service": service.name,
        "features": names,
        "label": "churn_label",
        "rows_with_missing_features": int(missing.any(axis=1).sum()),
        "content_sha256": content_hash(frame),
        "path": str(path),
    }
    manifest_path.write_text(json.dumps(manifest, indent=2) + "\n")
    return DatasetResult(as_of, path, manifest_path, manifest)
