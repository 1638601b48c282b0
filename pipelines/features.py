"""Feast on the snapshots: ``streamflow features apply``, ``features materialize``, ``dataset build``, and the
batched online lookup the transformer uses.

The Feast repo is ``feature_repo/`` (definitions in ``features.py``). Which ``feature_store*.yaml`` is used follows
the settings: ``feature_store.yaml`` on the embedded default, ``feature_store.postgres.yaml`` in Postgres mode.
Feast expands ``${VAR}`` in those files from the environment, so :func:`open_store` exports the few variables they
name (derived from the settings) before opening the store.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import sys
import threading
import time
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, redirect_stdout
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

import numpy as np
import pandas as pd

from pipelines.config import Settings
from pipelines.db import Database
from pipelines.errors import InvalidInput, NotFound, StreamflowError

log = logging.getLogger(__name__)

APPLY_HINT = "run `streamflow features apply` first"

# How often, at most, the online lookup asks the registry cache for newly materialized as_of (in a thread).
REGISTRY_CHECK_SECONDS = 1.0


def as_of_timestamp(as_of: date) -> datetime:
    """The event timestamp of a snapshot: the as_of at 00:00 UTC (see docs/architecture.md)."""
    return datetime(as_of.year, as_of.month, as_of.day, tzinfo=UTC)


def newest_materialized(view) -> datetime | None:
    """The event timestamp of the newest snapshot materialized into ``view``'s online table (None: never).

    Read from the materialization intervals Feast records on the feature view in the registry: :func:`materialize`
    loads one snapshot as the window ``[as_of, as_of + 1 day)``, so the start of the interval that ends last is the
    newest as_of's timestamp. Every user of that snapshot has a row stamped with it; a row stamped earlier belongs
    to a user the snapshot no longer holds (churned, or removed by a corrected re-ingest).
    """
    intervals = getattr(view, "materialization_intervals", None) or []
    if not intervals:
        return None
    start, _ = max(intervals, key=lambda interval: _utc(interval[1]))
    return _utc(start)


def _utc(moment: datetime) -> datetime:
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


def feast_env(settings: Settings) -> dict[str, str]:
    """Environment variables the Feast repo reads (definitions and ``${VAR}`` in feature_store*.yaml)."""
    env = {"STREAMFLOW_HOME": str(settings.home.resolve()), "STREAMFLOW_DB_URL": settings.db_url or ""}
    if settings.is_postgres:
        url = urlsplit(settings.database_url)
        query = parse_qs(url.query)
        env.update(
            STREAMFLOW_PG_HOST=url.hostname or "localhost",
            STREAMFLOW_PG_PORT=str(url.port or 5432),
            STREAMFLOW_PG_DB=url.path.lstrip("/") or "postgres",
            STREAMFLOW_PG_USER=unquote(url.username or ""),
            STREAMFLOW_PG_PASSWORD=unquote(url.password or ""),
            STREAMFLOW_PG_SSLMODE=query.get("sslmode", [settings.db_sslmode])[0],
        )
    return env


def _yaml_file(settings: Settings) -> Path:
    name = "feature_store.postgres.yaml" if settings.is_postgres else "feature_store.yaml"
    path = settings.feature_repo / name
    if not path.is_file():
        raise StreamflowError(f"Feast repo config {path} is missing (STREAMFLOW_FEATURE_REPO={settings.feature_repo})")
    return path


def open_store(settings: Settings):
    """One FeatureStore for the settings' storage mode (reuse it: opening one reads the registry)."""
    from feast import FeatureStore

    os.environ.update(feast_env(settings))
    (settings.home / "feast").mkdir(parents=True, exist_ok=True)
    return FeatureStore(repo_path=str(settings.feature_repo), fs_yaml_file=_yaml_file(settings))


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


def feature_names(service) -> list[str]:
    """The model's feature columns, in the FeatureService's order."""
    return [f.name for projection in service.feature_view_projections for f in projection.features]


def feature_service(store, settings: Settings):
    """The FeatureService the model reads; NotFound naming `streamflow features apply` when it is not registered."""
    from feast.errors import FeatureServiceNotFoundException

    try:
        return store.get_feature_service(settings.feature_service)
    except FeatureServiceNotFoundException:
        raise NotFound(
            f"the Feast registry has no feature service {settings.feature_service!r}: {APPLY_HINT}"
        ) from None


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

    def to_json(self) -> dict[str, Any]:
        return {"as_of": self.as_of.isoformat(), "feature_views": self.feature_views, "skipped": self.skipped}


