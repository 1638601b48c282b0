"""Security of the rendered chart: no secret in plain values or ConfigMaps, database URLs and passwords only through
secretKeyRef, the generated Secret's URLs, the restricted Pod Security profile on every pod spec the chart renders
(Deployments, StatefulSets, Jobs, the helm test Pod, InferenceService components, Argo workflow templates), requests
and limits everywhere, writable paths only on emptyDir/PVC volumes, no ServiceAccount token except in workflow pods,
and the default install's resource sums against the laptop the README assumes (4 CPUs / 8 GiB for Docker).

A walker (``pod_specs``) finds every pod spec; a second walk finds every container anywhere in the render, and both
must agree, so a new template kind cannot slip past the checks.
"""

from __future__ import annotations

import base64
import copy
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any
from urllib.parse import quote, urlsplit

import pytest
from kubernetes.utils.quantity import parse_quantity

from tests.chart.conftest import RELEASE, SCENARIOS, rendered, values_of
from tests.chart.test_render import UPGRADE, objects_of, upgrade_render

Objects = list[dict[str, Any]]
CREDENTIAL_URL = re.compile(r"://[^/@:]+:[^@]+@")
SECRET_NAME = re.compile(r"PASSWORD|SECRET|TOKEN", re.IGNORECASE)
# env var → key of the database Secret it must come from
SECRET_ENV = {"STREAMFLOW_DB_URL": "streamflow-url", "MLFLOW_BACKEND_STORE_URI": "mlflow-url",
              "POSTGRES_PASSWORD": "password"}  # fmt: skip
CONTAINER_LISTS = ("containers", "initContainers", "ephemeralContainers", "sidecars")
CONTAINER_DICTS = ("container", "script")  # Argo leaf templates
WORKLOADS = ("Deployment", "StatefulSet", "DaemonSet", "ReplicaSet", "Job")
LAPTOP_CPU, LAPTOP_MEMORY = Decimal(4), Decimal(8 * 2**30)


def ident(obj: dict[str, Any]) -> str:
    return f"{obj['kind']}/{obj['metadata']['name']}"


# ================================================================================================ the pod walker


@dataclass
class PodSpec:
    """One pod the chart makes (or makes KServe / Argo make): pod-level fields and its containers."""

    name: str
    pod: dict[str, Any]
    containers: list[dict[str, Any]]
    replicas: int = 1
    workflow: bool = False
    long_running: bool = False
    claim_templates: set[str] = field(default_factory=set)

    @property
    def volumes(self) -> dict[str, dict[str, Any]]:
        return {v["name"]: v for v in self.pod.get("volumes", [])}


def with_containers(spec: dict[str, Any]) -> list[dict[str, Any]]:
    return [c for key in CONTAINER_LISTS for c in spec.get(key, [])]


