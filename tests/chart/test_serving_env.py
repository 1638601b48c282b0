"""Where pickle is refused: MLFLOW_ALLOW_PICKLE_DESERIALIZATION=false on both containers of every InferenceService,
and on nothing else (issue 16).

The serving pods load models with skops themselves, trusting the project's fixed list of types; MLflow's own
loaders (pickle, and since MLflow 3.17 skops too) are refused there by the flag. The workflow steps (promote,
drift) load models through MLflow's skops loader, which the flag would break: it must not reach them.
"""

from __future__ import annotations

from typing import Any

from tests.chart.conftest import rendered
from tests.chart.test_security import all_containers

FLAG = "MLFLOW_ALLOW_PICKLE_DESERIALIZATION"


def _flag(container: dict[str, Any]) -> list[Any]:
    return [item.get("value", item.get("valueFrom")) for item in container.get("env") or [] if item["name"] == FLAG]


def test_both_serving_containers_refuse_pickle(scenario: str) -> None:
    services = rendered(scenario).of_kind("InferenceService")
    assert services, scenario
    for isvc in services:
        for part in ("predictor", "transformer"):
            containers = isvc["spec"][part]["containers"]
            assert containers, (isvc["metadata"]["name"], part)
            for container in containers:
                assert _flag(container) == ["false"], (scenario, isvc["metadata"]["name"], part, container.get("env"))


def test_no_other_container_gets_the_flag(scenario: str) -> None:
    r = rendered(scenario)
    checked = set()
    for obj in r.objects:
        if obj["kind"] == "InferenceService":
            continue
        for container in all_containers(obj):
            checked.add(obj["kind"])
            assert _flag(container) == [], (scenario, obj["kind"], obj["metadata"]["name"], container.get("name"))
    assert "Deployment" in checked, checked  # MLflow's server at least
    if r.of_kind("WorkflowTemplate"):  # the steps that promote and check drift
        assert "WorkflowTemplate" in checked, checked
    for cm in r.of_kind("ConfigMap"):  # nor through the env every pod reads from the ConfigMap
        assert FLAG not in (cm.get("data") or {}), cm["metadata"]["name"]
