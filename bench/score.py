"""Batch scoring (issue 19): ``streamflow score`` of every user of a month beside the same run's floor.

One month generated and loaded, an hgb model trained on it and promoted (not timed), then three fresh processes on
that state: ``score`` itself (the list: Feast's offline retrieval, the predictor's checks and scoring path, the table,
the files, the MLflow run), and the floor — Feast's own ``get_historical_features`` of the same users plus one
``predict_proba`` of the fitted classifier on an already encoded float matrix (the encoding is not in the floor: it
is part of what ``score`` pays). The issue times the reasons apart from the list, so the ratio is score's total
without the reasons over the floor (the ratio with them is kept beside it); Feast's share is the retrieval's part of
that total. What score imports lazily is imported before either clock starts, MLflow's SQL store included.
"""

from __future__ import annotations

import json
import shutil
import time

from bench.harness import WORK, data, markdown, prepared, run_self


def _imported() -> None:
    """What ``score`` imports lazily, imported before the clock starts (the benchmarks time work, not imports)."""
    import feast  # noqa: F401
    import mlflow.sklearn  # noqa: F401
    import mlflow.store.model_registry.sqlalchemy_store  # noqa: F401 - MLflow's SQL store: ~3 s of imports alone
    import mlflow.store.tracking.sqlalchemy_store  # noqa: F401
    import shap  # noqa: F401
    import sklearn.ensemble  # noqa: F401
    import skops.io  # noqa: F401
    import treelite.sklearn  # noqa: F401


def _opened(home: str):
    from pipelines.config import Settings
    from pipelines.db import connect
    from pipelines.online import open_store

    settings = Settings(home=home, db_url=None)
    return settings, connect(settings), open_store(settings)


def _child_score_prep(users: str, home: str) -> None:
    """The state the measured processes read: a month loaded, a model trained on it in production."""
    from pipelines.train import promote, train

    settings, db, store, as_of = prepared(users, home)
    train(settings, db, as_of, kind="hgb", store=store)
    promote(settings, db, store=store)
    db.close()
    print(json.dumps({"as_of": as_of.isoformat()}))


def _child_score(users: str, home: str) -> None:
    """``score`` as the CLI runs it (model load, retrieval, scoring, table, files, MLflow run)."""
    from datetime import date

    from pipelines.score import score

    _imported()
    settings, db, store = _opened(home)
    start = time.perf_counter()
    result = score(settings, db, date(2024, 1, 31), store=store)
    total = time.perf_counter() - start
    db.close()
    print(json.dumps({"rows": result.rows, "total_s": total, **{f"{k}_s": v for k, v in result.seconds.items()}}))


def _child_score_floor(users: str, home: str) -> None:
    """Feast's retrieval of the same users + one predict_proba on a float matrix (the model loaded beforehand)."""
    from datetime import date

    import pandas as pd

    from pipelines.features import as_of_timestamp
    from pipelines.online import feature_names, feature_service
    from pipelines.score import production_model

    as_of = date(2024, 1, 31)
    _imported()
    settings, db, store = _opened(home)
    _, model = production_model(settings)
    users_index = db.snapshot_user_ids(as_of)
    service = feature_service(store, settings)
    start = time.perf_counter()
    entity_df = pd.DataFrame({"user_id": users_index.astype(str), "event_timestamp": as_of_timestamp(as_of)})
    frame = store.get_historical_features(entity_df=entity_df, features=service).to_df()
    retrieved = time.perf_counter()
    X = model.pipeline[:-1].transform(frame[feature_names(service)])  # not timed: encoding is score's own work
    classifier = model.pipeline.steps[-1][1]
    t0 = time.perf_counter()
    proba = classifier.predict_proba(X)[:, 1]
    predicted = time.perf_counter()
    db.close()
    print(json.dumps({"rows": len(proba), "feast_s": retrieved - start, "predict_s": predicted - t0,
                      "total_s": (retrieved - start) + (predicted - t0)}))  # fmt: skip


