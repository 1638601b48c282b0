"""The chart's pods run for real: the project image, built by a real Docker engine, answers the loop end to end.

The chart is rendered with ``ci/external-postgres-values.yaml`` and every container below runs from its rendered
spec (tests/containers/podspec.py: the chart's command, args, env, user, read-only root filesystem, volumes and
ports) on one Docker network this module creates, under the network aliases of the chart's Service names. The test
process reaches them only through ports published on 127.0.0.1.

What a cluster would provide and Docker cannot is stood in for by the tier's own infrastructure image
(tests/containers/infra), never shipped: Debian's PostgreSQL as the external database and Debian's Pushgateway in
the chart's pushgateway container (the upstream images cannot be pulled here), TCP forwarders carrying a KServe
Service's names (port 80 in front of the pod's 8080), and a stand-in for the InferenceGraph router's one Sequence
step (KServe's router image cannot be pulled either). Tests run in file order: each builds on the state the
previous left (the workflow steps fill the database the servers then read).
"""

from __future__ import annotations

import json
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator

import pytest

from tests.chart.conftest import rendered
from tests.containers.engine import docker
from tests.containers.podspec import ContainerSpec, containers, parse_port_map, probe_command, workflow_steps
from tests.containers.tier import (
    EXTERNAL_DB,
    SCENARIO,
    UNKNOWN_USER,
    Tier,
    kserve_forwarder,
    post,
    smoke_users,
    start_base,
    v2,
    wait_probe,
)
from tests.e2e.kind_e2e import parse_result

pytestmark = [pytest.mark.containers, pytest.mark.integration]


# ------------------------------------------------------------------------------------------------ fixtures


@pytest.fixture(scope="module")
def chart() -> dict[str, ContainerSpec]:
    return containers(rendered(SCENARIO), secrets=EXTERNAL_DB)


@pytest.fixture(scope="module")
def tier(images, chart, tmp_path_factory) -> Iterator[Tier]:
    """The network, the external database and the Pushgateway; everything is removed at the end."""
    t = Tier(images["project"], images["infra"], tmp_path_factory.mktemp("tier"))
    try:
        start_base(t, chart)
        yield t
    finally:
        t.remove()


# ------------------------------------------------------------------------------------------------ the tier


def test_the_mlflow_server_and_the_pushgateway_run_as_the_chart_specifies(tier: Tier, chart):
    name = tier.start(chart["mlflow"], publish=[5000])
    for kind in ("startup", "readiness", "liveness"):
        assert wait_probe(tier, name, kind, budget=180), f"mlflow {kind} probe failed\n{tier.logs(name)}"
    gateway = tier.name("pushgateway")  # Debian's binary in the chart's container: UID 65534, read-only root
    for kind in chart["pushgateway"].probes:
        assert wait_probe(tier, gateway, kind, budget=60), f"pushgateway {kind} probe failed\n{tier.logs(gateway)}"

    # a month's figures are pushed once: they survive a restart of the Pushgateway (its file on the chart's volume)
    assert [(m.path, m.kind) for m in chart["pushgateway"].mounts] == [("/data", "volume")]
    url = f"http://127.0.0.1:{tier.ports[gateway][9091]}"
    pushed = urllib.request.Request(f"{url}/metrics/job/streamflow_score/as_of/2024-01-31", method="PUT",
                                    data=b"streamflow_score_rows 7043\n")  # fmt: skip
    with urllib.request.urlopen(pushed, timeout=10) as answer:
        assert answer.status == 200
    docker("restart", gateway)  # SIGTERM: the Pushgateway writes its file on the way out
    tier.ports[gateway] = parse_port_map(docker("port", gateway).stdout)  # a restart publishes on a new host port
    url = f"http://127.0.0.1:{tier.ports[gateway][9091]}"
    assert wait_probe(tier, gateway, "readiness", budget=60), f"pushgateway not ready again\n{tier.logs(gateway)}"
    with urllib.request.urlopen(f"{url}/metrics", timeout=10) as answer:
        kept = answer.read().decode()
    assert 'streamflow_score_rows{as_of="2024-01-31",instance="",job="streamflow_score"} 7043' in kept, (
        f"{tier.logs(gateway)}\n{kept[-2000:]}")  # fmt: skip


