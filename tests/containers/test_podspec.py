"""The rendered chart's pods as ``docker run`` invocations (tests/containers/podspec.py), checked offline.

Nothing runs in Docker here: the real Helm engine renders the chart (default values, every ``ci/*-values.yaml``,
and an upgrade render for the migration Job) and every container becomes a spec and an exact argv, which these
tests read. The container tier runs the same specs for real.
"""

from __future__ import annotations

import base64
import copy
import http.server
import re
import socket
import stat
import threading
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from pipelines.config import Settings
from tests.chart.conftest import NAMESPACE, SCENARIOS, render, rendered, values_of
from tests.chart.test_security import all_containers
from tests.containers.podspec import (
    ContainerSpec,
    PodSpecError,
    Probe,
    containers,
    docker_run_args,
    parse_port_map,
    probe_command,
    quantity,
    wait_for_probe,
    workflow_steps,
)

pytestmark = pytest.mark.chart  # the chart tier's render, offline, in seconds

# the Secret ci/external-postgres-values.yaml names but cannot render: the tier creates its own Postgres
EXTERNAL_DB = {
    "streamflow-external-db": {
        "streamflow-url": "postgresql://streamflow:ext%2Fpw-0001@streamflow-external-pg:5432/streamflow",
        "mlflow-url": "postgresql://streamflow:ext%2Fpw-0001@streamflow-external-pg:5432/mlflow",
    }
}
PROJECT_IMAGE = re.compile(r"^streamflow[:@]")
DEFAULT_KEYS = {
    "mlflow", "postgres", "pushgateway", "helm-test", "predictor:champion", "transformer:champion",
    "workflow:streamflow-generate/main", "workflow:streamflow-ingest/ingest", "workflow:streamflow-ingest/snapshot",
    "workflow:streamflow-ingest/features-apply", "workflow:streamflow-ingest/materialize",
    "workflow:streamflow-train/train", "workflow:streamflow-train/promote", "workflow:streamflow-drift/drift",
    "workflow:streamflow-monthly/main", "workflow:streamflow-score/main",
}  # fmt: skip


@pytest.fixture(params=SCENARIOS)
def scenario(request: pytest.FixtureRequest) -> str:
    """The chart's defaults and every ci/*-values.yaml (the chart tier's fixture lives in its own folder)."""
    return request.param


def leaks(spec: ContainerSpec, argv: list[str]) -> list[str]:
    """Secret values found in an argv. Short ones are skipped: the MLflow username is ``streamflow``, which every
    image and object name contains; passwords (32 characters) and URLs holding them are long."""
    return [v for v in spec.secret_values if len(v) >= 16 and any(v in a for a in argv)]


def specs(scenario: str) -> dict[str, ContainerSpec]:
    return containers(rendered(scenario), secrets=EXTERNAL_DB)


@pytest.fixture(scope="module")
def upgrade() -> dict[str, ContainerSpec]:
    """An upgrade render: it adds the pre-upgrade MLflow migration Job."""
    return containers(render(None, is_upgrade=True))


# ------------------------------------------------------------------------------------------------ coverage


def test_every_container_of_every_workload_gets_a_spec(scenario: str) -> None:
    r = rendered(scenario)
    got = specs(scenario)
    holders = {"Deployment", "StatefulSet", "Job", "Pod", "WorkflowTemplate", "CronWorkflow", "InferenceService"}
    expected = sum(1 for o in r.objects if o["kind"] in holders for _ in all_containers(o))
    assert len(got) == expected, (scenario, sorted(got))
    sources = {s.source.split(":")[0] for s in got.values()}
    for obj in r.objects:
        if obj["kind"] in holders - {"CronWorkflow"} and any(True for _ in all_containers(obj)):
            assert f"{obj['kind']}/{obj['metadata']['name']}" in sources, (scenario, obj["kind"], obj["metadata"])
    for cron in r.of_kind("CronWorkflow"):  # its containers are those of the template it references
        ref = cron["spec"]["workflowSpec"]["workflowTemplateRef"]["name"]
        assert any(k.startswith(f"workflow:{ref}/") for k in got), (scenario, ref)


