"""The feature store as the serving side reads it: opening the Feast store for the settings' storage mode, the
FeatureService's feature list, and the batched online lookup the transformer uses.

Its own module so that the servers never import a pipeline stage (``pipelines.features`` holds ``features apply``,
``features materialize`` and ``dataset build``, which import this one). Which ``feature_store*.yaml`` is used
follows the settings: ``feature_store.yaml`` on the embedded default, ``feature_store.postgres.yaml`` in Postgres
mode. Feast expands ``${VAR}`` in those files from the environment, so :func:`open_store` exports the few variables
they name (derived from the settings) before opening the store.
"""

from __future__ import annotations

import logging
import os
import re
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from pipelines.config import Settings
from pipelines.errors import InvalidInput, NotFound, StreamflowError

log = logging.getLogger(__name__)

APPLY_HINT = "run `streamflow features apply` first"

# How often, at most, the online lookup asks the registry cache for newly materialized as_of (in a thread).
REGISTRY_CHECK_SECONDS = 1.0
# How long a lookup allowed to wait asks a locked SQLite online store again (SQLite's own default busy timeout).
STORE_WAIT_SECONDS = 5.0


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
    """Environment variables the Feast repo reads (definitions and ``${VAR}`` in feature_store*.yaml).

    In Postgres mode the URL is parsed once (SQLAlchemy's ``make_url``: credentials percent-decoded) and the
    registry URL is built again with quoting (``URL.create``), so a password holding ``@ : / # %`` survives.
    """
    env = {"STREAMFLOW_HOME": str(settings.home.resolve()), "STREAMFLOW_DB_URL": settings.db_url or ""}
    if settings.is_postgres:
        from sqlalchemy.engine import URL, make_url

        url = make_url(settings.database_url)
        sslmode = str(url.query.get("sslmode") or settings.db_sslmode)
        env.update(
            STREAMFLOW_PG_HOST=url.host or "localhost",
            STREAMFLOW_PG_PORT=str(url.port or 5432),
            STREAMFLOW_PG_DB=url.database or "postgres",
            STREAMFLOW_PG_USER=url.username or "",
            STREAMFLOW_PG_PASSWORD=url.password or "",
            STREAMFLOW_PG_SSLMODE=sslmode,
        )
        registry = URL.create(
            "postgresql+psycopg",
            username=url.username,
            password=url.password,
            host=url.host or "localhost",
            port=url.port or 5432,
            database=url.database or "postgres",
            query={"sslmode": sslmode},
        )
        env["STREAMFLOW_PG_REGISTRY_URL"] = registry.render_as_string(hide_password=False)
    return env


def _yaml_file(settings: Settings) -> Path:
    name = "feature_store.postgres.yaml" if settings.is_postgres else "feature_store.yaml"
    path = settings.feature_repo / name
    if not path.is_file():
        raise StreamflowError(f"Feast repo config {path} is missing (STREAMFLOW_FEATURE_REPO={settings.feature_repo})")
    return path


_VAR = re.compile(r"\$\{(\w+)\}")


def _expand(value: Any, env: dict[str, str]) -> Any:
    """``${VAR}`` replaced inside every string of the parsed YAML (never in its text: a value cannot break it)."""
    if isinstance(value, dict):
        return {key: _expand(item, env) for key, item in value.items()}
    if isinstance(value, list):
        return [_expand(item, env) for item in value]
    if isinstance(value, str):
        return _VAR.sub(lambda m: env.get(m[1], os.environ.get(m[1], m[0])), value)
    return value


def repo_config(settings: Settings):
    """Feast's RepoConfig of the settings' storage mode: the feature_store*.yaml parsed first, then its ``${VAR}``
    filled in from :func:`feast_env` (Feast's own loader substitutes into the YAML text, where a password with
    ``#``, ``: `` or a leading ``@`` would change the document)."""
    import yaml
    from feast.repo_config import RepoConfig

    path = _yaml_file(settings)
    raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    if not isinstance(raw, dict):
        raise StreamflowError(f"Feast repo config {path}: expected a YAML mapping")
    config = RepoConfig(**_expand(raw, feast_env(settings)))
    config.repo_path = settings.feature_repo
    return config


def open_store(settings: Settings):
    """One FeatureStore for the settings' storage mode (reuse it: opening one reads the registry)."""
    from feast import FeatureStore

    os.environ.update(feast_env(settings))  # the repo's definitions read them when `features apply` imports it
    (settings.home / "feast").mkdir(parents=True, exist_ok=True)
    return FeatureStore(repo_path=str(settings.feature_repo), config=repo_config(settings))


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


# ------------------------------------------------------------------------------------------------ online lookup


