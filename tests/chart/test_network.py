"""The NetworkPolicies allow exactly the flows the loop needs, computed back from the rendered objects.

A small evaluator of Kubernetes NetworkPolicy semantics runs over a fixed set of endpoints (the release's pods as
the chart labels them, KServe's graph router, Prometheus, CoreDNS, addresses outside the cluster, and pods that
must stay out) and lists every (source, destination, port) it allows; that set must equal the declared one.
A flow is allowed when the egress side of the source allows it (or no policy selects the source for egress) and
the ingress side of the destination allows it (or no policy selects the destination for ingress). Policies exist
only in the release namespace, so endpoints elsewhere are unrestricted on their own side.
"""

from __future__ import annotations

import copy
import functools
import ipaddress
from dataclasses import dataclass, field
from typing import Any

import pytest

from tests.chart.conftest import NAMESPACE, RELEASE, render, rendered, values_of

FULLNAME = RELEASE  # the release name contains "streamflow": it is the prefix of every object name
GRAPH = f"{FULLNAME}-churn"
NETWORK_SCENARIOS = ["default", "challenger", "external-postgres", "monitoring-off"]
COMPONENTS = (
    "postgres",
    "mlflow",
    "mlflow-migrate",
    "pushgateway",
    "predictor",
    "transformer",
    "workflow",
    "helm-test",
)
# (port, protocol) pairs in play: every port a pod of the release listens on or calls, DNS both ways, the API
PORTS = [(5432, "TCP"), (5000, "TCP"), (8080, "TCP"), (8081, "TCP"), (9091, "TCP"), (53, "UDP"), (53, "TCP"),
         (443, "TCP"), (6443, "TCP")]  # fmt: skip

Flow = tuple[str, str, int, str]  # (source, destination, port, protocol)


def component_labels(component: str) -> dict[str, str]:
    """The selector labels the chart puts on a component's pods."""
    return {
        "app.kubernetes.io/name": "streamflow",
        "app.kubernetes.io/instance": RELEASE,
        "app.kubernetes.io/component": component,
    }


@dataclass(frozen=True)
class Endpoint:
    """A pod (namespace + labels) or an address outside the cluster (ip only)."""

    name: str
    namespace: str | None = None
    labels: dict[str, str] = field(default_factory=dict, hash=False)
    ip: str | None = None

    @property
    def namespace_labels(self) -> dict[str, str]:
        return {"kubernetes.io/metadata.name": self.namespace} if self.namespace else {}


ENDPOINTS = [
    *(Endpoint(c, NAMESPACE, component_labels(c)) for c in COMPONENTS),
    # KServe copies the InferenceGraph's labels onto its router pod and adds its own
    Endpoint("router", NAMESPACE, component_labels("graph") | {"serving.kserve.io/inferencegraph": GRAPH}),
    Endpoint("unlabelled", NAMESPACE, {}),
    Endpoint("prometheus", "monitoring", {"app.kubernetes.io/name": "prometheus"}),
    Endpoint("grafana", "monitoring", {"app.kubernetes.io/name": "grafana"}),
    Endpoint("dns", "kube-system", {"k8s-app": "kube-dns"}),
    # outside the release namespace, labelled like the pods the policies let in: must not get their rights
    Endpoint("outsider", "elsewhere", component_labels("transformer")),
    Endpoint("fake-prometheus", "elsewhere", {"app.kubernetes.io/name": "prometheus"}),
    Endpoint("kube-api", ip="10.96.0.1"),  # the `kubernetes` Service (kind's service CIDR)
    Endpoint("kind-control-plane", ip="172.18.0.2"),  # the API server itself, :6443
    Endpoint("external-db", ip="192.0.2.10"),  # ci/external-postgres-values.yaml's database address
    Endpoint("internet", ip="203.0.113.10"),
]
BY_NAME = {e.name: e for e in ENDPOINTS}
API_ENDPOINTS = ("kube-api", "kind-control-plane")


# ------------------------------------------------------------------------------------------------ the evaluator


