"""Candidate models on one training set: validation metrics, fit time and predict latency, in a fresh process; and
`streamflow train --model auto` (the default) timed end to end, with each family's cross-validated ROC AUC."""

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
    from pipelines.train import MODEL_KINDS, fit_and_score, train

    settings, db, store, as_of = prepared(users, home)
    dataset = build_dataset(settings, db, as_of, store=store)
    frame = pd.read_parquet(dataset.path)
    features = feature_names(store.get_feature_service(settings.feature_service))
    # what `streamflow train --as-of D` does by default, training set built: CV of the families, the winner's fit,
    # threshold, MLflow run and registration
    t0 = time.perf_counter()
    trained = train(settings, db, as_of, dataset=dataset, store=store)
    auto_s = time.perf_counter() - t0
    selection = trained.selection
    auto = {
        "train_auto_s": round(auto_s, 2),
        "winner": selection.winner,
        "reason": selection.reason,
        "folds": selection.folds,
        "cv": {
            family: {
                "auc_mean": round(c["auc_mean"], 4),
                "auc_std": round(c["auc_std"], 4),
                "fit_s": round(sum(c["fit_seconds"]), 2),
            }
            for family, c in selection.candidates.items()
        },
        "hgb_without_monotonic_cst": _unconstrained_hgb(frame, features, settings.seed, selection.folds),
    }
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
    print(json.dumps({"users": int(users), "rows": len(frame), "models": rows, "auto": auto}))


def _unconstrained_hgb(frame, features: list[str], seed: int, folds: int) -> dict:
    """hgb's CV ROC AUC without its monotone constraints, on the folds `auto` used: what the constraints cost."""
    import numpy as np
    from sklearn.metrics import roc_auc_score
    from sklearn.model_selection import StratifiedKFold

    from pipelines.train import LABEL, build_pipeline, categorical_features, split

    rows = split(frame, seed)[0]
    X, y = rows[features], rows[LABEL].astype(int).to_numpy()
    aucs = []
    for fit_idx, score_idx in StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed).split(X, y):
        model = build_pipeline("hgb", features, categorical_features(rows, features), seed)
        model.set_params(classifier__monotonic_cst=None)
        model.fit(X.iloc[fit_idx], y[fit_idx])
        aucs.append(roc_auc_score(y[score_idx], model.predict_proba(X.iloc[score_idx])[:, 1]))
    return {"auc_mean": round(float(np.mean(aucs)), 4), "auc_std": round(float(np.std(aucs, ddof=1)), 4)}


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
        "and on 1,000 rows, in-process, default threads; `auto`: pipelines.train.train with the default model "
        "(5-fold stratified CV of logreg, spline, hgb on the training split, the winner fitted, thresholded, "
        "logged and registered in MLflow; training set already built), each family's CV ROC AUC (mean, std) and "
        "summed fit time over the folds, and hgb's CV AUC on the same folds without monotonic_cst",
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
    auto_header = [
        "users",
        "`train --model auto` (s)",
        "winner",
        *(f"CV ROC AUC {f} (fit s)" for f in ("logreg", "spline", "hgb")),
        "hgb without monotonic_cst",
    ]
    auto_rows = []
    for r in result["results"]:
        if "auto" not in r:
            continue
        a = r["auto"]
        cv = [f"{a['cv'][f]['auc_mean']} ± {a['cv'][f]['auc_std']} ({a['cv'][f]['fit_s']})" for f in a["cv"]]
        free = a["hgb_without_monotonic_cst"]
        auto_rows.append(
            [f"{r['users']:,}", a["train_auto_s"], a["winner"], *cv, f"{free['auc_mean']} ± {free['auc_std']}"]
        )
    families = markdown(header, "rlrrrrrr", rows)
    return families if not auto_rows else families + "\n\n" + markdown(auto_header, "rrlrrrr", auto_rows)


CHILDREN = {"_child-models": _child_models}
BENCH = (bench_models, models_table, [7043, 100_000])
