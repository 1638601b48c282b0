"""``streamflow score``: every subscriber of a month scored by the ``production`` model — the retention team's list.

The features are read through Feast's offline retrieval of the FeatureService the model is served with
(``get_historical_features`` at the snapshot's timestamp: point-in-time correct, the same feature list as training
and serving, no second one). The model is scored exactly as the predictor scores it: the registered version loaded by
:func:`model_server.churn_model.load_version`, the offline columns converted to the wire columns the transformer
sends (numbers FP64 with NaN for NULL, texts as text with "" for NULL), checked by ``columns_from_tensors`` and scored
by ``predict_proba`` — whole columns at a time, never a row at a time. So a user's probability here is the one the
v2 endpoint answers for the same version (tests/integration/test_score.py holds the two equal).

Results, for one ``(as_of, model version)``:

* the ``churn_scores`` table (both backends), replaced in one transaction: rank 1 is the riskiest user, decile 1 the
  riskiest tenth, label 1 at or above the version's threshold;
* ``STREAMFLOW_HOME/scores/<as_of>/churn_scores.parquet`` (every user) and ``churn_scores_top.csv`` (the top N, for a
  spreadsheet), each written beside and renamed: a reader never sees half a file;
* one MLflow run in the ``streamflow_scoring`` experiment, tagged with the model version and as_of, the parquet as
  its artifact. The run is found again by a key (as_of, version, the rows' hash): scoring the same month with the
  same version again writes the same rows and logs no new run.

Nothing is written when the step refuses: no production model, no snapshot for the as_of, a model whose features
are not the FeatureService's.
"""

from __future__ import annotations

import hashlib
import logging
import math
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from pipelines.config import Settings
from pipelines.db import SCORE_COLUMNS, Database
from pipelines.drift import atomic_write
from pipelines.errors import InvalidInput, NotFound

log = logging.getLogger(__name__)

SCORING_EXPERIMENT = "streamflow_scoring"
KEY_TAG = "streamflow.score_key"
PARQUET_NAME = "churn_scores.parquet"
CSV_NAME = "churn_scores_top.csv"
DECILES = 10
HEAD_ROWS = 5  # the first rows of the list the summary and the JSON show
REASONS = 3  # features named per listed user


@dataclass
class ScoreResult:
    as_of: date
    model_version: str
    threshold: float
    rows: int
    top_n: int
    share_above_threshold: float
    mean_probability: float
    parquet: Path
    csv: Path
    mlflow_run_id: str
    new_run: bool
    head: list[dict[str, Any]] = field(default_factory=list)  # the first HEAD_ROWS of the list
    seconds: dict[str, float] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "as_of": self.as_of.isoformat(),
            "model_version": self.model_version,
            "threshold": self.threshold,
            "rows": self.rows,
            "top_n": self.top_n,
            "share_above_threshold": self.share_above_threshold,
            "mean_probability": self.mean_probability,
            "parquet": str(self.parquet),
            "csv": str(self.csv),
            "mlflow_run_id": self.mlflow_run_id,
            "new_run": self.new_run,
            "head": self.head,
            "seconds": {k: round(v, 3) for k, v in self.seconds.items()},
        }


def scores_dir(settings: Settings, as_of: date) -> Path:
    """Where the files of one as_of's list go."""
    return settings.home / "scores" / as_of.isoformat()


def production_model(settings: Settings):
    """The ``production`` version as the predictor loads it (a :class:`model_server.churn_model.ServedModel`).

    Raises:
        NotFound: no version holds the alias.
        StreamflowError: MLflow unreachable.
    """
    from model_server.churn_model import load_version
    from pipelines.registry import MODEL_NAME, PRODUCTION, mlflow_client, version_by_alias

    client = mlflow_client(settings)
    version = version_by_alias(client, PRODUCTION)
    if version is None:
        raise NotFound(
            f"no model holds alias {PRODUCTION!r} of {MODEL_NAME}: nothing to score with; "
            "run `streamflow monthly` (or `streamflow train` + `streamflow promote`) first"
        )
    return client, load_version(MODEL_NAME, version)