def materialize(settings: Settings, db: Database, as_of: date, store=None) -> MaterializeResult:
    """Load the snapshot of ``as_of`` into the online store.

    Incremental and idempotent: the window is exactly that snapshot; materializing it again writes the same
    values; an as_of older than what the online store already holds is skipped, so the online store never goes
    back in time.

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
    return MaterializeResult(as_of, [v.name for v in views])


# ------------------------------------------------------------------------------------------------ training set


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


# ------------------------------------------------------------------------------------------------ online lookup


def _null_rules(service) -> dict[str, tuple[str, str]]:
    """Features whose NULL is a value under a condition, from the ``null_allowed_when: col=value`` field tag."""
    rules = {}
    for projection in service.feature_view_projections:
        for feat in projection.features:
            rule = (feat.tags or {}).get("null_allowed_when")
            if rule:
                column, _, value = rule.partition("=")
                rules[feat.name] = (column.strip(), value.strip())
    return rules


def _missing_mask(frame: pd.DataFrame, names: Sequence[str], service) -> pd.DataFrame:
    """True where a feature is missing; a NULL the data contract allows is not missing."""
    mask = frame[list(names)].isna()
    for feature, (column, value) in _null_rules(service).items():
        if feature in mask and column in frame:
            mask[feature] &= frame[column].astype(object).ne(value).to_numpy()
    return mask


@dataclass
class LookupResult:
    """Features for the requested users, in request order (duplicates kept)."""

    user_ids: list[str]
    columns: dict[str, list[Any]]  # feature -> one value per requested id (None: NULL or missing)
    missing: dict[str, list[str]]  # user_id -> features that are missing (unknown users: all of them)

    @property
    def complete(self) -> np.ndarray:
        return np.array([uid not in self.missing for uid in self.user_ids], dtype=bool)

    @property
    def features(self) -> pd.DataFrame:
        """One row per requested id, columns = the FeatureService's features."""
        return pd.DataFrame(self.columns)


def _stale(stamp: datetime | None, oldest_valid: datetime) -> bool:
    """A row stamped before ``oldest_valid`` (online stores answer UTC, naive or aware)."""
    if stamp is None:
        return True
    return (stamp if stamp.tzinfo is not None else stamp.replace(tzinfo=UTC)) < oldest_valid


def _proto_value(value) -> Any:
    kind = value.WhichOneof("val")
    return None if kind is None or kind == "null_val" else getattr(value, kind)


