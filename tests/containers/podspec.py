"""The rendered chart's containers as exact ``docker run`` invocations (no Kubernetes API needed).

:func:`containers` reads a :class:`tests.chart.conftest.Rendered` chart and returns one :class:`ContainerSpec`
per container the chart would run, with everything the kubelet would resolve already resolved: Argo parameters,
``valueFrom`` references (from the rendered ConfigMaps and Secrets, or Secrets the caller supplies for what the
chart only references, e.g. ``externalDatabase.existingSecret``), ``$(VAR)`` references, named probe ports, the
pod's volumes joined to the mounts, the security context (container wins over pod) and the Service names that
select the pod. :func:`workflow_steps` gives the containers of one WorkflowTemplate in the order Argo runs them.
:func:`docker_run_args` turns a spec into the argv of ``docker run -d``; :func:`probe_command` turns a rendered
probe into a check against the running container.

Container keys (stable across releases and namespaces; ``<suffix>`` is the object name without the release's
``<fullname>-`` prefix):

- ``<component>`` for Deployments, StatefulSets, Jobs and Pods, from the pod's ``app.kubernetes.io/component``
  label (else the object's name): ``mlflow``, ``postgres``, ``pushgateway``, ``mlflow-migrate`` (upgrade renders
  only), ``helm-test``; ``<component>/<container>`` when the pod has more than one container, and
  ``<component>/init:<container>`` for init containers;
- ``predictor:<suffix>`` and ``transformer:<suffix>`` for InferenceServices: ``predictor:champion``,
  ``transformer:champion``, ``predictor:challenger``, ``transformer:challenger``;
- ``workflow:<WorkflowTemplate name>/<template>`` for every container template: ``workflow:streamflow-ingest/
  snapshot``, ``workflow:streamflow-generate/main`` …; ``cronworkflow:<name>/<template>`` for templates inlined in
  a CronWorkflow (the chart's CronWorkflow only references ``streamflow-monthly`` by ``workflowTemplateRef``).

What is substituted where Kubernetes would know more than a render: ``fieldRef`` ``metadata.name`` → the pod's
name as a controller would make it without the random suffix (``<deployment>``, ``<statefulset>-0``,
``<workflow template>-<template>``), ``metadata.namespace`` → the namespace given, ``metadata.labels['k']`` /
``metadata.annotations['k']`` → the pod's own, ``spec.serviceAccountName`` → the pod's; ``status.podIP``,
``status.hostIP``, ``spec.nodeName`` and ``resourceFieldRef`` have no honest value outside a cluster and raise.
Kubernetes' Service-link variables (``<SVC>_SERVICE_HOST`` …, injected unless ``enableServiceLinks: false``) are
not emulated: they hold cluster IPs. Argo's executor wrapper (``argoexec emissary``) and its ``ARGO_*`` variables are
not part of a spec either: the step's own command runs directly.
"""

from __future__ import annotations

import base64
import os
import re
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.chart.conftest import NAMESPACE, Rendered

CLUSTER_DOMAIN = "cluster.local"
COMPONENT_LABEL = "app.kubernetes.io/component"


class PodSpecError(ValueError):
    """A rendered pod spec cannot be turned into a container faithfully (the message names what and where)."""


# ------------------------------------------------------------------------------------------------ the model


@dataclass(frozen=True)
class Port:
    name: str | None
    container_port: int
    protocol: str = "TCP"


@dataclass(frozen=True)
class ServicePort:
    name: str | None
    port: int
    target_port: int


@dataclass(frozen=True)
class ServiceRef:
    """A Service that selects the pod: its in-cluster DNS names become Docker network aliases.

    ``ports`` map the Service's port to the container port it targets; where they differ (KServe's Services: 80 →
    8080), a client calling the Service's port finds nothing on a Docker network, which has no port translation:
    see :meth:`ContainerSpec.port_bridges`."""

    name: str
    namespace: str
    ports: tuple[ServicePort, ...]
    origin: str  # "Service" (rendered by the chart) or "KServe" (made by the KServe controller)

    @property
    def aliases(self) -> tuple[str, ...]:
        """The names a pod resolves for this Service: short, ``.ns``, ``.ns.svc``, ``.ns.svc.cluster.local``."""
        n, ns = self.name, self.namespace
        return (n, f"{n}.{ns}", f"{n}.{ns}.svc", f"{n}.{ns}.svc.{CLUSTER_DOMAIN}")


@dataclass(frozen=True)
class HttpGet:
    path: str
    port: int  # the container port (a named port resolved)
    scheme: str = "HTTP"
    headers: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class Probe:
    """A rendered probe, Kubernetes' defaults filled in (timeout 1 s, period 10 s, failure threshold 3)."""

    kind: str  # startup | readiness | liveness
    http_get: HttpGet | None = None
    exec_command: tuple[str, ...] | None = None
    tcp_port: int | None = None
    initial_delay_seconds: int = 0
    period_seconds: int = 10
    timeout_seconds: int = 1
    success_threshold: int = 1
    failure_threshold: int = 3

    @property
    def budget_seconds(self) -> float:
        """How long Kubernetes would wait before giving up on this probe (initial delay + threshold × period)."""
        return self.initial_delay_seconds + self.failure_threshold * self.period_seconds


@dataclass(frozen=True)
class Mount:
    """One volumeMount joined with its pod volume.

    ``kind``: ``tmpfs`` (emptyDir: a tmpfs, world-writable like an emptyDir, ``size_bytes`` from ``sizeLimit``),
    ``volume`` (persistentVolumeClaim or a StatefulSet claim template: one named Docker volume per claim, named
    ``claim``), ``files`` (configMap / secret volumes: ``files`` maps a relative path to (bytes, mode), written to a
    temporary folder and bind-mounted read-only)."""

    path: str
    volume: str
    kind: str
    read_only: bool = False
    claim: str | None = None
    size_bytes: int | None = None
    files: Mapping[str, tuple[bytes, int]] = field(default_factory=dict)
    secret: bool = False
    sub_path: str | None = None