def offline_features(settings: Settings, db: Database, as_of: date, store=None) -> tuple[pd.DataFrame, Any]:
    """Every user of ``as_of``'s snapshot with the FeatureService's features as of that snapshot (Feast's offline
    retrieval, point-in-time correct), ordered by user_id; and the FeatureService.

    Raises:
        NotFound: no snapshot for ``as_of``, or the Feast repo was never applied.
    """
    from pipelines.features import _require_snapshot, as_of_timestamp
    from pipelines.online import feature_names, feature_service, open_store

    _require_snapshot(db, as_of)
    users = db.snapshot_user_ids(as_of)
    store = store or open_store(settings)
    service = feature_service(store, settings)
    entity_df = pd.DataFrame({"user_id": users.astype(str), "event_timestamp": as_of_timestamp(as_of)})
    joined = store.get_historical_features(entity_df=entity_df, features=service).to_df()
    frame = joined.sort_values("user_id", kind="stable").reset_index(drop=True)
    return frame[["user_id", *feature_names(service)]], service


def wire_tensors(frame: pd.DataFrame, service) -> dict[str, tuple[str, np.ndarray]]:
    """The feature columns as the transformer sends them to the predictor: texts BYTES-typed (NULL as ""), every
    other feature FP64 (NULL as NaN; booleans 0/1) — one array per column."""
    texts = {f.name for p in service.feature_view_projections for f in p.features if str(f.dtype) == "String"}
    tensors: dict[str, tuple[str, np.ndarray]] = {}
    for name in frame.columns.drop("user_id"):
        column = frame[name]
        if name in texts:
            values = column.astype(object).where(column.notna(), "").to_numpy(dtype=object)
            tensors[name] = ("BYTES", values)
        else:
            values = column.astype(object).where(column.notna(), np.nan).to_numpy(dtype=np.float64)
            tensors[name] = ("FP64", values)
    return tensors


def check_features(model, service) -> None:
    """The model takes exactly the FeatureService's features.

    Raises:
        InvalidInput: it does not (names both lists' differences).
    """
    from pipelines.online import feature_names

    served = set(feature_names(service))
    takes = {s.name for s in model.specs}
    if served != takes:
        extra = ", ".join(sorted(takes - served)) or "none"
        absent = ", ".join(sorted(served - takes)) or "none"
        raise InvalidInput(
            f"model version {model.version} does not take the features of feature service {service.name!r}: "
            f"it needs {extra} that the service lacks, and does not take {absent}; score with a model trained on "
            "this feature service"
        )


def rank_scores(user_ids: pd.Series, proba: np.ndarray, threshold: float) -> pd.DataFrame:
    """The list: one row per user, rank 1 the highest probability (ties by user_id), decile 1 the riskiest tenth."""
    frame = pd.DataFrame({"user_id": user_ids.astype(str).to_numpy(), "probability": proba.astype(np.float64)})
    frame = frame.sort_values(["probability", "user_id"], ascending=[False, True], kind="stable")
    n = len(frame)
    rank = np.arange(1, n + 1, dtype=np.int64)
    frame["label"] = (frame["probability"].to_numpy() >= threshold).astype(np.int64)
    frame["rank"] = rank
    frame["risk_decile"] = np.ceil(rank * DECILES / max(n, 1)).astype(np.int64)
    return frame.reset_index(drop=True)


