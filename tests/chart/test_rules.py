"""What only a cluster would check: KServe's admission webhooks, Argo's CEL rules (``x-kubernetes-validations``,
which jsonschema ignores) and the references between objects that no schema sees. Each rule is a function from the
rendered objects to a list of problems (object and field named); each holds for every scenario, and each is shown
to fail on a deliberately broken copy of a rendered object (``test_rule_fails_on_broken_copy``), so a rule that
could never fail would be caught.
"""

from __future__ import annotations

import copy
import re
from collections import Counter
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from tests.chart.conftest import NAMESPACE, RELEASE, SCENARIOS, rendered, values_of

Objects = list[dict[str, Any]]
GRAPH_NAME = re.compile(r"[a-z]([-a-z0-9]*[a-z0-9])?")
STEP_TARGETS = ("serviceName", "nodeName", "serviceUrl")
TEMPLATE_TYPES = (
    "container", "script", "dag", "steps", "resource", "suspend", "containerSet", "data", "http", "plugin",
)  # fmt: skip
WORKFLOW_KINDS = ("Workflow", "WorkflowTemplate", "ClusterWorkflowTemplate", "CronWorkflow")


def ident(obj: dict[str, Any]) -> str:
    return f"{obj['kind']}/{obj['metadata']['name']}"


def of_kind(objects: Objects, *kinds: str) -> Objects:
    return [o for o in objects if o["kind"] in kinds]


def flags(args: list[str]) -> dict[str, str]:
    """`--flag value` pairs of a container's args (a flag followed by another flag has the value "")."""
    out: dict[str, str] = {}
    for i, arg in enumerate(args):
        if arg.startswith("--"):
            nxt = args[i + 1] if i + 1 < len(args) else ""
            out[arg] = "" if nxt.startswith("--") else nxt
    return out


# ================================================================================================ InferenceGraph


def graph_has_root(objects: Objects, values: dict[str, Any]) -> list[str]:
    graphs = of_kind(objects, "InferenceGraph")
    return [f"{ident(g)} spec.nodes has no `root` node" for g in graphs if "root" not in g["spec"].get("nodes", {})] + (
        [] if graphs else ["no InferenceGraph rendered"]
    )


def graph_nodes(objects: Objects) -> Iterator[tuple[dict[str, Any], str, dict[str, Any]]]:
    for graph in of_kind(objects, "InferenceGraph"):
        for name, node in graph["spec"].get("nodes", {}).items():
            yield graph, name, node


def steps_name_one_target(objects: Objects, values: dict[str, Any]) -> list[str]:
    return [
        f"{ident(g)} spec.nodes.{n}.steps[{i}] names {[t for t in STEP_TARGETS if t in s]}, needs exactly one of "
        f"{STEP_TARGETS}"
        for g, n, node in graph_nodes(objects)
        for i, s in enumerate(node.get("steps", []))
        if sum(t in s for t in STEP_TARGETS) != 1
    ]


def step_names_unique(objects: Objects, values: dict[str, Any]) -> list[str]:
    problems = []
    for g, n, node in graph_nodes(objects):
        names = Counter(s.get("name") for s in node.get("steps", []))
        problems += [f"{ident(g)} spec.nodes.{n}.steps: name {k!r} used {c} times" for k, c in names.items() if c > 1]
    return problems


def splitter_weights(objects: Objects, values: dict[str, Any]) -> list[str]:
    """A Splitter's weights are all set and sum to 100; the root is a Splitter with the values' weights when the
    challenger is on, else a Sequence."""
    problems = []
    for g, n, node in graph_nodes(objects):
        steps = node.get("steps", [])
        if node.get("routerType") == "Splitter":
            weights = [s.get("weight") for s in steps]
            if None in weights or sum(weights) != 100:
                problems.append(f"{ident(g)} spec.nodes.{n}.steps[].weight {weights}: all set, sum 100")
        elif any("weight" in s for s in steps):
            problems.append(f"{ident(g)} spec.nodes.{n}: weights on a {node.get('routerType')} router")
    for g in of_kind(objects, "InferenceGraph"):
        root = g["spec"].get("nodes", {}).get("root", {})
        want = "Splitter" if values["challenger"]["enabled"] else "Sequence"
        if root.get("routerType") != want:
            problems.append(f"{ident(g)} spec.nodes.root.routerType {root.get('routerType')!r}, want {want}")
        elif want == "Splitter":
            got = {s.get("name"): s.get("weight") for s in root.get("steps", [])}
            if got != values["graph"]["weights"]:
                problems.append(f"{ident(g)} spec.nodes.root weights {got} != values graph.weights")
    return problems


