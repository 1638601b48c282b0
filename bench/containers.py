"""Containers: the chart's servers as containers of the project image (a real Docker engine) beside the same servers
as host processes, in one run.

The container tier's setup (tests/containers/tier.py): the chart rendered with ci/external-postgres-values.yaml, its
Postgres, Pushgateway and MLflow server as containers on one Docker network, the bootstrap workflow's steps run in
order (7,043 generated users, a model in production). Then, with the image already built:

- cold start to ready, per server: ``docker run`` of the chart's container until its readiness probe's URL answers
  200, ``CONTAINER_STARTS`` times (medians; the page cache is warm after the first);
- the v2 path (transformer → predictor → Feast's Postgres online store) through the containers (their ports published
  on 127.0.0.1) and through the same two servers started as host processes on loopback against the same Postgres
  and MLflow (their published ports): wrk c=1 and c=8, ``ROUNDS`` rounds alternating (medians). The ratio is the
  figure: the machine's speed drifts between runs.
"""

from __future__ import annotations

import os
import shutil
import statistics
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

from bench.harness import WORK, markdown

CONTAINER_STARTS = int(os.environ.get("STREAMFLOW_BENCH_CONTAINER_STARTS", "3"))
ROUNDS = int(os.environ.get("STREAMFLOW_BENCH_CONTAINER_ROUNDS", "3"))
SECONDS = int(os.environ.get("STREAMFLOW_BENCH_SERVING_SECONDS", "8"))


def _until_200(url: str, limit: float = 300) -> float:
    """Seconds until ``url`` answers 200 (polled every 50 ms)."""
    started = time.monotonic()
    while time.monotonic() - started < limit:
        try:
            with urllib.request.urlopen(url, timeout=2) as answer:
                if answer.status == 200:
                    return time.monotonic() - started
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.05)
    raise SystemExit(f"{url} not ready after {limit:g} s")


