"""The chart renders cleanly for the default values and every ci/*-values.yaml scenario: Helm's strict lint at the
kind node's Kubernetes version, every object valid against strict schemas (core kinds with kubernetes-validate, custom
resources against the upstream CRD schemas: a kind with no schema is a failure), no nulls, names that come from the
release, an upgrade that keeps the database Secret and runs MLflow's migration first, values.schema.json refusing bad
values with a message naming the key, every values.yaml key documented, and PVCs + the generated Secret kept on
`helm uninstall`.
"""

from __future__ import annotations

import copy
import functools
import json
import re
from typing import Any

import helm_python
import jsonschema
import kubernetes_validate
import pytest
import yaml

from tests.chart.conftest import (
    CHART,
    NAMESPACE,
    RELEASE,
    ROOT,
    SCENARIOS,
    _chart,
    crd_validator,
    render,
    rendered,
    scenario_values,
    strip,
    values_of,
)

# kind v0.32.0's default node image is kindest/node:v1.36.1 (../shared/UPSTREAM.md). The pin in manifests/ wins when
# it exists: the render is checked at the version the cluster really runs.
KIND_NODE_FALLBACK = "v1.36.1"
DEFAULTS_TEXT = (CHART / "values.yaml").read_text()
DEFAULTS = yaml.safe_load(DEFAULTS_TEXT)
UPGRADE = "upgrade"  # the default values rendered as a `helm upgrade`
CLUSTER_SCOPED = {
    "Namespace", "ClusterRole", "ClusterRoleBinding", "PersistentVolume", "StorageClass", "CustomResourceDefinition",
    "PriorityClass", "IngressClass", "MutatingWebhookConfiguration", "ValidatingWebhookConfiguration",
    "ClusterServingRuntime", "ClusterWorkflowTemplate", "ClusterStorageContainer",
}  # fmt: skip


def kube_version() -> str:
    """The Kubernetes version of the pinned kind node image: ``manifests/versions.env`` first, then any file under
    ``manifests/`` naming ``kindest/node:vX.Y.Z``; the fallback while no pin exists."""
    manifests = ROOT / "manifests"
    if manifests.is_dir():
        files = [manifests / "versions.env", *sorted(p for p in manifests.rglob("*") if p.is_file())]
        for path in files:
            if path.is_file() and (m := re.search(r"kindest/node:(v\d+\.\d+\.\d+)", path.read_text(errors="ignore"))):
                return m.group(1)
    return KIND_NODE_FALLBACK


@functools.cache
def upgrade_render():
    return render(is_upgrade=True)


def objects_of(which: str) -> list[dict[str, Any]]:
    return upgrade_render().objects if which == UPGRADE else rendered(which).objects


def ident(obj: dict[str, Any]) -> str:
    return f"{obj['kind']}/{obj['metadata'].get('name')} ({obj['_template']})"


# ---------------------------------------------------------------------------------------------- lint + schemas


def test_kube_version_is_pinned_form():
    assert re.fullmatch(r"v1\.\d+\.\d+", kube_version()), f"kind node version {kube_version()!r} is not vX.Y.Z"


def test_lint_strict(scenario):
    """`helm lint --strict` at the kind node's version: no error and no warning (severity 2 warning, 3 error;
    1 is Helm's info level, e.g. "icon is recommended")."""
    result = helm_python.lint(str(CHART), scenario_values(scenario), strict=True, kube_version=kube_version())
    bad = [m for m in result["messages"] if m["severity"] >= 2]
    assert not result["errors"] and not bad, f"{scenario}: helm lint --strict at {kube_version()}: {bad or result}"


@functools.cache
def _core_problem(text: str, version: str) -> str | None:
    """kubernetes-validate of one core object (cached by content: most objects are alike in every scenario)."""
    try:
        kubernetes_validate.validate(json.loads(text), version, strict=True)
    except kubernetes_validate.ValidationError as e:
        return f"{e.json_path}: {e.message}"
    except kubernetes_validate.SchemaNotFoundError as e:
        return f"no schema: {e.message} (neither a core kind nor one of the shared CRDs)"
    return None