def test_the_servers_start_unready_before_a_model_is_promoted(tier: Tier, chart):
    """Both servers start before the first workflow (a fresh install); the transformer names its predictor
    explicitly, so KServe adds nothing of its own; the predictor is live but not ready without a model."""
    predictor, transformer = chart["predictor:champion"], chart["transformer:champion"]
    args = transformer.argv
    assert args[args.index("--model_name") + 1] == "streamflow-churn"
    assert args[args.index("--predictor_host") + 1] == "streamflow-champion-predictor.streamflow"
    assert args[args.index("--http_port") + 1] == "8080"
    for spec in (predictor, transformer):
        assert spec.env["PROTOCOL"] == "v2" and spec.read_only_root and spec.user == 10001
        assert {p.container_port for p in spec.ports} == {8080, 8081}
    p = tier.start(predictor, publish=[8080, 8081], aliases=False)
    kserve_forwarder(tier, predictor, p)
    t = tier.start(transformer, publish=[8080, 8081], aliases=False)
    kserve_forwarder(tier, transformer, t)
    assert wait_probe(tier, p, "startup", budget=120), f"predictor never live\n{tier.logs(p)}"
    assert wait_probe(tier, t, "liveness", budget=120), f"transformer never live\n{tier.logs(t)}"
    ready = probe_command(predictor.probes["readiness"], port_map=tier.ports[p])
    assert not ready(), "the predictor says ready with no model in production"
    assert tier.running(p) and tier.running(t)


def test_the_bootstrap_workflow_steps_run_in_order(tier: Tier):
    """generate → ingest → snapshot → features apply → materialize → train → promote, each the template's container."""
    steps = workflow_steps(rendered(SCENARIO), "streamflow-bootstrap", secrets=EXTERNAL_DB)
    order = [s.argv[1:3] for s in steps]
    assert order == [
        ["data", "generate"], ["ingest", "/data/months/month_000"], ["snapshot", "--as-of"], ["features", "apply"],
        ["features", "materialize"], ["train", "--as-of"], ["promote", "--json"],
    ]  # fmt: skip
    outputs = {}
    for spec in steps:
        assert spec.read_only_root and spec.user == 10001
        outputs[spec.step] = parse_result(tier.step(spec), spec.step)
    promoted = outputs["main/train/promote"]
    assert promoted["decision"] == "promoted" and promoted["production_version"] == "1", promoted


def test_the_predictor_picks_up_the_model_and_the_transformer_answers(tier: Tier, chart):
    p, t = tier.name("predictor:champion"), tier.name("transformer:champion")
    poll = float(chart["predictor:champion"].env["STREAMFLOW_MODEL_POLL_SECONDS"])
    assert wait_probe(tier, p, "readiness", budget=poll * 3 + 60), f"predictor never ready\n{tier.logs(p)}"
    assert wait_probe(tier, t, "readiness", budget=60), f"transformer never ready\n{tier.logs(t)}"
    for name in (p, t):  # every rendered probe, once more, within its own timeout
        for kind, probe in tier.specs[name].probes.items():
            assert probe_command(probe, port_map=tier.ports[name])(), f"{name} {kind} probe failed\n{tier.logs(name)}"
    users = smoke_users(chart)
    code, body = post(tier.url(t, 8080, "/v2/models/streamflow-churn/infer"), v2(users))
    assert code == 200, f"{code} {body}\n{tier.logs(t)}\n{tier.logs(p)}"
    outputs = {o["name"]: o["data"] for o in body["outputs"]}
    assert len(outputs["churn_probability"]) == len(users) and all(0 <= x <= 1 for x in outputs["churn_probability"])
    assert str(body.get("model_version") or body["parameters"]["model_version"]) == "1"
    code, body = post(tier.url(t, 8080, "/v2/models/streamflow-churn/infer"), v2([UNKNOWN_USER]))
    assert code == 422 and UNKNOWN_USER in json.dumps(body) and "missing_features" in json.dumps(body), (code, body)


