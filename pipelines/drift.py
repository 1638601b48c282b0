"""``streamflow drift``: is the production model still right for this month?

Three questions, one decision:

* **data drift** — Evidently compares the 14 features of the current month with the month the production model was
  trained on (its ``as_of`` tag), one ``ValueDrift`` per feature with a stated method: normed Wasserstein distance for
  numbers, Jensen-Shannon distance for categories (booleans and ``net_service``; a contract NULL is its own category),
  both with the threshold ``STREAMFLOW_DRIFT_COLUMN_THRESHOLD``. The drift share is the share of features whose
  Evidently test failed. (Evidently's DataDriftPreset computes every column twice — once per column, once for its
  count — which is what makes it take ~60 s on a million rows; per-column metrics alone take a third of that.)
* **target and prediction drift** — the same comparison on ``churn_label`` and on the production model's scores of
  both months;
* **realized quality** — the production model's ROC AUC on the current month's own labels, against the validation AUC
  it was registered with: latency panels say nothing about whether the predictions are still right; this does.

The decision is RETRAIN when the drift share reaches ``STREAMFLOW_DRIFT_SHARE_THRESHOLD``, the target drifted, or the
realized AUC fell more than ``STREAMFLOW_QUALITY_DROP_MARGIN`` below the validation AUC; otherwise NO_ACTION. The HTML
and JSON reports go to ``reports/evidently/drift_<A>_vs_<B>.*`` under ``STREAMFLOW_HOME`` and into an MLflow run of the
``streamflow_drift`` experiment (once per identical input: re-running logs nothing new), and the figures are written
as Prometheus text (``metrics/streamflow_drift.prom``) and pushed to a Pushgateway when one is configured.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
import warnings
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path
from typing import Any

import pandas as pd

from pipelines.config import Settings
from pipelines.db import Database
from pipelines.errors import InvalidInput, NotFound

log = logging.getLogger(__name__)

DRIFT_EXPERIMENT = "streamflow_drift"
LABEL = "churn_label"
PREDICTION = "prediction"
NUM_METHOD, CAT_METHOD = "wasserstein", "jensenshannon"
RETRAIN, NO_ACTION = "RETRAIN", "NO_ACTION"
NULL_CATEGORY = "NULL"  # a contract NULL (plan_stream_* without internet) is a category of its own


@dataclass
class ColumnDrift:
    """Evidently's verdict on one column."""

    column: str
    method: str  # Evidently's own name of the test, e.g. "Wasserstein distance (normed)"
    score: float
    threshold: float
    drifted: bool
    note: str | None = None  # set when the column could not be compared as is (e.g. NULL in every row)

    def to_json(self) -> dict[str, Any]:
        out = {"method": self.method, "score": round(self.score, 6), "threshold": self.threshold}
        return out | {"drifted": self.drifted} | ({"note": self.note} if self.note else {})


@dataclass
class Comparison:
    """Per-column drift of two months, and the Evidently snapshot holding the reports."""

    features: list[ColumnDrift]
    target: ColumnDrift | None
    prediction: ColumnDrift | None
    snapshot: Any

    @property
    def drifted_features(self) -> list[str]:
        return [c.column for c in self.features if c.drifted]

    @property
    def drift_share(self) -> float:
        return len(self.drifted_features) / len(self.features)


# ------------------------------------------------------------------------------------------------ the comparison


def _evidently_frame(frame: pd.DataFrame, numeric: list[str], categorical: list[str]) -> pd.DataFrame:
    """Numbers as float64 (NULL = NaN), categories as text with NULL as its own value."""
    out = {c: pd.to_numeric(frame[c], errors="coerce").astype("float64") for c in numeric}
    for c in categorical:
        values = frame[c].astype(object)
        out[c] = values.where(values.notna(), NULL_CATEGORY).astype(str)
    return pd.DataFrame(out, index=frame.index)


