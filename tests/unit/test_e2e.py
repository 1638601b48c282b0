"""The pure parts of ``make e2e`` (tests/e2e/kind_e2e.py), without a cluster: the Workflow it submits, how it reads
Argo's status (phases, the failed step, a step's JSON output), the v2 request and the checks of the graph's answer,
and the monthly decision it requires. The dicts below are shaped like real Argo 3.7 Workflow status."""

from __future__ import annotations

import base64
import gzip
import json
import subprocess
import sys
import textwrap
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from pipelines.demo import CONCEPT_SHIFT, DRIFT
from pipelines.generate import generate, parse_drift
from tests.e2e import kind_e2e as e2e

# ------------------------------------------------------------------------------------------------ Argo status


def _workflow(name: str, phase: str | None, nodes: dict[str, dict[str, Any]], message: str = "") -> dict[str, Any]:
    status: dict[str, Any] = {"nodes": nodes, "startedAt": "2026-12-01T06:00:02Z"}
    if phase:
        status["phase"] = phase
    if message:
        status["message"] = message
    return {
        "apiVersion": "argoproj.io/v1alpha1",
        "kind": "Workflow",
        "metadata": {"name": name, "namespace": "streamflow", "generateName": name[:-5]},
        "spec": {"workflowTemplateRef": {"name": name[:-6]}},
        "status": status,
    }


def _node(node_id: str, name: str, kind: str, phase: str, template: str | None = None, **extra: Any) -> dict[str, Any]:
    """A status node as Argo writes it: ``displayName`` is the last part of ``name``."""
    node = {
        "id": node_id,
        "name": name,
        "displayName": name.rsplit(".", 1)[-1] if "." in name else name,
        "type": kind,
        "templateScope": "local/",
        "phase": phase,
        "boundaryID": name.split("[", 1)[0].split("(", 1)[0],
        "startedAt": "2026-12-01T06:00:02Z",
    }
    if template:
        node["templateName"] = template
    if kind == "Pod":
        node["hostNodeName"] = "streamflow-control-plane"
    return node | extra


MONTHLY_RESULT = {
    "month_dir": "/data/months/month_001",
    "as_of": "2024-02-29",
    "decision": "RETRAIN",
    "reasons": [
        "drift_share=0.43 >= 0.30 (months_active, monthly_fee, net_service, watch_hours_30d, avg_session_mins_7d, "
        "rebuffer_events_7d)",
        "target drift on churn_label: label rate 24.1% -> 37.7% (Jensen-Shannon distance 0.105 >= 0.1)",
        "quality drop: ROC AUC 0.6401 on 2024-02-29 vs 0.7992 at validation (drop 0.1591 > 0.05)",
    ],
    "production_version": "2",
    "line": "[Evidently] report_html=/data/home/reports/evidently/drift_2024-01-31_vs_2024-02-29.html "
    "report_json=/data/home/reports/evidently/drift_2024-01-31_vs_2024-02-29.json drift_share=0.43 "
    "value_drift_col=churn_label -> RETRAIN",
    "retrain": {
        "as_of": "2024-02-29",
        "gate": {
            "decision": "promoted",
            "challenger_version": "2",
            "champion_version": "1",
            "challenger_auc": 0.8256,
            "champion_auc": 0.6257,
            "production_version": "2",
        },
        "production_version": "2",
    },
}


def _monthly_succeeded() -> dict[str, Any]:
    """The chart's streamflow-monthly: its entrypoint ``main`` is the step itself, with a retryStrategy, so the root
    is a Retry node that carries the outputs of its successful Pod child."""
    wf = "streamflow-monthly-7x2kq"
    out = {"result": json.dumps(MONTHLY_RESULT), "exitCode": "0"}
    nodes = {
        wf: _node(wf, wf, "Retry", "Succeeded", "main", children=[f"{wf}-3541262416"], outputs=out),
        f"{wf}-3541262416": _node(f"{wf}-3541262416", f"{wf}(0)", "Pod", "Succeeded", "main", outputs=out),
    }
    return _workflow(wf, "Succeeded", nodes)