def selects(selector: dict[str, Any], labels: dict[str, str]) -> bool:
    """A label selector (matchLabels AND matchExpressions); ``{}`` selects everything."""
    unknown = set(selector) - {"matchLabels", "matchExpressions"}
    assert not unknown, f"selector keys the evaluator does not model: {unknown}"
    if any(labels.get(k) != v for k, v in (selector.get("matchLabels") or {}).items()):
        return False
    for expr in selector.get("matchExpressions") or []:
        key, op, values = expr["key"], expr["operator"], expr.get("values") or []
        ok = {
            "In": key in labels and labels[key] in values,
            "NotIn": key not in labels or labels[key] not in values,
            "Exists": key in labels,
            "DoesNotExist": key not in labels,
        }.get(op)
        assert ok is not None, f"unknown selector operator {op!r}"
        if not ok:
            return False
    return True


def peer_matches(peer: dict[str, Any], ep: Endpoint, policy_namespace: str) -> bool:
    """One from/to entry: an ipBlock (addresses only), or pod and namespace selectors ANDed."""
    unknown = set(peer) - {"ipBlock", "podSelector", "namespaceSelector"}
    assert not unknown, f"peer keys the evaluator does not model: {unknown}"
    if "ipBlock" in peer:
        assert len(peer) == 1, f"an ipBlock peer cannot carry selectors: {peer}"
        if ep.ip is None:
            return False
        ip = ipaddress.ip_address(ep.ip)
        block = peer["ipBlock"]
        return ip in ipaddress.ip_network(block["cidr"]) and not any(
            ip in ipaddress.ip_network(cidr) for cidr in block.get("except") or []
        )
    if ep.namespace is None:
        return False
    if "namespaceSelector" in peer:
        namespace_ok = selects(peer["namespaceSelector"], ep.namespace_labels)
    else:  # a podSelector alone: pods of the policy's own namespace
        namespace_ok = ep.namespace == policy_namespace
    return namespace_ok and selects(peer.get("podSelector") or {}, ep.labels)


def port_matches(ports: list[dict[str, Any]] | None, port: int, protocol: str) -> bool:
    """No port list: every port. A port entry without a port: every port of its protocol (TCP by default)."""
    if not ports:
        return True
    for entry in ports:
        if entry.get("protocol", "TCP") != protocol:
            continue
        if "port" not in entry:
            return True
        number = entry["port"]
        assert isinstance(number, int), f"named port {number!r}: the evaluator models numbers only"
        if number <= port <= entry.get("endPort", number):
            return True
    return False


def policy_types(policy: dict[str, Any]) -> list[str]:
    spec = policy["spec"]
    return spec.get("policyTypes") or ["Ingress", *(["Egress"] if "egress" in spec else [])]


def side_allows(
    policies: list[dict[str, Any]], ep: Endpoint, direction: str, other: Endpoint, port: int, protocol: str
) -> bool:
    """Whether ``ep``'s own policies let ``other`` in (Ingress) or let ``ep`` out to ``other`` (Egress)."""
    rules_key, peers_key = ("ingress", "from") if direction == "Ingress" else ("egress", "to")
    selecting = [
        p
        for p in policies
        if ep.namespace == p["metadata"].get("namespace", NAMESPACE)
        and direction in policy_types(p)
        and selects(p["spec"]["podSelector"], ep.labels)
    ]
    if not selecting:
        return True
    return any(
        (not rule.get(peers_key) or any(peer_matches(peer, other, p["metadata"].get("namespace", NAMESPACE))
                                        for peer in rule[peers_key]))
        and port_matches(rule.get("ports"), port, protocol)
        for p in selecting
        for rule in p["spec"].get(rules_key) or []
    )  # fmt: skip


def allowed_flows(policies: list[dict[str, Any]], endpoints: list[Endpoint] = ENDPOINTS) -> set[Flow]:
    """Every flow between two endpoints, one of them in the release namespace, that the policies allow."""
    for p in policies:
        assert p["apiVersion"] == "networking.k8s.io/v1", p["metadata"]["name"]
    return {
        (src.name, dst.name, port, protocol)
        for src in endpoints
        for dst in endpoints
        if src != dst and NAMESPACE in (src.namespace, dst.namespace)
        for port, protocol in PORTS
        if side_allows(policies, src, "Egress", dst, port, protocol)
        and side_allows(policies, dst, "Ingress", src, port, protocol)
    }


# ------------------------------------------------------------------------------------------------ the declared flows


