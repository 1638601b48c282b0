"""Who may change what the servers serve, and how much a request may make them hold (issue 16).

Both servers run as real processes on loopback, started as in a pod; the predictor serves a tiny two-feature model
registered in an embedded (SQLite) MLflow registry, the transformer reads an applied but empty online store and hops
to that predictor. Nothing here needs the full loop of ``test_serving.py``: the checks are about the servers' doors.

* KServe's model-repository routes (``POST /v2/repository/models/{name}/load|unload``, gRPC
  ``RepositoryModelLoad``/``RepositoryModelUnload``) are refused on both servers; the model keeps answering and
  ``/v2/health/ready`` stays true; readiness is false whenever no model is registered.
* A body sent with ``Transfer-Encoding: chunked`` (no Content-Length) is counted as it arrives: past the limit the
  answer is 413 and the rest is not held in memory (the process's peak RSS, reset before the request, does not grow
  by the body's size), on every route that reads a body.
"""

from __future__ import annotations

import asyncio
import http.client
import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest

from tests.conftest import free_port, stop_group, wait_http
from tests.integration.test_serving import MODEL, _server, get, post, v2

pytestmark = [pytest.mark.integration]

PREDICTOR_MAX_BODY = 1_000_000  # --max_body_bytes
TRANSFORMER_MAX_BATCH = 1000  # --max_batch_size: a body limit of 64 * 1000 + 4096 bytes
CHUNKED_BODY = 20 * 1024 * 1024  # what a client sends past those limits
CHUNK = 64 * 1024


@dataclass
class Servers:
    predictor: str  # http://127.0.0.1:port
    predictor_grpc: str  # 127.0.0.1:port
    predictor_proc: subprocess.Popen
    transformer: str
    transformer_grpc: str
    transformer_proc: subprocess.Popen


def register_model(home: str) -> None:
    """A two-feature logistic regression registered as ``streamflow_churn@production`` in the embedded registry
    under ``home``. Run in a child process: MLflow's tracking URI is process-wide state other test modules set too."""
    import mlflow
    import numpy as np
    import pandas as pd
    from mlflow.models import infer_signature
    from sklearn.linear_model import LogisticRegression

    from pipelines.config import Settings
    from pipelines.registry import MODEL_NAME, PRODUCTION, experiment_id, mlflow_client

    settings = Settings(home=Path(home), db_url=None, mlflow_tracking_uri=None)
    client = mlflow_client(settings)
    rng = np.random.default_rng(16)
    features = pd.DataFrame({"a": rng.normal(size=200), "b": rng.normal(size=200)})
    model = LogisticRegression().fit(features, (features.a + features.b > 0).astype(int))
    with mlflow.start_run(experiment_id=experiment_id(client, settings)):
        info = mlflow.sklearn.log_model(
            model,
            name="model",
            signature=infer_signature(features, model.predict_proba(features)[:, 1]),
            input_example=features.head(3),
            pip_requirements=["scikit-learn"],  # not inferred: MLflow would load the model in a child process
            registered_model_name=MODEL_NAME,
        )
    version = str(info.registered_model_version)
    client.set_model_version_tag(MODEL_NAME, version, "threshold", "0.5")
    client.set_registered_model_alias(MODEL_NAME, PRODUCTION, version)