def _ingest_failed(*, parallel_failure: bool = False) -> dict[str, Any]:
    """The chart's streamflow-ingest: ingest succeeded, snapshot exited 1 on both of its attempts; the Retry, StepGroup
    and Steps nodes above it failed in the same reconcile as the last attempt (the same second)."""
    wf = "streamflow-ingest-q9z4m"
    child = f"child '{wf}-2208736340' failed"
    first, last = "2026-12-01T06:01:10Z", "2026-12-01T06:01:45Z"
    exit_1 = {"message": "Error (exit code 1)", "outputs": {"exitCode": "1"}}
    nodes = {
        wf: _node(wf, wf, "Steps", "Failed", "main", message=child, finishedAt=last),
        f"{wf}-1": _node(f"{wf}-1", f"{wf}[0]", "StepGroup", "Succeeded", finishedAt="2026-12-01T06:00:40Z"),
        f"{wf}-11": _node(f"{wf}-11", f"{wf}[0].ingest", "Retry", "Succeeded", "ingest"),
        f"{wf}-111": _node(f"{wf}-111", f"{wf}[0].ingest(0)", "Pod", "Succeeded", "ingest"),
        f"{wf}-2": _node(f"{wf}-2", f"{wf}[1]", "StepGroup", "Failed", message=child, finishedAt=last),
        f"{wf}-2208736340": _node(
            f"{wf}-2208736340",
            f"{wf}[1].snapshot",
            "Retry",
            "Failed",
            "snapshot",
            message="No more retries left",
            finishedAt=last,
        ),
        f"{wf}-22": _node(f"{wf}-22", f"{wf}[1].snapshot(1)", "Pod", "Failed", "snapshot", finishedAt=last, **exit_1),
    }
    if parallel_failure:  # the step's first attempt, which failed earlier, is the one to report
        oom = {"message": "OOMKilled (exit code 137)", "outputs": {"exitCode": "137"}}
        nodes[f"{wf}-21"] = _node(f"{wf}-21", f"{wf}[1].snapshot(0)", "Pod", "Failed", "snapshot", finishedAt=first,
                                  **oom)  # fmt: skip
    return _workflow(wf, "Failed", nodes, message=child)


def test_a_workflow_without_phase_yet_is_pending_and_a_written_phase_is_read() -> None:
    assert e2e.workflow_phase({"metadata": {"name": "streamflow-train-abcde"}}) == "Pending"
    assert e2e.workflow_phase(_workflow("streamflow-train-abcde", None, {})) == "Pending"
    assert e2e.workflow_phase(_ingest_failed()) == "Failed"
    assert e2e.workflow_phase(_monthly_succeeded()) == "Succeeded"


def test_the_failed_step_is_the_pod_that_failed_first_not_the_steps_node_above_it() -> None:
    workflow = _ingest_failed()
    node = e2e.failed_node(workflow)
    assert node is not None and node["id"] == "streamflow-ingest-q9z4m-22"
    assert e2e.failure_message(workflow) == (
        "workflow streamflow-ingest-q9z4m Failed: step snapshot(1) (streamflow-ingest-q9z4m[1].snapshot(1)) Failed: "
        "Error (exit code 1)"
    )
    earlier = _ingest_failed(parallel_failure=True)
    assert e2e.failure_message(earlier).endswith("step snapshot(0) (streamflow-ingest-q9z4m[1].snapshot(0)) Failed: "
                                                  "OOMKilled (exit code 137)")  # fmt: skip


def test_a_refused_template_reference_is_reported_by_the_workflow_message() -> None:
    missing = 'workflowtemplates.argoproj.io "streamflow-ingest" not found'
    workflow = _workflow("streamflow-ingest-zz9xw", "Error", {}, message=missing)
    assert e2e.failed_node(workflow) is None
    assert e2e.failure_message(workflow) == f"workflow streamflow-ingest-zz9xw Error: {missing}"
    assert e2e.failed_node(_monthly_succeeded()) is None


