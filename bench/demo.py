"""`streamflow demo` from an empty STREAMFLOW_HOME, wall time of the whole command."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time

from bench.harness import STREAMFLOW, WORK, markdown


def bench_demo(sizes: list[int]) -> dict:
    """`streamflow demo` from an empty STREAMFLOW_HOME (the venv installed), wall time of the whole command."""
    from model_server.local import free_port

    rows = []
    for users in sizes:
        home = WORK / "home-demo"
        shutil.rmtree(home, ignore_errors=True)
        ports = {f"STREAMFLOW_{n}_PORT": str(free_port())
                 for n in ("TRANSFORMER_HTTP", "TRANSFORMER_GRPC", "PREDICTOR_HTTP", "PREDICTOR_GRPC")}  # fmt: skip
        env = {**os.environ, "STREAMFLOW_HOME": str(home), "STREAMFLOW_DB_URL": "", **ports}
        start = time.perf_counter()
        proc = subprocess.run([STREAMFLOW, "demo", "--users", str(users), "--json"], env=env, capture_output=True,
                              text=True, check=True)  # fmt: skip
        seconds = time.perf_counter() - start
        state = json.loads(proc.stdout)
        row = {
            "users": users,
            "seconds": round(seconds, 1),
            "decisions": [m["decision"] for m in state["months_run"]],
            "served_versions": [state["serve"]["before"]["model_version"], state["serve"]["response"]["model_version"]],
        }
        rows.append(row)
        print(f"demo {users:,} users: {row}", flush=True)
        shutil.rmtree(home, ignore_errors=True)
    return {
        "name": "demo",
        "what": "streamflow demo from an empty STREAMFLOW_HOME: 3 generated months through `monthly` (first model, "
        "calm month, drifted month retrained and promoted), both servers started, v2 requests before and after",
        "target_seconds": 90,
        "results": rows,
    }


def demo_table(result: dict) -> str:
    header = ["users per month", "demo wall time (s)", "target (s)", "decisions", "served versions"]
    rows = [[f"{r['users']:,}", r["seconds"], result["target_seconds"], " → ".join(r["decisions"]),
             " → ".join(r["served_versions"])] for r in result["results"]]  # fmt: skip
    return markdown(header, "rrrll", rows)


CHILDREN: dict = {}
BENCH = (bench_demo, demo_table, [7043])
