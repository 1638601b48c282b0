"""A bad day for the servers (issue 16): they keep answering, with the right status, and load only safe models.

Real processes on loopback, started as in a pod: a predictor serving a 14-feature random forest registered in an
embedded (SQLite) MLflow registry, the transformer reading a real SQLite online store holding 10,000 users and
hopping to that predictor, and a second predictor following a small two-feature model of its own (``SMALL``) whose
alias the reload tests move. Every test reads what is served before it acts, so each passes alone or in any order.

* a 10,000-id batch in flight does not hold up a readiness probe or a 1-user request sent after it (both servers);
* a version whose first download fails is served once it can be read, without the alias moving again, and the
  pending version and the failed attempts are on /metrics;
* a version holding a type outside the project's skops allow-list, or saved as pickle, is refused, logged,
  counted as a failed reload, and the previous version keeps serving;
* a locked online store is a 503 naming the lock (v2, course routes, gRPC UNAVAILABLE), never a 500 naming an
  exception class; malformed user ids and out-of-contract feature values are 400 / INVALID_ARGUMENT.
"""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest

from tests.conftest import free_port, stop_group, wait_http
from tests.integration.test_serving import MODEL, _server, get, metric, post, v2, wait_log

pytestmark = [pytest.mark.integration, pytest.mark.slow]

USERS = 10_000
SMALL = "bad_day_small"  # the registered model the second predictor follows
POLL = 0.5  # --poll_seconds of that predictor
FEATURES = [
    "months_active", "monthly_fee", "paperless_billing", "plan_stream_tv", "plan_stream_movies", "net_service",
    "watch_hours_30d", "avg_session_mins_7d", "unique_devices_30d", "skips_7d", "rebuffer_events_7d",
    "failed_payments_90d", "support_tickets_90d", "ticket_avg_resolution_hrs_90d",
]  # fmt: skip


def user_ids(n: int = USERS) -> list[str]:
    return [f"{i:05d}-BADAY" for i in range(n)]


# ------------------------------------------------------------------------------------------------ set-up (children)


def seed_store(home: str) -> None:
    """Apply the Feast repo under ``home`` and write USERS users' features into its SQLite online store."""
    import pandas as pd

    from pipelines.config import Settings
    from pipelines.features import apply_repo
    from pipelines.online import open_store
    from tests.unit.test_churn_model import frame

    settings = Settings(home=Path(home), db_url=None)
    apply_repo(settings)
    store = open_store(settings)
    rows = frame(USERS, seed=16)
    rows["user_id"] = user_ids()
    rows["event_timestamp"] = pd.Timestamp("2024-02-29", tz="UTC")
    for projection in store.get_feature_service(settings.feature_service).feature_view_projections:
        names = [f.name for f in projection.features]
        store.write_to_online_store(projection.name, rows[["user_id", "event_timestamp", *names]])


def _log(model, features, name: str, **kw) -> tuple[str, str]:
    """Log and register ``model``; (version, local folder of its artifacts)."""
    import mlflow
    from mlflow.models import infer_signature

    signature = infer_signature(features, model.predict_proba(features)[:, 1])
    info = mlflow.sklearn.log_model(
        model, name="model", signature=signature, input_example=features.head(3),
        pip_requirements=["scikit-learn"], registered_model_name=name, **kw,
    )  # fmt: skip
    location = mlflow.get_logged_model(info.model_id).artifact_location
    return str(info.registered_model_version), location.removeprefix("file://")