def test_compressed_nodes_are_read_like_plain_ones() -> None:
    plain = _ingest_failed()
    nodes = plain["status"].pop("nodes")
    plain["status"]["compressedNodes"] = base64.b64encode(gzip.compress(json.dumps(nodes).encode())).decode()
    assert e2e.workflow_nodes(plain) == nodes
    assert e2e.failed_node(plain)["displayName"] == "snapshot(1)"


# ------------------------------------------------------------------------------------------------ step output


def test_the_monthly_json_is_read_once_from_the_retry_node_and_its_pod() -> None:
    assert e2e.step_result(_monthly_succeeded(), ("main", "monthly")) == MONTHLY_RESULT


def test_the_named_step_wins_over_other_steps_that_printed_something() -> None:
    wf = "streamflow-monthly-w4p9z"
    out = {"result": json.dumps({"decision": "NO_ACTION"}), "exitCode": "0"}
    nodes = {
        wf: _node(wf, wf, "Steps", "Succeeded", "main"),
        f"{wf}-1": _node(f"{wf}-1", f"{wf}[0]", "StepGroup", "Succeeded"),
        f"{wf}-11": _node(f"{wf}-11", f"{wf}[0].monthly", "Retry", "Succeeded", "run-month", outputs=out),
        f"{wf}-111": _node(f"{wf}-111", f"{wf}[0].monthly(0)", "Pod", "Succeeded", "run-month", outputs=out),
        f"{wf}-2": _node(f"{wf}-2", f"{wf}[1]", "StepGroup", "Succeeded"),
        f"{wf}-21": _node(f"{wf}-21", f"{wf}[1].notify", "Pod", "Succeeded", "notify", outputs={"result": "sent"}),
    }
    assert e2e.step_result(_workflow(wf, "Succeeded", nodes), ("main", "monthly")) == {"decision": "NO_ACTION"}


def test_a_failed_attempt_that_printed_something_else_is_not_the_steps_output() -> None:
    workflow = _monthly_succeeded()
    wf = workflow["metadata"]["name"]
    attempt = {"message": "Error (exit code 1)", "outputs": {"result": '{"error": "database is locked"}'}}
    workflow["status"]["nodes"][f"{wf}-1"] = _node(f"{wf}-1", f"{wf}(0)", "Pod", "Failed", "main", **attempt)
    assert e2e.step_result(workflow, ("main", "monthly")) == MONTHLY_RESULT


def test_a_single_result_is_taken_when_the_template_names_the_step_otherwise() -> None:
    wf = "streamflow-monthly-p3r8d"
    root = _node(wf, wf, "Pod", "Succeeded", "run-month", outputs={"result": '{"decision": "X"}'})
    assert e2e.step_result(_workflow(wf, "Succeeded", {wf: root}), ("main", "monthly")) == {"decision": "X"}


def test_no_result_or_several_unnamed_results_say_which_nodes_were_seen() -> None:
    wf = "streamflow-monthly-n0n0n"
    with pytest.raises(e2e.E2EError, match="nodes with a result: none"):
        e2e.step_result(_workflow(wf, "Succeeded", {wf: _node(wf, wf, "Steps", "Succeeded", "main")}), ("monthly",))
    nodes = {
        f"{wf}-1": _node(f"{wf}-1", f"{wf}[0].a", "Pod", "Succeeded", "a", outputs={"result": "{}"}),
        f"{wf}-2": _node(f"{wf}-2", f"{wf}[0].b", "Pod", "Succeeded", "b", outputs={"result": "[]"}),
    }
    with pytest.raises(e2e.E2EError, match=r"one step output named monthly; nodes with a result: a \(a\), b \(b\)"):
        e2e.step_result(_workflow(wf, "Succeeded", nodes), ("monthly",))


