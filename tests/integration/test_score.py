"""``streamflow score`` (issue 19): every subscriber of a month scored by the production model, on both backends.

Real Feast, real MLflow, real servers: the list's probabilities equal the v2 answer of the predictor and transformer
started as local processes for the same users and version (online and offline agree at the prediction); scoring
again changes nothing; a user absent from the month's snapshot is not scored; every refusal writes nothing.
"""

from __future__ import annotations

import math
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from mlflow import MlflowClient
from prometheus_client.parser import text_string_to_metric_families

from model_server.local import LocalServers, free_port, settings_env
from pipelines.config import Settings
from pipelines.errors import InvalidInput, NotFound
from pipelines.features import materialize
from pipelines.online import open_store
from pipelines.score import CSV_NAME, PARQUET_NAME, SCORING_EXPERIMENT, score, scores_dir
from pipelines.train import promote, train
from tests.integration.test_cli import one_json, run
from tests.integration.test_ingest import FEB, JAN

pytestmark = [pytest.mark.integration, pytest.mark.slow]

SAMPLE = 200
SMALL_SERVICE = "churn_features_small"


@pytest.fixture
def production(applied):
    """Two months stored, a model trained on January in production, February materialized (what the servers read)."""
    settings, db = applied
    store = open_store(settings)
    train(settings, db, JAN, store=store)
    assert promote(settings, db, store=store).decision == "promoted"
    materialize(settings, db, FEB, store=store)
    return settings, db, store


def scoring_runs(settings: Settings) -> list:
    client = MlflowClient(tracking_uri=settings.tracking_uri, registry_uri=settings.tracking_uri)
    experiment = client.get_experiment_by_name(SCORING_EXPERIMENT)
    return [] if experiment is None else client.search_runs([experiment.experiment_id])


def assert_nothing_written(settings: Settings, db, as_of) -> None:
    assert db.read_scores(as_of).empty
    assert not scores_dir(settings, as_of).exists()
    assert scoring_runs(settings) == []


# ------------------------------------------------------------------------------------------------ the list