def bench_containers(sizes: list[int]) -> dict:
    from bench.serving import _lua, _wrk
    from model_server.local import LocalServers, free_port
    from pipelines.config import Settings
    from tests.chart.conftest import rendered
    from tests.containers import engine as eng
    from tests.containers.podspec import containers, workflow_steps
    from tests.containers.tier import EXTERNAL_DB, SCENARIO, Tier, kserve_forwarder, smoke_users, start_base

    if shutil.which("wrk") is None:
        raise SystemExit("the containers benchmark needs wrk (Debian package `wrk`; `make bench` installs it)")
    WORK.mkdir(parents=True, exist_ok=True)
    try:
        engine = eng.engine(WORK)
    except eng.EngineMissing as err:
        raise SystemExit(f"the containers benchmark needs a Docker engine: {err}") from None
    chart = containers(rendered(SCENARIO), secrets=EXTERNAL_DB)
    built = time.monotonic()
    project, base = eng.project_image()
    infra = eng.infra_image(base)
    build_seconds = time.monotonic() - built
    size = int(eng.docker("image", "inspect", "--format", "{{.Size}}", project).stdout.strip())
    tier = Tier(project, infra, Path(tempfile.mkdtemp(prefix="streamflow-bench-containers-")))
    home = WORK / "home-containers"
    shutil.rmtree(home, ignore_errors=True)
    try:
        start_base(tier, chart)
        tier.start(chart["mlflow"], publish=[5000])
        _until_200(tier.url(tier.name("mlflow"), 5000, "/health"))
        for step in workflow_steps(rendered(SCENARIO), "streamflow-bootstrap", secrets=EXTERNAL_DB):
            tier.step(step)
        users = smoke_users(chart)
        predictor, transformer = chart["predictor:champion"], chart["transformer:champion"]
        cold: dict[str, list[float]] = {"predictor": [], "transformer": []}
        for i in range(CONTAINER_STARTS):
            for key, spec in (("predictor", predictor), ("transformer", transformer)):
                name = tier.name(spec.key)
                if i:
                    eng.docker("rm", "-f", name)
                    tier.names.remove(name)
                elif key == "predictor":
                    kserve_forwarder(tier, predictor, name)
                started = time.monotonic()
                tier.start(spec, publish=[8080, 8081], aliases=False)
                ready = spec.probes["readiness"].http_get.path
                _until_200(tier.url(name, 8080, ready), limit=300)
                cold[key].append(time.monotonic() - started)
            if i == 0:
                kserve_forwarder(tier, transformer, tier.name(transformer.key))
        # the same servers on the host, against the same Postgres and MLflow (published ports)
        pg = tier.ports[tier.name("external-pg")][5432]
        settings = Settings(
            home=home,
            db_url=f"postgresql://streamflow:ext%2Fpw-0001@127.0.0.1:{pg}/streamflow",
            mlflow_tracking_uri=tier.url(tier.name("mlflow"), 5000, ""),
            transformer_http_port=free_port(),
            transformer_grpc_port=free_port(),
            predictor_http_port=free_port(),
            predictor_grpc_port=free_port(),
        )
        template = '{"inputs":[{"name":"user_id","datatype":"BYTES","shape":[1],"data":["%s"]}]}'
        path = "/v2/models/streamflow-churn/infer"
        lua = _lua(WORK / "containers.lua", path, template, users)
        rows: dict[str, list[dict]] = {"containers": [], "host": []}
        with LocalServers(settings) as host:
            urls = {"containers": tier.url(tier.name(transformer.key), 8080, path), "host": host.transformer_url + path}
            for url in urls.values():
                _wrk(url, lua, 1, 2)  # warm-up
            for _ in range(ROUNDS):
                for where, url in urls.items():
                    c1 = _wrk(url, lua, 1, SECONDS)
                    c8 = _wrk(url, lua, 8, SECONDS)
                    row = {"c1_p50_ms": c1["p50_ms"], "c1_p99_ms": c1["p99_ms"], "c8_req_per_s": c8["req_per_s"]}
                    rows[where].append({**row, "failed": c1["failed"] + c8["failed"]})
                    print(f"containers {where}: {rows[where][-1]}", flush=True)
    finally:
        tier.remove()
        shutil.rmtree(home, ignore_errors=True)
        engine.stop()

    def median(where: str, key: str) -> float:
        return round(statistics.median(r[key] for r in rows[where]), 2)

    paths = {
        where: {
            "c1_p50_ms": median(where, "c1_p50_ms"),
            "c1_p99_ms": median(where, "c1_p99_ms"),
            "c8_req_per_s": median(where, "c8_req_per_s"),
            "failed_requests": sum(r["failed"] for r in rows[where]),
            "rounds": rows[where],
        }
        for where in rows
    }
    return {
        "name": "containers",
        "what": __doc__.split("\n\n", 1)[1].strip(),
        "image": project,
        "image_bytes": size,
        "built_from": base,
        "build_seconds": round(build_seconds, 1),
        "cold_start_to_ready_s": {k: round(statistics.median(v), 2) for k, v in cold.items()},
        "cold_starts": {k: [round(x, 2) for x in v] for k, v in cold.items()},
        "v2_path": paths,
        "ratio_containers_to_host": {
            "c1_p50": round(paths["containers"]["c1_p50_ms"] / paths["host"]["c1_p50_ms"], 2),
            "c8_req_per_s": round(paths["containers"]["c8_req_per_s"] / paths["host"]["c8_req_per_s"], 2),
        },
    }


def containers_table(result: dict) -> str:
    cold = result["cold_start_to_ready_s"]
    rows = [
        [where, f"{p['c1_p50_ms']} / {p['c1_p99_ms']}", f"{p['c8_req_per_s']:,}", p["failed_requests"]]
        for where, p in result["v2_path"].items()
    ]
    ratio = result["ratio_containers_to_host"]
    rows.append(["containers ÷ host", f"{ratio['c1_p50']}x", f"{ratio['c8_req_per_s']}x", ""])
    table = markdown(["v2 path (transformer → predictor → Postgres)", "c=1 p50 / p99 (ms)", "c=8 req/s", "failed"],
                     "lrrr", rows)  # fmt: skip
    return (
        f"Image `{result['image']}`: {result['image_bytes'] / 1e9:.2f} GB (built FROM `{result['built_from']}`); cold "
        f"start to ready: predictor {cold['predictor']} s, transformer {cold['transformer']} s (medians of "
        f"{len(result['cold_starts']['predictor'])}).\n\n" + table
    )


CHILDREN: dict = {}
BENCH = (bench_containers, containers_table, [7043])