def test_the_cli_object_is_found_after_stray_stdout_lines_and_non_json_is_refused() -> None:
    text = 'Materializing 4 feature views\n{"not": "complete"\n{"decision": "RETRAIN", "production_version": "2"}\n'
    assert e2e.parse_result(text, "step monthly") == {"decision": "RETRAIN", "production_version": "2"}
    with pytest.raises(e2e.E2EError, match="step monthly: the output is not a JSON object: 'Traceback"):
        e2e.parse_result("Traceback (most recent call last):\n  boom", "step monthly")
    with pytest.raises(e2e.E2EError, match="not a JSON object"):
        e2e.parse_result("[1, 2]", "step monthly")


# ------------------------------------------------------------------------------------------------ submission


def test_the_submission_references_the_template_with_string_parameters_by_name() -> None:
    body = e2e.workflow_submission(
        "streamflow-generate",
        {"users": 7043, "months": 2, "seed": 42, "drift": "watch_hours_30d=-0.8"},
        namespace="streamflow",
        release="streamflow",
    )
    assert body == {
        "apiVersion": "argoproj.io/v1alpha1",
        "kind": "Workflow",
        "metadata": {
            "generateName": "streamflow-generate-",
            "namespace": "streamflow",
            "labels": {
                "app.kubernetes.io/name": "streamflow",
                "app.kubernetes.io/instance": "streamflow",
                "app.kubernetes.io/component": "workflow",
                "app.kubernetes.io/managed-by": "kind-e2e",
            },
        },
        "spec": {
            "workflowTemplateRef": {"name": "streamflow-generate"},
            "arguments": {
                "parameters": [
                    {"name": "users", "value": "7043"},
                    {"name": "months", "value": "2"},
                    {"name": "seed", "value": "42"},
                    {"name": "drift", "value": "watch_hours_30d=-0.8"},
                ]
            },
        },
    }
    assert json.loads(json.dumps(body)) == body  # plain JSON, as the Kubernetes API takes it


def test_a_template_without_parameters_gets_an_empty_list_and_no_value_is_sent_as_none() -> None:
    body = e2e.workflow_submission("streamflow-monthly", {}, namespace="ml", release="prod")
    assert body["spec"]["arguments"] == {"parameters": []}
    assert body["metadata"]["labels"]["app.kubernetes.io/instance"] == "prod"
    for bad in (None, True):
        with pytest.raises(e2e.E2EError, match="'as-of'"):
            e2e.workflow_submission("streamflow-train", {"as-of": bad}, namespace="ml", release="prod")


@pytest.mark.parametrize(
    ("release", "expected"),
    [
        ("streamflow", "streamflow"),
        ("prod", "prod-streamflow"),
        ("eu-streamflow-2", "eu-streamflow-2"),
        ("a" * 45, "a" * 40),
        ("b" * 39 + "-x", "b" * 39),  # the cut at 40 leaves a trailing dash: trimmed as the chart's trimSuffix does
    ],
)
def test_fullname_follows_the_charts_helper(release: str, expected: str) -> None:
    assert e2e.fullname(release) == expected


def test_object_names_are_the_fullname_and_a_suffix() -> None:
    assert e2e.component("streamflow", "ingest") == "streamflow-ingest"
    assert e2e.component("prod", "mlflow-auth") == "prod-streamflow-mlflow-auth"
    assert e2e.component("a" * 45, "churn") == "a" * 40 + "-churn"


# ------------------------------------------------------------------------------------------------ v2 answer

IDS = ["9213-RNPRY", "5790-KXWQA", "0042-ZZTOP"]


def _answer(**change: Any) -> dict[str, Any]:
    outputs = {
        "user_id": {"name": "user_id", "shape": [3], "datatype": "BYTES", "data": list(IDS)},
        "churn_probability": {
            "name": "churn_probability",
            "shape": [3],
            "datatype": "FP32",
            "data": [0.0812, 0.6403, 1.0],
        },
        "churn_label": {"name": "churn_label", "shape": [3], "datatype": "INT64", "data": [0, 1, 1]},
    }
    for name, data in change.pop("data", {}).items():
        if data is None:
            del outputs[name]
        else:
            outputs[name]["data"] = data
    answer = {
        "model_name": "streamflow-churn",
        "model_version": "1",
        "id": "5b0f6c0e4c9e4d2f9c1e0a7d3b2a1f00",
        "parameters": {"model_version": "1"},
        "outputs": list(outputs.values()),
    }
    return answer | change


