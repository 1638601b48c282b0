"""The two storage backends behind one interface: embedded DuckDB (default) and Postgres (``STREAMFLOW_DB_URL``).

Both hold the six raw tables, the quarantine and the ingestion log in SQL tables, written in one transaction per
month. Snapshots differ on purpose:

* Postgres: the four ``*_snapshots`` tables, primary key ``(user_id, as_of)``; Feast reads them in place.
* Embedded: one parquet file per snapshot table and as_of under ``STREAMFLOW_HOME/snapshots/<table>/``. Feast's
  local offline store reads parquet, so the files *are* the snapshot tables — there is no second copy to keep in
  sync. See docs/architecture.md for the reasoning.
"""

from __future__ import annotations

import io
import os
from abc import ABC, abstractmethod
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from datetime import date
from pathlib import Path
from typing import Any

import pandas as pd

from pipelines.config import Settings
from pipelines.errors import StreamflowError, redact, redact_url, url_secrets  # the servers import redact_url here
from pipelines.tables import (
    INGESTIONS_DDL,
    MONTHLY_RUNS_DDL,
    ONLINE_USERS_DDL,
    QUARANTINE_DDL,
    RAW_TABLES,
    SNAPSHOT_RUNS_DDL,
    SNAPSHOTS,
    USERS,
    Snapshot,
    Table,
    raw_ddl,
    snapshot_ddl,
)

QUARANTINE_DB_COLUMNS = ("as_of", "table_name", "file", "line", "column_name", "value", "reason", "raw_row")

# the retention list `streamflow score` writes (pipelines.score): one row per user of a month and model version;
# rank 1 is the riskiest user, risk_decile 1 the riskiest tenth, label 1 at or above the version's threshold
SCORE_COLUMNS = ("user_id", "as_of", "model_version", "probability", "label", "rank", "risk_decile")
CHURN_SCORES_DDL = """CREATE TABLE IF NOT EXISTS churn_scores (
    user_id TEXT NOT NULL,
    as_of DATE NOT NULL,
    model_version TEXT NOT NULL,
    probability DOUBLE PRECISION NOT NULL,
    label INTEGER NOT NULL,
    rank INTEGER NOT NULL,
    risk_decile INTEGER NOT NULL,
    PRIMARY KEY (as_of, model_version, user_id)
)"""