def _check_frames(reference: pd.DataFrame, current: pd.DataFrame, features: list[str], names: tuple[str, str]) -> None:
    for frame, name in ((reference, names[0]), (current, names[1])):
        if frame.empty:
            raise InvalidInput(f"{name}: no rows to compare")
        missing = [f for f in features if f not in frame.columns]
        if missing:
            raise InvalidInput(f"{name}: feature column(s) missing: {', '.join(missing)}")


def compare(
    reference: pd.DataFrame,
    current: pd.DataFrame,
    features: list[str],
    categorical: list[str],
    *,
    threshold: float,
    names: tuple[str, str] = ("reference", "current"),
) -> Comparison:
    """Evidently's drift of every feature, of ``churn_label`` and of ``prediction`` (the last two if both frames
    hold them).

    A feature that is NULL in every row of one month and not the other is drifted (score 1, method "all NULL"); NULL
    everywhere in both is not. Nothing is sampled: every row counts.

    Raises:
        InvalidInput: an empty month, or a feature column missing from one of them.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Evidently's imports warn about numpy and litestar deprecations
        from evidently import DataDefinition, Dataset, Report
        from evidently.metrics import ValueDrift

    _check_frames(reference, current, features, names)
    extra_num = [PREDICTION] if PREDICTION in reference and PREDICTION in current else []
    extra_cat = [LABEL] if LABEL in reference and LABEL in current else []
    results: dict[str, ColumnDrift] = {}
    compared_num, compared_cat = [], []
    for column in [*features, *extra_num, *extra_cat]:
        ref_null, cur_null = reference[column].isna().all(), current[column].isna().all()
        if ref_null or cur_null:
            which = " and ".join(n for n, empty in zip(names, (ref_null, cur_null), strict=True) if empty)
            drifted = ref_null != cur_null
            note = f"NULL in every row of {which}"
            results[column] = ColumnDrift(column, "all NULL", float(drifted), threshold, drifted, note)
        elif column in categorical or column in extra_cat:
            compared_cat.append(column)
        else:
            compared_num.append(column)
    metrics = [ValueDrift(column=c, method=NUM_METHOD, threshold=threshold) for c in compared_num]
    metrics += [ValueDrift(column=c, method=CAT_METHOD, threshold=threshold) for c in compared_cat]
    definition = DataDefinition(numerical_columns=compared_num, categorical_columns=compared_cat)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Evidently/pandas deprecation chatter on every column
        datasets = [
            Dataset.from_pandas(_evidently_frame(f, compared_num, compared_cat), data_definition=definition)
            for f in (current, reference)
        ]
        snapshot = Report(metrics, include_tests=True).run(*datasets) if metrics else None
    if snapshot is not None:
        results |= _read_snapshot(snapshot.dict(), threshold)
    return Comparison(
        features=[results[f] for f in features],
        target=results.get(LABEL),
        prediction=results.get(PREDICTION),
        snapshot=snapshot,
    )


def _read_snapshot(report: dict[str, Any], threshold: float) -> dict[str, ColumnDrift]:
    """Scores from Evidently's metrics, verdicts and method names from its tests (FAIL = drift detected)."""
    tests = {t["metric_config"]["metric_id"]: t for t in report["tests"]}
    out = {}
    for metric in report["metrics"]:
        column = metric["config"]["column"]
        test = tests[metric["id"]]
        description = test["description"]
        method = description.split("method is ", 1)[-1].split(". The drift threshold", 1)[0]
        out[column] = ColumnDrift(column, method, float(metric["value"]), threshold, test["status"] == "FAIL")
    return out


# ------------------------------------------------------------------------------------------------ the decision