def object_problems(obj: dict[str, Any]) -> list[str]:
    """What the API server would refuse: core kinds against kubernetes-validate (strict), custom resources against
    their upstream CRD schema. A custom resource without a schema is a problem, never a skip."""
    body = strip(obj)
    validator = crd_validator(obj["apiVersion"], obj["kind"])
    if validator is not None:
        return [f"{ident(obj)} {e.json_path}: {e.message}" for e in validator.iter_errors(body)]
    problem = _core_problem(json.dumps(body, sort_keys=True), kube_version().lstrip("v"))
    return [f"{ident(obj)} {problem}"] if problem else []


@pytest.mark.parametrize("which", [*SCENARIOS, UPGRADE])
def test_every_object_validates(which):
    objects = objects_of(which)
    assert objects, f"{which}: nothing rendered"
    problems = [p for obj in objects for p in object_problems(obj)]
    assert not problems, f"{which}: " + "\n".join(problems)


def test_validation_fails_on_broken_copies():
    """A kind the shared CRDs do not know is reported, not skipped (e.g. a typo in the group or a new add-on); an
    unknown field in a custom resource and a mistyped field in a core kind are reported."""
    graph = copy.deepcopy(rendered("default").named("InferenceGraph", f"{RELEASE}-churn"))
    graph["apiVersion"] = "serving.kserve.io/v1alpha2"
    assert any("no schema" in p for p in object_problems(graph))
    broken = copy.deepcopy(rendered("default").named("InferenceService", f"{RELEASE}-champion"))
    broken["spec"]["predictor"]["minReplica"] = 1
    assert any("minReplica" in p for p in object_problems(broken))
    deployment = copy.deepcopy(rendered("default").named("Deployment", f"{RELEASE}-mlflow"))
    deployment["spec"]["replicas"] = "1"
    deployment["spec"]["template"]["spec"]["containers"][0]["imagePullPolcy"] = "Always"
    assert object_problems(deployment), "kubernetes-validate accepted a string replicas / unknown field"


def nulls(node: Any, path: str = "") -> list[str]:
    if node is None:
        return [path or "$"]
    if isinstance(node, dict):
        return [p for k, v in node.items() for p in nulls(v, f"{path}.{k}")]
    if isinstance(node, list):
        return [p for i, v in enumerate(node) for p in nulls(v, f"{path}[{i}]")]
    return []


@pytest.mark.parametrize("which", [*SCENARIOS, UPGRADE])
def test_no_null_anywhere(which):
    """The API server drops nulls silently but the CRD schemas refuse them: an unguarded optional block is a bug."""
    found = [f"{ident(o)} {p}" for o in objects_of(which) for p in nulls(strip(o))]
    assert not found, f"{which}: null values at " + ", ".join(found)
    assert nulls({"spec": {"volumes": None}}) == [".spec.volumes"]


# ---------------------------------------------------------------------------------------------- upgrade


def test_upgrade_keeps_secret_name_and_adds_migration_job():
    install, upgrade = rendered("default"), upgrade_render()
    install_secrets = sorted(o["metadata"]["name"] for o in install.of_kind("Secret"))
    upgrade_secrets = sorted(o["metadata"]["name"] for o in upgrade.of_kind("Secret"))
    assert install_secrets == upgrade_secrets == [f"{RELEASE}-db"], (install_secrets, upgrade_secrets)
    assert not install.of_kind("Job"), f"install renders Jobs: {[ident(o) for o in install.of_kind('Job')]}"
    jobs = upgrade.of_kind("Job")
    assert [j["metadata"]["name"] for j in jobs] == [f"{RELEASE}-mlflow-migrate"], [ident(j) for j in jobs]
    job = jobs[0]
    assert job["metadata"]["annotations"].get("helm.sh/hook") == "pre-upgrade", job["metadata"]["annotations"]
    (container,) = job["spec"]["template"]["spec"]["containers"]
    command = [*container.get("command", []), *container.get("args", [])]
    assert command == ["mlflow", "db", "upgrade", "$(MLFLOW_BACKEND_STORE_URI)"], f"{ident(job)} command {command}"
    env = {e["name"]: e for e in container.get("env", [])}
    assert "secretKeyRef" in env.get("MLFLOW_BACKEND_STORE_URI", {}).get("valueFrom", {}), (
        f"{ident(job)}: $(MLFLOW_BACKEND_STORE_URI) is expanded from env, which must come from the Secret: {env}"
    )
    # everything else is the same set of objects as on install
    before, after = set(keyed(install.objects)), set(keyed(upgrade.objects))
    assert after - before == {("Job", f"{RELEASE}-mlflow-migrate")} and before <= after, after ^ before