def service_names_exist(objects: Objects, values: dict[str, Any]) -> list[str]:
    isvcs = {o["metadata"]["name"] for o in of_kind(objects, "InferenceService")}
    nodes = {n for _, n, _ in graph_nodes(objects)}
    problems = []
    for g, n, node in graph_nodes(objects):
        for i, s in enumerate(node.get("steps", [])):
            if "serviceName" in s and s["serviceName"] not in isvcs:
                problems.append(f"{ident(g)} spec.nodes.{n}.steps[{i}].serviceName {s['serviceName']!r}: no such "
                                f"InferenceService (have {sorted(isvcs)})")  # fmt: skip
            if "nodeName" in s and s["nodeName"] not in nodes:
                problems.append(f"{ident(g)} spec.nodes.{n}.steps[{i}].nodeName {s['nodeName']!r}: no such node")
    return problems


def graph_name_format(objects: Objects, values: dict[str, Any]) -> list[str]:
    return [
        f"{ident(g)} metadata.name does not match {GRAPH_NAME.pattern}"
        for g in of_kind(objects, "InferenceGraph")
        if not GRAPH_NAME.fullmatch(g["metadata"]["name"])
    ]


# ================================================================================================ InferenceService

COMPONENTS = ("predictor", "transformer", "explainer")


def components(objects: Objects) -> Iterator[tuple[dict[str, Any], str, dict[str, Any]]]:
    for isvc in of_kind(objects, "InferenceService"):
        for name in COMPONENTS:
            if name in isvc["spec"]:
                yield isvc, name, isvc["spec"][name]


def isvc_containers(objects: Objects, values: dict[str, Any]) -> list[str]:
    """KServe's custom-container contract: first container `kserve-container` listening on 8080 (HTTP) and 8081
    (gRPC), `PROTOCOL=v2`; no container sets PYTHONPATH (the webhook refuses it), not even through a ConfigMap."""
    configmaps = {o["metadata"]["name"]: o.get("data", {}) for o in of_kind(objects, "ConfigMap")}
    problems = []
    for isvc, comp, spec in components(objects):
        where = f"{ident(isvc)} spec.{comp}"
        containers = spec.get("containers", [])
        if not containers or containers[0].get("name") != "kserve-container":
            problems.append(f"{where}.containers[0].name is not kserve-container")
        for c in containers:
            ports = {p.get("containerPort") for p in c.get("ports", [])}
            if not {8080, 8081} <= ports:
                problems.append(f"{where} container {c.get('name')} ports {sorted(ports)}: needs 8080 and 8081")
            env = {e["name"]: e for e in c.get("env", [])}
            if env.get("PROTOCOL", {}).get("value") != "v2":
                problems.append(f"{where} container {c.get('name')} env PROTOCOL {env.get('PROTOCOL')}, want v2")
        for c in containers + spec.get("initContainers", []):
            if any(e["name"] == "PYTHONPATH" for e in c.get("env", [])):
                problems.append(f"{where} container {c.get('name')} env sets PYTHONPATH")
            for ref in c.get("envFrom", []):
                name = ref.get("configMapRef", {}).get("name")
                if name and "PYTHONPATH" in configmaps.get(name, {}):
                    problems.append(f"{where} container {c.get('name')} gets PYTHONPATH from ConfigMap {name}")
    return problems


