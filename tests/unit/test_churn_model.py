"""The predictor's scoring: the lean path gives the Pipeline's own probabilities (NULLs, unseen values, every model
kind: no family falls back to the DataFrame path), or the Pipeline is used; feature tensors are checked before
anything is scored; a model file holds only the types its family is trusted with."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from mlflow.models import infer_signature

from model_server.churn_model import (
    BLOCK_COLUMNS,
    COMPILED_MAX_ROWS,
    FeatureError,
    ServedModel,
    feature_tensors,
    specs_from_signature,
)
from pipelines.train import MODEL_KINDS, SKOPS_TRUSTED, build_pipeline, categorical_features

FEATURES = [
    "months_active", "monthly_fee", "paperless_billing", "plan_stream_tv", "plan_stream_movies", "net_service",
    "watch_hours_30d", "avg_session_mins_7d", "unique_devices_30d", "skips_7d", "rebuffer_events_7d",
    "failed_payments_90d", "support_tickets_90d", "ticket_avg_resolution_hrs_90d",
]  # fmt: skip


def frame(n: int, seed: int = 0) -> pd.DataFrame:
    """Rows shaped like the training set: booleans, contract NULLs for no-internet users, one text column."""
    rng = np.random.default_rng(seed)
    net = rng.choice(["DSL", "Fiber optic", "No"], n)
    tv = pd.Series(rng.random(n) < 0.4, dtype=object)
    movies = pd.Series(rng.random(n) < 0.4, dtype=object)
    tv[net == "No"] = None
    movies[net == "No"] = None
    out = pd.DataFrame(
        {
            "months_active": rng.integers(0, 72, n).astype("int32"),
            "monthly_fee": rng.uniform(5, 30, n).round(2),
            "paperless_billing": rng.random(n) < 0.6,
            "plan_stream_tv": tv,
            "plan_stream_movies": movies,
            "net_service": net,
            "watch_hours_30d": rng.gamma(2, 10, n),
            "avg_session_mins_7d": rng.gamma(2, 15, n),
            "unique_devices_30d": rng.integers(1, 5, n).astype("int32"),
            "skips_7d": rng.integers(0, 20, n).astype("int32"),
            "rebuffer_events_7d": rng.integers(0, 10, n).astype("int32"),
            "failed_payments_90d": rng.integers(0, 3, n).astype("int32"),
            "support_tickets_90d": rng.integers(0, 4, n).astype("int32"),
            "ticket_avg_resolution_hrs_90d": rng.gamma(1, 5, n),
        }
    )
    logit = -1.5 + 0.9 * (out["net_service"] == "Fiber optic") - 0.03 * out["months_active"] + 0.4 * out["skips_7d"] / 5
    out["churn_label"] = (rng.random(n) < 1 / (1 + np.exp(-logit))).astype(int)
    return out


def wire(rows: pd.DataFrame, specs) -> dict[str, tuple[str, np.ndarray]]:
    """Rows as the transformer sends them: text as BYTES (None → ""), everything else FP64 with NaN for NULL."""
    tensors = {}
    for spec in specs:
        col = rows[spec.name]
        if spec.kind == "text":
            tensors[spec.name] = ("BYTES", np.array([b"" if v is None else v.encode() for v in col], dtype=object))
        else:
            values = [np.nan if v is None or v != v else float(v) for v in col.astype(object)]
            tensors[spec.name] = ("FP64", np.array(values, dtype=np.float64))
    return tensors


@pytest.fixture(scope="module")
def data() -> tuple[pd.DataFrame, pd.DataFrame]:
    return frame(1500, seed=1), frame(300, seed=2)


def served(kind: str, train: pd.DataFrame) -> ServedModel:
    pipeline = build_pipeline(kind, FEATURES, categorical_features(train, FEATURES), seed=0)
    pipeline.fit(train[FEATURES], train["churn_label"])
    signature = infer_signature(train[FEATURES], pipeline.predict_proba(train[FEATURES])[:, 1])
    return ServedModel.from_pipeline(
        pipeline, specs_from_signature(signature), version="7", threshold=0.3, probe=train[FEATURES].head(5)
    )


@pytest.mark.parametrize(
    ("kind", "path"),
    [
        ("hgb", "lean, treelite under 64 rows"),
        ("rf", "lean, treelite under 64 rows"),
        ("logreg", "lean, additive (one-hot + scaled numbers)"),
        ("spline", "lean, additive (B-splines + one-hot)"),
    ],
)
def test_scoring_equals_the_pipeline_for_every_model_kind(data, kind: str, path: str) -> None:
    train, test = data
    model = served(kind, train)
    assert model.lean and model.scoring == path
    columns, rows = model.columns_from_tensors(wire(test, model.specs))
    assert rows == len(test)
    expected = model.pipeline.predict_proba(test[FEATURES])[:, 1]
    np.testing.assert_allclose(model.predict_proba(columns), expected, rtol=0, atol=1e-12)
    assert model.labels(expected).tolist() == (expected >= 0.3).astype(int).tolist()


@pytest.mark.parametrize("kind", MODEL_KINDS)
def test_no_family_builds_a_dataframe_to_score(data, kind: str, monkeypatch) -> None:
    train, test = data
    model = served(kind, train)
    rows = test.head(COMPILED_MAX_ROWS + 6).copy()
    rows.loc[rows.index[:3], "net_service"] = ["Satellite", "No", "DSL"]  # an unseen category among them
    rows.loc[rows.index[:3], ["plan_stream_tv", "plan_stream_movies"]] = None
    rows.loc[rows.index[3], "rebuffer_events_7d"] = 1e6  # past every knot of a spline
    expected = model.pipeline.predict_proba(rows[FEATURES])[:, 1]
    small, _ = model.columns_from_tensors(wire(rows.head(3), model.specs))
    large, _ = model.columns_from_tensors(wire(rows, model.specs))

    def refuse(*args, **kwargs):
        raise AssertionError(f"{kind}: the scoring path built a DataFrame")

    monkeypatch.setattr(pd.DataFrame, "__init__", refuse)
    got_small, got_large = model.predict_proba(small), model.predict_proba(large)  # both batch sizes' paths
    monkeypatch.undo()
    np.testing.assert_allclose(got_small, expected[:3], rtol=0, atol=1e-12)
    np.testing.assert_allclose(got_large, expected, rtol=0, atol=1e-12)


@pytest.mark.parametrize("kind", MODEL_KINDS)
def test_each_family_is_trusted_with_exactly_the_types_its_file_holds(data, kind: str) -> None:
    import skops.io

    from model_server.churn_model import TRUSTED_TYPES

    train, test = data
    pipeline = build_pipeline(kind, FEATURES, categorical_features(train, FEATURES), seed=0)
    pipeline.fit(train[FEATURES], train["churn_label"])
    dumped = skops.io.dumps(pipeline)
    assert sorted(skops.io.get_untrusted_types(data=dumped)) == sorted(SKOPS_TRUSTED[kind])  # none missing, none extra
    assert set(SKOPS_TRUSTED[kind]) <= set(TRUSTED_TYPES)
    loaded = skops.io.loads(dumped, trusted=list(TRUSTED_TYPES))
    np.testing.assert_array_equal(loaded.predict_proba(test[FEATURES]), pipeline.predict_proba(test[FEATURES]))


@pytest.mark.parametrize("kind", ["hgb", "rf"])
def test_small_batches_are_scored_by_treelite_and_agree_with_the_pipeline(data, kind: str) -> None:
    train, test = data
    model = served(kind, train)
    assert model.compiled is not None  # the tree ensemble was imported into treelite at load
    for rows in (test.head(1), test.head(COMPILED_MAX_ROWS - 1), test):  # treelite, treelite, scikit-learn
        expected = model.pipeline.predict_proba(rows[FEATURES])[:, 1]
        columns, _ = model.columns_from_tensors(wire(rows, model.specs))
        np.testing.assert_allclose(model.predict_proba(columns), expected, rtol=0, atol=1e-12)
    columns, _ = model.columns_from_tensors(wire(test, model.specs))  # both paths on every row
    np.testing.assert_allclose(
        model._lean_proba(columns, compiled=True), model._lean_proba(columns, compiled=False), rtol=0, atol=1e-12
    )


def test_a_compiled_model_that_disagrees_is_not_used(data, monkeypatch) -> None:
    train, _ = data
    model = served("hgb", train)
    other = served("rf", train).compiled  # another model's trees: the probe check must refuse them
    monkeypatch.setattr(ServedModel, "_compile", lambda self: other)
    rebuilt = ServedModel.from_pipeline(model.pipeline, model.specs, probe=train[FEATURES].head(5))
    assert rebuilt.lean and rebuilt.compiled is None


def test_lean_path_handles_nulls_and_unseen_text_like_the_pipeline(data) -> None:
    train, test = data
    model = served("hgb", train)
    rows = test.head(4).copy()
    rows["net_service"] = ["Satellite", "DSL", "No", "Fiber optic"]  # an unseen category
    rows["plan_stream_tv"] = [None, True, None, False]
    expected = model.pipeline.predict_proba(rows[FEATURES])[:, 1]
    columns, _ = model.columns_from_tensors(wire(rows, model.specs))
    np.testing.assert_allclose(model.predict_proba(columns), expected, rtol=0, atol=1e-12)


def test_a_lean_path_that_disagrees_falls_back_to_the_pipeline(data) -> None:
    train, test = data
    model = served("hgb", train)
    codes = model._codes[model._cat_cols.index("net_service")]
    codes["DSL"], codes["Fiber optic"] = codes["Fiber optic"], codes["DSL"]  # a broken mapping …
    assert not model._agrees(*model._probe(train[FEATURES].head(5)), compiled=False)  # … is caught by the probe check


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda t: t.pop("skips_7d"), "'skips_7d' is missing"),
        (lambda t: t.update(extra=("FP64", np.zeros(3))), "unexpected input 'extra'"),
        (lambda t: t.update(net_service=("FP64", np.zeros(3))), "'net_service': datatype FP64; expected BYTES"),
        (lambda t: t.update(skips_7d=("BYTES", np.array([b"a"] * 3, dtype=object))), "'skips_7d': datatype BYTES"),
        (lambda t: t.update(skips_7d=("FP64", np.zeros(2))), "'skips_7d': 2 values, but other inputs have 3"),
        (lambda t: t.update(paperless_billing=("FP64", np.array([1.0, 0.5, 0.0]))), "0.5 is not a boolean"),
        (lambda t: t.update(monthly_fee=("FP64", np.array([1.0, np.nan, 2.0]))), "'monthly_fee': NULL/NaN"),
        (lambda t: t.update(skips_7d=("FP64", np.zeros((3, 2)))), "shape [3, 2]"),
    ],
    ids=["absent", "unexpected", "text-as-number", "number-as-text", "ragged", "not-boolean", "null", "2d"],
)
def test_bad_feature_tensors_are_refused_naming_the_input(data, change, message: str) -> None:
    train, test = data
    model = served("hgb", train)
    tensors = wire(test.head(3), model.specs)
    change(tensors)
    with pytest.raises(FeatureError) as err:
        model.columns_from_tensors(tensors)
    assert message in str(err.value)


def test_contract_nulls_are_allowed_where_the_signature_says_optional(data) -> None:
    train, _ = data
    model = served("hgb", train)
    optional = {s.name for s in model.specs if s.optional}
    assert optional == {"plan_stream_tv", "plan_stream_movies"}


def blocks(tensors: dict[str, tuple[str, np.ndarray]]) -> list[tuple]:
    """The same columns as the transformer sends them: one [N, k] block per datatype, named by ``columns``."""
    out = []
    for datatype in ("FP64", "BYTES"):
        names = [n for n, (d, _) in tensors.items() if d == datatype]
        values = np.stack([tensors[n][1] for n in names], axis=1)
        out.append((f"{datatype.lower()}_features", datatype, values, {BLOCK_COLUMNS: ",".join(names)}))
    return out


def test_column_blocks_score_like_one_tensor_per_feature(data) -> None:
    train, test = data
    model = served("hgb", train)
    tensors = wire(test.head(20), model.specs)
    split = feature_tensors(blocks(tensors))
    assert set(split) == set(tensors)
    for name, (datatype, values) in tensors.items():
        assert split[name][0] == datatype
        np.testing.assert_array_equal(split[name][1], values)  # NaN (contract NULL) equals NaN here
    one_per_feature = feature_tensors((n, d, v, None) for n, (d, v) in tensors.items())
    np.testing.assert_array_equal(
        model.predict_proba(model.columns_from_tensors(split)[0]),
        model.predict_proba(model.columns_from_tensors(one_per_feature)[0]),
    )


def test_bad_blocks_are_refused_naming_the_input(data) -> None:
    train, test = data
    model = served("hgb", train)
    tensors = wire(test.head(3), model.specs)
    numbers, texts = blocks(tensors)
    short = (numbers[0], numbers[1], numbers[2][:, :-1], numbers[3])  # one column fewer than its names
    with pytest.raises(FeatureError, match=r"'fp64_features': shape \[3, 12\], but its 'columns' parameter names 13"):
        feature_tensors([short, texts])
    with pytest.raises(FeatureError, match="input 'skips_7d' given twice"):
        feature_tensors([numbers, texts, ("skips_7d", "FP64", np.zeros(3), None)])
    unnamed = feature_tensors([(numbers[0], "FP64", numbers[2], None), texts])  # a block without its names
    with pytest.raises(
        FeatureError, match=r"unexpected input 'fp64_features' \(a \[N, k\] block needs a 'columns' parameter"
    ):
        model.columns_from_tensors(unnamed)