def test_default_keys_are_the_documented_ones(upgrade: dict[str, ContainerSpec]) -> None:
    assert set(specs("default")) == DEFAULT_KEYS
    assert set(specs("challenger")) == DEFAULT_KEYS | {"predictor:challenger", "transformer:challenger"}
    assert set(specs("external-postgres")) == DEFAULT_KEYS - {"postgres"}
    assert set(upgrade) == DEFAULT_KEYS | {"mlflow-migrate"}


# ------------------------------------------------------------------------------------------------ the servers


def test_transformer_names_model_predictor_and_port_explicitly(scenario: str) -> None:
    """KServe adds its own ``--model_name`` (the InferenceService's name) and predictor host when they are missing:
    the chart sets them, and the real parser reads them as the chart means."""
    from model_server.transformer import build_parser

    got = specs(scenario)
    for suffix in ("champion", "challenger"):
        if f"transformer:{suffix}" not in got:
            continue
        transformer, predictor = got[f"transformer:{suffix}"], got[f"predictor:{suffix}"]
        assert transformer.command == ("python", "-m", "model_server.transformer")
        for flag in ("--model_name", "--predictor_host", "--http_port"):
            assert flag in transformer.args, (scenario, suffix, flag)
        args = build_parser(Settings()).parse_args(list(transformer.args))
        assert args.model_name == values_of(scenario)["serving"]["modelName"]
        assert args.http_port == 8080 and transformer.port("http1") == 8080
        assert args.predictor_protocol == "v2"
        # the predictor host is one of the predictor's network aliases; without a port it is the Service's 80,
        # which KServe maps to the container's 8080: the tier has to bridge it (a Docker network maps no ports)
        host, _, port = args.predictor_host.partition(":")
        assert host == f"streamflow-{suffix}-predictor.{NAMESPACE}"
        assert host in predictor.network_aliases
        assert (host, int(port or 80), 8080) in predictor.port_bridges()
        assert predictor.port("http1") == 8080
        assert transformer.env["PROTOCOL"] == predictor.env["PROTOCOL"] == "v2"


def test_every_service_address_a_pod_is_given_reaches_a_container() -> None:
    """Each http/postgresql address in an env value or argument names a container's network alias and one of its
    ports (directly, or through a bridge where the Service's port is not the container's) — except the graph
    router's, KServe's own image, which the container tier does not run."""
    got = specs("default")
    router = f"streamflow-churn.{NAMESPACE}"
    checked = 0
    for spec in got.values():
        for text in [*spec.env.values(), *spec.args]:
            for url in re.findall(r"(?:https?|postgresql)://[^\s,]+", text):
                parts = urlsplit(url)
                if parts.hostname in (router, "0.0.0.0", "localhost", "127.0.0.1"):
                    continue
                port = parts.port or {"http": 80, "https": 443, "postgresql": 5432}[parts.scheme]
                targets = [t for t in got.values() if parts.hostname in t.network_aliases]
                assert targets, (spec.key, url)
                for target in targets:
                    reachable = {p.container_port for p in target.ports}
                    bridged = {sp for alias, sp, _ in target.port_bridges() if alias == parts.hostname}
                    assert port in reachable | bridged, (spec.key, url, target.key)
                checked += 1
    assert checked >= 20  # MLflow, Pushgateway, Postgres and the predictor from many pods


