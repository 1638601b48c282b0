"""Drift, realized quality and the retraining loop, with real Evidently, real MLflow (embedded SQLite store),
Feast on the embedded DuckDB state, a real Pushgateway and promtool. No mocks.

One state for the module: January trains the production model (hgb); four other months are ingested beside it,
each generated to exercise one reason to retrain: a calm month, a month with covariate drift on five features, a
month whose churn rate jumped (target drift), and the calm month with its labels shuffled (same features, same churn
rate: only the model's realized quality drops).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import urllib.request
from dataclasses import dataclass
from datetime import date
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from mlflow import MlflowClient

from pipelines.config import Settings
from pipelines.db import connect
from pipelines.drift import DRIFT_EXPERIMENT, NO_ACTION, PREDICTION, RETRAIN, compare, export_metrics, run_drift
from pipelines.errors import InvalidInput, NotFound
from pipelines.features import apply_repo, build_dataset
from pipelines.generate import generate, parse_drift
from pipelines.ingest import ingest_month
from pipelines.monthly import retrain, run_monthly
from pipelines.online import feature_names, open_store
from pipelines.registry import MODEL_NAME
from pipelines.snapshot import take_snapshot
from pipelines.train import categorical_features, promote, train
from tests.conftest import free_port

pytestmark = pytest.mark.integration

USERS, SEED = 2000, 5
JAN, CALM, COVARIATE, TARGET, SHUFFLED = (
    date(2024, 1, 31), date(2024, 2, 29), date(2024, 3, 31), date(2024, 4, 30), date(2024, 5, 31)
)  # fmt: skip
COVARIATE_DRIFT = ("watch_hours_30d=-0.5", "avg_session_mins_7d=-0.5", "monthly_fee=0.4", "skips_7d=1.0",
                   "rebuffer_events_7d=1.5")  # fmt: skip


@dataclass
class Loop:
    settings: Settings
    db: object
    store: object
    features: list[str]
    client: MlflowClient

    def versions(self) -> list[str]:
        return sorted(v.version for v in self.client.search_model_versions(f"name = '{MODEL_NAME}'"))

    def production(self) -> str:
        return str(self.client.get_model_version_by_alias(MODEL_NAME, "production").version)

    def drift_runs(self) -> int:
        experiment = self.client.get_experiment_by_name(DRIFT_EXPERIMENT)
        return 0 if experiment is None else len(self.client.search_runs([experiment.experiment_id]))


def _shuffle_labels(src: Path, dst: Path, seed: int) -> None:
    shutil.copytree(src, dst)
    labels = pd.read_csv(dst / "labels.csv", dtype=str, keep_default_na=False)
    labels["churn_label"] = labels["churn_label"].sample(frac=1, random_state=seed).to_numpy()
    labels.to_csv(dst / "labels.csv", index=False)


@pytest.fixture(scope="module")
def loop(tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("drift")
    base = generate(root / "base", users=USERS, months=2, seed=SEED).months
    covariate = generate(
        root / "covariate", users=USERS, months=2, seed=SEED, drift=[parse_drift(d) for d in COVARIATE_DRIFT]
    ).months[1]
    target = generate(root / "target", users=USERS, months=2, seed=SEED, churn_shift=1.5).months[1]
    _shuffle_labels(base[1].folder, root / "shuffled", seed=3)
    settings = Settings(home=root / "home", db_url=None)
    db = connect(settings)
    for folder, as_of in [(base[0].folder, JAN), (base[1].folder, CALM), (covariate.folder, COVARIATE),
                          (target.folder, TARGET), (root / "shuffled", SHUFFLED)]:  # fmt: skip
        ingest_month(db, settings, folder, as_of)
        take_snapshot(db, as_of)
    apply_repo(settings)
    store = open_store(settings)
    train(settings, db, JAN, store=store)
    promote(settings, db, store=store)
    features = feature_names(store.get_feature_service(settings.feature_service))
    client = MlflowClient(tracking_uri=settings.tracking_uri, registry_uri=settings.tracking_uri)
    yield Loop(settings, db, store, features, client)
    db.close()


# ------------------------------------------------------------------------------------------------ the decisions


def test_a_calm_month_is_no_action_with_reports_run_and_metrics(loop: Loop) -> None:
    result = run_drift(loop.settings, loop.db, CALM, store=loop.store)
    assert result.decision == NO_ACTION
    assert result.reference_as_of == JAN  # the production version's as_of tag, by default
    assert result.model_version == loop.production() == "1"
    assert result.drift_share < loop.settings.drift_share_threshold
    assert not result.comparison.target.drifted
    assert result.realized_auc > 0.7 and abs(result.auc_drop) < loop.settings.quality_drop_margin
    # Evidently's own method names, one per column kind
    methods = {c.column: c.method for c in result.comparison.features}
    assert methods["watch_hours_30d"] == "Wasserstein distance (normed)"
    assert methods["net_service"] == methods["plan_stream_tv"] == "Jensen-Shannon distance"
    line = result.line()
    assert line.startswith(f"[Evidently] report_html={result.report_html} report_json={result.report_json} ")
    assert f"drift_share={result.drift_share:.2f} " in line and "-> NO_ACTION drift_share=" in line
    # the reports, under reports/evidently/drift_<A>_vs_<B>.*
    assert result.report_html.name == "drift_2024-01-31_vs_2024-02-29.html"
    assert result.report_html.parent == loop.settings.home / "reports" / "evidently"
    assert "<html" in result.report_html.read_text()[:2000].lower()
    report = json.loads(result.report_json.read_text())
    drifted_in_report = {t["metric_config"]["params"]["column"] for t in report["tests"] if t["status"] == "FAIL"}
    assert drifted_in_report - {"churn_label", PREDICTION} == set(result.comparison.drifted_features)
    # the MLflow run: decision, metrics, both reports
    run = loop.client.get_run(result.mlflow_run_id)
    assert run.data.tags["decision"] == NO_ACTION and run.data.params["current_as_of"] == "2024-02-29"
    assert run.data.metrics["drift_share"] == pytest.approx(result.drift_share)
    assert run.data.metrics["realized_auc"] == pytest.approx(result.realized_auc)
    artifacts = {a.path for a in loop.client.list_artifacts(run.info.run_id, "evidently")}
    assert artifacts == {f"evidently/{result.report_html.name}", f"evidently/{result.report_json.name}"}
    # the same comparison again: same decision, the same run (nothing new logged)
    runs = loop.drift_runs()
    again = run_drift(loop.settings, loop.db, CALM, store=loop.store)
    assert again.to_json()["decision"] == result.decision and again.drift_share == result.drift_share
    assert again.mlflow_run_id == result.mlflow_run_id and loop.drift_runs() == runs


def test_covariate_drift_is_retrain_naming_the_drifted_features(loop: Loop) -> None:
    result = run_drift(loop.settings, loop.db, COVARIATE, store=loop.store)
    assert result.decision == RETRAIN
    drifted = set(result.comparison.drifted_features)
    assert {"watch_hours_30d", "avg_session_mins_7d", "monthly_fee", "skips_7d", "rebuffer_events_7d"} <= drifted
    assert result.drift_share >= 5 / 14
    assert "paperless_billing" not in drifted  # untouched features stay calm
    share_reason = next(r for r in result.reasons if r.startswith("drift_share="))
    assert "watch_hours_30d" in share_reason and ">= 0.30" in share_reason
    assert result.comparison.prediction.score > 0  # the scores moved with the features
    out = result.to_json()
    assert out["decision"] == RETRAIN and set(out["drifted_features"]) == drifted and out["reasons"] == result.reasons


def test_target_drift_alone_is_retrain(loop: Loop) -> None:
    result = run_drift(loop.settings, loop.db, TARGET, store=loop.store)
    assert result.decision == RETRAIN
    assert result.comparison.target.drifted
    assert result.label_rate["2024-04-30"] > result.label_rate["2024-01-31"] + 0.15
    assert any(r.startswith("target drift on churn_label") for r in result.reasons)
    assert result.drift_share < loop.settings.drift_share_threshold  # the features did not move


def test_a_quality_drop_alone_is_retrain(loop: Loop) -> None:
    result = run_drift(loop.settings, loop.db, SHUFFLED, store=loop.store)
    assert result.decision == RETRAIN
    assert result.drift_share < loop.settings.drift_share_threshold and not result.comparison.target.drifted
    assert result.realized_auc < 0.6 and result.auc_drop > loop.settings.quality_drop_margin
    assert len(result.reasons) == 1 and result.reasons[0].startswith("quality drop: ROC AUC")


def test_thresholds_come_from_the_settings(loop: Loop) -> None:
    """A stricter drift share turns the calm month into RETRAIN: the decision reads the configured threshold."""
    strict = loop.settings.model_copy(update={"drift_share_threshold": 0.01})
    result = run_drift(strict, loop.db, CALM, store=loop.store)
    assert result.drift_share > 0 and result.decision == RETRAIN and ">= 0.01" in result.reasons[0]


# ------------------------------------------------------------------------------------------------ retrain and the gate


def test_a_worse_retrained_model_is_not_promoted_and_retrain_is_idempotent(loop: Loop) -> None:
    before, versions = loop.production(), loop.versions()
    result = retrain(loop.settings, loop.db, CALM, kind="logreg", store=loop.store)
    gate = result.gate
    assert gate["decision"] == "rejected" and result.trained is not None
    assert gate["challenger_auc"] < gate["champion_auc"] + gate["margin"]
    assert loop.production() == before == result.production_version
    assert len(loop.versions()) == len(versions) + 1
    again = retrain(loop.settings, loop.db, CALM, kind="logreg", store=loop.store)
    assert again.trained is None and again.reused_version == gate["challenger_version"]
    assert again.gate["decision"] == "rejected" and len(loop.versions()) == len(versions) + 1


# ------------------------------------------------------------------------------------------------ bad input


def test_bad_inputs_are_clear_errors(loop: Loop) -> None:
    with pytest.raises(InvalidInput, match="reference and current are the same month \\(2024-01-31\\)"):
        run_drift(loop.settings, loop.db, JAN, store=loop.store)
    with pytest.raises(NotFound, match="no snapshot for as_of 2024-07-31.*streamflow snapshot --as-of 2024-07-31"):
        run_drift(loop.settings, loop.db, date(2024, 7, 31), store=loop.store)
    with pytest.raises(NotFound, match="no snapshot for as_of 2023-12-31"):
        run_drift(loop.settings, loop.db, CALM, date(2023, 12, 31), store=loop.store)


def _frames(loop: Loop) -> tuple[pd.DataFrame, pd.DataFrame, list[str]]:
    jan = pd.read_parquet(build_dataset(loop.settings, loop.db, JAN, store=loop.store).path)
    feb = pd.read_parquet(build_dataset(loop.settings, loop.db, CALM, store=loop.store).path)
    return jan, feb, categorical_features(jan, loop.features)


def test_an_empty_month_or_a_missing_feature_is_named(loop: Loop) -> None:
    jan, feb, categorical = _frames(loop)
    names = ("2024-01-31", "2024-02-29")
    with pytest.raises(InvalidInput, match="2024-02-29: no rows to compare"):
        compare(jan, feb.iloc[:0], loop.features, categorical, threshold=0.1, names=names)
    with pytest.raises(InvalidInput, match="2024-02-29: feature column\\(s\\) missing: skips_7d"):
        compare(jan, feb.drop(columns="skips_7d"), loop.features, categorical, threshold=0.1, names=names)


def test_a_feature_null_in_every_row_of_one_month_is_drifted_not_a_crash(loop: Loop) -> None:
    jan, feb, categorical = _frames(loop)
    feb["watch_hours_30d"] = np.nan
    feb["plan_stream_tv"] = None
    result = compare(jan, feb, loop.features, categorical, threshold=0.1, names=("2024-01-31", "2024-02-29"))
    by_name = {c.column: c for c in result.features}
    for feature in ("watch_hours_30d", "plan_stream_tv"):
        assert by_name[feature].drifted and by_name[feature].method == "all NULL"
        assert by_name[feature].note == "NULL in every row of 2024-02-29"
    # every other column was still compared by Evidently
    assert by_name["monthly_fee"].method == "Wasserstein distance (normed)"
    # NULL in both months is no drift
    both = compare(jan.assign(skips_7d=np.nan), feb.assign(skips_7d=np.nan), loop.features, categorical,
                   threshold=0.1)  # fmt: skip
    assert not {c.column: c for c in both.features}["skips_7d"].drifted


# ------------------------------------------------------------------------------------------------ Prometheus


def test_figures_are_written_as_prometheus_text_and_pushed_to_a_real_pushgateway(loop: Loop, pushgateway: str) -> None:
    from prometheus_client.parser import text_string_to_metric_families

    settings = loop.settings.model_copy(update={"pushgateway_url": pushgateway})
    result = run_drift(settings, loop.db, COVARIATE, store=loop.store)
    assert result.pushed == "ok"
    with urllib.request.urlopen(f"{pushgateway}/metrics", timeout=10) as resp:
        scraped = resp.read().decode()
    samples = {
        (s.name, tuple(sorted((k, v) for k, v in s.labels.items() if k not in ("job", "instance")))): s.value
        for family in text_string_to_metric_families(scraped)
        for s in family.samples
        if s.labels.get("job") == "streamflow_drift"
    }
    assert samples[("streamflow_drift_share", ())] == pytest.approx(result.drift_share)
    assert samples[("streamflow_drift_decision", ())] == 1
    assert samples[("streamflow_feature_drift", (("feature", "watch_hours_30d"),))] == 1
    assert samples[("streamflow_feature_drift", (("feature", "paperless_billing"),))] == 0
    key = ("streamflow_model_auc", (("kind", "realized"), ("model_version", "1")))
    assert samples[key] == pytest.approx(result.realized_auc)
    # the text file a node-exporter textfile collector reads: same figures, valid for promtool
    text = result.metrics_file.read_text()
    assert "streamflow_drift_share " in text and 'decision="RETRAIN"' in text
    if shutil.which("promtool"):
        check = subprocess.run(["promtool", "check", "metrics"], input=text, capture_output=True, text=True)
        assert check.returncode == 0, check.stdout + check.stderr
    # an unreachable Pushgateway does not undo the decision: the file is written, the error reported
    down_url = f"http://127.0.0.1:{free_port()}"
    down = export_metrics(settings.model_copy(update={"pushgateway_url": down_url}), result)
    assert down[0] == result.metrics_file and down[1].startswith(f"push to {down_url} failed")


# ------------------------------------------------------------------------------------------------ monthly


@pytest.mark.parametrize("backend", ["embedded", pytest.param("postgres", marks=pytest.mark.postgres)])
def test_monthly_closes_the_loop_and_is_safe_to_rerun(backend: str, tmp_path: Path, request) -> None:
    """Three months through `monthly`: first model, a calm month, a drifted one (retrained and promoted); re-running
    the drifted month changes nothing and reaches the same decision. Then the CLI's one JSON object. On both
    backends: in Postgres mode the tables, Feast's stores and registry, and MLflow all live in a real PostgreSQL."""
    from pipelines.demo import CONCEPT_SHIFT, DRIFT

    months = generate(tmp_path / "data", users=1500, months=3, seed=SEED, drift=[parse_drift(d) for d in DRIFT],
                      drift_start=2, concept_shift=CONCEPT_SHIFT).months  # fmt: skip
    db_url = request.getfixturevalue("postgres_url") if backend == "postgres" else None
    settings = Settings(home=tmp_path / "home", db_url=db_url)
    db = connect(settings)
    try:
        first = run_monthly(settings, db, months[0].folder)
        assert first.decision == "BOOTSTRAP" and first.production_version == "1" and first.steps["apply"]
        calm = run_monthly(settings, db, months[1].folder)
        assert calm.decision == NO_ACTION and calm.production_version == "1" and calm.steps["retrain"] is None
        drifted = run_monthly(settings, db, months[2].folder)
        assert drifted.decision == RETRAIN and drifted.production_version == "2"
        gate = drifted.steps["retrain"]["gate"]
        assert gate["decision"] == "promoted" and gate["challenger_auc"] > gate["champion_auc"]
        assert drifted.line.startswith("[Evidently] report_html=") and "-> RETRAIN" in drifted.line
    finally:
        db.close()
    client = MlflowClient(tracking_uri=settings.tracking_uri, registry_uri=settings.tracking_uri)
    versions = len(client.search_model_versions(f"name = '{MODEL_NAME}'"))
    env = {"STREAMFLOW_HOME": str(settings.home), "STREAMFLOW_DB_URL": db_url or ""}
    streamflow = str(Path(sys.executable).parent / "streamflow")
    proc = subprocess.run([streamflow, "monthly", str(months[2].folder), "--json"], env={**os.environ, **env},
                          capture_output=True, text=True, timeout=600)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    again = json.loads(proc.stdout)
    assert again["decision"] == RETRAIN and again["production_version"] == "2"
    assert again["drift"]["model_version"] == "1"  # judged: the model in production when the month arrived
    assert again["drift"]["drift_share"] == drifted.steps["drift"]["drift_share"]
    assert again["drift"]["mlflow_run_id"] == drifted.steps["drift"]["mlflow_run_id"]
    assert again["retrain"]["reused_version"] == "2" and again["retrain"]["trained"] is None
    assert len(client.search_model_versions(f"name = '{MODEL_NAME}'")) == versions
    # an older month re-run after newer ones: judged by the model that faced it then, and it never retrains
    db = connect(settings)
    try:
        old = run_monthly(settings, db, months[1].folder)
        first_again = run_monthly(settings, db, months[0].folder)
    finally:
        db.close()
    assert first_again.decision == NO_ACTION and first_again.production_version == "2"
    assert first_again.reasons[0].startswith("nothing to judge: no model was in production before 2024-01-31")
    assert old.decision == NO_ACTION and old.production_version == "2"
    assert old.steps["drift"]["model_version"] == "1"
    assert old.steps["drift"]["mlflow_run_id"] == calm.steps["drift"]["mlflow_run_id"]
    assert old.steps["materialize"]["skipped"]  # the online store keeps the newest month
    assert len(client.search_model_versions(f"name = '{MODEL_NAME}'")) == versions
    # the CLI's bad input: one JSON error object naming the month, exit code 2
    missing = subprocess.run([streamflow, "drift", "--current-as-of", "2024-07-31", "--json"],
                             env={**os.environ, **env}, capture_output=True, text=True, timeout=600)  # fmt: skip
    assert missing.returncode == 2
    error = json.loads(missing.stdout)
    assert error["ok"] is False and "no snapshot for as_of 2024-07-31" in error["error"]


