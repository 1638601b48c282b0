"""The two KServe servers as real processes on loopback, answered over real HTTP and gRPC — no mocks, no TestClient.

One stack per module: a real `mlflow server` (SQLite backend) holding a trained and promoted model, two generated
months ingested/snapshotted/materialized on the embedded backend, then ``python -m model_server.predictor`` and
``python -m model_server.transformer`` started exactly as in a pod (only the address is loopback). The last test
stops the MLflow server on purpose: keep it last.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlencode, urlsplit

import grpc
import numpy as np
import pandas as pd
import pytest

from pipelines.config import Settings
from pipelines.registry import MODEL_NAME
from tests.conftest import free_port, start_mlflow_server, stop_group, wait_http
from tests.integration.test_ingest import FEB, JAN

pytestmark = [pytest.mark.integration, pytest.mark.slow]

MODEL = "streamflow-churn"
MAX_BATCH = 1500
POLL_SECONDS = 1.0


@dataclass
class Stack:
    settings: Settings
    mlflow_url: str
    mlflow_proc: subprocess.Popen
    transformer: str  # http://127.0.0.1:port
    transformer_grpc: str  # 127.0.0.1:port
    predictor: str
    predictor_grpc: str
    feb: pd.DataFrame  # Feb features (what the online store serves), indexed by user_id
    logs: Path
    env: dict  # the servers' environment (a test can start another server like them)


def _server(module: str, env: dict, log: Path, *args: str) -> subprocess.Popen:
    cmd = [sys.executable, "-m", module, "--host", "127.0.0.1", *args]
    return subprocess.Popen(cmd, env=env, stdout=log.open("w"), stderr=subprocess.STDOUT, start_new_session=True)


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory):
    with running_stack(tmp_path_factory.mktemp("serving")) as started:
        yield started


@contextlib.contextmanager
def running_stack(tmp: Path) -> Iterator[Stack]:
    """The module's stack, built under ``tmp`` (another test module starts its own the same way)."""
    from pipelines.db import connect
    from pipelines.features import apply_repo, build_dataset, materialize
    from pipelines.generate import generate
    from pipelines.ingest import ingest_month
    from pipelines.online import open_store
    from pipelines.snapshot import take_snapshot
    from pipelines.train import promote, train

    generate(tmp / "months", users=1200, months=2, seed=11)
    url, mlflow_proc = start_mlflow_server(f"sqlite:///{tmp / 'mlflow.db'}", tmp / "artifacts")
    settings = Settings(home=tmp / "home", db_url=None, mlflow_tracking_uri=url)
    db = connect(settings)
    try:
        for index, as_of in enumerate((JAN, FEB)):
            ingest_month(db, settings, tmp / "months" / f"month_{index:03d}", as_of)
            take_snapshot(db, as_of)
        apply_repo(settings)
        store = open_store(settings)
        materialize(settings, db, FEB, store=store)
        train(settings, db, JAN, store=store)
        assert promote(settings, db, store=store).decision == "promoted"
        feb = pd.read_parquet(build_dataset(settings, db, FEB, store=store).path).set_index("user_id")
    finally:
        db.close()

    env = {
        **os.environ,
        "STREAMFLOW_HOME": str(settings.home),
        "STREAMFLOW_DB_URL": "",
        "STREAMFLOW_MLFLOW_TRACKING_URI": url,
        "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false",
        "STREAMFLOW_LOG_LEVEL": "WARNING",
    }
    ports = {k: free_port() for k in ("ph", "pg", "th", "tg")}
    logs = tmp / "logs"
    logs.mkdir()
    predictor = _server(
        "model_server.predictor", env, logs / "predictor.log",
        "--http_port", str(ports["ph"]), "--grpc_port", str(ports["pg"]), "--poll_seconds", str(POLL_SECONDS),
    )  # fmt: skip
    transformer = _server(
        "model_server.transformer", env, logs / "transformer.log",
        "--http_port", str(ports["th"]), "--grpc_port", str(ports["tg"]),
        "--predictor_host", f"127.0.0.1:{ports['ph']}", "--max_batch_size", str(MAX_BATCH),
    )  # fmt: skip
    try:
        wait_http(f"http://127.0.0.1:{ports['ph']}/v2/health/ready", predictor, what="predictor")
        wait_http(f"http://127.0.0.1:{ports['th']}/v2/health/ready", transformer, what="transformer")
        yield Stack(
            settings, url, mlflow_proc,
            f"http://127.0.0.1:{ports['th']}", f"127.0.0.1:{ports['tg']}",
            f"http://127.0.0.1:{ports['ph']}", f"127.0.0.1:{ports['pg']}",
            feb, logs, env,
        )  # fmt: skip
    finally:
        for proc in (transformer, predictor):
            stop_group(proc)
        stop_group(mlflow_proc)


# ------------------------------------------------------------------------------------------------ clients


def post(url: str, body: bytes | str | dict, headers: dict | None = None) -> tuple[int, dict]:
    data = body if isinstance(body, bytes) else (body if isinstance(body, str) else json.dumps(body)).encode()
    request = urllib.request.Request(url, data=data, headers=headers or {}, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=60) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read() or b"{}")


def get(url: str) -> tuple[int, dict | str]:
    try:
        with urllib.request.urlopen(url, timeout=30) as resp:
            raw = resp.read().decode()
            return resp.status, json.loads(raw) if raw.startswith(("{", "[")) else raw
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read() or b"{}")


def v2(ids: list, datatype: str = "BYTES", shape: list | None = None) -> dict:
    return {"inputs": [{"name": "user_id", "datatype": datatype, "shape": shape or [len(ids)], "data": ids}]}


def infer(stack: Stack, ids: list, **kw) -> tuple[int, dict]:
    return post(f"{stack.transformer}/v2/models/{MODEL}/infer", v2(ids, **kw), {"Content-Type": "application/json"})