def register(home: str, what: str) -> None:
    """Register a version in the embedded registry under ``home`` and print ``{"version", "artifacts"}``:

    * ``churn``: the 14-feature random forest of `streamflow train` as ``streamflow_churn@production``;
    * ``small``: a two-feature logistic regression, a new version of SMALL (no alias);
    * ``untrusted``: the same inside a Pipeline whose first step is ``operator.pos``, a type outside the allow-list
      its MLmodel file vouches for (MLflow's own loader would load it);
    * ``pickle``: the two-feature model saved as pickle.
    Run in a child: MLflow's tracking URI is process-wide state."""
    import operator

    import mlflow
    import numpy as np
    import pandas as pd
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import FunctionTransformer

    from pipelines.config import Settings
    from pipelines.registry import MODEL_NAME, PRODUCTION, experiment_id, mlflow_client
    from pipelines.train import SKOPS_TRUSTED, build_pipeline, categorical_features
    from tests.unit.test_churn_model import frame

    settings = Settings(home=Path(home), db_url=None, mlflow_tracking_uri=None)
    client = mlflow_client(settings)
    with mlflow.start_run(experiment_id=experiment_id(client, settings)):
        if what == "churn":
            rows = frame(2000, seed=1)
            model = build_pipeline("rf", FEATURES, categorical_features(rows, FEATURES), seed=0)
            model.fit(rows[FEATURES], rows["churn_label"])
            version, folder = _log(model, rows[FEATURES], MODEL_NAME, skops_trusted_types=SKOPS_TRUSTED["rf"])
            client.set_registered_model_alias(MODEL_NAME, PRODUCTION, version)
            name = MODEL_NAME
        else:
            rng = np.random.default_rng(16)
            features = pd.DataFrame({"a": rng.normal(size=200), "b": rng.normal(size=200)})
            target = (features.a + features.b > 0).astype(int)
            kw = {}
            if what == "untrusted":
                model = make_pipeline(FunctionTransformer(operator.pos), LogisticRegression()).fit(features, target)
                kw = {"skops_trusted_types": ["_operator.pos"]}
            else:
                model = LogisticRegression().fit(features, target)
                if what == "pickle":
                    kw = {"serialization_format": "pickle"}
            version, folder = _log(model, features, SMALL, **kw)
            name = SMALL
    client.set_model_version_tag(name, version, "threshold", "0.5")
    print(json.dumps({"version": version, "artifacts": folder}))


def _child(code: str, env: dict) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-c", code], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )


def _result(proc: subprocess.Popen) -> dict:
    out, _ = proc.communicate(timeout=600)
    assert proc.returncode == 0, out[-3000:]
    printed = [line for line in out.splitlines() if line.startswith("{")]
    return json.loads(printed[-1]) if printed else {}


def registered(home: str, env: dict, what: str) -> dict:
    code = f"from tests.integration.test_bad_day import register; register({home!r}, {what!r})"
    return _result(_child(code, env))


# ------------------------------------------------------------------------------------------------ the servers


@dataclass
class Servers:
    home: Path
    env: dict
    logs: Path
    predictor: str  # http://127.0.0.1:port
    predictor_grpc: str
    transformer: str
    transformer_grpc: str
    small: str  # the predictor following SMALL
    small_log: Path


@pytest.fixture(scope="module")
def servers(tmp_path_factory: pytest.TempPathFactory):
    tmp = tmp_path_factory.mktemp("bad-day")
    home = tmp / "home"
    env = {
        **os.environ,
        "STREAMFLOW_HOME": str(home),
        "STREAMFLOW_DB_URL": "",
        "STREAMFLOW_MLFLOW_TRACKING_URI": "",
        "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false",
        "STREAMFLOW_LOG_LEVEL": "INFO",
        # MLflow's default (a local `streamflow serve` has no chart env): refusing a crafted model is the
        # predictor's own loader's job, not this flag's
        "MLFLOW_ALLOW_PICKLE_DESERIALIZATION": "true",
    }
    seeding = _child(f"from tests.integration.test_bad_day import seed_store; seed_store({str(home)!r})", env)
    registered(str(home), env, "churn")  # one after the other: both create the registry's SQLite tables
    registered(str(home), env, "small")
    _result(seeding)
    subprocess.run(  # the SMALL alias, as `streamflow promote` would move it
        [sys.executable, "-c", "from mlflow import MlflowClient; import sys; u = sys.argv[1];"
         f" MlflowClient(tracking_uri=u, registry_uri=u).set_registered_model_alias({SMALL!r}, 'production', '1')",
         f"sqlite:///{home / 'mlflow.db'}"],
        env=env, check=True, timeout=120,
    )  # fmt: skip
    logs = tmp / "logs"
    logs.mkdir()
    ports = {k: free_port() for k in ("ph", "pg", "th", "tg", "sh", "sg")}
    started = [
        _server("model_server.predictor", env, logs / "predictor.log",
                "--http_port", str(ports["ph"]), "--grpc_port", str(ports["pg"])),
        _server("model_server.transformer", env, logs / "transformer.log",
                "--http_port", str(ports["th"]), "--grpc_port", str(ports["tg"]),
                "--predictor_host", f"127.0.0.1:{ports['ph']}", "--max_batch_size", str(USERS)),
        _server("model_server.predictor", env, logs / "small.log",
                "--http_port", str(ports["sh"]), "--grpc_port", str(ports["sg"]),
                "--registered_model", SMALL, "--poll_seconds", str(POLL)),
    ]  # fmt: skip
    try:
        for proc, port, what in zip(started, ("ph", "th", "sh"), ("predictor", "transformer", "small"), strict=True):
            wait_http(f"http://127.0.0.1:{ports[port]}/v2/health/ready", proc, timeout=180, what=what)
        yield Servers(
            home, env, logs,
            f"http://127.0.0.1:{ports['ph']}", f"127.0.0.1:{ports['pg']}",
            f"http://127.0.0.1:{ports['th']}", f"127.0.0.1:{ports['tg']}",
            f"http://127.0.0.1:{ports['sh']}", logs / "small.log",
        )  # fmt: skip
        for proc in started:
            assert proc.poll() is None, "a server exited during the tests"
    finally:
        for proc in started:
            stop_group(proc)


