"""Feature store: a training-set build and online lookups through OnlineFeatures.lookup, in a fresh process."""

from __future__ import annotations

import json
import shutil
import time

from bench.harness import WORK, data, markdown, prepared, run_self


def _child_features(users: str, home: str) -> None:
    """Runs in a fresh process: one month loaded and materialized, then online lookups and a training-set build."""
    import numpy as np

    from pipelines.features import build_dataset, materialize
    from pipelines.online import OnlineFeatures

    settings, db, store, as_of = prepared(users, home)
    start = time.perf_counter()
    build_dataset(settings, db, as_of, store=store)
    dataset_s = time.perf_counter() - start
    materialize(settings, db, as_of, store=store)
    ids = db.query("SELECT user_id FROM labels WHERE as_of = ?", (as_of,))["user_id"].tolist()
    rng = np.random.default_rng(0)
    out: dict = {"users": int(users), "dataset_build_s": round(dataset_s, 3)}
    lookup = OnlineFeatures(settings, store=store)
    for batch, reps in ((1, 300), (1000, 20)):
        lookup.lookup(list(rng.choice(ids, batch)))  # warm-up
        times = []
        for _ in range(reps):
            chosen = list(rng.choice(ids, batch))
            t0 = time.perf_counter()
            result = lookup.lookup(chosen)
            times.append((time.perf_counter() - t0) * 1000)
            assert not result.missing
        out[f"default_{batch}_p50_ms"] = round(float(np.percentile(times, 50)), 2)
        out[f"default_{batch}_p99_ms"] = round(float(np.percentile(times, 99)), 2)
    db.close()
    print(json.dumps(out))


def bench_features(sizes: list[int]) -> dict:
    rows = []
    for users in sizes:
        data(users)
        home = WORK / f"home-features-{users}"
        shutil.rmtree(home, ignore_errors=True)
        row, _, peak = run_self("_child-features", str(users), str(home))
        row["peak_rss_mib"] = round(peak)
        rows.append(row)
        print(f"features {users:>9,} users: {row}", flush=True)
        shutil.rmtree(home, ignore_errors=True)
    return {
        "name": "features",
        "backend": "embedded (Feast local offline store on parquet, SQLite online store)",
        "what": "training-set build (get_historical_features + labels, parquet + manifest) and online lookups "
        "through OnlineFeatures.lookup (one Feast get_online_features call per batch), in-process",
        "results": rows,
    }


def features_table(result: dict) -> str:
    header = ["users", "training set build (s)", "lookup 1 user p50 / p99 (ms)", "lookup 1,000 users p50 / p99 (ms)"]
    rows = [
        [f"{r['users']:,}", r["dataset_build_s"], f"{r['default_1_p50_ms']} / {r['default_1_p99_ms']}",
         f"{r['default_1000_p50_ms']} / {r['default_1000_p99_ms']}"]
        for r in result["results"]
    ]  # fmt: skip
    return markdown(header, "rrrr", rows)


CHILDREN = {"_child-features": _child_features}
BENCH = (bench_features, features_table, [7043, 100_000])
