"""Serving: wrk on loopback against our v2 path (REST and gRPC hop), the course-style server and issue 6's plain
KServe floor servers, measured in turn for ``SERVING_ROUNDS`` rounds (medians). Every server listens on 127.0.0.1 on
a free port and is stopped by the benchmark.

``STREAMFLOW_BENCH_SERVING_ROUNDS`` and ``STREAMFLOW_BENCH_SERVING_SECONDS`` (default 3 and 8) shorten a smoke run;
``make bench`` uses the defaults.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

from bench.harness import ROOT, WORK, data, markdown, prepared, run_self


def _child_serving_setup(users: str, home: str) -> None:
    """Runs in a fresh process: a month loaded and materialized, the default model promoted to production and the
    course's RandomForest-300 registered beside it (for the reference server); prints ids and versions."""
    from pipelines.features import materialize
    from pipelines.train import promote, train

    settings, db, store, as_of = prepared(users, home)
    materialize(settings, db, as_of, store=store)
    champion = train(settings, db, as_of, store=store)
    promote(settings, db, store=store)
    course = train(settings, db, as_of, store=store, kind="rf")
    ids = db.query("SELECT user_id FROM labels WHERE as_of = ? ORDER BY user_id", (as_of,))["user_id"].tolist()
    db.close()
    print(json.dumps({"production": champion.model_version, "rf_version": course.model_version, "user_ids": ids}))


def _cpu_seconds(pids: list[int]) -> float:
    """User + system CPU time of processes (from /proc), in seconds."""
    ticks = os.sysconf("SC_CLK_TCK")
    total = 0
    for pid in pids:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        total += int(fields[11]) + int(fields[12])  # utime, stime (fields 14 and 15 of stat)
    return total / ticks


def _wrk(url: str, lua: Path, connections: int, seconds: int) -> dict:
    threads = min(2, connections)
    cmd = ["wrk", f"-t{threads}", f"-c{connections}", f"-d{seconds}s", "--latency", "-s", str(lua), url]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout

    def ms(label: str) -> float:
        value = re.search(rf"^\s+{label}\s+([\d.]+)(us|ms|s)\s*$", out, re.M)
        number, unit = float(value.group(1)), value.group(2)
        return round(number / 1000 if unit == "us" else number * 1000 if unit == "s" else number, 2)

    failed = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    errors = re.search(r"Socket errors: .*", out)
    return {
        "requests": int(re.search(r"(\d+) requests in", out).group(1)),
        "req_per_s": round(float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1)), 1),
        "p50_ms": ms("50%"),
        "p99_ms": ms("99%"),
        "failed": int(failed.group(1)) if failed else 0,
        "socket_errors": errors.group(0) if errors else "",
    }


def _lua(path: Path, url_path: str, template: str, ids: list[str]) -> Path:
    """A wrk script sending ``template % id`` for ids in turn (no cache can help: 500 different users)."""
    listed = ",".join(json.dumps(u) for u in ids)
    path.write_text(
        f"ids = {{{listed}}}\ni = 0\n"
        "request = function()\n  i = i % #ids + 1\n"
        f"  return wrk.format('POST', '{url_path}', {{['Content-Type'] = 'application/json'}}, "
        f"string.format('{template}', ids[i]))\nend\n"
    )
    return path


def _batch_ms(url: str, body: dict, reps: int = 20) -> float:
    import urllib.request

    import numpy as np

    data = json.dumps(body).encode()
    times = []
    for i in range(reps + 2):
        request = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
        t0 = time.perf_counter()
        with urllib.request.urlopen(request, timeout=120) as resp:
            assert resp.status == 200
            resp.read()
        if i >= 2:  # two warm-up requests
            times.append((time.perf_counter() - t0) * 1000)
    return round(float(np.percentile(times, 50)), 1)


