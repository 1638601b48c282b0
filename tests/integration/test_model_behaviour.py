"""Behavioural tests of the model the default `streamflow train --model auto` produces, on months the generator
makes with a known causal structure (pipelines/generate.py), read through the real pipeline (ingest → snapshot →
Feast training set):

* direction: more failed payments or more rebuffering (everything else fixed) raise the mean risk of the validation
  users and lower no user's risk by more than 0.02; hgb, constrained by ``monotonic_cst``, lowers none at all;
* invariance: a user's score does not depend on which users share the batch or on their order, through the
  predictor's fast path and through the Pipeline;
* quality: auto beats a constant predictor and matches or beats the course baseline (RandomForest-300) in a paired
  comparison on the same folds, over three seeds of the generator (auto chooses its family inside each fold).
"""

from __future__ import annotations

from datetime import date
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from mlflow.models import infer_signature
from sklearn.metrics import roc_auc_score

from model_server.churn_model import COMPILED_MAX_ROWS, ServedModel, specs_from_signature
from pipelines.train import (
    LABEL,
    MODEL_KINDS,
    MONOTONE_INCREASING,
    build_pipeline,
    categorical_features,
    choose_family,
    fit_and_score,
    split,
)

pytestmark = [pytest.mark.integration, pytest.mark.slow]

SEEDS = (1, 2, 3)
OUTER_FOLDS = 3  # per seed in the paired comparison: 9 pairs (auto's own 5-fold CV runs inside each, 15 fits)
USERS = 3000  # per month: enough for fold AUCs to differ by family, small enough for 2 cores
JAN = date(2024, 1, 31)
MAX_DROP = 0.02  # the most one user's risk may fall when a risk factor rises (an additive model is not monotone)


def _training_set(folder: Path, seed: int) -> tuple[pd.DataFrame, list[str]]:
    """One generated month through ingest, snapshot and Feast's point-in-time training set (embedded backend)."""
    from pipelines.config import Settings
    from pipelines.db import connect
    from pipelines.features import apply_repo, build_dataset
    from pipelines.generate import generate
    from pipelines.ingest import ingest_month
    from pipelines.online import feature_names, open_store
    from pipelines.snapshot import take_snapshot

    generate(folder / "data", users=USERS, months=1, seed=seed)
    settings = Settings(home=folder / "home", db_url=None)
    db = connect(settings)
    try:
        ingest_month(db, settings, folder / "data" / "month_000", JAN)
        take_snapshot(db, JAN)
        apply_repo(settings)
        store = open_store(settings)
        frame = pd.read_parquet(build_dataset(settings, db, JAN, store=store).path)
        return frame, feature_names(store.get_feature_service(settings.feature_service))
    finally:
        db.close()


@pytest.fixture(scope="module")
def months(tmp_path_factory: pytest.TempPathFactory) -> dict[int, tuple[pd.DataFrame, list[str]]]:
    return {seed: _training_set(tmp_path_factory.mktemp(f"seed{seed}"), seed) for seed in SEEDS}


def _default_model(frame: pd.DataFrame, features: list[str], seed: int):
    """What `train` fits by default: the family cross-validation picks on the training split, fitted on that split."""
    family = choose_family(split(frame, seed)[0], features, seed).winner
    pipeline, _, valid, _, _, _, _ = fit_and_score(frame, features, family, seed)
    return family, pipeline, valid


def _raised(rows: pd.DataFrame, feature: str, by: int) -> pd.DataFrame:
    out = rows.copy()
    out[feature] = out[feature] + by
    return out


@pytest.mark.parametrize("seed", SEEDS)
def test_more_failed_payments_or_rebuffering_never_lowers_the_risk(months, seed: int) -> None:
    frame, features = months[seed]
    family, pipeline, valid = _default_model(frame, features, seed)
    before = pipeline.predict_proba(valid[features])[:, 1]
    for feature in MONOTONE_INCREASING:
        for by in (1, 2):
            after = pipeline.predict_proba(_raised(valid[features], feature, by))[:, 1]
            assert after.mean() > before.mean(), (family, feature, by)
            assert (after - before).min() >= -MAX_DROP, (family, feature, by, float((after - before).min()))


@pytest.mark.parametrize("seed", SEEDS)
def test_hgb_is_exactly_monotone_in_the_risk_factors(months, seed: int) -> None:
    frame, features = months[seed]
    pipeline, _, valid, _, _, _, _ = fit_and_score(frame, features, "hgb", seed)
    rows = valid[features]
    before = pipeline.predict_proba(rows)[:, 1]
    for feature in MONOTONE_INCREASING:
        for by in (1, 3, 20):
            after = pipeline.predict_proba(_raised(rows, feature, by))[:, 1]
            assert (after >= before).all(), (feature, by, float((after - before).min()))
        assert (pipeline.predict_proba(_raised(rows, feature, 3))[:, 1] > before).any()  # the constraint is not flat