def isvc_annotations(objects: Objects, values: dict[str, Any]) -> list[str]:
    want_class = values["serving"]["autoscalerClass"]
    problems = [] if want_class in ("none", "hpa") else [f"values serving.autoscalerClass {want_class!r}"]
    for obj in of_kind(objects, "InferenceService", "InferenceGraph"):
        notes = obj["metadata"].get("annotations", {})
        if notes.get("serving.kserve.io/deploymentMode") != "Standard":
            problems.append(f"{ident(obj)} annotation serving.kserve.io/deploymentMode "
                            f"{notes.get('serving.kserve.io/deploymentMode')!r}, want Standard")  # fmt: skip
        got = notes.get("serving.kserve.io/autoscalerClass")
        if obj["kind"] == "InferenceService" and got != want_class:
            problems.append(f"{ident(obj)} annotation serving.kserve.io/autoscalerClass {got!r}, want {want_class!r}")
    return problems


def server_args(objects: Objects, values: dict[str, Any]) -> list[str]:
    """The transformer names the model and its predictor explicitly (KServe would add its own defaults, and the
    graph would call the wrong model name); each predictor serves its alias."""
    model = values["serving"]["modelName"]
    aliases = {f"{RELEASE}-champion": "production", f"{RELEASE}-challenger": "challenger"}
    problems = []
    for isvc in of_kind(objects, "InferenceService"):
        name = isvc["metadata"]["name"]
        want = {
            "transformer": {"--model_name": model, "--predictor_host": f"{name}-predictor.{NAMESPACE}",
                            "--http_port": "8080"},
            "predictor": {"--model_name": model, "--http_port": "8080", "--alias": aliases.get(name, "?")},
        }  # fmt: skip
        for comp, expected in want.items():
            containers = isvc["spec"].get(comp, {}).get("containers", [{}])
            got = flags([str(a) for a in containers[0].get("args", [])])
            problems += [
                f"{ident(isvc)} spec.{comp}.containers[0].args {flag} {got.get(flag)!r}, want {value!r}"
                for flag, value in expected.items()
                if got.get(flag) != value
            ]
    return problems


# ================================================================================================ Argo


def workflow_specs(objects: Objects) -> Iterator[tuple[dict[str, Any], dict[str, Any]]]:
    """(object, workflow spec) of every Workflow, (Cluster)WorkflowTemplate and CronWorkflow."""
    for obj in of_kind(objects, *WORKFLOW_KINDS):
        yield obj, obj["spec"]["workflowSpec"] if obj["kind"] == "CronWorkflow" else obj["spec"]


def templates(objects: Objects) -> Iterator[tuple[dict[str, Any], dict[str, Any], dict[str, Any]]]:
    for obj, spec in workflow_specs(objects):
        for t in spec.get("templates", []):
            yield obj, spec, t


def kinds_of(template: dict[str, Any]) -> list[str]:
    return [k for k in TEMPLATE_TYPES if k in template]


def is_leaf(template: dict[str, Any]) -> bool:
    return not {"steps", "dag"} & set(template)


def one_template_type(objects: Objects, values: dict[str, Any]) -> list[str]:
    return [
        f"{ident(o)} template {t.get('name')!r} has types {kinds_of(t)}: exactly one of {TEMPLATE_TYPES}"
        for o, _, t in templates(objects)
        if len(kinds_of(t)) != 1
    ]


def no_timeout_on_steps(objects: Objects, values: dict[str, Any]) -> list[str]:
    return [f"{ident(o)} template {t['name']!r}: `timeout` on a {kinds_of(t)} template"
            for o, _, t in templates(objects) if not is_leaf(t) and "timeout" in t]  # fmt: skip


def deadline_only_on_leaves(objects: Objects, values: dict[str, Any]) -> list[str]:
    return [f"{ident(o)} template {t['name']!r}: activeDeadlineSeconds on a {kinds_of(t)} template"
            for o, _, t in templates(objects) if not is_leaf(t) and "activeDeadlineSeconds" in t]  # fmt: skip


