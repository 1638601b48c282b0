"""Drift comparison of the demo's first and drifted months resampled to N rows: ours vs Evidently's default preset,
and the cost of the HTML report's summary (Evidently's page alone vs the page StreamFlow saves, same run)."""

from __future__ import annotations

import json
import shutil
import sys
import time
from datetime import date
from pathlib import Path

from bench.harness import RUN, WORK, markdown, run_child, run_self


def _child_drift_prepare(users: str, home: str) -> None:
    """Runs in a fresh process: the demo's first and drifted months (7,043 users) as training sets, scored by a
    model fitted on the first; written as parquet for the drift children to resample."""
    import pandas as pd

    from pipelines.config import Settings
    from pipelines.db import connect
    from pipelines.demo import CONCEPT_SHIFT, DRIFT
    from pipelines.drift import PREDICTION
    from pipelines.features import apply_repo, build_dataset
    from pipelines.generate import generate, parse_drift
    from pipelines.ingest import ingest_month
    from pipelines.online import feature_names, open_store
    from pipelines.snapshot import take_snapshot
    from pipelines.train import fit_and_score

    months = generate(Path(home) / "data", users=int(users), months=3, seed=42, drift=[parse_drift(d) for d in DRIFT],
                      drift_start=2, concept_shift=CONCEPT_SHIFT).months  # fmt: skip
    settings = Settings(home=Path(home), db_url=None)
    db = connect(settings)
    frames = []
    for month in (months[0], months[2]):
        ingest_month(db, settings, month.folder, month.as_of)
        take_snapshot(db, month.as_of)
    apply_repo(settings)
    store = open_store(settings)
    for month in (months[0], months[2]):
        frames.append(pd.read_parquet(build_dataset(settings, db, month.as_of, store=store).path))
    features = feature_names(store.get_feature_service(settings.feature_service))
    fitted = fit_and_score(frames[0], features, "hgb", 42)
    model, validation_auc = fitted[0], fitted[5]["roc_auc"]
    for frame, name in zip(frames, ("reference", "current"), strict=True):
        frame[PREDICTION] = model.predict_proba(frame[features])[:, 1]
        frame.to_parquet(WORK / f"drift-{name}.parquet", index=False)
    (WORK / "drift-features.json").write_text(json.dumps(features))
    months_compared = [months[0].as_of.isoformat(), months[2].as_of.isoformat()]
    (WORK / "drift-model.json").write_text(json.dumps({"validation_auc": validation_auc, "names": months_compared}))
    db.close()


def _child_drift(rows: str, method: str) -> None:
    """Runs in a fresh process: both months resampled (with replacement, seeded) to ``rows`` rows, then the drift
    comparison timed: ours (pipelines.drift.compare) or Evidently's default DataDriftPreset on the same columns."""
    import pandas as pd

    from pipelines.drift import LABEL, PREDICTION, compare
    from pipelines.train import categorical_features

    features = json.loads((WORK / "drift-features.json").read_text())
    frames = [
        pd.read_parquet(WORK / f"drift-{name}.parquet").sample(n=int(rows), replace=True, random_state=i)
        for i, name in enumerate(("reference", "current"))
    ]
    categorical = categorical_features(frames[0], features)
    import evidently.metrics  # noqa: F401 - imports excluded from the timing, as in every bench here
    import evidently.presets  # noqa: F401

    import pipelines.report  # noqa: F401 - and the report's (pipelines.report imports evidently's widgets lazily)

    start = time.perf_counter()
    report = None
    if method == "streamflow":
        result = compare(*frames, features, categorical, threshold=0.1)
        share, drifted = result.drift_share, result.drifted_features
        seconds = time.perf_counter() - start
        report = _report_cost(result, frames)
    else:
        import warnings

        from evidently import DataDefinition, Dataset, Report
        from evidently.presets import DataDriftPreset

        from pipelines.drift import _evidently_frame

        numeric = [c for c in [*features, PREDICTION] if c not in categorical]
        cats = [*categorical, LABEL]
        definition = DataDefinition(numerical_columns=numeric, categorical_columns=cats)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            data = [Dataset.from_pandas(_evidently_frame(f, numeric, cats), data_definition=definition) for f in frames]
            preset = Report([DataDriftPreset(columns=[*features, LABEL, PREDICTION])]).run(*data).dict()
        counted = preset["metrics"][0]["value"]
        share, drifted = counted["share"], None
        seconds = time.perf_counter() - start
    print(json.dumps({"rows": int(rows), "method": method, "seconds": round(seconds, 2), "drift_share": share,
                      "drifted_features": drifted} | ({"report": report} if report else {})))  # fmt: skip