def outputs(body: dict) -> dict[str, list]:
    return {o["name"]: o["data"] for o in body["outputs"]}


def grpc_infer(address: str, ids: list[str]):
    from kserve.protocol.grpc import grpc_predict_v2_pb2 as pb
    from kserve.protocol.grpc import grpc_predict_v2_pb2_grpc as pb_grpc
    from kserve.protocol.infer_type import InferResponse

    tensor = pb.ModelInferRequest.InferInputTensor(
        name="user_id", datatype="BYTES", shape=[len(ids)],
        contents=pb.InferTensorContents(bytes_contents=[u.encode() for u in ids]),
    )  # fmt: skip
    with grpc.insecure_channel(address) as channel:
        reply = pb_grpc.GRPCInferenceServiceStub(channel).ModelInfer(
            pb.ModelInferRequest(model_name=MODEL, inputs=[tensor]), timeout=60
        )
    response = InferResponse.from_grpc(reply)
    return response, {o.name: o.as_numpy() for o in response.outputs}


def production_version(stack: Stack) -> str:
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=stack.mlflow_url, registry_uri=stack.mlflow_url)
    return str(client.get_model_version_by_alias(MODEL_NAME, "production").version)


def expected(stack: Stack, ids: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """The registry model's own probabilities and labels on the offline (point-in-time) features of ``ids``."""
    import mlflow
    from mlflow import MlflowClient

    mlflow.set_tracking_uri(stack.mlflow_url)
    mlflow.set_registry_uri(stack.mlflow_url)
    client = MlflowClient(tracking_uri=stack.mlflow_url, registry_uri=stack.mlflow_url)
    version = client.get_model_version_by_alias(MODEL_NAME, "production")
    model = mlflow.sklearn.load_model(f"models:/{MODEL_NAME}/{version.version}")
    features = [c for c in stack.feb.columns if c != "churn_label"]
    proba = model.predict_proba(stack.feb.loc[ids, features])[:, 1]
    return proba, (proba >= float(version.tags["threshold"])).astype(int)


def feature_inputs(stack: Stack) -> list[dict]:
    """The predictor's input tensors for the first user: one per feature, NaN for a contract NULL."""
    row = stack.feb.iloc[0]
    features = [c for c in stack.feb.columns if c != "churn_label"]

    def tensor(name, value):
        if name == "net_service":
            return {"name": name, "datatype": "BYTES", "shape": [1], "data": [value]}
        return {"name": name, "datatype": "FP64", "shape": [1], "data": [float(value)]}

    good = [tensor(f, row[f]) for f in features if not pd.isna(row[f])]
    return good + [{"name": f, "datatype": "FP64", "shape": [1], "data": ["NaN"]} for f in features if pd.isna(row[f])]


def copy_production(stack: Stack, name: str):
    """The stack's production version registered again as a new version of ``name`` (same artifacts and tags, no
    alias): a model appears in the registry without training one."""
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=stack.mlflow_url, registry_uri=stack.mlflow_url)
    source = client.get_model_version_by_alias(MODEL_NAME, "production")
    if name != MODEL_NAME:
        client.create_registered_model(name)
    logged = source.model_id or source.source.removeprefix("models:/")  # the version's logged model (MLflow 3)
    return client.create_model_version(name, source.source, run_id=source.run_id, tags=source.tags, model_id=logged)


def streamflow(env: dict, *args: str) -> subprocess.CompletedProcess:
    """The `streamflow` CLI as a process, with the servers' environment."""
    command = [str(Path(sys.executable).parent / "streamflow"), *args]
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=120)


def wait_log(path: Path, text: str, proc: subprocess.Popen, timeout: float = 60) -> str:
    """Wait until the server's log holds ``text``; the log."""
    deadline = time.monotonic() + timeout
    while True:
        log = path.read_text() if path.exists() else ""
        if text in log:
            return log
        assert proc.poll() is None, f"the server exited ({proc.returncode}): {log[-3000:]}"
        assert time.monotonic() < deadline, f"{text!r} not logged within {timeout:.0f} s: {log[-3000:]}"
        time.sleep(0.1)


def metric(base_url: str, name: str, **labels: str) -> float | None:
    """One sample of the server's /metrics (None when absent)."""
    from prometheus_client.parser import text_string_to_metric_families

    _, text = get(f"{base_url}/metrics")
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                return sample.value
    return None


# ------------------------------------------------------------------------------------------------ v2 over REST


def test_single_user_equals_the_registry_models_own_prediction(stack: Stack) -> None:
    user = stack.feb.index[0]
    status, body = infer(stack, [user])
    assert status == 200, body
    out = outputs(body)
    proba, label = expected(stack, [user])
    assert out["user_id"] == [user]
    assert out["churn_probability"] == pytest.approx(proba.tolist(), abs=1e-6)
    assert out["churn_label"] == label.tolist()
    version = production_version(stack)
    assert body["model_version"] == version and body["parameters"]["model_version"] == version


def test_batch_of_1000_keeps_order_and_matches_the_model(stack: Stack) -> None:
    ids = list(stack.feb.sample(n=1000, random_state=3).index)
    status, body = infer(stack, ids)
    assert status == 200, body
    out = outputs(body)
    proba, label = expected(stack, ids)
    assert out["user_id"] == ids
    np.testing.assert_allclose(out["churn_probability"], proba, atol=1e-6)
    assert out["churn_label"] == label.tolist()
    assert 0 < sum(out["churn_label"]) < 1000  # both classes: the threshold is applied, not a constant