@dataclass(frozen=True)
class ContainerSpec:
    key: str
    source: str  # "<Kind>/<name>" of the rendered object, plus ":<part>" for InferenceServices
    container: str  # the container's name in the pod
    image: str
    command: tuple[str, ...]
    args: tuple[str, ...]
    env: Mapping[str, str]  # in Kubernetes' order: envFrom first, then env (a later entry wins)
    secret_env: frozenset[str]  # names whose value came from a Secret
    working_dir: str | None
    user: int | None
    group: int | None
    fs_group: int | None
    supplemental_groups: tuple[int, ...]
    run_as_non_root: bool
    read_only_root: bool
    no_new_privileges: bool
    cap_drop: tuple[str, ...]
    cap_add: tuple[str, ...]
    ports: tuple[Port, ...]
    probes: Mapping[str, Probe]
    mounts: tuple[Mount, ...]
    services: tuple[ServiceRef, ...]
    hostname: str
    labels: Mapping[str, str]
    cpu_limit: float | None = None
    memory_limit: int | None = None
    share_process_namespace: bool = False
    termination_grace_seconds: int = 30
    init: bool = False
    step: str | None = None  # workflow_steps: the step's path, e.g. "main/ingest/snapshot"
    when: str | None = None  # workflow_steps: the step's `when` (Argo evaluates it; not resolved here)

    @property
    def argv(self) -> list[str]:
        return [*self.command, *self.args]

    @property
    def network_aliases(self) -> tuple[str, ...]:
        seen: dict[str, None] = {}
        for service in self.services:
            for alias in service.aliases:
                seen.setdefault(alias, None)
        return tuple(seen)

    @property
    def secret_values(self) -> tuple[str, ...]:
        return tuple(self.env[name] for name in sorted(self.secret_env) if self.env[name])

    def port(self, name_or_number: str | int) -> int:
        """A container port by name (``http1``) or number."""
        return _resolve_port(name_or_number, self.ports, self.key)

    def port_bridges(self) -> list[tuple[str, int, int]]:
        """(alias, service port, container port) wherever a Service's port differs from the port it targets: a
        Docker network has no Service IP to translate them, so the caller must forward ``alias:port`` to the
        container (e.g. a forwarder container carrying the alias). KServe's Services map 80 → 8080."""
        return [
            (alias, p.port, p.target_port)
            for service in self.services
            for p in service.ports
            if p.port != p.target_port
            for alias in service.aliases
        ]


# ------------------------------------------------------------------------------------------------ resolving