@dataclass
class DriftResult:
    reference_as_of: date
    current_as_of: date
    model_version: str
    rows: dict[str, int]
    comparison: Comparison
    label_rate: dict[str, float]
    realized_auc: float | None
    validation_auc: float | None
    decision: str
    reasons: list[str]
    thresholds: dict[str, float]
    report_html: Path
    report_json: Path
    mlflow_run_id: str | None = None
    metrics_file: Path | None = None
    pushed: str | None = None  # "ok", an error message, or None when no Pushgateway is configured
    seconds: dict[str, float] = field(default_factory=dict)

    @property
    def drift_share(self) -> float:
        return self.comparison.drift_share

    @property
    def auc_drop(self) -> float | None:
        if self.realized_auc is None or self.validation_auc is None:
            return None
        return self.validation_auc - self.realized_auc

    def line(self) -> str:
        """The course's decision line."""
        target = self.comparison.target
        return (
            f"[Evidently] report_html={self.report_html} report_json={self.report_json} "
            f"drift_share={self.drift_share:.2f} value_drift_col={LABEL} -> {self.decision} "
            + "; ".join(self.reasons)
            + ("" if target is None else f" (target_drift={target.score:.3f})")
        )

    def to_json(self) -> dict[str, Any]:
        comp = self.comparison
        return {
            "decision": self.decision,
            "drift_share": round(self.drift_share, 6),
            "drifted_features": comp.drifted_features,
            "reasons": self.reasons,
            "reference_as_of": self.reference_as_of.isoformat(),
            "current_as_of": self.current_as_of.isoformat(),
            "model_version": self.model_version,
            "rows": self.rows,
            "features": {c.column: c.to_json() for c in comp.features},
            "target_drift": None if comp.target is None else comp.target.to_json(),
            "prediction_drift": None if comp.prediction is None else comp.prediction.to_json(),
            "label_rate": {k: round(v, 6) for k, v in self.label_rate.items()},
            "realized_auc": None if self.realized_auc is None else round(self.realized_auc, 6),
            "validation_auc": self.validation_auc,
            "auc_drop": None if self.auc_drop is None else round(self.auc_drop, 6),
            "thresholds": self.thresholds,
            "report_html": str(self.report_html),
            "report_json": str(self.report_json),
            "mlflow_run_id": self.mlflow_run_id,
            "metrics_file": None if self.metrics_file is None else str(self.metrics_file),
            "pushed": self.pushed,
            "seconds": {k: round(v, 3) for k, v in self.seconds.items()},
            "line": self.line(),
        }


def decide(
    comparison: Comparison,
    realized_auc: float | None,
    validation_auc: float | None,
    label_rate: dict[str, float],
    settings: Settings,
    names: tuple[str, str],
) -> tuple[str, list[str]]:
    """RETRAIN with every reason that holds, or NO_ACTION with what was checked."""
    share, limit = comparison.drift_share, settings.drift_share_threshold
    margin = settings.quality_drop_margin
    reasons, calm = [], []
    if share >= limit:
        reasons.append(f"drift_share={share:.2f} >= {limit:.2f} ({', '.join(comparison.drifted_features)})")
    else:
        drifted = f" ({', '.join(comparison.drifted_features)})" if comparison.drifted_features else ""
        calm.append(f"drift_share={share:.2f} < {limit:.2f}{drifted}")
    target = comparison.target
    rates = f"label rate {label_rate[names[0]]:.1%} -> {label_rate[names[1]]:.1%}"
    if target is not None and target.drifted:
        reasons.append(f"target drift on {LABEL}: {rates} ({target.method} {target.score:.3f} >= {target.threshold})")
    elif target is not None:
        calm.append(f"no target drift ({rates})")
    if realized_auc is None:
        calm.append(f"realized AUC undefined ({names[1]} has a single {LABEL} class)")
    elif validation_auc is None:
        calm.append(f"ROC AUC {realized_auc:.4f} on {names[1]} (the version records no validation AUC)")
    elif validation_auc - realized_auc > margin:
        reasons.append(
            f"quality drop: ROC AUC {realized_auc:.4f} on {names[1]} vs {validation_auc:.4f} at validation "
            f"(drop {validation_auc - realized_auc:.4f} > {margin:g})"
        )
    else:
        calm.append(f"ROC AUC {realized_auc:.4f} on {names[1]} vs {validation_auc:.4f} at validation")
    return (RETRAIN, reasons) if reasons else (NO_ACTION, calm)