def test_contract_null_is_a_value_not_a_missing_feature(stack: Stack) -> None:
    no_internet = stack.feb.index[stack.feb["net_service"] == "No"][0]
    assert pd.isna(stack.feb.loc[no_internet, "plan_stream_tv"])
    status, body = infer(stack, [no_internet])
    assert status == 200, body
    assert outputs(body)["churn_probability"] == pytest.approx(expected(stack, [no_internet])[0].tolist(), abs=1e-6)


def test_duplicate_ids_are_answered_at_each_position(stack: Stack) -> None:
    a, b = stack.feb.index[:2]
    status, body = infer(stack, [a, b, a])
    assert status == 200, body
    out = outputs(body)
    assert out["user_id"] == [a, b, a]
    assert out["churn_probability"][0] == out["churn_probability"][2]


def test_unknown_user_is_422_listing_every_missing_feature(stack: Stack) -> None:
    status, body = infer(stack, ["0000-NOONE"])
    assert status == 422
    assert set(body["missing_features"]) == {"0000-NOONE"}
    assert len(body["missing_features"]["0000-NOONE"]) == 14 and "outputs" not in body


def test_mixed_batch_is_refused_whole_naming_only_the_unknown(stack: Stack) -> None:
    known = list(stack.feb.index[:3])
    status, body = infer(stack, [known[0], "0000-NOONE", known[1], "9999-GHOST", known[2]])
    assert status == 422
    assert set(body["missing_features"]) == {"0000-NOONE", "9999-GHOST"}


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ("{not json", "malformed request"),
        (v2([1, 2], datatype="INT64"), "datatype INT64; expected BYTES"),
        (v2(["a", "b", "c"], shape=[2]), "shape"),
        (v2([], shape=[0]), "empty batch"),
        (v2([""]), "is not a user id"),
        ({"inputs": [{"name": "uid", "datatype": "BYTES", "shape": [1], "data": ["x"]}]}, "named 'user_id'"),
        ({"instances": ["x"]}, "malformed request at inputs: Field required"),  # a v1 body on the v2 route
    ],
    ids=["malformed-json", "wrong-datatype", "wrong-shape", "empty", "blank-id", "wrong-name", "not-v2"],
)
def test_bad_requests_are_400_with_a_clear_message(stack: Stack, body, message: str) -> None:
    status, answer = post(f"{stack.transformer}/v2/models/{MODEL}/infer", body, {"Content-Type": "application/json"})
    assert status == 400, answer
    assert message in answer["error"]


def test_a_refused_request_is_not_logged_as_a_server_error(stack: Stack) -> None:
    """KServe's 400 handler logs a traceback at ERROR for every refused request: a client's mistake must not fill
    the servers' logs with tracebacks (nor page anyone watching for errors)."""
    sent = {
        "transformer": v2([1], datatype="INT64"),
        "predictor": {"inputs": [{"name": "x", "datatype": "FP64", "shape": [1], "data": [1.0]}]},
    }
    for name, body in sent.items():
        log = stack.logs / f"{name}.log"
        before = log.stat().st_size
        base = stack.transformer if name == "transformer" else stack.predictor
        for _ in range(3):  # over the FastAPI route too (binary header) and the lean JSON path
            data = json.dumps(body).encode()
            assert post(f"{base}/v2/models/{MODEL}/infer", data, {"Content-Type": "application/json"})[0] == 400
            header = {"Content-Type": "application/json", "Inference-Header-Content-Length": str(len(data))}
            assert post(f"{base}/v2/models/{MODEL}/infer", data, header)[0] == 400
        time.sleep(0.2)
        with log.open() as handle:
            handle.seek(before)
            added = handle.read()
        assert "Traceback" not in added and "ERROR" not in added, f"{name} logged:\n{added[:3000]}"


def test_oversized_batches_are_413(stack: Stack) -> None:
    ids = [stack.feb.index[0]] * (MAX_BATCH + 1)
    status, body = infer(stack, ids)
    assert status == 413 and f"at most {MAX_BATCH}" in body["error"]
    huge = v2(["x" * 200_000])  # one id, but a body over the byte limit: refused before it is parsed
    status, body = post(f"{stack.transformer}/v2/models/{MODEL}/infer", huge, {"Content-Type": "application/json"})
    assert status == 413 and "bytes limit" in body["error"]


def test_the_lean_json_path_answers_as_kserves_fastapi_route(stack: Stack) -> None:
    """JSON ``/infer`` requests skip FastAPI (model_server.server.fast_infer); a request carrying KServe's binary
    header still takes the FastAPI route. Both must give the same answers and the same errors."""
    known = list(stack.feb.index[:3])
    for base in (stack.transformer, stack.predictor):
        url = f"{base}/v2/models/{MODEL}/infer"
        bodies = [v2(known), v2(known + ["0000-NOONE"]), v2([1], datatype="INT64")] if base == stack.transformer else []
        bodies.append({"inputs": [{"name": "nothing", "datatype": "FP64", "shape": [1], "data": [1.0]}]})
        for body in bodies:
            data = json.dumps(body).encode()
            lean = post(url, data, {"Content-Type": "application/json"})
            route = post(
                url, data, {"Content-Type": "application/json", "Inference-Header-Content-Length": str(len(data))}
            )
            assert lean[0] == route[0], (body, lean, route)
            if lean[0] == 200:
                assert lean[1]["outputs"] == route[1]["outputs"]
                assert lean[1]["model_version"] == route[1]["model_version"]
            else:
                assert lean[1] == route[1]
    # a model this server does not serve: KServe's own 404, from the handler the route would use
    status, body = post(f"{stack.transformer}/v2/models/nobody/infer", v2(known), {"Content-Type": "application/json"})
    assert status == 404 and "nobody" in body["error"]


def test_curl_style_request_without_content_type_works(stack: Stack) -> None:
    user = stack.feb.index[0]
    status, body = post(
        f"{stack.transformer}/v2/models/{MODEL}/infer",
        v2([user]),
        {"Content-Type": "application/x-www-form-urlencoded"},  # what `curl -d` sends
    )
    assert status == 200, body