def test_scores_equal_the_served_answer_and_a_rescore_changes_nothing(production) -> None:
    settings, db, store = production
    result = score(settings, db, FEB, store=store)
    stored = db.read_scores(FEB, result.model_version)

    # every user of February's snapshot, once; nobody else (January's leavers are not in February's snapshot)
    feb_users = set(db.snapshot_user_ids(FEB))
    jan_only = set(db.snapshot_user_ids(JAN)) - feb_users
    assert jan_only, "the generated months should have users who left after January"
    assert set(stored["user_id"]) == feb_users and len(stored) == len(feb_users) == result.rows
    assert not jan_only & set(stored["user_id"])

    # the list's own rules: rank by probability, deciles of equal size, labels at the version's threshold
    assert stored["rank"].tolist() == list(range(1, len(stored) + 1))
    assert (np.diff(stored["probability"].to_numpy()) <= 0).all()
    assert stored["risk_decile"].is_monotonic_increasing and set(stored["risk_decile"]) == set(range(1, 11))
    assert (stored["label"] == (stored["probability"] >= result.threshold).astype(int)).all()
    assert result.share_above_threshold == pytest.approx(stored["label"].mean())

    # the files: the parquet is the table (plus the listed users' reasons), the CSV its top decile
    parquet = pd.read_parquet(scores_dir(settings, FEB) / PARQUET_NAME)
    table_columns = [c for c in stored.columns if c != "as_of"]
    pd.testing.assert_frame_equal(parquet[table_columns], stored[table_columns], check_dtype=False)
    assert list(parquet.columns) == [*stored.columns, "reason_1", "reason_2", "reason_3"]
    csv = pd.read_csv(scores_dir(settings, FEB) / CSV_NAME)
    assert len(csv) == result.top_n == math.ceil(len(stored) / 10)
    assert csv["user_id"].tolist() == stored["user_id"].head(result.top_n).tolist()

    # one MLflow run, linked to the version, the parquet as its artifact
    runs = scoring_runs(settings)
    assert [r.info.run_id for r in runs] == [result.mlflow_run_id] and result.new_run
    tags = runs[0].data.tags
    assert (tags["model_version"], tags["as_of"], tags["rows"]) == (
        result.model_version,
        "2024-02-29",
        str(len(stored)),
    )
    client = MlflowClient(tracking_uri=settings.tracking_uri)
    assert [a.path for a in client.list_artifacts(result.mlflow_run_id, "scores")] == [f"scores/{PARQUET_NAME}"]

    # online and offline agree at the prediction: the v2 answer of the served model for 200 of the users
    ports = {f"{k}_port": free_port() for k in ("predictor_http", "predictor_grpc", "transformer_http",
                                                 "transformer_grpc")}  # fmt: skip
    sample = sorted(stored["user_id"].sample(SAMPLE, random_state=3))
    with LocalServers(settings.model_copy(update=ports)) as servers:
        answer = servers.infer(sample)
    outputs = {o["name"]: o["data"] for o in answer["outputs"]}
    assert answer["model_version"] == result.model_version
    assert outputs["user_id"] == sample
    mine = stored.set_index("user_id").loc[sample]
    np.testing.assert_allclose(outputs["churn_probability"], mine["probability"], rtol=1e-6, atol=1e-7)
    assert outputs["churn_label"] == mine["label"].tolist()

    # scoring again: the same rows, the same run
    files = {p.name: p.read_bytes() for p in scores_dir(settings, FEB).iterdir()}
    again = score(settings, db, FEB, store=store)
    assert not again.new_run and again.mlflow_run_id == result.mlflow_run_id
    pd.testing.assert_frame_equal(db.read_scores(FEB), stored)
    assert [r.info.run_id for r in scoring_runs(settings)] == [result.mlflow_run_id]
    assert {p.name: p.read_bytes() for p in scores_dir(settings, FEB).iterdir()} == files


def test_scores_of_another_month_are_kept(production) -> None:
    """Replacing a month's list replaces only that (as_of, version): another month's rows stay."""
    settings, db, store = production
    jan = score(settings, db, JAN, store=store)
    feb = score(settings, db, FEB, store=store)
    jan_rows = db.read_scores(JAN)
    score(settings, db, FEB, store=store, top=7)
    pd.testing.assert_frame_equal(db.read_scores(JAN), jan_rows)
    assert len(jan_rows) == jan.rows and len(db.read_scores(FEB)) == feb.rows
    assert len(pd.read_csv(scores_dir(settings, FEB) / CSV_NAME)) == 7


# ------------------------------------------------------------------------------------------------ refusals


def test_no_production_model_is_refused_and_writes_nothing(applied) -> None:
    settings, db = applied
    with pytest.raises(NotFound, match="no model holds alias 'production'"):
        score(settings, db, FEB)
    assert_nothing_written(settings, db, FEB)


def test_an_as_of_without_snapshot_is_refused_and_writes_nothing(production) -> None:
    settings, db, store = production
    march = pd.Timestamp("2024-03-31").date()
    with pytest.raises(NotFound, match="no snapshot for as_of 2024-03-31"):
        score(settings, db, march, store=store)
    assert_nothing_written(settings, db, march)


def small_service_repo(settings: Settings, tmp_path: Path) -> Settings:
    """The feature repo with a second, smaller FeatureService applied (a new feature set is a new service)."""
    from pipelines.features import apply_repo

    repo = tmp_path / "feature_repo"
    shutil.copytree(settings.feature_repo, repo, ignore=shutil.ignore_patterns("__pycache__"))
    with (repo / "features.py").open("a") as definitions:
        definitions.write(
            f"\n{SMALL_SERVICE} = FeatureService(name={SMALL_SERVICE!r}, "
            "features=[subs_profile_fv, usage_agg_30d_fv])\n"
        )
    other = settings.model_copy(update={"feature_repo": repo, "feature_service": SMALL_SERVICE})
    apply_repo(other)
    return other


