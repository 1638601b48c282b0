"""Training, tracking and the promotion gate against real MLflow: the embedded SQLite store, the Postgres
backend, and a real `mlflow server` process on loopback. No mocks."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import mlflow
import pandas as pd
import pytest
from mlflow import MlflowClient

from pipelines.config import Settings
from pipelines.errors import InvalidInput, NotFound, StreamflowError
from pipelines.features import build_dataset
from pipelines.online import open_store
from pipelines.registry import MODEL_NAME, experiment_id, mlflow_client
from pipelines.train import ids_hash, promote, train
from tests.conftest import free_port, start_mlflow_server, stop_group
from tests.integration.test_ingest import FEB, JAN

pytestmark = pytest.mark.integration


@pytest.fixture
def ready(applied):
    """The `applied` state plus one reused FeatureStore; yields (settings, db, store)."""
    settings, db = applied
    return settings, db, open_store(settings)


def training_frame(settings: Settings, db, store, as_of) -> pd.DataFrame:
    return pd.read_parquet(build_dataset(settings, db, as_of, store=store).path)


def shuffled(frame: pd.DataFrame, seed: int = 1) -> pd.DataFrame:
    """The same rows with labels shuffled: a model trained on it has learnt nothing."""
    out = frame.copy()
    out["churn_label"] = out["churn_label"].sample(frac=1, random_state=seed).to_numpy()
    return out


def registry(uri: str) -> MlflowClient:
    # registry_uri too: left out, MlflowClient falls back to the process-wide registry URI of an earlier test
    return MlflowClient(tracking_uri=uri, registry_uri=uri)


def aliases(client: MlflowClient) -> dict[str, str]:
    return {k: str(v) for k, v in client.get_registered_model(MODEL_NAME).aliases.items()}


def assert_model_logged(client: MlflowClient, run_id: str, version: str) -> None:
    """The run logged the model (MLflow 3 keeps it as a LoggedModel beside the run, not in the run's artifacts) and
    the registered version is that model: its files are really stored."""
    source = client.get_model_version(MODEL_NAME, version).source  # models:/<model id>
    assert source.startswith("models:/"), source
    logged = client.get_logged_model(source.removeprefix("models:/"))
    assert logged.source_run_id == run_id and logged.name == "model"
    files = {Path(a.path).name for a in mlflow.artifacts.list_artifacts(artifact_uri=logged.artifact_location)}
    assert {"MLmodel", "requirements.txt"} <= files, files
    assert any(name.endswith(".skops") for name in files), files


def test_first_model_is_promoted_with_full_lineage(ready) -> None:
    settings, db, store = ready
    result = train(settings, db, JAN, store=store)
    client = registry(settings.tracking_uri)
    assert aliases(client) == {"challenger": result.model_version}
    gate = promote(settings, db, store=store)
    assert gate.decision == "promoted" and gate.champion_auc is None
    assert aliases(client) == {"production": result.model_version}

    run = client.get_run(result.run_id)
    params = run.data.params
    for key in ("as_of", "feature_service", "rows", "label_rate", "training_set_sha256", "git_commit",
                "lock_sha256", "seed", "threshold", "model_kind", "clf__max_iter"):  # fmt: skip
        assert params.get(key) not in (None, "", "unknown"), key
    assert params["as_of"] == "2024-01-31" and params["feature_service"] == "churn_features"
    manifest = json.loads(build_dataset(settings, db, JAN, store=store).manifest_path.read_text())
    assert params["training_set_sha256"] == manifest["content_sha256"] and int(params["rows"]) == manifest["rows"]
    assert 0 < float(params["threshold"]) < 1 and float(params["threshold"]) != 0.5
    for key in ("roc_auc", "f1", "accuracy", "precision", "recall", "train_seconds"):
        assert key in run.data.metrics
    assert 0.5 < run.data.metrics["roc_auc"] <= 1
    artifacts = {a.path for a in client.list_artifacts(result.run_id)}
    assert {"feature_schema.json", "confusion_matrix.png", "roc_curve.png", "dataset"} <= artifacts
    schema = json.loads(Path(client.download_artifacts(result.run_id, "feature_schema.json")).read_text())
    assert len(schema["features"]) == 14 and schema["feature_service"] == "churn_features"
    assert_model_logged(client, result.run_id, result.model_version)
    # MLflow's own lineage: the training set as the run's input, its source the dataset parquet, hash tags kept
    inputs = [i for i in run.inputs.dataset_inputs if {t.key: t.value for t in i.tags}.get("mlflow.data.context")]
    assert [{t.key: t.value for t in i.tags}["mlflow.data.context"] for i in inputs] == ["training"]
    dataset = inputs[0].dataset
    assert dataset.name == "training-2024-01-31" and dataset.digest == manifest["content_sha256"][:32]
    assert json.loads(dataset.source)["uri"].endswith("datasets/2024-01-31/training.parquet")
    assert json.loads(dataset.profile)["num_rows"] == manifest["rows"]
    assert run.data.tags["training_set_sha256"] == manifest["content_sha256"]

    version = client.get_model_version(MODEL_NAME, result.model_version)
    assert version.tags["as_of"] == "2024-01-31" and version.tags["gate.decision"] == "promoted"
    model = mlflow.sklearn.load_model(f"models:/{MODEL_NAME}@production")
    frame = training_frame(settings, db, store, JAN)
    proba = model.predict_proba(frame[schema["features"]].head(3))[:, 1]
    assert ((proba >= 0) & (proba <= 1)).all()


def test_gate_promotes_better_refuses_worse_and_rollback_restores(ready) -> None:
    settings, db, store = ready
    client = registry(settings.tracking_uri)
    jan = training_frame(settings, db, store, JAN)
    weak = train(settings, db, JAN, frame=shuffled(jan), store=store)
    assert promote(settings, db, store=store).decision == "promoted"  # the first model ever

    strong = train(settings, db, FEB, store=store)
    gate = promote(settings, db, store=store)
    assert gate.decision == "promoted" and gate.evaluated_on == "2024-02-29"
    assert gate.challenger_auc >= gate.champion_auc + settings.promotion_min_auc_gain
    assert aliases(client) == {"production": strong.model_version, "previous": weak.model_version}

    worse = train(settings, db, FEB, frame=shuffled(training_frame(settings, db, store, FEB), seed=3), store=store)
    gate = promote(settings, db, store=store)
    assert gate.decision == "rejected" and gate.challenger_auc < gate.champion_auc
    assert aliases(client) == {
        "production": strong.model_version,
        "previous": weak.model_version,
        "challenger": worse.model_version,
    }
    tags = client.get_model_version(MODEL_NAME, worse.model_version).tags
    assert tags["gate.decision"] == "rejected" and float(tags["gate.champion_auc"]) == pytest.approx(gate.champion_auc)

    back = promote(settings, db, rollback=True, store=store)
    assert back.decision == "rolled_back" and back.production_version == weak.model_version
    assert aliases(client)["production"] == weak.model_version and "previous" not in aliases(client)
    with pytest.raises(NotFound, match="nothing to roll back to"):
        promote(settings, db, rollback=True, store=store)


def test_same_data_and_seed_give_the_same_metrics(ready) -> None:
    settings, db, store = ready
    first = train(settings, db, JAN, store=store)
    second = train(settings, db, JAN, store=store)
    assert first.metrics == second.metrics and first.threshold == second.threshold
    assert first.model_version != second.model_version
    other = train(settings, db, JAN, seed=7, store=store)
    assert other.metrics != first.metrics


def test_course_baseline_and_logreg_train_too(ready) -> None:
    settings, db, store = ready
    client = registry(settings.tracking_uri)
    for kind in ("rf", "logreg", "spline"):  # asked by name: trained directly, nothing compared
        result = train(settings, db, JAN, kind=kind, store=store)
        assert result.model == kind and 0.5 < result.metrics["roc_auc"] <= 1
        assert result.selection is None and result.to_json()["model_request"] == kind
        tags = client.get_model_version(MODEL_NAME, result.model_version).tags
        assert tags["model_kind"] == kind and tags["model_request"] == kind
        assert "selection" not in {a.path for a in client.list_artifacts(result.run_id)}


def test_auto_is_the_default_and_picks_the_family_by_cross_validation_on_the_training_split(
    ready, tmp_path: Path
) -> None:
    settings, db, store = ready
    assert settings.model_kind == "auto"
    result = train(settings, db, JAN, store=store)
    client = registry(settings.tracking_uri)
    run = client.get_run(result.run_id)
    cv = json.loads(Path(client.download_artifacts(result.run_id, "selection/cv.json", str(tmp_path))).read_text())
    split = json.loads(Path(client.download_artifacts(result.run_id, "split/held_out.json", str(tmp_path))).read_text())

    # the folds were cut from the training split only: the gate's held-out users decided nothing
    assert cv["users_sha256"] == ids_hash(split["train"]) != ids_hash(split["train"] + split["held_out"][:1])
    assert cv["rows"] == len(split["train"]) and cv["folds"] == 5
    assert list(cv["candidates"]) == ["logreg", "spline", "hgb"]  # rf only when asked for; cost order
    for family, c in cv["candidates"].items():
        assert len(c["auc"]) == len(c["fit_seconds"]) == 5 and all(0 < a <= 1 for a in c["auc"])
        assert c["auc_mean"] == pytest.approx(sum(c["auc"]) / 5)
        assert run.data.metrics[f"cv_auc_mean_{family}"] == pytest.approx(c["auc_mean"])
        assert run.data.metrics[f"cv_fit_seconds_{family}"] == pytest.approx(sum(c["fit_seconds"]))
        history = client.get_metric_history(result.run_id, f"cv_auc_{family}")
        assert [m.value for m in sorted(history, key=lambda m: m.step)] == pytest.approx(c["auc"])

    # the rule, recomputed from what was logged: best mean, unless a cheaper family is within one standard error
    means = {f: c["auc_mean"] for f, c in cv["candidates"].items()}
    best = max(means, key=means.get)
    within = [f for f in means if means[f] >= means[best] - cv["candidates"][best]["auc_se"]]
    assert cv["winner"] == within[0] == result.model
    assert run.data.tags["model_selection.winner"] == result.model
    assert run.data.tags["model_selection.reason"].startswith(f"{result.model}: ")
    assert run.data.params["model_request"] == "auto" and run.data.params["model_kind"] == result.model
    version = client.get_model_version(MODEL_NAME, result.model_version)
    assert version.tags["model_kind"] == result.model and version.tags["model_request"] == "auto"
    summary = result.to_json()
    assert summary["model_request"] == "auto" and set(summary["selection"]) == {"reason", "folds", *means}

    # the winner is registered as any family is: thresholded, and it scores through the gate
    assert 0 < float(version.tags["threshold"]) < 1
    assert promote(settings, db, store=store).decision == "promoted"


def test_retrain_with_auto_finds_its_version_again(ready) -> None:
    from pipelines.monthly import retrain

    settings, db, store = ready
    first = retrain(settings, db, JAN, store=store)
    assert first.trained is not None and first.trained["model_request"] == "auto"
    again = retrain(settings, db, JAN, store=store)
    assert again.trained is None and again.reused_version == first.trained["model_version"]
    assert again.gate["decision"] == first.gate["decision"] == "promoted"
    other = retrain(settings, db, JAN, kind="logreg", store=store)  # another request is another training
    assert other.trained is not None and other.trained["model"] == "logreg"


def test_an_unknown_model_family_is_refused(ready) -> None:
    settings, db, store = ready
    with pytest.raises(InvalidInput, match="choose one of auto, hgb, rf, logreg, spline"):
        train(settings, db, JAN, kind="xgboost", store=store)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda f: f.iloc[0:0], "no rows"),
        (lambda f: f.assign(churn_label=0), "single class"),
        (lambda f: f.drop(columns=["churn_label"]), "label column 'churn_label' is missing"),
        (lambda f: f.assign(watch_hours_30d=None), "NULL in every row: watch_hours_30d"),
    ],
)
def test_bad_training_sets_are_refused_before_anything_is_logged(ready, change, message) -> None:
    settings, db, store = ready
    frame = change(training_frame(settings, db, store, JAN))
    with pytest.raises(InvalidInput, match=message):
        train(settings, db, JAN, frame=frame, store=store)
    client = registry(settings.tracking_uri)
    assert client.search_model_versions(f"name = '{MODEL_NAME}'") == []


def test_unreachable_registry_is_a_clear_error_and_registers_nothing(ready) -> None:
    settings, db, store = ready
    away = settings.model_copy(update={"mlflow_tracking_uri": f"http://127.0.0.1:{free_port()}"})
    started = time.monotonic()
    with pytest.raises(StreamflowError, match="MLflow registry unreachable at http://127.0.0.1"):
        train(away, db, JAN, store=store)
    assert time.monotonic() - started < 60
    assert registry(settings.tracking_uri).search_registered_models() == []


def test_as_of_without_snapshot(ready) -> None:
    settings, db, store = ready
    with pytest.raises(NotFound, match="no snapshot for as_of 2024-03-31"):
        train(settings, db, pd.Timestamp("2024-03-31").date(), store=store)
    with pytest.raises(NotFound, match="no 'challenger' version"):
        promote(settings, db, store=store)


# a training run's process, as train starts one: tagged with its pid and host, then it sleeps until it is killed
RUN_AND_SLEEP = """
import os, socket, sys, time
import mlflow
mlflow.set_tracking_uri(sys.argv[1])
run = mlflow.start_run(experiment_id=sys.argv[2],
                       tags={"streamflow.pid": str(os.getpid()), "streamflow.host": socket.gethostname()})
print(run.info.run_id, flush=True)
time.sleep(600)
"""


@pytest.mark.parametrize("settings", ["embedded"], indirect=True)
def test_train_marks_failed_the_runs_a_killed_train_left_running(ready) -> None:
    settings, db, store = ready
    client = registry(settings.tracking_uri)
    experiment = experiment_id(mlflow_client(settings), settings)
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", RUN_AND_SLEEP, settings.tracking_uri, experiment],
            stdout=subprocess.PIPE,
            text=True,
            start_new_session=True,
        )  # fmt: skip
        for _ in range(2)
    ]
    try:
        killed, alive = (proc.stdout.readline().strip() for proc in procs)
        os.killpg(procs[0].pid, signal.SIGKILL)  # killed mid-run: MLflow never hears of it
        procs[0].wait(timeout=30)
        untagged = client.create_run(experiment).info.run_id  # a run of a train that recorded no pid (older code)
        assert {r.info.run_id: r.info.status for r in client.search_runs([experiment])} == {
            killed: "RUNNING",
            alive: "RUNNING",
            untagged: "RUNNING",
        }
        result = train(settings, db, JAN, store=store)
        status = {r.info.run_id: r.info.status for r in client.search_runs([experiment])}
        assert status == {killed: "FAILED", untagged: "FAILED", alive: "RUNNING", result.run_id: "FINISHED"}
        why = client.get_run(killed).data.tags["streamflow.failed_because"]
        assert f"pid {procs[0].pid} on host {socket.gethostname()}" in why and "marked FAILED" in why
        assert client.get_run(killed).info.end_time is not None
        assert client.get_run(result.run_id).data.tags["streamflow.pid"] == str(os.getpid())
    finally:
        for proc in procs:
            stop_group(proc)


@pytest.fixture
def mlflow_server(settings: Settings, tmp_path: Path):
    """A real `mlflow server` on a free loopback port; its backend is Postgres in Postgres mode."""
    backend = settings.database_url if settings.is_postgres else f"sqlite:///{tmp_path / 'server.db'}"
    url, proc = start_mlflow_server(backend, tmp_path / "server-artifacts")
    yield url
    stop_group(proc)


def test_against_a_real_tracking_server(ready, mlflow_server: str) -> None:
    settings, db, store = ready
    remote = settings.model_copy(update={"mlflow_tracking_uri": mlflow_server})
    first = train(remote, db, JAN, store=store)
    assert promote(remote, db, store=store).decision == "promoted"
    second = train(remote, db, FEB, store=store)
    gate = promote(remote, db, store=store)
    assert gate.challenger_version == second.model_version and gate.champion_version == first.model_version
    client = registry(mlflow_server)
    assert client.get_model_version_by_alias(MODEL_NAME, "production").version == gate.production_version
    assert "confusion_matrix.png" in {a.path for a in client.list_artifacts(first.run_id)}
    assert_model_logged(client, first.run_id, first.model_version)


def test_cli_train_and_promote_json(tmp_path: Path, months_dir: Path) -> None:
    env = {**os.environ, "STREAMFLOW_HOME": str(tmp_path / "home"), "STREAMFLOW_DB_URL": ""}
    streamflow = str(Path(sys.executable).parent / "streamflow")

    def run(*args: str) -> dict:
        proc = subprocess.run([streamflow, *args, "--json"], env=env, capture_output=True, text=True, timeout=600)
        lines = [ln for ln in proc.stdout.splitlines() if ln.strip()]
        assert len(lines) == 1, (proc.stdout, proc.stderr[-2000:])
        return json.loads(lines[0]) | {"_code": proc.returncode}

    shutil.copytree(months_dir / "month_000", tmp_path / "month_000")
    assert run("ingest", str(tmp_path / "month_000"))["_code"] == 0
    assert run("snapshot", "--as-of", "2024-01-31")["_code"] == 0
    assert run("features", "apply")["_code"] == 0
    trained = run("train", "--as-of", "2024-01-31")
    assert trained["_code"] == 0 and trained["model_version"] == "1" and 0.5 < trained["auc"] <= 1 and trained["run_id"]
    gate = run("promote")
    assert gate["decision"] == "promoted" and gate["challenger_auc"] > 0.5 and gate["champion_auc"] is None
    assert run("promote", "--rollback")["_code"] == 2