def test_v2_metadata_and_health(stack: Stack) -> None:
    for base in (stack.transformer, stack.predictor):
        assert get(f"{base}/v2/health/live")[0] == 200
        assert get(f"{base}/v2/health/ready")[0] == 200
        assert get(f"{base}/v2/models/{MODEL}/ready")[0] == 200
        assert get(f"{base}/v2")[0] == 200
    status, meta = get(f"{stack.transformer}/v2/models/{MODEL}")
    assert status == 200 and meta["name"] == MODEL
    assert meta["inputs"] == [{"name": "user_id", "datatype": "BYTES", "shape": [-1]}]
    assert [o["name"] for o in meta["outputs"]] == ["user_id", "churn_probability", "churn_label"]
    status, meta = get(f"{stack.predictor}/v2/models/{MODEL}")
    features = [c for c in stack.feb.columns if c != "churn_label"]
    assert [i["name"] for i in meta["inputs"]] == features
    assert {i["name"]: i["datatype"] for i in meta["inputs"]}["net_service"] == "BYTES"


def test_predictor_refuses_bad_feature_tensors(stack: Stack) -> None:
    url = f"{stack.predictor}/v2/models/{MODEL}/infer"
    good = feature_inputs(stack)
    status, body = post(url, {"inputs": good})
    assert status == 200, body
    # the block form the transformer sends (over REST here): FP64 features as one [1, k] tensor naming its columns
    numbers = [t for t in good if t["datatype"] == "FP64" and t["data"] != ["NaN"]]
    block = {
        "name": "fp64_features",
        "datatype": "FP64",
        "shape": [1, len(numbers)],
        "data": [t["data"][0] for t in numbers],
        "parameters": {"columns": ",".join(t["name"] for t in numbers)},
    }
    status, blocked = post(url, {"inputs": [block, *(t for t in good if t not in numbers)]})
    assert status == 200, blocked
    assert blocked["outputs"] == body["outputs"]
    status, body = post(url, {"inputs": good[1:]})
    assert status == 400 and "is missing" in body["error"]
    bad = [dict(t, data=[0.5]) if t["name"] == "paperless_billing" else t for t in good]
    status, body = post(url, {"inputs": bad})
    assert status == 400 and "paperless_billing" in body["error"] and "0.5" in body["error"]


# ------------------------------------------------------------------------------------------------ gRPC


def test_grpc_single_batch_and_unknown(stack: Stack) -> None:
    ids = list(stack.feb.sample(n=1000, random_state=5).index)
    response, out = grpc_infer(stack.transformer_grpc, ids)
    proba, label = expected(stack, ids)
    assert [u.decode() if isinstance(u, bytes) else u for u in out["user_id"]] == ids
    np.testing.assert_allclose(out["churn_probability"], proba, atol=1e-6)
    assert out["churn_label"].tolist() == label.tolist()
    assert response.model_version == production_version(stack)
    _, single = grpc_infer(stack.transformer_grpc, ids[:1])
    assert single["churn_probability"][0] == pytest.approx(proba[0], abs=1e-6)
    with pytest.raises(grpc.RpcError) as err:
        grpc_infer(stack.transformer_grpc, [ids[0], "0000-NOONE"])
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "missing_features" in err.value.details() and "0000-NOONE" in err.value.details()


def test_grpc_hop_to_the_predictor_answers_like_the_rest_hop(stack: Stack) -> None:
    """``--predictor_protocol grpc-v2``: the same column blocks travel as raw gRPC contents through KServe's client."""
    ports = free_port(), free_port()
    proc = _server(
        "model_server.transformer", stack.env, stack.logs / "transformer-grpc-hop.log",
        "--http_port", str(ports[0]), "--grpc_port", str(ports[1]),
        "--predictor_host", stack.predictor_grpc, "--predictor_protocol", "grpc-v2",
    )  # fmt: skip
    try:
        base = f"http://127.0.0.1:{ports[0]}"
        wait_http(f"{base}/v2/health/ready", proc, what="transformer (gRPC hop)")
        no_internet = stack.feb.index[stack.feb["net_service"] == "No"][0]  # contract NULLs on the wire as NaN
        ids = [no_internet, *stack.feb.sample(n=200, random_state=9).index]
        url = f"{base}/v2/models/{MODEL}/infer"
        status, via_grpc = post(url, v2(ids), {"Content-Type": "application/json"})
        assert status == 200, via_grpc
        rest_status, via_rest = infer(stack, ids)
        assert rest_status == 200
        assert outputs(via_grpc) == outputs(via_rest)
        assert via_grpc["model_version"] == via_rest["model_version"] == production_version(stack)
        status, body = post(url, v2([ids[1], "0000-NOONE"]), {"Content-Type": "application/json"})
        assert status == 422 and list(body["missing_features"]) == ["0000-NOONE"]
    finally:
        stop_group(proc)