def test_a_model_whose_features_are_not_the_services_is_refused_and_writes_nothing(production, tmp_path) -> None:
    settings, db, _ = production
    other = small_service_repo(settings, tmp_path)
    with pytest.raises(InvalidInput, match=f"feature service '{SMALL_SERVICE}'"):
        score(other, db, FEB)
    assert_nothing_written(settings, db, FEB)


# ------------------------------------------------------------------------------------------------ the CLI


@pytest.mark.parametrize("settings", ["embedded"], indirect=True)
def test_cli_json_contract_and_exit_codes(production, tmp_path) -> None:
    settings, db, _ = production
    db.close()  # the embedded database is the CLI process's now
    env = settings_env(settings)
    other = small_service_repo(settings, tmp_path)

    refused = run(settings.home, "score", "--as-of", "2024-02-29", "--json",
                  env=settings_env(other))  # fmt: skip
    assert refused.returncode == 2, refused.stderr
    failure = one_json(refused)
    assert failure["ok"] is False and failure["exit_code"] == 2 and SMALL_SERVICE in failure["error"]

    missing = run(settings.home, "score", "--as-of", "2024-03-31", "--json", env=env)
    assert missing.returncode == 2 and "no snapshot" in one_json(missing)["error"]
    assert not (settings.home / "scores").exists()

    done = run(settings.home, "score", "--as-of", "2024-02-29", "--top", "5", "--json", env=env)
    assert done.returncode == 0, done.stderr
    answer = one_json(done)
    assert answer["ok"] is True and answer["as_of"] == "2024-02-29" and answer["top_n"] == 5
    assert answer["new_run"] is True and answer["rows"] == len(pd.read_parquet(answer["parquet"]))
    assert [row["rank"] for row in answer["head"]] == [1, 2, 3, 4, 5]
    assert pd.read_csv(answer["csv"])["user_id"].tolist() == [row["user_id"] for row in answer["head"]]
    # the figures the step publishes (a text file when no Pushgateway is set)
    figures = (settings.metrics_dir / "streamflow_score_2024-02-29.prom").read_text()
    samples = {s.name: s for f in text_string_to_metric_families(figures) for s in f.samples}
    rows = samples["streamflow_score_rows"]
    assert rows.value == answer["rows"] and rows.labels == {
        "as_of": "2024-02-29",
        "model_version": answer["model_version"],
    }
    share = samples["streamflow_score_share_above_threshold"].value
    assert share == pytest.approx(answer["share_above_threshold"])

    # what `make demo` ends with, as people read it in an 80-column terminal or a CI log: the same list (scored
    # again: no new run), each listed user with every reason whole on one line, and where the CSV is
    shown = run(settings.home, "score", "--as-of", "2024-02-29", "--top", "5", env=env | {"COLUMNS": "80"})
    assert shown.returncode == 0, shown.stderr
    lines = shown.stdout.splitlines()
    table = [line for line in lines if line[:1] in "┏┃┡│└"]  # the paths are never wrapped: people copy them
    assert len(table) >= 4 + 5 * 3 and max(len(line) for line in table) <= 80, shown.stdout
    for row in answer["head"]:
        assert row["reasons"] and all(any(reason in line for line in lines) for reason in row["reasons"]), (
            row, shown.stdout)  # fmt: skip
        assert any(row["user_id"] in line and f"{row['probability']:.4f}" in line for line in lines), shown.stdout
    assert f"top 5: {answer['csv']}" in lines, shown.stdout
    assert len(scoring_runs(settings)) == 1


# ------------------------------------------------------------------------------------------------ in the loop


