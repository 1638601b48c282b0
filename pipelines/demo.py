"""``streamflow demo``: the main job on the embedded default, from an empty ``STREAMFLOW_HOME``."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from pipelines.config import Settings
from pipelines.db import connect
from pipelines.features import apply_repo, build_dataset, materialize, open_store
from pipelines.generate import generate
from pipelines.ingest import ingest_month
from pipelines.months import infer_as_of
from pipelines.snapshot import take_snapshot
from pipelines.status import collect_status
from pipelines.tables import SNAPSHOTS
from pipelines.train import promote, train


def run_demo(settings: Settings, *, users: int, months: int, seed: int, log: Callable[[str], None]) -> dict[str, Any]:
    """Generate ``months`` month folders under ``STREAMFLOW_HOME/data``, ingest and snapshot each, apply the Feast
    repo, materialize the newest snapshot online, build the first month's training set, train on it and run the
    promotion gate (the first model becomes ``production``); then start both model servers on loopback, send one
    real v2 request through the transformer and stop them.

    Returns:
        The stored state (:func:`pipelines.status.collect_status`) after the run, plus the training set summary.
    """
    data_dir = settings.home / "data"
    log(f"generating {months} month(s) of {users:,} users into {data_dir}")
    generated = generate(data_dir, users=users, months=months, seed=seed)
    db = connect(settings)
    try:
        for month in generated.months:
            as_of = infer_as_of(month.folder)
            result = ingest_month(db, settings, month.folder, as_of)
            log(f"ingested {month.folder.name}: {result.loaded:,} rows loaded, {result.quarantined:,} quarantined")
            snap = take_snapshot(db, as_of)
            log(f"snapshot as_of {as_of}: {sum(snap.rows.values()):,} rows in {len(snap.rows)} tables")
        applied = apply_repo(settings)
        log(
            f"feast apply: {len(applied.feature_views)} feature views, service {settings.feature_service} "
            f"({len(applied.features)} features)"
        )
        store = open_store(settings)
        newest = infer_as_of(generated.months[-1].folder)
        materialize(settings, db, newest, store=store)
        log(f"materialized as_of {newest} into the online store")
        first = infer_as_of(generated.months[0].folder)
        dataset = build_dataset(settings, db, first, store=store)
        log(
            f"training set as_of {first}: {dataset.manifest['rows']:,} rows, "
            f"label rate {dataset.manifest['label_rate']:.1%} -> {dataset.path}"
        )
        trained = train(settings, db, first, store=store)
        m = trained.metrics
        log(
            f"trained {trained.model} on {first}: ROC AUC {m['roc_auc']:.4f}, F1 {m['f1']:.4f}, "
            f"accuracy {m['accuracy']:.4f}; MLflow run {trained.run_id}, version {trained.model_version}"
        )
        gate = promote(settings, db, store=store)
        champion = "none" if gate.champion_auc is None else f"{gate.champion_auc:.4f}"
        log(
            f"gate {gate.decision}: challenger AUC {gate.challenger_auc:.4f} vs champion {champion}; "
            f"production = version {gate.production_version}"
        )
        users = sorted(db.read_snapshot(SNAPSHOTS[0], newest)["user_id"])[:3]
        served = serve_once(settings, users, log)
        return collect_status(db) | {
            "training_set": dataset.to_json(),
            "train": trained.to_json(),
            "promote": gate.to_json(),
            "serve": served,
        }
    finally:
        db.close()


def serve_once(settings: Settings, user_ids: list[str], log: Callable[[str], None]) -> dict[str, Any]:
    """Start predictor + transformer, send one v2 request for ``user_ids``, stop them; the answer and its curl."""
    from model_server.local import LocalServers, curl_line

    log(
        f"starting the predictor (:{settings.predictor_http_port}) and the transformer "
        f"(:{settings.transformer_http_port}) on {settings.serve_host}"
    )
    with LocalServers(settings) as servers:
        answer = servers.infer(user_ids)
    curl = curl_line(settings, user_ids)
    return {"request_user_ids": user_ids, "response": answer, "curl": curl}
