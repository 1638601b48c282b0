"""The metric catalogue (issue 18): the only series the dashboards and the alert rules may read, besides
Prometheus' own ``up``. The servers' names come from the code (``ServerMetrics`` registered in a private registry);
the batch figures are pushed by pipelines/metrics.py and pipelines/drift.py. A histogram is listed by its three
series, a counter by its ``_total``. tests/monitoring proves on a real Prometheus that every name is scraped."""

from __future__ import annotations

import functools

BATCH_METRICS = frozenset(
    {
        # pipelines/metrics.py: every step, each month's rows and decision, the production version
        "streamflow_step_duration_seconds",
        "streamflow_step_last_run_timestamp_seconds",
        "streamflow_step_last_success_timestamp_seconds",
        "streamflow_step_success",
        "streamflow_ingest_rows",
        "streamflow_monthly_decision",
        "streamflow_production_model_version",
        # pipelines/metrics.py record_scores: the month's retention list (streamflow score)
        "streamflow_score_rows",
        "streamflow_score_share_above_threshold",
        "streamflow_score_mean_probability",
        # pipelines/drift.py
        "streamflow_drift_share",
        "streamflow_drift_share_threshold",
        "streamflow_quality_drop_margin",
        "streamflow_feature_drift",
        "streamflow_feature_drift_score",
        "streamflow_target_drift_score",
        "streamflow_target_drift",
        "streamflow_prediction_drift_score",
        "streamflow_model_auc",
        "streamflow_drift_decision",
        "streamflow_drift_run_info",
        "streamflow_drift_last_run_timestamp_seconds",
    }
)


@functools.cache
def server_metrics() -> frozenset[str]:
    """The series names of a server's ``streamflow_*`` metrics, read from ServerMetrics itself."""
    from prometheus_client import CollectorRegistry

    from model_server.server import ServerMetrics

    registry = CollectorRegistry()
    ServerMetrics("predictor", registry=registry)
    suffixes = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count"), "gauge": ("",)}
    return frozenset(f"{family.name}{s}" for family in registry.collect() for s in suffixes[family.type])


def catalogue() -> frozenset[str]:
    return server_metrics() | BATCH_METRICS | {"up"}
