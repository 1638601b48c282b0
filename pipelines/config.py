"""The one settings object of StreamFlow.

Every knob is read from an environment variable named ``STREAMFLOW_<FIELD>`` (for example ``STREAMFLOW_HOME``,
``STREAMFLOW_DB_URL``). The CLI builds :class:`Settings` once at start and passes it down; nothing in this module
runs at import time, creates folders or touches a database.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

# the URL schemes of Postgres mode, compared without case and without a driver suffix (postgresql+psycopg2://)
POSTGRES_SCHEMES = ("postgresql", "postgres")


def is_postgres_url(url: str | None) -> bool:
    """The one answer to "which backend": True when ``url`` names a Postgres database.

    ``Settings.is_postgres`` and the Feast repo (``feature_repo/features.py``, which reads ``STREAMFLOW_DB_URL``)
    both ask this function, so the pipeline's tables and Feast's sources can never disagree. The scheme is compared
    without case and without its ``+driver`` part: ``Postgresql://``, ``postgres://`` and ``postgresql+psycopg2://``
    all name Postgres.
    """
    if not url or "://" not in url:
        return False
    scheme = url.strip().partition("://")[0]
    return scheme.partition("+")[0].lower() in POSTGRES_SCHEMES


def postgres_url(url: str) -> str:
    """``url`` with its scheme spelled ``postgresql://`` (the spelling libpq, psycopg2 and SQLAlchemy all accept);
    the rest — credentials (percent-encoded, as in any URL), host, database, query — is kept as given."""
    return "postgresql://" + url.strip().partition("://")[2]


def default_feature_repo() -> Path:
    """The Feast repo shipped with StreamFlow: ``feature_repo/`` beside the ``pipelines`` package, both in a source
    checkout and in an installed wheel (where it is package data in site-packages)."""
    return Path(__file__).resolve().parent.parent / "feature_repo"


class Settings(BaseSettings):
    """Configuration read from ``STREAMFLOW_*`` environment variables."""

    model_config = SettingsConfigDict(env_prefix="STREAMFLOW_", extra="ignore", frozen=True)

    home: Path = Field(
        default=Path(".streamflow"),
        description="Folder holding the embedded state: database, snapshots, quarantine reports.",
    )
    db_url: str | None = Field(
        default=None,
        description="postgresql://user:pass@host:port/db for Postgres mode; empty means the embedded DuckDB file.",
    )
    quarantine_max_share: float = Field(
        default=0.01,
        ge=0.0,
        le=1.0,
        description="A table whose share of quarantined rows passes this fails the month (nothing is loaded).",
    )

    db_sslmode: str = Field(
        default="prefer",
        description="sslmode for Feast's Postgres stores and registry (Feast's own default is 'require'); "
        "an sslmode=… in STREAMFLOW_DB_URL wins.",
    )
    feature_repo: Path = Field(
        default_factory=default_feature_repo,
        description="The Feast repo (definitions + feature_store*.yaml).",
    )
    feature_service: str = Field(default="churn_features", description="The FeatureService the model reads.")
    mlflow_tracking_uri: str | None = Field(
        default=None,
        description="MLflow tracking + registry URI; empty: SQLite under STREAMFLOW_HOME (embedded) or the "
        "Postgres database (Postgres mode). An http://… URI names a tracking server.",
    )
    model_kind: str = Field(
        default="auto",
        description="Default model of `streamflow train`: auto (the family 5-fold CV on the training split prefers "
        "among logreg, spline and hgb), or one family: hgb, rf, logreg, spline.",
    )
    seed: int = Field(default=42, description="Seed of the train/validation split and of the model.")
    promotion_min_auc_gain: float = Field(
        default=0.002, description="A challenger must beat the champion's ROC AUC by at least this to be promoted."
    )
    # monitoring (pipelines/drift.py): the decision of `streamflow drift` and `streamflow monthly`
    drift_share_threshold: float = Field(
        default=0.30, ge=0.0, le=1.0, description="RETRAIN when at least this share of the features drifted."
    )
    drift_column_threshold: float = Field(
        default=0.1,
        gt=0.0,
        description="A column drifted when its score reaches this: normed Wasserstein distance (numbers) or "
        "Jensen-Shannon distance (categories, the label).",
    )
    quality_drop_margin: float = Field(
        default=0.05,
        ge=0.0,
        description="RETRAIN when the production model's ROC AUC on a month's labels is this far below its "
        "validation AUC.",
    )
    pushgateway_url: str | None = Field(
        default=None,
        description="Prometheus Pushgateway every pipeline step pushes its figures to (they are always written to "
        "STREAMFLOW_HOME/metrics/*.prom too).",
    )
    # `streamflow monitor` (make monitor): a local Prometheus and Pushgateway on loopback. Not *_PUSHGATEWAY_PORT:
    # Kubernetes gives every pod STREAMFLOW_PUSHGATEWAY_PORT=tcp://… for the chart's streamflow-pushgateway Service
    monitor_prometheus_port: int = Field(default=9090, description="Port of the Prometheus `streamflow monitor` runs.")
    monitor_pushgateway_port: int = Field(
        default=9091, description="Port of the Pushgateway `streamflow monitor` runs (when no URL is set)."
    )
    log_level: str = Field(default="WARNING", description="Python logging level of the CLI (logs go to stderr).")

    # serving (model_server/): the defaults are the embedded layout of DESIGN.md; the chart overrides them by env
    serve_host: str = Field(
        default="127.0.0.1", description="Address both model servers listen on (0.0.0.0 in a pod, loopback locally)."
    )
    transformer_http_port: int = Field(default=8080, description="Transformer HTTP port (the entry users call).")
    transformer_grpc_port: int = Field(default=8081, description="Transformer gRPC port.")
    predictor_http_port: int = Field(default=8082, description="Predictor HTTP port.")
    predictor_grpc_port: int = Field(default=8083, description="Predictor gRPC port.")
    served_model_name: str = Field(default="streamflow-churn", description="The v2 model name both servers answer.")
    model_alias: str = Field(default="production", description="Registry alias the predictor serves.")
    model_poll_seconds: float = Field(
        default=10.0, gt=0, description="How often the predictor asks the registry whether the alias moved."
    )
    max_batch_size: int = Field(
        default=10_000, ge=1, description="Most user ids one request may carry; more is answered 413."
    )
    serve_threads: int = Field(
        default=1, ge=1, description="OpenMP/BLAS threads of the predictor (1: on 2 cores, threads fight the servers)."
    )

    @field_validator("db_url", "mlflow_tracking_uri", "pushgateway_url", mode="before")
    @classmethod
    def _blank_is_default(cls, value: object) -> object:
        return None if isinstance(value, str) and not value.strip() else value

    @property
    def database_url(self) -> str:
        """The database the pipeline writes to: ``STREAMFLOW_DB_URL`` (a Postgres URL spelled ``postgresql://``
        whatever its scheme's case or driver) or the embedded DuckDB file."""
        if self.db_url and is_postgres_url(self.db_url):
            return postgres_url(self.db_url)
        return self.db_url or f"duckdb:///{self.home / 'streamflow.duckdb'}"

    @property
    def is_postgres(self) -> bool:
        """True when the raw tables and snapshots live in Postgres (:func:`is_postgres_url` decides)."""
        return is_postgres_url(self.db_url)

    @property
    def snapshot_dir(self) -> Path:
        """Embedded mode: one parquet file per snapshot table and as_of (see docs/architecture.md)."""
        return self.home / "snapshots"

    @property
    def tracking_uri(self) -> str:
        """Where MLflow tracks runs and keeps the registry."""
        if self.mlflow_tracking_uri:
            return self.mlflow_tracking_uri
        if self.is_postgres:
            return self.database_url
        return f"sqlite:///{(self.home / 'mlflow.db').resolve()}"

    @property
    def artifacts_dir(self) -> Path:
        """Local artifact store when MLflow is not a server."""
        return self.home / "mlartifacts"

    @property
    def datasets_dir(self) -> Path:
        """Training sets (parquet + manifest) per as_of."""
        return self.home / "datasets"

    @property
    def reports_dir(self) -> Path:
        """Drift reports (``evidently/drift_<A>_vs_<B>.{html,json}``)."""
        return self.home / "reports"

    @property
    def metrics_dir(self) -> Path:
        """Prometheus text files written by batch jobs (node-exporter textfile format)."""
        return self.home / "metrics"

    @property
    def quarantine_dir(self) -> Path:
        """Per-month quarantine reports (CSV + JSON), in both modes."""
        return self.home / "quarantine"