# servers measured in turn, round after round: this machine's speed drifts by ±30 % in minutes
SERVING_ROUNDS = int(os.environ.get("STREAMFLOW_BENCH_SERVING_ROUNDS", "3"))
SERVING_SECONDS = int(os.environ.get("STREAMFLOW_BENCH_SERVING_SECONDS", "8"))
BESIDE_BATCH = 10_000  # users per batch sent back to back while c=1 is measured beside them


def _median_row(rows: list[dict]) -> dict:
    """Per figure, the median of the rounds (failed requests: the sum)."""
    import numpy as np

    out = {"server": rows[0]["server"]}
    for key in rows[0]:
        if key == "server":
            continue
        values = [r[key] for r in rows]
        out[key] = sum(values) if key == "failed_requests" else round(float(np.median(values)), 2)
    out["rounds"] = len(rows)
    return out


def _beside(url: str, lua: Path, batch_url: str, batch_body: dict) -> dict:
    """c=1 latency (wrk, ``SERVING_SECONDS``) while a thread sends ``batch_body`` to ``batch_url`` back to back, one
    request after the other. The loop is bounded by the wrk run: it sends no batch after wrk ends and is joined once
    its batch in flight has answered. Returns wrk's figures, the batches started during the run (each overlapped it)
    and the median time of one batch."""
    import urllib.request

    import numpy as np

    body = json.dumps(batch_body).encode()
    stop, started = threading.Event(), threading.Event()
    times: list[float] = []
    errors: list[BaseException] = []
    sent = 0

    def loop() -> None:
        nonlocal sent
        while not stop.is_set():
            request = urllib.request.Request(batch_url, data=body, headers={"Content-Type": "application/json"})
            sent += 1
            started.set()
            t0 = time.perf_counter()
            try:
                with urllib.request.urlopen(request, timeout=120) as resp:
                    resp.read()
            except Exception as err:  # noqa: BLE001 - reported after the wrk run, which it would falsify
                errors.append(err)
                return
            times.append((time.perf_counter() - t0) * 1000)

    thread = threading.Thread(target=loop, name="bench-batches-beside", daemon=True)
    thread.start()
    started.wait(10)
    try:
        c1 = _wrk(url, lua, 1, SERVING_SECONDS)
        batches = sent
    finally:
        stop.set()
        thread.join(150)
    if errors or thread.is_alive():
        raise SystemExit(f"batches beside c=1 on {batch_url}: {errors[0] if errors else 'no answer in 120 s'}")
    return {**c1, "batches": batches, "batch_p50_ms": round(float(np.percentile(times, 50)), 1)}


def _measure(
    key: str,
    name: str,
    url: str,
    template: str,
    ids: list[str],
    pids: list[int],
    batch: tuple[str, dict],
    beside: tuple[str, dict] | None = None,
) -> dict:
    from urllib.parse import urlsplit

    lua = _lua(WORK / f"serving-{key}.lua", urlsplit(url).path, template, ids[:500])
    _wrk(url, lua, 1, 2)  # warm-up
    c1 = _wrk(url, lua, 1, SERVING_SECONDS)
    cpu0 = _cpu_seconds(pids)
    c8 = _wrk(url, lua, 8, SERVING_SECONDS)
    cpu = _cpu_seconds(pids) - cpu0
    row = {
        "server": name,
        "c1_p50_ms": c1["p50_ms"],
        "c1_p99_ms": c1["p99_ms"],
        "c1_req_per_s": c1["req_per_s"],
        "c8_req_per_s": c8["req_per_s"],
        "c8_p50_ms": c8["p50_ms"],
        "c8_p99_ms": c8["p99_ms"],
        "cpu_ms_per_request": round(cpu * 1000 / max(c8["requests"], 1), 2),
        "batch_1000_p50_ms": _batch_ms(*batch),
        "failed_requests": c1["failed"] + c8["failed"],
    }
    if beside:
        alongside = _beside(url, lua, *beside)
        row.update(
            c1_beside_10k_batches_p50_ms=alongside["p50_ms"],
            c1_beside_10k_batches_p99_ms=alongside["p99_ms"],
            beside_10k_batches_run=alongside["batches"],
            beside_10k_batch_p50_ms=alongside["batch_p50_ms"],
        )
        row["failed_requests"] += alongside["failed"]
    print(f"serving {name}: {row}", flush=True)
    return row


