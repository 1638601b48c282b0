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
import secrets
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path

import pytest

from tests.chart.conftest import rendered
from tests.containers.engine import docker
from tests.containers.podspec import (
    ContainerSpec,
    containers,
    docker_run_args,
    parse_port_map,
    probe_command,
    wait_for_probe,
    workflow_steps,
)

pytestmark = [pytest.mark.containers, pytest.mark.integration]

SCENARIO = "external-postgres"
DB_PASSWORD = "ext/pw-0001"  # a '/' the URLs must carry percent-encoded
DB_HOST = "streamflow-external-pg"
EXTERNAL_DB = {
    "streamflow-external-db": {
        "streamflow-url": f"postgresql://streamflow:ext%2Fpw-0001@{DB_HOST}:5432/streamflow",
        "mlflow-url": f"postgresql://streamflow:ext%2Fpw-0001@{DB_HOST}:5432/mlflow",
    }
}
UNKNOWN_USER = "0000-NOONE"


@dataclass
class Tier:
    """The Docker network, volumes and containers of one run of the tier, and how to reach them."""

    project: str
    infra: str
    state: Path
    tag: str = field(default_factory=lambda: secrets.token_hex(4))
    names: list[str] = field(default_factory=list)
    specs: dict[str, ContainerSpec] = field(default_factory=dict)
    ports: dict[str, dict[int, int]] = field(default_factory=dict)

    @property
    def network(self) -> str:
        return f"sftier-{self.tag}"

    @property
    def volume_prefix(self) -> str:
        return f"sftier-{self.tag}-"

    def name(self, key: str) -> str:
        return f"sftier-{self.tag}-{key.replace(':', '-').replace('/', '-')}"

    def logs(self, name: str) -> str:
        done = docker("logs", "--tail", "60", name, check=False)
        return f"--- {name}'s own log ---\n{(done.stdout + done.stderr)[-6000:]}"

    def running(self, name: str) -> bool:
        done = docker("inspect", "--format", "{{.State.Running}}", name, check=False)
        return done.stdout.strip() == "true"

    def run(self, argv: list[str]) -> str:
        """Start a container from a ``docker run -d`` argv (labelled for clean-up); its name."""
        name = argv[argv.index("--name") + 1]
        argv = [*argv[:3], "--label", f"io.streamflow.tier={self.tag}", *argv[3:]]
        self.names.append(name)
        done = docker(*argv[1:], check=False, timeout=120)
        assert done.returncode == 0, f"{name} could not start: {done.stderr.strip()}\n{self.logs(name)}"
        return name

    def start(self, spec: ContainerSpec, publish=(), image: str | None = None, aliases: bool = True) -> str:
        """Run a chart container as rendered (the project image unless ``image``): its name."""
        name = self.name(spec.key)
        run_spec = spec if aliases else replace(spec, services=())
        argv = docker_run_args(
            run_spec,
            network=self.network,
            name=name,
            image_override=image or (self.project if spec.image.startswith("streamflow:") else None),
            publish=publish,
            state_dir=self.state,
            volume_prefix=self.volume_prefix,
        )
        self.run(argv)
        self.specs[name] = spec
        if publish:
            self.ports[name] = parse_port_map(docker("port", name).stdout)
        return name

    def infra_container(self, key: str, args: list[str], aliases=(), publish=(), env=None) -> str:
        name = self.name(key)
        argv = ["docker", "run", "-d", "--name", name, "--network", self.network]
        for alias in aliases:
            argv += ["--network-alias", alias]
        for port in publish:
            argv += ["-p", f"127.0.0.1::{port}"]
        for key_, value in (env or {}).items():
            argv += ["-e", f"{key_}={value}"]
        self.run([*argv, self.infra, *args])
        if publish:
            self.ports[name] = parse_port_map(docker("port", name).stdout)
        return name

    def step(self, spec: ContainerSpec, timeout: float = 900) -> str:
        """Run one workflow step to its end, as Argo would: its stdout; its own log in the failure message."""
        name = self.start(spec)
        done = docker("wait", name, timeout=timeout, check=False)
        code = done.stdout.strip()
        out = docker("logs", name, check=False)
        assert code == "0", f"step {spec.step} ({' '.join(spec.argv)}) exited {code or done.stderr}\n{self.logs(name)}"
        return out.stdout

    def url(self, name: str, port: int, path: str) -> str:
        return f"http://127.0.0.1:{self.ports[name][port]}{path}"

    def remove(self) -> None:
        for name in reversed(self.names):
            docker("rm", "-f", "-v", name, check=False, timeout=120)
        docker("network", "rm", self.network, check=False)
        volumes = docker("volume", "ls", "-q", "--filter", f"name={self.volume_prefix}", check=False).stdout.split()
        if volumes:
            docker("volume", "rm", "-f", *volumes, check=False)