def addresses_in(cidr: str) -> list[str]:
    """The address endpoints inside a CIDR of the values (what an ipBlock of it stands for)."""
    net = ipaddress.ip_network(cidr)
    return [e.name for e in ENDPOINTS if e.ip and ipaddress.ip_address(e.ip) in net]


def declared_flows(scenario: str) -> set[Flow]:
    """The flows docs/kubernetes.md and the issue declare, for a scenario's values (nothing read from policies)."""
    values = values_of(scenario)
    np = values["networkPolicy"]
    flows: set[Flow] = set()

    def allow(sources, destinations, ports, protocol="TCP"):
        for src in [sources] if isinstance(sources, str) else sources:
            for dst in [destinations] if isinstance(destinations, str) else destinations:
                for port in [ports] if isinstance(ports, int) else ports:
                    flows.add((src, dst, port, protocol))

    if values["postgres"]["enabled"]:
        database, db_port = ["postgres"], 5432
    else:  # the external database is an ipBlock: every address in its CIDR
        database, db_port = addresses_in(np["externalDatabaseCIDR"]), np["externalDatabasePort"]
    allow("router", "transformer", 8080)
    allow("transformer", "predictor", 8080)
    allow("transformer", database, db_port)
    allow("predictor", "mlflow", 5000)
    allow(["mlflow", "mlflow-migrate"], database, db_port)
    allow("workflow", database, db_port)
    allow("workflow", "mlflow", 5000)
    allow("workflow", "pushgateway", 9091)
    if values["workflows"]["enabled"]:
        allow("workflow", addresses_in(np["apiServerCIDR"]), np["apiServerPorts"])
    allow("helm-test", "router", 8080)
    allow("helm-test", "mlflow", 5000)  # reads the registry's production version
    if values["monitoring"]["enabled"]:
        allow("prometheus", ["predictor", "transformer"], 8080)
        allow("prometheus", "pushgateway", 9091)
    # the DNS policy selects every pod of the namespace, so even a pod the chart does not know resolves names
    release_pods = [e.name for e in ENDPOINTS if e.namespace == NAMESPACE]
    allow(release_pods, "dns", 53, "UDP")
    allow(release_pods, "dns", 53, "TCP")
    return flows


def policies_of(scenario: str) -> list[dict[str, Any]]:
    return copy.deepcopy(rendered(scenario).of_kind("NetworkPolicy"))


def show(flows: set[Flow]) -> str:
    return "\n  ".join(f"{s} → {d} :{p}/{proto}" for s, d, p, proto in sorted(flows)) or "(none)"


@functools.cache
def _allowed(scenario: str) -> frozenset[Flow]:
    return frozenset(allowed_flows(policies_of(scenario)))


# ------------------------------------------------------------------------------------------------ tests


@pytest.mark.parametrize("scenario", NETWORK_SCENARIOS)
def test_allowed_flows_equal_the_declared_flows(scenario: str) -> None:
    allowed, declared = _allowed(scenario), declared_flows(scenario)
    missing, extra = declared - allowed, allowed - declared
    assert not missing and not extra, (
        f"[{scenario}] declared but denied:\n  {show(missing)}\nallowed but not declared:\n  {show(extra)}"
    )


@pytest.mark.parametrize("scenario", NETWORK_SCENARIOS)
def test_the_flows_that_must_stay_closed(scenario: str) -> None:
    """The denials the issue names, spelled out (the equality above implies them; these say why it matters)."""
    allowed = _allowed(scenario)
    closed = [
        ("transformer", "mlflow", 5000, "TCP"),  # MLflow's API moves `production`
        ("router", "mlflow", 5000, "TCP"),
        ("predictor", "postgres", 5432, "TCP"),
        ("predictor", "external-db", 5432, "TCP"),
        ("helm-test", "postgres", 5432, "TCP"),
        ("helm-test", "transformer", 8080, "TCP"),  # the test goes through the graph, as users do
        ("pushgateway", "postgres", 5432, "TCP"),
        ("unlabelled", "mlflow", 5000, "TCP"),
        ("grafana", "predictor", 8080, "TCP"),  # monitoring namespace, but not Prometheus
        ("fake-prometheus", "predictor", 8080, "TCP"),  # Prometheus' labels, but not its namespace
        ("internet", "router", 8080, "TCP"),
    ]
    opened = [f for f in closed if f in allowed]
    assert not opened, f"[{scenario}] flows that must stay closed are allowed:\n  {show(set(opened))}"
    grpc = {f for f in allowed if f[2] == 8081}
    assert not grpc, f"[{scenario}] gRPC :8081 must be reachable by nobody (the graph speaks HTTP):\n  {show(grpc)}"
    for name in ("outsider", "fake-prometheus"):
        touching = {f for f in allowed if name in f[:2]}
        assert not touching, f"[{scenario}] {name} (another namespace) must reach nothing and be reached by nothing"
    unlabelled = {f for f in allowed if "unlabelled" in f[:2] and f[1] != "dns"}
    assert not unlabelled, f"[{scenario}] a pod the chart does not know gets only DNS:\n  {show(unlabelled)}"