# ---------------------------------------------------------------------------------------------- names


def keyed(objects: list[dict[str, Any]]) -> dict[tuple[str, str], dict[str, Any]]:
    return {(o["kind"], o["metadata"]["name"]): o for o in objects}


REFERENCE_KEYS = ("claimName", "serviceAccountName", "serviceName")  # values that name another object of the release


def references(node: Any, path: str = "") -> list[tuple[str, str]]:
    """(path, name) of every reference to another object: claims, service accounts, services, Secrets and ConfigMaps
    by name, Argo templateRef / workflowTemplateRef, RBAC roleRef and subjects."""
    found: list[tuple[str, str]] = []
    if isinstance(node, dict):
        for key, value in node.items():
            here = f"{path}.{key}"
            if key in REFERENCE_KEYS and isinstance(value, str):
                found.append((here, value))
            elif (
                key
                in (
                    "secretKeyRef",
                    "configMapKeyRef",
                    "configMapRef",
                    "secretRef",
                    "configMap",
                    "templateRef",
                    "workflowTemplateRef",
                    "roleRef",
                )
                and isinstance(value, dict)
                and "name" in value
            ):
                found.append((f"{here}.name", value["name"]))  # fmt: skip
            elif key == "subjects":
                found += [(f"{here}[{i}].name", s["name"]) for i, s in enumerate(value)]
            found += references(value, here)
    elif isinstance(node, list):
        for i, value in enumerate(node):
            found += references(value, f"{path}[{i}]")
    return found


def not_derived(objects: list[dict[str, Any]], fullname: str) -> list[str]:
    prefix = f"{fullname}-"
    bad = [f"{ident(o)} name" for o in objects if not o["metadata"]["name"].startswith(prefix)]
    bad += [f"{ident(o)} {path} = {name!r}" for o in objects for path, name in references(strip(o))
            if not name.startswith(prefix)]  # fmt: skip
    return bad


def test_two_releases_in_one_namespace_do_not_collide():
    a, b = render(name="a", namespace=NAMESPACE), render(name="b", namespace=NAMESPACE)
    clash = sorted(keyed(a.objects).keys() & keyed(b.objects).keys())
    assert not clash, f"releases a and b in one namespace both render {clash}"
    for release, r in (("a", a), ("b", b)):
        assert not (bad := not_derived(r.objects, f"{release}-streamflow")), f"release {release}: not derived: {bad}"
        assert len(keyed(r.objects)) == len(r.objects), f"release {release} renders one (kind, name) twice"


def test_fullname_override_names_everything():
    r = render({"fullnameOverride": "acme"})
    assert not (bad := not_derived(r.objects, "acme")), f"fullnameOverride acme not honoured: {bad}"
    assert not_derived(rendered("default").objects, "acme"), "the check must see names that do not derive"


DNS_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?")


def test_longest_release_name_fits():
    """Helm allows 53-character release names: every object name, and the names KServe derives from the
    InferenceServices (`<isvc>-predictor`, `<isvc>-transformer` Services and Deployments), stay DNS labels."""
    release = "r" * 53
    r = render({"challenger": {"enabled": True}}, name=release)
    names = [(ident(o), o["metadata"]["name"]) for o in r.objects]
    names += [(f"KServe Service for {ident(o)}", f"{o['metadata']['name']}-{c}")
              for o in r.of_kind("InferenceService") for c in ("predictor", "transformer")]  # fmt: skip
    bad = [(what, name, len(name)) for what, name in names if len(name) > 63 or not DNS_LABEL.fullmatch(name)]
    assert not bad, f"names over 63 characters or not DNS labels with release {release}: {bad}"
    assert not not_derived(r.objects, "r" * 40), "the 53-character release's names derive from its 40-character cut"