@pytest.mark.parametrize("settings", ["embedded"], indirect=True)
def test_monthly_scores_each_month_with_the_model_in_production_after_its_gate(settings, months_dir) -> None:
    from pipelines.db import connect
    from pipelines.monthly import run_monthly

    db = connect(settings)
    try:
        for month, as_of in (("month_000", JAN), ("month_001", FEB)):
            result = run_monthly(settings, db, months_dir / month)
            scored = result.to_json()["score"]
            assert scored["as_of"] == as_of.isoformat()
            assert scored["model_version"] == result.production_version
            assert set(db.read_scores(as_of, result.production_version)["user_id"]) == set(db.snapshot_user_ids(as_of))
    finally:
        db.close()
    # the stage is published as a step of its own
    assert "streamflow_step_success" in (settings.metrics_dir / "streamflow_pipeline_score.prom").read_text()


# ------------------------------------------------------------------------------------------------ reasons


def _kinds() -> list:
    from pipelines.train import MODEL_KINDS

    return [pytest.param(kind) if kind in MODEL_KINDS else pytest.param(kind, marks=pytest.mark.skip(f"no {kind}"))
            for kind in ("hgb", "logreg", "spline")]  # fmt: skip


@pytest.mark.parametrize("settings", ["embedded"], indirect=True)
@pytest.mark.parametrize("kind", _kinds())
def test_reasons_reproduce_each_listed_users_log_odds(applied, kind: str) -> None:
    from scipy.special import expit

    from pipelines.score import contributions, offline_features, production_model, wire_tensors

    settings, db = applied
    store = open_store(settings)
    train(settings, db, JAN, kind=kind, store=store)
    promote(settings, db, store=store)
    result = score(settings, db, FEB, store=store)
    listed = pd.read_csv(scores_dir(settings, FEB) / CSV_NAME)

    _, model = production_model(settings)
    frame, service = offline_features(settings, db, FEB, store=store)
    columns, _ = model.columns_from_tensors(wire_tensors(frame, service))
    at = pd.Index(frame["user_id"]).get_indexer(listed["user_id"])
    explained = contributions(model, {name: values[at] for name, values in columns.items()})
    # each user's contributions plus the base give that user's log-odds, and those log-odds its listed probability
    np.testing.assert_allclose(explained.base + explained.values.sum(axis=1), explained.log_odds, rtol=0, atol=1e-6)
    np.testing.assert_allclose(expit(explained.log_odds), listed["probability"], rtol=0, atol=1e-6)
    assert explained.features == [s.name for s in model.specs]

    # reason_1..3: the three largest pushes up, in order, with the user's own values
    assert listed["reason_1"].notna().all() and len(listed) == result.top_n
    for i, row in enumerate(listed.head(20).itertuples()):
        pushes = np.sort(explained.values[i][explained.values[i] > 0])[::-1][:3]
        shown = [r for r in (row.reason_1, row.reason_2, row.reason_3) if isinstance(r, str)]
        assert [float(r.rsplit("(+", 1)[1].rstrip(")")) for r in shown] == pytest.approx(pushes, abs=1e-3)
        name, _, value = shown[0].partition(" (")[0].partition("=")
        wire = columns[name][at[i]]
        assert value == ("NULL" if wire is None or wire != wire else format(wire, "g") if isinstance(wire, float)
                         else str(wire))  # fmt: skip
    # invariance: a user's probability and reasons do not depend on the other users of the batch nor on their order
    some = at[::-1][:50]
    subset = {name: values[some] for name, values in columns.items()}
    np.testing.assert_allclose(contributions(model, subset).values, explained.values[::-1][:50], rtol=0, atol=1e-12)
    full = model.predict_proba(columns)
    np.testing.assert_allclose(model.predict_proba(subset), full[some], rtol=0, atol=1e-9)
    # users beyond the list carry no reasons in the parquet
    everyone = pd.read_parquet(scores_dir(settings, FEB) / PARQUET_NAME)
    assert everyone["reason_1"].iloc[result.top_n :].isna().all()