def test_rest_hop_names_the_predictors_refusal_and_an_unreachable_predictor(stack: Stack) -> None:
    """The transformer's hop client on its own against the real predictor, then against a port nobody listens on."""
    import asyncio

    from kserve.protocol.infer_type import InferInput, InferRequest

    from model_server.transformer import HopError, PredictorHop

    user = stack.feb.index[0]
    row = stack.feb.loc[user]
    tensors = [
        InferInput(name, [1], "BYTES", data=[row[name]])
        if isinstance(row[name], str)
        else InferInput(name, [1], "FP64", data=[float(row[name])])
        for name in stack.feb.columns
        if name != "churn_label"
    ]

    async def run() -> None:
        hop = PredictorHop(stack.predictor, MODEL, timeout=10, retries=1)
        try:
            response = await hop.infer(InferRequest(MODEL, tensors))
            assert response.parameters["model_version"] == production_version(stack)
            proba, _ = expected(stack, [user])
            assert response.get_output_by_name("churn_probability").data[0] == pytest.approx(proba[0], abs=1e-6)
            with pytest.raises(HopError, match=r"HTTP 400: input 'monthly_fee' is missing"):
                await hop.infer(InferRequest(MODEL, [t for t in tensors if t.name == "months_active"]))
        finally:
            await hop.close()
        dead = PredictorHop(f"http://127.0.0.1:{free_port()}", MODEL, timeout=10, retries=2)
        try:
            with pytest.raises(HopError, match=r"/v2/models/streamflow-churn/infer: unreachable"):
                await dead.infer(InferRequest(MODEL, tensors))
        finally:
            await dead.close()

    asyncio.run(run())


def test_transformer_answers_502_while_its_predictor_restarts_then_recovers(stack: Stack) -> None:
    """A predictor restarting (a pod rolled): the transformer's pooled keep-alive connection dies with it. While it is
    down a request is a 502 naming the predictor; once it is back the next request is answered, no restart needed."""
    ph, pg, th, tg = (free_port() for _ in range(4))
    args = ("--http_port", str(ph), "--grpc_port", str(pg), "--poll_seconds", "60")
    predictor = _server("model_server.predictor", stack.env, stack.logs / "predictor-restart-1.log", *args)
    transformer = _server(
        "model_server.transformer", stack.env, stack.logs / "transformer-restart.log",
        "--http_port", str(th), "--grpc_port", str(tg), "--predictor_host", f"127.0.0.1:{ph}",
    )  # fmt: skip
    url = f"http://127.0.0.1:{th}/v2/models/{MODEL}/infer"
    ids = list(stack.feb.index[:3])
    try:
        wait_http(f"http://127.0.0.1:{ph}/v2/health/ready", predictor, what="predictor")
        wait_http(f"http://127.0.0.1:{th}/v2/health/ready", transformer, what="transformer")
        status, before = post(url, v2(ids), {"Content-Type": "application/json"})
        assert status == 200, before
        stop_group(predictor)
        status, body = post(url, v2(ids), {"Content-Type": "application/json"})
        assert status == 502 and f"predictor 127.0.0.1:{ph}" in body["error"] and "unreachable" in body["error"]
        predictor = _server("model_server.predictor", stack.env, stack.logs / "predictor-restart-2.log", *args)
        wait_http(f"http://127.0.0.1:{ph}/v2/health/ready", predictor, what="predictor (restarted)")
        status, after = post(url, v2(ids), {"Content-Type": "application/json"})
        assert status == 200, after
        assert outputs(after) == outputs(before)
    finally:
        stop_group(transformer)
        stop_group(predictor)


# ------------------------------------------------------------------------------------------------ course routes


def test_course_routes_on_the_same_path(stack: Stack) -> None:
    user = stack.feb.index[0]
    assert get(f"{stack.transformer}/health") == (200, {"status": "ok", "model": MODEL})
    status, body = get(f"{stack.transformer}/features/{user}")
    assert status == 200 and body["user_id"] == user and body["missing_features"] == []
    assert body["features"]["months_active"] == stack.feb.loc[user, "months_active"]
    assert get(f"{stack.transformer}/features/0000-NOONE")[0] == 404
    status, body = post(f"{stack.transformer}/predict", {"user_id": user})
    proba, label = expected(stack, [user])
    assert status == 200 and body["prediction"] == int(label[0])
    assert body["probability"] == pytest.approx(float(proba[0]), abs=1e-6)
    assert body["model_version"] == production_version(stack)
    status, body = post(f"{stack.transformer}/predict", {"user_id": "0000-NOONE"})
    assert status == 422 and body["error"] == "Missing features for user_id=0000-NOONE"
    assert len(body["missing_features"]) == 14
    assert post(f"{stack.transformer}/predict", {"uid": 1})[0] == 400


# ------------------------------------------------------------------------------------------------ metrics


def grpc_features(address: str, inputs: list[dict]):
    """The predictor's feature tensors (``feature_inputs``' JSON form) sent over gRPC as typed contents."""
    from kserve.protocol.grpc import grpc_predict_v2_pb2 as pb
    from kserve.protocol.grpc import grpc_predict_v2_pb2_grpc as pb_grpc

    def tensor(t: dict):
        if t["datatype"] == "BYTES":
            contents = pb.InferTensorContents(bytes_contents=[str(v).encode() for v in t["data"]])
        else:
            contents = pb.InferTensorContents(fp64_contents=[float(v) for v in t["data"]])
        return pb.ModelInferRequest.InferInputTensor(
            name=t["name"], datatype=t["datatype"], shape=t["shape"], contents=contents
        )

    with grpc.insecure_channel(address) as channel:
        return pb_grpc.GRPCInferenceServiceStub(channel).ModelInfer(
            pb.ModelInferRequest(model_name=MODEL, inputs=[tensor(t) for t in inputs]), timeout=60
        )