def pod_specs(objects: Objects) -> list[PodSpec]:
    found: list[PodSpec] = []
    for obj in objects:
        kind, spec = obj["kind"], obj.get("spec", {})
        if kind in WORKLOADS:
            pod = spec["template"]["spec"]
            found.append(
                PodSpec(
                    ident(obj),
                    pod,
                    with_containers(pod),
                    replicas=spec.get("replicas", 1),
                    long_running=kind != "Job",
                    claim_templates={t["metadata"]["name"] for t in spec.get("volumeClaimTemplates", [])},
                )
            )
        elif kind == "CronJob":
            pod = spec["jobTemplate"]["spec"]["template"]["spec"]
            found.append(PodSpec(ident(obj), pod, with_containers(pod)))
        elif kind == "Pod":
            found.append(PodSpec(ident(obj), spec, with_containers(spec)))
        elif kind == "InferenceService":
            # KServe builds each component's pod from the component spec itself (pod fields inline)
            for comp in ("predictor", "transformer", "explainer"):
                if comp in spec:
                    found.append(
                        PodSpec(
                            f"{ident(obj)}:{comp}",
                            spec[comp],
                            with_containers(spec[comp]),
                            replicas=spec[comp].get("minReplicas", 1),
                            long_running=True,
                        )
                    )
        elif kind in ("Workflow", "WorkflowTemplate", "ClusterWorkflowTemplate", "CronWorkflow"):
            wf = spec["workflowSpec"] if kind == "CronWorkflow" else spec
            for t in wf.get("templates", []):
                containers = [t[k] for k in CONTAINER_DICTS if k in t]
                containers += t.get("containerSet", {}).get("containers", []) + with_containers(t)
                if not containers:
                    continue  # steps, dag, suspend: no pod of their own
                # Argo: the template's pod-level fields win over the workflow's; volumes add up
                pod = {k: v for k, v in wf.items() if k not in ("templates", "volumes")}
                pod |= {k: t[k] for k in ("securityContext", "automountServiceAccountToken", "serviceAccountName")
                        if k in t}  # fmt: skip
                pod["volumes"] = [*wf.get("volumes", []), *t.get("volumes", [])]
                claims = {c["metadata"]["name"] for c in wf.get("volumeClaimTemplates", [])}
                found.append(
                    PodSpec(f"{ident(obj)}:{t['name']}", pod, containers, workflow=True, claim_templates=claims)
                )
    return found


def all_containers(node: Any) -> Iterator[dict[str, Any]]:
    """Every container anywhere in an object, whatever kind holds it."""
    if isinstance(node, dict):
        for key, value in node.items():
            if key in CONTAINER_LISTS and isinstance(value, list):
                yield from (c for c in value if isinstance(c, dict))
            elif key in CONTAINER_DICTS and isinstance(value, dict) and "image" in value:
                yield value
            yield from all_containers(value)
    elif isinstance(node, list):
        for value in node:
            yield from all_containers(value)


def missed_containers(objects: Objects) -> list[str]:
    walked = {id(c) for p in pod_specs(objects) for c in p.containers}
    return [f"{ident(o)} container {c.get('name')!r}" for o in objects for c in all_containers(o)
            if id(c) not in walked]  # fmt: skip


EXPECTED_DEFAULT_PODS = sorted(
    [
        f"Deployment/{RELEASE}-mlflow", f"Deployment/{RELEASE}-pushgateway", f"StatefulSet/{RELEASE}-postgres",
        f"Pod/{RELEASE}-test-graph",
        f"InferenceService/{RELEASE}-champion:predictor", f"InferenceService/{RELEASE}-champion:transformer",
        f"WorkflowTemplate/{RELEASE}-generate:main", f"WorkflowTemplate/{RELEASE}-ingest:ingest",
        f"WorkflowTemplate/{RELEASE}-ingest:snapshot", f"WorkflowTemplate/{RELEASE}-ingest:features-apply",
        f"WorkflowTemplate/{RELEASE}-ingest:materialize", f"WorkflowTemplate/{RELEASE}-train:train",
        f"WorkflowTemplate/{RELEASE}-train:promote", f"WorkflowTemplate/{RELEASE}-drift:drift",
        f"WorkflowTemplate/{RELEASE}-monthly:main", f"WorkflowTemplate/{RELEASE}-score:main",
    ]
)  # fmt: skip


def test_walker_finds_every_default_pod_spec():
    names = sorted(p.name for p in pod_specs(rendered("default").objects))
    assert names == EXPECTED_DEFAULT_PODS, f"pod specs found {names}\nexpected {EXPECTED_DEFAULT_PODS}"
    upgrade = sorted(p.name for p in pod_specs(upgrade_render().objects))
    assert upgrade == sorted([*EXPECTED_DEFAULT_PODS, f"Job/{RELEASE}-mlflow-migrate"]), upgrade


@pytest.mark.parametrize("which", [*SCENARIOS, UPGRADE])
def test_walker_misses_no_container(which):
    assert not (missed := missed_containers(objects_of(which))), f"{which}: containers outside any pod spec: {missed}"


