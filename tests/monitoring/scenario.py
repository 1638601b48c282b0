"""The monitoring scenario: the loop on one machine under a real Prometheus, so every dashboard panel and every rule
has real data to be evaluated on (tests/monitoring/test_monitoring.py) or drawn from (tests/monitoring/pictures.py).

`streamflow monitor`'s Prometheus and Pushgateway (pipelines.monitor.LocalMonitor, scraping every second here), the
demo's three generated months run by the real `streamflow monthly` command with STREAMFLOW_PUSHGATEWAY_URL set
(first model, a calm month, a drifted month that retrains and promotes), both servers started after the first month
(registry polled every second, so the promotion swaps the served model while traffic flows), and bounded traffic
between the months: REST and gRPC, batches of known users, unknown users (422 / INVALID_ARGUMENT: missing
features), a malformed body (400). Everything listens on free loopback ports and is stopped at the end.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from model_server.local import LocalServers, free_port, settings_env
from pipelines.config import Settings
from pipelines.demo import CONCEPT_SHIFT, DRIFT
from pipelines.generate import generate, parse_drift
from pipelines.monitor import LocalMonitor

STREAMFLOW = str(Path(sys.executable).parent / "streamflow")
MODEL = "streamflow-churn"


@dataclass
class Scenario:
    settings: Settings
    monitor: LocalMonitor
    months: list[dict[str, Any]]
    requests: dict[str, int]  # what the traffic sent, by kind

    @property
    def prometheus(self) -> str:
        return self.monitor.prometheus_url

    def query(self, expr: str, at: float | None = None) -> dict[str, Any]:
        """One instant query through Prometheus's HTTP API: its ``data`` (raises with Prometheus's error)."""
        params = {"query": expr} | ({} if at is None else {"time": f"{at:.3f}"})
        return api(self.prometheus, "query", params)

    def query_range(self, expr: str, start: float, end: float, step: float) -> dict[str, Any]:
        return api(self.prometheus, "query_range", {"query": expr, "start": start, "end": end, "step": step})

    def metric_names(self) -> set[str]:
        return set(api(self.prometheus, "label/__name__/values", {}))


class PromQLError(Exception):
    pass


def api(base: str, path: str, params: dict[str, Any]) -> Any:
    url = f"{base}/api/v1/{path}?{urllib.parse.urlencode(params)}"
    try:
        with urllib.request.urlopen(url, timeout=30) as resp:
            body = json.loads(resp.read())
    except urllib.error.HTTPError as err:  # 400 / 422: a query Prometheus refused, with its reason
        body = json.loads(err.read() or b"{}")
        raise PromQLError(f"{body.get('errorType')}: {body.get('error')}") from None
    return body["data"]


def monthly(settings: Settings, month: Path) -> dict[str, Any]:
    """`streamflow monthly MONTH --json`, as the monthly workflow runs it."""
    env = {**os.environ, **settings_env(settings)}
    proc = subprocess.run([STREAMFLOW, "monthly", str(month), "--json"], env=env, capture_output=True, text=True,
                          timeout=900)  # fmt: skip
    if proc.returncode != 0:
        raise AssertionError(f"streamflow monthly {month.name} exited {proc.returncode}: {proc.stdout}{proc.stderr}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def rest(servers: LocalServers, user_ids: list[str], raw: bytes | None = None) -> int:
    body = (
        raw
        if raw is not None
        else json.dumps(
            {"inputs": [{"name": "user_id", "datatype": "BYTES", "shape": [len(user_ids)], "data": user_ids}]}
        ).encode()
    )
    request = urllib.request.Request(f"{servers.transformer_url}/v2/models/{MODEL}/infer", data=body,
                                     headers={"Content-Type": "application/json"}, method="POST")  # fmt: skip
    try:
        with urllib.request.urlopen(request, timeout=60) as resp:
            return resp.status
    except urllib.error.HTTPError as err:
        return err.code


def grpc(settings: Settings, user_ids: list[str]) -> str:
    """One v2 gRPC request with KServe's own stubs (tritonclient's register the same protobuf messages: the two cannot
    share a process, and the suite imports KServe's)."""
    import grpc as rpc
    from kserve.protocol.grpc import grpc_predict_v2_pb2 as pb
    from kserve.protocol.grpc import grpc_predict_v2_pb2_grpc as stubs

    tensor = pb.ModelInferRequest.InferInputTensor(
        name="user_id", datatype="BYTES", shape=[len(user_ids)],
        contents=pb.InferTensorContents(bytes_contents=[u.encode() for u in user_ids]),
    )  # fmt: skip
    with rpc.insecure_channel(f"127.0.0.1:{settings.transformer_grpc_port}") as channel:
        try:
            stubs.GRPCInferenceServiceStub(channel).ModelInfer(
                pb.ModelInferRequest(model_name=MODEL, inputs=[tensor]), timeout=60
            )
            return "OK"
        except rpc.RpcError as err:
            return str(err.code())