def test_mlflow_runs_as_the_deployment_says() -> None:
    mlflow = specs("default")["mlflow"]
    assert mlflow.command == ("mlflow", "server")
    assert "--artifacts-destination" in mlflow.args and "--allowed-hosts" in mlflow.args
    assert mlflow.env["MLFLOW_BACKEND_STORE_URI"].startswith("postgresql://streamflow:")
    assert mlflow.secret_env == frozenset({"MLFLOW_BACKEND_STORE_URI"})
    assert [p.container_port for p in mlflow.ports] == [5000]
    assert "streamflow-mlflow" in mlflow.network_aliases
    startup = mlflow.probes["startup"]
    assert startup.http_get.path == "/health" and startup.http_get.port == 5000
    assert startup.http_get.headers == (("Host", "localhost"),)
    assert (startup.period_seconds, startup.failure_threshold, startup.timeout_seconds) == (5, 60, 1)


# ------------------------------------------------------------------------------------------------ env


def test_every_env_var_is_resolved_to_a_string(scenario: str) -> None:
    for spec in specs(scenario).values():
        for name, value in spec.env.items():
            assert isinstance(value, str) and value is not None, (scenario, spec.key, name)
        for name in spec.secret_env:
            assert spec.env[name], (scenario, spec.key, name)
        if PROJECT_IMAGE.match(spec.image):  # envFrom: the ConfigMap's settings reach every project pod
            assert spec.env.get("HOME") == "/home/streamflow", (scenario, spec.key)
            if spec.key != "mlflow" and spec.key != "mlflow-migrate":
                assert spec.env["STREAMFLOW_MLFLOW_TRACKING_URI"] == "http://streamflow-mlflow:5000"


def test_generated_password_reaches_the_pods_decoded() -> None:
    """The db Secret renders through ``lookup`` (empty offline): a fresh 32-character password, base64 in
    ``data``; the pods get it decoded, URL-quoted inside the URLs."""
    secret = rendered("default").named("Secret", "streamflow-db")
    password = base64.b64decode(secret["data"]["password"]).decode()
    assert re.fullmatch(r"[A-Za-z0-9]{32}", password)
    got = specs("default")
    assert got["postgres"].env["POSTGRES_PASSWORD"] == password
    assert "POSTGRES_PASSWORD" in got["postgres"].secret_env
    for key in ("transformer:champion", "workflow:streamflow-ingest/ingest", "workflow:streamflow-train/promote"):
        url = got[key].env["STREAMFLOW_DB_URL"]
        assert url == f"postgresql://streamflow:{password}@streamflow-postgres:5432/streamflow?sslmode=disable"
        assert "STREAMFLOW_DB_URL" in got[key].secret_env
    assert "STREAMFLOW_DB_URL" not in got["predictor:champion"].env  # the predictor reaches MLflow only


def test_external_database_comes_from_the_supplied_secret() -> None:
    got = specs("external-postgres")
    assert (
        got["transformer:champion"].env["STREAMFLOW_DB_URL"] == EXTERNAL_DB["streamflow-external-db"]["streamflow-url"]
    )
    assert got["mlflow"].env["MLFLOW_BACKEND_STORE_URI"] == EXTERNAL_DB["streamflow-external-db"]["mlflow-url"]
    with pytest.raises(PodSpecError, match="streamflow-external-db"):
        containers(rendered("external-postgres"))


def test_string_data_wins_over_data_and_unknown_keys_fail() -> None:
    r = copy.deepcopy(rendered("default"))
    secret = r.named("Secret", "streamflow-db")
    secret["stringData"] = {"streamflow-url": "postgresql://plain@elsewhere:5432/x"}
    assert containers(r)["transformer:champion"].env["STREAMFLOW_DB_URL"] == "postgresql://plain@elsewhere:5432/x"
    del secret["stringData"]
    del secret["data"]["streamflow-url"]
    with pytest.raises(PodSpecError, match=r"Secret 'streamflow-db' has no key 'streamflow-url'"):
        containers(r)