def test_walker_misses_an_unknown_kind():
    objects = copy.deepcopy(rendered("default").objects)
    deployment = copy.deepcopy(rendered("default").named("Deployment", f"{RELEASE}-mlflow"))
    objects.append(deployment | {"kind": "Rollout", "apiVersion": "argoproj.io/v1alpha1"})
    assert missed_containers(objects) == [f"Rollout/{RELEASE}-mlflow container 'mlflow'"]


# ================================================================================================ restricted profile


def restricted_problems(p: PodSpec) -> list[str]:
    """The restricted Pod Security profile, a little stricter: fixed non-root UID/GID at pod level, seccomp
    RuntimeDefault (pod or container), per container no privilege escalation, read-only root, capabilities drop
    exactly ["ALL"] and add none, not privileged; no host namespaces or hostPath volumes."""
    problems = []
    sc = p.pod.get("securityContext") or {}
    if sc.get("runAsNonRoot") is not True:
        problems.append(f"{p.name} securityContext.runAsNonRoot {sc.get('runAsNonRoot')!r}")
    for key in ("runAsUser", "runAsGroup"):
        value = sc.get(key)
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            problems.append(f"{p.name} securityContext.{key} {value!r}: a fixed UID/GID >= 1")
    for key in ("hostNetwork", "hostPID", "hostIPC"):
        if p.pod.get(key):
            problems.append(f"{p.name} {key} is set")
    problems += [f"{p.name} volume {name!r} is a hostPath" for name, v in p.volumes.items() if "hostPath" in v]
    for c in p.containers:
        where = f"{p.name} container {c.get('name')!r} securityContext"
        csc = c.get("securityContext") or {}
        seccomp = (csc.get("seccompProfile") or sc.get("seccompProfile") or {}).get("type")
        if seccomp != "RuntimeDefault":
            problems.append(f"{where}.seccompProfile {seccomp!r} (neither container nor pod sets RuntimeDefault)")
        if csc.get("allowPrivilegeEscalation") is not False:
            problems.append(f"{where}.allowPrivilegeEscalation {csc.get('allowPrivilegeEscalation')!r}")
        if csc.get("readOnlyRootFilesystem") is not True:
            problems.append(f"{where}.readOnlyRootFilesystem {csc.get('readOnlyRootFilesystem')!r}")
        caps = csc.get("capabilities") or {}
        if caps.get("drop") != ["ALL"] or caps.get("add"):
            problems.append(f"{where}.capabilities {caps}: drop [ALL], add none")
        if csc.get("privileged"):
            problems.append(f"{where}.privileged")
        if csc.get("runAsNonRoot") is False or csc.get("runAsUser") == 0:
            problems.append(f"{where} runs as root")
    return problems


def resource_problems(p: PodSpec) -> list[str]:
    return [
        f"{p.name} container {c.get('name')!r} resources.{kind}.{res} missing"
        for c in p.containers
        for kind in ("requests", "limits")
        for res in ("cpu", "memory")
        if res not in ((c.get("resources") or {}).get(kind) or {})
    ]


WRITABLE = ("emptyDir", "persistentVolumeClaim", "ephemeral")
READ_ONLY = ("configMap", "secret", "projected", "downwardAPI")


def mount_problems(p: PodSpec) -> list[str]:
    """Writable paths: every volumeMount is an emptyDir or a PVC (a claim template counts); configMap, Secret,
    projected and downwardAPI volumes only read-only."""
    problems = []
    for c in p.containers:
        for m in c.get("volumeMounts", []):
            where = f"{p.name} container {c.get('name')!r} volumeMount {m['name']!r} at {m.get('mountPath')}"
            volume = p.volumes.get(m["name"])
            if volume is None and m["name"] in p.claim_templates:
                continue
            if volume is None:
                problems.append(f"{where}: no such volume")
            elif not any(k in volume for k in WRITABLE) and not (
                m.get("readOnly") and any(k in volume for k in READ_ONLY)
            ):
                problems.append(f"{where}: volume {volume} is neither emptyDir nor PVC (nor a read-only config)")
    return problems