def score(settings: Settings, db: Database, as_of: date, *, top: int | None = None, store=None) -> ScoreResult:
    """Score every user of ``as_of``'s snapshot with the production model and store the list (see the module doc).

    Args:
        top: rows in the CSV; default the top decile.

    Raises:
        NotFound: no production model, no snapshot for ``as_of``, the Feast repo never applied.
        InvalidInput: the model's features are not the FeatureService's; ``top`` below 1.
        StreamflowError: MLflow unreachable.
    """
    import time

    from model_server.churn_model import FeatureError

    if top is not None and top < 1:
        raise InvalidInput(f"--top {top}: give at least 1 row")
    started = time.perf_counter()
    client, model = production_model(settings)
    loaded = time.perf_counter()
    frame, service = offline_features(settings, db, as_of, store=store)
    check_features(model, service)
    read = time.perf_counter()
    try:
        columns, _ = model.columns_from_tensors(wire_tensors(frame, service))
    except FeatureError as err:
        raise InvalidInput(f"the features of as_of {as_of.isoformat()} cannot be scored: {err}") from None
    proba = model.predict_proba(columns)
    scored_at = time.perf_counter()
    ranked = rank_scores(frame["user_id"], proba, model.threshold)
    rows = ranked.assign(as_of=as_of, model_version=str(model.version))[list(SCORE_COLUMNS)]
    n = len(rows)
    top_n = min(n, top if top is not None else math.ceil(n / DECILES))
    # the reasons of the listed users only: the list is what people read, and SHAP costs per user
    listed = pd.Index(frame["user_id"]).get_indexer(rows["user_id"].head(top_n))
    reasons = top_reasons(model, {name: values[listed] for name, values in columns.items()})
    explained = time.perf_counter()
    files = rows.copy()
    for k in range(1, REASONS + 1):
        files[f"reason_{k}"] = pd.Series([None] * n, dtype=object)
        if reasons is not None:
            files.loc[: top_n - 1, f"reason_{k}"] = reasons[f"reason_{k}"].to_numpy()

    folder = scores_dir(settings, as_of)
    parquet, csv = folder / PARQUET_NAME, folder / CSV_NAME
    atomic_write(parquet, lambda p: files.to_parquet(p, index=False))
    atomic_write(csv, lambda p: files.head(top_n).to_csv(p, index=False, float_format="%.6f"))
    db.replace_scores(as_of, str(model.version), rows)
    written = time.perf_counter()
    key = _run_key(as_of, str(model.version), rows)
    run_id, new_run = _log_run(settings, client, model, as_of, rows, parquet, key)
    share = float(rows["label"].mean()) if n else 0.0
    mean = float(rows["probability"].mean()) if n else 0.0
    head = files.head(HEAD_ROWS)
    return ScoreResult(
        as_of=as_of,
        model_version=str(model.version),
        threshold=float(model.threshold),
        rows=n,
        top_n=top_n,
        share_above_threshold=share,
        mean_probability=mean,
        parquet=parquet,
        csv=csv,
        mlflow_run_id=run_id,
        new_run=new_run,
        head=[
            {
                "rank": int(r.rank),
                "user_id": str(r.user_id),
                "probability": float(r.probability),
                "label": int(r.label),
                "risk_decile": int(r.risk_decile),
                "reasons": [x for x in (r.reason_1, r.reason_2, r.reason_3) if x],
            }
            for r in head.itertuples(index=False)
        ],  # fmt: skip
        seconds={
            "load_model": loaded - started,
            "features": read - loaded,
            "predict": scored_at - read,
            "reasons": explained - scored_at,
            "write": written - explained,
            "total": time.perf_counter() - started,
        },
    )


# ------------------------------------------------------------------------------------------------ reasons


@dataclass
class Contributions:
    """Each user's log-odds split per source feature: ``base + values.sum(axis=1) == log_odds`` (exact for a linear
    model; SHAP's TreeExplainer for HistGradientBoosting)."""

    features: list[str]
    values: np.ndarray  # [users, features], log-odds
    base: np.ndarray  # [users]
    log_odds: np.ndarray  # [users]: the classifier's own decision_function


def contributions(model, columns: dict[str, np.ndarray]) -> Contributions | None:
    """Contributions to the log-odds of churn per source feature for the users of ``columns`` (wire columns, as
    ``ServedModel.columns_from_tensors`` returns them); None for a family without exact ones (rf).

    A linear classifier (logreg, spline): each encoded column's coefficient × value, summed back over the columns one
    source feature was encoded to (its one-hot categories, its B-spline pieces); the base is the intercept. A
    HistGradientBoosting: SHAP's TreeExplainer on the encoded matrix — valid because categories reach the trees as
    ordinal numbers (numeric splits), never as native categorical splits, which TreeExplainer would ignore.
    """
    from sklearn.ensemble import HistGradientBoostingClassifier

    encode, classifier = model.pipeline[:-1], model.pipeline.steps[-1][1]
    features = [s.name for s in model.specs]
    frame = pd.DataFrame({s.name: _pipeline_column(columns[s.name], s) for s in model.specs})
    X = encode.transform(frame)
    X = np.asarray(X.toarray() if hasattr(X, "toarray") else X, dtype=np.float64)
    mapping = _source_matrix(encode, features, X.shape[1])
    if hasattr(classifier, "coef_") and np.shape(classifier.coef_)[0] == 1:
        encoded = X * classifier.coef_[0]
        base = np.full(len(X), float(classifier.intercept_[0]))
    elif isinstance(classifier, HistGradientBoostingClassifier):
        import shap

        explainer = shap.TreeExplainer(classifier)
        encoded = np.asarray(explainer.shap_values(X), dtype=np.float64)
        base = np.full(len(X), float(np.ravel(explainer.expected_value)[0]))
    else:
        return None
    return Contributions(features, encoded @ mapping, base, classifier.decision_function(X).astype(np.float64))