def test_a_good_answer_returns_its_version() -> None:
    assert e2e.check_answer(_answer(), IDS, expected_version="1") == "1"
    assert e2e.check_answer(_answer(model_version=2), IDS) == "2"  # a number is compared as text


# the detail of each check is pipelines.smoke's (tests/unit/test_smoke.py): here, that the e2e run uses it and says so
@pytest.mark.parametrize(
    ("answer", "expected"),
    [
        (_answer(data={"churn_probability": [0.1, 1.3, -0.01]}), "churn_probability outside [0, 1]: [1.3, -0.01]"),
        (_answer(data={"churn_label": [0, 2, 1]}), "churn_label must be 0 or 1"),
        (_answer(data={"churn_label": None}), "churn_label: expected 3 values (one per user id), got none"),
        (_answer(model_version=None, parameters={}), "names no model_version"),
        (_answer(model_version="3", parameters={}), "answered by model version 3, but the registry says production"),
        ({"error": "no online features", "missing_features": {"0000-NOONE": ["monthly_fee"]}}, "not a v2 response"),
    ],
)  # fmt: skip
def test_a_wrong_answer_names_what_is_wrong(answer: dict[str, Any], expected: str) -> None:
    with pytest.raises(e2e.E2EError, match="the graph's answer is wrong") as err:
        e2e.check_answer(answer, IDS, expected_version="1")
    assert expected in str(err.value)


# ------------------------------------------------------------------------------------------------ monthly decision


def test_retrain_with_a_promotion_returns_the_new_production_version() -> None:
    assert e2e.expect_retrain(MONTHLY_RESULT, "1") == "2"


def test_a_calm_month_or_no_month_or_a_kept_champion_is_an_error_with_the_reason() -> None:
    calm = MONTHLY_RESULT | {"decision": "NO_ACTION", "reasons": ["drift_share=0.14 < 0.30 (months_active)"]}
    with pytest.raises(e2e.E2EError, match=r"decided NO_ACTION on /data/months/month_001.*drift_share=0.14 < 0.30"):
        e2e.expect_retrain(calm, "1")
    with pytest.raises(e2e.E2EError, match="monthly ran no month"):
        e2e.expect_retrain({"months_dir": "/data/months", "next": None}, "1")
    kept = MONTHLY_RESULT | {"production_version": "1"}
    kept["retrain"] = {"gate": {"decision": "kept", "challenger_auc": 0.79, "champion_auc": 0.8}}
    with pytest.raises(e2e.E2EError, match=r"production stayed v1: gate kept \(challenger AUC 0.79, champion AUC 0.8"):
        e2e.expect_retrain(kept, "1")


# ------------------------------------------------------------------------------------------------ request users


def test_stayers_are_the_first_non_churners_in_file_order() -> None:
    lines = ["user_id,churn_label", "9213-RNPRY,False", "6757-BJUXR,True", "1111-AAAAA,False", "2222-BBBBB,False"]
    assert e2e.stayers(lines, 2) == ["9213-RNPRY", "1111-AAAAA"]
    with pytest.raises(e2e.E2EError, match="only 3 users stay"):
        e2e.stayers(lines, 4)


def test_the_request_users_are_in_the_clusters_month_000_and_still_there_in_the_drifted_month(tmp_path: Path) -> None:
    ids = e2e.month0_user_ids(users=300, seed=42, count=3)
    # what the chart's generate step writes with its default values: the demo's drift from month_001 on
    drift = [parse_drift(spec) for spec in DRIFT]
    months = generate(tmp_path, users=300, months=2, seed=42, drift=drift, drift_start=1, concept_shift=CONCEPT_SHIFT)
    months = months.months
    month0 = (months[0].folder / "labels.csv").read_text().splitlines()[1:]
    month1_ids = {line.split(",")[0] for line in (months[1].folder / "users.csv").read_text().splitlines()[1:]}
    assert [f"{uid},False" in month0 for uid in ids] == [True] * 3
    assert set(ids) <= month1_ids
    assert e2e.month0_user_ids(users=300, seed=7, count=3) != ids  # the seed matters: ids are not fixed strings