def token_problems(p: PodSpec, objects: Objects) -> list[str]:
    """No ServiceAccount token in any pod, except workflow pods: Argo's executor writes WorkflowTaskResults."""
    automount = p.pod.get("automountServiceAccountToken")
    if not p.workflow:
        return [] if automount is False else [f"{p.name} automountServiceAccountToken {automount!r}, want false"]
    problems = []
    if automount is False:
        problems.append(f"{p.name} automountServiceAccountToken false: Argo's executor needs the token")
    sa = p.pod.get("serviceAccountName")
    accounts = {o["metadata"]["name"]: o for o in objects if o["kind"] == "ServiceAccount"}
    if sa not in accounts:
        problems.append(f"{p.name} serviceAccountName {sa!r} is no rendered ServiceAccount")
    elif accounts[sa].get("automountServiceAccountToken") is False:
        problems.append(f"{p.name} ServiceAccount {sa} disables the token Argo's executor needs")
    return problems


@pytest.mark.parametrize("which", [*SCENARIOS, UPGRADE])
def test_every_pod_spec_is_restricted(which):
    specs = pod_specs(objects_of(which))
    assert specs, f"{which}: no pod spec found"
    problems = [x for p in specs for x in restricted_problems(p)]
    assert not problems, f"{which}:\n" + "\n".join(problems)


@pytest.mark.parametrize("which", [*SCENARIOS, UPGRADE])
def test_every_container_has_requests_and_limits(which):
    problems = [x for p in pod_specs(objects_of(which)) for x in resource_problems(p)]
    assert not problems, f"{which}:\n" + "\n".join(problems)


@pytest.mark.parametrize("which", [*SCENARIOS, UPGRADE])
def test_writable_paths_are_emptydir_or_pvc(which):
    problems = [x for p in pod_specs(objects_of(which)) for x in mount_problems(p)]
    assert not problems, f"{which}:\n" + "\n".join(problems)


@pytest.mark.parametrize("which", [*SCENARIOS, UPGRADE])
def test_service_account_tokens(which):
    objects = objects_of(which)
    problems = [x for p in pod_specs(objects) for x in token_problems(p, objects)]
    assert not problems, f"{which}:\n" + "\n".join(problems)


def first_container(objects: Objects, name: str) -> dict[str, Any]:
    (spec,) = [p for p in pod_specs(objects) if p.name == name]
    return spec.containers[0]


def pod(objects: Objects, name: str) -> dict[str, Any]:
    (spec,) = [p for p in pod_specs(objects) if p.name == name]
    return spec.pod


def swap_volume(pod_spec: dict[str, Any], name: str, source: dict[str, Any]) -> None:
    """Give a volume another source (a writable /tmp on a ConfigMap, say)."""
    (volume,) = [v for v in pod_spec["volumes"] if v["name"] == name]
    volume.clear()
    volume.update({"name": name, **source})


MLFLOW = f"Deployment/{RELEASE}-mlflow"
POSTGRES = f"StatefulSet/{RELEASE}-postgres"
PREDICTOR = f"InferenceService/{RELEASE}-champion:predictor"
TRAIN = f"WorkflowTemplate/{RELEASE}-train:train"