def traffic(settings: Settings, servers: LocalServers, users: list[str], rounds: int, sent: dict[str, int]) -> None:
    """Bounded traffic: per round, REST batches of 1, 8 and 64 known users, one gRPC batch, an unknown user on
    each protocol and one malformed body."""
    rng = np.random.default_rng(len(sent) + rounds)
    calls: list[tuple[str, Callable[[], object]]] = []
    for _ in range(rounds):
        for size in (1, 8, 64):
            ids = [str(u) for u in rng.choice(users, size=size, replace=False)]
            calls.append(("rest", lambda ids=ids: rest(servers, ids)))
        ids = [str(u) for u in rng.choice(users, size=16, replace=False)]
        calls.append(("grpc", lambda ids=ids: grpc(settings, ids)))
        calls.append(("rest unknown", lambda: rest(servers, ["0000-NOBODY"])))
        calls.append(("grpc unknown", lambda: grpc(settings, ["0000-NOBODY"])))
        calls.append(("rest malformed", lambda: rest(servers, [], raw=b"{not json")))
    for kind, call in calls:
        outcome = call()
        sent[f"{kind} -> {outcome}"] = sent.get(f"{kind} -> {outcome}", 0) + 1


def wait_for(predicate: Callable[[], bool], what: str, timeout: float = 90.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"waited {timeout:.0f} s for {what}")
        time.sleep(0.5)


@contextmanager
def scenario(home: Path, *, users: int = 1500, seed: int = 11, rounds: int = 6) -> Iterator[Scenario]:
    """Run the scenario under ``home``; yields while Prometheus still runs (stopped on exit)."""
    ports = {
        k: free_port()
        for k in ("transformer_http_port", "transformer_grpc_port", "predictor_http_port", "predictor_grpc_port",
                  "monitor_prometheus_port", "monitor_pushgateway_port")
    }  # fmt: skip
    settings = Settings(home=home, db_url=None, model_poll_seconds=1.0, **ports)
    generated = generate(home / "data", users=users, months=3, seed=seed, drift=[parse_drift(d) for d in DRIFT],
                         drift_start=2, concept_shift=CONCEPT_SHIFT)  # fmt: skip
    first, calm, drifted = (m.folder for m in generated.months)
    with LocalMonitor(settings, interval="1s") as watch:
        settings = settings.model_copy(update={"pushgateway_url": watch.pushgateway_url})
        months = [monthly(settings, first)]
        sent: dict[str, int] = {}
        with LocalServers(settings) as servers:  # users of the newest month: older ones may have left (422)
            traffic(settings, servers, _users(first), rounds, sent)
            months.append(monthly(settings, calm))
            traffic(settings, servers, _users(calm), rounds, sent)
            months.append(monthly(settings, drifted))
            version = months[-1]["production_version"]
            run = Scenario(settings, watch, months, sent)
            served = f'streamflow_model_info{{server="predictor",version="{version}"}}'
            wait_for(lambda: bool(run.query(served)["result"]), f"Prometheus to see v{version} served")
            traffic(settings, servers, _users(drifted), rounds, sent)
            time.sleep(3)  # three more scrapes: every counter has samples on both sides of the last requests
            yield run


def _users(month: Path) -> list[str]:
    import pandas as pd

    return pd.read_csv(month / "users.csv", usecols=["user_id"])["user_id"].astype(str).tolist()