def json_post(url: str, body) -> tuple[int, dict]:
    return post(url, body, {"Content-Type": "application/json"})


def feature_batch(n: int, **override: float) -> dict:
    """``n`` rows of feature tensors for the churn predictor, one tensor per feature (``override``: a value for
    every row of a numeric feature)."""
    from tests.unit.test_churn_model import frame

    rows = frame(n, seed=5)
    inputs = []
    for name in FEATURES:
        if name == "net_service":
            inputs.append({"name": name, "datatype": "BYTES", "shape": [n], "data": rows[name].tolist()})
            continue
        values = [None if v is None else float(v) for v in rows[name].astype(object)]
        if name in override:
            values = [override[name]] * n
        data = ["NaN" if v is None else ("Infinity" if v == float("inf") else v) for v in values]
        inputs.append({"name": name, "datatype": "FP64", "shape": [n], "data": data})
    return {"inputs": inputs}


def small_request() -> dict:
    return {
        "inputs": [
            {"name": "a", "datatype": "FP64", "shape": [1], "data": [0.5]},
            {"name": "b", "datatype": "FP64", "shape": [1], "data": [1.0]},
        ]
    }


def served_version(base: str) -> str:
    status, body = json_post(f"{base}/v2/models/{MODEL}/infer", small_request())
    assert status == 200, body
    return body["model_version"]


def set_alias(servers: Servers, version: str) -> None:
    from mlflow import MlflowClient

    uri = f"sqlite:///{servers.home / 'mlflow.db'}"
    MlflowClient(tracking_uri=uri, registry_uri=uri).set_registered_model_alias(SMALL, "production", version)