BROKEN_PODS = [
    ("restricted", lambda o: first_container(o, MLFLOW)["securityContext"].pop("allowPrivilegeEscalation")),
    ("restricted", lambda o: first_container(o, PREDICTOR)["securityContext"].update(readOnlyRootFilesystem=False)),
    ("restricted", lambda o: first_container(o, TRAIN)["securityContext"]["capabilities"].update(add=["NET_ADMIN"])),
    ("restricted", lambda o: first_container(o, POSTGRES)["securityContext"].update(privileged=True)),
    ("restricted", lambda o: pod(o, POSTGRES)["securityContext"].pop("runAsUser")),
    ("restricted", lambda o: pod(o, PREDICTOR)["securityContext"].update(runAsNonRoot=False)),
    ("restricted", lambda o: [first_container(o, MLFLOW)["securityContext"].pop("seccompProfile"),
                              pod(o, MLFLOW)["securityContext"].pop("seccompProfile")]),
    ("restricted", lambda o: pod(o, MLFLOW).update(hostNetwork=True)),
    ("restricted", lambda o: pod(o, MLFLOW)["volumes"].append({"name": "host", "hostPath": {"path": "/"}})),
    ("restricted", lambda o: next(t for t in o if t["metadata"]["name"] == f"{RELEASE}-train"
                                  and t["kind"] == "WorkflowTemplate")["spec"]["securityContext"].pop("runAsNonRoot")),
    ("resources", lambda o: first_container(o, TRAIN)["resources"].pop("limits")),
    ("resources", lambda o: first_container(o, PREDICTOR)["resources"]["requests"].pop("memory")),
    ("mounts", lambda o: swap_volume(pod(o, MLFLOW), "tmp", {"configMap": {"name": f"{RELEASE}-config"}})),
    ("mounts", lambda o: first_container(o, TRAIN)["volumeMounts"].append({"name": "nowhere", "mountPath": "/x"})),
    ("tokens", lambda o: pod(o, MLFLOW).pop("automountServiceAccountToken")),
    ("tokens", lambda o: pod(o, PREDICTOR).update(automountServiceAccountToken=True)),
    ("tokens", lambda o: next(t for t in o if t["metadata"]["name"] == f"{RELEASE}-train"
                              and t["kind"] == "WorkflowTemplate")["spec"].update(automountServiceAccountToken=False)),
]  # fmt: skip


def pod_check(check: str, objects: Objects) -> list[str]:
    specs = pod_specs(objects)
    return {
        "restricted": lambda: [x for p in specs for x in restricted_problems(p)],
        "resources": lambda: [x for p in specs for x in resource_problems(p)],
        "mounts": lambda: [x for p in specs for x in mount_problems(p)],
        "tokens": lambda: [x for p in specs for x in token_problems(p, objects)],
    }[check]()


@pytest.mark.parametrize(("check", "mutate"), BROKEN_PODS, ids=[f"{c}-{i}" for i, (c, _) in enumerate(BROKEN_PODS)])
def test_pod_check_fails_on_broken_copy(check, mutate):
    objects = copy.deepcopy(rendered("default").objects)
    assert not pod_check(check, objects), f"{check} fails on the unbroken render"
    mutate(objects)
    assert pod_check(check, objects), f"{check} did not notice the broken copy"


# ================================================================================================ secrets


def strings_at(node: Any, path: str = "") -> Iterator[tuple[str, str]]:
    if isinstance(node, str):
        yield path, node
    elif isinstance(node, dict):
        for k, v in node.items():
            yield from strings_at(v, f"{path}.{k}")
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from strings_at(v, f"{path}[{i}]")


def plain_secret_problems(objects: Objects) -> list[str]:
    """No URL with credentials in any object but a Secret (ConfigMaps, env values, workflow parameters, args…);
    no ConfigMap key and no literal env `value:` whose name says PASSWORD, SECRET or TOKEN."""
    problems = []
    for obj in objects:
        if obj["kind"] == "Secret":
            continue
        problems += [f"{ident(obj)} {path}: a URL with credentials" for path, s in strings_at(obj)
                     if CREDENTIAL_URL.search(s)]  # fmt: skip
        if obj["kind"] == "ConfigMap":
            problems += [f"{ident(obj)} data.{k}: a secret's name in a ConfigMap"
                         for k in obj.get("data", {}) if SECRET_NAME.search(k) or k in SECRET_ENV]  # fmt: skip
    for p in pod_specs(objects):
        for c in p.containers:
            literal = [e["name"] for e in c.get("env", []) if "value" in e]
            problems += [f"{p.name} container {c.get('name')!r} env {name} has a literal value"
                         for name in literal if SECRET_NAME.search(name) or name in SECRET_ENV]  # fmt: skip
    return problems