def _month_frame(settings: Settings, db: Database, as_of: date, store, built=None) -> pd.DataFrame:
    """The month's labelled users and their features (the point-in-time training set of that as_of); ``built``: its
    DatasetResult when the caller already built it."""
    from pipelines.features import build_dataset

    if built is None or built.as_of != as_of:
        built = build_dataset(settings, db, as_of, store=store)
    return pd.read_parquet(built.path)


def run_drift(
    settings: Settings,
    db: Database,
    current_as_of: date,
    reference_as_of: date | None = None,
    *,
    model_version: str | None = None,
    current_dataset=None,
    store=None,
) -> DriftResult:
    """Compare ``current_as_of`` with the reference month, score the model on the current labels, decide, and
    record everything (reports, MLflow run, Prometheus figures).

    Args:
        current_as_of: the new month (B).
        reference_as_of: the month to compare with (A); default the ``as_of`` tag of the judged model version.
        model_version: the version judged; default the one holding alias ``production``.
        current_dataset: B's :class:`~pipelines.features.DatasetResult` when the caller built it already.

    Raises:
        NotFound: no production model, or no snapshot / labels for one of the months.
        InvalidInput: reference and current are the same month, or a month has no rows.
        StreamflowError: MLflow unreachable.
    """
    import mlflow

    from pipelines.online import feature_names, open_store
    from pipelines.registry import MODEL_NAME, PRODUCTION, mlflow_client, version_by_alias
    from pipelines.train import categorical_features

    started = time.perf_counter()
    client = mlflow_client(settings)
    if model_version is None:
        version = version_by_alias(client, PRODUCTION)
        if version is None:
            raise NotFound(
                f"{MODEL_NAME} has no '{PRODUCTION}' version to judge: run `streamflow train` and "
                "`streamflow promote` (or `streamflow monthly` on a first month) first"
            )
    else:
        version = client.get_model_version(MODEL_NAME, model_version)
    reference_as_of = reference_as_of or date.fromisoformat(version.tags["as_of"])
    if reference_as_of == current_as_of:
        raise InvalidInput(
            f"reference and current are the same month ({current_as_of.isoformat()}): nothing to compare; "
            f"pass --reference-as-of another month (version {version.version} was trained on {reference_as_of})"
        )
    names = (reference_as_of.isoformat(), current_as_of.isoformat())
    store = store or open_store(settings)
    features = feature_names(store.get_feature_service(version.tags.get("feature_service", settings.feature_service)))
    reference = _month_frame(settings, db, reference_as_of, store)
    current = _month_frame(settings, db, current_as_of, store, built=current_dataset)
    _check_frames(reference, current, features, names)
    loaded = time.perf_counter()

    model = mlflow.sklearn.load_model(f"models:/{MODEL_NAME}/{version.version}")
    for frame in (reference, current):
        frame[PREDICTION] = model.predict_proba(frame[features])[:, 1]
    realized_auc = _auc(current)
    scored = time.perf_counter()

    comparison = compare(
        reference,
        current,
        features,
        categorical_features(reference, features),
        threshold=settings.drift_column_threshold,
        names=names,
    )
    compared = time.perf_counter()
    label_rate = {names[0]: float(reference[LABEL].mean()), names[1]: float(current[LABEL].mean())}
    validation_auc = float(version.tags["validation_auc"]) if "validation_auc" in version.tags else None
    decision, reasons = decide(comparison, realized_auc, validation_auc, label_rate, settings, names)
    folder = settings.reports_dir / "evidently"
    stem = f"drift_{names[0]}_vs_{names[1]}"
    result = DriftResult(
        reference_as_of=reference_as_of,
        current_as_of=current_as_of,
        model_version=str(version.version),
        rows={names[0]: len(reference), names[1]: len(current)},
        comparison=comparison,
        label_rate=label_rate,
        realized_auc=realized_auc,
        validation_auc=validation_auc,
        decision=decision,
        reasons=reasons,
        thresholds={
            "drift_share": settings.drift_share_threshold,
            "column": settings.drift_column_threshold,
            "quality_drop": settings.quality_drop_margin,
        },
        report_html=folder / f"{stem}.html",
        report_json=folder / f"{stem}.json",
    )
    _save_reports(result)
    key = _run_key(result, reference, current, features)
    result.mlflow_run_id = _log_run(settings, client, result, key)
    result.metrics_file, result.pushed = export_metrics(settings, result)
    result.seconds = {
        "load": loaded - started,
        "score": scored - loaded,
        "evidently": compared - scored,
        "total": time.perf_counter() - started,
    }
    return result


