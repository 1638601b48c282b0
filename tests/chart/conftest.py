"""The chart tier: the real Helm v4 engine (helm-python-sdk) renders charts/streamflow offline, and every rendered
object is checked against strict schemas — core kinds with kubernetes-validate, custom resources (KServe, Argo,
Prometheus Operator) against the upstream CRD schemas in ``../shared/crds`` (read in place; ``STREAMFLOW_CRDS``
overrides the folder). No Kubernetes API server runs here: what only a cluster's webhooks would check has tests of
its own, on the rendered objects.
"""

from __future__ import annotations

import functools
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "streamflow"
RELEASE, NAMESPACE = "streamflow", "streamflow"
SCENARIOS = ["default", *sorted(p.name.removesuffix("-values.yaml") for p in (CHART / "ci").glob("*-values.yaml"))]
PINS = ROOT / "manifests" / "versions.env"  # the Kubernetes layer's one pin file


def pins(path: Path = PINS) -> dict[str, str]:
    """A pin file (``KEY=VALUE`` lines, ``#`` comments) as a dict."""
    found = {}
    for line in path.read_text().splitlines():
        if line and not line.startswith("#"):
            key, _, value = line.partition("=")
            found[key] = value
    return found


def crds_dir() -> Path:
    """The upstream CRD schemas: ``STREAMFLOW_CRDS``, else ``../shared/crds`` beside the checkout."""
    return Path(os.environ.get("STREAMFLOW_CRDS") or ROOT.parent / "shared" / "crds")


def scenario_values(scenario: str) -> dict[str, Any] | None:
    """The values of a scenario: None for the chart's defaults, else ``ci/<scenario>-values.yaml``."""
    if scenario == "default":
        return None
    return yaml.safe_load((CHART / "ci" / f"{scenario}-values.yaml").read_text())


@functools.cache
def _values_of(scenario: str) -> str:
    return json.dumps(_chart().merge_values(scenario_values(scenario)))


def values_of(scenario: str) -> dict[str, Any]:
    """The values a scenario's release uses: the chart's defaults merged with the scenario's file by Helm itself."""
    return json.loads(_values_of(scenario))  # a fresh copy: callers may change it


@dataclass
class Rendered:
    """One render of the chart: the manifests by template path, and every object parsed."""

    manifests: dict[str, str]
    objects: list[dict[str, Any]] = field(default_factory=list)

    def of_kind(self, kind: str) -> list[dict[str, Any]]:
        return [o for o in self.objects if o["kind"] == kind]

    def named(self, kind: str, name: str) -> dict[str, Any]:
        found = [o for o in self.of_kind(kind) if o["metadata"]["name"] == name]
        assert found, f"no {kind} {name!r} rendered; have {[o['metadata']['name'] for o in self.of_kind(kind)]}"
        return found[0]


@functools.cache
def _chart():
    import helm_python as helm

    return helm.Chart.load(str(CHART))


def render(
    values: dict[str, Any] | None = None,
    *,
    name: str = RELEASE,
    namespace: str = NAMESPACE,
    is_upgrade: bool = False,
) -> Rendered:
    """Render the chart with the real Helm engine (schema validation included) and parse every object."""
    chart = _chart()
    chart.validate_schema(values)
    manifests = chart.render(values, name=name, namespace=namespace, is_install=not is_upgrade, is_upgrade=is_upgrade)
    objects = []
    for path, text in sorted(manifests.items()):
        if path.endswith("NOTES.txt"):
            continue
        for obj in yaml.safe_load_all(text):
            if obj:
                obj.setdefault("metadata", {})
                objects.append(obj | {"_template": path})
    return Rendered(manifests, objects)


@functools.cache
def rendered(scenario: str) -> Rendered:
    """The render of a scenario, once per test session."""
    return render(scenario_values(scenario))


@functools.cache
def crd_validator(api_version: str, kind: str):
    """A jsonschema validator for a custom resource kind, or None for a core kind (built once: checking the
    meta-schema of the large Argo and KServe files takes seconds)."""
    import jsonschema

    group, _, version = api_version.rpartition("/")
    path = crds_dir() / group / f"{kind.lower()}_{version}.json"
    if not group or not path.exists():
        return None
    return jsonschema.Draft202012Validator(json.loads(path.read_text()))


def strip(obj: dict[str, Any]) -> dict[str, Any]:
    """The object as Kubernetes would get it (without the test's bookkeeping key)."""
    return {k: v for k, v in obj.items() if k != "_template"}


@pytest.fixture(params=SCENARIOS)
def scenario(request) -> str:
    return request.param


@pytest.fixture(scope="session", autouse=True)
def _crds_present() -> None:
    if not (crds_dir() / "index.json").exists():
        pytest.fail(f"upstream CRD schemas not found at {crds_dir()} (set STREAMFLOW_CRDS to the shared/crds folder)")


def pytest_collection_modifyitems(items) -> None:
    """Every test in this folder belongs to the ``chart`` tier (``pytest -m chart`` runs it alone, in seconds)."""
    here = Path(__file__).parent
    for item in items:
        if here in Path(item.fspath).parents:
            item.add_marker(pytest.mark.chart)