@pytest.mark.parametrize("which", [*SCENARIOS, UPGRADE])
def test_no_secret_in_plain_values(which):
    assert not (problems := plain_secret_problems(objects_of(which))), f"{which}:\n" + "\n".join(problems)


def db_secret(scenario: str) -> str:
    values = values_of(scenario)
    if values["postgres"]["enabled"]:
        return values["postgres"]["existingSecret"] or f"{RELEASE}-db"
    return values["externalDatabase"]["existingSecret"]


def secret_ref_problems(objects: Objects, secret: str) -> tuple[list[str], dict[str, set[str]]]:
    """Every env var named like a secret comes from a secretKeyRef; the database ones from the database Secret's
    own key. Returns the problems and, per database variable, the pod specs that get it."""
    problems, where = [], {name: set() for name in SECRET_ENV}
    for p in pod_specs(objects):
        for c in p.containers:
            for e in c.get("env", []):
                if e["name"] not in SECRET_ENV and not SECRET_NAME.search(e["name"]):
                    continue
                ref = (e.get("valueFrom") or {}).get("secretKeyRef")
                if ref is None:
                    problems.append(f"{p.name} container {c.get('name')!r} env {e['name']}: not from a secretKeyRef")
                elif e["name"] in SECRET_ENV:
                    where[e["name"]].add(p.name)
                    want = {"name": secret, "key": SECRET_ENV[e["name"]]}
                    if {k: ref.get(k) for k in want} != want:
                        problems.append(f"{p.name} container {c.get('name')!r} env {e['name']}: secretKeyRef {ref}, "
                                        f"want {want}")  # fmt: skip
    return problems, where


@pytest.mark.parametrize("which", [*SCENARIOS, UPGRADE])
def test_database_credentials_only_through_secret_refs(which):
    scenario = "default" if which == UPGRADE else which
    objects = objects_of(which)
    problems, where = secret_ref_problems(objects, db_secret(scenario))
    assert not problems, f"{which}:\n" + "\n".join(problems)
    specs = {p.name: p for p in pod_specs(objects)}
    needs_db = {n for n, p in specs.items() if p.workflow or n.endswith(":transformer")}
    assert needs_db and needs_db <= where["STREAMFLOW_DB_URL"], (
        f"{which}: without STREAMFLOW_DB_URL from the Secret: {sorted(needs_db - where['STREAMFLOW_DB_URL'])}"
    )
    mlflow = {n for n in specs if n.startswith(f"Deployment/{RELEASE}-mlflow") or n.startswith(f"Job/{RELEASE}-mlflow")}
    assert mlflow and mlflow <= where["MLFLOW_BACKEND_STORE_URI"], f"{which}: {where['MLFLOW_BACKEND_STORE_URI']}"
    postgres = {n for n in specs if n.startswith("StatefulSet/")}
    assert postgres == where["POSTGRES_PASSWORD"], f"{which}: POSTGRES_PASSWORD in {where['POSTGRES_PASSWORD']}"
    assert values_of(scenario)["postgres"]["enabled"] == bool(postgres)
    secrets = {o["metadata"]["name"] for o in objects if o["kind"] == "Secret"}
    if values_of(scenario)["postgres"]["enabled"] and not values_of(scenario)["postgres"]["existingSecret"]:
        assert db_secret(scenario) in secrets, f"{which}: the referenced Secret {db_secret(scenario)} is not rendered"