def test_metrics_count_requests_labels_missing_features_and_model(stack: Stack) -> None:
    """Every figure is a difference over this test's own requests: it holds run alone or after any other test."""
    t, p = stack.transformer, stack.predictor
    _, labels = expected(stack, list(stack.feb.index))
    churners = [u for u, label in zip(stack.feb.index, labels, strict=True) if label == 1]
    stayers = [u for u, label in zip(stack.feb.index, labels, strict=True) if label == 0]
    rest_ids, grpc_ids = churners[:3] + stayers[:2], [churners[3], stayers[2]]
    first_label = int(labels[0])  # the predictor's own gRPC request scores the first user (feature_inputs)
    probes = {
        "t_rest_200": (t, "streamflow_requests_total", {"server": "transformer", "protocol": "rest", "status": "200"}),
        "t_rest_422": (t, "streamflow_requests_total", {"server": "transformer", "protocol": "rest", "status": "422"}),
        "t_grpc_ok": (t, "streamflow_requests_total", {"server": "transformer", "protocol": "grpc", "status": "OK"}),
        "t_rest_seconds": (t, "streamflow_request_duration_seconds_count", {"server": "transformer",
                                                                            "protocol": "rest"}),
        "t_grpc_seconds": (t, "streamflow_request_duration_seconds_count", {"server": "transformer",
                                                                            "protocol": "grpc"}),
        "missing": (t, "streamflow_missing_features_total", {"server": "transformer", "feature": "months_active"}),
        "p_rest_200": (p, "streamflow_requests_total", {"server": "predictor", "protocol": "rest", "status": "200"}),
        "p_grpc_ok": (p, "streamflow_requests_total", {"server": "predictor", "protocol": "grpc", "status": "OK"}),
        "churn": (p, "streamflow_predictions_total", {"server": "predictor", "label": "1"}),
        "stay": (p, "streamflow_predictions_total", {"server": "predictor", "label": "0"}),
        "probabilities": (p, "streamflow_churn_probability_count", {"server": "predictor"}),
    }  # fmt: skip

    def figures() -> dict[str, float]:
        return {k: metric(base, name, **labels) or 0.0 for k, (base, name, labels) in probes.items()}

    before = figures()
    assert infer(stack, rest_ids)[0] == 200
    assert infer(stack, ["0000-NOONE"])[0] == 422
    grpc_infer(stack.transformer_grpc, grpc_ids)  # the transformer hops to the predictor over REST
    grpc_features(stack.predictor_grpc, feature_inputs(stack))
    after = figures()
    assert {k: after[k] - before[k] for k in probes} == {
        "t_rest_200": 1,
        "t_rest_422": 1,
        "t_grpc_ok": 1,
        "t_rest_seconds": 2,
        "t_grpc_seconds": 1,
        "missing": 1,  # an unknown user counts every feature once
        "p_rest_200": 2,  # the transformer's two hops
        "p_grpc_ok": 1,
        "churn": 3 + 1 + first_label,
        "stay": 2 + 1 + (1 - first_label),
        "probabilities": len(rest_ids) + len(grpc_ids) + 1,
    }
    version = production_version(stack)
    assert metric(p, "streamflow_model_info", version=version, alias="production") == 1
    assert metric(p, "streamflow_registry_reachable", server="predictor") == 1
    for base, server in ((t, "transformer"), (p, "predictor")):  # every request answered: none left in flight
        for protocol in ("rest", "grpc"):
            assert metric(base, "streamflow_requests_in_flight", server=server, protocol=protocol) == 0
    _, text = get(f"{p}/metrics")
    assert "request_predict_seconds" in text  # KServe's own histograms are there too


