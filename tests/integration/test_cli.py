"""The `streamflow` CLI contract, run as a real process: one JSON object with --json, exit codes 0 / 2 / 1,
and a kill in the middle of a month's transaction leaves the previous state."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from pipelines.config import Settings
from pipelines.db import connect
from tests.integration.test_ingest import JAN, assert_same_state, dump

pytestmark = pytest.mark.integration

STREAMFLOW = str(Path(sys.executable).parent / "streamflow")


def run(
    home: Path, *args: str, db_url: str = "", check: bool = False, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess:
    env = {**os.environ, "STREAMFLOW_HOME": str(home), "STREAMFLOW_DB_URL": db_url, **(env or {})}
    proc = subprocess.run([STREAMFLOW, *args], env=env, capture_output=True, text=True, timeout=300)
    if check:
        assert proc.returncode == 0, proc.stderr
    return proc


def one_json(proc: subprocess.CompletedProcess) -> dict:
    lines = [ln for ln in proc.stdout.splitlines() if ln.strip()]
    assert len(lines) == 1, proc.stdout
    return json.loads(lines[0])


@pytest.mark.parametrize("backend", ["embedded", "postgres"])
def test_generate_ingest_snapshot_status_with_json(
    backend: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    db_url = request.getfixturevalue("postgres_url") if backend == "postgres" else ""
    home = tmp_path / "home"
    gen = one_json(
        run(home, "data", "generate", "--out", str(tmp_path / "data"), "--users", "250", "--json", check=True)
    )
    assert [m["as_of"] for m in gen["months"]] == ["2024-01-31", "2024-02-29"]

    ingested = one_json(run(home, "ingest", str(tmp_path / "data" / "month_000"), "--json", db_url=db_url, check=True))
    assert ingested["as_of"] == "2024-01-31" and ingested["quarantined"] == 0
    assert ingested["tables"]["users"] == {"input": 250, "loaded": 250, "quarantined": 0}

    snap = one_json(run(home, "snapshot", "--as-of", "2024-01-31", "--json", db_url=db_url, check=True))
    assert snap["rows"]["subscriptions_profile_snapshots"] == 250

    status = one_json(run(home, "status", "--json", db_url=db_url, check=True))
    assert status["months"] == ["2024-01-31"]
    assert status["snapshots"]["usage_agg_30d_snapshots"] == {"2024-01-31": 250}

    human = run(home, "status", db_url=db_url, check=True)
    assert "subscriptions_profile_snapshots" in human.stdout and "250" in human.stdout

    applied = one_json(run(home, "features", "apply", "--json", db_url=db_url, check=True))
    assert applied["feature_services"] == ["churn_features"] and applied["feature_count"] == 14
    materialized = one_json(
        run(home, "features", "materialize", "--as-of", "2024-01-31", "--json", db_url=db_url, check=True)
    )
    assert materialized["skipped"] is None and len(materialized["feature_views"]) == 4
    dataset = one_json(run(home, "dataset", "build", "--as-of", "2024-01-31", "--json", db_url=db_url, check=True))
    assert dataset["rows"] == 250 and 0 < dataset["label_rate"] < 1


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["ingest", "{tmp}/nowhere"], "not a folder"),
        (["ingest", "{tmp}"], "not a month folder: none of users.csv"),
        (["ingest", "{tmp}/data/month_000", "--as-of", "31/01/2024"], "as_of '31/01/2024' is not a date"),
        (["snapshot", "--as-of", "2024-02-29"], "no ingested month has as_of 2024-02-29"),
        (["snapshot", "--as-of", "soon"], "as_of 'soon' is not a date"),
        (["dataset", "build", "--as-of", "2024-01-31"], "no snapshot for as_of 2024-01-31"),
        (["features", "materialize", "--as-of", "2024-13-01"], "as_of '2024-13-01' is not a date"),
        (["data", "generate", "--out", "{tmp}/x", "--drift", "colour=0.3"], "colour"),
        (["smoke", "--url", "localhost:8080", "--user-id", "x"], "expected http://host[:port][/path]"),  # [markup]
    ],
)
def test_bad_input_exits_2_with_one_json_error(args: list[str], message: str, tmp_path: Path) -> None:
    (tmp_path / "data" / "month_000").mkdir(parents=True)
    argv = [a.format(tmp=tmp_path) for a in args]
    proc = run(tmp_path / "home", *argv, "--json")
    assert proc.returncode == 2, (proc.stdout, proc.stderr)
    err = one_json(proc)
    assert err["ok"] is False and message in err["error"]
    assert message in proc.stderr.replace("\n", "")


def test_unreachable_postgres_exits_1(tmp_path: Path) -> None:
    from tests.conftest import free_port

    proc = run(tmp_path, "status", "--json", db_url=f"postgresql://u:secret@127.0.0.1:{free_port()}/x")
    assert proc.returncode == 1
    err = one_json(proc)
    assert "cannot connect to Postgres" in err["error"] and "secret" not in err["error"]


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["embedded", "postgres"])
def test_kill_in_the_middle_of_a_month_leaves_the_previous_state(
    backend: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    from pipelines.generate import generate

    db_url = request.getfixturevalue("postgres_url") if backend == "postgres" else ""
    home = tmp_path / "home"
    small, big = tmp_path / "small", tmp_path / "big"
    generate(small, users=300, months=1, seed=1)
    generate(big, users=150_000, months=2, seed=2)
    run(home, "ingest", str(small / "month_000"), db_url=db_url, check=True)
    run(home, "snapshot", "--as-of", "2024-01-31", db_url=db_url, check=True)
    settings = Settings(home=home, db_url=db_url or None)
    db = connect(settings)
    before = dump(db)
    db.close()

    env = {
        **os.environ,
        "STREAMFLOW_HOME": str(home),
        "STREAMFLOW_DB_URL": db_url,
        "STREAMFLOW_LOG_LEVEL": "INFO",
    }
    proc = subprocess.Popen(
        [STREAMFLOW, "ingest", str(big / "month_001")],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    seen = []
    for line in proc.stderr:  # wait until the first table is written inside the open transaction
        seen.append(line)
        if "wrote users" in line:
            proc.send_signal(signal.SIGKILL)
            break
    proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL, "".join(seen)
    assert not any(line.rstrip().endswith(": committed") for line in seen)

    db = connect(settings)
    try:
        assert_same_state(before, dump(db))
        assert db.months() == [JAN]
    finally:
        db.close()
    # and the store still works: the same month ingests cleanly afterwards
    run(home, "ingest", str(small / "month_000"), db_url=db_url, check=True)


@pytest.mark.slow  # two whole months through the CLI (train, drift, retrain): ~50 s
def test_monthly_next_runs_the_oldest_month_not_ingested_then_says_nothing_to_do(tmp_path: Path) -> None:
    """What the monthly CronWorkflow runs, with fixed arguments: `monthly --next DATA_DIR` picks month_000 (the
    first model), then month_001, then changes nothing and exits 0 with decision NONE."""
    from pipelines.generate import generate

    home, data = tmp_path / "home", tmp_path / "data"
    generate(data, users=300, months=2, seed=5)
    (data / "notes").mkdir()  # not a month folder: ignored
    first = one_json(run(home, "monthly", "--next", str(data), "--json", check=True))
    assert (first["ok"], first["month_dir"], first["as_of"]) == (True, str(data / "month_000"), "2024-01-31")
    assert first["decision"] == "BOOTSTRAP" and first["production_version"] == "1"
    second = one_json(run(home, "monthly", "--next", str(data), "--json", check=True))
    assert (second["month_dir"], second["as_of"]) == (str(data / "month_001"), "2024-02-29")
    assert second["decision"] in ("NO_ACTION", "RETRAIN")
    line = f"nothing to do: every month folder under {data} is ingested (latest month_001, as_of 2024-02-29)"
    assert one_json(run(home, "monthly", "--next", str(data), "--json", check=True)) == {
        "ok": True, "decision": "NONE", "month_dir": None, "as_of": None, "reasons": [line],
        "data_dir": str(data), "latest_month_dir": str(data / "month_001"), "latest_as_of": "2024-02-29",
    }  # fmt: skip
    human = run(home, "monthly", "--next", str(data), check=True)
    assert line in human.stdout.replace("\n", "")
    status = one_json(run(home, "status", "--json", check=True))
    assert status["months"] == ["2024-01-31", "2024-02-29"]


def test_monthly_next_takes_a_month_whose_run_died_again(tmp_path: Path) -> None:
    """A run that stored the month and then failed (MLflow unreachable) did not finish it: the next `--next` (an Argo
    retry, or the next schedule) takes the same month again instead of skipping to the one after it."""
    from pipelines.generate import generate
    from tests.conftest import free_port

    home, data = tmp_path / "home", tmp_path / "data"
    generate(data, users=300, months=2, seed=5)
    nowhere = {"STREAMFLOW_MLFLOW_TRACKING_URI": f"http://127.0.0.1:{free_port()}"}
    died = run(home, "monthly", "--next", str(data), "--json", env=nowhere)
    assert died.returncode == 1, died.stdout + died.stderr
    status = one_json(run(home, "status", "--json", check=True))
    assert status["months"] == ["2024-01-31"]  # month_000 was ingested before MLflow was needed
    again = one_json(run(home, "monthly", "--next", str(data), "--json", check=True))
    assert (again["month_dir"], again["decision"]) == (str(data / "month_000"), "BOOTSTRAP")


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ([], "give a month folder (streamflow monthly MONTH_DIR) or --next DATA_DIR, not both"),
        (["{tmp}/data/month_000", "--next", "{tmp}/data"], "or --next DATA_DIR, not both"),
        (["--next", "{tmp}/nowhere"], "--next {tmp}/nowhere: not a folder"),
        (["--next", "{tmp}/data/month_000"], "--next {tmp}/data/month_000: no month_NNN folder in it"),
    ],
    ids=["neither", "both", "missing-dir", "no-month-folders"],
)
def test_monthly_needs_exactly_one_of_month_dir_and_next(args: list[str], message: str, tmp_path: Path) -> None:
    (tmp_path / "data" / "month_000").mkdir(parents=True)
    proc = run(tmp_path / "home", "monthly", *(a.format(tmp=tmp_path) for a in args), "--json")
    assert proc.returncode == 2, (proc.stdout, proc.stderr)
    assert message.format(tmp=tmp_path) in one_json(proc)["error"]


@pytest.mark.slow
def test_demo_ends_with_a_v2_answer_and_serve_keeps_both_servers_up(tmp_path: Path) -> None:
    """`streamflow demo` runs the loop — first model, a calm month, a drifted month retrained and promoted — with
    real v2 requests before and after; `streamflow serve` then serves the same state until SIGTERM stops it and both
    servers with it. Free ports: the defaults may be taken on a shared machine."""
    import urllib.request

    from tests.conftest import free_port

    ports = {
        f"STREAMFLOW_{name}_PORT": str(free_port())
        for name in ("TRANSFORMER_HTTP", "TRANSFORMER_GRPC", "PREDICTOR_HTTP", "PREDICTOR_GRPC")
    }
    env = {**os.environ, "STREAMFLOW_HOME": str(tmp_path / "home"), "STREAMFLOW_DB_URL": "", **ports}
    proc = subprocess.run([STREAMFLOW, "demo", "--users", "400", "--json"], env=env, capture_output=True, text=True,
                          timeout=600)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    state = one_json(proc)
    assert [m["decision"] for m in state["months_run"]] == ["BOOTSTRAP", "NO_ACTION", "RETRAIN"]
    assert [m["production_version"] for m in state["months_run"]] == ["1", "1", "2"]
    assert state["months_run"][2]["retrain"]["gate"]["decision"] == "promoted"
    served = state["serve"]
    answer = {o["name"]: o["data"] for o in served["response"]["outputs"]}
    assert answer["user_id"] == served["request_user_ids"] and len(answer["user_id"]) == 3
    assert all(0.0 <= p <= 1.0 for p in answer["churn_probability"]) and set(answer["churn_label"]) <= {0, 1}
    # the same running servers answered from version 1, then from version 2 once it was promoted
    assert served["before"]["model_version"] == "1" and served["response"]["model_version"] == "2"
    assert f"localhost:{ports['STREAMFLOW_TRANSFORMER_HTTP_PORT']}/v2/models/streamflow-churn/infer" in served["curl"]

    serve = subprocess.Popen([STREAMFLOW, "serve", "--json"], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             text=True, start_new_session=True)  # fmt: skip
    try:
        ready = json.loads(serve.stdout.readline())
        with urllib.request.urlopen(f"{ready['transformer']}/health", timeout=10) as resp:
            assert json.loads(resp.read())["status"] == "ok"
        body = json.dumps(
            {"inputs": [{"name": "user_id", "datatype": "BYTES", "shape": [1], "data": answer["user_id"][:1]}]}
        ).encode()
        url = f"{ready['transformer']}/v2/models/streamflow-churn/infer"
        with urllib.request.urlopen(urllib.request.Request(url, data=body, method="POST"), timeout=30) as resp:
            again = {o["name"]: o["data"] for o in json.loads(resp.read())["outputs"]}
        assert again["churn_probability"][0] == pytest.approx(answer["churn_probability"][0], abs=1e-7)
        serve.send_signal(signal.SIGTERM)
        assert serve.wait(timeout=60) == 0
        assert serve.stdout.read().strip() == ""  # exactly one JSON object, printed when ready
        for pid in ready["pids"].values():
            with pytest.raises(ProcessLookupError):
                os.kill(pid, 0)
    finally:
        if serve.poll() is None:
            os.killpg(serve.pid, signal.SIGKILL)


def test_serve_refuses_to_start_without_a_model_and_the_transformer_waits_for_its_feature_store(
    tmp_path: Path,
) -> None:
    """`streamflow serve` with nothing to serve is a one-line error and a non-zero exit. The transformer module (a
    pod's entrypoint) starts before the first workflow on a fresh install, as the predictor does: live, not ready,
    every request a 503 naming what to run, instead of exiting into a restart loop. (It turning ready once the
    store opens runs for real in the container tier, tests/containers/test_tier.py.)"""
    import urllib.error
    import urllib.request

    from tests.conftest import free_port, stop_group, wait_http

    env = {**os.environ, "STREAMFLOW_HOME": str(tmp_path / "home"), "STREAMFLOW_DB_URL": ""}
    serve = run(tmp_path / "home", "serve", "--json")
    assert serve.returncode == 2
    assert "no streamflow_churn@production yet: nothing to serve" in one_json(serve)["error"]
    port = free_port()
    transformer = subprocess.Popen(
        [sys.executable, "-m", "model_server.transformer", "--http_port", str(port), "--grpc_port", str(free_port())],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, start_new_session=True,
    )  # fmt: skip
    try:
        wait_http(f"http://127.0.0.1:{port}/v2/health/live", transformer, what="transformer")

        def status(path: str, body: bytes | None = None) -> tuple[int, str]:
            url = f"http://127.0.0.1:{port}{path}"
            request = urllib.request.Request(url, data=body, method="POST" if body else "GET")
            try:
                with urllib.request.urlopen(request, timeout=10) as answer:
                    return answer.status, answer.read().decode()
            except urllib.error.HTTPError as err:
                return err.code, err.read().decode()

        assert status("/v2/health/ready")[0] == 503
        v2 = json.dumps({"inputs": [{"name": "user_id", "datatype": "BYTES", "shape": [1], "data": ["a"]}]})
        code, text = status("/v2/models/streamflow-churn/infer", v2.encode())
        assert code == 503 and "not ready" in text, text  # KServe's ModelNotReady, as the predictor's
        code, text = status("/features/a")
        assert code == 503 and "feature store is not open yet" in text and "streamflow features apply" in text, text
        assert transformer.poll() is None
    finally:
        stop_group(transformer)
    err = transformer.stderr.read()
    assert err.count("waiting for the feature store") == 1, err[-2000:]