# ------------------------------------------------------------------------------------------------ port-forward

FAKE_KUBECTL = """\
import socket, sys, time
if sys.argv[-1] == "fail:80" or "svc/missing" in sys.argv:
    sys.stderr.write("error: unable to forward port because pod is not running. Current status=Pending\\n")
    sys.exit(1)
port = int(sys.argv[-1].split(":")[0])
server = socket.socket()
server.bind(("127.0.0.1", port))
server.listen()
while True:
    conn, _ = server.accept()
    conn.recv(65536)
    conn.sendall(b"HTTP/1.1 200 OK\\r\\nContent-Length: 2\\r\\nConnection: close\\r\\n\\r\\nok")
    conn.close()
"""


def _fake_kubectl(tmp_path: Path) -> str:
    script = tmp_path / "kubectl"
    script.write_text(f"#!{sys.executable}\n" + FAKE_KUBECTL)
    script.chmod(0o755)
    return str(script)


def test_the_port_forward_command_names_the_service_both_ports_and_the_context_when_given() -> None:
    assert e2e.port_forward_command("kubectl", "streamflow", "streamflow-churn", 41234, 80) == [
        "kubectl", "-n", "streamflow", "port-forward", "svc/streamflow-churn", "41234:80",
    ]  # fmt: skip
    assert e2e.port_forward_command("kubectl", "ml", "prod-streamflow-mlflow", 41235, 5000, "kind-streamflow") == [
        "kubectl", "--context", "kind-streamflow", "-n", "ml", "port-forward", "svc/prod-streamflow-mlflow",
        "41235:5000",
    ]  # fmt: skip


def test_a_port_forward_serves_on_its_port_is_revived_after_kubectl_exits_and_is_stopped(tmp_path: Path) -> None:
    kubectl = _fake_kubectl(tmp_path)
    with e2e.PortForward("streamflow", "streamflow-mlflow", 5000, time.monotonic() + 30, kubectl) as forward:
        with urllib.request.urlopen(forward.url, timeout=5) as resp:
            assert resp.read() == b"ok"
        first = forward.proc
        first.kill()  # what kubectl does when the pod behind the Service is replaced
        first.wait(timeout=10)
        forward.revive()
        assert forward.proc is not first and forward.proc.poll() is None
        with urllib.request.urlopen(forward.url, timeout=5) as resp:
            assert resp.read() == b"ok"
        running = forward.proc
    assert running.wait(timeout=10) is not None  # stopped on leaving the block


def test_a_port_forward_that_never_listens_fails_with_kubectls_error(tmp_path: Path) -> None:
    forward = e2e.PortForward("streamflow", "missing", 80, time.monotonic() - 1, _fake_kubectl(tmp_path))
    with pytest.raises(e2e.E2EError, match="svc/missing never listened: error: unable to forward port"):
        with forward:
            pass


# ------------------------------------------------------------------------------------------------ the script


def test_importing_the_script_loads_no_cluster_client_and_prints_nothing() -> None:
    code = "import sys, tests.e2e.kind_e2e; print(sorted({'kubernetes', 'mlflow', 'numpy'} & set(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=_root())
    assert out.stdout == "[]\n" and out.stderr == ""


def test_without_a_cluster_the_script_exits_1_with_what_to_do(tmp_path: Path) -> None:
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "KUBECONFIG": str(tmp_path / "absent")}
    script = textwrap.dedent(f"""
        import sys
        sys.path.insert(0, {str(_root())!r})
        from tests.e2e.kind_e2e import main
        sys.exit(main(["--timeout-seconds", "5"]))
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=120)
    assert out.returncode == 1
    assert out.stderr.strip() == "e2e FAILED: no kubeconfig and not in a pod: run `make kind-up deploy` first"
    assert out.stdout == ""


def _root() -> Path:
    return Path(__file__).resolve().parents[2]
