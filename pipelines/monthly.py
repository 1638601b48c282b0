"""``streamflow retrain`` and ``streamflow monthly``: the closed loop, one month at a time.

``monthly`` is the sequence the monthly Argo workflow runs, in one process: ingest → snapshot → materialize → drift →
retrain if the decision says so → gate → score (the month's list, by the model in production after the gate). The
predictor polls the registry, so a promotion reaches the served model without a redeploy.

Both are safe to re-run for the same month. ``retrain`` finds a version already trained on the same training set
(same as_of, data hash, model kind and seed) and reports its gate decision instead of registering a twin; ``monthly``
judges the model that was in production when the month arrived — after a promotion for month B, that is the newest
version promoted before B — so a re-run compares the same months with the same model and reaches the same decision.
An older month re-run after newer ones never retrains: a model of an older month never replaces a newer one (the
gate itself enforces that rule, for ``retrain`` and ``train`` + ``promote`` by hand too; ``monthly`` only spares the
training it would reject).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Any

from pipelines.config import Settings
from pipelines.db import Database
from pipelines.errors import InvalidInput, NotFound
from pipelines.metrics import quietly, record_month, record_production, record_scores, step


@dataclass
class RetrainResult:
    as_of: date
    trained: dict[str, Any] | None  # the new version's training summary; None when an earlier one was reused
    gate: dict[str, Any]
    reused_version: str | None = None

    @property
    def production_version(self) -> str:
        return str(self.gate["production_version"])

    def to_json(self) -> dict[str, Any]:
        return {
            "as_of": self.as_of.isoformat(),
            "trained": self.trained,
            "gate": self.gate,
            "reused_version": self.reused_version,
            "production_version": self.production_version,
        }


def _same_training(client, as_of: date, kind: str, seed: int, data_hash: str):
    """The newest version trained on exactly this training set with this kind and seed, or None."""
    from pipelines.registry import MODEL_NAME

    wanted = {"as_of": as_of.isoformat(), "seed": str(seed), "training_set_sha256": data_hash}
    found = [
        v
        for v in client.search_model_versions(f"name = '{MODEL_NAME}'")
        if all(v.tags.get(k) == value for k, value in wanted.items())
        # what was asked ("auto" or a family); versions older than that tag recorded only the family
        and v.tags.get("model_request", v.tags.get("model_kind")) == kind
    ]
    return max(found, key=lambda v: int(v.version), default=None)


def retrain(
    settings: Settings,
    db: Database,
    as_of: date,
    *,
    kind: str | None = None,
    seed: int | None = None,
    dataset=None,
    store=None,
) -> RetrainResult:
    """Build the as_of's training set (unless ``dataset`` is it already), train a challenger on it and run the
    promotion gate.

    Raises:
        NotFound: no snapshot or labels for ``as_of``; the Feast repo not applied.
        InvalidInput: a training set no model should be fitted on.
        StreamflowError: MLflow unreachable.
    """
    from pipelines.features import build_dataset
    from pipelines.online import open_store
    from pipelines.registry import CHALLENGER, PRODUCTION, mlflow_client, version_by_alias
    from pipelines.train import DECIDED, PENDING, PromoteResult, promote, train

    kind = kind or settings.model_kind
    seed = settings.seed if seed is None else seed
    store = store or open_store(settings)
    client = mlflow_client(settings)
    if dataset is None or dataset.as_of != as_of:
        dataset = build_dataset(settings, db, as_of, store=store)
    earlier = _same_training(client, as_of, kind, seed, dataset.manifest["content_sha256"])
    if earlier is not None and earlier.tags.get("gate.decision") in DECIDED:  # not "pending": a gate that died
        production = version_by_alias(client, PRODUCTION)
        gate = PromoteResult.recorded(earlier, None if production is None else str(production.version))
        return RetrainResult(as_of, None, gate.to_json(), reused_version=str(earlier.version))
    challenger = version_by_alias(client, CHALLENGER)
    unjudged = earlier is not None and challenger is not None and challenger.version == earlier.version
    if unjudged or (earlier is not None and earlier.tags.get("gate.decision") == PENDING):
        # trained before and never judged, or judged by a gate that died moving the aliases: the gate finishes it
        trained, reused = None, str(earlier.version)
    else:
        trained = train(settings, db, as_of, kind=kind, seed=seed, dataset=dataset, store=store).to_json()
        reused = None
    gate = promote(settings, db, store=store).to_json()
    return RetrainResult(as_of, trained, gate, reused_version=reused)


# ------------------------------------------------------------------------------------------------ monthly


@dataclass
class MonthlyResult:
    month_dir: Path
    as_of: date
    steps: dict[str, Any]
    decision: str  # RETRAIN | NO_ACTION | BOOTSTRAP (no model yet: the month trained the first one)
    reasons: list[str]
    production_version: str | None
    line: str | None = None  # the drift decision line when drift ran

    def to_json(self) -> dict[str, Any]:
        return {
            "month_dir": str(self.month_dir),
            "as_of": self.as_of.isoformat(),
            "decision": self.decision,
            "reasons": self.reasons,
            "production_version": self.production_version,
            "line": self.line,
            **self.steps,
        }


def judged_version(client, production, as_of: date):
    """The version that was in production when month ``as_of`` arrived, or None when there was none.

    The production version itself when it was trained on an earlier month (the usual case: a new month). Otherwise
    the month was processed before — retrained, or later months came after it — and the model that faced it is the
    newest version promoted by the gate among those trained before it.

    Only a true record counts: the gate writes ``promoted`` once ``production`` holds the version (a gate that died
    before leaves ``pending``), and a rollback leaves the record as it was (the rolled-back version did serve).
    """
    from pipelines.registry import MODEL_NAME
    from pipelines.train import PROMOTED

    month = as_of.isoformat()
    if production.tags.get("as_of", "") < month:
        return production
    before = [
        v
        for v in client.search_model_versions(f"name = '{MODEL_NAME}'")
        if v.tags.get("as_of", "") < month and v.tags.get("gate.decision") == PROMOTED
    ]
    return max(before, key=lambda v: (v.tags["as_of"], int(v.version)), default=None)


def run_monthly(
    settings: Settings, db: Database, month_dir: Path, *, store=None, log: Callable[[str], None] = lambda _: None
) -> MonthlyResult:
    """The whole month: ingest → snapshot → materialize → drift → retrain if needed → gate.

    With no production model yet, the month trains the first one (decision BOOTSTRAP, no drift to judge). The run is
    recorded as started before anything is stored and as finished with its decision at the end, so ``--next`` takes
    a month whose run died again (a workflow retry included) rather than skipping to the next one.

    Raises:
        InvalidInput / NotFound: a bad month folder (nothing stored changes), as ``ingest`` raises them.
        StreamflowError: MLflow unreachable.
    """
    from pipelines.ingest import check_month_dir
    from pipelines.months import infer_as_of

    check_month_dir(month_dir)
    as_of = infer_as_of(month_dir)
    db.record_monthly(as_of, None)
    result = _run_month(settings, db, month_dir, as_of, store=store, log=log)
    db.record_monthly(as_of, result.decision)
    quietly(record_month, settings, as_of, result.decision)
    quietly(record_production, settings, result.production_version)
    return result


def _run_month(
    settings: Settings, db: Database, month_dir: Path, as_of: date, *, store, log: Callable[[str], None]
) -> MonthlyResult:
    """The month's decision, then its list: every user of the month scored by the model in production after the
    decision (whichever path it took), so the retention team's list never comes from a model the gate replaced."""
    from pipelines.score import score

    result = _decide_month(settings, db, month_dir, as_of, store=store, log=log)
    result.steps["score"] = None
    if result.production_version is None:
        return result
    with step(settings, "score"):
        # its own store: on a first month the decision registered the feature repo after a caller's store opened
        scored = score(settings, db, as_of)
    quietly(record_scores, settings, scored)
    result.steps["score"] = scored.to_json()
    log(
        f"scored {scored.rows:,} users of {as_of} with v{scored.model_version}: "
        f"{scored.share_above_threshold:.1%} at or above the threshold; top {scored.top_n:,} in {scored.csv}"
    )
    return result