def namespaces_named(node: Any, path: str = "") -> list[tuple[str, str]]:
    if isinstance(node, dict):
        return [(f"{path}.{k}", v) for k, v in node.items() if k == "namespace" and isinstance(v, str)] + [
            p for k, v in node.items() for p in namespaces_named(v, f"{path}.{k}")
        ]
    if isinstance(node, list):
        return [p for i, v in enumerate(node) for p in namespaces_named(v, f"{path}[{i}]")]
    return []


def test_two_namespaces_keep_to_their_own():
    """The same release in two namespaces: no cluster-scoped object (its name would collide), every `namespace`
    field is the release's own, and the namespace-qualified addresses (the transformer's predictor host, the helm
    test's graph URL) name their own namespace, never the other's."""
    one, two = render(namespace="alpha-ns"), render(namespace="beta-ns")
    for ns, other, r in (("alpha-ns", "beta-ns", one), ("beta-ns", "alpha-ns", two)):
        cluster = [ident(o) for o in r.objects if o["kind"] in CLUSTER_SCOPED]
        assert not cluster, f"cluster-scoped objects collide across namespaces: {cluster}"
        wrong = [f"{ident(o)} {p} = {v}" for o in r.objects for p, v in namespaces_named(strip(o)) if v != ns]
        assert not wrong, f"release in {ns} points at another namespace: {wrong}"
        text = json.dumps([strip(o) for o in r.objects])
        assert other not in text, f"release in {ns} mentions namespace {other}"
        assert f"-predictor.{ns}" in text and f"-churn.{ns}" in text, f"release in {ns} has no {ns}-qualified address"


# ---------------------------------------------------------------------------------------------- values schema


def schema_message(values: dict[str, Any]) -> str:
    """Helm's own values.schema.json check: the error text, or "" when the values pass."""
    try:
        _chart().validate_schema(values)
    except Exception as e:  # helm_python.HelmValuesError
        return str(e)
    return ""


@pytest.mark.parametrize(
    ("values", "names"),
    [
        ({"graph": {"weights": {"champion": 80, "challenger": 10}}}, ["/graph/weights/champion", "90"]),
        ({"telemetry": True}, ["'telemetry'"]),
        ({"serving": {"minReplica": 2}}, ["/serving", "'minReplica'"]),
        ({"graph": {"weights": {"champion": 90, "challenger": 10, "canary": 0}}}, ["/graph/weights", "'canary'"]),
        ({"serving": {"minReplicas": -1}}, ["/serving/minReplicas"]),
        ({"image": {"tag": ""}}, ["/image/tag"]),
        ({"image": {"tag": None}}, ["/image", "'tag'"]),  # null removes a default in Helm's merge
        ({"image": {"tag": "latest"}}, ["/image/tag"]),
    ],
    ids=[
        "weights-80-10",
        "unknown-top",
        "unknown-nested",
        "unknown-deep",
        "negative-replicas",
        "empty-tag",
        "missing-tag",
        "latest-tag",
    ],  # fmt: skip
)
def test_schema_refuses_naming_the_key(values, names):
    message = schema_message(values)
    assert message, f"values.schema.json accepted {values}"
    missing = [n for n in names if n not in message]
    assert not missing, f"schema error for {values} does not name {missing}: {message!r}"
    with pytest.raises(Exception, match=re.escape(names[0])):
        render(values)


@pytest.mark.parametrize(("champion", "challenger"), [(100, 0), (0, 100)])
def test_edge_weights_pass_and_render(champion, challenger):
    values = {"challenger": {"enabled": True}, "graph": {"weights": {"champion": champion, "challenger": challenger}}}
    assert schema_message(values) == "", f"weights {champion}/{challenger} refused"
    steps = render(values).named("InferenceGraph", f"{RELEASE}-churn")["spec"]["nodes"]["root"]["steps"]
    assert {s["name"]: s["weight"] for s in steps} == {"champion": champion, "challenger": challenger}, steps