def _child(code: str, env: dict, log: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", code], env=env, stdout=log.open("w"), stderr=subprocess.STDOUT)


def _finished(proc: subprocess.Popen, log: Path) -> None:
    assert proc.wait(timeout=300) == 0, log.read_text()[-3000:]


@pytest.fixture(scope="module")
def servers(tmp_path_factory: pytest.TempPathFactory):
    tmp = tmp_path_factory.mktemp("guards")
    home = str(tmp / "home")
    env = {
        **os.environ,
        "STREAMFLOW_HOME": home,
        "STREAMFLOW_DB_URL": "",
        "STREAMFLOW_MLFLOW_TRACKING_URI": "",
        "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false",
        "STREAMFLOW_LOG_LEVEL": "WARNING",
    }
    # side by side (each costs its imports): the Feast repo the transformer opens (an empty online store is enough
    # here), and the registry model the predictor serves; each server starts as soon as what it needs is there
    feast_log, model_log = tmp / "apply.log", tmp / "register.log"
    applying = _child(
        "from pathlib import Path; from pipelines.config import Settings; from pipelines.features import apply_repo;"
        f" apply_repo(Settings(home=Path({home!r}), db_url=None))",
        env,
        feast_log,
    )
    registering = _child(
        f"from tests.integration.test_server_guards import register_model; register_model({home!r})", env, model_log
    )
    ports = {k: free_port() for k in ("ph", "pg", "th", "tg")}
    started = []
    try:
        _finished(applying, feast_log)
        transformer = _server(
            "model_server.transformer", env, tmp / "transformer.log",
            "--http_port", str(ports["th"]), "--grpc_port", str(ports["tg"]),
            "--predictor_host", f"127.0.0.1:{ports['ph']}", "--max_batch_size", str(TRANSFORMER_MAX_BATCH),
        )  # fmt: skip
        started.append(transformer)
        _finished(registering, model_log)
        predictor = _server(
            "model_server.predictor", env, tmp / "predictor.log",
            "--http_port", str(ports["ph"]), "--grpc_port", str(ports["pg"]),
            "--max_body_bytes", str(PREDICTOR_MAX_BODY),
        )  # fmt: skip
        started.append(predictor)
        wait_http(f"http://127.0.0.1:{ports['ph']}/v2/health/ready", predictor, what="predictor")
        wait_http(f"http://127.0.0.1:{ports['th']}/v2/health/ready", transformer, what="transformer")
        yield Servers(
            f"http://127.0.0.1:{ports['ph']}", f"127.0.0.1:{ports['pg']}", predictor,
            f"http://127.0.0.1:{ports['th']}", f"127.0.0.1:{ports['tg']}", transformer,
        )  # fmt: skip
    finally:
        for proc in (applying, registering):
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        for proc in started:
            stop_group(proc)


def features_request(a: float = 0.5, b: float = 1.0) -> dict:
    return {
        "inputs": [
            {"name": "a", "datatype": "FP64", "shape": [1], "data": [a]},
            {"name": "b", "datatype": "FP64", "shape": [1], "data": [b]},
        ]
    }


def predictor_answers(servers: Servers) -> None:
    status, body = post(f"{servers.predictor}/v2/models/{MODEL}/infer", features_request())
    assert status == 200, body
    assert {o["name"] for o in body["outputs"]} == {"churn_probability", "churn_label"}


def transformer_answers(servers: Servers) -> None:
    """The transformer's model is still there: an unknown user is the model's own 422, not 404 ModelNotFound."""
    status, body = post(f"{servers.transformer}/v2/models/{MODEL}/infer", v2(["nobody"]))
    assert status == 422, body
    assert "nobody" in body["missing_features"]


def both_ready(servers: Servers) -> None:
    for base in (servers.predictor, servers.transformer):
        assert get(f"{base}/v2/health/ready")[0] == 200, base
        assert get(f"{base}/v2/models/{MODEL}/ready")[0] == 200, base


# ------------------------------------------------------------------------------------------------ body limit


def _status(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM (peak RSS) of a process, in kB."""
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            fields[key] = int(value.split()[0])
    return fields


def send_chunked(base: str, path: str, chunks) -> tuple[int, dict]:
    """POST ``chunks`` with ``Transfer-Encoding: chunked`` (no Content-Length), as a streaming client does."""
    host, port = base.removeprefix("http://").split(":")
    connection = http.client.HTTPConnection(host, int(port), timeout=60)
    try:
        connection.request(
            "POST", path, body=iter(chunks), headers={"Content-Type": "application/json"}, encode_chunked=True
        )
        response = connection.getresponse()
        raw = response.read()
        return response.status, json.loads(raw) if raw else {}
    finally:
        connection.close()


def oversized(path: str):
    """~20 MB of one JSON document, in 64 KB chunks: a v2 request (or a course request) holding one huge id."""
    if path == "/predict":
        head, tail = b'{"user_id": "', b'"}'
    else:
        head, tail = b'{"inputs": [{"name": "user_id", "datatype": "BYTES", "shape": [1], "data": ["', b'"]}]}'
    yield head
    for _ in range(CHUNKED_BODY // CHUNK):
        yield b"x" * CHUNK
    yield tail


CHUNKED_ROUTES = [
    ("predictor", f"/v2/models/{MODEL}/infer"),
    ("transformer", f"/v2/models/{MODEL}/infer"),
    ("transformer", "/predict"),
]


@pytest.mark.parametrize(("server", "path"), CHUNKED_ROUTES)
def test_a_chunked_body_under_the_limit_is_answered_as_usual(servers: Servers, server: str, path: str) -> None:
    base = getattr(servers, server)
    if server == "predictor":
        document = json.dumps(features_request()).encode()
        expected = 200
    else:  # an unknown user: the transformer read and parsed the whole body to say so
        document = json.dumps({"user_id": "nobody"} if path == "/predict" else v2(["nobody"])).encode()
        expected = 422
    status, body = send_chunked(base, path, [document[i : i + 7] for i in range(0, len(document), 7)])
    assert status == expected, body
    if expected == 422:
        assert "missing_features" in body, body


@pytest.mark.parametrize(("server", "path"), CHUNKED_ROUTES)
def test_a_chunked_body_over_the_limit_is_413_without_being_held(servers: Servers, server: str, path: str) -> None:
    base, proc = getattr(servers, server), getattr(servers, f"{server}_proc")
    pid = proc.pid  # ``_server`` runs the server itself, not a shell around it
    limit = PREDICTOR_MAX_BODY if server == "predictor" else 64 * TRANSFORMER_MAX_BATCH + 4096
    send_chunked(base, path, [b"{}"])  # warm the route: what it allocates once is not the body's
    try:  # reset the peak RSS ("5" in clear_refs, Linux >= 4.0) so VmHWM is this request's peak
        Path(f"/proc/{pid}/clear_refs").write_text("5")
    except OSError:
        pytest.skip("cannot reset the server's peak RSS here (/proc/<pid>/clear_refs)")
    before = _status(pid)["VmRSS"]

    status, body = send_chunked(base, path, oversized(path))

    grown_mb = (_status(pid)["VmHWM"] - before) / 1024
    # read whole, the body is held at least twice (its chunks, then joined): 40 MB; bounded, at most the limit
    # twice (1 MB on the predictor) and the server's own noise
    assert status == 413 and grown_mb < 10, (
        f"{server} {path}: answered {status} {str(body)[:200]}; peak RSS grew {grown_mb:.1f} MB for a 20 MB body"
    )
    assert f"over the {limit} bytes limit" in body["error"], body
    # the connection was answered, not broken: the server still serves
    both_ready(servers)


# ------------------------------------------------------------------------------------------- model repository


@pytest.mark.parametrize("server", ["predictor", "transformer"])
def test_rest_load_and_unload_are_refused_and_the_model_keeps_answering(servers: Servers, server: str) -> None:
    base = getattr(servers, server)
    for action in ("unload", "load", "unload"):
        status, body = post(f"{base}/v2/repository/models/{MODEL}/{action}", b"")
        assert status == 403, (action, status, body)
        assert "model repository" in body["error"] and "off" in body["error"], body
    both_ready(servers)
    predictor_answers(servers)
    transformer_answers(servers)


@pytest.mark.parametrize("server", ["predictor", "transformer"])
def test_grpc_load_and_unload_are_refused_and_the_model_keeps_answering(servers: Servers, server: str) -> None:
    from kserve.protocol.grpc import grpc_predict_v2_pb2 as pb
    from kserve.protocol.grpc import grpc_predict_v2_pb2_grpc as pb_grpc

    with grpc.insecure_channel(getattr(servers, f"{server}_grpc")) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        calls = (
            (stub.RepositoryModelUnload, pb.RepositoryModelUnloadRequest(model_name=MODEL)),
            (stub.RepositoryModelLoad, pb.RepositoryModelLoadRequest(model_name=MODEL)),
        )
        for call, request in calls:
            with pytest.raises(grpc.RpcError) as refused:
                call(request, timeout=30)
            assert refused.value.code() == grpc.StatusCode.UNIMPLEMENTED, refused.value
            assert "model repository" in refused.value.details(), refused.value.details()
        assert stub.ServerReady(pb.ServerReadyRequest(), timeout=30).ready
        assert stub.ModelReady(pb.ModelReadyRequest(name=MODEL), timeout=30).ready
    both_ready(servers)
    predictor_answers(servers)
    transformer_answers(servers)


def test_readiness_is_false_once_no_model_is_registered() -> None:
    """The servers' readiness over KServe's own registry: a ready model unloaded (as the repository routes did)
    leaves nothing registered, and that is not ready — KServe's ``all([])`` over no model said ready."""
    from kserve import Model
    from kserve.model_repository import ModelRepository
    from kserve.protocol.model_repository_extension import ModelRepositoryExtension

    from model_server.server import models_ready

    model = Model(MODEL)
    model.ready = True
    registry = ModelRepository()
    registry.update(model)

    async def check() -> tuple[bool, bool]:
        before = await models_ready(registry)
        await ModelRepositoryExtension(registry).unload(MODEL)
        return before, await models_ready(registry)

    assert asyncio.run(check()) == (True, False)
