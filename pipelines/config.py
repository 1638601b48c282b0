"""The one settings object of StreamFlow.

Every knob is read from an environment variable named ``STREAMFLOW_<FIELD>`` (for example ``STREAMFLOW_HOME``,
``STREAMFLOW_DB_URL``). The CLI builds :class:`Settings` once at start and passes it down; nothing in this module
runs at import time, creates folders or touches a database.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


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
        default=Path(__file__).resolve().parent.parent / "feature_repo",
        description="The Feast repo (definitions + feature_store*.yaml).",
    )
    feature_service: str = Field(default="churn_features", description="The FeatureService the model reads.")
    mlflow_tracking_uri: str | None = Field(
        default=None,
        description="MLflow tracking + registry URI; empty: SQLite under STREAMFLOW_HOME (embedded) or the "
        "Postgres database (Postgres mode). An http://… URI names a tracking server.",
    )
    model_kind: str = Field(default="hgb", description="Default model of `streamflow train` (hgb, rf, logreg).")
    seed: int = Field(default=42, description="Seed of the train/validation split and of the model.")
    promotion_min_auc_gain: float = Field(
        default=0.002, description="A challenger must beat the champion's ROC AUC by at least this to be promoted."
    )
    log_level: str = Field(default="WARNING", description="Python logging level of the CLI (logs go to stderr).")

    @field_validator("db_url", "mlflow_tracking_uri", mode="before")
    @classmethod
    def _blank_is_default(cls, value: object) -> object:
        return None if isinstance(value, str) and not value.strip() else value

    @property
    def database_url(self) -> str:
        """The database the pipeline writes to: ``STREAMFLOW_DB_URL`` or the embedded DuckDB file."""
        return self.db_url or f"duckdb:///{self.home / 'streamflow.duckdb'}"

    @property
    def is_postgres(self) -> bool:
        """True when the raw tables and snapshots live in Postgres."""
        return self.database_url.startswith(("postgresql://", "postgres://", "postgresql+psycopg2://"))

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
    def quarantine_dir(self) -> Path:
        """Per-month quarantine reports (CSV + JSON), in both modes."""
        return self.home / "quarantine"