@pytest.mark.parametrize("kind", MODEL_KINDS)
def test_a_users_score_does_not_depend_on_the_batch_it_comes_in(months, kind: str) -> None:
    frame, features = months[SEEDS[0]]
    categorical = categorical_features(frame, features)
    train_rows, valid = split(frame, SEEDS[0])
    pipeline = build_pipeline(kind, features, categorical, SEEDS[0]).fit(train_rows[features], train_rows[LABEL])
    signature = infer_signature(valid[features], pipeline.predict_proba(valid[features])[:, 1])
    model = ServedModel.from_pipeline(pipeline, specs_from_signature(signature), probe=valid[features].head(5))
    assert model.lean  # the fast path is the one under test

    rows = valid[features].head(300).reset_index(drop=True)
    alone = {i: model.predict_proba(_columns(model, rows.iloc[[i]]))[0] for i in range(40)}
    whole = model.predict_proba(_columns(model, rows))
    order = np.random.default_rng(0).permutation(len(rows))
    shuffled = model.predict_proba(_columns(model, rows.iloc[order]))
    small = list(range(COMPILED_MAX_ROWS // 2))[::-1]  # a small batch, in reverse
    mixed = model.predict_proba(_columns(model, rows.iloc[small]))
    repeated = model.predict_proba(_columns(model, pd.concat([rows, rows.head(50)], ignore_index=True)))

    np.testing.assert_array_equal(shuffled[np.argsort(order)], whole)  # the same path: bit for bit
    np.testing.assert_array_equal(repeated[: len(rows)], whole)
    np.testing.assert_array_equal(repeated[len(rows) :], whole[:50])
    # a batch under COMPILED_MAX_ROWS may take treelite's path: equal to the float error of summing trees
    np.testing.assert_allclose([alone[i] for i in range(40)], whole[:40], rtol=0, atol=1e-12)
    np.testing.assert_allclose(mixed, whole[small], rtol=0, atol=1e-12)
    # and the Pipeline itself, on a DataFrame, in any order
    by_pipeline = pipeline.predict_proba(rows.iloc[order])[:, 1]
    np.testing.assert_allclose(by_pipeline[np.argsort(order)], whole, rtol=0, atol=1e-12)
    np.testing.assert_allclose(pipeline.predict_proba(rows.head(1))[:, 1], whole[:1], rtol=0, atol=1e-12)


def _columns(model: ServedModel, rows: pd.DataFrame) -> dict[str, np.ndarray]:
    """Rows as the predictor receives them (text as BYTES, NULL as empty / NaN), checked by the model."""
    tensors = {}
    for spec in model.specs:
        col = rows[spec.name]
        if spec.kind == "text":
            data = np.array([b"" if v is None else str(v).encode() for v in col], dtype=object)
            tensors[spec.name] = ("BYTES", data)
        else:
            tensors[spec.name] = (
                "FP64",
                np.array([np.nan if v is None or v != v else float(v) for v in col.astype(object)]),
            )
    return model.columns_from_tensors(tensors)[0]


def test_auto_beats_a_constant_and_matches_the_course_baseline_on_the_same_folds(months) -> None:
    from sklearn.dummy import DummyClassifier
    from sklearn.model_selection import StratifiedKFold

    auto, baseline, constant, chosen = [], [], [], []
    for seed in SEEDS:
        frame, features = months[seed]
        rows = frame.sort_values("user_id", kind="stable").reset_index(drop=True)
        y = rows[LABEL].astype(int).to_numpy()
        categorical = categorical_features(rows, features)
        for fit_idx, score_idx in StratifiedKFold(OUTER_FOLDS, shuffle=True, random_state=seed).split(rows, y):
            fit_rows, score_rows = rows.iloc[fit_idx], rows.iloc[score_idx]
            family = choose_family(fit_rows, features, seed).winner  # auto decides inside the fold: nested
            chosen.append(family)
            for model, out in (
                (build_pipeline(family, features, categorical, seed), auto),
                (build_pipeline("rf", features, categorical, seed), baseline),
                (DummyClassifier(strategy="prior"), constant),
            ):
                model.fit(fit_rows[features], y[fit_idx])
                out.append(roc_auc_score(y[score_idx], model.predict_proba(score_rows[features])[:, 1]))
    auto, baseline, constant = map(np.array, (auto, baseline, constant))
    difference = auto - baseline
    print(
        f"\nauto {auto.mean():.4f} (families {sorted(set(chosen))}), rf-300 {baseline.mean():.4f}, "
        f"paired difference {difference.mean():+.4f} ± {difference.std(ddof=1):.4f}, "
        f"auto ahead on {(difference > 0).sum()} of {len(difference)} folds; constant {constant.mean():.4f}"
    )
    assert (constant == 0.5).all() and (auto > 0.7).all()  # a constant ranks nobody; auto ranks on every fold
    assert difference.mean() >= 0  # matches or beats the course baseline on average over the same 9 folds …
    assert (difference > 0).sum() >= len(difference) // 2  # … and not by one lucky fold
