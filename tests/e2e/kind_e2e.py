"""``make e2e``: the whole StreamFlow loop on a real cluster (kind), driven from outside as a user would drive it.

Run it after ``make kind-up deploy`` on a fresh install::

    python tests/e2e/kind_e2e.py [--namespace streamflow] [--release streamflow] [--timeout-seconds 1800]

Steps, one printed line each:

1. ``<fullname>-generate``: two months of 7,043 users (seed 42). month_001 is drifted by the chart's own values
   (``workflows.generate.drift`` / ``conceptShift`` / ``driftStart``: the demo's drifted month from month_001 on),
   not by a parameter — the template takes only ``users``, ``months`` and ``seed``. With the chart's defaults the
   same data on the embedded default decides RETRAIN on month_001 for three reasons (drift share 0.43, target drift
   24.1 % → 37.7 %, ROC AUC 0.64 vs 0.80) and promotes the challenger (AUC 0.826 vs 0.626 on that month);
2. ``<fullname>-ingest`` month_000 / 2024-01-31, then 3. ``<fullname>-train`` 2024-01-31 (train → promote);
4. a v2 request through the InferenceGraph (``kubectl port-forward svc/<fullname>-churn``) for month_000 users who
   stay into month_001; the answer must cover every id with a probability in [0, 1] and a 0/1 label, and name the
   version that the registry (``svc/<fullname>-mlflow``, logged in with the ``<fullname>-mlflow-auth`` Secret when
   the chart enabled MLflow's basic auth) holds as ``production``;
5. ``<fullname>-monthly`` (``streamflow monthly --next /data/months``: month_001) must decide RETRAIN and promote a
   new version;
6. the graph must start answering with that new version by itself (the predictor polls the registry every 10 s) —
   no redeploy — and it must again be the registry's ``production``.

Exit code 0 when every step passed, 1 with a message naming the step and what went wrong otherwise. The Workflows it
creates stay for inspection (the chart's TTL removes them) and carry ``app.kubernetes.io/managed-by=kind-e2e``, so
``kubectl -n streamflow delete workflows -l app.kubernetes.io/managed-by=kind-e2e`` removes them at once. It expects a
fresh install: on a cluster where month_001 was already ingested, ``monthly --next`` has nothing to do and step 5
says so.

How workflows are submitted: through the Kubernetes API (``kubernetes.client.CustomObjectsApi``, ``argoproj.io/
v1alpha1`` ``workflows``) with the kubeconfig kind writes. The ``argo_workflows`` client's ``WorkflowServiceApi`` is
not used for that: it calls the Argo *Server*'s REST API (``/api/v1/workflows/{namespace}``), which would need the
argo-server Deployment, a second port-forward and a bearer token (the server's default auth mode is ``client``),
while the workflow controller only needs the Workflow object to exist. The ``argo_workflows`` model classes still
build the submission (:func:`workflow_submission`): the object is typed against the Argo 3.7 API before it is sent,
and the client's serializer writes the camelCase dict the Kubernetes API takes.

The pure parts (building the submission, reading phases, failed nodes and step outputs out of a Workflow, the v2
request and the checks of its answer, the monthly decision) are plain functions unit-tested in
``tests/unit/test_e2e.py``; nothing here runs at import time.
"""

from __future__ import annotations

import argparse
import base64
import csv
import gzip
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

from argo_workflows.api_client import ApiClient
from argo_workflows.model.io_argoproj_workflow_v1alpha1_arguments import IoArgoprojWorkflowV1alpha1Arguments
from argo_workflows.model.io_argoproj_workflow_v1alpha1_parameter import IoArgoprojWorkflowV1alpha1Parameter
from argo_workflows.model.io_argoproj_workflow_v1alpha1_workflow import IoArgoprojWorkflowV1alpha1Workflow
from argo_workflows.model.io_argoproj_workflow_v1alpha1_workflow_spec import IoArgoprojWorkflowV1alpha1WorkflowSpec
from argo_workflows.model.io_argoproj_workflow_v1alpha1_workflow_template_ref import (
    IoArgoprojWorkflowV1alpha1WorkflowTemplateRef,
)
from argo_workflows.model.object_meta import ObjectMeta