def test_unknown_config_map_key_raises_naming_it() -> None:
    r = copy.deepcopy(rendered("default"))
    mlflow = r.named("Deployment", "streamflow-mlflow")["spec"]["template"]["spec"]["containers"][0]
    ref = {"configMapKeyRef": {"name": "streamflow-config", "key": "STREAMFLOW_NO_SUCH_KEY"}}
    mlflow["env"].append({"name": "X", "valueFrom": ref})
    with pytest.raises(
        PodSpecError, match=r"mlflow .*env X: ConfigMap 'streamflow-config' has no key 'STREAMFLOW_NO_SUCH_KEY'"
    ):
        containers(r)
    ref["configMapKeyRef"] |= {"key": "STREAMFLOW_LOG_LEVEL"}
    assert containers(r)["mlflow"].env["X"] == values_of("default")["logLevel"]
    ref["configMapKeyRef"] |= {"key": "NOPE", "optional": True}
    assert "X" not in containers(r)["mlflow"].env  # an optional absent key sets nothing, as the kubelet does


def test_field_refs_get_the_documented_values() -> None:
    r = copy.deepcopy(rendered("default"))
    c = r.named("Deployment", "streamflow-mlflow")["spec"]["template"]["spec"]["containers"][0]
    c["env"] += [
        {"name": "POD", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
        {"name": "NS", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}},
        {"name": "COMP", "valueFrom": {"fieldRef": {"fieldPath": "metadata.labels['app.kubernetes.io/component']"}}},
        {"name": "BOTH", "value": "$(POD).$(NS) $$(POD) $(UNKNOWN)"},
    ]
    env = containers(r, namespace="elsewhere")["mlflow"].env
    assert (env["POD"], env["NS"], env["COMP"]) == ("streamflow-mlflow", "elsewhere", "mlflow")
    assert env["BOTH"] == "streamflow-mlflow.elsewhere $(POD) $(UNKNOWN)"  # the kubelet's own rules
    c["env"].append({"name": "IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}})
    with pytest.raises(PodSpecError, match="status.podIP"):
        containers(r)


def test_kubelet_expands_the_migration_jobs_url(upgrade: dict[str, ContainerSpec]) -> None:
    migrate = upgrade["mlflow-migrate"]
    assert migrate.argv == ["mlflow", "db", "upgrade", migrate.env["MLFLOW_BACKEND_STORE_URI"]]
    for spec in upgrade.values():
        assert not any("$(" in a for a in spec.argv), spec.key


def test_no_service_link_variable_shadows_a_setting() -> None:
    """Kubernetes injects ``<SERVICE>_SERVICE_HOST`` / ``_PORT…`` for every Service in the namespace (not emulated
    here: they hold cluster IPs). None may be read as a StreamFlow setting or shadow a variable the chart sets."""
    got = specs("challenger")
    names = {s.name for spec in got.values() for s in spec.services if "." not in s.name}
    names.add("streamflow-churn")  # the InferenceGraph's router Service
    injected = set()
    for name in names:
        base = name.upper().replace("-", "_")
        injected |= {f"{base}_SERVICE_HOST", f"{base}_SERVICE_PORT", f"{base}_PORT"}
        for spec in got.values():
            for service in spec.services:
                if service.name == name:
                    for p in service.ports:
                        injected |= {f"{base}_SERVICE_PORT_{(p.name or '').upper().replace('-', '_')}",
                                     f"{base}_PORT_{p.port}_TCP", f"{base}_PORT_{p.port}_TCP_ADDR"}  # fmt: skip
    settings = {f"STREAMFLOW_{f.upper()}" for f in Settings.model_fields}
    chart_env = {k for spec in got.values() for k in spec.env}
    assert not injected & (settings | chart_env)


# ------------------------------------------------------------------------------------------------ security


def test_users_are_the_charts_fixed_ones(scenario: str) -> None:
    pod = values_of(scenario)["podSecurity"]
    for spec in specs(scenario).values():
        if PROJECT_IMAGE.match(spec.image):
            assert (spec.user, spec.group, spec.fs_group) == (pod["runAsUser"], pod["runAsGroup"], pod["fsGroup"])
        elif spec.key == "postgres":
            uid = values_of(scenario)["postgres"]["runAsUser"]
            assert (spec.user, spec.group) == (uid, uid)
        else:
            assert spec.key == "pushgateway" and (spec.user, spec.group) == (65534, 65534)
        assert spec.run_as_non_root and spec.user != 0


def test_read_only_root_no_capabilities_everywhere(scenario: str, tmp_path: Path) -> None:
    for spec in specs(scenario).values():
        assert spec.read_only_root and spec.no_new_privileges and spec.cap_drop == ("ALL",), spec.key
        argv = docker_run_args(spec, network="n", name=spec.key.replace(":", "-").replace("/", "-"), state_dir=tmp_path)
        assert "--read-only" in argv and argv[argv.index("--cap-drop") + 1] == "ALL"
        assert argv[argv.index("--user") + 1] == f"{spec.user}:{spec.group}"
        assert "--init" not in argv  # no pod shares its process namespace


def test_predictor_argv_is_faithful_and_holds_no_secret(tmp_path: Path) -> None:
    """mlflow-auth: the predictor's env then holds the MLflow credentials, which must stay off the command line."""
    spec = containers(rendered("mlflow-auth"))["predictor:champion"]
    assert spec.secret_env == {"MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"}
    argv = docker_run_args(spec, network="sf-net", name="sf-predictor", publish=["http1"], state_dir=tmp_path)
    assert argv[:3] == ["docker", "run", "-d"]
    assert argv[argv.index("--network") + 1] == "sf-net"
    aliases = [argv[i + 1] for i, a in enumerate(argv) if a == "--network-alias"]
    assert "streamflow-champion-predictor" in aliases and f"streamflow-champion-predictor.{NAMESPACE}" in aliases
    assert "--read-only" in argv and argv[argv.index("--user") + 1] == "10001:10001"
    assert argv[argv.index("-p") + 1] == "127.0.0.1::8080"  # loopback only, a free host port
    # --entrypoint is command[0]; the rest of the command, then args, follow the image
    image = argv.index("streamflow:0.1.0")
    assert argv[argv.index("--entrypoint") + 1] == "python" and image > argv.index("--entrypoint")
    assert argv[image + 1 :] == ["-m", "model_server.predictor", *spec.args]
    assert len(spec.env["MLFLOW_TRACKING_PASSWORD"]) == 32 and not leaks(spec, argv)
    env_file = Path(argv[argv.index("--env-file") + 1])
    assert stat.S_IMODE(env_file.stat().st_mode) == 0o600
    lines = env_file.read_text().splitlines()
    assert lines == [f"{k}={v}" for k, v in spec.env.items()]
    assert "PROTOCOL=v2" in lines and f"MLFLOW_TRACKING_PASSWORD={spec.env['MLFLOW_TRACKING_PASSWORD']}" in lines
    override = docker_run_args(spec, network="n", name="x", image_override="streamflow:test", state_dir=tmp_path)
    assert "streamflow:test" in override and "streamflow:0.1.0" not in override


def test_only_the_migration_job_carries_a_secret_in_its_argv(scenario: str, upgrade, tmp_path: Path) -> None:
    """Secrets reach every container through the env-file; the one exception is the chart's own: the migration Job's
    ``$(MLFLOW_BACKEND_STORE_URI)`` argument, which the kubelet expands into the process's argv too."""
    for spec in [*specs(scenario).values(), upgrade["mlflow-migrate"]]:
        argv = docker_run_args(spec, network="n", name="c", state_dir=tmp_path)
        assert bool(leaks(spec, argv)) == (spec.key == "mlflow-migrate"), (scenario, spec.key)


def test_limits_become_docker_limits(tmp_path: Path) -> None:
    spec = specs("default")["predictor:champion"]
    values = values_of("default")["serving"]["predictor"]["resources"]["limits"]
    argv = docker_run_args(spec, network="n", name="p", state_dir=tmp_path)
    memory = str(int(quantity(values["memory"])))
    assert argv[argv.index("--memory") + 1] == memory and argv[argv.index("--memory-swap") + 1] == memory
    assert float(argv[argv.index("--cpus") + 1]) == quantity(values["cpu"])
    assert "--memory" not in docker_run_args(spec, network="n", name="p", state_dir=tmp_path, limits=False)
    assert "--init" in docker_run_args(replace(spec, share_process_namespace=True), network="n", name="p",
                                       state_dir=tmp_path)  # fmt: skip


# ------------------------------------------------------------------------------------------------ volumes


def test_claims_become_named_volumes(tmp_path: Path) -> None:
    got = specs("default")
    data = [m for m in got["workflow:streamflow-ingest/ingest"].mounts if m.path == "/data"]
    assert [(m.kind, m.claim) for m in data] == [("volume", "streamflow-data")]
    assert [(m.kind, m.claim) for m in got["mlflow"].mounts if m.path == "/mlflow"] == [
        ("volume", "streamflow-mlflow-artifacts")
    ]
    pg = [m for m in got["postgres"].mounts if m.path == "/var/lib/postgresql/data"]
    assert [(m.kind, m.claim) for m in pg] == [("volume", "data-streamflow-postgres-0")]  # claim template
    argv = docker_run_args(got["workflow:streamflow-ingest/ingest"], network="n", name="s", state_dir=tmp_path,
                           volume_prefix="t1-")  # fmt: skip
    assert "t1-streamflow-data:/data" in argv


def test_empty_dirs_become_world_writable_tmpfs(tmp_path: Path) -> None:
    spec = specs("default")["transformer:champion"]
    assert {m.path: m.kind for m in spec.mounts} == {"/data": "tmpfs", "/tmp": "tmpfs", "/home/streamflow": "tmpfs"}
    argv = docker_run_args(spec, network="n", name="t", state_dir=tmp_path)
    tmpfs = [argv[i + 1] for i, a in enumerate(argv) if a == "--tmpfs"]
    owned = "uid=10001,gid=10001"
    assert tmpfs == [f"{p}:rw,exec,mode=1777,{owned}" for p in ("/data", "/tmp", "/home/streamflow")]
    r = copy.deepcopy(rendered("default"))
    volumes = r.named("Deployment", "streamflow-mlflow")["spec"]["template"]["spec"]["volumes"]
    next(v for v in volumes if v["name"] == "tmp")["emptyDir"] = {"sizeLimit": "64Mi"}
    sized = containers(r)["mlflow"]
    argv = docker_run_args(sized, network="n", name="m", state_dir=tmp_path)
    assert "/tmp:rw,exec,mode=1777,size=67108864,uid=10001,gid=10001" in argv


def test_config_map_volume_is_materialised_read_only(tmp_path: Path) -> None:
    spec = specs("default")["postgres"]
    init = next(m for m in spec.mounts if m.path == "/docker-entrypoint-initdb.d")
    assert init.kind == "files" and init.read_only and not init.secret
    argv = docker_run_args(spec, network="n", name="pg", state_dir=tmp_path)
    mount = next(argv[i + 1] for i, a in enumerate(argv) if a == "-v" and argv[i + 1].endswith("initdb.d:ro"))
    folder = Path(mount.split(":")[0])
    script = folder / "10-mlflow-database.sh"
    configmap = rendered("default").named("ConfigMap", "streamflow-postgres-init")
    assert script.read_text() == configmap["data"]["10-mlflow-database.sh"]
    assert stat.S_IMODE(script.stat().st_mode) == 0o644 and stat.S_IMODE(folder.stat().st_mode) == 0o755
    assert argv[argv.index("--user") + 1] == "999:999"
    assert "--entrypoint" not in argv and argv[-1] == spec.image  # no command: the image's own entrypoint runs


# ------------------------------------------------------------------------------------------------ Argo


def test_bootstrap_runs_the_loop_in_order() -> None:
    steps = workflow_steps(rendered("default"), "streamflow-bootstrap", {"users": "300", "seed": "7"})
    assert [s.args[:2] for s in steps] == [
        ("data", "generate"), ("ingest", "/data/months/month_000"), ("snapshot", "--as-of"), ("features", "apply"),
        ("features", "materialize"), ("train", "--as-of"), ("promote", "--json"),
    ]  # fmt: skip
    assert [s.step for s in steps][:2] == ["main/generate", "main/ingest/ingest"]
    generate = steps[0].args
    assert generate[generate.index("--users") + 1] == "300" and generate[generate.index("--seed") + 1] == "7"
    assert all(s.command == ("streamflow",) for s in steps)
    assert all(s.args[s.args.index("--as-of") + 1] == "2024-01-31" for s in steps if "--as-of" in s.args)
    assert all(s.key.startswith("workflow:") and "{{" not in " ".join(s.argv) for s in steps)


def test_parameters_flow_through_steps_and_refs() -> None:
    ingest = workflow_steps(rendered("default"), "streamflow-ingest", {"month": "month_001", "as-of": "2024-02-29"})
    assert [s.args for s in ingest][0] == ("ingest", "/data/months/month_001", "--as-of", "2024-02-29", "--json")
    assert ingest[-1].args == ("features", "materialize", "--as-of", "2024-02-29", "--json")
    drift = workflow_steps(rendered("default"), "streamflow-drift", {"as-of": "2024-03-31"})
    assert [s.key for s in drift] == ["workflow:streamflow-drift/drift", "workflow:streamflow-train/train",
                                      "workflow:streamflow-train/promote"]  # fmt: skip
    assert drift[1].args == ("train", "--as-of", "2024-03-31", "--json") and "RETRAIN" in drift[1].when
    with pytest.raises(PodSpecError, match=r"no parameters \['nope'\]"):
        workflow_steps(rendered("default"), "streamflow-train", {"nope": "1"})
    got = containers(rendered("default"), parameters={"as-of": "2024-05-31"})
    assert got["workflow:streamflow-train/train"].args == ("train", "--as-of", "2024-05-31", "--json")


def test_cron_workflow_with_inline_templates() -> None:
    r = copy.deepcopy(rendered("default"))
    monthly = r.named("WorkflowTemplate", "streamflow-monthly")["spec"]
    cron = r.named("CronWorkflow", "streamflow-monthly")
    cron["spec"]["workflowSpec"] = {k: monthly[k] for k in ("entrypoint", "arguments", "templates", "securityContext",
                                                             "volumes", "podMetadata")}  # fmt: skip
    got = containers(r)
    inline = got["cronworkflow:streamflow-monthly/main"]
    assert inline.argv == got["workflow:streamflow-monthly/main"].argv
    assert [m.claim for m in inline.mounts if m.kind == "volume"] == ["streamflow-data"]
    cron["spec"]["workflowSpec"] = {"workflowTemplateRef": {"name": "streamflow-gone"}}
    with pytest.raises(PodSpecError, match="streamflow-gone"):
        containers(r)


def test_unresolved_template_tag_raises_naming_it() -> None:
    r = copy.deepcopy(rendered("default"))
    train = next(
        t for t in r.named("WorkflowTemplate", "streamflow-train")["spec"]["templates"] if t["name"] == "train"
    )
    train["container"]["args"].append("{{inputs.parameters.no-such-input}}")
    with pytest.raises(
        PodSpecError, match=r"workflow:streamflow-train/train .*\{\{inputs.parameters.no-such-input\}\}"
    ):
        containers(r)
    train["container"]["args"][-1] = "{{workflow.name}}"
    with pytest.raises(PodSpecError, match=r"unresolved '\{\{workflow.name\}\}'"):
        workflow_steps(r, "streamflow-train")
    r2 = copy.deepcopy(rendered("default"))
    r2.named("Deployment", "streamflow-mlflow")["spec"]["template"]["spec"]["containers"][0]["args"].append("{{x}}")
    with pytest.raises(PodSpecError, match=r"mlflow .*unresolved"):
        containers(r2)


# ------------------------------------------------------------------------------------------------ probes


class _Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # noqa: N802 - the stdlib's name
        if self.path == "/slow":
            time.sleep(3)
        code = 200 if self.path != "/bad" and self.headers["Host"] == "localhost" else 503
        self.send_response(code)
        self.end_headers()

    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def http_port() -> Iterator[int]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server.server_address[1]
    server.shutdown()
    server.server_close()


def test_rendered_http_probe_runs_against_the_published_port(http_port: int) -> None:
    mlflow = specs("default")["mlflow"]
    ports = parse_port_map(f"5000/tcp -> 127.0.0.1:{http_port}\n5000/tcp -> [::1]:1\n")
    assert ports == {5000: http_port}
    for kind in ("startup", "readiness", "liveness"):
        check = probe_command(mlflow.probes[kind], "127.0.0.1", ports)
        assert check.url == f"http://127.0.0.1:{http_port}/health" and check()  # the probe's Host: localhost
    no_host = replace(mlflow.probes["readiness"], http_get=replace(mlflow.probes["readiness"].http_get, headers=()))
    assert not probe_command(no_host, "127.0.0.1", ports)()  # our fake answers 503 to another Host
    slow = replace(
        no_host, timeout_seconds=1, http_get=replace(no_host.http_get, path="/slow", headers=(("Host", "localhost"),))
    )
    started = time.monotonic()
    assert not probe_command(slow, "127.0.0.1", ports)()  # an answer later than timeoutSeconds is a failure
    assert time.monotonic() - started < slow.timeout_seconds + 1
    with pytest.raises(PodSpecError, match="not published"):
        probe_command(mlflow.probes["readiness"], "127.0.0.1", {})


def test_predictor_probes_are_the_rendered_ones() -> None:
    predictor = specs("default")["predictor:champion"]
    ready = predictor.probes["readiness"]
    assert (ready.http_get.path, ready.http_get.port, ready.timeout_seconds) == (
        "/v2/models/streamflow-churn/ready", 8080, 3,
    )  # fmt: skip
    startup = predictor.probes["startup"]
    assert startup.budget_seconds == values_of("default")["serving"]["startupSeconds"]
    assert (
        probe_command(ready, "127.0.0.1", {8080: 40001}).url
        == "http://127.0.0.1:40001/v2/models/streamflow-churn/ready"
    )


def test_exec_and_tcp_probes(http_port: int) -> None:
    pg = specs("default")["postgres"]
    check = probe_command(pg.probes["readiness"], container="sf-postgres")
    assert check.argv == ("docker", "exec", "sf-postgres", "pg_isready", "-h", "127.0.0.1", "-U", "streamflow",
                          "-d", "streamflow")  # fmt: skip
    with pytest.raises(PodSpecError, match="container's name"):
        probe_command(pg.probes["liveness"])
    tcp = Probe("readiness", tcp_port=9091, period_seconds=1, failure_threshold=2)
    assert probe_command(tcp, "127.0.0.1", {9091: http_port})()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed = s.getsockname()[1]
    assert not probe_command(tcp, "127.0.0.1", {9091: closed})()
    assert wait_for_probe(probe_command(tcp, "127.0.0.1", {9091: http_port}), tcp)
    assert not wait_for_probe(lambda: False, tcp, budget_seconds=1.5)


def test_unknown_named_port_raises() -> None:
    spec = specs("default")["predictor:champion"]
    assert spec.port("h2c") == 8081 and spec.port(8080) == 8080
    with pytest.raises(PodSpecError, match="no container port named 'grpc'"):
        docker_run_args(spec, network="n", name="p", publish=["grpc"])


def test_quantities() -> None:
    assert quantity("500m") == 0.5 and quantity("1Gi") == 2**30 and quantity(2) == 2 and quantity("1e3") == 1000
    with pytest.raises(PodSpecError):
        quantity("1 GB")