@pytest.mark.skipif(shutil.which("prometheus") is None, reason="needs the prometheus binary (.ci/run installs it)")
def test_a_real_prometheus_scrapes_both_servers(stack: Stack, tmp_path: Path) -> None:
    port = free_port()
    targets = [urlsplit(stack.transformer).netloc, urlsplit(stack.predictor).netloc]
    config = tmp_path / "prometheus.yml"
    config.write_text(
        "global: {scrape_interval: 1s, evaluation_interval: 1s}\n"
        "scrape_configs:\n"
        f"  - job_name: streamflow\n    static_configs: [{{targets: {json.dumps(targets)}}}]\n"
    )
    proc = subprocess.Popen(
        ["prometheus", f"--config.file={config}", f"--storage.tsdb.path={tmp_path / 'tsdb'}",
         f"--web.listen-address=127.0.0.1:{port}"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, start_new_session=True,
    )  # fmt: skip
    base = f"http://127.0.0.1:{port}"

    def query(promql: str) -> list[dict]:
        _, body = get(f"{base}/api/v1/query?{urlencode({'query': promql})}")
        return body["data"]["result"]

    try:
        wait_http(f"{base}/-/ready", proc, what="prometheus")
        assert infer(stack, list(stack.feb.index[:3]))[0] == 200
        deadline = time.monotonic() + 30
        wanted = {
            "up": 'up{job="streamflow"} == 1',
            "requests": 'streamflow_requests_total{server="transformer",status="200"}',
            "model": 'streamflow_model_info{server="predictor",alias="production"}',
            "reachable": 'streamflow_registry_reachable{server="predictor"} == 1',
        }
        found: dict[str, list] = {}
        while time.monotonic() < deadline:
            found = {name: query(promql) for name, promql in wanted.items()}
            if len(found["up"]) == 2 and all(found.values()):
                break
            time.sleep(0.5)
        assert len(found["up"]) == 2, found
        assert all(found.values()), found
        assert found["model"][0]["metric"]["version"] == production_version(stack)
    finally:
        stop_group(proc)


# ------------------------------------------------------------------------------------------------ fresh install


def test_predictor_without_a_model_is_live_not_ready_then_ready_once_promoted(stack: Stack) -> None:
    """A fresh cluster: no alias in the registry yet. The predictor starts anyway — live, not ready, an inference is a
    503 (REST) / UNAVAILABLE (gRPC), one log line says why — and serves the version as soon as the alias names one,
    without a restart. A registered model of its own (a copy of the stack's production version: same artifacts and
    tags) stands for the first promotion, so nothing is trained here."""
    from mlflow import MlflowClient

    from pipelines.smoke import SmokeFailed, run_smoke

    name = "streamflow_churn_fresh"
    ph, pg = free_port(), free_port()
    base = f"http://127.0.0.1:{ph}"
    log = stack.logs / "predictor-fresh.log"
    args = ("--http_port", str(ph), "--grpc_port", str(pg), "--poll_seconds", "0.5", "--registered_model", name)
    proc = _server("model_server.predictor", stack.env, log, *args)
    client = MlflowClient(tracking_uri=stack.mlflow_url, registry_uri=stack.mlflow_url)
    try:
        wait_http(f"{base}/v2/health/live", proc, what="predictor without a model")
        wait_log(log, f"no {name}@production yet: not ready; polling every 0.5 s", proc)
        assert get(f"{base}/v2/health/ready")[0] == 503
        assert get(f"{base}/v2/models/{MODEL}/ready")[0] == 503
        status, body = post(f"{base}/v2/models/{MODEL}/infer", {"inputs": feature_inputs(stack)})
        assert status == 503 and body["error"] == f"Model with name {MODEL} is not ready.", body
        with pytest.raises(grpc.RpcError) as err:
            grpc_infer(f"127.0.0.1:{pg}", ["7590-VHVEG"])
        assert err.value.code() == grpc.StatusCode.UNAVAILABLE
        assert metric(base, "streamflow_registry_reachable", server="predictor") == 1

        # `streamflow smoke` pointed at it (the registry has a production version of streamflow_churn): 503 named
        with pytest.raises(SmokeFailed, match=r"the predictor has no model loaded yet \(HTTP 503: Model with name"):
            run_smoke(stack.settings, f"{base}/v2/models/{MODEL}/infer", ["7590-VHVEG"])

        # a version without the alias: still nothing to serve
        copy = copy_production(stack, name)
        time.sleep(1.5)  # three polls
        assert get(f"{base}/v2/health/ready")[0] == 503
        client.set_registered_model_alias(name, "production", copy.version)
        wait_http(f"{base}/v2/health/ready", proc, timeout=60, what="predictor after the first promotion")
        assert get(f"{base}/v2/models/{MODEL}/ready")[0] == 200
        status, body = post(f"{base}/v2/models/{MODEL}/infer", {"inputs": feature_inputs(stack)})
        assert status == 200 and body["model_version"] == str(copy.version), body
        served = outputs(body)["churn_probability"][0]
        assert served == pytest.approx(expected(stack, [stack.feb.index[0]])[0][0], abs=1e-6)
        text = log.read_text()
        assert text.count("not ready") == 1 and "Traceback" not in text, text
    finally:
        stop_group(proc)


def test_predictor_waits_for_an_mlflow_that_is_not_up_yet(stack: Stack, tmp_path: Path) -> None:
    """MLflow's pod starts after the predictor's: the predictor says the registry is unreachable, stays live and not
    ready, and notices by itself when MLflow answers (here: an empty registry, so the next line is 'no model yet').
    `streamflow smoke` run meanwhile names the missing step each time: MLflow, then `make bootstrap`."""
    from pipelines.smoke import SmokeFailed, run_smoke

    mlflow_port, ph, pg = free_port(), free_port(), free_port()
    mlflow_url = f"http://127.0.0.1:{mlflow_port}"
    base = f"http://127.0.0.1:{ph}"
    log = stack.logs / "predictor-no-mlflow.log"
    env = {**stack.env, "STREAMFLOW_MLFLOW_TRACKING_URI": mlflow_url}
    settings = stack.settings.model_copy(update={"mlflow_tracking_uri": mlflow_url})
    proc = _server("model_server.predictor", env, log, "--http_port", str(ph), "--grpc_port", str(pg),
                   "--poll_seconds", "0.5")  # fmt: skip
    mlflow_proc = None
    try:
        wait_http(f"{base}/v2/health/live", proc, what="predictor without MLflow")
        wait_log(log, f"MLflow registry unreachable at http://127.0.0.1:{mlflow_port}", proc)
        assert "no model yet: not ready; polling every 0.5 s" in log.read_text()
        assert get(f"{base}/v2/health/ready")[0] == 503
        assert metric(base, "streamflow_registry_reachable", server="predictor") == 0
        with pytest.raises(SmokeFailed, match=f"^MLflow at {mlflow_url} unreachable: "):
            run_smoke(settings, stack.transformer, ["7590-VHVEG"])
        mlflow_proc = subprocess.Popen(
            [str(Path(sys.executable).parent / "mlflow"), "server", "--host", "127.0.0.1", "--port", str(mlflow_port),
             "--backend-store-uri", f"sqlite:///{tmp_path / 'mlflow.db'}", "--artifacts-destination",
             str(tmp_path / "artifacts"), "--workers", "1"],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, start_new_session=True,
        )  # fmt: skip
        text = wait_log(log, f"no {MODEL_NAME}@production yet: not ready", proc, timeout=120)
        assert "MLflow registry reachable again" in text and "Traceback" not in text, text
        assert metric(base, "streamflow_registry_reachable", server="predictor") == 1
        assert get(f"{base}/v2/health/ready")[0] == 503
        bootstrap = "no model in production yet: run `make bootstrap` (generate → ingest → train → promote)"
        with pytest.raises(SmokeFailed) as err:
            run_smoke(settings, stack.transformer, ["7590-VHVEG"])
        assert str(err.value) == bootstrap
    finally:
        stop_group(proc)
        if mlflow_proc is not None:
            stop_group(mlflow_proc)


# ------------------------------------------------------------------------------------------------ streamflow smoke


def test_smoke_passes_when_the_registrys_version_answers(stack: Stack) -> None:
    """What the chart's `helm test` runs, here against the transformer's /infer (the graph's router forwards the same
    body there)."""
    ids = list(stack.feb.index[:3])
    args = ["smoke", "--url", f"{stack.transformer}/v2/models/{MODEL}/infer", "--alias", "production"]
    proc = streamflow(stack.env, *args, *(a for u in ids for a in ("--user-id", u)), "--json")
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    version = production_version(stack)
    assert result["ok"] is True and result["model_version"] == version and result["aliases"] == {"production": version}
    assert result["user_ids"] == ids
    assert result["churn_probability"] == pytest.approx(expected(stack, ids)[0].tolist(), abs=1e-6)


def test_smoke_fails_on_a_version_no_alias_names_and_on_unknown_users(stack: Stack) -> None:
    from mlflow import MlflowClient

    from pipelines.smoke import SmokeFailed, run_smoke

    url = f"{stack.transformer}/v2/models/{MODEL}/infer"
    user = stack.feb.index[0]
    served = production_version(stack)
    other = copy_production(stack, MODEL_NAME)  # a later version the served path does not answer with
    client = MlflowClient(tracking_uri=stack.mlflow_url, registry_uri=stack.mlflow_url)
    client.set_registered_model_alias(MODEL_NAME, "smoke-later", other.version)
    try:
        with pytest.raises(SmokeFailed) as err:
            run_smoke(stack.settings, url, [user], ["smoke-later"])
        assert str(err.value).startswith(
            f"answered by model version {served}, but the registry says smoke-later = version {other.version}: "
            "a promotion the predictor has not picked up yet"
        )
        # a graph splitting traffic: any alias given may answer
        assert run_smoke(stack.settings, url, [user], ["smoke-later", "production"]).model_version == served
    finally:
        client.delete_registered_model_alias(MODEL_NAME, "smoke-later")
    with pytest.raises(SmokeFailed) as err:
        run_smoke(stack.settings, url, [user, "0000-NOONE"])
    assert str(err.value) == (
        "user ids unknown to the online store (0000-NOONE): "
        "run the ingest workflow (ingest → snapshot → materialize) for month_000"
    )
    with pytest.raises(SmokeFailed, match="no model in nowhere yet: run `make bootstrap`"):
        run_smoke(stack.settings, url, [user], ["nowhere"])


def test_smoke_where_nothing_listens_exits_1_naming_the_url(stack: Stack) -> None:
    url = f"http://127.0.0.1:{free_port()}/"
    proc = streamflow(stack.env, "smoke", "--url", url, "--user-id", stack.feb.index[0], "--json")
    assert proc.returncode == 1, (proc.stdout, proc.stderr)
    error = json.loads(proc.stdout)["error"]
    assert error.startswith(f"graph at {url} unreachable: ") and "Connection refused" in error
    assert f"error: graph at {url} unreachable" in proc.stderr.replace("\n", "")


# ------------------------------------------------------------------------------------------------ hot reload


class Load:
    """A bounded load: ``threads`` clients sending single-user requests until stopped; every answer is kept."""

    def __init__(self, stack: Stack, threads: int = 2) -> None:
        self.url = f"{stack.transformer}/v2/models/{MODEL}/infer"
        self.ids = list(stack.feb.index[:50])
        self.results: list[tuple[float, int, str]] = []  # (time, status, model_version)
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, args=(i,), daemon=True) for i in range(threads)]

    def _run(self, seed: int) -> None:
        i = seed
        while not self._stop.is_set():
            status, body = post(self.url, v2([self.ids[i % len(self.ids)]]), {"Content-Type": "application/json"})
            self.results.append((time.monotonic(), status, body.get("model_version", "")))
            i += 1
            time.sleep(0.005)

    def __enter__(self) -> Load:
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(timeout=60)


