"""``streamflow train`` and ``streamflow promote``: the churn model, tracked in MLflow, promoted by a gate.

``train`` builds the as_of's training set through Feast (the FeatureService is the feature list), fits a
scikit-learn Pipeline (encoding + classifier) of the family asked for — by default ``auto``, the family that
cross-validation on the training split prefers (:func:`choose_family`) — picks the decision threshold on validation
data, logs everything needed to reproduce and judge the run, and registers the model as a new version of
``streamflow_churn`` with the alias ``challenger``.

``promote`` is the gate: the challenger and the current champion (alias ``production``) are scored on the same
held-out rows — the challenger's validation users of its as_of, recorded with its run when it was trained, which it
never trained on; the gate refuses to judge when that as_of's training set changed since. The challenger becomes
``production`` (the old champion ``previous``) only if its ROC AUC beats the champion's by the configured margin and
it was not trained on an older month than the champion; the first model ever is promoted. Every decision is written
as tags on the versions, in an order that leaves the registry true whenever the process dies.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from pipelines.config import Settings
from pipelines.db import Database
from pipelines.errors import InvalidInput, NotFound, StreamflowError
from pipelines.registry import (
    CHALLENGER,
    MODEL_NAME,
    PREVIOUS,
    PRODUCTION,
    experiment_id,
    mlflow_client,
    version_by_alias,
)

log = logging.getLogger(__name__)

LABEL = "churn_label"
MODEL_KINDS = ("hgb", "rf", "logreg", "spline")
AUTO = "auto"  # `--model auto`: the family chosen by cross-validation on the training split
# The families `auto` compares, cheapest to score first: that order breaks a tie. logreg is one dot product over ~20
# encoded columns; spline adds one B-spline evaluation per number (~60 columns); hgb walks ~40-100 trees. rf (300
# trees, ~50x slower to fit) is only trained when asked for by name.
AUTO_CANDIDATES = ("logreg", "spline", "hgb")
CV_FOLDS = 5
# Where the domain says more is worse (pipelines/generate.py: failed payments and rebuffering only ever add to the
# churn log-odds), hgb's trees are constrained to be non-decreasing in the feature (HistGradientBoosting's
# monotonic_cst): a user's risk never falls when one of these rises. Measured cost: bench/models.py, README.
MONOTONE_INCREASING = ("failed_payments_90d", "rebuffer_events_7d")
SPLINE_KNOTS, SPLINE_DEGREE = 5, 2  # per number: knots at quantiles of the training rows, quadratic pieces
# MLflow saves scikit-learn models with skops, which refuses types it cannot vouch for. These are the types our own
# pipelines hold (checked with skops.io.get_untrusted_types); we fitted the models ourselves, in this process.
SKOPS_TRUSTED = {
    "hgb": ["sklearn.ensemble._hist_gradient_boosting.predictor.TreePredictor"],
    "rf": ["sklearn.tree._tree.Tree"],
    "logreg": ["numpy.dtype"],
    # SplineTransformer keeps one scipy BSpline per number; scipy's array-API shim names its asarray in the file
    "spline": [
        "numpy.dtype",
        "scipy._lib.array_api_compat.numpy._aliases.asarray",
        "scipy.interpolate._bsplines.BSpline",
    ],
}
VALID_SHARE = 0.2
SPLIT_DIR, SPLIT_FILE = "split", "held_out.json"  # the run artifact recording the held-out and training user ids
TAG_PID, TAG_HOST = "streamflow.pid", "streamflow.host"  # who runs a training run (to tell a live run from a dead one)


# ------------------------------------------------------------------------------------------------ the model


def categorical_features(frame: pd.DataFrame, features: list[str]) -> list[str]:
    """Text and boolean features (booleans may hold NULL: the contract's plan_stream_* for no-internet users)."""
    return [f for f in features if not pd.api.types.is_numeric_dtype(frame[f]) or pd.api.types.is_bool_dtype(frame[f])]


def build_pipeline(kind: str, features: list[str], categorical: list[str], seed: int):
    """The scikit-learn Pipeline of one model kind; it takes the raw feature columns, NULLs included.

    * ``hgb``: HistGradientBoosting on ordinal codes of the categorical columns, NULL and unseen values as NaN (its
      native missing-value handling). Declaring the columns categorical gives the same AUC (0.794/0.796/0.812 vs
      0.799/0.791/0.818 over three seeds at 7k users) but makes every predict run an internal ColumnTransformer:
      ~2.5 ms of a 3.6 ms one-row prediction, the largest cost of serving;
      Its trees never lower the risk when a feature of :data:`MONOTONE_INCREASING` rises (``monotonic_cst``);
    * ``rf``: the course baseline, RandomForest with 300 trees and balanced class weights;
    * ``logreg``: one-hot + standardised numbers, balanced logistic regression;
    * ``spline``: one-hot categories (NULL a category of its own) + each number as quadratic B-splines with knots at
      its quantiles (a smooth curve per feature, so a tenure curve or a threshold is not forced into a line; the
      features of :data:`MONOTONE_INCREASING` as two lines meeting at their median), balanced logistic regression:
      still additive, so its contributions per feature are exact.
    """
    from sklearn.compose import ColumnTransformer
    from sklearn.ensemble import HistGradientBoostingClassifier, RandomForestClassifier
    from sklearn.impute import SimpleImputer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import Pipeline, make_pipeline
    from sklearn.preprocessing import OneHotEncoder, OrdinalEncoder, SplineTransformer, StandardScaler

    numeric = [f for f in features if f not in categorical]
    if kind not in MODEL_KINDS:
        raise InvalidInput(f"--model {kind!r}: choose one of {', '.join(MODEL_KINDS)}")
    if kind == "logreg":
        encode = ColumnTransformer(
            [
                (
                    "cat",
                    make_pipeline(
                        SimpleImputer(strategy="constant", fill_value="missing"), OneHotEncoder(handle_unknown="ignore")
                    ),
                    categorical,
                ),
                ("num", make_pipeline(SimpleImputer(strategy="median"), StandardScaler()), numeric),
            ]
        )
        clf = LogisticRegression(max_iter=2000, class_weight="balanced", random_state=seed)
    elif kind == "spline":
        # knots at quantiles: counts crowd at 0 and have long tails, where uniform knots put most pieces on few users
        splines = SplineTransformer(n_knots=SPLINE_KNOTS, degree=SPLINE_DEGREE, knots="quantile")
        # the risk factors get one straight piece each side of their median (flat beyond the data): five curved
        # pieces followed the few users of a long tail (mostly DSL users, who forgive rebuffering) down, so one more
        # rebuffering event lowered some users' risk by up to 0.03; two lines cost < 0.002 CV AUC on our months
        monotone = [f for f in numeric if f in MONOTONE_INCREASING]
        smooth = [f for f in numeric if f not in monotone]
        lines = SplineTransformer(n_knots=3, degree=1, knots="quantile")
        parts = [
            ("cat", OneHotEncoder(handle_unknown="ignore"), categorical),
            ("num", make_pipeline(SimpleImputer(strategy="median"), splines), smooth),
        ]
        if monotone:
            parts.append(("risk", make_pipeline(SimpleImputer(strategy="median"), lines), monotone))
        encode = ColumnTransformer(parts)
        clf = LogisticRegression(max_iter=2000, class_weight="balanced", random_state=seed)
    else:
        # hgb reads NULL and unseen values as NaN (its native missing-value handling); rf needs numbers
        unseen, null = (np.nan, np.nan) if kind == "hgb" else (-2, -1)
        ordinal = OrdinalEncoder(handle_unknown="use_encoded_value", unknown_value=unseen, encoded_missing_value=null)
        encode = ColumnTransformer([("cat", ordinal, categorical), ("num", "passthrough", numeric)])
        if kind == "hgb":
            # early stopping on an inner 10 % picks the number of trees per data size (about 40 at 7k users):
            # 300 fixed trees overfit the course-sized month and cost latency for nothing
            clf = HistGradientBoostingClassifier(
                learning_rate=0.1,
                max_iter=300,
                max_leaf_nodes=31,
                early_stopping=True,
                validation_fraction=0.1,
                n_iter_no_change=10,
                monotonic_cst=[1 if f in MONOTONE_INCREASING else 0 for f in categorical + numeric],
                random_state=seed,
            )
        else:
            clf = RandomForestClassifier(n_estimators=300, class_weight="balanced", random_state=seed, n_jobs=1)
    if kind == "rf":
        encode.set_output(transform="pandas")
    return Pipeline([("encode", encode), ("classifier", clf)])


def choose_threshold(y: np.ndarray, proba: np.ndarray) -> float:
    """The probability threshold that maximises F1 on validation data (0.5 is wrong for a 24 % label)."""
    from sklearn.metrics import precision_recall_curve

    precision, recall, thresholds = precision_recall_curve(y, proba)
    f1 = np.where(precision + recall > 0, 2 * precision * recall / np.maximum(precision + recall, 1e-12), 0)
    return float(thresholds[int(np.argmax(f1[:-1]))])


def evaluate(y: np.ndarray, proba: np.ndarray, threshold: float) -> dict[str, float]:
    from sklearn.metrics import accuracy_score, f1_score, precision_score, recall_score, roc_auc_score

    pred = (proba >= threshold).astype(int)
    return {
        "roc_auc": float(roc_auc_score(y, proba)),
        "f1": float(f1_score(y, pred, zero_division=0)),
        "accuracy": float(accuracy_score(y, pred)),
        "precision": float(precision_score(y, pred, zero_division=0)),
        "recall": float(recall_score(y, pred, zero_division=0)),
    }


def split(frame: pd.DataFrame, seed: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Deterministic stratified train/validation split: the same rows whatever the frame's row order.

    The frame is put in user_id order first and stratified on the labels *of that ordered frame* (stratifying on the
    unordered frame's labels pairs each row with another row's label: the split then depends on the row order and
    is not stratified at all). The gate does not re-create it: ``train`` records the held-out user ids.
    """
    from sklearn.model_selection import train_test_split

    ordered = frame.sort_values("user_id", kind="stable")
    train_rows, valid_rows = train_test_split(
        ordered, test_size=VALID_SHARE, random_state=seed, stratify=ordered[LABEL].to_numpy()
    )
    return train_rows, valid_rows


def ids_hash(user_ids) -> str:
    """SHA-256 of a set of user ids (sorted, one a line): the ``held_out_sha256`` tag of a version."""
    return hashlib.sha256("\n".join(sorted(str(u) for u in user_ids)).encode()).hexdigest()


def check_training_set(frame: pd.DataFrame, features: list[str], as_of: date) -> None:
    """Refuse training sets no model should be fitted on.

    Raises:
        InvalidInput: empty, no label column, a single class, or a feature that is NULL everywhere.
    """
    where = f"training set for as_of {as_of.isoformat()}"
    if LABEL not in frame.columns:
        raise InvalidInput(f"{where}: label column {LABEL!r} is missing (columns: {', '.join(frame.columns)})")
    if frame.empty:
        raise InvalidInput(f"{where}: no rows")
    missing = [f for f in features if f not in frame.columns]
    if missing:
        raise InvalidInput(f"{where}: feature column(s) missing: {', '.join(missing)}")
    classes = sorted(frame[LABEL].dropna().unique().tolist())
    if len(classes) < 2:
        raise InvalidInput(f"{where}: {LABEL} has a single class ({classes}); a classifier needs both")
    counts = frame[LABEL].value_counts()
    if counts.min() < 5:
        raise InvalidInput(f"{where}: only {int(counts.min())} rows of class {counts.idxmin()}; need at least 5")
    empty = [f for f in features if frame[f].isna().all()]
    if empty:
        raise InvalidInput(f"{where}: feature(s) NULL in every row: {', '.join(empty)}")


# ------------------------------------------------------------------------------------------------ MLflow


SOURCE_ROOT = Path(__file__).resolve().parent.parent  # the checkout, when running from one
BUILD_INFO = Path(__file__).resolve().parent / "_build_info.json"  # written at image/wheel build time, if at all


def _build_info(key: str) -> str | None:
    """``key`` of ``pipelines/_build_info.json`` (``{"git_commit": …, "lock_hash": …}``), or None."""
    try:
        value = json.loads(BUILD_INFO.read_text()).get(key)
    except (OSError, ValueError, AttributeError):  # absent, unreadable or not a JSON object
        return None
    return value if isinstance(value, str) and value.strip() else None


def _git_commit() -> str:
    """The commit the code comes from: ``STREAMFLOW_GIT_COMMIT``, else the checkout the source lives in, else the
    build info file, else ``unknown``. A checkout only counts when it is *this* source's (an installed package inside
    some other repository, a venv in a checkout, must not report that repository's commit)."""
    if env := os.environ.get("STREAMFLOW_GIT_COMMIT", "").strip():
        return env
    if (SOURCE_ROOT / ".git").exists():
        try:
            out = subprocess.run(
                ["git", "-C", str(SOURCE_ROOT), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5
            )
            if out.returncode == 0 and out.stdout.strip():
                return out.stdout.strip()
        except (OSError, subprocess.SubprocessError):
            pass
    return _build_info("git_commit") or "unknown"


def _lock_hash() -> str:
    """SHA-256 of requirements.lock: ``STREAMFLOW_LOCK_HASH``, else the file beside the source, else the build info
    file, else ``unknown``."""
    if env := os.environ.get("STREAMFLOW_LOCK_HASH", "").strip():
        return env
    try:
        return hashlib.sha256((SOURCE_ROOT / "requirements.lock").read_bytes()).hexdigest()
    except OSError:
        return _build_info("lock_hash") or "unknown"


def _model_requirements() -> list[str]:
    from importlib.metadata import version

    return [f"{name}=={version(name)}" for name in ("scikit-learn", "numpy", "pandas", "scipy", "skops")]


def _plots(folder: Path, y: np.ndarray, proba: np.ndarray, threshold: float) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from sklearn.metrics import ConfusionMatrixDisplay, RocCurveDisplay

    paths = []
    fig, ax = plt.subplots(figsize=(4, 4))
    ConfusionMatrixDisplay.from_predictions(y, (proba >= threshold).astype(int), ax=ax, colorbar=False)
    ax.set_title(f"validation, threshold {threshold:.2f}")
    paths.append(folder / "confusion_matrix.png")
    fig.savefig(paths[-1], dpi=100, bbox_inches="tight")
    plt.close(fig)
    fig, ax = plt.subplots(figsize=(4, 4))
    RocCurveDisplay.from_predictions(y, proba, ax=ax)
    paths.append(folder / "roc_curve.png")
    fig.savefig(paths[-1], dpi=100, bbox_inches="tight")
    plt.close(fig)
    return paths


def _dataset_source(path: Path | None):
    """The MLflow dataset source of a training set parquet (None: a frame given by the caller, no file)."""
    import warnings

    from mlflow.data.dataset_source_registry import resolve_dataset_source

    if path is None:
        return None
    with warnings.catch_warnings():  # MLflow registers its local-file source twice and warns that it picked one
        warnings.simplefilter("ignore", UserWarning)
        return resolve_dataset_source(str(path))


def _alive(pid: str | None) -> bool:
    """True when process ``pid`` of this host runs (a zombie, killed but not reaped, does not)."""
    try:
        number = int(pid or "")
    except ValueError:
        return False
    if number <= 0 or number == os.getpid():  # this process has not started its run yet: that one is dead
        return False
    try:
        os.kill(number, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # it exists, run by another user
        return True
    try:
        return Path(f"/proc/{number}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True


def fail_dead_runs(client, experiment: str) -> list[str]:
    """Mark FAILED the runs of ``experiment`` left RUNNING by a ``train`` whose process is gone; their ids.

    Only the holder of the state lock trains (``streamflow train`` / ``retrain`` / ``monthly`` take it), so a RUNNING
    run met when a train starts is dead, with one check where it can be made: a run started on this host whose
    process still runs (a caller of the Python API outside the lock) is left alone. A run of another host (another
    pod) cannot be checked and is taken as dead, as the lock says.
    """
    from mlflow.entities import RunStatus

    host = socket.gethostname()
    failed = []
    running = client.search_runs([experiment], filter_string="attributes.status = 'RUNNING'", max_results=1000)
    for run in running:
        tags = run.data.tags
        if tags.get(TAG_HOST) == host and _alive(tags.get(TAG_PID)):
            continue
        client.set_tag(
            run.info.run_id,
            "streamflow.failed_because",
            f"its process (pid {tags.get(TAG_PID, '?')} on host {tags.get(TAG_HOST, '?')}) ended without closing "
            f"the run; marked FAILED by the train of pid {os.getpid()} on {host}",
        )
        client.set_terminated(run.info.run_id, status=RunStatus.to_string(RunStatus.FAILED))
        log.warning("run %s was left RUNNING by a dead train: marked FAILED", run.info.run_id)
        failed.append(run.info.run_id)
    return failed


@dataclass
class TrainResult:
    run_id: str
    model_version: str
    as_of: date
    model: str
    metrics: dict[str, float]
    threshold: float
    train_seconds: float
    requested: str = ""  # what was asked: a family, or "auto"
    selection: Selection | None = None  # what "auto" compared

    def to_json(self) -> dict[str, Any]:
        chosen = None
        if self.selection is not None:
            chosen = {
                "reason": self.selection.reason,
                "folds": self.selection.folds,
                **{
                    f: {"cv_auc": round(c["auc_mean"], 6), "cv_auc_std": round(c["auc_std"], 6),
                        "fit_seconds": round(sum(c["fit_seconds"]), 3)}
                    for f, c in self.selection.candidates.items()
                },
            }  # fmt: skip
        return {
            "run_id": self.run_id,
            "model_version": self.model_version,
            "as_of": self.as_of.isoformat(),
            "model": self.model,
            "model_request": self.requested or self.model,
            "selection": chosen,
            "auc": round(self.metrics["roc_auc"], 6),
            "f1": round(self.metrics["f1"], 6),
            "accuracy": round(self.metrics["accuracy"], 6),
            "precision": round(self.metrics["precision"], 6),
            "recall": round(self.metrics["recall"], 6),
            "threshold": round(self.threshold, 6),
            "train_seconds": round(self.train_seconds, 3),
        }


@dataclass
class Selection:
    """What ``--model auto`` compared on the training split, and why the winner won (the run's ``selection/cv.json``).

    ``candidates`` maps each family to its ROC AUC per fold, their mean, sample standard deviation and standard error,
    and the fit seconds per fold; ``users_sha256`` is :func:`ids_hash` of the rows the folds were cut from.
    """

    winner: str
    reason: str
    folds: int
    rows: int
    users_sha256: str
    seed: int
    candidates: dict[str, dict[str, Any]]

    def to_json(self) -> dict[str, Any]:
        return dict(self.__dict__)


def choose_family(
    train_rows: pd.DataFrame, features: list[str], seed: int, candidates=AUTO_CANDIDATES, folds: int = CV_FOLDS
) -> Selection:
    """Pick a model family by stratified k-fold cross-validation on ``train_rows`` — the training split only: the
    held-out rows the gate scores a version on must never decide anything about it.

    Every candidate is fitted on the same folds. The best mean ROC AUC wins, except that a candidate cheaper to score
    (earlier in ``candidates``, see :data:`AUTO_CANDIDATES`) whose mean is within one standard error of the best
    (sample standard deviation over the folds / sqrt(folds)) wins the tie: the folds cannot tell the two apart, and
    the cheaper one answers every request faster.
    """
    from sklearn.metrics import roc_auc_score
    from sklearn.model_selection import StratifiedKFold

    categorical = categorical_features(train_rows, features)
    X = train_rows[features]
    y = train_rows[LABEL].astype(int).to_numpy()
    k = max(2, min(folds, int(np.bincount(y, minlength=2).min())))  # each fold needs both classes
    cuts = list(StratifiedKFold(n_splits=k, shuffle=True, random_state=seed).split(X, y))
    results: dict[str, dict[str, Any]] = {}
    for family in candidates:
        aucs, seconds = [], []
        for fit_idx, score_idx in cuts:
            model = build_pipeline(family, features, categorical, seed)
            start = time.perf_counter()
            model.fit(X.iloc[fit_idx], y[fit_idx])
            seconds.append(time.perf_counter() - start)
            aucs.append(float(roc_auc_score(y[score_idx], model.predict_proba(X.iloc[score_idx])[:, 1])))
        std = float(np.std(aucs, ddof=1))
        results[family] = {
            "auc": aucs,
            "auc_mean": float(np.mean(aucs)),
            "auc_std": std,
            "auc_se": std / float(np.sqrt(k)),
            "fit_seconds": seconds,
        }
    best = max(candidates, key=lambda f: results[f]["auc_mean"])  # the first of equal means: the cheaper
    top = results[best]
    winner = next(f for f in candidates if results[f]["auc_mean"] >= top["auc_mean"] - top["auc_se"])
    if winner == best:
        reason = f"{best}: best mean CV ROC AUC {top['auc_mean']:.4f} (std {top['auc_std']:.4f}, {k} folds)"
    else:
        reason = (
            f"{winner}: mean CV ROC AUC {results[winner]['auc_mean']:.4f}, within one standard error "
            f"({top['auc_se']:.4f}) of {best}'s best {top['auc_mean']:.4f} over {k} folds, and cheaper to score"
        )
    others = ", ".join(f"{f} {results[f]['auc_mean']:.4f}" for f in candidates if f != winner)
    return Selection(
        winner, f"{reason}; others: {others}", k, len(train_rows), ids_hash(train_rows["user_id"].astype(str)), seed,
        results,
    )  # fmt: skip


def fit_and_score(frame: pd.DataFrame, features: list[str], kind: str, seed: int):
    """Fit one model kind on the training split.

    Returns:
        (pipeline, categorical features, validation rows, validation probabilities, threshold, metrics, fit seconds)
    """
    categorical = categorical_features(frame, features)
    train_rows, valid_rows = split(frame, seed)
    pipeline = build_pipeline(kind, features, categorical, seed)
    start = time.perf_counter()
    pipeline.fit(train_rows[features], train_rows[LABEL].astype(int))
    seconds = time.perf_counter() - start
    proba = pipeline.predict_proba(valid_rows[features])[:, 1]
    y_valid = valid_rows[LABEL].astype(int).to_numpy()
    threshold = choose_threshold(y_valid, proba)
    return pipeline, categorical, valid_rows, proba, threshold, evaluate(y_valid, proba, threshold), seconds


def train(
    settings: Settings,
    db: Database,
    as_of: date,
    *,
    kind: str | None = None,
    seed: int | None = None,
    frame: pd.DataFrame | None = None,
    dataset=None,
    store=None,
) -> TrainResult:
    """Train on the training set of ``as_of``, log the run and register a new ``challenger`` version.

    Args:
        settings: tracking URI, default model kind and seed.
        db: the database (for the training set).
        as_of: the month to train on.
        kind: a model family, or ``auto`` (chosen by :func:`choose_family` on the training split); default
            ``settings.model_kind``.
        seed: split and model seed (default ``settings.seed``).
        frame: an already built training set (tests use it to train on altered data); built through Feast if None.
        dataset: the as_of's :class:`~pipelines.features.DatasetResult` when the caller built it already.
        store: a FeatureStore to reuse.

    Raises:
        InvalidInput: a training set no model should be fitted on.
        NotFound: no snapshot or labels for ``as_of``; the Feast repo not applied.
        StreamflowError: MLflow unreachable (checked before anything is logged).
    """
    import mlflow
    from mlflow.models import infer_signature

    from pipelines.features import build_dataset, content_hash
    from pipelines.online import feature_names, open_store

    requested = kind or settings.model_kind
    seed = settings.seed if seed is None else seed
    if requested not in (AUTO, *MODEL_KINDS):
        raise InvalidInput(f"--model {requested!r}: choose one of {', '.join((AUTO, *MODEL_KINDS))}")
    store = store or open_store(settings)
    if frame is None:
        dataset = dataset or build_dataset(settings, db, as_of, store=store)
        frame = pd.read_parquet(dataset.path)
        manifest = dataset.manifest
        manifest_path = dataset.manifest_path
    else:
        manifest, manifest_path = None, None
    features = feature_names(store.get_feature_service(settings.feature_service))
    check_training_set(frame, features, as_of)
    client = mlflow_client(settings)
    experiment = experiment_id(client, settings)
    fail_dead_runs(client, experiment)

    selection = choose_family(split(frame, seed)[0], features, seed) if requested == AUTO else None
    kind = selection.winner if selection is not None else requested
    pipeline, categorical, valid_rows, proba, threshold, metrics, seconds = fit_and_score(frame, features, kind, seed)
    y_valid = valid_rows[LABEL].astype(int).to_numpy()
    example = valid_rows[features].head(5)
    # the signature is the serving contract (the predictor refuses NULL where it says "required"): inferred on all
    # validation rows, so a column NULL anywhere there (plan_stream_*) is optional, not only if the example has one
    valid_features = valid_rows[features]
    signature = infer_signature(valid_features, pipeline.predict_proba(valid_features)[:, 1])

    data_hash = manifest["content_sha256"] if manifest else content_hash(frame)
    # the gate scores the held-out users' rows of the as_of's training set: its hash is recorded to check that the
    # rows are still those; a frame given by the caller (altered data) is judged on the as_of's own training set
    if manifest is None:
        dataset = dataset if dataset is not None and dataset.as_of == as_of else None
        dataset = dataset or build_dataset(settings, db, as_of, store=store)
    evaluation_hash = data_hash if manifest else dataset.manifest["content_sha256"]
    held_out = sorted(valid_rows["user_id"].astype(str))
    trained_on = sorted(set(frame["user_id"].astype(str)) - set(held_out))
    held_out_hash = ids_hash(held_out)
    me = {TAG_PID: str(os.getpid()), TAG_HOST: socket.gethostname()}
    with mlflow.start_run(experiment_id=experiment, run_name=f"{kind}-{as_of.isoformat()}", tags=me) as run:
        mlflow.log_params(
            {
                "as_of": as_of.isoformat(),
                "model_kind": kind,
                "model_request": requested,
                "feature_service": settings.feature_service,
                "features": ",".join(features),
                "categorical_features": ",".join(categorical),
                "rows": len(frame),
                "label_rate": round(float(frame[LABEL].mean()), 6),
                "training_set_sha256": data_hash,
                "git_commit": _git_commit(),
                "lock_sha256": _lock_hash(),
                "seed": seed,
                "split_seed": seed,
                "valid_share": VALID_SHARE,
                "threshold": round(threshold, 6),
                **{
                    f"clf__{k}": v
                    for k, v in pipeline.named_steps["classifier"].get_params().items()
                    if not callable(v)
                },
            }
        )
        mlflow.log_metrics({**metrics, "train_seconds": seconds})
        if selection is not None:
            _log_selection(selection)
        with tempfile.TemporaryDirectory() as tmp:
            folder = Path(tmp)
            schema = {
                "feature_service": settings.feature_service,
                "features": features,
                "categorical": categorical,
                "dtypes": {f: str(frame[f].dtype) for f in features},
                "label": LABEL,
            }
            (folder / "feature_schema.json").write_text(json.dumps(schema, indent=2))
            for path in [folder / "feature_schema.json", *_plots(folder, y_valid, proba, threshold)]:
                mlflow.log_artifact(str(path))
            if manifest_path is not None:
                mlflow.log_artifact(str(manifest_path), artifact_path="dataset")
            split_record = {
                "as_of": as_of.isoformat(),
                "seed": seed,
                "evaluation_set_sha256": evaluation_hash,
                "held_out_sha256": held_out_hash,
                "held_out": held_out,
                "train": trained_on,
            }
            (folder / SPLIT_FILE).write_text(json.dumps(split_record))
            mlflow.log_artifact(str(folder / SPLIT_FILE), artifact_path=SPLIT_DIR)
        # MLflow's own lineage (the run's "Datasets used"): the training set, its source and digest
        mlflow.log_input(
            mlflow.data.from_pandas(
                frame, source=_dataset_source(dataset.path if manifest else None), targets=LABEL,
                name=f"training-{as_of.isoformat()}", digest=data_hash[:32],
            ),
            context="training",
        )  # fmt: skip
        mlflow.set_tags({"training_set_sha256": data_hash, "held_out_sha256": held_out_hash})
        mlflow.sklearn.log_model(
            pipeline,
            name="model",
            signature=signature,
            input_example=example,
            skops_trusted_types=SKOPS_TRUSTED[kind],
            # pinned from this environment: MLflow's inference of requirements reloads the model in a subprocess
            pip_requirements=_model_requirements(),
        )
        run_id = run.info.run_id
    # the tags are written with the version (one write): a version never exists without its lineage
    tags = {
        "as_of": as_of.isoformat(),
        "model_kind": kind,
        "model_request": requested,  # `retrain` finds an "auto" version again by what was asked
        "threshold": f"{threshold:.6f}",
        "seed": str(seed),
        "validation_auc": f"{metrics['roc_auc']:.6f}",
        "feature_service": settings.feature_service,
        "training_set_sha256": data_hash,
        "evaluation_set_sha256": evaluation_hash,
        "held_out_sha256": held_out_hash,
    }
    version = mlflow.register_model(f"runs:/{run_id}/model", MODEL_NAME, tags=tags)
    client.set_registered_model_alias(MODEL_NAME, CHALLENGER, version.version)
    return TrainResult(run_id, str(version.version), as_of, kind, metrics, threshold, seconds, requested, selection)


def _log_selection(selection: Selection) -> None:
    """Every candidate's CV scores and fit times on the active run: metrics (the per-fold AUC as steps), the winner
    and the reason as params and tags, and the whole comparison as ``selection/cv.json``."""
    import mlflow

    for family, c in selection.candidates.items():
        mlflow.log_metrics(
            {
                f"cv_auc_mean_{family}": c["auc_mean"],
                f"cv_auc_std_{family}": c["auc_std"],
                f"cv_fit_seconds_{family}": float(sum(c["fit_seconds"])),
            }
        )
        for fold, auc in enumerate(c["auc"]):
            mlflow.log_metric(f"cv_auc_{family}", auc, step=fold)
    mlflow.log_params({"selection_folds": selection.folds, "selection_candidates": ",".join(selection.candidates)})
    mlflow.set_tags({"model_selection.winner": selection.winner, "model_selection.reason": selection.reason})
    mlflow.log_dict(selection.to_json(), "selection/cv.json")


# ------------------------------------------------------------------------------------------------ the gate


@dataclass
class PromoteResult:
    decision: str  # promoted | rejected | rolled_back
    challenger_version: str | None
    champion_version: str | None
    challenger_auc: float | None
    champion_auc: float | None
    evaluated_on: str | None
    margin: float
    production_version: str
    reason: str | None = None  # why, in words (the gate.reason tag)

    def to_json(self) -> dict[str, Any]:
        return dict(self.__dict__)

    @classmethod
    def recorded(cls, version, production_version: str | None) -> PromoteResult:
        """The decision :func:`promote` wrote as ``gate.*`` tags on a challenger version, read back."""

        def tag(key: str) -> str | None:
            value = version.tags.get(f"gate.{key}", "none")
            return None if value == "none" else value

        def number(key: str) -> float | None:
            value = tag(key)
            return None if value is None else float(value)

        return cls(
            decision=version.tags["gate.decision"],
            challenger_version=str(version.version),
            champion_version=tag("champion_version"),
            challenger_auc=number("challenger_auc"),
            champion_auc=number("champion_auc"),
            evaluated_on=tag("evaluated_on"),
            margin=float(version.tags.get("gate.margin", "nan")),
            production_version=production_version,
            reason=tag("reason"),
        )


class TrainingSetChanged(StreamflowError):
    """The as_of's training set is no longer the one a challenger was trained and split on: the gate cannot tell
    held-out rows from training rows, so it judges nothing."""


#: gate.decision values. ``pending``: the gate decided to promote and is moving the aliases; only once
#: ``production`` holds the version does the tag say ``promoted`` (so ``promoted`` is never a lie, even after a crash).
PROMOTED, REJECTED, PENDING = "promoted", "rejected", "pending"
DECIDED = (PROMOTED, REJECTED)


def held_out_rows(settings: Settings, db: Database, version, store) -> tuple[pd.DataFrame, list[str], str]:
    """The rows the gate scores: the challenger's recorded held-out users, in the as_of's training set as it is now.

    Raises:
        TrainingSetChanged: the as_of's training set no longer has the hash recorded with the version.
        NotFound: the version has no recorded held-out ids (trained before they were recorded).
    """
    import mlflow

    from pipelines.features import build_dataset
    from pipelines.online import feature_names

    as_of = date.fromisoformat(version.tags["as_of"])
    recorded_hash = version.tags.get("evaluation_set_sha256")
    if not recorded_hash or not version.tags.get("held_out_sha256") or not version.run_id:
        raise NotFound(
            f"version {version.version} has no recorded held-out user ids (trained before the gate recorded them): "
            f"train a new challenger with `streamflow train --as-of {as_of.isoformat()}`"
        )
    dataset = build_dataset(settings, db, as_of, store=store)
    current_hash = dataset.manifest["content_sha256"]
    if current_hash != recorded_hash:
        raise TrainingSetChanged(
            f"the training set of as_of {as_of.isoformat()} changed since version {version.version} was trained on "
            f"it (recorded sha256 {recorded_hash}, current {current_hash}): the gate cannot tell its held-out rows "
            f"from its training rows, so nothing was judged; train a new challenger on the current data with "
            f"`streamflow train --as-of {as_of.isoformat()}` (or `streamflow retrain --as-of {as_of.isoformat()}`)"
        )
    with tempfile.TemporaryDirectory() as tmp:
        path = mlflow.artifacts.download_artifacts(
            run_id=version.run_id, artifact_path=f"{SPLIT_DIR}/{SPLIT_FILE}", dst_path=tmp
        )
        record = json.loads(Path(path).read_text())
    held_out = record["held_out"]
    if ids_hash(held_out) != version.tags["held_out_sha256"]:
        raise TrainingSetChanged(
            f"version {version.version}: the held-out ids in run {version.run_id} ({SPLIT_DIR}/{SPLIT_FILE}) do not "
            f"match its held_out_sha256 tag {version.tags['held_out_sha256']}; train a new challenger"
        )
    frame = pd.read_parquet(dataset.path)
    rows = frame[frame["user_id"].astype(str).isin(set(held_out))]
    if len(rows) != len(held_out):  # cannot happen with the hash unchanged; said plainly if it does
        raise TrainingSetChanged(
            f"as_of {as_of.isoformat()}: {len(held_out) - len(rows)} of version {version.version}'s "
            f"{len(held_out)} held-out users are not in the training set; train a new challenger"
        )
    features = feature_names(store.get_feature_service(version.tags.get("feature_service", settings.feature_service)))
    return rows, features, as_of.isoformat()


def _auc(version, rows: pd.DataFrame, features: list[str]) -> float:
    import mlflow
    from sklearn.metrics import roc_auc_score

    model = mlflow.sklearn.load_model(f"models:/{MODEL_NAME}/{version.version}")
    return float(roc_auc_score(rows[LABEL].astype(int), model.predict_proba(rows[features])[:, 1]))


def _tag(client, version: str, key: str, value: str) -> None:
    client.set_model_version_tag(MODEL_NAME, version, key, value)


def _finish_promotion(client, version: str, old: str | None) -> None:
    """The alias moves of a promotion, then its final record; each step may be repeated (a re-run after a crash).

    Order: ``previous`` → old champion, ``production`` → the challenger (the promotion itself), the old champion's
    ``gate.replaced_by``, the ``challenger`` alias goes, and last the challenger's ``gate.decision = promoted``: once
    it says so, nothing of the promotion is left to do.
    """
    if old is not None:
        client.set_registered_model_alias(MODEL_NAME, PREVIOUS, old)
    client.set_registered_model_alias(MODEL_NAME, PRODUCTION, version)
    if old is not None:
        _tag(client, old, "gate.replaced_by", version)
    challenger = version_by_alias(client, CHALLENGER)
    if challenger is not None and str(challenger.version) == version:
        client.delete_registered_model_alias(MODEL_NAME, CHALLENGER)
    _tag(client, version, "gate.decision", PROMOTED)


def _old_champion(version) -> str | None:
    value = version.tags.get("gate.champion_version", "none")
    return None if value == "none" else value


def _rollback(client, margin: float) -> PromoteResult:
    """``production`` back to ``previous``. Order: the alias move first (the rollback itself), then the records on
    both versions, then ``previous`` goes; a re-run after a crash finishes it. The versions' ``gate.decision`` is
    left as the gate wrote it: a rolled-back version *was* promoted (``monthly`` reads that record)."""
    champion = version_by_alias(client, PRODUCTION)
    previous = version_by_alias(client, PREVIOUS)
    if previous is None or champion is None:
        raise NotFound(f"nothing to roll back to: {MODEL_NAME} has no '{PREVIOUS}' version")
    if champion.version == previous.version:  # a rollback crashed after moving production: the one it undid
        undone = previous.tags.get("gate.replaced_by")
    else:
        client.set_registered_model_alias(MODEL_NAME, PRODUCTION, previous.version)
        undone = str(champion.version)
    if undone is not None:
        _tag(client, undone, "gate.rolled_back_to", str(previous.version))
        _tag(client, str(previous.version), "gate.restored_by_rollback_of", undone)
    client.delete_registered_model_alias(MODEL_NAME, PREVIOUS)
    return PromoteResult("rolled_back", None, undone, None, None, None, margin, str(previous.version))


def promote(settings: Settings, db: Database, *, rollback: bool = False, store=None) -> PromoteResult:
    """Run the promotion gate (or roll back to the previous champion) and publish the production version
    (:func:`pipelines.metrics.record_production`).

    The challenger and the champion are scored on the challenger's recorded held-out users of its as_of (refused when
    that training set changed since). A challenger trained on an older month than the champion's is rejected
    whatever its score: an older month never replaces a newer model. Writes are ordered so that a crash at any
    point leaves the registry true, and a re-run finishes the job (see :func:`_finish_promotion`).

    Raises:
        NotFound: no challenger to judge, or nothing to roll back to.
        TrainingSetChanged: the challenger's as_of's training set is not the one it was trained on any more.
        StreamflowError: MLflow unreachable.
    """
    from pipelines.metrics import quietly, record_production

    result = _gate(settings, db, rollback=rollback, store=store)
    quietly(record_production, settings, result.production_version)
    return result


def _gate(settings: Settings, db: Database, *, rollback: bool, store) -> PromoteResult:
    from pipelines.online import open_store

    client = mlflow_client(settings)
    margin = settings.promotion_min_auc_gain
    champion = version_by_alias(client, PRODUCTION)
    finished = None
    if champion is not None and champion.tags.get("gate.decision") == PENDING:
        # a gate died after moving production to this version: finish its writes before anything else
        _finish_promotion(client, str(champion.version), _old_champion(champion))
        champion = finished = client.get_model_version(MODEL_NAME, champion.version)
    if rollback:
        return _rollback(client, margin)

    challenger = version_by_alias(client, CHALLENGER)
    if challenger is None and finished is not None:  # the re-run's whole job: the decision that died, completed
        return PromoteResult.recorded(finished, str(finished.version))
    if challenger is None:
        raise NotFound(f"{MODEL_NAME} has no '{CHALLENGER}' version: run `streamflow train --as-of DATE` first")
    if champion is not None and champion.version == challenger.version:
        raise NotFound(f"version {challenger.version} is already {PRODUCTION}; train a new challenger first")
    store = store or open_store(settings)
    rows, features, evaluated_on = held_out_rows(settings, db, challenger, store)
    challenger_auc = _auc(challenger, rows, features)
    champion_auc = _auc(champion, rows, features) if champion is not None else None
    champion_month = None if champion is None else champion.tags.get("as_of", "")
    if champion is None:
        better, reason = True, "the first model: nothing to compare with"
    elif champion_month and evaluated_on < champion_month:
        better = False
        reason = (
            f"trained on {evaluated_on}, older than production v{champion.version}'s month ({champion_month}): "
            "an older month never replaces a newer model"
        )
    else:
        better = challenger_auc >= champion_auc + margin
        verb = "beats" if better else "does not beat"
        reason = (
            f"AUC {challenger_auc:.4f} {verb} production v{champion.version}'s {champion_auc:.4f} + margin {margin:g} "
            f"on {len(rows)} held-out rows of {evaluated_on}"
        )
    version = str(challenger.version)
    if better:  # "pending" first: a crash from here on leaves no version called promoted that production never held
        _tag(client, version, "gate.decision", PENDING)
    for key, value in {
        "gate.challenger_auc": f"{challenger_auc:.6f}",
        "gate.champion_auc": "none" if champion_auc is None else f"{champion_auc:.6f}",
        "gate.champion_version": "none" if champion is None else str(champion.version),
        "gate.evaluated_on": evaluated_on,
        "gate.evaluated_rows": str(len(rows)),
        "gate.evaluated_sha256": ids_hash(rows["user_id"].astype(str)),
        "gate.margin": f"{margin:g}",
        "gate.reason": reason,
    }.items():
        _tag(client, version, key, value)
    if better:
        _finish_promotion(client, version, None if champion is None else str(champion.version))
        production = version
    else:  # written last: until then the version is simply not judged yet
        _tag(client, version, "gate.decision", REJECTED)
        production = str(champion.version)
    return PromoteResult(
        PROMOTED if better else REJECTED,
        version,
        None if champion is None else str(champion.version),
        challenger_auc,
        champion_auc,
        evaluated_on,
        margin,
        production,
        reason,
    )
