"""Table layouts of the data contract (../shared/DATA_CONTRACT.md), written once.

The CSV headers, the validation rules, the database DDL and the snapshot projections all derive from
:data:`RAW_TABLES` and :data:`SNAPSHOTS`, so a column is declared in exactly one place.

Raw month tables are keyed by ``(user_id, as_of)``: a month is kept as it was ingested, so a snapshot can be
rebuilt for any as_of and labels stay per month (the contract's warning about keying labels by user_id alone).
``users`` is keyed by ``user_id`` alone: a user exists once, whatever the month.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum


class Kind(StrEnum):
    TEXT = "text"
    BOOL = "bool"
    INT = "int"
    NUM = "num"
    DATE = "date"
    CATEGORY = "category"


SQL_TYPES = {
    Kind.TEXT: "TEXT",
    Kind.CATEGORY: "TEXT",
    Kind.BOOL: "BOOLEAN",
    Kind.INT: "INTEGER",
    # DOUBLE rather than NUMERIC: the values are measurements, and both DuckDB and Feast handle doubles natively.
    Kind.NUM: "DOUBLE PRECISION",
    Kind.DATE: "DATE",
}


@dataclass(frozen=True)
class Column:
    name: str
    kind: Kind
    nullable: bool = False
    optional: bool = False  # may be absent from the CSV header (loads as NULL)
    ge: float | None = None  # value >= ge
    gt: float | None = None  # value > gt
    domain: tuple[str, ...] = ()  # for Kind.CATEGORY


@dataclass(frozen=True)
class Table:
    name: str
    columns: tuple[Column, ...]
    per_month: bool = True  # keyed by (user_id, as_of); False: keyed by user_id alone

    @property
    def file_name(self) -> str:
        return f"{self.name}.csv"

    @property
    def required(self) -> tuple[str, ...]:
        return tuple(c.name for c in self.columns if not c.optional)

    @property
    def column_names(self) -> tuple[str, ...]:
        return tuple(c.name for c in self.columns)

    @property
    def key(self) -> tuple[str, ...]:
        return ("user_id", "as_of") if self.per_month else ("user_id",)

    @property
    def db_columns(self) -> tuple[str, ...]:
        """Columns as stored: ``user_id``, then ``as_of`` for month tables, then the rest."""
        rest = tuple(c.name for c in self.columns if c.name != "user_id")
        return ("user_id", "as_of", *rest) if self.per_month else ("user_id", *rest)


NET_SERVICES = ("DSL", "Fiber optic", "No")
CONTRACT_TYPES = ("Month-to-month", "One year", "Two year")

_USER_ID = Column("user_id", Kind.TEXT)

USERS = Table(
    "users",
    (
        _USER_ID,
        Column("signup_date", Kind.DATE),
        Column("user_gender", Kind.TEXT),
        Column("user_is_senior", Kind.BOOL),
        Column("has_family", Kind.BOOL),
        Column("has_dependents", Kind.BOOL),
    ),
    per_month=False,
)
SUBSCRIPTIONS = Table(
    "subscriptions",
    (
        _USER_ID,
        Column("months_active", Kind.INT, ge=0),
        Column("plan_stream_tv", Kind.BOOL, nullable=True),
        Column("plan_stream_movies", Kind.BOOL, nullable=True),
        Column("contract_type", Kind.CATEGORY, domain=CONTRACT_TYPES),
        Column("paperless_billing", Kind.BOOL),
        Column("monthly_fee", Kind.NUM, gt=0),
        Column("total_paid", Kind.NUM, ge=0),
        Column("net_service", Kind.CATEGORY, domain=NET_SERVICES),
        Column("add_on_security", Kind.BOOL, nullable=True, optional=True),
        Column("add_on_backup", Kind.BOOL, nullable=True, optional=True),
        Column("add_on_device_protect", Kind.BOOL, nullable=True, optional=True),
        Column("add_on_support", Kind.BOOL, nullable=True, optional=True),
    ),
)
USAGE = Table(
    "usage_agg_30d",
    (
        _USER_ID,
        Column("watch_hours_30d", Kind.NUM, ge=0),
        Column("avg_session_mins_7d", Kind.NUM, ge=0),
        Column("unique_devices_30d", Kind.INT, ge=0),
        Column("skips_7d", Kind.INT, ge=0),
        Column("rebuffer_events_7d", Kind.INT, ge=0),
    ),
)
PAYMENTS = Table("payments_agg_90d", (_USER_ID, Column("failed_payments_90d", Kind.INT, ge=0)))
SUPPORT = Table(
    "support_agg_90d",
    (
        _USER_ID,
        Column("support_tickets_90d", Kind.INT, ge=0),
        Column("ticket_avg_resolution_hrs_90d", Kind.NUM, ge=0),
    ),
)
LABELS = Table("labels", (_USER_ID, Column("churn_label", Kind.BOOL)))

# Ingestion order matters: children are checked against the users loaded before them.
RAW_TABLES: tuple[Table, ...] = (USERS, SUBSCRIPTIONS, USAGE, PAYMENTS, SUPPORT, LABELS)


@dataclass(frozen=True)
class Snapshot:
    """A frozen projection of one raw month table: one row per (user_id, as_of)."""

    name: str
    source: Table
    features: tuple[str, ...] = field(default=())

    @property
    def db_columns(self) -> tuple[str, ...]:
        return ("user_id", "as_of", "event_timestamp", *self.features)

    def column(self, name: str) -> Column:
        return next(c for c in self.source.columns if c.name == name)


SNAPSHOTS: tuple[Snapshot, ...] = (
    Snapshot(
        "subscriptions_profile_snapshots",
        SUBSCRIPTIONS,
        (
            "months_active",
            "monthly_fee",
            "paperless_billing",
            "plan_stream_tv",
            "plan_stream_movies",
            "net_service",
        ),
    ),
    Snapshot("usage_agg_30d_snapshots", USAGE, tuple(c.name for c in USAGE.columns[1:])),
    Snapshot("payments_agg_90d_snapshots", PAYMENTS, ("failed_payments_90d",)),
    Snapshot("support_agg_90d_snapshots", SUPPORT, tuple(c.name for c in SUPPORT.columns[1:])),
)


def _column_ddl(col: Column) -> str:
    return f"{col.name} {SQL_TYPES[col.kind]}{'' if col.nullable else ' NOT NULL'}"


def raw_ddl(table: Table) -> str:
    """CREATE TABLE statement (DuckDB and Postgres share the dialect used here)."""
    cols = [_column_ddl(table.columns[0])]
    if table.per_month:
        cols.append("as_of DATE NOT NULL")
    cols += [_column_ddl(c) for c in table.columns[1:]]
    cols.append(f"PRIMARY KEY ({', '.join(table.key)})")
    return f"CREATE TABLE IF NOT EXISTS {table.name} (\n  " + ",\n  ".join(cols) + "\n)"


def snapshot_ddl(snap: Snapshot) -> str:
    cols = [
        "user_id TEXT NOT NULL",
        "as_of DATE NOT NULL",
        # Feast's timestamp field: the as_of at 00:00 UTC, so an entity row at as_of sees exactly this snapshot.
        "event_timestamp TIMESTAMPTZ NOT NULL",
        *(_column_ddl(snap.column(f)) for f in snap.features),
        "PRIMARY KEY (user_id, as_of)",
    ]
    return f"CREATE TABLE IF NOT EXISTS {snap.name} (\n  " + ",\n  ".join(cols) + "\n)"


QUARANTINE_DDL = """CREATE TABLE IF NOT EXISTS quarantine (
  as_of DATE NOT NULL,
  table_name TEXT NOT NULL,
  file TEXT NOT NULL,
  line INTEGER NOT NULL,
  column_name TEXT,
  value TEXT,
  reason TEXT NOT NULL,
  raw_row TEXT NOT NULL
)"""

INGESTIONS_DDL = """CREATE TABLE IF NOT EXISTS ingestions (
  as_of DATE PRIMARY KEY,
  source TEXT NOT NULL,
  content_sha256 TEXT NOT NULL,
  input_rows INTEGER NOT NULL,
  loaded_rows INTEGER NOT NULL,
  quarantined_rows INTEGER NOT NULL
)"""

# one row per month `streamflow monthly` started: finished stays false until the month's decision is made, so a run
# that died (or a workflow retry) takes the same month again instead of the next one
MONTHLY_RUNS_DDL = """CREATE TABLE IF NOT EXISTS monthly_runs (
  as_of DATE PRIMARY KEY,
  finished BOOLEAN NOT NULL,
  decision TEXT
)"""

SNAPSHOT_RUNS_DDL = """CREATE TABLE IF NOT EXISTS snapshot_runs (
  as_of DATE PRIMARY KEY,
  rows INTEGER NOT NULL
)"""

# the users whose rows the online store holds for the newest as_of `materialize` wrote (one as_of at a time): when a
# corrected re-ingest of that month drops a user, the next materialization of it finds them here and blanks their
# rows (a stamp as new as the month's cannot be told stale by its timestamp)
ONLINE_USERS_DDL = """CREATE TABLE IF NOT EXISTS online_users (
  user_id TEXT NOT NULL,
  as_of DATE NOT NULL
)"""