def wait_for(check: Callable[[], bool], what: str, log: Path, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"{what} not within {timeout:.0f} s; log: {log.read_text()[-3000:]}"
        time.sleep(0.1)


# ------------------------------------------------------------------------------------------------ event loop


def race(big: Callable[[], tuple[int, dict]], small: dict[str, Callable[[], tuple[int, dict]]]) -> list[str]:
    """Send ``big``, then (once it is in flight) every ``small`` request at once; the names in order of completion.

    Fails when ``big`` was answered before the small ones were sent: the race would prove nothing."""
    done: list[tuple[float, str, int, object]] = []

    def run(name: str, call) -> None:
        status, body = call()
        done.append((time.monotonic(), name, status, body))

    first = threading.Thread(target=run, args=("big", big))
    first.start()
    time.sleep(0.15)  # the 10,000 rows are sent (a few 100 kB on loopback) and their work has begun
    sent = time.monotonic()
    others = [threading.Thread(target=run, args=item) for item in small.items()]
    for thread in others:
        thread.start()
    for thread in [first, *others]:
        thread.join(timeout=120)
    assert len(done) == 1 + len(small), done
    statuses = {name: status for _, name, status, _ in done}
    assert set(statuses.values()) == {200}, [(n, s, str(b)[:300]) for _, n, s, b in done]
    finished = {name: at for at, name, _, _ in done}
    assert finished["big"] > sent, "the big batch was answered before the others were sent: make it bigger"
    return [name for _, name, _, _ in sorted(done, key=lambda d: d[0])]


def test_a_big_batch_in_the_transformer_holds_up_neither_probes_nor_small_requests(servers: Servers) -> None:
    ids = user_ids()
    url = f"{servers.transformer}/v2/models/{MODEL}/infer"
    assert json_post(url, v2(ids[:5]))[0] == 200  # warm: the first request opens the store's connection
    order = race(
        lambda: json_post(url, v2(ids)),
        {
            "ready": lambda: get(f"{servers.transformer}/v2/health/ready"),
            "one user": lambda: json_post(url, v2(ids[:1])),
        },
    )
    assert order[-1] == "big", order


def test_the_transformer_answers_a_probe_while_a_lookup_waits_for_the_store(servers: Servers) -> None:
    """The transformer's own read, isolated from the predictor: while a lookup waits on a store a writer holds
    (SQLite's busy wait, seconds), the readiness probe is answered at once, not after the lookup gives up."""
    url = f"{servers.transformer}/v2/models/{MODEL}/infer"
    done: dict[str, float] = {}

    def lookup() -> None:
        json_post(url, v2(user_ids()[:1]))
        done["lookup"] = time.monotonic()

    writer = sqlite3.connect(servers.home / "feast" / "online_store.db", timeout=30)
    try:
        writer.execute("BEGIN EXCLUSIVE")
        waiting = threading.Thread(target=lookup)
        waiting.start()
        time.sleep(0.3)
        status, _ = get(f"{servers.transformer}/v2/health/ready")
        done["probe"] = time.monotonic()
        assert status == 200
        assert "lookup" not in done, "the probe was answered only once the lookup was over (or the store not held)"
    finally:
        writer.rollback()
        writer.close()
    waiting.join(timeout=60)
    assert done["probe"] < done["lookup"], done


def test_a_big_batch_in_the_predictor_holds_up_neither_probes_nor_small_requests(servers: Servers) -> None:
    url = f"{servers.predictor}/v2/models/{MODEL}/infer"
    big, one = json.dumps(feature_batch(USERS)), json.dumps(feature_batch(1))
    assert json_post(url, one)[0] == 200
    order = race(
        lambda: json_post(url, big),
        {"ready": lambda: get(f"{servers.predictor}/v2/health/ready"), "one row": lambda: json_post(url, one)},
    )
    assert order[-1] == "big", order


# ------------------------------------------------------------------------------------------------ model loading


def test_a_version_whose_download_fails_is_served_once_readable_without_the_alias_moving(servers: Servers) -> None:
    before = served_version(servers.small)
    new = registered(str(servers.home), servers.env, "small")
    folder = Path(new["artifacts"])
    away = folder.with_name(folder.name + ".away")
    failures = metric(servers.small, "streamflow_model_load_failures_total") or 0
    folder.rename(away)  # the artifact store cannot hand the version over for a moment
    try:
        set_alias(servers, new["version"])
        wait_for(
            lambda: (metric(servers.small, "streamflow_model_load_failures_total") or 0) > failures,
            "a failed load counted", servers.small_log,
        )  # fmt: skip
        assert metric(servers.small, "streamflow_model_version_pending") == float(new["version"])
        assert served_version(servers.small) == before
    finally:
        away.rename(folder)
    wait_for(lambda: served_version(servers.small) == new["version"], "the version served", servers.small_log)
    assert metric(servers.small, "streamflow_model_version_pending") == 0
    assert metric(servers.small, "streamflow_model_info", version=new["version"]) == 1
    text = servers.small_log.read_text()
    assert f"version {new['version']} of {SMALL} could not be loaded" in text and "retrying" in text, text


@pytest.mark.parametrize("kind", ["untrusted", "pickle"])
def test_a_version_that_could_run_code_is_refused_and_the_previous_keeps_serving(servers: Servers, kind: str) -> None:
    before = served_version(servers.small)
    failed = metric(servers.small, "streamflow_model_reloads_total", result="failed") or 0
    new = registered(str(servers.home), servers.env, kind)
    set_alias(servers, new["version"])
    try:
        text = wait_log(servers.small_log, f"version {new['version']} of {SMALL} was refused", _Alive(servers))
        wanted = "_operator.pos" if kind == "untrusted" else "'pickle'"
        line = next(line for line in text.splitlines() if f"version {new['version']} of {SMALL} was refused" in line)
        assert wanted in line and f"still serving {before}" in line, line
        assert metric(servers.small, "streamflow_model_reloads_total", result="failed") == failed + 1
        assert metric(servers.small, "streamflow_model_version_pending") == float(new["version"])
        time.sleep(3 * POLL)  # not retried: it is refused once, and the previous version answers all along
        assert served_version(servers.small) == before
        assert servers.small_log.read_text().count(f"version {new['version']} of {SMALL} was refused") == 1
        assert metric(servers.small, "streamflow_model_info", version=before) == 1
    finally:
        set_alias(servers, before)  # the next test starts from a served version


class _Alive:
    """What wait_log polls: the small predictor is a process of the fixture, alive while it answers."""

    def __init__(self, servers: Servers) -> None:
        self.servers = servers

    def poll(self):
        return None if get(f"{self.servers.small}/v2/health/live")[0] == 200 else 1


def test_the_loader_trusts_only_the_projects_list_and_works_under_the_pods_pickle_flag(tmp_path, monkeypatch) -> None:
    """What the chart sets on serving pods (MLFLOW_ALLOW_PICKLE_DESERIALIZATION=false) blocks MLflow's own loader,
    skops included; the predictor's loader reads a skops model anyway, trusting the project's list only — the
    list every model kind `streamflow train` saves needs."""
    import mlflow
    import numpy as np
    import pandas as pd
    from sklearn.linear_model import LogisticRegression

    from model_server.churn_model import TRUSTED_TYPES, load_pipeline
    from pipelines.train import SKOPS_TRUSTED

    assert {t for kind in SKOPS_TRUSTED.values() for t in kind} <= set(TRUSTED_TYPES)
    features = pd.DataFrame({"a": np.arange(20.0), "b": np.arange(20.0) % 3})
    model = LogisticRegression().fit(features, (features.a > 9).astype(int))
    mlflow.sklearn.save_model(model, str(tmp_path / "m"), skops_trusted_types=SKOPS_TRUSTED["logreg"])
    monkeypatch.setenv("MLFLOW_ALLOW_PICKLE_DESERIALIZATION", "false")
    with pytest.raises(mlflow.exceptions.MlflowException, match="MLFLOW_ALLOW_PICKLE_DESERIALIZATION"):
        mlflow.sklearn.load_model(str(tmp_path / "m"))
    loaded = load_pipeline(str(tmp_path / "m"), mlflow.models.Model.load(str(tmp_path / "m")), "m")
    np.testing.assert_allclose(loaded.predict_proba(features), model.predict_proba(features))


# ------------------------------------------------------------------------------------------------ statuses


def grpc_user_ids(address: str, contents: list[bytes], raw: bool = False):
    """A gRPC ModelInfer with ``contents`` as the user_id tensor: typed ``bytes_contents``, or ``raw`` contents (each
    value a 4-byte little-endian length then its bytes, as KServe's clients send)."""
    import struct

    from kserve.protocol.grpc import grpc_predict_v2_pb2 as pb
    from kserve.protocol.grpc import grpc_predict_v2_pb2_grpc as pb_grpc

    tensor = pb.ModelInferRequest.InferInputTensor(name="user_id", datatype="BYTES", shape=[len(contents)])
    request = pb.ModelInferRequest(model_name=MODEL, inputs=[tensor])
    if raw:
        request.raw_input_contents.append(b"".join(struct.pack("<I", len(c)) + c for c in contents))
    else:
        tensor.contents.bytes_contents.extend(contents)
        request = pb.ModelInferRequest(model_name=MODEL, inputs=[tensor])
    with grpc.insecure_channel(address) as channel:
        return pb_grpc.GRPCInferenceServiceStub(channel).ModelInfer(request, timeout=60)


def grpc_code(call: Callable) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.RpcError) as err:
        call()
    return err.value.code(), err.value.details()