def _decide_month(
    settings: Settings, db: Database, month_dir: Path, as_of: date, *, store, log: Callable[[str], None]
) -> MonthlyResult:
    from pipelines.drift import RETRAIN, run_drift
    from pipelines.features import apply_repo, build_dataset, materialize
    from pipelines.ingest import ingest_month
    from pipelines.online import feature_service, open_store
    from pipelines.registry import PRODUCTION, mlflow_client, version_by_alias
    from pipelines.snapshot import take_snapshot

    steps: dict[str, Any] = {}
    with step(settings, "ingest"):
        ingested = ingest_month(db, settings, month_dir, as_of)
    steps["ingest"] = ingested.to_json()
    log(f"ingested {month_dir.name} (as_of {as_of}): {ingested.loaded:,} rows, {ingested.quarantined:,} quarantined")
    with step(settings, "snapshot"):
        steps["snapshot"] = take_snapshot(db, as_of).to_json()
    store = store or open_store(settings)
    try:
        feature_service(store, settings)
    except NotFound:  # a first month on an empty state: register the feature repo
        with step(settings, "features_apply"):
            steps["apply"] = apply_repo(settings).to_json()
        store = open_store(settings)
        log(f"feast apply: feature service {settings.feature_service} registered")
    with step(settings, "features_materialize"):
        materialized = materialize(settings, db, as_of, store=store)
    steps["materialize"] = materialized.to_json()
    log(materialized.skipped or f"materialized as_of {as_of} into the online store")

    # the month's training set, built once for drift and for retraining
    with step(settings, "dataset_build"):
        dataset = build_dataset(settings, db, as_of, store=store)
    client = mlflow_client(settings)
    production = version_by_alias(client, PRODUCTION)
    # a month older than the production model's never replaces it (as the online store never goes back in time): the
    # gate would reject its challenger, so monthly does not train one
    trained_on = "" if production is None else production.tags.get("as_of", "")
    newer = trained_on if trained_on > as_of.isoformat() else None
    judged = None if production is None else judged_version(client, production, as_of)
    if judged is None and newer:
        reasons = [f"nothing to judge: no model was in production before {as_of}, and v{production.version} in "
                   f"production was trained on a newer month ({newer})"]  # fmt: skip
        steps |= {"drift": None, "retrain": None}
        log(reasons[0])
        return MonthlyResult(month_dir, as_of, steps, "NO_ACTION", reasons, str(production.version))
    if judged is None:
        if production is None:
            reasons = ["no production model yet: this month trains the first one"]
        else:
            reasons = [f"version {production.version} in production was trained on this month and replaced none"]
        with step(settings, "retrain"):
            retrained = retrain(settings, db, as_of, dataset=dataset, store=store)
        steps |= {"drift": None, "retrain": retrained.to_json()}
        log(f"{reasons[0]}; gate {retrained.gate['decision']}, production = v{retrained.production_version}")
        return MonthlyResult(month_dir, as_of, steps, "BOOTSTRAP", reasons, retrained.production_version)

    with step(settings, "drift"):
        drift = run_drift(settings, db, as_of, model_version=str(judged.version), current_dataset=dataset, store=store)
    steps["drift"] = drift.to_json()
    log(drift.line())
    steps["retrain"] = None
    production_version = str(production.version)
    reasons = list(drift.reasons)
    if drift.decision == RETRAIN and newer:
        reasons.append(
            f"not retrained: v{production.version} in production was trained on a newer month ({newer}); "
            "an older month never replaces it"
        )
        log(reasons[-1])
    elif drift.decision == RETRAIN:
        with step(settings, "retrain"):
            retrained = retrain(settings, db, as_of, dataset=dataset, store=store)
        steps["retrain"] = retrained.to_json()
        production_version = retrained.production_version
        gate = retrained.gate
        again = f" (recorded on v{retrained.reused_version})" if retrained.reused_version else ""
        log(
            f"retrained on {as_of}: challenger v{gate['challenger_version']} AUC {gate['challenger_auc']:.4f} vs "
            f"champion {gate['champion_auc'] if gate['champion_auc'] is None else round(gate['champion_auc'], 4)} "
            f"-> {gate['decision']}{again}; production = v{production_version}"
        )
    return MonthlyResult(month_dir, as_of, steps, drift.decision, reasons, production_version, drift.line())