def test_new_production_version_is_served_without_a_failed_request(stack: Stack) -> None:
    from mlflow import MlflowClient

    from pipelines.db import connect
    from pipelines.train import train

    db = connect(stack.settings)
    try:
        challenger = train(stack.settings.model_copy(update={"seed": 3}), db, FEB)
    finally:
        db.close()
    old = production_version(stack)
    client = MlflowClient(tracking_uri=stack.mlflow_url, registry_uri=stack.mlflow_url)
    with Load(stack) as load:
        time.sleep(1.0)
        moved_at = time.monotonic()
        client.set_registered_model_alias(MODEL_NAME, "production", challenger.model_version)
        deadline = moved_at + 60
        while time.monotonic() < deadline and not any(v == challenger.model_version for _, _, v in load.results):
            time.sleep(0.1)
        time.sleep(1.0)
    swapped = [t for t, _, v in load.results if v == challenger.model_version]
    assert swapped, (
        f"version {challenger.model_version} never served; log: {(stack.logs / 'predictor.log').read_text()}"
    )
    assert all(status == 200 for _, status, _ in load.results), {s for _, s, _ in load.results}
    assert len(load.results) > 50
    assert {v for _, _, v in load.results} == {old, challenger.model_version}
    assert min(swapped) - moved_at < POLL_SECONDS + 30  # poll interval + download and check of the new version
    assert metric(stack.predictor, "streamflow_model_reloads_total", result="swapped") >= 1
    assert metric(stack.predictor, "streamflow_model_info", version=challenger.model_version) == 1


def test_mlflow_down_keeps_serving_and_says_so(stack: Stack) -> None:
    """Stops the module's MLflow server: keep this test last."""
    assert metric(stack.predictor, "streamflow_registry_reachable", server="predictor") == 1
    with Load(stack) as load:
        time.sleep(0.5)
        stop_group(stack.mlflow_proc)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if metric(stack.predictor, "streamflow_registry_reachable", server="predictor") == 0:
                break
            time.sleep(0.2)
        time.sleep(1.0)
    assert metric(stack.predictor, "streamflow_registry_reachable", server="predictor") == 0
    assert load.results and all(status == 200 for _, status, _ in load.results)
    assert infer(stack, [stack.feb.index[0]])[0] == 200
    assert "MLflow registry unreachable" in (stack.logs / "predictor.log").read_text()