class OnlineFeatures:
    """Batched online lookups on one FeatureStore, reused across calls (the transformer holds one).

    A lookup is one ``online_read`` of Feast's configured online store per feature view of the FeatureService —
    the read ``get_online_features`` does underneath, without its per-call request planning, which costs ~2.5 ms
    per call and ~0.3 ms per user on top (bench/README). Values and NULLs are the SDK's own: a test holds the two
    equal on known, unknown and contract-NULL users.

    Stale rows are missing. Materializing a snapshot adds and updates rows but never removes one, so a user absent
    from the newest snapshot keeps the row of the last snapshot that held them. A row whose event timestamp is older
    than the newest as_of materialized into its feature view (:func:`newest_materialized`) is answered as a missing
    row, exactly like an unknown user's. Those as_of are read from the registry through Feast's own registry cache
    (:meth:`refresh_as_of`), off the request path: a lookup uses the as_of last read and, at most once per
    ``REGISTRY_CHECK_SECONDS``, starts a thread that asks the cache again. The file registry (embedded) notices a
    materialization by the file's mtime, so it is served within about a second; the SQL registry (Postgres) re-reads
    after its ``cache_ttl_seconds``. A lookup pays one clock read for this (the cache check, ~25 µs, and a registry
    re-read, up to ~60 ms, never reach a request); a registry that cannot be read keeps the as_of last read.
    """

    def __init__(self, settings: Settings, store=None) -> None:
        self.store = store or open_store(settings)
        self.service = feature_service(self.store, settings)
        self.names = feature_names(self.service)
        self._rules = _null_rules(self.service)
        self.text_features = [
            f.name for p in self.service.feature_view_projections for f in p.features if str(f.dtype) == "String"
        ]
        self._provider = self.store._get_provider()  # the provider get_online_features reads through
        self._views = []
        for projection in self.service.feature_view_projections:
            view = self.store.get_feature_view(projection.name)
            self._views.append((view, [f.name for f in projection.features]))
        join_keys = {key for view, _ in self._views for key in view.join_keys}
        if len(join_keys) != 1:
            raise StreamflowError(f"feature service {self.service.name}: expected one join key, got {join_keys}")
        self.join_key = join_keys.pop()
        # (the registry proto the as_of were read from, view name -> newest materialized as_of)
        self._as_of: tuple[Any, dict[str, datetime | None]] = (None, {})
        self._registry_error: str | None = None
        self._checking = threading.Lock()  # held while a registry check runs: one at a time
        self._next_check = time.monotonic() + REGISTRY_CHECK_SECONDS
        self.refresh_as_of()

    def refresh_as_of(self) -> dict[str, datetime | None]:
        """The newest materialized as_of of each feature view (event timestamp, UTC), as the registry cache holds
        it now (Feast refreshes a stale cache first); lookups use what the last call read."""
        from feast.infra.registry import proto_registry_utils

        registry, project = self.store.registry, self.store.project
        seen, newest = self._as_of
        try:
            # Feast's cache check, refreshing a stale cache (~25 µs: the list is cached per registry proto)
            registry.list_feature_views(project, allow_cache=True)
            proto = registry.cached_registry_proto
            if proto is seen:
                return newest
            newest = {  # read from the proto held, whatever another thread's refresh does meanwhile
                view.name: newest_materialized(proto_registry_utils.get_feature_view(proto, view.name, project))
                for view, _ in self._views
            }
        except Exception as err:  # noqa: BLE001 - serving goes on with the as_of last read
            if seen is None:
                raise
            if str(err) != self._registry_error:  # once per distinct error, not once per request
                self._registry_error = str(err)
                log.warning("online lookup: registry not readable (%s); keeping the as_of last read", err)
            return newest
        self._as_of, self._registry_error = (proto, newest), None
        return newest

    def _current_as_of(self) -> dict[str, datetime | None]:
        """The as_of last read; past ``REGISTRY_CHECK_SECONDS`` since the last check, a thread checks again."""
        now = time.monotonic()
        if now >= self._next_check and self._checking.acquire(blocking=False):
            self._next_check = now + REGISTRY_CHECK_SECONDS
            try:
                threading.Thread(target=self._check, name="streamflow-registry-check", daemon=True).start()
            except RuntimeError:  # no thread to be had: the next lookup past the interval tries again
                self._checking.release()
        return self._as_of[1]

    def _check(self) -> None:
        try:
            self.refresh_as_of()
        finally:
            self._checking.release()

    def lookup(self, user_ids: Sequence[str]) -> LookupResult:
        """Features of many users in one read per feature view; a row older than its view's newest materialized
        as_of is a missing row.

        Raises:
            InvalidInput: the list is empty or holds something that is not a non-empty string.
        """
        from feast.protos.feast.types.EntityKey_pb2 import EntityKey
        from feast.protos.feast.types.Value_pb2 import Value

        ids = list(user_ids)
        if not ids:
            raise InvalidInput("user_id: empty list (give at least one user id)")
        bad = [u for u in ids if not isinstance(u, str) or not u.strip()]
        if bad:
            raise InvalidInput(f"user_id: {bad[0]!r} is not a user id (non-empty string expected)")
        unique = list(dict.fromkeys(ids))
        keys = [EntityKey(join_keys=[self.join_key], entity_values=[Value(string_val=u)]) for u in unique]
        values: dict[str, list[Any]] = {name: [None] * len(unique) for name in self.names}
        newest = self._current_as_of()
        for view, names in self._views:
            rows = self._provider.online_read(
                config=self.store.config, table=view, entity_keys=keys, requested_features=names
            )
            oldest_valid = newest.get(view.name)
            for i, (stamp, found) in enumerate(rows):
                if not found or (oldest_valid is not None and _stale(stamp, oldest_valid)):
                    continue
                for name in names:
                    value = found.get(name)
                    if value is not None:
                        values[name][i] = _proto_value(value)
        missing: dict[str, list[str]] = {}
        for i, uid in enumerate(unique):
            gaps = [
                n
                for n in self.names
                if values[n][i] is None and not (n in self._rules and values[self._rules[n][0]][i] == self._rules[n][1])
            ]
            if gaps:
                missing[uid] = gaps
        if len(unique) != len(ids):
            where = {uid: i for i, uid in enumerate(unique)}
            order = [where[uid] for uid in ids]
            values = {name: [column[i] for i in order] for name, column in values.items()}
        return LookupResult(ids, values, missing)