def leaves_retry_with_backoff(objects: Objects, values: dict[str, Any]) -> list[str]:
    return [
        f"{ident(o)} template {t['name']!r}: retryStrategy {t.get('retryStrategy')} has no backoff"
        for o, _, t in templates(objects)
        if is_leaf(t) and not (t.get("retryStrategy") or {}).get("backoff")
    ]


def calls(template: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any], int]]:
    """(path, step or task, group index) of every call in a steps or dag template."""
    for g, group in enumerate(template.get("steps", [])):
        for i, step in enumerate(group):
            yield f"steps[{g}][{i}] {step.get('name')!r}", step, g
    for i, task in enumerate(template.get("dag", {}).get("tasks", [])):
        yield f"dag.tasks[{i}] {task.get('name')!r}", task, 0


def callee(objects: Objects, spec: dict[str, Any], call: dict[str, Any]) -> tuple[dict[str, Any] | None, str]:
    """The template a step or task calls, or None and why not."""
    by_name = {o["metadata"]["name"]: s for o, s in workflow_specs(objects) if o["kind"] == "WorkflowTemplate"}
    if "templateRef" in call:
        ref = call["templateRef"]
        target = by_name.get(ref.get("name"))
        if target is None:
            return None, f"templateRef.name {ref.get('name')!r} is no rendered WorkflowTemplate ({sorted(by_name)})"
        spec, wanted = target, ref.get("template")
    else:
        wanted = call.get("template")
    found = [t for t in spec.get("templates", []) if t.get("name") == wanted]
    return (found[0], "") if found else (None, f"template {wanted!r} does not exist there")


def references_resolve(objects: Objects, values: dict[str, Any]) -> list[str]:
    """Every templateRef names a rendered WorkflowTemplate and one of its templates; every `template:` names a
    template of the same spec; every entrypoint exists; every workflowTemplateRef names a rendered WorkflowTemplate."""
    problems = []
    for o, spec, t in templates(objects):
        for path, call, _ in calls(t):
            if callee(objects, spec, call)[0] is None:
                problems.append(f"{ident(o)} template {t['name']!r} {path}: {callee(objects, spec, call)[1]}")
    names = {o["metadata"]["name"] for o in of_kind(objects, "WorkflowTemplate")}
    for o, spec in workflow_specs(objects):
        if "entrypoint" in spec and spec["entrypoint"] not in {t["name"] for t in spec.get("templates", [])}:
            problems.append(f"{ident(o)} entrypoint {spec['entrypoint']!r} is no template of it")
        ref = spec.get("workflowTemplateRef")
        if ref is not None and ref.get("name") not in names:
            problems.append(f"{ident(o)} workflowTemplateRef.name {ref.get('name')!r} is no rendered WorkflowTemplate")
        if ref is None and not spec.get("templates"):
            problems.append(f"{ident(o)} has neither templates nor a workflowTemplateRef")
    return problems


STEP_REF = re.compile(r"steps\.([A-Za-z0-9_-]+)\.|steps\[['\"]([^'\"]+)['\"]\]")
TASK_REF = re.compile(r"tasks\.([A-Za-z0-9_-]+)\.|tasks\[['\"]([^'\"]+)['\"]\]")
DECISION = re.compile(r"jsonpath\(\s*steps\.drift\.outputs\.result\s*,\s*'\$\.decision'\s*\)\s*==\s*'RETRAIN'")