class Database(ABC):
    """Storage of raw months, quarantine and snapshots."""

    @abstractmethod
    def ensure_schema(self) -> None:
        """Create missing tables (idempotent)."""

    @abstractmethod
    @contextmanager
    def transaction(self) -> Iterator[None]:
        """Everything written inside commits together, or not at all."""

    @abstractmethod
    def query(self, sql: str, params: tuple[Any, ...] = ()) -> pd.DataFrame:
        """Run a read-only query (``?`` placeholders) and return a DataFrame."""

    @abstractmethod
    def _execute(self, sql: str, params: tuple[Any, ...] = ()) -> None: ...

    @abstractmethod
    def _insert_frame(
        self, table: str, columns: tuple[str, ...], frame: pd.DataFrame, upsert_key: tuple[str, ...] = ()
    ) -> None: ...

    @abstractmethod
    def write_snapshot(self, as_of: date) -> dict[str, int]:
        """Freeze raw month ``as_of`` into the four snapshot tables; returns rows per snapshot table."""

    @abstractmethod
    def snapshot_counts(self) -> pd.DataFrame:
        """Rows per snapshot table and as_of (columns: table, as_of, rows)."""

    @abstractmethod
    def read_snapshot(self, snap: Snapshot, as_of: date) -> pd.DataFrame:
        """Rows of one snapshot table for one as_of, ordered by user_id."""

    @abstractmethod
    def close(self) -> None: ...

    # ---------------------------------------------------------------- shared logic, same SQL on both backends

    def user_ids(self) -> pd.Index:
        """Every stored user_id."""
        return pd.Index(self.query("SELECT user_id FROM users")["user_id"])

    def months(self) -> list[date]:
        """as_of of every ingested month, oldest first."""
        return [_as_date(v) for v in self.query("SELECT as_of FROM ingestions ORDER BY as_of")["as_of"]]

    def record_monthly(self, as_of: date, decision: str | None) -> None:
        """Mark the month's ``monthly`` run as started (``decision`` None) or finished with its decision."""
        with self.transaction():
            self._execute("DELETE FROM monthly_runs WHERE as_of = ?", (as_of,))
            self._execute("INSERT INTO monthly_runs VALUES (?, ?, ?)", (as_of, decision is not None, decision))

    def unfinished_months(self) -> list[date]:
        """as_of of every month whose ``monthly`` run started and never finished, oldest first."""
        frame = self.query("SELECT as_of FROM monthly_runs WHERE NOT finished ORDER BY as_of")
        return [_as_date(v) for v in frame["as_of"]]

    def snapshot_user_ids(self, as_of: date) -> pd.Index:
        """The users of ``as_of``'s snapshot (every snapshot table of one as_of holds the same users)."""
        return pd.Index(self.read_snapshot(SNAPSHOTS[0], as_of)["user_id"].astype(str))

    def online_users(self, as_of: date) -> pd.Index:
        """The users :meth:`record_online_users` recorded for ``as_of`` (empty for any other as_of)."""
        return pd.Index(self.query("SELECT user_id FROM online_users WHERE as_of = ?", (as_of,))["user_id"].astype(str))

    def record_online_users(self, as_of: date, user_ids: pd.Index) -> None:
        """The users materialization wrote for ``as_of``, replacing whatever an earlier as_of left."""
        with self.transaction():
            self._execute("DELETE FROM online_users")
            if len(user_ids):
                frame = pd.DataFrame({"user_id": list(user_ids), "as_of": as_of})
                self._insert_frame("online_users", ("user_id", "as_of"), frame)

    def replace_scores(self, as_of: date, model_version: str, frame: pd.DataFrame) -> None:
        """Write the list of one as_of and model version (columns :data:`SCORE_COLUMNS`) in one transaction,
        replacing only that pair's earlier rows."""
        with self.transaction():
            self._execute("DELETE FROM churn_scores WHERE as_of = ? AND model_version = ?", (as_of, model_version))
            if len(frame):
                self._insert_frame("churn_scores", SCORE_COLUMNS, frame)

    def read_scores(self, as_of: date, model_version: str | None = None) -> pd.DataFrame:
        """The stored list of ``as_of`` (one model version, or every one), by version then rank."""
        where, params = "as_of = ?", (as_of,)
        if model_version is not None:
            where, params = where + " AND model_version = ?", (as_of, model_version)
        cols = ", ".join(SCORE_COLUMNS)
        return self.query(f"SELECT {cols} FROM churn_scores WHERE {where} ORDER BY model_version, rank", params)

    def replace_month(self, table: Table, as_of: date, frame: pd.DataFrame) -> None:
        """Write one month of one table: the month's previous rows are replaced (upsert + removal of stale keys)."""
        if table.per_month:
            self._execute(f"DELETE FROM {table.name} WHERE as_of = ?", (as_of,))
            self._insert_frame(table.name, table.db_columns, frame.assign(as_of=as_of))
        else:
            self._insert_frame(table.name, table.db_columns, frame, upsert_key=table.key)

    def replace_quarantine(self, as_of: date, frame: pd.DataFrame) -> None:
        self._execute("DELETE FROM quarantine WHERE as_of = ?", (as_of,))
        if len(frame):
            self._insert_frame("quarantine", QUARANTINE_DB_COLUMNS, frame.assign(as_of=as_of))

    def record_ingestion(
        self, as_of: date, source: str, sha256: str, input_rows: int, loaded: int, quarantined: int
    ) -> None:
        self._execute("DELETE FROM ingestions WHERE as_of = ?", (as_of,))
        self._execute(
            "INSERT INTO ingestions VALUES (?, ?, ?, ?, ?, ?)",
            (as_of, source, sha256, input_rows, loaded, quarantined),
        )

    def table_counts(self) -> pd.DataFrame:
        """Rows per raw table and as_of (``users`` has no as_of: its rows are counted under as_of NULL)."""
        monthly = [t.name for t in RAW_TABLES if t.per_month]
        parts = [f"SELECT CAST(? AS TEXT) AS table_name, NULL AS as_of, COUNT(*) AS rows FROM {USERS.name}"]
        parts += [f"SELECT CAST(? AS TEXT), as_of, COUNT(*) FROM {name} GROUP BY as_of" for name in monthly]
        parts.append(
            "SELECT CAST(? AS TEXT), as_of, "
            "COUNT(DISTINCT table_name || ':' || CAST(line AS TEXT)) FROM quarantine GROUP BY as_of"
        )
        return self.query(" UNION ALL ".join(parts), (USERS.name, *monthly, "quarantine"))

    def _create_all(self, snapshot_tables: bool) -> None:
        for table in RAW_TABLES:
            self._execute(raw_ddl(table))
        self._execute(QUARANTINE_DDL)
        self._execute(INGESTIONS_DDL)
        self._execute(SNAPSHOT_RUNS_DDL)
        self._execute(MONTHLY_RUNS_DDL)
        self._execute(ONLINE_USERS_DDL)
        self._execute(CHURN_SCORES_DDL)
        if snapshot_tables:
            for snap in SNAPSHOTS:
                self._execute(snapshot_ddl(snap))

    def _snapshot_select(self, snap: Snapshot, as_of_param: str) -> str:
        cols = ", ".join(snap.features)
        return (
            f"SELECT user_id, as_of, CAST(as_of AS TIMESTAMP) AT TIME ZONE 'UTC' AS event_timestamp, {cols} "
            f"FROM {snap.source.name} WHERE as_of = {as_of_param} ORDER BY user_id"
        )