def test_every_scenario_passes_the_schema(scenario):
    assert schema_message(scenario_values(scenario)) == "", f"ci/{scenario}-values.yaml refused"


@functools.cache
def weights_validator() -> jsonschema.Draft7Validator:
    schema = json.loads((CHART / "values.schema.json").read_text())
    return jsonschema.Draft7Validator(schema["properties"]["graph"]["properties"]["weights"])


def test_weight_rules_exhaustive():
    """For every challenger weight k: (100-k, k) passes and (101-k, k) fails (the schema's one if/then per k),
    with the Python validator on the `graph.weights` subschema (Helm's check per value would cost seconds)."""
    v = weights_validator()
    wrong_pass = [k for k in range(101) if not v.is_valid({"champion": 101 - k, "challenger": k})]
    assert len(wrong_pass) == 101, f"sums of 101 accepted for challenger in {set(range(101)) - set(wrong_pass)}"
    refused = [k for k in range(101) if not v.is_valid({"champion": 100 - k, "challenger": k})]
    assert not refused, f"weights summing to 100 refused for challenger {refused}"
    assert not v.is_valid({"champion": 50, "challenger": 49})


@pytest.mark.parametrize("k", [0, 1, 37, 99, 100])
def test_weight_rules_agree_with_helm(k):
    """Helm's Go validator reads the same if/then rules as the Python one (spot checks)."""
    ok = {"graph": {"weights": {"champion": 100 - k, "challenger": k}}}
    bad = {"graph": {"weights": {"champion": 101 - k, "challenger": k}}}
    assert schema_message(ok) == "", f"helm refuses {ok}"
    assert "/graph/weights" in schema_message(bad), f"helm accepts {bad}"


# ---------------------------------------------------------------------------------------------- values docs


def undocumented_keys(text: str) -> list[str]:
    """Leaf keys of values.yaml with no `# --` doc. The rule: a key is documented when the comment lines directly
    above it (no blank line between) include one starting with `# --`; a leaf key (a scalar, a list or a flow-style
    map like `requests: {cpu: …}`) passes when it or any block map containing it is documented."""
    lines = text.splitlines()

    def documented(line: int) -> bool:
        i = line - 1
        while i >= 0 and lines[i].lstrip().startswith("#"):
            if lines[i].lstrip().startswith("# --"):
                return True
            i -= 1
        return False

    missing: list[str] = []

    def walk(node: yaml.MappingNode, path: str, inherited: bool) -> None:
        for key, value in node.value:
            name = f"{path}.{key.value}" if path else key.value
            ok = inherited or documented(key.start_mark.line)
            if isinstance(value, yaml.MappingNode) and not value.flow_style and value.value:
                walk(value, name, ok)
            elif not ok:
                missing.append(name)

    walk(yaml.compose(text), "", False)
    return missing


def test_every_values_key_documented():
    assert not (missing := undocumented_keys(DEFAULTS_TEXT)), f"values.yaml keys without a `# --` doc: {missing}"


def test_doc_rule_catches_a_missing_doc():
    text = DEFAULTS_TEXT.replace("  # -- Replicas of each server (minimum, with hpa).\n", "", 1)
    assert text != DEFAULTS_TEXT, "the doc line this test removes is gone from values.yaml: pick another"
    assert undocumented_keys(text) == ["serving.minReplicas"]
    assert undocumented_keys("a:\n  # -- doc\n  b: 1\n  c: {d: 1}\n") == ["a.c"]
    assert undocumented_keys("# -- doc\na:\n  b: 1\n  c: {d: 1}\n") == []


def test_app_version_is_the_image_tag():
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    assert str(chart["appVersion"]) == DEFAULTS["image"]["tag"], (
        f"Chart.yaml appVersion {chart['appVersion']!r} != values image.tag {DEFAULTS['image']['tag']!r}"
    )


# ---------------------------------------------------------------------------------------------- kept objects


KEEP = ("helm.sh/resource-policy", "keep")