def post(url: str, body: dict, timeout: float = 30) -> tuple[int, dict]:
    request = urllib.request.Request(
        url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}, method="POST"
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout) as answer:
            return answer.status, json.loads(answer.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read() or b"{}")


def v2(user_ids: list[str]) -> dict:
    return {"inputs": [{"name": "user_id", "datatype": "BYTES", "shape": [len(user_ids)], "data": user_ids}]}


def status(url: str, timeout: float = 5) -> int:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as answer:
            return answer.status
    except urllib.error.HTTPError as err:
        return err.code
    except (urllib.error.URLError, OSError):
        return 0


def smoke_users(chart: dict[str, ContainerSpec]) -> list[str]:
    """The user ids the chart's `helm test` pod asks about (real users of the generated first month)."""
    argv = chart["helm-test"].argv
    return [argv[i + 1] for i, word in enumerate(argv) if word == "--user-id"]


def json_line(stdout: str) -> dict:
    """A step's ``--json`` object: the last line of its stdout that parses as one."""
    for line in reversed(stdout.strip().splitlines()):
        try:
            found = json.loads(line)
        except ValueError:
            continue
        if isinstance(found, dict):
            return found
    raise AssertionError(f"no JSON object on the step's stdout: {stdout[-1500:]}")


# ------------------------------------------------------------------------------------------------ fixtures


@pytest.fixture(scope="module")
def chart() -> dict[str, ContainerSpec]:
    return containers(rendered(SCENARIO), secrets=EXTERNAL_DB)


@pytest.fixture(scope="module")
def tier(images, chart, tmp_path_factory) -> Iterator[Tier]:
    """The network, the external database and the Pushgateway; everything is removed at the end."""
    t = Tier(images["project"], images["infra"], tmp_path_factory.mktemp("tier"))
    docker("network", "create", "--label", f"io.streamflow.tier={t.tag}", t.network)
    try:
        db = t.infra_container(
            "external-pg", ["postgres"], [DB_HOST], publish=[5432], env={"POSTGRES_PASSWORD": DB_PASSWORD}
        )
        gateway = chart["pushgateway"]
        t.start(replace(gateway, command=("/usr/bin/prometheus-pushgateway",)), image=t.infra)
        wait_for_postgres(t, db)
        yield t
    finally:
        t.remove()


def wait_for_postgres(t: Tier, name: str) -> None:
    import psycopg2

    deadline = time.monotonic() + 60
    while True:
        try:
            psycopg2.connect(
                host="127.0.0.1", port=t.ports[name][5432], user="streamflow", password=DB_PASSWORD, dbname="mlflow"
            ).close()
            return
        except psycopg2.OperationalError as err:
            if time.monotonic() > deadline or not t.running(name):
                detail = f"{err}\n{t.logs(name)}"
                raise AssertionError(f"the tier's Postgres did not accept the chart's credentials: {detail}") from None
            time.sleep(0.5)


def wait_probe(t: Tier, name: str, kind: str, budget: float | None = None) -> bool:
    spec = t.specs[name]
    probe = spec.probes[kind]
    check = probe_command(probe, port_map=t.ports.get(name), container=name)
    return wait_for_probe(check, probe, budget_seconds=budget, alive=lambda: t.running(name))


def kserve_forwarder(t: Tier, spec: ContainerSpec, target: str) -> str:
    """A container carrying the spec's KServe Service names, forwarding each Service port to the pod's port (80 →
    8080, 8081 → 8081): what the Service does on a cluster."""
    args = ["forward"]
    for service in spec.services:
        for port in service.ports:
            args += [str(port.port), f"{target}:{port.target_port}"]
    return t.infra_container(f"{spec.key}-service", args, aliases=spec.network_aliases)


# ------------------------------------------------------------------------------------------------ the tier


def test_the_mlflow_server_runs_as_the_chart_specifies(tier: Tier, chart):
    name = tier.start(chart["mlflow"], publish=[5000])
    for kind in ("startup", "readiness", "liveness"):
        assert wait_probe(tier, name, kind, budget=180), f"mlflow {kind} probe failed\n{tier.logs(name)}"


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
        outputs[spec.step] = json_line(tier.step(spec))
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
    out = json_line(tier.step(monthly))
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
