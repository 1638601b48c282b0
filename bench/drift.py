"""Drift comparison of the demo's first and drifted months resampled to N rows: ours vs Evidently's default preset."""

from __future__ import annotations

import json
import shutil
import sys
import time
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
    model = fit_and_score(frames[0], features, "hgb", 42)[0]
    for frame, name in zip(frames, ("reference", "current"), strict=True):
        frame[PREDICTION] = model.predict_proba(frame[features])[:, 1]
        frame.to_parquet(WORK / f"drift-{name}.parquet", index=False)
    (WORK / "drift-features.json").write_text(json.dumps(features))
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

    start = time.perf_counter()
    if method == "streamflow":
        result = compare(*frames, features, categorical, threshold=0.1)
        share, drifted = result.drift_share, result.drifted_features
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
            report = Report([DataDriftPreset(columns=[*features, LABEL, PREDICTION])]).run(*data).dict()
        counted = report["metrics"][0]["value"]
        share, drifted = counted["share"], None
    seconds = time.perf_counter() - start
    print(json.dumps({"rows": int(rows), "method": method, "seconds": round(seconds, 2), "drift_share": share,
                      "drifted_features": drifted}))  # fmt: skip


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
        "same columns and DataDefinition; time of the comparison, peak RSS of the whole process",
        "results": rows,
    }


def drift_table(result: dict) -> str:
    by = {(r["rows"], r["method"]): r for r in result["results"]}
    header = ["rows per month", "StreamFlow drift (s)", "peak RSS (MiB)", "Evidently default preset (s)",
              "peak RSS (MiB)", "drift share (ours / preset)"]  # fmt: skip
    out = []
    for size in sorted({r["rows"] for r in result["results"]}):
        ours, preset = by[(size, "streamflow")], by[(size, "evidently-preset")]
        shares = f"{ours['drift_share']:.2f} / {preset['drift_share']:.2f}"
        out.append([f"{size:,}", ours["seconds"], f"{ours['peak_rss_mib']:,}", preset["seconds"],
                    f"{preset['peak_rss_mib']:,}", shares])  # fmt: skip
    return markdown(header, "rrrrrr", out)


CHILDREN = {"_child-drift-prepare": _child_drift_prepare, "_child-drift": _child_drift}
BENCH = (bench_drift, drift_table, [7043, 100_000, 1_000_000])