def test_secret_checks_fail_on_broken_copy():
    objects = copy.deepcopy(rendered("default").objects)
    next(o for o in objects if o["kind"] == "ConfigMap")["data"]["DB"] = "postgresql://streamflow:hunter2@db:5432/x"
    assert any("credentials" in p for p in plain_secret_problems(objects))
    objects = copy.deepcopy(rendered("default").objects)
    env = first_container(objects, TRAIN)["env"]
    env[0] = {"name": "STREAMFLOW_DB_URL", "value": "postgresql://db/streamflow"}
    assert plain_secret_problems(objects) and secret_ref_problems(objects, f"{RELEASE}-db")[0]
    objects = copy.deepcopy(rendered("default").objects)
    first_container(objects, MLFLOW)["env"][0]["valueFrom"]["secretKeyRef"]["key"] = "streamflow-url"
    assert secret_ref_problems(objects, f"{RELEASE}-db")[0]
    objects = copy.deepcopy(rendered("default").objects)
    first_container(objects, MLFLOW)["env"].append({"name": "MLFLOW_TRACKING_TOKEN", "value": "abc"})
    assert plain_secret_problems(objects) and secret_ref_problems(objects, f"{RELEASE}-db")[0]


@pytest.mark.parametrize("which", ["default", UPGRADE])
def test_generated_secret_urls(which):
    """The generated Secret has password, streamflow-url and mlflow-url; each URL carries the password URL-encoded
    (the generated one is alphanumeric, so the encoding is only visible with a password from an existing Secret)."""
    objects = objects_of(which)
    (secret,) = [o for o in objects if o["kind"] == "Secret" and o["metadata"]["name"] == f"{RELEASE}-db"]
    data = {k: base64.b64decode(v).decode() for k, v in secret.get("data", {}).items()}
    assert {"password", "streamflow-url", "mlflow-url"} <= set(data), f"Secret/{RELEASE}-db keys {sorted(data)}"
    password = data["password"]
    assert len(password) >= 16, f"Secret/{RELEASE}-db password is {len(password)} characters"
    values = values_of("default")["postgres"]
    for key, database in (("streamflow-url", values["database"]), ("mlflow-url", values["mlflowDatabase"])):
        url = urlsplit(data[key])
        assert url.password == quote(password, safe=""), f"Secret/{RELEASE}-db {key}: password not URL-encoded in it"
        assert (url.scheme, url.username, url.hostname, url.port, url.path) == (
            "postgresql",
            values["username"],
            f"{RELEASE}-postgres",
            5432,
            f"/{database}",
        ), f"Secret/{RELEASE}-db {key} = {url._replace(netloc='…').geturl()} (host {url.hostname})"


# ================================================================================================ resource sums


def sums(objects: Objects) -> tuple[dict[str, Decimal], list[str]]:
    """Requests and limits of the long-running pods (Deployments, StatefulSets, InferenceService components, each
    × replicas) plus KServe's graph router (the InferenceGraph's resources), and one line per contributor."""
    total = {f"{k}.{r}": Decimal(0) for k in ("requests", "limits") for r in ("cpu", "memory")}
    lines = []
    contributors = [(p.name, p.replicas, [c.get("resources", {}) for c in p.containers])
                    for p in pod_specs(objects) if p.long_running]  # fmt: skip
    contributors += [(ident(g) + ":router", g["spec"].get("minReplicas", 1), [g["spec"].get("resources", {})])
                     for g in objects if g["kind"] == "InferenceGraph"]  # fmt: skip
    for name, replicas, resources in contributors:
        for res in resources:
            for key in total:
                kind, r = key.split(".")
                total[key] += replicas * parse_quantity(res[kind][r])
        lines.append(f"{name} ×{replicas}: {resources}")
    return total, lines


def describe(total: dict[str, Decimal]) -> str:
    gib = Decimal(2**30)
    return (f"requests {total['requests.cpu']:.2f} CPU / {total['requests.memory'] / gib:.2f} GiB, "
            f"limits {total['limits.cpu']:.2f} CPU / {total['limits.memory'] / gib:.2f} GiB")  # fmt: skip


def test_default_install_fits_the_laptop():
    total, lines = sums(rendered("default").objects)
    assert len(lines) == 6, f"long-running pods counted: {lines}"
    assert total["requests.cpu"] <= LAPTOP_CPU and total["requests.memory"] <= LAPTOP_MEMORY, (
        f"default install requests more than the 4 CPU / 8 GiB laptop: {describe(total)}"
    )