def _pipeline_column(column: np.ndarray, spec) -> Any:
    """A wire column as the Pipeline saw it in training (booleans as True/False/None objects, as ServedModel does)."""
    if spec.kind == "boolean":
        return pd.Series([None if v != v else bool(v) for v in column.tolist()], dtype=object)
    return column


def _source_matrix(encode, features: list[str], width: int) -> np.ndarray:
    """[encoded columns, source features]: 1 where an encoded column comes from a source feature, read from the
    encoder's output names (``cat__net_service_DSL``, ``num__months_active_sp_2``): the longest feature name each
    one starts with."""
    names = [str(n).split("__", 1)[-1] for n in encode.get_feature_names_out()]
    if len(names) != width:
        raise ValueError(f"{len(names)} encoded names for {width} encoded columns")
    mapping = np.zeros((width, len(features)))
    by_length = sorted(features, key=len, reverse=True)
    for i, name in enumerate(names):
        source = next((f for f in by_length if name == f or name.startswith(f"{f}_")), None)
        if source is None:
            raise ValueError(f"encoded column {name!r} comes from no feature of the model")
        mapping[i, features.index(source)] = 1.0
    return mapping


def top_reasons(model, columns: dict[str, np.ndarray]) -> pd.DataFrame | None:
    """``reason_1..3`` per user: the features pushing the user's risk up most, as ``feature=value (+log-odds)``;
    fewer than three when fewer push up. None when the family has no exact contributions (rf) or no user is given."""
    if not columns or not len(next(iter(columns.values()))):
        return None
    explained = contributions(model, columns)
    if explained is None:
        return None
    order = np.argsort(-explained.values, axis=1, kind="stable")[:, :REASONS]
    out: dict[str, list[str | None]] = {f"reason_{k}": [] for k in range(1, REASONS + 1)}
    for i, picks in enumerate(order):
        for k, j in enumerate(picks, start=1):
            push, name = explained.values[i, j], explained.features[j]
            out[f"reason_{k}"].append(f"{name}={_shown(columns[name][i])} (+{push:.3f})" if push > 0 else None)
    return pd.DataFrame(out)


def _shown(value: Any) -> str:
    if value is None or (isinstance(value, float) and value != value):
        return "NULL"
    if isinstance(value, float):
        return str(int(value)) if value.is_integer() else f"{value:g}"
    return str(value)


def _run_key(as_of: date, version: str, rows: pd.DataFrame) -> str:
    """One scoring: same month, version and rows give the same key (a changed snapshot gives another)."""
    from pipelines.features import content_hash

    parts = [as_of.isoformat(), version, content_hash(rows.drop(columns=["as_of"]))]
    return hashlib.sha256("|".join(parts).encode()).hexdigest()


def _log_run(
    settings: Settings, client, model, as_of: date, rows: pd.DataFrame, parquet: Path, key: str
) -> tuple[str, bool]:
    """The scoring's MLflow run: found by its key when this scoring was logged before (returns False), else
    logged now, linked to the model version by tags (returns True)."""
    import mlflow

    from pipelines.registry import MODEL_NAME, experiment_id

    experiment = experiment_id(client, settings, SCORING_EXPERIMENT)
    found = client.search_runs([experiment], filter_string=f"tags.`{KEY_TAG}` = '{key}'", max_results=1)
    if found and found[0].info.status == "FINISHED":
        return found[0].info.run_id, False
    n = len(rows)
    with mlflow.start_run(experiment_id=experiment, run_name=f"score_{as_of.isoformat()}_v{model.version}") as run:
        mlflow.set_tags(
            {
                KEY_TAG: key,
                "as_of": as_of.isoformat(),
                "model_name": MODEL_NAME,
                "model_version": str(model.version),
                "model_run_id": model.run_id,
                "rows": str(n),
            }
        )
        mlflow.log_params({"as_of": as_of.isoformat(), "model_version": str(model.version),
                           "threshold": model.threshold})  # fmt: skip
        if n:
            mlflow.log_metrics(
                {
                    "rows": n,
                    "share_above_threshold": float(rows["label"].mean()),
                    "mean_probability": float(rows["probability"].mean()),
                }
            )
        mlflow.log_artifact(str(parquet), artifact_path="scores")
    return run.info.run_id, True
