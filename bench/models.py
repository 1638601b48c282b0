"""Candidate models on one training set: validation metrics, fit time and predict latency, in a fresh process."""

from __future__ import annotations

import json
import shutil
import time

from bench.harness import WORK, data, markdown, prepared, run_self


def _child_models(users: str, home: str) -> None:
    """Runs in a fresh process: the candidate models on the same training set; AUC and predict latency."""
    import numpy as np
    import pandas as pd

    from pipelines.features import build_dataset
    from pipelines.online import feature_names
    from pipelines.train import MODEL_KINDS, fit_and_score

    settings, db, store, as_of = prepared(users, home)
    frame = pd.read_parquet(build_dataset(settings, db, as_of, store=store).path)
    features = feature_names(store.get_feature_service(settings.feature_service))
    rows = []
    for kind in MODEL_KINDS:
        pipeline, _, valid, _, threshold, metrics, seconds = fit_and_score(frame, features, kind, settings.seed)
        one = valid[features].head(1)
        batch = valid[features].head(1000)
        for _ in range(20):
            pipeline.predict_proba(one)
        single = []
        for i in range(300):
            row = valid[features].iloc[[i % len(valid)]]
            t0 = time.perf_counter()
            pipeline.predict_proba(row)
            single.append((time.perf_counter() - t0) * 1000)
        batched = []
        for _ in range(20):
            t0 = time.perf_counter()
            pipeline.predict_proba(batch)
            batched.append((time.perf_counter() - t0) * 1000)
        rows.append(
            {
                "model": kind,
                "roc_auc": round(metrics["roc_auc"], 4),
                "f1": round(metrics["f1"], 4),
                "accuracy": round(metrics["accuracy"], 4),
                "threshold": round(threshold, 4),
                "train_s": round(seconds, 2),
                "predict_1_row_p50_ms": round(float(np.percentile(single, 50)), 2),
                "predict_1_row_p99_ms": round(float(np.percentile(single, 99)), 2),
                "predict_1000_rows_p50_ms": round(float(np.percentile(batched, 50)), 2),
            }
        )
    db.close()
    print(json.dumps({"users": int(users), "rows": len(frame), "models": rows}))


def bench_models(sizes: list[int]) -> dict:
    results = []
    for users in sizes:
        data(users)
        home = WORK / f"home-models-{users}"
        shutil.rmtree(home, ignore_errors=True)
        results.append(run_self("_child-models", str(users), str(home))[0])
        print(f"models {users:>9,} users: {results[-1]}", flush=True)
        shutil.rmtree(home, ignore_errors=True)
    return {
        "name": "models",
        "what": "candidate models on the as_of 2024-01-31 training set (80/20 stratified split, seed 42): "
        "validation metrics at the F1-optimal threshold, fit time, predict_proba latency on a 1-row DataFrame "
        "and on 1,000 rows, in-process, default threads",
        "results": results,
    }


def models_table(result: dict) -> str:
    header = [
        "users",
        "model",
        "ROC AUC",
        "F1",
        "accuracy",
        "fit (s)",
        "predict 1 row p50 / p99 (ms)",
        "1,000 rows (ms)",
    ]
    rows = [
        [f"{r['users']:,}", m["model"], m["roc_auc"], m["f1"], m["accuracy"], m["train_s"],
         f"{m['predict_1_row_p50_ms']} / {m['predict_1_row_p99_ms']}", m["predict_1000_rows_p50_ms"]]
        for r in result["results"]
        for m in r["models"]
    ]  # fmt: skip
    return markdown(header, "rlrrrrrr", rows)


CHILDREN = {"_child-models": _child_models}
BENCH = (bench_models, models_table, [7043, 100_000])