def test_volumes_and_generated_secret_are_kept(scenario):
    """PVCs (data, MLflow artifacts), Postgres' volumeClaimTemplates and the generated db Secret survive
    `helm uninstall` (their data is the loop's state; a new password would lock out the kept database)."""
    r = rendered(scenario)
    kept: list[tuple[str, dict[str, Any]]] = [(ident(o), o["metadata"]) for o in r.of_kind("PersistentVolumeClaim")]
    for sts in r.of_kind("StatefulSet"):
        kept += [(f"{ident(sts)} volumeClaimTemplate {t['metadata']['name']}", t["metadata"])
                 for t in sts["spec"].get("volumeClaimTemplates", [])]  # fmt: skip
    kept += [(ident(o), o["metadata"]) for o in r.of_kind("Secret")]
    values = values_of(scenario)
    expected = {f"{RELEASE}-mlflow-artifacts"} | ({f"{RELEASE}-data"} if values["workflows"]["enabled"] else set())
    assert expected <= {o["metadata"]["name"] for o in r.of_kind("PersistentVolumeClaim")}, expected
    if values["postgres"]["enabled"] and not values["postgres"]["existingSecret"]:
        assert r.of_kind("StatefulSet"), f"{scenario}: no Postgres StatefulSet"
        assert f"{RELEASE}-db" in {o["metadata"]["name"] for o in r.of_kind("Secret")}, f"{scenario}: no db Secret"
    not_kept = [what for what, meta in kept if (meta.get("annotations") or {}).get(KEEP[0]) != KEEP[1]]
    assert not not_kept, f"{scenario}: without {KEEP[0]}: {KEEP[1]}: {not_kept}"


def test_the_pushgateway_keeps_its_figures_on_a_claim_or_an_emptydir():
    """The month's figures are pushed once: the Pushgateway writes them to a file on its own volume — a kept claim
    by default (Recreate: one writer), an emptyDir (a container restart only) when persistence is off."""
    name = f"{RELEASE}-pushgateway"
    for values, volume in (
        ({}, {"persistentVolumeClaim": {"claimName": name}}),
        ({"pushgateway": {"persistence": {"enabled": False}}}, {"emptyDir": {"sizeLimit": "64Mi"}}),
    ):
        r = render(values)
        spec = r.named("Deployment", name)["spec"]
        (container,) = spec["template"]["spec"]["containers"]
        assert "--persistence.file=/data/pushgateway.data" in container["args"]
        assert container["volumeMounts"] == [{"name": "data", "mountPath": "/data"}]
        assert spec["template"]["spec"]["volumes"] == [{"name": "data", **volume}]
        claims = {o["metadata"]["name"] for o in r.of_kind("PersistentVolumeClaim")}
        assert (name in claims) == bool(volume.get("persistentVolumeClaim")), claims
        assert spec.get("strategy", {}).get("type") == ("Recreate" if name in claims else None)


# ---------------------------------------------------------------------------------------------- scaling


def test_default_renders_no_disruption_budget():
    assert not (pdbs := rendered("default").of_kind("PodDisruptionBudget")), [ident(p) for p in pdbs]


def test_production_budgets_and_hpa():
    r = rendered("production")
    pdbs = {p["metadata"]["name"]: p for p in r.of_kind("PodDisruptionBudget")}
    assert sorted(pdbs) == [f"{RELEASE}-predictor", f"{RELEASE}-transformer"], sorted(pdbs)
    for component in ("predictor", "transformer"):
        selector = pdbs[f"{RELEASE}-{component}"]["spec"]["selector"]["matchLabels"]
        for isvc in r.of_kind("InferenceService"):
            labels = isvc["spec"][component].get("labels", {})
            assert selector.items() <= labels.items(), f"PDB {component} selector {selector} misses {ident(isvc)}"
    isvcs = r.of_kind("InferenceService")
    assert isvcs
    for isvc in isvcs:
        assert isvc["metadata"]["annotations"].get("serving.kserve.io/autoscalerClass") == "hpa", ident(isvc)
        for component in ("predictor", "transformer"):
            spec = isvc["spec"][component]
            assert spec.get("minReplicas") == 2, f"{ident(isvc)} spec.{component}.minReplicas {spec.get('minReplicas')}"
            assert spec.get("maxReplicas", 0) >= 2, f"{ident(isvc)} spec.{component}.maxReplicas"