def test_a_locked_online_store_is_a_retryable_503_naming_the_lock(servers: Servers) -> None:
    user = user_ids()[7]
    calls = {
        "v2": lambda: json_post(f"{servers.transformer}/v2/models/{MODEL}/infer", v2([user])),
        "predict": lambda: json_post(f"{servers.transformer}/predict", {"user_id": user}),
        "features": lambda: get(f"{servers.transformer}/features/{user}"),
        "grpc": lambda: grpc_code(lambda: grpc_user_ids(servers.transformer_grpc, [user.encode()])),
    }
    answers: dict[str, tuple] = {}
    writer = sqlite3.connect(servers.home / "feast" / "online_store.db", timeout=30)
    try:
        writer.execute("BEGIN EXCLUSIVE")  # another writer holds the store (a materialization, a vacuum)
        threads = [threading.Thread(target=lambda k=k, c=c: answers.__setitem__(k, c())) for k, c in calls.items()]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=120)
    finally:
        writer.rollback()
        writer.close()
    for route in ("v2", "predict", "features"):
        status, body = answers[route]
        assert status == 503, (route, status, body)
        assert "online store could not be read (database is locked); retry later" in body["error"], (route, body)
        assert "Error" not in body["error"] and "Traceback" not in json.dumps(body), (route, body)
    code, details = answers["grpc"]
    assert code == grpc.StatusCode.UNAVAILABLE and "database is locked" in details, (code, details)
    # the lock gone, the same requests are answered
    assert calls["v2"]()[0] == 200 and calls["predict"]()[0] == 200 and calls["features"]()[0] == 200
    log = (servers.logs / "transformer.log").read_text()
    assert "Traceback" not in log, log[-3000:]
    assert metric(servers.transformer, "streamflow_requests_total", server="transformer", protocol="grpc",
                  status="UNAVAILABLE") >= 1  # fmt: skip