@pytest.mark.parametrize("scenario", NETWORK_SCENARIOS)
def test_the_model_addresses_fall_in_the_scenario_cidrs(scenario: str) -> None:
    """The address endpoints stand for what the values say (else the declared set would prove nothing about them)."""
    np = values_of(scenario)["networkPolicy"]
    assert set(API_ENDPOINTS) <= set(addresses_in(np["apiServerCIDR"])), f"[{scenario}] {np['apiServerCIDR']}"
    if scenario == "external-postgres":
        assert "external-db" in addresses_in(np["externalDatabaseCIDR"]), np["externalDatabaseCIDR"]
        assert {("transformer", "external-db", 5432, "TCP"), ("mlflow", "external-db", 5432, "TCP"),
                ("workflow", "external-db", 5432, "TCP")} <= _allowed(scenario)  # fmt: skip
        assert not any(f[1] == "postgres" or f[0] == "postgres" for f in _allowed(scenario) if f[1] != "dns"), (
            "no in-cluster Postgres flows without postgres.enabled"
        )


def test_default_deny_for_the_whole_namespace(scenario: str) -> None:
    denies = [
        p["metadata"]["name"]
        for p in rendered(scenario).of_kind("NetworkPolicy")
        if p["spec"]["podSelector"] == {}
        and set(p["spec"].get("policyTypes") or []) == {"Ingress", "Egress"}
        and not p["spec"].get("ingress")
        and not p["spec"].get("egress")
    ]
    assert denies == [f"{FULLNAME}-default-deny"], f"[{scenario}] one default-deny policy expected, got {denies}"


@functools.cache
def _upgrade_render():
    return render(is_upgrade=True)


def _pod_labels(component: str) -> list[dict[str, str]]:
    """The labels of every rendered pod template of a component (default values; the Job from an upgrade)."""
    objects = _upgrade_render().objects
    found: list[dict[str, str]] = []
    for o in objects:
        kind = o["kind"]
        if kind in ("Deployment", "StatefulSet", "Job"):
            found.append(o["spec"]["template"]["metadata"].get("labels") or {})
        elif kind == "Pod":
            found.append(o["metadata"].get("labels") or {})
        elif kind == "WorkflowTemplate":
            found.append(o["spec"].get("podMetadata", {}).get("labels") or {})
        elif kind == "InferenceService":  # KServe merges the object's labels with the component's
            for part in ("predictor", "transformer"):
                found.append((o["metadata"].get("labels") or {}) | (o["spec"][part].get("labels") or {}))
        elif kind == "InferenceGraph":
            found.append(
                (o["metadata"].get("labels") or {}) | {"serving.kserve.io/inferencegraph": o["metadata"]["name"]}
            )
    return [labels for labels in found if labels.get("app.kubernetes.io/component") == component]


@pytest.mark.parametrize("name", [*COMPONENTS, "router"])
def test_rendered_pods_carry_the_labels_of_the_model(name: str) -> None:
    """The evaluator's endpoints are the chart's pods: each component's pod templates carry exactly its labels."""
    model = BY_NAME[name].labels
    pods = _pod_labels(model["app.kubernetes.io/component"])
    assert pods, f"no rendered pod template for {name}"
    for labels in pods:
        assert model.items() <= labels.items(), f"{name}: rendered pod labels {labels} lack {model}"