def when_references_earlier_steps(objects: Objects, values: dict[str, Any]) -> list[str]:
    """A `when` may read only steps of earlier groups of the same steps template (a step of the same group runs
    beside it; a later one has not run); a DAG task's only tasks of its own DAG. The drift template retrains only on
    `jsonpath(steps.drift.outputs.result, '$.decision') == 'RETRAIN'`."""
    problems = []
    for o, _, t in templates(objects):
        for path, call, group in calls(t):
            when = call.get("when")
            if not when:
                continue
            if "steps" in t:
                earlier = {s.get("name") for g in t["steps"][:group] for s in g}
                used = {a or b for a, b in STEP_REF.findall(when)}
            else:
                earlier = {task.get("name") for task in t["dag"]["tasks"]} - {call.get("name")}
                used = {a or b for a, b in TASK_REF.findall(when)}
            if not used:
                problems.append(f"{ident(o)} template {t['name']!r} {path}: when {when!r} reads no step")
            problems += [f"{ident(o)} template {t['name']!r} {path}: when reads {u!r}, not an earlier step"
                         for u in sorted(used - earlier)]  # fmt: skip
    for o in of_kind(objects, "WorkflowTemplate"):
        if o["metadata"]["name"] != f"{RELEASE}-drift":
            continue
        whens = [(path, c.get("when", "")) for t in o["spec"]["templates"] for path, c, _ in calls(t) if "when" in c]
        if not whens or not all(DECISION.search(w) for _, w in whens):
            problems.append(f"{ident(o)}: the retrain `when` must read .decision == 'RETRAIN' from "
                            f"steps.drift.outputs.result, have {whens}")  # fmt: skip
    return problems


INPUT_REF = re.compile(r"inputs\.parameters\.([A-Za-z0-9_-]+)|inputs\.parameters\[['\"]([^'\"]+)['\"]\]")
EXPRESSION = re.compile(r"\{\{(.*?)\}\}")


def strings(node: Any) -> Iterator[str]:
    if isinstance(node, str):
        yield node
    elif isinstance(node, dict):
        for v in node.values():
            yield from strings(v)
    elif isinstance(node, list):
        for v in node:
            yield from strings(v)


def declared(template: dict[str, Any]) -> set[str]:
    return {p["name"] for p in (template.get("inputs") or {}).get("parameters", [])}


def inputs_declared(objects: Objects, values: dict[str, Any]) -> list[str]:
    """Every `{{inputs.parameters.X}}` a template uses is declared in its own inputs (Argo would leave it
    unresolved and fail the step at run time)."""
    problems = []
    for o, _, t in templates(objects):
        used = {a or b for s in strings(t) for expr in EXPRESSION.findall(s) for a, b in INPUT_REF.findall(expr)}
        problems += [f"{ident(o)} template {t['name']!r} uses inputs.parameters.{u}, not declared in its inputs "
                     f"({sorted(declared(t))})" for u in sorted(used - declared(t))]  # fmt: skip
    return problems


def calls_pass_declared_parameters(objects: Objects, values: dict[str, Any]) -> list[str]:
    """Every call (a step's `template`/`templateRef`, and the entrypoint, called with the spec's own arguments)
    passes exactly the parameters the callee declares: no missing input, no argument the callee ignores."""
    problems = []
    for o, spec, t in templates(objects):
        for path, call, _ in calls(t):
            target, _ = callee(objects, spec, call)
            passed = {p["name"] for p in (call.get("arguments") or {}).get("parameters", [])}
            if target is not None and passed != declared(target):
                problems.append(f"{ident(o)} template {t['name']!r} {path} passes {sorted(passed)}, "
                                f"callee {target['name']!r} declares {sorted(declared(target))}")  # fmt: skip
    for o, spec in workflow_specs(objects):
        entry = [t for t in spec.get("templates", []) if t.get("name") == spec.get("entrypoint")]
        passed = {p["name"] for p in (spec.get("arguments") or {}).get("parameters", [])}
        if entry and passed != declared(entry[0]):
            problems.append(f"{ident(o)} spec.arguments {sorted(passed)} != entrypoint {entry[0]['name']!r} inputs "
                            f"{sorted(declared(entry[0]))}")  # fmt: skip
    return problems