from model_server.local import free_port
from pipelines.months import as_of_for_index, month_dir_name

ARGO_GROUP, ARGO_VERSION, ARGO_PLURAL = "argoproj.io", "v1alpha1", "workflows"
FAILED_PHASES = ("Failed", "Error")
PRODUCTION_ALIAS = "production"
SUBMITTED_BY = "kind-e2e"  # app.kubernetes.io/managed-by of every Workflow this script creates

DEFAULT_USERS, DEFAULT_MONTHS, DEFAULT_SEED = 7043, 2, 42
REQUEST_USERS = 3
WORKFLOW_POLL_SECONDS = 3.0
GRAPH_POLL_SECONDS = 2.0
# The predictor polls the registry every 10 s, then loads the new version: a few periods is plenty.
SWAP_TIMEOUT_SECONDS = 180.0
PORT_FORWARD_START_SECONDS = 20.0


class E2EError(Exception):
    """A step of the end-to-end run failed; the message says which and why."""


class Unanswered(E2EError):
    """The graph did not answer (yet): a refused connection or an error status. Worth asking again."""


# ------------------------------------------------------------------------------------------------ pure parts


def fullname(release: str) -> str:
    """The chart's fullname for a release (``streamflow.fullname`` in charts/streamflow/templates/_helpers.tpl).

    Args:
        release: the Helm release name.

    Returns:
        ``release`` when it already contains "streamflow", else ``<release>-streamflow``; cut to 40 characters
        without a trailing dash (``trunc 40 | trimSuffix "-"``: the chart keeps 22 characters for suffixes).
    """
    name = release if "streamflow" in release else f"{release}-streamflow"
    return name[:40].rstrip("-")


def component(release: str, suffix: str) -> str:
    """The name of one of the chart's objects (``streamflow.component``): ``<fullname>-<suffix>``, at most 63.

    Args:
        release: the Helm release name.
        suffix: e.g. ``ingest``, ``churn``, ``mlflow``.

    Returns:
        The object's name.
    """
    return f"{fullname(release)}-{suffix}"[:63].rstrip("-")


def submission_labels(release: str) -> dict[str, str]:
    """Labels of every Workflow this script submits, so a user can list or delete them in one selector.

    Args:
        release: the Helm release name.

    Returns:
        The app.kubernetes.io labels the chart's objects carry, with ``managed-by`` naming this script.
    """
    return {
        "app.kubernetes.io/name": "streamflow",
        "app.kubernetes.io/instance": release,
        "app.kubernetes.io/component": "workflow",
        "app.kubernetes.io/managed-by": SUBMITTED_BY,
    }


def workflow_submission(
    template: str, parameters: Mapping[str, str | int | float], *, namespace: str, release: str
) -> dict[str, Any]:
    """The Workflow object that runs a WorkflowTemplate, as the Kubernetes API takes it.

    Args:
        template: the WorkflowTemplate's name (e.g. ``streamflow-ingest``).
        parameters: argument values by parameter name; numbers are sent as text (Argo parameters are strings).
        namespace: the namespace the Workflow is created in.
        release: the Helm release name (for the labels).

    Returns:
        A camelCase dict: ``generateName`` ``<template>-``, ``spec.workflowTemplateRef.name`` and
        ``spec.arguments.parameters`` as ``[{name, value}]`` in the order given.

    Raises:
        E2EError: a parameter value is None or a bool (it would be sent as the text "None"/"True").
    """
    for name, value in parameters.items():
        if value is None or isinstance(value, bool):
            raise E2EError(f"workflow {template}: parameter {name!r} = {value!r} is not a string or a number")
    workflow = IoArgoprojWorkflowV1alpha1Workflow(
        api_version=f"{ARGO_GROUP}/{ARGO_VERSION}",
        kind="Workflow",
        metadata=ObjectMeta(generate_name=f"{template}-", namespace=namespace, labels=submission_labels(release)),
        spec=IoArgoprojWorkflowV1alpha1WorkflowSpec(
            workflow_template_ref=IoArgoprojWorkflowV1alpha1WorkflowTemplateRef(name=template),
            arguments=IoArgoprojWorkflowV1alpha1Arguments(
                parameters=[
                    IoArgoprojWorkflowV1alpha1Parameter(name=name, value=str(value))
                    for name, value in parameters.items()
                ]
            ),
        ),
    )
    return ApiClient.sanitize_for_serialization(workflow)


