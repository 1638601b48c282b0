"""The promotion gate tells the truth (issue 16): it scores both models on the challenger's recorded held-out users
and nothing else, refuses when that month's training set changed, never lets an older month replace a newer model,
and leaves the registry true whatever write it dies at. Real MLflow (embedded SQLite store, or Postgres), real Feast,
no mocks: a crash is a real MLflow client whose write method raises from the Nth call on."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pandas as pd
import pytest
from mlflow import MlflowClient

import pipelines.train as train_module
from pipelines.config import Settings
from pipelines.features import build_dataset
from pipelines.ingest import ingest_month
from pipelines.monthly import judged_version
from pipelines.online import open_store
from pipelines.registry import MODEL_NAME
from pipelines.snapshot import take_snapshot
from pipelines.train import SPLIT_DIR, SPLIT_FILE, TrainingSetChanged, ids_hash, promote, train
from tests.integration.test_ingest import FEB, JAN

pytestmark = pytest.mark.integration


@pytest.fixture(params=["embedded", pytest.param("postgres", marks=pytest.mark.postgres)])
def settings(request: pytest.FixtureRequest, tmp_path: Path) -> Settings:
    """This module's settings (overrides the shared fixture to mark the Postgres case ``postgres``)."""
    if request.param == "postgres":
        return Settings(home=tmp_path / "home", db_url=request.getfixturevalue("postgres_url"))
    return Settings(home=tmp_path / "home", db_url=None)


embedded_only = pytest.mark.parametrize("settings", ["embedded"], indirect=True)


@pytest.fixture
def ready(applied):
    settings, db = applied
    return settings, db, open_store(settings)


def registry(uri: str) -> MlflowClient:
    return MlflowClient(tracking_uri=uri, registry_uri=uri)


def aliases(client: MlflowClient) -> dict[str, str]:
    return {k: str(v) for k, v in client.get_registered_model(MODEL_NAME).aliases.items()}


def gate_tags(client: MlflowClient, version: str) -> dict[str, str]:
    return {k: v for k, v in client.get_model_version(MODEL_NAME, version).tags.items() if k.startswith("gate.")}


def recorded_split(client: MlflowClient, run_id: str, tmp: Path) -> dict:
    return json.loads(Path(client.download_artifacts(run_id, f"{SPLIT_DIR}/{SPLIT_FILE}", str(tmp))).read_text())


def shuffled(frame: pd.DataFrame, seed: int = 1) -> pd.DataFrame:
    out = frame.copy()
    out["churn_label"] = out["churn_label"].sample(frac=1, random_state=seed).to_numpy()
    return out


def month_frame(settings: Settings, db, store, as_of) -> pd.DataFrame:
    return pd.read_parquet(build_dataset(settings, db, as_of, store=store).path)


# ------------------------------------------------------------------------------------------------ held-out rows


def test_the_gate_scores_exactly_the_recorded_held_out_users(ready, monkeypatch, tmp_path: Path) -> None:
    settings, db, store = ready
    client = registry(settings.tracking_uri)
    train(settings, db, JAN, store=store)
    promote(settings, db, store=store)
    challenger = train(settings, db, FEB, store=store)

    scored: list[tuple[str, set[str]]] = []
    real_auc = train_module._auc

    def spy(version, rows, features):  # the real scoring, and which users it scored
        scored.append((str(version.version), set(rows["user_id"].astype(str))))
        return real_auc(version, rows, features)

    monkeypatch.setattr(train_module, "_auc", spy)
    gate = promote(settings, db, store=store)

    split = recorded_split(client, challenger.run_id, tmp_path)
    held_out, trained_on = set(split["held_out"]), set(split["train"])
    month_ids = set(month_frame(settings, db, store, FEB)["user_id"].astype(str))
    assert held_out and trained_on and not held_out & trained_on and held_out | trained_on == month_ids
    assert len(held_out) == pytest.approx(0.2 * len(month_ids), abs=1)
    # both models, challenger and champion, scored on exactly the held-out users
    assert [v for v, _ in scored] == [challenger.model_version, "1"]
    assert all(ids == held_out for _, ids in scored)
    tags = client.get_model_version(MODEL_NAME, challenger.model_version).tags
    assert tags["held_out_sha256"] == ids_hash(held_out) == tags["gate.evaluated_sha256"]
    assert tags["gate.evaluated_rows"] == str(len(held_out)) and gate.evaluated_on == FEB.isoformat()
    assert client.get_run(challenger.run_id).data.tags["held_out_sha256"] == ids_hash(held_out)