def null_rules(service) -> dict[str, tuple[str, str]]:
    """Features whose NULL is a value under a condition, from the ``null_allowed_when: col=value`` field tag."""
    rules = {}
    for projection in service.feature_view_projections:
        for feat in projection.features:
            rule = (feat.tags or {}).get("null_allowed_when")
            if rule:
                column, _, value = rule.partition("=")
                rules[feat.name] = (column.strip(), value.strip())
    return rules


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
        self._rules = null_rules(self.service)
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
        self._store_error: str | None = None  # the last online store failure logged (once per distinct one)
        # Feast's SQLite store reads through one connection, shared by the threads lookups run in: SQLite serialises
        # those reads anyway, and its error text is per connection (a concurrent read's "not an error" replaced
        # "database is locked"), so reads take turns; Postgres reads go through a pool and need no turn.
        sqlite = getattr(self.store.config.online_store, "type", "") == "sqlite"
        self._turn = threading.Lock() if sqlite else _NoTurn()
        # A local file read costs CPU, not waiting: a caller may run a small lookup on its event loop (no thread hop)
        # with ``wait=False``, which never waits for SQLite's lock. So the connection fails at once on a lock
        # (busy_timeout 0) and :meth:`_read` does the waiting, up to STORE_WAIT_SECONDS, when it may wait.
        self.reads_without_waiting = sqlite
        if sqlite:
            self._provider.online_store._get_conn(self.store.config).execute("PRAGMA busy_timeout = 0")
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

    def lookup(self, user_ids: Sequence[str], *, wait: bool = True) -> LookupResult:
        """Features of many users in one read per feature view; a row older than its view's newest materialized
        as_of is a missing row.

        Args:
            wait: False: never wait for the store (a caller on an event loop); a store busy now raises StoreBusy.

        Raises:
            InvalidInput: the list is empty or holds something that is not a non-empty string.
            StoreBusy: ``wait`` is False and the store (or another lookup's read) is busy: ask again with wait.
            OnlineStoreUnavailable: the store could not be read (locked past STORE_WAIT_SECONDS, unreachable).
        """
        from feast.protos.feast.types.EntityKey_pb2 import EntityKey
        from feast.protos.feast.types.Value_pb2 import Value

        ids = list(user_ids)
        if not ids:
            raise InvalidInput("user_id: empty list (give at least one user id)")
        bad = [u for u in ids if not isinstance(u, str) or not u.strip() or not _utf8(u)]
        if bad:
            raise InvalidInput(f"user_id: {bad[0]!r} is not a user id (non-empty Unicode text expected)")
        unique = list(dict.fromkeys(ids))
        keys = [EntityKey(join_keys=[self.join_key], entity_values=[Value(string_val=u)]) for u in unique]
        values: dict[str, list[Any]] = {name: [None] * len(unique) for name in self.names}
        newest = self._current_as_of()
        for view, names in self._views:
            rows = self._read(view, keys, names, wait)
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

    def _read(self, view, keys, names: list[str], wait: bool):
        """One ``online_read`` of ``view``; a locked SQLite store is asked again until STORE_WAIT_SECONDS."""
        deadline = time.monotonic() + STORE_WAIT_SECONDS
        while True:
            if not self._turn.acquire(blocking=wait):
                raise StoreBusy("another lookup is reading the online store")
            try:
                rows = self._provider.online_read(
                    config=self.store.config, table=view, entity_keys=keys, requested_features=names
                )
            except Exception as err:
                if not _store_unreadable(err):
                    raise
                if _locked(err) and not wait:
                    raise StoreBusy(str(err)) from None
                if not (_locked(err) and time.monotonic() < deadline):
                    raise self._unavailable(view.name, err) from None
            else:
                self._store_error = None
                return rows
            finally:
                self._turn.release()
            time.sleep(0.02)  # locked: a writer (a materialization) holds the file; ask again shortly

    def _unavailable(self, view: str, err: Exception) -> OnlineStoreUnavailable:
        """The error a failed online read is answered with: the store's own reason (first line, credentials
        hidden), no exception class; logged once per distinct reason."""
        from pipelines.errors import redact

        reason = redact(str(err).strip().splitlines()[0][:300] if str(err).strip() else "no reason given")
        kind = getattr(self.store.config.online_store, "type", "online")
        message = f"the {kind} online store could not be read ({reason}); retry later"
        if message != self._store_error:
            self._store_error = message
            log.warning("online lookup of %s: %s", view, message)
        return OnlineStoreUnavailable(message)


class _NoTurn:
    """A lock that never makes anyone wait (stores that serve concurrent reads themselves)."""

    def acquire(self, blocking: bool = True) -> bool:
        return True

    def release(self) -> None:
        pass


class StoreBusy(Exception):
    """The store is busy right now and the caller asked not to wait (not an error: ask again, allowed to wait)."""


def _locked(err: BaseException) -> bool:
    """SQLite's "database is locked" / "database table is locked": a writer holds the file for now."""
    import sqlite3

    return isinstance(err, sqlite3.OperationalError) and "locked" in str(err)


class OnlineStoreUnavailable(StreamflowError):
    """The online store could not be read: locked by a writer, unreachable, or unreadable. Retrying may help."""

    exit_code = 75


def _utf8(text: str) -> bool:
    """``text`` can be sent to a store (a lone surrogate, as JSON's ``"\\ud800"`` gives, cannot)."""
    if text.isascii():
        return True
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _store_unreadable(err: BaseException) -> bool:
    """A failure of the store itself (lock, connection, file), not of the request: SQLite's and psycopg's
    operational errors, a psycopg pool timeout, an OS error."""
    import sqlite3

    if isinstance(err, sqlite3.OperationalError | sqlite3.DatabaseError | OSError):
        return True
    return any(
        cls.__module__.split(".")[0] in ("psycopg", "psycopg_pool", "psycopg2")
        and cls.__name__ in ("OperationalError", "InterfaceError", "PoolTimeout", "TooManyRequests")
        for cls in type(err).__mro__
    )