def cron_schedule(objects: Objects, values: dict[str, Any]) -> list[str]:
    """Argo 4 needs `schedules` (a list; `schedule` is gone), a `timezone`, and the CronWorkflow ships suspended."""
    cron_values = values["workflows"]["cron"]
    crons = of_kind(objects, "CronWorkflow")
    want = values["workflows"]["enabled"] and cron_values["enabled"]
    problems = [] if bool(crons) == want else [f"{len(crons)} CronWorkflows rendered, values say {want}"]
    for c in crons:
        spec = c["spec"]
        if "schedule" in spec or not isinstance(spec.get("schedules"), list) or not spec["schedules"]:
            problems.append(f"{ident(c)} spec.schedules {spec.get('schedules')!r} / schedule {spec.get('schedule')!r}")
        if not spec.get("timezone"):
            problems.append(f"{ident(c)} spec.timezone missing")
        if spec.get("suspend") is not cron_values["suspend"]:
            problems.append(f"{ident(c)} spec.suspend {spec.get('suspend')!r}, values say {cron_values['suspend']}")
    return problems


RULES: dict[str, Callable[[Objects, dict[str, Any]], list[str]]] = {
    f.__name__: f
    for f in (
        graph_has_root, steps_name_one_target, step_names_unique, splitter_weights, service_names_exist,
        graph_name_format, isvc_containers, isvc_annotations, server_args, one_template_type, no_timeout_on_steps,
        deadline_only_on_leaves, leaves_retry_with_backoff, references_resolve, when_references_earlier_steps,
        inputs_declared, calls_pass_declared_parameters, cron_schedule,
    )
}  # fmt: skip


def check(rule: str, scenario: str) -> None:
    problems = RULES[rule](rendered(scenario).objects, values_of(scenario))
    assert not problems, f"{scenario}: " + "\n".join(problems)


# one test per rule, each over every scenario


def test_graph_has_root(scenario):
    check("graph_has_root", scenario)


def test_steps_name_one_target(scenario):
    check("steps_name_one_target", scenario)


def test_step_names_unique(scenario):
    check("step_names_unique", scenario)


def test_splitter_weights(scenario):
    check("splitter_weights", scenario)


def test_service_names_exist(scenario):
    check("service_names_exist", scenario)


def test_graph_name_format(scenario):
    check("graph_name_format", scenario)


def test_isvc_containers(scenario):
    check("isvc_containers", scenario)


def test_isvc_annotations(scenario):
    check("isvc_annotations", scenario)


def test_server_args(scenario):
    check("server_args", scenario)


def test_one_template_type(scenario):
    check("one_template_type", scenario)


def test_no_timeout_on_steps(scenario):
    check("no_timeout_on_steps", scenario)


def test_deadline_only_on_leaves(scenario):
    check("deadline_only_on_leaves", scenario)


def test_leaves_retry_with_backoff(scenario):
    check("leaves_retry_with_backoff", scenario)


def test_references_resolve(scenario):
    check("references_resolve", scenario)


def test_when_references_earlier_steps(scenario):
    check("when_references_earlier_steps", scenario)


def test_inputs_declared(scenario):
    check("inputs_declared", scenario)


def test_calls_pass_declared_parameters(scenario):
    check("calls_pass_declared_parameters", scenario)


def test_cron_schedule(scenario):
    check("cron_schedule", scenario)


def test_scenarios_exercise_the_rules():
    """The scenarios render what the rules read: a Splitter (challenger), a Sequence, the hpa class, and the Argo
    templates with a templateRef and a `when` (otherwise the checks above would pass on nothing)."""
    routers = {rendered(s).named("InferenceGraph", f"{RELEASE}-churn")["spec"]["nodes"]["root"]["routerType"]
               for s in SCENARIOS}  # fmt: skip
    assert routers == {"Splitter", "Sequence"}, routers
    assert {values_of(s)["serving"]["autoscalerClass"] for s in SCENARIOS} == {"none", "hpa"}
    default = rendered("default").objects
    assert any("templateRef" in c for _, _, t in templates(default) for _, c, _ in calls(t))
    assert any("when" in c for _, _, t in templates(default) for _, c, _ in calls(t))
    assert of_kind(default, "CronWorkflow") and not of_kind(rendered("workflows-off").objects, *WORKFLOW_KINDS)


# ================================================================================================ broken copies


def named(objects: Objects, kind: str, name: str) -> dict[str, Any]:
    (found,) = [o for o in objects if o["kind"] == kind and o["metadata"]["name"] == name]
    return found