def _alive(pid: int) -> bool:
    """True when a process ``pid`` exists on this host (a run that may still be writing its files)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True


def _as_date(value: Any) -> date:
    return value if isinstance(value, date) and not isinstance(value, pd.Timestamp) else pd.Timestamp(value).date()


# ------------------------------------------------------------------------------------------------ DuckDB


class DuckDBDatabase(Database):
    """Embedded default: one DuckDB file under ``STREAMFLOW_HOME`` and parquet snapshots beside it."""

    def __init__(self, path: Path, snapshot_dir: Path) -> None:
        import duckdb

        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self.snapshot_dir = snapshot_dir
        self._con = duckdb.connect(str(path))
        self._con.execute("SET TimeZone = 'UTC'")

    def ensure_schema(self) -> None:
        self._create_all(snapshot_tables=False)

    @contextmanager
    def transaction(self) -> Iterator[None]:
        self._con.begin()
        try:
            yield
        except BaseException:
            self._con.rollback()
            raise
        self._con.commit()

    def query(self, sql: str, params: tuple[Any, ...] = ()) -> pd.DataFrame:
        return self._con.execute(sql, list(params)).df()

    def _execute(self, sql: str, params: tuple[Any, ...] = ()) -> None:
        self._con.execute(sql, list(params))

    def _insert_frame(
        self, table: str, columns: tuple[str, ...], frame: pd.DataFrame, upsert_key: tuple[str, ...] = ()
    ) -> None:
        self._con.register("_stage", frame[list(columns)])
        try:
            cols = ", ".join(columns)
            conflict = ""
            if upsert_key:
                updates = ", ".join(f"{c} = excluded.{c}" for c in columns if c not in upsert_key)
                conflict = f" ON CONFLICT ({', '.join(upsert_key)}) DO UPDATE SET {updates}"
            self._con.execute(f"INSERT INTO {table} ({cols}) SELECT {cols} FROM _stage{conflict}")
        finally:
            self._con.unregister("_stage")

    def _snapshot_file(self, snap: Snapshot, as_of: date) -> Path:
        return self.snapshot_dir / snap.name / f"{as_of.isoformat()}.parquet"

    @property
    def _tmp_dir(self) -> Path:
        return self.snapshot_dir / ".tmp"

    def _clean_dead_tmp(self) -> None:
        """Remove what a dead run left in ``snapshots/.tmp`` (files named ``…-<pid>.parquet``; a live process's
        files are left to it), and the folder itself once empty."""
        if not self._tmp_dir.is_dir():
            return
        for leftover in self._tmp_dir.iterdir():
            pid = leftover.stem.rpartition("-")[2]
            if pid.isdigit() and int(pid) != os.getpid() and _alive(int(pid)):
                continue
            leftover.unlink(missing_ok=True)
        with suppress(OSError):  # not empty: a live run is writing
            self._tmp_dir.rmdir()

    def write_snapshot(self, as_of: date) -> dict[str, int]:
        # Write every table to a temporary file first, then rename: a reader (Feast) never sees a half file,
        # and the renames are the last, near-instant step. Paths and values are bound, never pasted into SQL.
        self._clean_dead_tmp()
        staged: list[tuple[Path, Path]] = []
        counts: dict[str, int] = {}
        self._tmp_dir.mkdir(parents=True, exist_ok=True)
        try:
            for snap in SNAPSHOTS:
                final = self._snapshot_file(snap, as_of)
                final.parent.mkdir(parents=True, exist_ok=True)
                tmp = self._tmp_dir / f"{snap.name}-{as_of.isoformat()}-{os.getpid()}.parquet"
                staged.append((tmp, final))
                self._con.execute(f"COPY ({self._snapshot_select(snap, '?')}) TO ? (FORMAT parquet)", [as_of, str(tmp)])
                counts[snap.name] = int(
                    self._con.execute("SELECT COUNT(*) FROM read_parquet(?)", [str(tmp)]).fetchone()[0]
                )
            for tmp, final in staged:
                os.replace(tmp, final)
        finally:
            for tmp, _ in staged:
                tmp.unlink(missing_ok=True)
            self._clean_dead_tmp()
        with self.transaction():
            self._execute("DELETE FROM snapshot_runs WHERE as_of = ?", (as_of,))
            self._execute("INSERT INTO snapshot_runs VALUES (?, ?)", (as_of, counts[SNAPSHOTS[0].name]))
        return counts

    def snapshot_counts(self) -> pd.DataFrame:
        frames = []
        for snap in SNAPSHOTS:
            files = sorted(str(f) for f in (self.snapshot_dir / snap.name).glob("*.parquet"))
            if files:
                frames.append(
                    self._con.execute(
                        "SELECT ? AS table_name, as_of, COUNT(*) AS rows FROM read_parquet(?) GROUP BY as_of",
                        [snap.name, files],
                    ).df()
                )
        return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=["table_name", "as_of", "rows"])

    def read_snapshot(self, snap: Snapshot, as_of: date) -> pd.DataFrame:
        path = self._snapshot_file(snap, as_of)
        if not path.exists():
            return pd.DataFrame(columns=list(snap.db_columns))
        return self._con.execute("SELECT * FROM read_parquet(?) ORDER BY user_id", [str(path)]).df()

    def close(self) -> None:
        self._con.close()


# ------------------------------------------------------------------------------------------------ Postgres


class PostgresDatabase(Database):
    """Postgres mode: every table, snapshots included, in the database of ``STREAMFLOW_DB_URL``."""

    def __init__(self, url: str) -> None:
        self._con = open_postgres(url)
        self._con.autocommit = True

    def ensure_schema(self) -> None:
        self._create_all(snapshot_tables=True)

    @contextmanager
    def transaction(self) -> Iterator[None]:
        self._con.autocommit = False
        try:
            yield
        except BaseException:
            self._con.rollback()
            raise
        else:
            self._con.commit()
        finally:
            self._con.autocommit = True

    @staticmethod
    def _pg(sql: str) -> str:
        return sql.replace("?", "%s")

    def query(self, sql: str, params: tuple[Any, ...] = ()) -> pd.DataFrame:
        with self._con.cursor() as cur:
            cur.execute(self._pg(sql), params)
            cols = [d[0] for d in cur.description]
            return pd.DataFrame(cur.fetchall(), columns=cols)

    def _execute(self, sql: str, params: tuple[Any, ...] = ()) -> None:
        with self._con.cursor() as cur:
            cur.execute(self._pg(sql), params)

    def _insert_frame(
        self, table: str, columns: tuple[str, ...], frame: pd.DataFrame, upsert_key: tuple[str, ...] = ()
    ) -> None:
        buf = io.StringIO()
        frame[list(columns)].to_csv(buf, index=False, header=False, date_format="%Y-%m-%d")
        buf.seek(0)
        cols = ", ".join(columns)
        with self._con.cursor() as cur:
            if not upsert_key:
                cur.copy_expert(f"COPY {table} ({cols}) FROM STDIN WITH (FORMAT csv)", buf)
                return
            cur.execute(f"CREATE TEMP TABLE _stage (LIKE {table}) ON COMMIT DROP")
            cur.copy_expert(f"COPY _stage ({cols}) FROM STDIN WITH (FORMAT csv)", buf)
            updates = ", ".join(f"{c} = excluded.{c}" for c in columns if c not in upsert_key)
            cur.execute(
                f"INSERT INTO {table} ({cols}) SELECT {cols} FROM _stage "
                f"ON CONFLICT ({', '.join(upsert_key)}) DO UPDATE SET {updates}"
            )
            cur.execute("DROP TABLE _stage")

    def write_snapshot(self, as_of: date) -> dict[str, int]:
        counts: dict[str, int] = {}
        with self.transaction():
            for snap in SNAPSHOTS:
                self._execute(f"DELETE FROM {snap.name} WHERE as_of = ?", (as_of,))
                with self._con.cursor() as cur:
                    cur.execute(
                        f"INSERT INTO {snap.name} ({', '.join(snap.db_columns)}) " + self._snapshot_select(snap, "%s"),
                        (as_of,),
                    )
                    counts[snap.name] = cur.rowcount
            self._execute("DELETE FROM snapshot_runs WHERE as_of = ?", (as_of,))
            self._execute("INSERT INTO snapshot_runs VALUES (?, ?)", (as_of, counts[SNAPSHOTS[0].name]))
        return counts

    def snapshot_counts(self) -> pd.DataFrame:
        return self.query(
            " UNION ALL ".join(
                f"SELECT CAST(? AS TEXT) AS table_name, as_of, COUNT(*) AS rows FROM {s.name} GROUP BY as_of"
                for s in SNAPSHOTS
            ),
            tuple(s.name for s in SNAPSHOTS),
        )

    def read_snapshot(self, snap: Snapshot, as_of: date) -> pd.DataFrame:
        return self.query(f"SELECT * FROM {snap.name} WHERE as_of = ? ORDER BY user_id", (as_of,))

    def close(self) -> None:
        self._con.close()


def open_postgres(url: str, **options: Any) -> Any:
    """A psycopg2 connection to the database of ``url`` (the database's, and the state lock's: one place that reads
    the URL); ``options`` are libpq connection parameters.

    Raises:
        StreamflowError: the server does not answer or refuses the credentials.
    """
    import psycopg2

    try:
        return psycopg2.connect(url.replace("postgresql+psycopg2://", "postgresql://"), connect_timeout=10, **options)
    except psycopg2.OperationalError as err:
        why = redact(str(err).strip(), url_secrets(url))  # libpq may quote a piece of a password it misread
        raise StreamflowError(f"cannot connect to Postgres at {redact_url(url)}: {why}") from None


def connect(settings: Settings) -> Database:
    """Open the database named by the settings and make sure its tables exist."""
    db: Database
    if settings.is_postgres:
        db = PostgresDatabase(settings.database_url)
    else:
        url = settings.database_url
        if not url.startswith("duckdb:///"):
            raise StreamflowError(f"STREAMFLOW_DB_URL {redact_url(url)!r}: expected postgresql://… or duckdb:///path")
        db = _open_duckdb(settings, Path(url.removeprefix("duckdb:///")))
    db.ensure_schema()
    return db


def _open_duckdb(settings: Settings, path: Path) -> DuckDBDatabase:
    """The embedded database; a clear StateLocked naming the run that has it open, instead of DuckDB's lock error.

    DuckDB lets one process at a time open the file (read-only openers included), so while a state-changing run
    holds it even ``status`` must wait: it is told who holds it, as a second run is (Postgres mode reads during a run).
    """
    import duckdb

    from pipelines.errors import StateLocked

    try:
        return DuckDBDatabase(path, settings.snapshot_dir)
    except duckdb.IOException as err:
        if "lock" not in str(err).lower():
            raise
        from pipelines.lock import LOCK_FILE, UNKNOWN, FileLock

        lock = FileLock(settings.home / LOCK_FILE)
        try:
            holder = lock.current_holder()
        finally:
            lock.close()
        who = UNKNOWN if holder is None else holder.describe()
        raise StateLocked(
            f"the embedded database {path} is open in another streamflow run: {who}; retry when it ends "
            "(Postgres mode can be read during a run)"
        ) from None