@pytest.mark.parametrize(
    ("method", "path", "body", "message"),
    [
        ("GET", "/features/%20", None, "is not a user id"),
        ("POST", "/predict", '{"user_id": "\\ud800"}', "is not valid Unicode text"),
        ("POST", f"/v2/models/{MODEL}/infer", '{"inputs": [{"name": "user_id", "datatype": "BYTES", '
         '"shape": [1], "data": ["\\ud800"]}]}', "malformed request: "),  # pydantic's JSON parser names the column
    ],
    ids=["blank-feature-id", "lone-surrogate-predict", "lone-surrogate-v2"],
)  # fmt: skip
def test_malformed_user_ids_are_400_without_a_traceback(servers: Servers, method, path, body, message) -> None:
    url = f"{servers.transformer}{path}"
    log = servers.logs / "transformer.log"
    tracebacks = log.read_text().count("Traceback")
    status, answer = get(url) if method == "GET" else json_post(url, body)
    assert status == 400, (status, answer)
    assert message in answer["error"], answer
    assert log.read_text().count("Traceback") == tracebacks, log.read_text()[-3000:]


@pytest.mark.parametrize("raw", [False, True], ids=["bytes-contents", "raw-contents"])
def test_undecodable_grpc_user_id_bytes_are_invalid_argument(servers: Servers, raw: bool) -> None:
    code, details = grpc_code(lambda: grpc_user_ids(servers.transformer_grpc, [b"\xff\xfe-BADAY"], raw=raw))
    assert code == grpc.StatusCode.INVALID_ARGUMENT, (code, details)
    assert "user_id" in details and "UTF-8" in details, details


@pytest.mark.parametrize(
    ("feature", "value", "message"),
    [
        ("watch_hours_30d", float("inf"), "value inf at position 0 is not a finite number"),
        ("monthly_fee", 0.0, "value 0.0 at position 0 is out of range (the data contract says > 0)"),
        ("months_active", -3.0, "value -3.0 at position 0 is out of range (the data contract says >= 0)"),
        ("skips_7d", float("nan"), "NULL/NaN at position 0; this feature may not be NULL"),
    ],
)
def test_the_predictor_refuses_values_outside_the_data_contract(servers, feature: str, value, message: str) -> None:
    body = feature_batch(1, **{feature: value})
    if value != value:
        next(t for t in body["inputs"] if t["name"] == feature)["data"] = ["NaN"]
    status, answer = json_post(f"{servers.predictor}/v2/models/{MODEL}/infer", body)
    assert status == 400, answer
    assert answer["error"] == f"input {feature!r}: {message}", answer
    assert json_post(f"{servers.predictor}/v2/models/{MODEL}/infer", feature_batch(1))[0] == 200