def test_a_drifted_older_month_arriving_late_is_judged_but_never_replaces_a_newer_model(tmp_path: Path) -> None:
    """March arrives before February: March retrains over January's model; February, drifted too, arrives last. It
    is judged by the model that was in production before it (January's) and its drift says RETRAIN, but production
    was trained on a newer month: no new version, the reason says why, and re-running it changes nothing."""
    from pipelines.demo import CONCEPT_SHIFT, DRIFT

    months = generate(tmp_path / "data", users=1500, months=3, seed=SEED, drift=[parse_drift(d) for d in DRIFT],
                      drift_start=1, concept_shift=CONCEPT_SHIFT).months  # fmt: skip
    settings = Settings(home=tmp_path / "home", db_url=None)
    db = connect(settings)
    try:
        first = run_monthly(settings, db, months[0].folder)
        march = run_monthly(settings, db, months[2].folder)
        assert first.production_version == "1"
        assert march.decision == RETRAIN and march.steps["retrain"]["gate"]["decision"] == "promoted"
        assert march.production_version == "2"
        client = MlflowClient(tracking_uri=settings.tracking_uri, registry_uri=settings.tracking_uri)
        versions = len(client.search_model_versions(f"name = '{MODEL_NAME}'"))
        february = run_monthly(settings, db, months[1].folder)
        again = run_monthly(settings, db, months[1].folder)
    finally:
        db.close()
    for late in (february, again):
        assert late.decision == RETRAIN and late.production_version == "2"
        assert late.steps["drift"]["model_version"] == "1"  # January's model faced February
        assert late.steps["retrain"] is None
        assert late.reasons[-1] == (
            f"not retrained: v2 in production was trained on a newer month ({months[2].as_of.isoformat()}); "
            "an older month never replaces it"
        )
        assert late.steps["materialize"]["skipped"]  # the online store keeps March
    assert again.steps["drift"]["mlflow_run_id"] == february.steps["drift"]["mlflow_run_id"]
    assert len(client.search_model_versions(f"name = '{MODEL_NAME}'")) == versions