def _report_cost(comparison, frames) -> dict:
    """The HTML report of the same comparison written twice: Evidently's page as it is (``snapshot.save_html``) and
    the page StreamFlow saves (``pipelines.report``: decision, drift share and feature table in front of Evidently's
    widgets); seconds and MiB of each. The decision is ``decide``'s on these frames, with the default settings."""
    from sklearn.metrics import roc_auc_score

    from pipelines.config import Settings
    from pipelines.drift import LABEL, PREDICTION, DriftResult, decide
    from pipelines.report import render_html

    model = json.loads((WORK / "drift-model.json").read_text())
    names = tuple(model["names"])
    settings = Settings(home=WORK / "home-drift", db_url=None)
    label_rate = {name: float(frame[LABEL].mean()) for name, frame in zip(names, frames, strict=True)}
    realized_auc = float(roc_auc_score(frames[1][LABEL].astype(int), frames[1][PREDICTION]))
    quality_margin = settings.quality_drop_margin
    decision, reasons = decide(comparison, realized_auc, model["validation_auc"], label_rate, settings, names)
    folder = WORK / "drift-reports"
    folder.mkdir(parents=True, exist_ok=True)
    result = DriftResult(
        reference_as_of=date.fromisoformat(names[0]),
        current_as_of=date.fromisoformat(names[1]),
        model_version="bench",
        rows={name: len(frame) for name, frame in zip(names, frames, strict=True)},
        comparison=comparison,
        label_rate=label_rate,
        realized_auc=realized_auc,
        validation_auc=model["validation_auc"],
        decision=decision,
        reasons=reasons,
        thresholds={"drift_share": settings.drift_share_threshold, "column": 0.1, "quality_drop": quality_margin},
        report_html=folder / "with-summary.html",
        report_json=folder / "evidently.json",
    )
    comparison.snapshot.get_html_str(as_iframe=False)  # untimed: both timings below start warm
    start = time.perf_counter()
    comparison.snapshot.save_html(str(folder / "evidently.html"))
    plain = time.perf_counter() - start
    start = time.perf_counter()
    result.report_html.write_text(render_html(result), encoding="utf-8")
    summary = time.perf_counter() - start
    mib = {path.stem: round(path.stat().st_size / 2**20, 2) for path in folder.glob("*.html")}
    return {
        "evidently_seconds": round(plain, 3),
        "with_summary_seconds": round(summary, 3),
        "evidently_mib": mib["evidently"],
        "with_summary_mib": mib["with-summary"],
        "decision": decision,
    }


def bench_drift(sizes: list[int]) -> dict:
    home = WORK / "home-drift"
    shutil.rmtree(home, ignore_errors=True)
    WORK.mkdir(parents=True, exist_ok=True)
    run_child([sys.executable, str(RUN), "_child-drift-prepare", "7043", str(home)])
    rows = []
    for size in sizes:
        for method in ("streamflow", "evidently-preset"):
            row, _, peak = run_self("_child-drift", str(size), method)
            row["peak_rss_mib"] = round(peak)
            rows.append(row)
            print(f"drift {size:>9,} rows: {row}", flush=True)
    shutil.rmtree(home, ignore_errors=True)
    return {
        "name": "drift",
        "what": "drift of 14 features + churn_label + the model's scores between the demo's first and drifted "
        "months, both resampled with replacement to N rows: pipelines.drift.compare (one Evidently ValueDrift per "
        "column, normed Wasserstein / Jensen-Shannon, every row) vs Evidently 0.7's default DataDriftPreset on the "
        "same columns and DataDefinition; time of the comparison, peak RSS of the whole process. Then, in the "
        "same StreamFlow run, the HTML report of that comparison written both ways: Evidently's page as it is "
        "(snapshot.save_html) and the page drift saves (pipelines.report: decision, drift share and feature table "
        "in front of the same Evidently widgets); seconds and size of each",
        "results": rows,
    }


def drift_table(result: dict) -> str:
    by = {(r["rows"], r["method"]): r for r in result["results"]}
    header = ["rows per month", "StreamFlow drift (s)", "peak RSS (MiB)", "Evidently default preset (s)",
              "peak RSS (MiB)", "drift share (ours / preset)", "HTML report: Evidently's / with summary (s)",
              "(MiB)"]  # fmt: skip
    out = []
    for size in sorted({r["rows"] for r in result["results"]}):
        ours, preset = by[(size, "streamflow")], by[(size, "evidently-preset")]
        shares = f"{ours['drift_share']:.2f} / {preset['drift_share']:.2f}"
        report = ours.get("report")  # results measured before the report's summary existed have none
        seconds = "–" if report is None else f"{report['evidently_seconds']:.2f} / {report['with_summary_seconds']:.2f}"
        mib = "–" if report is None else f"{report['evidently_mib']:.1f} / {report['with_summary_mib']:.1f}"
        out.append([f"{size:,}", ours["seconds"], f"{ours['peak_rss_mib']:,}", preset["seconds"],
                    f"{preset['peak_rss_mib']:,}", shares, seconds, mib])  # fmt: skip
    return markdown(header, "rrrrrrrr", out)


CHILDREN = {"_child-drift-prepare": _child_drift_prepare, "_child-drift": _child_drift}
BENCH = (bench_drift, drift_table, [7043, 100_000, 1_000_000])