@contextlib.contextmanager
def _server(cmd: list[str], env: dict, log: str, ready_url: str, seconds: float = 180):
    """A server process started for the benchmark, once ``ready_url`` answers; stopped on exit. SystemExit naming
    its log (``WORK/<log>.log``) if it exits or is not up after ``seconds``."""
    from model_server.local import wait_answering

    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=(WORK / f"{log}.log").open("w"))
    try:
        problem = wait_answering(ready_url, proc, seconds)
        if problem:
            raise SystemExit(f"{log} {problem}; see {WORK / (log + '.log')}")
        yield proc
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def bench_serving(sizes: list[int]) -> dict:
    from model_server.local import LocalServers, free_port, settings_env
    from pipelines.config import Settings

    if shutil.which("wrk") is None:
        raise SystemExit("the serving benchmark needs wrk (Debian package `wrk`; `make bench` installs it)")
    users = sizes[0]
    data(users)
    home = WORK / "home-serving"
    shutil.rmtree(home, ignore_errors=True)
    setup = run_self("_child-serving-setup", str(users), str(home))[0]
    ids = setup["user_ids"]
    ports = {name: free_port() for name in ("transformer_http_port", "transformer_grpc_port", "predictor_http_port",
                                            "predictor_grpc_port")}  # fmt: skip
    settings = Settings(home=home, db_url=None, **ports)
    env = {**os.environ, **settings_env(settings)}
    v2 = '{"inputs":[{"name":"user_id","datatype":"BYTES","shape":[1],"data":["%s"]}]}'
    batch = {"inputs": [{"name": "user_id", "datatype": "BYTES", "shape": [1000], "data": ids[:1000]}]}
    many = (ids * (BESIDE_BATCH // len(ids) + 1))[:BESIDE_BATCH]  # 7,043 users: 2,957 of them asked twice
    batch_10k = {"inputs": [{"name": "user_id", "datatype": "BYTES", "shape": [BESIDE_BATCH], "data": many}]}
    path = f"/v2/models/{settings.served_model_name}/infer"
    course_port, grpc_port = free_port(), free_port()
    course_base = f"http://127.0.0.1:{course_port}"
    grpc_base = f"http://{settings.serve_host}:{grpc_port}"
    # the same predictor behind a second transformer forwarding over gRPC (--predictor_protocol grpc-v2)
    grpc_cmd = [sys.executable, "-m", "model_server.transformer", "--host", settings.serve_host, "--http_port",
                str(grpc_port), "--grpc_port", str(free_port()), "--predictor_protocol", "grpc-v2",
                "--predictor_host", f"{settings.serve_host}:{settings.predictor_grpc_port}"]  # fmt: skip
    course_cmd = [sys.executable, str(ROOT / "bench" / "course_server.py"), "--port", str(course_port),
                  "--model-uri", f"models:/streamflow_churn/{setup['rf_version']}"]  # fmt: skip
    # issue 6's calibration re-measured in the same rounds: plain KServe, one hop and two hops over gRPC, no Feast
    floor = [sys.executable, str(ROOT / "bench" / "kserve_floor.py"), "--model_name", "floor"]
    floor_ports = [free_port() for _ in range(4)]
    floor_base, floor2_base = (f"http://127.0.0.1:{port}" for port in floor_ports[::2])
    floor_cmd = [*floor, "--role", "predictor", "--http_port", str(floor_ports[0]), "--grpc_port", str(floor_ports[1])]
    floor2_cmd = [*floor, "--role", "transformer", "--http_port", str(floor_ports[2]), "--grpc_port",
                  str(floor_ports[3]), "--predictor_host", f"127.0.0.1:{floor_ports[1]}", "--predictor_protocol",
                  "grpc-v2"]  # fmt: skip
    row = [round(0.1 * (i - 7), 1) for i in range(14)]
    floor_v2 = json.dumps({"inputs": [{"name": "x", "datatype": "FP64", "shape": [1, 14], "data": row}]})
    floor_batch = {"inputs": [{"name": "x", "datatype": "FP64", "shape": [1000, 14], "data": row * 1000}]}
    floor_10k = {"inputs": [{"name": "x", "datatype": "FP64", "shape": [BESIDE_BATCH, 14], "data": row * BESIDE_BATCH}]}
    floor_path = "/v2/models/floor/infer"
    with (
        LocalServers(settings) as servers,  # the default: REST hop
        _server(grpc_cmd, env, "transformer-grpc-hop", f"{grpc_base}/v2/health/ready") as grpc_hop,
        _server(course_cmd, env, "course_server", f"{course_base}/health") as course,
        _server(floor_cmd, env, "kserve-floor-predictor", f"{floor_base}/v2/health/ready") as floor1,
        _server(floor2_cmd, env, "kserve-floor-transformer", f"{floor2_base}/v2/health/ready") as floor2,
    ):
        predictor = servers.procs["predictor"].pid
        rest_url, grpc_url = servers.transformer_url + path, grpc_base + path
        course_batch = (f"{course_base}/predict_batch", {"user_ids": ids[:1000]})
        targets = [
            ("streamflow", "streamflow v2: transformer + Feast + predictor (REST hop, default)", rest_url, v2,
             [predictor, servers.procs["transformer"].pid], (rest_url, batch), (rest_url, batch_10k)),
            ("streamflow-grpc", "streamflow v2: transformer + Feast + predictor (gRPC hop)", grpc_url, v2,
             [predictor, grpc_hop.pid], (grpc_url, batch)),
            ("course", "course-style: FastAPI + Feast SDK per request + pyfunc RF-300", f"{course_base}/predict",
             '{"user_id":"%s"}', [course.pid], course_batch),
            ("floor-1", "calibration: plain KServe, one server, 1-row HGB fed numpy (no Feast)",
             floor_base + floor_path, floor_v2, [floor1.pid], (floor_base + floor_path, floor_batch),
             (floor_base + floor_path, floor_10k)),
            ("floor-2", "calibration: plain KServe transformer → predictor over gRPC (no Feast)",
             floor2_base + floor_path, floor_v2, [floor1.pid, floor2.pid], (floor2_base + floor_path, floor_batch)),
        ]  # fmt: skip
        measured: dict[str, list[dict]] = {key: [] for key, *_ in targets}
        for _ in range(SERVING_ROUNDS):
            for key, name, url, template, pids, *requests in targets:
                measured[key].append(_measure(key, name, url, template, ids, pids, *requests))
    rows = [_median_row(measured[key]) for key, *_ in targets]
    shutil.rmtree(home, ignore_errors=True)
    return {
        "name": "serving",
        "users": users,
        "what": f"wrk on loopback against each server in turn, {SERVING_ROUNDS} rounds (medians), 500 different users "
        f"in rotation: c=1 for {SERVING_SECONDS} s (latency), c=8 for {SERVING_SECONDS} s (throughput; server CPU "
        "from /proc over that run / requests), then 20 sequential 1,000-user batches (REST JSON). Ours: production "
        "hgb, the transformer forwarding over REST (default) or over gRPC to the same predictor; reference: the "
        "course's RF-300. Calibration: the plain KServe servers issue 6 set its targets from (bench/kserve_floor.py), "
        "fed one fixed 14-feature row (batch: 1,000 rows), measured in the same rounds. Beside batches (ours, REST "
        f"hop, and floor-1): c=1 again for {SERVING_SECONDS} s while one client in the benchmark sends "
        f"{BESIDE_BATCH:,}-user v2 batches to the same server back to back (ours: the {len(ids):,} materialized users "
        f"cycled, so {max(BESIDE_BATCH - len(ids), 0):,} ids of a batch are asked twice; floor-1: {BESIDE_BATCH:,} "
        "rows), "
        "stopping with the wrk run; c1_beside_10k_batches_* are wrk's figures, beside_10k_batches_run the batches "
        "started during the run, beside_10k_batch_p50_ms the median time of one.",
        "calibration_in_issue": {
            "one_hop": {"c1_p50_ms": 1.3, "c8_req_per_s": 765},
            "two_hops_grpc": {"c1_p50_ms": 2.5, "c8_req_per_s": 806, "cpu_ms_per_request": 2.3},
        },
        "targets": {
            "c1_p50_ms": 3,
            "c1_p99_ms": 10,
            "c8_req_per_s": 600,
            "cpu_ms_per_request": 3,
            "batch_1000_p50_ms": 30,
        },  # fmt: skip
        "results": rows,
    }


def _ratios(row: dict, floor: dict | None) -> str:
    """c=1 p50 and p99 beside batches, as multiples of the floor-1 server's in the same run."""
    if floor is None:
        return "–"
    keys = ("c1_beside_10k_batches_p50_ms", "c1_beside_10k_batches_p99_ms")
    return " / ".join(f"{row[k] / floor[k]:.1f}x" for k in keys)


def serving_table(result: dict) -> str:
    header = ["server", "c=1 p50 / p99 (ms)", "c=8 req/s", "server CPU per request (ms)", "1,000 users (ms)"]
    t = result["targets"]
    rows = [
        [r["server"], f"{r['c1_p50_ms']} / {r['c1_p99_ms']}", f"{r['c8_req_per_s']:,}", r["cpu_ms_per_request"],
         r["batch_1000_p50_ms"]]
        for r in result["results"]
    ]  # fmt: skip
    rows.append(["*target (issue 6)*", f"≤ {t['c1_p50_ms']} / ≤ {t['c1_p99_ms']}", f"≥ {t['c8_req_per_s']}",
                 f"≤ {t['cpu_ms_per_request']}", f"≤ {t['batch_1000_p50_ms']}"])  # fmt: skip
    for name, c in (result.get("calibration_in_issue") or {}).items():
        rows.append([f"*issue 6's calibration, {name.replace('_', ' ')}*", f"{c['c1_p50_ms']} / –",
                     f"{c['c8_req_per_s']}", c.get("cpu_ms_per_request", "–"), "–"])  # fmt: skip
    table = markdown(header, "lrrrr", rows)
    beside = [r for r in result["results"] if "c1_beside_10k_batches_p50_ms" in r]
    if not beside:  # results measured before the beside-batches run
        return table
    floor = next((r for r in beside if r["server"].startswith("calibration: plain KServe, one server")), None)
    header = ["server", "c=1 p50 / p99 alone (ms)", "c=1 p50 / p99 beside 10,000-user batches (ms)",
              "batches during the run", "one batch p50 (ms)", "c=1 p50 / p99 beside batches ÷ floor-1's"]  # fmt: skip
    rows = [
        [r["server"], f"{r['c1_p50_ms']} / {r['c1_p99_ms']}",
         f"{r['c1_beside_10k_batches_p50_ms']} / {r['c1_beside_10k_batches_p99_ms']}",
         f"{r['beside_10k_batches_run']:g}", f"{r['beside_10k_batch_p50_ms']:,}", _ratios(r, floor)]
        for r in beside
    ]  # fmt: skip
    return table + "\n\n" + markdown(header, "lrrrrr", rows)


CHILDREN = {"_child-serving-setup": _child_serving_setup}
BENCH = (bench_serving, serving_table, [7043])