# ---------------------------------------------------------------------------------------------- the evaluator can fail


def test_a_missing_ingress_policy_closes_exactly_its_flows() -> None:
    """Without <fullname>-predictor-in, default deny leaves the predictor reachable by no one."""
    kept = [p for p in policies_of("default") if p["metadata"]["name"] != f"{FULLNAME}-predictor-in"]
    assert len(kept) == len(policies_of("default")) - 1
    lost = _allowed("default") - allowed_flows(kept)
    assert lost == {("transformer", "predictor", 8080, "TCP"), ("prometheus", "predictor", 8080, "TCP")}, show(lost)
    assert allowed_flows(kept) <= _allowed("default")


def test_without_default_deny_the_predictor_is_open_to_everything() -> None:
    dropped = {f"{FULLNAME}-predictor-in", f"{FULLNAME}-default-deny"}
    kept = [p for p in policies_of("default") if p["metadata"]["name"] not in dropped]
    now = allowed_flows(kept)
    for src in ENDPOINTS:
        if src.namespace != NAMESPACE:  # unrestricted on their own side: every port of the predictor opens
            for port, protocol in PORTS:
                assert (src.name, "predictor", port, protocol) in now, f"{src.name} → predictor :{port}/{protocol}"


def test_an_allow_all_policy_grows_the_set() -> None:
    allow_all = {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": {"name": "allow-all"},
        "spec": {"podSelector": {}, "policyTypes": ["Ingress", "Egress"], "ingress": [{}], "egress": [{}]},
    }
    before, after = _allowed("default"), allowed_flows([*policies_of("default"), allow_all])
    assert before < after
    for flow in [("outsider", "postgres", 5432, "TCP"), ("transformer", "mlflow", 5000, "TCP"),
                 ("internet", "predictor", 8081, "TCP"), ("unlabelled", "internet", 443, "TCP")]:  # fmt: skip
        assert flow in after - before, f"allow-all must open {show({flow})}"


def test_selector_semantics() -> None:
    """The evaluator's own corner cases: expressions, the AND of namespace and pod selectors in one peer, ipBlock."""
    labels = {"a": "1", "b": "2"}
    assert selects({}, labels)
    assert selects({"matchExpressions": [{"key": "a", "operator": "In", "values": ["1", "3"]}]}, labels)
    assert not selects({"matchExpressions": [{"key": "a", "operator": "NotIn", "values": ["1"]}]}, labels)
    assert selects({"matchExpressions": [{"key": "c", "operator": "NotIn", "values": ["1"]}]}, labels)
    assert selects({"matchExpressions": [{"key": "b", "operator": "Exists"}]}, labels)
    assert not selects({"matchExpressions": [{"key": "b", "operator": "DoesNotExist"}]}, labels)
    assert not selects({"matchLabels": {"a": "1"}, "matchExpressions": [{"key": "z", "operator": "Exists"}]}, labels)
    prom = BY_NAME["prometheus"]
    both = {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}},
            "podSelector": {"matchLabels": {"app.kubernetes.io/name": "prometheus"}}}  # fmt: skip
    assert peer_matches(both, prom, NAMESPACE)
    assert not peer_matches(both, BY_NAME["grafana"], NAMESPACE)
    assert not peer_matches(both, BY_NAME["fake-prometheus"], NAMESPACE)
    assert not peer_matches({"podSelector": {}}, prom, NAMESPACE)  # a podSelector alone stays in its namespace
    assert peer_matches({"namespaceSelector": {}}, prom, NAMESPACE)
    block = {"ipBlock": {"cidr": "10.96.0.0/12", "except": ["10.100.0.0/16"]}}
    assert peer_matches(block, BY_NAME["kube-api"], NAMESPACE)
    assert not peer_matches(block, BY_NAME["external-db"], NAMESPACE)
    assert not peer_matches({"ipBlock": {"cidr": "0.0.0.0/0"}}, BY_NAME["mlflow"], NAMESPACE)
    assert port_matches(None, 1, "UDP") and port_matches([{"protocol": "UDP"}], 53, "UDP")
    assert not port_matches([{"port": 53}], 53, "UDP") and port_matches([{"port": 50, "endPort": 60}], 53, "TCP")