_QUANTITY = re.compile(r"^([+-]?[0-9.]+(?:[eE][+-]?[0-9]+)?)([a-zA-Z]*)$")
_SUFFIX = {"": 1, "m": 1e-3, "k": 1e3, "M": 1e6, "G": 1e9, "T": 1e12, "P": 1e15, "E": 1e18,
           "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "Pi": 2**50, "Ei": 2**60}  # fmt: skip


def quantity(value: str | int | float) -> float:
    """A Kubernetes resource quantity as a number (``500m`` → 0.5, ``1Gi`` → 1073741824)."""
    match = _QUANTITY.match(str(value).strip())
    if not match or match.group(2) not in _SUFFIX:
        raise PodSpecError(f"not a Kubernetes quantity: {value!r}")
    return float(match.group(1)) * _SUFFIX[match.group(2)]


_KUBELET_VAR = re.compile(r"\$\$|\$\(([A-Za-z_][A-Za-z0-9_.-]*)\)")


def expand_kubelet(text: str, env: Mapping[str, str]) -> str:
    """The kubelet's ``$(VAR)`` expansion: known names are replaced, unknown ones left as they are, ``$$`` → ``$``."""

    def one(match: re.Match[str]) -> str:
        if match.group(0) == "$$":
            return "$"
        name = match.group(1)
        return env[name] if name in env else match.group(0)

    return _KUBELET_VAR.sub(one, text)


_ARGO_TAG = re.compile(r"\{\{(.*?)\}\}")


def resolve_argo(text: str, context: Mapping[str, str], where: str) -> str:
    """Replace ``{{inputs.parameters.X}}`` / ``{{workflow.parameters.X}}`` from ``context``; any other or unknown
    ``{{…}}`` raises, naming it and where it is."""

    def one(match: re.Match[str]) -> str:
        name = match.group(1).strip()
        if name in context:
            return context[name]
        raise PodSpecError(f"{where}: unresolved {match.group(0)!r} (known: {sorted(context) or 'none'})")

    return _ARGO_TAG.sub(one, text)


def _resolve_port(port: str | int, ports: Sequence[Port], where: str) -> int:
    if isinstance(port, int):
        return port
    if str(port).isdigit():
        return int(port)
    for p in ports:
        if p.name == port:
            return p.container_port
    raise PodSpecError(f"{where}: no container port named {port!r} (ports: {[p.name for p in ports]})")


class _Store:
    """The ConfigMaps and Secrets a pod can reference: the rendered ones, plus what the caller supplies."""

    def __init__(
        self,
        rendered: Rendered,
        secrets: Mapping[str, Mapping[str, str]] | None,
        config_maps: Mapping[str, Mapping[str, str]] | None,
    ) -> None:
        self.config_maps: dict[str, dict[str, str]] = {}
        self.secrets: dict[str, dict[str, str]] = {}
        for obj in rendered.of_kind("ConfigMap"):
            data = {k: str(v) for k, v in (obj.get("data") or {}).items()}
            for k, v in (obj.get("binaryData") or {}).items():
                data[k] = base64.b64decode(v).decode()
            self.config_maps[obj["metadata"]["name"]] = data
        for obj in rendered.of_kind("Secret"):
            data = {k: base64.b64decode(v).decode() for k, v in (obj.get("data") or {}).items()}
            data |= {k: str(v) for k, v in (obj.get("stringData") or {}).items()}  # stringData wins, as the API does
            self.secrets[obj["metadata"]["name"]] = data
        for name, values in (config_maps or {}).items():
            self.config_maps[name] = dict(values)
        for name, values in (secrets or {}).items():
            self.secrets[name] = dict(values)

    def _table(self, secret: bool) -> dict[str, dict[str, str]]:
        return self.secrets if secret else self.config_maps

    def whole(self, name: str, *, secret: bool, optional: bool, where: str) -> dict[str, str] | None:
        kind = "Secret" if secret else "ConfigMap"
        table = self._table(secret)
        if name not in table:
            if optional:
                return None
            raise PodSpecError(
                f"{where}: {kind} {name!r} is neither rendered nor supplied (rendered/supplied: {sorted(table)}); "
                f"pass it with {'secrets' if secret else 'config_maps'}={{{name!r}: {{…}}}}"
            )
        return table[name]

    def key(self, name: str, key: str, *, secret: bool, optional: bool, where: str) -> str | None:
        data = self.whole(name, secret=secret, optional=optional, where=where)
        if data is None:
            return None
        if key not in data:
            if optional:
                return None
            kind = "Secret" if secret else "ConfigMap"
            raise PodSpecError(f"{where}: {kind} {name!r} has no key {key!r} (keys: {sorted(data)})")
        return data[key]


@dataclass
class _Pod:
    """What a container needs from its pod."""

    source: str
    name: str  # the pod's name as a controller would make it, without a random suffix
    spec: dict[str, Any]
    labels: dict[str, str]
    annotations: dict[str, str]
    services: tuple[ServiceRef, ...]
    claim_templates: dict[str, str] = field(default_factory=dict)  # volume name → claim name (StatefulSet)


def _field_ref(path: str, pod: _Pod, namespace: str, where: str) -> str:
    if path == "metadata.name":
        return pod.name
    if path == "metadata.namespace":
        return namespace
    if path == "spec.serviceAccountName":
        return pod.spec.get("serviceAccountName") or "default"
    match = re.fullmatch(r"metadata\.(labels|annotations)\['([^']+)'\]", path)
    if match:
        table = pod.labels if match.group(1) == "labels" else pod.annotations
        if match.group(2) in table:
            return table[match.group(2)]
        raise PodSpecError(f"{where}: fieldRef {path}: the pod has no such {match.group(1)[:-1]}")
    raise PodSpecError(f"{where}: fieldRef {path} has no value outside a cluster (pod IP, node…)")


def _env(container: dict[str, Any], pod: _Pod, store: _Store, namespace: str, where: str):
    env: dict[str, str] = {}
    secret_names: set[str] = set()
    for source in container.get("envFrom") or []:
        prefix = source.get("prefix", "")
        for ref_key, secret in (("configMapRef", False), ("secretRef", True)):
            if ref := source.get(ref_key):
                data = store.whole(ref["name"], secret=secret, optional=bool(ref.get("optional")), where=where)
                for k, v in (data or {}).items():
                    env[prefix + k] = v
                    (secret_names.add if secret else secret_names.discard)(prefix + k)
    for item in container.get("env") or []:
        name = item["name"]
        secret = False
        if "valueFrom" in item:
            ref = item["valueFrom"]
            here = f"{where} env {name}"
            if "secretKeyRef" in ref:
                r, secret = ref["secretKeyRef"], True
                value = store.key(r["name"], r["key"], secret=True, optional=bool(r.get("optional")), where=here)
            elif "configMapKeyRef" in ref:
                r = ref["configMapKeyRef"]
                value = store.key(r["name"], r["key"], secret=False, optional=bool(r.get("optional")), where=here)
            elif "fieldRef" in ref:
                value = _field_ref(ref["fieldRef"]["fieldPath"], pod, namespace, here)
            else:
                raise PodSpecError(f"{here}: valueFrom {sorted(ref)} has no value outside a cluster")
            if value is None:  # an optional reference that is absent: Kubernetes sets nothing
                continue
        else:
            value = expand_kubelet(str(item.get("value", "")), env)
        env[name] = value
        (secret_names.add if secret else secret_names.discard)(name)
    return env, frozenset(secret_names)


def _security(container: dict[str, Any], pod: _Pod) -> dict[str, Any]:
    pod_ctx = pod.spec.get("securityContext") or {}
    ctx = container.get("securityContext") or {}

    def pick(key: str) -> Any:
        return ctx[key] if key in ctx else pod_ctx.get(key)

    caps = ctx.get("capabilities") or {}
    return {
        "user": pick("runAsUser"),
        "group": pick("runAsGroup"),
        "run_as_non_root": bool(pick("runAsNonRoot")),
        "fs_group": pod_ctx.get("fsGroup"),
        "supplemental_groups": tuple(pod_ctx.get("supplementalGroups") or ()),
        "read_only_root": bool(ctx.get("readOnlyRootFilesystem")),
        "no_new_privileges": ctx.get("allowPrivilegeEscalation") is False,
        "cap_drop": tuple(caps.get("drop") or ()),
        "cap_add": tuple(caps.get("add") or ()),
    }


def _files(volume: dict[str, Any], store: _Store, where: str) -> tuple[dict[str, tuple[bytes, int]], bool]:
    secret = "secret" in volume
    source = volume["secret"] if secret else volume["configMap"]
    name = source["secretName"] if secret else source["name"]
    data = store.whole(name, secret=secret, optional=bool(source.get("optional")), where=where) or {}
    default_mode = int(source.get("defaultMode", 0o644))
    if "items" in source:
        files = {}
        for item in source["items"]:
            if item["key"] not in data:
                raise PodSpecError(
                    f"{where}: {'Secret' if secret else 'ConfigMap'} {name!r} has no key {item['key']!r}"
                )
            files[item["path"]] = (data[item["key"]].encode(), int(item.get("mode", default_mode)))
        return files, secret
    return {k: (v.encode(), default_mode) for k, v in data.items()}, secret


def _mounts(container: dict[str, Any], pod: _Pod, store: _Store, where: str) -> tuple[Mount, ...]:
    volumes = {v["name"]: v for v in pod.spec.get("volumes") or []}
    mounts = []
    for m in container.get("volumeMounts") or []:
        name, path, ro = m["name"], m["mountPath"], bool(m.get("readOnly"))
        here = f"{where} volumeMount {name} ({path})"
        common = {"path": path, "volume": name, "read_only": ro, "sub_path": m.get("subPath")}
        if name in pod.claim_templates:
            mounts.append(Mount(kind="volume", claim=pod.claim_templates[name], **common))
            continue
        if name not in volumes:
            raise PodSpecError(f"{here}: the pod has no volume {name!r} (volumes: {sorted(volumes)})")
        volume = volumes[name]
        if "emptyDir" in volume:
            limit = (volume["emptyDir"] or {}).get("sizeLimit")
            mounts.append(Mount(kind="tmpfs", size_bytes=int(quantity(limit)) if limit else None, **common))
        elif "persistentVolumeClaim" in volume:
            claim = volume["persistentVolumeClaim"]["claimName"]
            ro = ro or bool(volume["persistentVolumeClaim"].get("readOnly"))
            mounts.append(Mount(kind="volume", claim=claim, **(common | {"read_only": ro})))
        elif "configMap" in volume or "secret" in volume:
            files, secret = _files(volume, store, here)
            # Kubernetes mounts configMap and secret volumes read-only whatever the mount says
            mounts.append(Mount(kind="files", files=files, secret=secret, **(common | {"read_only": True})))
        else:
            raise PodSpecError(f"{here}: volume type {sorted(set(volume) - {'name'})} is not supported here")
    return tuple(mounts)


def _probes(container: dict[str, Any], ports: tuple[Port, ...], where: str) -> dict[str, Probe]:
    probes = {}
    for kind in ("startup", "readiness", "liveness"):
        raw = container.get(f"{kind}Probe")
        if not raw:
            continue
        here = f"{where} {kind}Probe"
        common = {
            "initial_delay_seconds": int(raw.get("initialDelaySeconds", 0)),
            "period_seconds": int(raw.get("periodSeconds", 10)),
            "timeout_seconds": int(raw.get("timeoutSeconds", 1)),
            "success_threshold": int(raw.get("successThreshold", 1)),
            "failure_threshold": int(raw.get("failureThreshold", 3)),
        }
        if "httpGet" in raw:
            h = raw["httpGet"]
            headers = tuple((x["name"], str(x["value"])) for x in h.get("httpHeaders") or [])
            get = HttpGet(h.get("path", "/"), _resolve_port(h["port"], ports, here), h.get("scheme", "HTTP"), headers)
            probes[kind] = Probe(kind, http_get=get, **common)
        elif "exec" in raw:
            probes[kind] = Probe(kind, exec_command=tuple(str(a) for a in raw["exec"]["command"]), **common)
        elif "tcpSocket" in raw:
            probes[kind] = Probe(kind, tcp_port=_resolve_port(raw["tcpSocket"]["port"], ports, here), **common)
        else:
            raise PodSpecError(f"{here}: handler {sorted(raw)} is not supported here (grpc probes: not used)")
    return probes


def _spec(
    key: str,
    container: dict[str, Any],
    pod: _Pod,
    store: _Store,
    namespace: str,
    *,
    argo: Mapping[str, str] | None = None,
    init: bool = False,
    step: str | None = None,
    when: str | None = None,
) -> ContainerSpec:
    where = f"{key} ({pod.source} container {container.get('name')!r})"
    if argo is not None:  # Argo substitutes its parameters in the whole template before the pod exists

        def sub(value: Any, what: str) -> Any:
            if isinstance(value, str):
                return resolve_argo(value, argo, f"{where} {what}")
            if isinstance(value, list):
                return [sub(v, what) for v in value]
            if isinstance(value, dict):
                return {k: sub(v, f"{what}.{k}") for k, v in value.items()}
            return value

        container = {k: sub(v, k) for k, v in container.items()}
    else:
        for what in ("command", "args", "env", "workingDir", "image"):
            for tag in _ARGO_TAG.findall(str(container.get(what) or "")):
                raise PodSpecError(f"{where} {what}: unresolved '{{{{{tag}}}}}' outside an Argo template")
    env, secret_env = _env(container, pod, store, namespace, where)
    ports = tuple(
        Port(p.get("name"), int(p["containerPort"]), p.get("protocol", "TCP")) for p in container.get("ports") or []
    )
    limits = (container.get("resources") or {}).get("limits") or {}
    return ContainerSpec(
        key=key,
        source=pod.source,
        container=container.get("name", "main"),  # Argo names a template's container "main"
        image=container["image"],
        command=tuple(expand_kubelet(str(c), env) for c in container.get("command") or []),
        args=tuple(expand_kubelet(str(a), env) for a in container.get("args") or []),
        env=env,
        secret_env=secret_env,
        working_dir=container.get("workingDir"),
        ports=ports,
        probes=_probes(container, ports, where),
        mounts=_mounts(container, pod, store, where),
        services=pod.services,
        hostname=pod.name[:63],
        labels=dict(pod.labels),
        cpu_limit=quantity(limits["cpu"]) if "cpu" in limits else None,
        memory_limit=int(quantity(limits["memory"])) if "memory" in limits else None,
        share_process_namespace=bool(pod.spec.get("shareProcessNamespace")),
        termination_grace_seconds=int(pod.spec.get("terminationGracePeriodSeconds", 30)),
        init=init,
        step=step,
        when=when,
        **_security(container, pod),
    )


# ------------------------------------------------------------------------------------------------ Services


def _chart_services(rendered: Rendered, namespace: str, labels: Mapping[str, str], ports: Sequence[Port]):
    """The rendered Services whose selector the pod's labels satisfy (a Service without selector selects none)."""
    found = []
    for svc in rendered.of_kind("Service"):
        selector = (svc.get("spec") or {}).get("selector") or {}
        if not selector or any(labels.get(k) != v for k, v in selector.items()):
            continue
        sports = []
        for p in svc["spec"].get("ports") or []:
            target = p.get("targetPort", p["port"])
            sports.append(
                ServicePort(p.get("name"), int(p["port"]), _resolve_port(target, ports, svc["metadata"]["name"]))
            )
        found.append(ServiceRef(svc["metadata"]["name"], namespace, tuple(sports), "Service"))
    return found


def kserve_service(isvc: str, part: str, namespace: str, ports: Sequence[Port]) -> ServiceRef:
    """The Service KServe (Standard/raw mode) makes for one component of an InferenceService.

    Its name is ``<isvc>-predictor`` / ``<isvc>-transformer`` (KServe ``pkg/constants/constants.go``,
    ``PredictorServiceName`` / ``TransformerServiceName``); its first port is 80 targeting the container's first
    port, further ports keep their number (``createDefaultSvc`` in KServe's raw service reconciler,
    ``CommonDefaultHttpPort = 80``). The chart's transformer args name the predictor as
    ``<isvc>-predictor.<namespace>`` without a port, i.e. port 80 — see :meth:`ContainerSpec.port_bridges`."""
    sports = []
    for i, p in enumerate(ports):
        sports.append(ServicePort(p.name or "http", 80 if i == 0 else p.container_port, p.container_port))
    if not sports:
        sports.append(ServicePort("http", 80, 8080))
    return ServiceRef(f"{isvc}-{part}", namespace, tuple(sports), "KServe")


# ------------------------------------------------------------------------------------------------ objects


def _fullname(rendered: Rendered) -> str:
    for cm in rendered.of_kind("ConfigMap"):
        if cm["metadata"].get("labels", {}).get(COMPONENT_LABEL) == "config" and cm["metadata"]["name"].endswith(
            "-config"
        ):
            return cm["metadata"]["name"].removesuffix("-config")
    return ""


def _suffix(name: str, fullname: str) -> str:
    return name.removeprefix(f"{fullname}-") if fullname else name


def _pod_containers(key: str, pod: _Pod, store: _Store, namespace: str) -> dict[str, ContainerSpec]:
    out = {}
    main = pod.spec.get("containers") or []
    for c in pod.spec.get("initContainers") or []:
        k = f"{key}/init:{c['name']}"
        out[k] = _spec(k, c, pod, store, namespace, init=True)
    for c in main:
        k = key if len(main) == 1 else f"{key}/{c['name']}"
        out[k] = _spec(k, c, pod, store, namespace)
    return out


def _workload(obj: dict[str, Any], rendered: Rendered, store: _Store, namespace: str) -> dict[str, ContainerSpec]:
    kind, name = obj["kind"], obj["metadata"]["name"]
    if kind == "Pod":
        meta, spec = obj["metadata"], obj["spec"]
    else:
        meta, spec = obj["spec"]["template"].get("metadata") or {}, obj["spec"]["template"]["spec"]
    labels = dict(meta.get("labels") or {})
    ports = [
        Port(p.get("name"), int(p["containerPort"])) for c in spec.get("containers") or [] for p in c.get("ports") or []
    ]
    services = _chart_services(rendered, namespace, labels, ports)
    pod_name = f"{name}-0" if kind == "StatefulSet" else name
    claims = {}
    if kind == "StatefulSet":
        claims = {
            t["metadata"]["name"]: f"{t['metadata']['name']}-{pod_name}"
            for t in obj["spec"].get("volumeClaimTemplates") or []
        }
        governing = obj["spec"].get("serviceName")
        if governing:  # the pod's own DNS name under its governing (headless or not) Service
            services.append(ServiceRef(f"{pod_name}.{governing}", namespace, (), "Service"))
    pod = _Pod(f"{kind}/{name}", pod_name, spec, labels, dict(meta.get("annotations") or {}), tuple(services), claims)
    key = labels.get(COMPONENT_LABEL) or _suffix(name, _fullname(rendered))
    return _pod_containers(key, pod, store, namespace)


def _inference_service(obj: dict[str, Any], rendered: Rendered, store: _Store, namespace: str):
    out = {}
    name = obj["metadata"]["name"]
    suffix = _suffix(name, _fullname(rendered))
    for part in ("predictor", "transformer", "explainer"):
        spec = obj["spec"].get(part)
        if not spec:
            continue
        if not spec.get("containers"):
            raise PodSpecError(f"InferenceService/{name} {part}: only custom containers are supported (no model spec)")
        labels = dict(obj["metadata"].get("labels") or {}) | dict(spec.get("labels") or {})
        # what KServe's raw reconciler puts on the pods, which its Services select on
        labels |= {"app": f"isvc.{name}-{part}", "component": part, "serving.kserve.io/inferenceservice": name}
        first = spec["containers"][0]
        ports = [Port(p.get("name"), int(p["containerPort"])) for p in first.get("ports") or []]
        services = [kserve_service(name, part, namespace, ports), *_chart_services(rendered, namespace, labels, ports)]
        pod = _Pod(f"InferenceService/{name}:{part}", f"{name}-{part}", spec, labels,
                   dict(spec.get("annotations") or {}), tuple(services))  # fmt: skip
        out |= _pod_containers(f"{part}:{suffix}", pod, store, namespace)
    return out


# ------------------------------------------------------------------------------------------------ Argo


def _params(items: Iterable[dict[str, Any]] | None) -> dict[str, str | None]:
    out: dict[str, str | None] = {}
    for p in items or []:
        value = p.get("value", p.get("default"))
        out[p["name"]] = None if value is None else str(value)
    return out


class _Argo:
    """Runs a WorkflowTemplate's steps in order, as Argo would, without running anything."""

    def __init__(self, rendered: Rendered, store: _Store, namespace: str) -> None:
        self.rendered, self.store, self.namespace = rendered, store, namespace
        self.templates = {o["metadata"]["name"]: o for o in rendered.of_kind("WorkflowTemplate")}

    def workflow_args(self, wt: dict[str, Any], overrides: Mapping[str, str] | None) -> dict[str, str]:
        declared = _params((wt["spec"].get("arguments") or {}).get("parameters"))
        unknown = set(overrides or {}) - set(declared)
        if unknown:
            raise PodSpecError(
                f"WorkflowTemplate/{wt['metadata']['name']}: no parameters {sorted(unknown)} (has {sorted(declared)})"
            )
        values = {k: v for k, v in declared.items() if v is not None} | dict(overrides or {})
        missing = sorted(set(declared) - set(values))
        if missing:
            raise PodSpecError(f"WorkflowTemplate/{wt['metadata']['name']}: parameters {missing} have no value")
        return values

    def template(self, wt_name: str, name: str) -> tuple[dict[str, Any], dict[str, Any]]:
        if wt_name not in self.templates:
            raise PodSpecError(f"templateRef to WorkflowTemplate {wt_name!r}, which is not rendered")
        wt = self.templates[wt_name]
        for t in wt["spec"].get("templates") or []:
            if t["name"] == name:
                return wt, t
        raise PodSpecError(f"WorkflowTemplate/{wt_name} has no template {name!r}")

    def inputs(self, wt_name: str, template: dict[str, Any], given: Mapping[str, str]) -> dict[str, str]:
        declared = _params((template.get("inputs") or {}).get("parameters"))
        values = {}
        for name, default in declared.items():
            if name in given:
                values[name] = given[name]
            elif default is not None:
                values[name] = default
            else:
                raise PodSpecError(f"workflow:{wt_name}/{template['name']}: input parameter {name!r} has no value")
        return values

    def pod(self, wt: dict[str, Any], template: dict[str, Any]) -> _Pod:
        spec = dict(wt["spec"])
        meta = spec.get("podMetadata") or {}
        tmeta = template.get("metadata") or {}
        labels = dict(meta.get("labels") or {}) | dict(tmeta.get("labels") or {})
        annotations = dict(meta.get("annotations") or {}) | dict(tmeta.get("annotations") or {})
        pod_spec = {k: spec[k] for k in ("securityContext", "volumes", "serviceAccountName") if k in spec}
        pod_spec["volumes"] = [*(spec.get("volumes") or []), *(template.get("volumes") or [])]
        if template.get("securityContext"):
            pod_spec["securityContext"] = template["securityContext"]
        name = f"{wt['metadata']['name']}-{template['name']}"
        kind = wt["kind"]
        ports = [Port(p.get("name"), int(p["containerPort"])) for p in template["container"].get("ports") or []]
        services = _chart_services(self.rendered, self.namespace, labels, ports)
        return _Pod(f"{kind}/{wt['metadata']['name']}:{template['name']}", name, pod_spec, labels, annotations,
                    tuple(services))  # fmt: skip

    def leaf(self, wt, template, inputs, wf_args, *, step=None, when=None) -> ContainerSpec:
        prefix = "workflow" if wt["kind"] == "WorkflowTemplate" else "cronworkflow"
        key = f"{prefix}:{wt['metadata']['name']}/{template['name']}"
        context = {f"inputs.parameters.{k}": v for k, v in inputs.items()}
        context |= {f"workflow.parameters.{k}": v for k, v in wf_args.items()}
        return _spec(key, template["container"], self.pod(wt, template), self.store, self.namespace,
                     argo=context, step=step, when=when)  # fmt: skip

    def walk(self, wt, template, inputs, wf_args, path: str, when: str | None = None) -> list[ContainerSpec]:
        if "container" in template:
            return [self.leaf(wt, template, inputs, wf_args, step=path, when=when)]
        if "dag" in template:
            raise PodSpecError(f"{path}: dag templates are not supported here (the chart uses steps)")
        if "steps" not in template:
            raise PodSpecError(f"{path}: template type {sorted(template)} is not supported here")
        context = {f"inputs.parameters.{k}": v for k, v in inputs.items()}
        context |= {f"workflow.parameters.{k}": v for k, v in wf_args.items()}
        out = []
        for group in template["steps"]:
            for step in group:
                here = f"{path}/{step['name']}"
                args = {
                    p["name"]: resolve_argo(str(p.get("value", "")), context, f"{here} argument {p['name']}")
                    for p in (step.get("arguments") or {}).get("parameters") or []
                }
                if "templateRef" in step:
                    ref = step["templateRef"]
                    called_wt, called = self.template(ref["name"], ref["template"])
                elif wt["kind"] == "WorkflowTemplate":
                    called_wt, called = self.template(wt["metadata"]["name"], step["template"])
                else:
                    called_wt, called = wt, _inline(wt, step["template"])
                step_when = step.get("when") or when
                out += self.walk(called_wt, called, self.inputs(called_wt["metadata"]["name"], called, args), wf_args,
                                 here, step_when)  # fmt: skip
        return out


def _inline(wt: dict[str, Any], name: str) -> dict[str, Any]:
    spec = wt["spec"].get("workflowSpec", wt["spec"])
    for t in spec.get("templates") or []:
        if t["name"] == name:
            return t
    raise PodSpecError(f"{wt['kind']}/{wt['metadata']['name']} has no template {name!r}")


def workflow_steps(
    rendered: Rendered,
    workflow_template: str,
    parameters: Mapping[str, str] | None = None,
    *,
    namespace: str = NAMESPACE,
    secrets: Mapping[str, Mapping[str, str]] | None = None,
    config_maps: Mapping[str, Mapping[str, str]] | None = None,
) -> list[ContainerSpec]:
    """The containers Argo runs for one submission of ``workflow_template`` (``argo submit --from
    workflowtemplate/<name> -p k=v``), in order, following ``templateRef`` into other templates; each spec's
    ``step`` is its path (``main/ingest/snapshot``), ``when`` the condition Argo would evaluate (kept verbatim)."""
    argo = _Argo(rendered, _Store(rendered, secrets, config_maps), namespace)
    if workflow_template not in argo.templates:
        raise PodSpecError(f"no WorkflowTemplate {workflow_template!r} rendered (have {sorted(argo.templates)})")
    wt = argo.templates[workflow_template]
    wf_args = argo.workflow_args(wt, parameters)
    _, entry = argo.template(workflow_template, wt["spec"]["entrypoint"])
    return argo.walk(wt, entry, argo.inputs(workflow_template, entry, wf_args), wf_args, entry["name"])


def _workflow_containers(obj, argo: _Argo, parameters: Mapping[str, str] | None) -> dict[str, ContainerSpec]:
    """Every container template of a WorkflowTemplate, with the inputs a submission with default arguments (and
    ``parameters`` where it declares them) gives it; a template no step reaches takes its declared defaults."""
    name = obj["metadata"]["name"]
    declared = _params((obj["spec"].get("arguments") or {}).get("parameters"))
    wf_args = argo.workflow_args(obj, {k: v for k, v in (parameters or {}).items() if k in declared})
    out: dict[str, ContainerSpec] = {}
    _, entry = argo.template(name, obj["spec"]["entrypoint"])
    for spec in argo.walk(obj, entry, argo.inputs(name, entry, wf_args), wf_args, entry["name"]):
        if spec.key.startswith(f"workflow:{name}/"):
            out.setdefault(spec.key, spec)
    for template in obj["spec"].get("templates") or []:
        key = f"workflow:{name}/{template['name']}"
        if "container" in template and key not in out:
            out[key] = argo.leaf(obj, template, argo.inputs(name, template, {}), wf_args)
    return out


def _cron_containers(obj, argo: _Argo) -> dict[str, ContainerSpec]:
    spec = obj["spec"].get("workflowSpec") or {}
    if ref := spec.get("workflowTemplateRef"):
        if ref["name"] not in argo.templates:
            raise PodSpecError(
                f"CronWorkflow/{obj['metadata']['name']}: workflowTemplateRef {ref['name']!r} is not rendered"
            )
        return {}  # its containers are the referenced WorkflowTemplate's
    wrapper = {"kind": "CronWorkflow", "metadata": obj["metadata"], "spec": spec}
    wf_args = {k: v for k, v in _params((spec.get("arguments") or {}).get("parameters")).items() if v is not None}
    return {
        f"cronworkflow:{obj['metadata']['name']}/{t['name']}": argo.leaf(
            wrapper,
            t,
            argo.inputs(obj["metadata"]["name"], t, wf_args if t["name"] == spec.get("entrypoint") else {}),
            wf_args,
        )  # the entrypoint's inputs are the workflow's arguments
        for t in spec.get("templates") or []
        if "container" in t
    }


# ------------------------------------------------------------------------------------------------ public API


def containers(
    rendered: Rendered,
    *,
    namespace: str = NAMESPACE,
    secrets: Mapping[str, Mapping[str, str]] | None = None,
    config_maps: Mapping[str, Mapping[str, str]] | None = None,
    parameters: Mapping[str, str] | None = None,
) -> dict[str, ContainerSpec]:
    """Every container the chart would run, by key (see the module docstring).

    ``secrets`` / ``config_maps`` add or replace objects the chart references without rendering them (plain
    strings, not base64); ``parameters`` override Argo workflow arguments of the templates that declare them;
    ``namespace`` is the release's (rendered objects carry none)."""
    store = _Store(rendered, secrets, config_maps)
    argo = _Argo(rendered, store, namespace)
    out: dict[str, ContainerSpec] = {}

    def add(specs: Mapping[str, ContainerSpec]) -> None:
        for k, v in specs.items():
            if k in out:
                raise PodSpecError(f"two containers share the key {k!r}: {out[k].source} and {v.source}")
            out[k] = v

    for obj in rendered.objects:
        kind = obj["kind"]
        if kind in ("Deployment", "StatefulSet", "Job", "Pod", "DaemonSet", "ReplicaSet"):
            add(_workload(obj, rendered, store, namespace))
        elif kind == "InferenceService":
            add(_inference_service(obj, rendered, store, namespace))
        elif kind == "WorkflowTemplate":
            add(_workflow_containers(obj, argo, parameters))
        elif kind == "CronWorkflow":
            add(_cron_containers(obj, argo))
        elif kind in ("CronJob", "Workflow", "InferenceGraph"):
            # InferenceGraph: KServe's router image runs it, not ours; the others are not rendered by this chart
            if kind != "InferenceGraph":
                raise PodSpecError(f"{kind}/{obj['metadata']['name']}: not supported here")
    return out


def docker_run_args(
    spec: ContainerSpec,
    *,
    network: str,
    name: str,
    image_override: str | None = None,
    publish: Iterable[str | int] = (),
    state_dir: Path | None = None,
    volume_prefix: str = "",
    limits: bool = True,
) -> list[str]:
    """The exact argv of ``docker run -d`` for a spec.

    Environment goes through an env-file (mode 0600) in ``state_dir`` (a new temporary folder when None), so no
    value — secrets included — appears on a command line; configMap / secret volumes are written there too and
    bind-mounted read-only. emptyDirs become ``--tmpfs`` (mode 1777 and ``exec``, like an emptyDir,
    owned by the pod's user and fsGroup because Docker keeps the mode of a folder the image has; ``size`` from
    ``sizeLimit``), claims named Docker volumes ``<volume_prefix><claim>``. ``publish``: container ports (number
    or name) published on 127.0.0.1 only, on a free host port (read it back with ``docker port``). ``--init`` only
    with ``shareProcessNamespace`` (the pause process reaps there); ``limits`` maps resource limits to
    ``--cpus`` / ``--memory`` (swap off, as on a kubelet).

    Not emulated: ``fsGroup`` ownership of volumes. A kubelet makes a claim group-writable by ``fsGroup``; a fresh
    Docker volume takes the owner and mode of the image's folder at that path (root's when the image has none), so
    the image must own ``/data`` and ``/mlflow`` as the chart's UID, or the caller chowns the volume first. The
    fsGroup is still added as a supplementary group (``--group-add``), as Kubernetes does."""
    state = Path(state_dir) if state_dir is not None else Path(tempfile.mkdtemp(prefix="streamflow-pod-"))
    state.mkdir(parents=True, exist_ok=True)
    folder = state / name
    folder.mkdir(mode=0o700, exist_ok=True)
    argv = ["docker", "run", "-d", "--name", name, "--network", network]
    for alias in spec.network_aliases:
        argv += ["--network-alias", alias]
    argv += ["--hostname", spec.hostname, "--label", f"io.streamflow.podspec={spec.key}"]
    if spec.user is not None:
        if spec.run_as_non_root and spec.user == 0:
            raise PodSpecError(f"{spec.key}: runAsNonRoot with runAsUser 0: the kubelet would not start it")
        argv += ["--user", f"{spec.user}:{spec.group}" if spec.group is not None else str(spec.user)]
    elif spec.run_as_non_root:
        raise PodSpecError(f"{spec.key}: runAsNonRoot without runAsUser: the image's user decides, check it")
    for gid in [*([spec.fs_group] if spec.fs_group is not None else []), *spec.supplemental_groups]:
        argv += ["--group-add", str(gid)]  # Kubernetes adds fsGroup to every process's supplementary groups
    if spec.read_only_root:
        argv.append("--read-only")
    for cap in spec.cap_drop:
        argv += ["--cap-drop", cap]
    for cap in spec.cap_add:
        argv += ["--cap-add", cap]
    if spec.no_new_privileges:
        argv += ["--security-opt", "no-new-privileges"]
    if spec.share_process_namespace:
        argv.append("--init")
    argv += ["--stop-timeout", str(spec.termination_grace_seconds)]
    if limits and spec.cpu_limit is not None:
        # Docker refuses more CPUs than the machine has; a kubelet accepts such a limit and never reaches it
        argv += ["--cpus", f"{min(spec.cpu_limit, os.cpu_count() or 1):g}"]
    if limits and spec.memory_limit is not None:
        argv += ["--memory", str(spec.memory_limit), "--memory-swap", str(spec.memory_limit)]
    for mount in spec.mounts:
        argv += _mount_args(spec, mount, folder, volume_prefix)
    if spec.env:
        env_file = folder / "env"
        lines = []
        for key, value in spec.env.items():
            if "\n" in value or "\r" in value or "\x00" in value:
                raise PodSpecError(f"{spec.key}: env {key} holds a line break, which an env-file cannot carry")
            lines.append(f"{key}={value}\n")
        fd = os.open(env_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.writelines(lines)
        argv += ["--env-file", str(env_file)]
    if spec.working_dir:
        argv += ["-w", spec.working_dir]
    for port in publish:
        argv += ["-p", f"127.0.0.1::{spec.port(port)}"]
    rest: list[str] = []
    if spec.command:
        argv += ["--entrypoint", spec.command[0]]
        rest = list(spec.command[1:])
    argv.append(image_override or spec.image)
    return argv + rest + list(spec.args)


def _mount_args(spec: ContainerSpec, mount: Mount, folder: Path, volume_prefix: str) -> list[str]:
    if mount.sub_path:
        raise PodSpecError(f"{spec.key}: subPath mounts ({mount.path}) are not supported here")
    if mount.kind == "tmpfs":
        options = ["rw", "exec", "mode=1777"] + ([f"size={mount.size_bytes}"] if mount.size_bytes else [])
        # Docker (20.10) gives a tmpfs over a folder the image has that folder's mode (0755), not mode=1777, and
        # root as owner: owned by the pod's user and group it is writable by the pod, as an emptyDir is
        if spec.user is not None:
            group = spec.fs_group if spec.fs_group is not None else spec.group
            options += [f"uid={spec.user}"] + ([f"gid={group}"] if group is not None else [])
        return ["--tmpfs", f"{mount.path}:{','.join(options)}"]
    if mount.kind == "volume":
        return ["-v", f"{volume_prefix}{mount.claim}:{mount.path}{':ro' if mount.read_only else ''}"]
    target = folder / f"volume-{mount.volume}"
    target.mkdir(mode=0o755, exist_ok=True)
    target.chmod(0o755)  # the container's user reads it through the bind mount
    for rel, (content, mode) in mount.files.items():
        path = target / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content)
        path.chmod(mode)
    return ["-v", f"{target}:{mount.path}:ro"]


def parse_port_map(docker_port_output: str) -> dict[int, int]:
    """``docker port NAME`` output (``8080/tcp -> 127.0.0.1:49153``) as {container port: host port}."""
    out = {}
    for line in docker_port_output.splitlines():
        match = re.match(r"^\s*(\d+)/(tcp|udp)\s*->\s*\S*:(\d+)\s*$", line)
        if match:
            out.setdefault(int(match.group(1)), int(match.group(3)))
    return out


@dataclass(frozen=True)
class ProbeCheck:
    """One run of a probe; call it: True when the probe succeeds within its ``timeoutSeconds``."""

    probe: Probe
    url: str | None = None
    headers: tuple[tuple[str, str], ...] = ()
    argv: tuple[str, ...] | None = None
    address: tuple[str, int] | None = None

    def __call__(self) -> bool:
        timeout = self.probe.timeout_seconds
        if self.url is not None:
            request = urllib.request.Request(self.url, headers=dict(self.headers))
            try:
                with urllib.request.urlopen(request, timeout=timeout) as response:  # noqa: S310 - loopback only
                    return 200 <= response.status < 400  # the kubelet's rule
            except (urllib.error.URLError, OSError, TimeoutError):
                return False
        if self.argv is not None:
            try:
                done = subprocess.run(self.argv, capture_output=True, timeout=timeout, check=False)
            except subprocess.TimeoutExpired:
                return False
            return done.returncode == 0
        try:
            with socket.create_connection(self.address, timeout=timeout):
                return True
        except OSError:
            return False

    def __str__(self) -> str:
        return self.url or (" ".join(self.argv) if self.argv else f"tcp {self.address}")


def probe_command(
    probe: Probe, host: str = "127.0.0.1", port_map: Mapping[int, int] | None = None, *, container: str | None = None
) -> ProbeCheck:
    """A rendered probe as a check against a running container: httpGet and tcpSocket against ``host`` on the
    published port ``port_map[container port]`` (from :func:`parse_port_map`), with the probe's own headers (the
    MLflow probes send ``Host: localhost``); exec through ``docker exec <container> …`` (as the container's user).
    Each call is bounded by the probe's ``timeoutSeconds``."""
    if probe.http_get is not None:
        get = probe.http_get
        if get.scheme.upper() != "HTTP":
            raise PodSpecError(f"{probe.kind} probe: scheme {get.scheme} is not supported here")
        if port_map is None or get.port not in port_map:
            raise PodSpecError(f"{probe.kind} probe: container port {get.port} is not published ({port_map})")
        return ProbeCheck(probe, url=f"http://{host}:{port_map[get.port]}{get.path}", headers=get.headers)
    if probe.exec_command is not None:
        if not container:
            raise PodSpecError(f"{probe.kind} probe: an exec probe needs the container's name")
        return ProbeCheck(probe, argv=("docker", "exec", container, *probe.exec_command))
    if port_map is None or probe.tcp_port not in port_map:
        raise PodSpecError(f"{probe.kind} probe: container port {probe.tcp_port} is not published ({port_map})")
    return ProbeCheck(probe, address=(host, port_map[probe.tcp_port]))


def wait_for_probe(
    check: Callable[[], bool],
    probe: Probe,
    *,
    budget_seconds: float | None = None,
    alive: Callable[[], bool] | None = None,
) -> bool:
    """Run a check every ``periodSeconds`` after ``initialDelaySeconds`` until it has succeeded
    ``successThreshold`` times in a row (True), or the budget — by default the probe's own, ``initialDelay +
    failureThreshold × period`` — is spent, or ``alive()`` says the container is gone (False)."""
    budget = probe.budget_seconds if budget_seconds is None else budget_seconds
    deadline = time.monotonic() + budget
    time.sleep(min(probe.initial_delay_seconds, budget))
    streak = 0
    while True:
        if alive is not None and not alive():
            return False
        streak = streak + 1 if check() else 0
        if streak >= probe.success_threshold:
            return True
        if time.monotonic() + probe.period_seconds > deadline:
            return False
        time.sleep(probe.period_seconds)


__all__ = [
    "ContainerSpec", "HttpGet", "Mount", "Port", "Probe", "ProbeCheck", "PodSpecError", "ServicePort", "ServiceRef",
    "containers", "docker_run_args", "expand_kubelet", "kserve_service", "parse_port_map", "probe_command",
    "quantity", "resolve_argo", "wait_for_probe", "workflow_steps",
]  # fmt: skip