def test_the_helm_test_pod_passes_through_the_graph(tier: Tier, chart):
    """The chart's `helm test` pod, its own command, against the graph's Service name (a stand-in for KServe's
    router: POST / → the champion's transformer)."""
    spec = chart["helm-test"]
    url = spec.argv[spec.argv.index("--url") + 1]
    graph = url.split("//", 1)[1].split("/", 1)[0]
    target = "http://streamflow-champion-transformer.streamflow/v2/models/streamflow-churn/infer"
    tier.infra_container("graph-router", ["router", "80", target], aliases=[graph, graph.split(".")[0]])
    name = tier.start(spec)
    code = docker("wait", name, timeout=180).stdout.strip()
    assert code == "0", f"helm test failed\n{tier.logs(name)}"


def test_a_drifted_month_retrains_and_the_running_predictor_serves_the_new_version(tier: Tier, chart):
    p, t = tier.name("predictor:champion"), tier.name("transformer:champion")
    started = docker("inspect", "--format", "{{.State.StartedAt}} {{.RestartCount}}", p).stdout.strip()
    (monthly,) = workflow_steps(rendered(SCENARIO), "streamflow-monthly", secrets=EXTERNAL_DB)
    out = parse_result(tier.step(monthly), monthly.step)
    assert out["decision"] == "RETRAIN" and out["production_version"] == "2", out
    users = smoke_users(chart)
    poll = float(chart["predictor:champion"].env["STREAMFLOW_MODEL_POLL_SECONDS"])
    deadline = time.monotonic() + poll * 3 + 30
    version = None
    while time.monotonic() < deadline:
        code, body = post(tier.url(t, 8080, "/v2/models/streamflow-churn/infer"), v2(users))
        version = str(body.get("model_version") or (body.get("parameters") or {}).get("model_version"))
        if code == 200 and version == "2":
            break
        time.sleep(1)
    assert version == "2", f"still version {version} after the promotion\n{tier.logs(p)}"
    after = docker("inspect", "--format", "{{.State.StartedAt}} {{.RestartCount}}", p).stdout.strip()
    assert after == started, "the predictor was restarted: a promotion must not need one"


def test_docker_stop_under_load_lets_accepted_requests_finish(tier: Tier, chart):
    """SIGTERM (docker stop) on the transformer while 4 clients send requests: every request sent before the signal
    is answered 200; after it, new connections are refused (counted, not failures)."""
    t = tier.name("transformer:champion")
    url = tier.url(t, 8080, "/v2/models/streamflow-churn/infer")
    users = smoke_users(chart)
    signalled = threading.Event()
    results: list[tuple[bool, int | str]] = []  # (sent before the signal, status or error)
    lock = threading.Lock()

    def client() -> None:
        for _ in range(2000):  # bounded
            before = not signalled.is_set()
            try:
                code, _ = post(url, v2(users), timeout=30)
                outcome: int | str = code
            except (urllib.error.URLError, OSError) as err:
                outcome = type(err).__name__
            with lock:
                results.append((before, outcome))
            if signalled.is_set() and outcome != 200:
                return

    clients = [threading.Thread(target=client) for _ in range(4)]
    for c in clients:
        c.start()
    time.sleep(2)
    signalled.set()
    docker("stop", "-t", "30", t, timeout=60)
    for c in clients:
        c.join(timeout=60)
    before = [outcome for sent_before, outcome in results if sent_before]
    assert len(before) > 20, f"too little load to mean anything: {len(before)} requests"
    failed = [o for o in before if o != 200]
    assert failed == [], f"{len(failed)} of {len(before)} requests accepted before SIGTERM failed: {failed[:5]}"