def workflow_phase(workflow: Mapping[str, Any]) -> str:
    """The Workflow's phase; ``Pending`` until the controller has written one.

    Args:
        workflow: the Workflow object as the Kubernetes API returns it.

    Returns:
        ``Pending``, ``Running``, ``Succeeded``, ``Failed`` or ``Error``.
    """
    return (workflow.get("status") or {}).get("phase") or "Pending"


def workflow_nodes(workflow: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """The Workflow's status nodes by id, decompressed when the controller stored them compressed.

    Args:
        workflow: the Workflow object as the Kubernetes API returns it.

    Returns:
        ``status.nodes``, or ``status.compressedNodes`` decoded (base64 of gzipped JSON: the controller compresses
        the nodes of a Workflow that grows too large for etcd); empty before any node ran.
    """
    status = workflow.get("status") or {}
    if status.get("nodes"):
        return dict(status["nodes"])
    if status.get("compressedNodes"):
        return json.loads(gzip.decompress(base64.b64decode(status["compressedNodes"])))
    return {}


def _template_of(node: Mapping[str, Any]) -> str | None:
    # a node run through a templateRef names its template there, not in templateName
    return node.get("templateName") or (node.get("templateRef") or {}).get("template")


def failed_node(workflow: Mapping[str, Any]) -> dict[str, Any] | None:
    """The node that explains a failure: the failed Pod that finished first, else the first failed node.

    A failed Pod node's message says why it failed (``Error (exit code 1)``, ``OOMKilled``); the Steps and DAG
    nodes above it only say ``child '…' failed``, so Pods come first.

    Args:
        workflow: the Workflow object as the Kubernetes API returns it.

    Returns:
        The node's status dict, or None when no node failed (e.g. the template reference itself was refused).
    """
    failed = [node for node in workflow_nodes(workflow).values() if node.get("phase") in FAILED_PHASES]
    if not failed:
        return None
    # "~" sorts after every ISO timestamp: a node without finishedAt comes last
    return min(failed, key=lambda node: (node.get("type") != "Pod", node.get("finishedAt") or "~"))


def failure_message(workflow: Mapping[str, Any]) -> str:
    """One line saying which workflow failed, at which step, and why.

    Args:
        workflow: a Workflow whose phase is Failed or Error.

    Returns:
        ``workflow NAME Failed: step DISPLAY (NODE NAME) Failed: MESSAGE``, or the Workflow's own
        ``status.message`` when no node failed (a missing WorkflowTemplate, a refused parameter).
    """
    name = (workflow.get("metadata") or {}).get("name", "?")
    head = f"workflow {name} {workflow_phase(workflow)}"
    node = failed_node(workflow)
    if node is None:
        return f"{head}: {(workflow.get('status') or {}).get('message') or 'no message'}"
    step = node.get("displayName") or node.get("name") or node.get("id", "?")
    return f"{head}: step {step} ({node.get('name', node.get('id', '?'))}) {node['phase']}: " + (
        node.get("message") or "no message"
    )


def parse_result(text: str, where: str) -> dict[str, Any]:
    """The one JSON object a ``streamflow … --json`` step printed.

    Args:
        text: the step's ``outputs.result`` (its stdout).
        where: the step, for the error message.

    Returns:
        The object; when the output holds other lines too, the last line that is a JSON object.

    Raises:
        E2EError: no JSON object in the output.
    """
    try:
        parsed = json.loads(text)
    except ValueError:
        parsed = None
    if isinstance(parsed, dict):
        return parsed
    # stray lines (a library printing to stdout) must not hide the CLI's object, which it prints last
    for line in reversed(text.splitlines()):
        if line.strip().startswith("{"):
            try:
                parsed = json.loads(line)
            except ValueError:
                continue
            if isinstance(parsed, dict):
                return parsed
    raise E2EError(f"{where}: the output is not a JSON object: {text[:300]!r}")


def step_result(workflow: Mapping[str, Any], names: Sequence[str]) -> dict[str, Any]:
    """The JSON object printed by a workflow step, read from its node's ``outputs.result``.

    Args:
        workflow: the Workflow object as the Kubernetes API returns it.
        names: display names or template names the step may have; when none matches and exactly one succeeded node
            has a result, that one (the template's names are the chart's business, the step's output is ours).

    Returns:
        The parsed JSON object.

    Raises:
        E2EError: no node with a result, several different candidates, or an output that is not JSON.
    """
    nodes = workflow_nodes(workflow).values()
    # only a step that succeeded: a failed attempt before a retry may have printed something else
    with_result = [
        node for node in nodes if node.get("phase") == "Succeeded" and "result" in (node.get("outputs") or {})
    ]
    named = [node for node in with_result if node.get("displayName") in names or _template_of(node) in names]
    candidates = named or with_result
    # a Retry node carries its successful child's outputs: the same text twice is one result
    results = {node["outputs"]["result"]: node for node in candidates}
    wf_name = (workflow.get("metadata") or {}).get("name", "?")
    if len(results) != 1:
        seen = ", ".join(f"{n.get('displayName')} ({_template_of(n)})" for n in with_result) or "none"
        raise E2EError(
            f"workflow {wf_name}: expected one step output named {' or '.join(names)}; nodes with a result: {seen}"
        )
    text, node = next(iter(results.items()))
    return parse_result(text, f"workflow {wf_name} step {node.get('displayName')}")


def check_answer(answer: Any, user_ids: Sequence[str], *, expected_version: str | None = None) -> str:
    """Check the graph's answer with the helm test's own check (:func:`pipelines.smoke.check_answer`) and return the
    model version it names.

    Args:
        answer: the decoded response body.
        user_ids: the ids that were sent, in order.
        expected_version: the registry's production version; None to accept any.

    Raises:
        E2EError: what is wrong with the answer.
    """
    from pipelines.smoke import SmokeFailed
    from pipelines.smoke import check_answer as check_v2_answer

    versions = None if expected_version is None else {PRODUCTION_ALIAS: str(expected_version)}
    try:
        version, _, _ = check_v2_answer(answer, [str(u) for u in user_ids], versions)
    except SmokeFailed as err:
        raise E2EError(f"the graph's answer is wrong: {err}") from None
    return version


def expect_retrain(result: Mapping[str, Any], production_before: str) -> str:
    """Check that the monthly run decided RETRAIN and promoted a new model; return the new production version.

    Args:
        result: the JSON object ``streamflow monthly --next … --json`` printed.
        production_before: the version in production before the run.

    Returns:
        The production version the run reports.

    Raises:
        E2EError: no month ran, the decision was not RETRAIN (with its reasons), or the gate kept the champion.
    """
    month = result.get("month_dir") or "?"
    decision = result.get("decision")
    if decision is None:
        raise E2EError(f"monthly ran no month (is month_001 already ingested?): {json.dumps(result)[:400]}")
    reasons = "; ".join(map(str, result.get("reasons") or [])) or "no reasons given"
    if decision != "RETRAIN":
        raise E2EError(f"monthly decided {decision} on {month}, expected RETRAIN for the drifted month: {reasons}")
    after = result.get("production_version")
    if after is None:
        raise E2EError(f"monthly decided RETRAIN on {month} but reports no production_version")
    if str(after) == str(production_before):
        gate = (result.get("retrain") or {}).get("gate") or {}
        raise E2EError(
            f"monthly decided RETRAIN on {month} ({reasons}) but production stayed v{after}: gate "
            f"{gate.get('decision', '?')} (challenger AUC {gate.get('challenger_auc')}, champion AUC "
            f"{gate.get('champion_auc')})"
        )
    return str(after)


def stayers(labels_csv: Iterable[str], count: int) -> list[str]:
    """The first users of a month's ``labels.csv`` who do not churn, so they are still there the next month.

    Args:
        labels_csv: the lines of ``labels.csv`` (``user_id,churn_label``).
        count: how many ids.

    Returns:
        ``count`` ids in file order.

    Raises:
        E2EError: fewer than ``count`` such users.
    """
    ids = [row["user_id"] for row in csv.DictReader(labels_csv) if row["churn_label"] == "False"]
    if len(ids) < count:
        raise E2EError(f"only {len(ids)} users stay into the next month; {count} wanted")
    return ids[:count]


def month0_user_ids(users: int, seed: int, count: int) -> list[str]:
    """Ids of month_000 users who stay into month_001, as the cluster's generate step wrote them.

    The generator is deterministic per seed and a month before ``drift_start`` is the same with or without drift,
    so one month generated here (well under a second) holds the cluster's month_000 users.

    Args:
        users: the generate step's ``users``.
        seed: the generate step's ``seed``.
        count: how many ids.

    Returns:
        ``count`` ids, churn_label False in month_000.
    """
    from pipelines.generate import generate  # numpy and the generator load only when the run needs them

    with tempfile.TemporaryDirectory(prefix="streamflow-e2e-") as tmp:
        month = generate(Path(tmp), users=users, months=1, seed=seed).months[0].folder
        with (month / "labels.csv").open(newline="") as lines:
            return stayers(lines, count)


def port_forward_command(
    kubectl: str, namespace: str, service: str, local_port: int, remote_port: int, context: str | None = None
) -> list[str]:
    """The ``kubectl port-forward`` command for one Service.

    Args:
        kubectl: the kubectl executable.
        namespace: the Service's namespace.
        service: the Service's name.
        local_port: the loopback port to listen on.
        remote_port: the Service's port.
        context: the kubeconfig context; None for the current one.

    Returns:
        The argument list.
    """
    where = ["--context", context] if context else []
    return [kubectl, *where, "-n", namespace, "port-forward", f"svc/{service}", f"{local_port}:{remote_port}"]


# ------------------------------------------------------------------------------------------------ cluster I/O


class Argo:
    """Workflows through the Kubernetes API (see the module docstring for why not the Argo Server)."""

    def __init__(self, namespace: str, context: str | None = None) -> None:
        from kubernetes import client, config

        try:
            config.load_kube_config(context=context)
        except config.ConfigException:
            try:
                config.load_incluster_config()
            except config.ConfigException:
                raise E2EError("no kubeconfig and not in a pod: run `make kind-up deploy` first") from None
        self.namespace = namespace
        self.custom = client.CustomObjectsApi()
        self.core = client.CoreV1Api()

    def submit(self, body: dict[str, Any]) -> str:
        """Create the Workflow; return its generated name."""
        created = self.custom.create_namespaced_custom_object(
            ARGO_GROUP, ARGO_VERSION, self.namespace, ARGO_PLURAL, body
        )
        return created["metadata"]["name"]

    def get(self, name: str) -> dict[str, Any]:
        """The Workflow as it is now."""
        return self.custom.get_namespaced_custom_object(ARGO_GROUP, ARGO_VERSION, self.namespace, ARGO_PLURAL, name)

    def wait(self, name: str, deadline: float) -> dict[str, Any]:
        """Poll the Workflow until it succeeds.

        Raises:
            E2EError: it failed (with the failed step, its message and its last log lines) or the deadline passed.
        """
        while True:
            workflow = self.get(name)
            phase = workflow_phase(workflow)
            if phase == "Succeeded":
                return workflow
            if phase in FAILED_PHASES:
                node = failed_node(workflow)
                tail = self.log_tail(name, node["id"]) if node and node.get("type") == "Pod" else ""
                raise E2EError(failure_message(workflow) + (f"\n--- last log lines ---\n{tail}" if tail else ""))
            if time.monotonic() > deadline:
                nodes = workflow_nodes(workflow).values()
                running = [n.get("displayName") for n in nodes if n.get("phase") in ("Pending", "Running")]
                raise E2EError(f"workflow {name} still {phase} at the deadline (running: {running or 'none'})")
            time.sleep(WORKFLOW_POLL_SECONDS)

    def log_tail(self, workflow_name: str, node_id: str, lines: int = 20) -> str:
        """The last lines of the main container of a step's pod; empty when the pod is gone.

        Pods are matched by the node-id annotation Argo puts on each pod, since pod names depend on the
        controller's POD_NAMES setting.
        """
        from kubernetes.client.exceptions import ApiException

        try:
            pods = self.core.list_namespaced_pod(
                self.namespace, label_selector=f"workflows.argoproj.io/workflow={workflow_name}"
            ).items
            for pod in pods:
                if (pod.metadata.annotations or {}).get("workflows.argoproj.io/node-id") == node_id:
                    return self.core.read_namespaced_pod_log(
                        pod.metadata.name, self.namespace, container="main", tail_lines=lines
                    )
        except ApiException:  # the logs only help explain a failure already reported: never hide it
            return ""
        return ""

    def secret(self, name: str, keys: Sequence[str]) -> tuple[str, ...] | None:
        """The decoded values of some keys of a Secret; None when the Secret does not exist or lacks a key."""
        from kubernetes.client.exceptions import ApiException

        try:
            data = self.core.read_namespaced_secret(name, self.namespace).data or {}
        except ApiException as err:
            if err.status == 404:  # the chart creates it only with mlflow.auth.enabled
                return None
            raise
        if not all(key in data for key in keys):
            return None
        return tuple(base64.b64decode(data[key]).decode() for key in keys)

    def run_template(
        self, template: str, parameters: Mapping[str, str | int | float], release: str, deadline: float
    ) -> dict[str, Any]:
        """Submit a WorkflowTemplate and wait for it; return the succeeded Workflow."""
        name = self.submit(workflow_submission(template, parameters, namespace=self.namespace, release=release))
        return self.wait(name, deadline)


class PortForward:
    """``kubectl port-forward svc/NAME`` on a free loopback port, restarted when it drops (a pod was replaced)."""

    def __init__(
        self,
        namespace: str,
        service: str,
        remote_port: int,
        deadline: float,
        kubectl: str = "kubectl",
        context: str | None = None,
    ) -> None:
        self.namespace, self.service, self.remote_port = namespace, service, remote_port
        self.deadline, self.kubectl, self.context = deadline, kubectl, context
        self.proc: subprocess.Popen[bytes] | None = None
        self.port = 0
        self._stderr = tempfile.TemporaryFile()  # a file, not a pipe: nobody drains it while the forward runs

    @property
    def url(self) -> str:
        """``http://127.0.0.1:PORT`` of the running forward."""
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> PortForward:
        """Start the forward, retrying until the deadline while the Service has no running pod yet.

        Raises:
            E2EError: kubectl kept exiting (with its last error) or never listened.
        """
        last = ""
        while True:
            self.port = free_port()
            self._stderr.seek(0)
            self._stderr.truncate()
            command = port_forward_command(
                self.kubectl, self.namespace, self.service, self.port, self.remote_port, self.context
            )
            self.proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=self._stderr)
            # each attempt gets its whole window, even past the deadline: kubectl must get to say why it failed
            until = time.monotonic() + PORT_FORWARD_START_SECONDS
            while self.proc.poll() is None and time.monotonic() < until:
                with socket.socket() as sock:  # kubectl listens only once it has found a pod to forward to
                    if sock.connect_ex(("127.0.0.1", self.port)) == 0:
                        return self
                time.sleep(0.2)
            self.stop()
            self._stderr.seek(0)
            last = self._stderr.read().decode(errors="replace").strip()[-500:] or "no output"
            if time.monotonic() > self.deadline:
                raise E2EError(f"kubectl port-forward svc/{self.service} never listened: {last}")
            time.sleep(3)

    def revive(self) -> None:
        """Start the forward again if kubectl exited (it does when the pod behind the Service goes away)."""
        if self.proc is None or self.proc.poll() is not None:
            self.start()

    def stop(self) -> None:
        """Stop kubectl (only the process this object started)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def __enter__(self) -> PortForward:
        return self.start()

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.stop()
        self._stderr.close()


def ask_graph(forward: PortForward, user_ids: Sequence[str]) -> dict[str, Any]:
    """One v2 request to the graph's router (``POST /``, the body forwarded as it is), sent and read as the helm
    test does (:mod:`pipelines.smoke`).

    Raises:
        Unanswered: nothing answered, or an error answer (named as the bootstrap step it says is missing).
    """
    from pipelines.smoke import SmokeFailed, post, refusal, v2_request

    forward.revive()
    url = forward.url + "/"
    try:
        status, body = post(url, v2_request(list(user_ids)), timeout=30)
    except SmokeFailed as err:  # refused / reset while pods start
        raise Unanswered(str(err)) from None
    if status != 200 or not isinstance(body, dict):
        raise Unanswered(refusal(url, status, body, list(user_ids)))
    return body


def wait_for_graph(
    forward: PortForward, user_ids: Sequence[str], deadline: float, until: Callable[[dict[str, Any]], bool], what: str
) -> dict[str, Any]:
    """Ask the graph again and again until an answer satisfies ``until``.

    Raises:
        E2EError: the deadline passed; says ``what`` was awaited and the last answer or error.
    """
    last = "no answer"
    while True:
        try:
            answer = ask_graph(forward, user_ids)
            if until(answer):
                return answer
            last = json.dumps(answer)[:400]
        except Unanswered as err:
            last = str(err)
        if time.monotonic() > deadline:
            raise E2EError(f"the graph (svc/{forward.service}) never {what}; last: {last}")
        time.sleep(GRAPH_POLL_SECONDS)


def registry_version(tracking_uri: str) -> str:
    """The version the MLflow registry holds as ``production``.

    Raises:
        E2EError: the registry has no such alias or cannot be reached.
    """
    import mlflow  # heavy: loaded only when a run gets this far
    from mlflow.exceptions import MlflowException

    from pipelines.registry import MODEL_NAME

    try:
        version = mlflow.MlflowClient(tracking_uri=tracking_uri).get_model_version_by_alias(
            MODEL_NAME, PRODUCTION_ALIAS
        )
    except MlflowException as err:
        raise E2EError(f"the registry at {tracking_uri} has no {MODEL_NAME}@{PRODUCTION_ALIAS}: {err}") from None
    return str(version.version)


# ------------------------------------------------------------------------------------------------ the run


def run(args: argparse.Namespace, say: Callable[[str], None]) -> None:
    """The six steps of the module docstring; ``say`` prints one line per step.

    Raises:
        E2EError: the first step that failed.
    """
    deadline = time.monotonic() + args.timeout_seconds
    name = lambda suffix: component(args.release, suffix)  # noqa: E731
    argo = Argo(args.namespace, args.context)
    started = time.monotonic()

    def step(number: int, workflow: Mapping[str, Any] | None, text: str) -> None:
        done = f"{workflow['metadata']['name']} Succeeded: " if workflow else ""
        say(f"[{number}/6] {done}{text} ({time.monotonic() - started:.0f} s)")

    params = {"users": args.users, "months": DEFAULT_MONTHS, "seed": args.seed}
    workflow = argo.run_template(name("generate"), params, args.release, deadline)
    step(1, workflow, f"{args.users} users, {DEFAULT_MONTHS} months, seed {args.seed} (drift: the chart's values)")
    month, as_of = month_dir_name(0), as_of_for_index(0).isoformat()
    workflow = argo.run_template(name("ingest"), {"month": month, "as-of": as_of}, args.release, deadline)
    step(2, workflow, f"ingested {month} as of {as_of}")
    workflow = argo.run_template(name("train"), {"as-of": as_of}, args.release, deadline)
    step(3, workflow, f"trained and promoted on {as_of}")

    ids = month0_user_ids(args.users, args.seed, REQUEST_USERS)
    with (
        PortForward(args.namespace, name("churn"), 80, deadline, args.kubectl, args.context) as graph,
        PortForward(args.namespace, name("mlflow"), 5000, deadline, args.kubectl, args.context) as registry,
    ):
        # MLflow's client reads its basic-auth login from these variables; set only in this run's process
        credentials = argo.secret(args.mlflow_auth_secret or name("mlflow-auth"), ("username", "password"))
        if credentials:
            os.environ["MLFLOW_TRACKING_USERNAME"], os.environ["MLFLOW_TRACKING_PASSWORD"] = credentials
        # MLflow retries a dead connection for minutes by default; a dropped forward should fail sooner than that
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "3")

        def production() -> str:
            registry.revive()
            return registry_version(registry.url)

        # the predictors are not ready until a model is in production: the graph answers errors until then
        answer = wait_for_graph(graph, ids, deadline, lambda a: isinstance(a.get("outputs"), list), "answered")
        first = check_answer(answer, ids, expected_version=production())
        shown = ", ".join(f"{uid} {p:.3f}" for uid, p in zip(ids, _output(answer, "churn_probability"), strict=True))
        step(4, None, f"graph: {shown}; model v{first} == registry production")

        workflow = argo.run_template(name("monthly"), {}, args.release, deadline)
        # the template's entrypoint is the step itself (``main``); a steps wrapper would call it ``monthly``
        result = step_result(workflow, ("main", "monthly"))
        promoted = expect_retrain(result, first)
        reasons = "; ".join(map(str, result.get("reasons") or []))
        step(5, workflow, f"RETRAIN on {Path(str(result.get('month_dir'))).name} ({reasons}); v{first} -> v{promoted}")

        swap_deadline = min(deadline, time.monotonic() + args.swap_timeout_seconds)
        swap_started = time.monotonic()
        moved = lambda a: a.get("model_version") not in (None, "") and str(a["model_version"]) != first  # noqa: E731
        answer = wait_for_graph(graph, ids, swap_deadline, moved, f"moved off model v{first}")
        served = check_answer(answer, ids, expected_version=production())
        if served != promoted:
            raise E2EError(f"the graph serves v{served}, the monthly run promoted v{promoted}")
        waited = time.monotonic() - swap_started
        step(6, None, f"graph: model v{served} == registry production {waited:.0f} s after the promotion, no redeploy")


def _output(answer: Mapping[str, Any], name: str) -> list[Any]:
    return next(out["data"] for out in answer["outputs"] if out.get("name") == name)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    """The command line (see the module docstring)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0])
    parser.add_argument("--namespace", default="streamflow")
    parser.add_argument("--release", default="streamflow")
    parser.add_argument("--timeout-seconds", type=float, default=1800.0, help="for the whole run")
    parser.add_argument(
        "--swap-timeout-seconds",
        type=float,
        default=SWAP_TIMEOUT_SECONDS,
        help="how long the graph may take to serve the promoted model",
    )
    parser.add_argument("--users", type=int, default=DEFAULT_USERS)
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED)
    parser.add_argument("--context", default=None, help="kubeconfig context (default: the current one)")
    parser.add_argument("--kubectl", default="kubectl")
    parser.add_argument(
        "--mlflow-auth-secret",
        default=None,
        help="Secret with MLflow's username/password (default <fullname>-mlflow-auth)",
    )
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the end-to-end check; 0 when every step passed, 1 otherwise (the reason on stderr)."""
    from kubernetes.client.exceptions import ApiException

    args = parse_args(argv)
    try:
        run(args, say=lambda line: print(line, flush=True))
    except E2EError as err:
        print(f"e2e FAILED: {err}", file=sys.stderr)
        return 1
    except ApiException as err:  # e.g. the Workflow CRD is missing: Argo is not installed
        print(
            f"e2e FAILED: the Kubernetes API answered {err.status} {err.reason}: {str(err.body)[:400]}", file=sys.stderr
        )
        return 1
    print("e2e OK: generate -> ingest -> train -> serve -> drift RETRAIN -> hot reload")
    return 0


if __name__ == "__main__":
    sys.exit(main())
