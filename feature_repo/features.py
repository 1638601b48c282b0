"""StreamFlow's Feast definitions: the subscriber entity, one feature view per snapshot table, and the
FeatureService ``churn_features`` — the ONE list of model features. Training reads it through
``get_historical_features`` and serving through ``get_online_features``; no other file repeats it.

Sources follow the storage mode (docs/architecture.md): the parquet snapshots under ``$STREAMFLOW_HOME/snapshots``
on the embedded default, the ``*_snapshots`` tables when ``STREAMFLOW_DB_URL`` names a Postgres database. They are
read from the same environment variables as the pipeline's settings, so ``feast apply`` run by hand and
``streamflow features apply`` see the same sources. Everything else — stores and registry — lives in
``feature_store.yaml`` (embedded) or ``feature_store.postgres.yaml``.
"""

import os
from datetime import timedelta
from pathlib import Path

from feast import Entity, FeatureService, FeatureView, Field, FileSource, ValueType
from feast.infra.offline_stores.contrib.postgres_offline_store.postgres_source import PostgreSQLSource
from feast.types import Bool, Float64, Int64, String

from pipelines.config import is_postgres_url

# A snapshot row describes its own as_of only: with a one-day TTL an entity row dated at as_of D joins D's
# snapshot and never an older one, so a user missing from D's snapshot gets missing features instead of
# last month's values.
SNAPSHOT_TTL = timedelta(days=1)

# A NULL that the data contract allows is a value, not a missing feature: plan_stream_* are empty for users
# without internet service. Serving reads this tag to tell the two apart.
NULL_WHEN_NO_INTERNET = {"null_allowed_when": "net_service=No"}

# Which backend is StreamFlow's one decision (pipelines.config.is_postgres_url), asked of the same variable the
# settings read; `streamflow` exports it (pipelines.online.feast_env) before Feast imports this file.
_POSTGRES = is_postgres_url(os.environ.get("STREAMFLOW_DB_URL"))
_SNAPSHOTS = Path(os.environ.get("STREAMFLOW_HOME", ".streamflow")).resolve() / "snapshots"


def _snapshot_source(table: str) -> FileSource | PostgreSQLSource:
    if _POSTGRES:
        return PostgreSQLSource(name=table, table=table, timestamp_field="event_timestamp")
    return FileSource(name=table, path=str(_SNAPSHOTS / table), timestamp_field="event_timestamp")


user = Entity(
    name="user",
    join_keys=["user_id"],
    value_type=ValueType.STRING,
    description="A subscriber of the streaming service (course-style id, e.g. 7590-VHVEG).",
)

subs_profile_fv = FeatureView(
    name="subs_profile_fv",
    entities=[user],
    ttl=SNAPSHOT_TTL,
    schema=[
        Field(name="months_active", dtype=Int64, description="Tenure in months."),
        Field(name="monthly_fee", dtype=Float64),
        Field(name="paperless_billing", dtype=Bool),
        Field(name="plan_stream_tv", dtype=Bool, tags=NULL_WHEN_NO_INTERNET),
        Field(name="plan_stream_movies", dtype=Bool, tags=NULL_WHEN_NO_INTERNET),
        Field(name="net_service", dtype=String, description="DSL, Fiber optic or No."),
    ],
    source=_snapshot_source("subscriptions_profile_snapshots"),
    tags={"snapshot_table": "subscriptions_profile_snapshots"},
)

usage_agg_30d_fv = FeatureView(
    name="usage_agg_30d_fv",
    entities=[user],
    ttl=SNAPSHOT_TTL,
    schema=[
        Field(name="watch_hours_30d", dtype=Float64),
        Field(name="avg_session_mins_7d", dtype=Float64),
        Field(name="unique_devices_30d", dtype=Int64),
        Field(name="skips_7d", dtype=Int64),
        Field(name="rebuffer_events_7d", dtype=Int64),
    ],
    source=_snapshot_source("usage_agg_30d_snapshots"),
    tags={"snapshot_table": "usage_agg_30d_snapshots"},
)

payments_agg_90d_fv = FeatureView(
    name="payments_agg_90d_fv",
    entities=[user],
    ttl=SNAPSHOT_TTL,
    schema=[Field(name="failed_payments_90d", dtype=Int64)],
    source=_snapshot_source("payments_agg_90d_snapshots"),
    tags={"snapshot_table": "payments_agg_90d_snapshots"},
)

support_agg_90d_fv = FeatureView(
    name="support_agg_90d_fv",
    entities=[user],
    ttl=SNAPSHOT_TTL,
    schema=[
        Field(name="support_tickets_90d", dtype=Int64),
        Field(name="ticket_avg_resolution_hrs_90d", dtype=Float64),
    ],
    source=_snapshot_source("support_agg_90d_snapshots"),
    tags={"snapshot_table": "support_agg_90d_snapshots"},
)

# The model's features, versioned with the model: a new feature set is a new service (churn_features_v2 …).
churn_features = FeatureService(
    name="churn_features",
    features=[subs_profile_fv, usage_agg_30d_fv, payments_agg_90d_fv, support_agg_90d_fv],
    description="The 14 features of the StreamFlow churn model.",
    tags={"label": "churn_label"},
)