# ------------------------------------------------------------------------------------------------ monthly --next


def pick_next_month(names: Iterable[str], ingested: Iterable[date], unfinished: Iterable[date] = ()) -> str | None:
    """The oldest ``month_NNN`` name among ``names`` whose as_of is not in ``ingested`` or whose ``monthly`` run is
    ``unfinished``; None when every one is done. Names that are not month folders are ignored."""
    from pipelines.months import as_of_for_index, month_index

    done = set(ingested) - set(unfinished)
    months = sorted((index, name) for name in names if (index := month_index(name)) is not None)
    return next((name for index, name in months if as_of_for_index(index) not in done), None)


@dataclass
class NextMonth:
    """What ``monthly --next DATA_DIR`` found: the month folder to run, or none (every folder is ingested)."""

    data_dir: Path
    month_dir: Path | None
    latest: Path  # the newest month folder under data_dir

    @property
    def line(self) -> str:
        """The no-op line (when month_dir is None)."""
        from pipelines.months import infer_as_of

        return (
            f"nothing to do: every month folder under {self.data_dir} is ingested "
            f"(latest {self.latest.name}, as_of {infer_as_of(self.latest)})"
        )

    def to_json(self) -> dict[str, Any]:
        """The no-op's JSON: the keys a monthly run has (decision, month_dir, as_of, reasons) plus where it looked."""
        from pipelines.months import infer_as_of

        return {
            "ok": True,
            "decision": "NONE",
            "month_dir": None,
            "as_of": None,
            "reasons": [self.line],
            "data_dir": str(self.data_dir),
            "latest_month_dir": str(self.latest),
            "latest_as_of": infer_as_of(self.latest).isoformat(),
        }


def next_month(db: Database, data_dir: Path) -> NextMonth:
    """The oldest ``month_NNN`` folder under ``data_dir`` not ingested yet, or whose ``monthly`` run died.

    Raises:
        InvalidInput: ``data_dir`` is not a folder, or holds no month_NNN folder.
    """
    from pipelines.months import month_index

    if not data_dir.is_dir():
        raise InvalidInput(f"--next {data_dir}: not a folder (expected the folder holding month_000, month_001, …)")
    names = [p.name for p in data_dir.iterdir() if p.is_dir() and month_index(p.name) is not None]
    if not names:
        raise InvalidInput(f"--next {data_dir}: no month_NNN folder in it (month_000 = as_of 2024-01-31, …)")
    chosen = pick_next_month(names, db.months(), db.unfinished_months())
    latest = max(names, key=month_index)
    return NextMonth(data_dir, None if chosen is None else data_dir / chosen, data_dir / latest)