def test_a_changed_training_set_is_refused_and_changes_nothing(ready, months_dir: Path, tmp_path: Path) -> None:
    settings, db, store = ready
    client = registry(settings.tracking_uri)
    first = train(settings, db, JAN, store=store)
    promote(settings, db, store=store)
    challenger = train(settings, db, FEB, store=store)
    recorded = client.get_model_version(MODEL_NAME, challenger.model_version).tags["evaluation_set_sha256"]
    before = aliases(client), gate_tags(client, challenger.model_version), gate_tags(client, first.model_version)

    # February re-ingested with one label changed
    changed = tmp_path / "month_001"
    shutil.copytree(months_dir / "month_001", changed)
    labels = pd.read_csv(changed / "labels.csv", dtype=str, keep_default_na=False)
    labels.loc[0, "churn_label"] = "False" if labels.loc[0, "churn_label"] == "True" else "True"
    labels.to_csv(changed / "labels.csv", index=False)
    ingest_month(db, settings, changed, FEB)
    take_snapshot(db, FEB)
    current = build_dataset(settings, db, FEB, store=store).manifest["content_sha256"]
    assert current != recorded

    with pytest.raises(TrainingSetChanged) as refused:
        promote(settings, db, store=store)
    message = str(refused.value)
    assert "as_of 2024-02-29" in message and recorded in message and current in message
    assert "train a new challenger" in message and "streamflow train --as-of 2024-02-29" in message
    after = aliases(client), gate_tags(client, challenger.model_version), gate_tags(client, first.model_version)
    assert after == before and before[0] == {"production": "1", "challenger": challenger.model_version}

    # a challenger trained on the current data is judged again
    again = train(settings, db, FEB, store=store)
    assert promote(settings, db, store=store).challenger_version == again.model_version


# ------------------------------------------------------------------------------------------ older months, rollback


def test_a_challenger_of_an_older_month_is_rejected_by_the_gate(ready) -> None:
    settings, db, store = ready
    client = registry(settings.tracking_uri)
    # a weak champion of February (shuffled labels) and a strong challenger of January: the score alone would promote
    champion = train(settings, db, FEB, frame=shuffled(month_frame(settings, db, store, FEB)), store=store)
    assert promote(settings, db, store=store).decision == "promoted"
    older = train(settings, db, JAN, store=store)
    gate = promote(settings, db, store=store)
    assert gate.challenger_auc > gate.champion_auc + gate.margin  # it would have won on AUC
    assert gate.decision == "rejected" and gate.production_version == champion.model_version
    expected = (
        f"trained on 2024-01-31, older than production v{champion.model_version}'s month (2024-02-29): "
        "an older month never replaces a newer model"
    )
    assert gate.reason == expected
    tags = gate_tags(client, older.model_version)
    assert tags["gate.decision"] == "rejected" and tags["gate.reason"] == expected
    assert aliases(client) == {"production": champion.model_version, "challenger": older.model_version}