PARTS = (
    "load_model",
    "features",
    "predict",
    "reasons",
    "write",
)  # score's own timings; the rest of its total is the MLflow run


def bench_score(sizes: list[int]) -> dict:
    rows = []
    for users in sizes:
        data(users)
        home = WORK / f"home-score-{users}"
        shutil.rmtree(home, ignore_errors=True)
        run_self("_child-score-prep", str(users), str(home))
        ours, _, peak = run_self("_child-score", str(users), str(home))
        floor, _, floor_peak = run_self("_child-score-floor", str(users), str(home))
        row = {
            "users": int(users),
            "rows": ours["rows"],
            "score_s": round(ours["total_s"], 3),
            "score_load_model_s": round(ours["load_model_s"], 3),
            "score_feast_s": round(ours["features_s"], 3),
            "score_predict_s": round(ours["predict_s"], 3),
            "score_reasons_s": round(ours["reasons_s"], 3),
            "score_write_s": round(ours["write_s"], 3),
            "score_mlflow_s": round(ours["total_s"] - sum(ours[f"{k}_s"] for k in PARTS), 3),
            "score_peak_rss_mib": round(peak),
            "floor_s": round(floor["total_s"], 3),
            "floor_feast_s": round(floor["feast_s"], 3),
            "floor_predict_s": round(floor["predict_s"], 3),
            "floor_peak_rss_mib": round(floor_peak),
        }
        listed = row["score_s"] - row["score_reasons_s"]  # the list without its reasons (timed apart)
        row["ratio"] = round(listed / row["floor_s"], 2)
        row["ratio_with_reasons"] = round(row["score_s"] / row["floor_s"], 2)
        # the model load is a fixed cost per run (download, skops, the predictor's probe checks), whatever the rows
        row["ratio_without_load"] = round((listed - row["score_load_model_s"]) / row["floor_s"], 2)
        row["feast_share"] = round(row["score_feast_s"] / listed, 2)
        rows.append(row)
        print(f"score {users:>9,} users: {row}", flush=True)
        shutil.rmtree(home, ignore_errors=True)
    return {
        "name": "score",
        "backend": "embedded (DuckDB, Feast local offline store on parquet, MLflow on SQLite), model hgb",
        "what": "streamflow score of every user of one month (model load, Feast offline retrieval, the predictor's "
        "checks and predict_proba, SHAP/linear reasons of the top decile, table + parquet + CSV, MLflow run) "
        "in a fresh process, beside the floor: Feast's "
        "get_historical_features of the same users + one predict_proba of the classifier on an encoded float matrix",
        "results": rows,
    }


def score_table(result: dict) -> str:
    header = [
        "users", "score (s)", "peak RSS (MiB)", "floor: Feast + predict_proba (s)", "peak RSS (MiB)",
        "score without reasons ÷ floor", "… with reasons", "… without the model load", "Feast's share",
        "score: model load / Feast / predict / reasons (top decile) / write / MLflow (s)",
    ]  # fmt: skip
    rows = [
        [f"{r['users']:,}", r["score_s"], f"{r['score_peak_rss_mib']:,}",
         f"{r['floor_s']} ({r['floor_feast_s']} + {r['floor_predict_s']})", f"{r['floor_peak_rss_mib']:,}",
         f"{r['ratio']}x", f"{r['ratio_with_reasons']}x", f"{r['ratio_without_load']}x", f"{r['feast_share']:.0%}",
         f"{r['score_load_model_s']} / {r['score_feast_s']} / {r['score_predict_s']} / {r['score_reasons_s']} / "
         f"{r['score_write_s']} / {r['score_mlflow_s']}"]
        for r in result["results"]
    ]  # fmt: skip
    return markdown(header, "rrrrrrrrrl", rows)


CHILDREN = {
    "_child-score-prep": _child_score_prep,
    "_child-score": _child_score,
    "_child-score-floor": _child_score_floor,
}
BENCH = (bench_score, score_table, [7043, 100_000, 1_000_000])