def template(objects: Objects, wt: str, name: str) -> dict[str, Any]:
    (found,) = [t for t in named(objects, "WorkflowTemplate", f"{RELEASE}-{wt}")["spec"]["templates"]
                if t["name"] == name]  # fmt: skip
    return found


def root(objects: Objects) -> dict[str, Any]:
    return named(objects, "InferenceGraph", f"{RELEASE}-churn")["spec"]["nodes"]["root"]


def predictor(objects: Objects, isvc: str = "champion") -> dict[str, Any]:
    return named(objects, "InferenceService", f"{RELEASE}-{isvc}")["spec"]["predictor"]


def transformer(objects: Objects) -> dict[str, Any]:
    return named(objects, "InferenceService", f"{RELEASE}-champion")["spec"]["transformer"]


def set_arg(container: dict[str, Any], flag: str, value: str) -> None:
    args = container["args"]
    args[args.index(flag) + 1] = value


def drift_when(objects: Objects, expr: str) -> None:
    template(objects, "drift", "main")["steps"][1][0]["when"] = expr


BROKEN: list[tuple[str, str, Callable[[Objects], Any]]] = [
    ("graph_has_root", "default", lambda o: named(o, "InferenceGraph", f"{RELEASE}-churn")["spec"].update(
        nodes={"main": root(o)})),
    ("steps_name_one_target", "default", lambda o: root(o)["steps"][0].update(serviceUrl="http://x")),
    ("steps_name_one_target", "default", lambda o: root(o)["steps"][0].pop("serviceName")),
    ("step_names_unique", "challenger", lambda o: root(o)["steps"][1].update(name="champion")),
    ("splitter_weights", "challenger", lambda o: root(o)["steps"][1].update(weight=15)),
    ("splitter_weights", "challenger", lambda o: root(o)["steps"][1].pop("weight")),
    ("splitter_weights", "challenger", lambda o: root(o).update(routerType="Sequence")),
    ("splitter_weights", "default", lambda o: root(o).update(routerType="Splitter")),
    ("service_names_exist", "default", lambda o: root(o)["steps"][0].update(serviceName=f"{RELEASE}-champ")),
    ("graph_name_format", "default", lambda o: named(o, "InferenceGraph", f"{RELEASE}-churn")["metadata"]
     .update(name="Churn_Graph")),
    ("isvc_containers", "default", lambda o: predictor(o)["containers"][0].update(name="predictor")),
    ("isvc_containers", "default", lambda o: predictor(o)["containers"][0]["ports"].pop()),
    ("isvc_containers", "default", lambda o: transformer(o)["containers"][0]["env"].append(
        {"name": "PYTHONPATH", "value": "/app"})),
    ("isvc_containers", "default", lambda o: [e.update(value="v1") for e in transformer(o)["containers"][0]["env"]
                                              if e["name"] == "PROTOCOL"]),
    ("isvc_containers", "default", lambda o: named(o, "ConfigMap", f"{RELEASE}-config")["data"].update(
        PYTHONPATH="/app")),
    ("isvc_annotations", "default", lambda o: named(o, "InferenceService", f"{RELEASE}-champion")["metadata"][
        "annotations"].update({"serving.kserve.io/deploymentMode": "Serverless"})),
    ("isvc_annotations", "production", lambda o: named(o, "InferenceService", f"{RELEASE}-champion")["metadata"][
        "annotations"].update({"serving.kserve.io/autoscalerClass": "none"})),
    ("server_args", "default", lambda o: transformer(o)["containers"][0]["args"].remove("--model_name")),
    ("server_args", "default", lambda o: set_arg(transformer(o)["containers"][0], "--predictor_host",
                                                 f"{RELEASE}-champion-predictor")),
    ("server_args", "default", lambda o: set_arg(transformer(o)["containers"][0], "--http_port", "9000")),
    ("server_args", "challenger", lambda o: set_arg(predictor(o, "challenger")["containers"][0], "--alias",
                                                    "production")),
    ("one_template_type", "default", lambda o: template(o, "train", "train").update(script={"source": "true"})),
    ("one_template_type", "default", lambda o: template(o, "train", "train").pop("container")),
    ("no_timeout_on_steps", "default", lambda o: template(o, "train", "main").update(timeout="1h")),
    ("deadline_only_on_leaves", "default", lambda o: template(o, "train", "main").update(activeDeadlineSeconds=60)),
    ("leaves_retry_with_backoff", "default", lambda o: template(o, "train", "promote")["retryStrategy"].pop(
        "backoff")),
    ("references_resolve", "default", lambda o: template(o, "drift", "main")["steps"][1][0]["templateRef"].update(
        template="retrain")),
    ("references_resolve", "default", lambda o: template(o, "drift", "main")["steps"][1][0]["templateRef"].update(
        name=f"{RELEASE}-training")),
    ("references_resolve", "default", lambda o: template(o, "train", "main")["steps"][0][0].update(
        template="fit")),
    ("references_resolve", "default", lambda o: named(o, "CronWorkflow", f"{RELEASE}-monthly")["spec"][
        "workflowSpec"]["workflowTemplateRef"].update(name=f"{RELEASE}-month")),
    ("references_resolve", "default", lambda o: named(o, "WorkflowTemplate", f"{RELEASE}-train")["spec"].update(
        entrypoint="start")),
    ("when_references_earlier_steps", "default", lambda o: drift_when(
        o, "{{=jsonpath(steps.retrain.outputs.result, '$.decision') == 'RETRAIN'}}")),
    ("when_references_earlier_steps", "default", lambda o: drift_when(
        o, "{{=jsonpath(steps.drift.outputs.result, '$.status') == 'RETRAIN'}}")),
    ("when_references_earlier_steps", "default", lambda o: template(o, "drift", "main")["steps"][0].append(
        template(o, "drift", "main")["steps"][1].pop())),
    ("inputs_declared", "default", lambda o: template(o, "ingest", "snapshot")["inputs"]["parameters"].clear()),
    ("inputs_declared", "default", lambda o: template(o, "train", "promote")["container"]["args"].append(
        "{{inputs.parameters.as-of}}")),
    ("calls_pass_declared_parameters", "default", lambda o: template(o, "train", "main")["steps"][0][0][
        "arguments"]["parameters"].clear()),
    ("calls_pass_declared_parameters", "default", lambda o: template(o, "bootstrap", "main")["steps"][1][0][
        "arguments"]["parameters"].append({"name": "users", "value": "5"})),
    ("calls_pass_declared_parameters", "default", lambda o: named(o, "WorkflowTemplate", f"{RELEASE}-monthly")[
        "spec"]["arguments"]["parameters"][0].update(name="months")),
    ("cron_schedule", "default", lambda o: named(o, "CronWorkflow", f"{RELEASE}-monthly")["spec"].update(
        schedule="0 6 1 * *", schedules=None)),
    ("cron_schedule", "default", lambda o: named(o, "CronWorkflow", f"{RELEASE}-monthly")["spec"].pop("timezone")),
    ("cron_schedule", "default", lambda o: named(o, "CronWorkflow", f"{RELEASE}-monthly")["spec"].update(
        suspend=False)),
]  # fmt: skip


def test_every_rule_has_a_broken_copy():
    assert set(RULES) == {rule for rule, _, _ in BROKEN}, set(RULES) ^ {rule for rule, _, _ in BROKEN}


@pytest.mark.parametrize(("rule", "scenario", "mutate"), BROKEN,
                         ids=[f"{rule}-{i}" for i, (rule, _, _) in enumerate(BROKEN)])  # fmt: skip
def test_rule_fails_on_broken_copy(rule, scenario, mutate):
    objects = copy.deepcopy(rendered(scenario).objects)
    assert not RULES[rule](objects, values_of(scenario)), f"{rule} fails on the unbroken {scenario} render"
    mutate(objects)
    assert RULES[rule](objects, values_of(scenario)), f"{rule} did not notice the broken copy"