def test_a_rollback_keeps_the_decision_record_monthly_reads(ready) -> None:
    settings, db, store = ready
    client = registry(settings.tracking_uri)
    weak = train(settings, db, JAN, frame=shuffled(month_frame(settings, db, store, JAN)), store=store)
    promote(settings, db, store=store)
    strong = train(settings, db, FEB, store=store)
    assert promote(settings, db, store=store).decision == "promoted"

    back = promote(settings, db, rollback=True, store=store)
    assert back.production_version == weak.model_version and back.champion_version == strong.model_version
    assert aliases(client) == {"production": weak.model_version}
    weak_tags, strong_tags = gate_tags(client, weak.model_version), gate_tags(client, strong.model_version)
    # both did serve: the gate's record stays, the rollback is written beside it
    assert weak_tags["gate.decision"] == strong_tags["gate.decision"] == "promoted"
    assert strong_tags["gate.rolled_back_to"] == weak.model_version
    assert weak_tags["gate.restored_by_rollback_of"] == strong.model_version
    # what monthly reads: the model in production before February was January's, rollback or not
    judged = judged_version(client, client.get_model_version(MODEL_NAME, strong.model_version), FEB)
    assert judged is not None and str(judged.version) == weak.model_version


# ------------------------------------------------------------------------------------------------ crashes


class Crash(RuntimeError):
    pass


WRITES = ("set_model_version_tag", "set_registered_model_alias", "delete_registered_model_alias")


def crash_at(monkeypatch: pytest.MonkeyPatch, n: int) -> list[str]:
    """Make the MLflow client's registry writes raise from the ``n``-th (0-based) on: the process 'dies' there."""
    done: list[str] = []
    for name in WRITES:
        real = getattr(MlflowClient, name)

        def write(self, *args, _real=real, _name=name, **kwargs):
            if len(done) >= n:
                raise Crash(f"crash before write #{n} ({_name}{args})")
            done.append(f"{_name}{args}")
            return _real(self, *args, **kwargs)

        monkeypatch.setattr(MlflowClient, name, write)
    return done


def assert_registry_true(client: MlflowClient, served: set[str]) -> None:
    """No version says ``promoted`` unless it holds or held ``production``; ``previous`` is one that served."""
    now = aliases(client)
    served = served | {now["production"]}
    for version in client.search_model_versions(f"name = '{MODEL_NAME}'"):
        if version.tags.get("gate.decision") == "promoted":
            assert str(version.version) in served, (version.version, version.tags, now)
    assert now.get("previous", next(iter(served))) in served


@embedded_only
def test_a_crash_at_any_gate_write_leaves_the_registry_true_and_a_rerun_finishes(ready, monkeypatch) -> None:
    settings, db, store = ready
    client = registry(settings.tracking_uri)
    champion = train(settings, db, JAN, frame=shuffled(month_frame(settings, db, store, JAN)), store=store)
    promote(settings, db, store=store)
    challenger = train(settings, db, FEB, store=store)
    v1, v2 = champion.model_version, challenger.model_version
    keep = gate_tags(client, v1)

    def reset() -> None:  # production = v1, challenger = v2 never judged, as before the gate
        for alias, version in aliases(client).items():
            if (alias, version) not in {("production", v1), ("challenger", v2)}:
                client.delete_registered_model_alias(MODEL_NAME, alias)
        client.set_registered_model_alias(MODEL_NAME, "production", v1)
        client.set_registered_model_alias(MODEL_NAME, "challenger", v2)
        for version, wanted in ((v1, keep), (v2, {})):
            for key in set(gate_tags(client, version)) - set(wanted):
                client.delete_model_version_tag(MODEL_NAME, version, key)

    n = 0
    while True:
        reset()
        with monkeypatch.context() as patch:
            done = crash_at(patch, n)
            try:
                promote(settings, db, store=store)
                crashed = False
            except Crash:
                crashed = True
        assert_registry_true(client, {v1})
        if crashed:  # the re-run completes the promotion
            assert len(done) == n
            assert promote(settings, db, store=store).production_version == v2, f"re-run after write #{n}"
        assert aliases(client) == {"production": v2, "previous": v1}, f"after a crash at write #{n}"
        tags = gate_tags(client, v2)
        assert tags["gate.decision"] == "promoted" and tags["gate.champion_version"] == v1
        assert gate_tags(client, v1)["gate.replaced_by"] == v2
        assert_registry_true(client, {v1})
        if not crashed:
            break
        n += 1
    assert n >= 10  # every write was crashed at once: the tags, each alias move, the final record