def _auc(frame: pd.DataFrame) -> float | None:
    from sklearn.metrics import roc_auc_score

    labels = frame[LABEL].astype(int)
    return None if labels.nunique() < 2 else float(roc_auc_score(labels, frame[PREDICTION]))


def atomic_write(path: Path, write) -> None:
    """``write(tmp)`` then rename over ``path``: a reader (a browser, a spreadsheet, a sync job) never sees half a
    file (file mode from the umask)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        write(str(tmp))
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _save_reports(result: DriftResult) -> None:
    """The HTML a person opens (the decision first, then Evidently's widgets: :mod:`pipelines.report`) and
    Evidently's JSON, atomically: a reader never sees half a report."""
    from pipelines.report import render_html

    page = render_html(result)
    atomic_write(result.report_html, lambda p: Path(p).write_text(page, encoding="utf-8"))
    snapshot = result.comparison.snapshot
    if snapshot is None:  # every column was NULL somewhere: nothing for Evidently to report
        atomic_write(result.report_json, lambda p: Path(p).write_text(json.dumps({"metrics": [], "tests": []})))
        return
    atomic_write(result.report_json, snapshot.save_json)


# ------------------------------------------------------------------------------------------------ MLflow


def _run_key(result: DriftResult, reference: pd.DataFrame, current: pd.DataFrame, features: list[str]) -> str:
    """Identifies one comparison: same months, data, model and thresholds give the same key."""
    from pipelines.features import content_hash

    cols = ["user_id", *features, LABEL]
    parts = [
        result.reference_as_of.isoformat(),
        result.current_as_of.isoformat(),
        result.model_version,
        content_hash(reference[cols]),
        content_hash(current[cols]),
        json.dumps(result.thresholds, sort_keys=True),
    ]
    return hashlib.sha256("|".join(parts).encode()).hexdigest()


def _log_run(settings: Settings, client, result: DriftResult, key: str) -> str:
    """One MLflow run per comparison; the same comparison again finds its run and logs nothing new."""
    import mlflow

    from pipelines.registry import experiment_id

    experiment = experiment_id(client, settings, DRIFT_EXPERIMENT)
    found = client.search_runs([experiment], filter_string=f"tags.`streamflow.drift_key` = '{key}'", max_results=1)
    if found and found[0].info.status == "FINISHED":
        return found[0].info.run_id
    comp = result.comparison
    metrics = {
        "drift_share": comp.drift_share,
        "drifted_features": len(comp.drifted_features),
        **{f"drift_score.{c.column}": c.score for c in comp.features},
        **{f"label_rate.{k}": v for k, v in result.label_rate.items()},
    }
    for name, column in (("target_drift_score", comp.target), ("prediction_drift_score", comp.prediction)):
        if column is not None:
            metrics[name] = column.score
    if result.realized_auc is not None:
        metrics["realized_auc"] = result.realized_auc
    if result.validation_auc is not None:
        metrics["validation_auc"] = result.validation_auc
    name = f"drift_{result.reference_as_of}_vs_{result.current_as_of}"
    with mlflow.start_run(experiment_id=experiment, run_name=name) as run:
        mlflow.set_tags(
            {
                "streamflow.drift_key": key,
                "decision": result.decision,
                "model_version": result.model_version,
                "reference_as_of": result.reference_as_of.isoformat(),
                "current_as_of": result.current_as_of.isoformat(),
            }
        )
        mlflow.log_params(
            {
                "reference_as_of": result.reference_as_of.isoformat(),
                "current_as_of": result.current_as_of.isoformat(),
                "model_version": result.model_version,
                "num_method": NUM_METHOD,
                "cat_method": CAT_METHOD,
                **{f"threshold.{k}": v for k, v in result.thresholds.items()},
            }
        )
        mlflow.log_metrics(metrics)
        mlflow.log_artifact(str(result.report_html), artifact_path="evidently")
        mlflow.log_artifact(str(result.report_json), artifact_path="evidently")
        mlflow.log_dict({"decision": result.decision, "reasons": result.reasons}, "decision.json")
        return run.info.run_id


# ------------------------------------------------------------------------------------------------ Prometheus


def drift_registry(result: DriftResult):
    """The figures dashboards and alerts read after the batch job has ended."""
    from prometheus_client import CollectorRegistry, Gauge

    registry = CollectorRegistry()
    comp = result.comparison
    Gauge("streamflow_drift_share", "Share of the model features whose drift test failed.", registry=registry).set(
        comp.drift_share
    )
    Gauge("streamflow_drift_share_threshold", "Drift share at which the job decides RETRAIN.", registry=registry).set(
        result.thresholds["drift_share"]
    )
    Gauge(
        "streamflow_quality_drop_margin",
        "ROC AUC drop (validation minus realized) beyond which the job decides RETRAIN.",
        registry=registry,
    ).set(result.thresholds["quality_drop"])
    flag = Gauge("streamflow_feature_drift", "1 when the feature's drift test failed.", ["feature"], registry=registry)
    score = Gauge(
        "streamflow_feature_drift_score", "Drift score of the feature.", ["feature", "method"], registry=registry
    )
    for column in comp.features:
        flag.labels(column.column).set(int(column.drifted))
        score.labels(column.column, column.method).set(column.score)
    if comp.target is not None:
        Gauge("streamflow_target_drift_score", "Drift score of churn_label.", registry=registry).set(comp.target.score)
        Gauge("streamflow_target_drift", "1 when churn_label drifted.", registry=registry).set(int(comp.target.drifted))
    if comp.prediction is not None:
        Gauge(
            "streamflow_prediction_drift_score", "Drift score of the production model's scores.", registry=registry
        ).set(comp.prediction.score)
    auc = Gauge(
        "streamflow_model_auc",
        "ROC AUC of the judged model version: on the month's labels (realized) or at validation.",
        ["model_version", "kind"],
        registry=registry,
    )
    if result.realized_auc is not None:
        auc.labels(result.model_version, "realized").set(result.realized_auc)
    if result.validation_auc is not None:
        auc.labels(result.model_version, "validation").set(result.validation_auc)
    Gauge("streamflow_drift_decision", "1: RETRAIN, 0: NO_ACTION.", registry=registry).set(
        int(result.decision == RETRAIN)
    )
    Gauge(
        "streamflow_drift_run_info",
        "The last drift job: months compared, model judged and decision (value 1).",
        ["reference_as_of", "current_as_of", "model_version", "decision"],
        registry=registry,
    ).labels(
        result.reference_as_of.isoformat(), result.current_as_of.isoformat(), result.model_version, result.decision
    ).set(1)
    Gauge(
        "streamflow_drift_last_run_timestamp_seconds", "When the drift job last finished.", registry=registry
    ).set_to_current_time()
    return registry


def export_metrics(settings: Settings, result: DriftResult) -> tuple[Path | None, str | None]:
    """Write the figures as Prometheus text (node-exporter textfile format) and push them if a Pushgateway is set.

    Returns:
        (the text file, "ok" / the push error / None when no Pushgateway is configured). A failed push does not
        undo the decision: the file is written and the error is logged and returned.
    """
    from pipelines.metrics import DRIFT_JOB, publish

    return publish(settings, DRIFT_JOB, drift_registry(result))
