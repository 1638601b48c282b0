"""The container tier's pieces, shared by its tests (tests/containers/test_tier.py) and the container benchmark
(bench/containers.py): a Docker network with the chart's containers on it, under the chart's Service names.

What a cluster would provide and Docker cannot is stood in for by the tier's own infrastructure image
(tests/containers/infra), never shipped: Debian's PostgreSQL as the external database and Debian's Pushgateway in
the chart's pushgateway container (the upstream images cannot be pulled here), TCP forwarders carrying a KServe
Service's names (port 80 in front of the pod's 8080), and a stand-in for the InferenceGraph router's one Sequence
step (KServe's router image cannot be pulled either).
"""

from __future__ import annotations

import json
import secrets
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field, replace
from pathlib import Path

from tests.containers.engine import docker
from tests.containers.podspec import (
    ContainerSpec,
    docker_run_args,
    parse_port_map,
    probe_command,
    wait_for_probe,
)

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


def start_base(t: Tier, chart: dict[str, ContainerSpec]) -> None:
    """The network, the external database (accepting the chart's credentials) and the Pushgateway."""
    docker("network", "create", "--label", f"io.streamflow.tier={t.tag}", t.network)
    db = t.infra_container(
        "external-pg", ["postgres"], [DB_HOST], publish=[5432], env={"POSTGRES_PASSWORD": DB_PASSWORD}
    )
    gateway = chart["pushgateway"]
    t.start(replace(gateway, command=("/usr/bin/prometheus-pushgateway",)), image=t.infra, publish=[9091])
    wait_for_postgres(t, db)
