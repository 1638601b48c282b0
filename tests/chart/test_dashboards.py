"""The Grafana dashboards: the committed JSON is what charts/streamflow/dashboards/build.py generates (byte for byte),
every panel reads the `datasource` variable, has a unit and a description, and queries only metrics StreamFlow emits,
with `$__rate_interval` as its only variable and servers told apart by `server`, never by job or instance. The chart
ships each JSON file, unchanged, as a ConfigMap Grafana's sidecar picks up, and none when monitoring or dashboards
are off. Whether each query returns series from a real Prometheus is another test's subject (it reads the queries
through dashboards/queries.py).
"""

from __future__ import annotations

import copy
import functools
import importlib.util
import json
import re
from types import ModuleType
from typing import Any

import pytest

from tests.chart.catalogue import catalogue
from tests.chart.conftest import CHART, SCENARIOS, render, rendered, strip, values_of
from tests.chart.test_render import object_problems

SOURCE = CHART / "dashboards"
FILES = sorted(p.name for p in SOURCE.glob("*.json"))
UIDS = {
    "serving.json": "streamflow-serving",
    "pipelines.json": "streamflow-pipelines",
    "quality.json": "streamflow-quality",
}
DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}
CONFIGMAP_LIMIT = 1024 * 1024  # Kubernetes refuses a ConfigMap over 1 MiB
LABEL = ("grafana_dashboard", "1")

CATALOGUE = catalogue()  # the names StreamFlow emits, and `up` (tests/chart/catalogue.py)
# figures a dashboard may leave out: a histogram's _sum and _count (its quantiles and heatmap read the buckets)
UNSHOWN = {
    f"{h}_{s}"
    for h in ("streamflow_request_duration_seconds", "streamflow_churn_probability")
    for s in ("sum", "count")
}

# PromQL words that look like names but are not metrics
KEYWORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "bool", "and", "or", "unless", "offset",
            "atan2", "inf", "nan"}  # fmt: skip
LABEL_LISTS = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\(([^)]*)\)")


def _module(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"streamflow_dashboards_{name}", SOURCE / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@functools.cache
def build() -> ModuleType:
    return _module("build")


@functools.cache
def queries() -> ModuleType:
    return _module("queries")


@functools.cache
def _board_text(name: str) -> str:
    return json.dumps(json.loads((SOURCE / name).read_text(encoding="utf-8")))


def board(name: str) -> dict[str, Any]:
    return json.loads(_board_text(name))


def panels(name: str) -> list[dict[str, Any]]:
    """The panels of a dashboard that show data (rows excluded)."""
    return [p for p in queries().panels(board(name)) if p.get("type") != "row"]


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression selects: identifiers outside strings, label matchers, range windows and
    label lists, that are not followed by `(` (functions, aggregations) and are not keywords or numbers."""
    text = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)
    text = re.sub(r"\{[^}]*\}", " ", text)
    text = re.sub(r"\[[^\]]*\]", " ", text)
    text = LABEL_LISTS.sub(" ", text)
    names = set()
    for m in re.finditer(r"(?<![\w.$])[A-Za-z_:][A-Za-z0-9_:]*", text):
        if text[m.end() :].lstrip().startswith("(") or m.group().lower() in KEYWORDS:
            continue
        names.add(m.group())
    return names


def unknown_metrics(expr: str) -> set[str]:
    return metric_names(expr) - CATALOGUE


# ---------------------------------------------------------------------------------------------- source = JSON


def test_committed_json_is_what_the_source_generates():
    generated = build().generate()
    assert sorted(generated) == FILES == sorted(UIDS), f"generated {sorted(generated)}, committed {FILES}"
    stale = [name for name, text in generated.items() if (SOURCE / name).read_text(encoding="utf-8") != text]
    assert not stale, f"{stale} differ from charts/streamflow/dashboards/build.py: run make dashboards"


def test_generation_is_deterministic():
    first, second = build().generate(), build().generate()
    assert first == second
    assert all(text.endswith("}\n") and not text.endswith("\n\n") for text in first.values())


def test_check_mode_names_a_stale_file(tmp_path, capsys):
    for name in FILES:
        (tmp_path / name).write_text((SOURCE / name).read_text(encoding="utf-8"), encoding="utf-8")
    assert build().main(["--check", "--out", str(tmp_path)]) == 0
    assert capsys.readouterr().err == ""
    (tmp_path / "quality.json").write_text("{}\n", encoding="utf-8")
    (tmp_path / "serving.json").unlink()
    assert build().main(["--check", "--out", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert "quality.json" in err and "serving.json" in err and "make dashboards" in err, err
    assert "pipelines.json" not in err, err


# ---------------------------------------------------------------------------------------------- every panel


@pytest.mark.parametrize("name", FILES)
def test_dashboard_identity_and_variable(name):
    b = board(name)
    assert b["uid"] == UIDS[name], b["uid"]
    assert b["title"] and b.get("description"), f"{name}: no title or description"
    variables = {v["name"]: v for v in b["templating"]["list"]}
    assert variables.get("datasource", {}).get("type") == "datasource", f"{name}: no datasource variable"
    assert variables["datasource"]["query"] == "prometheus", variables["datasource"]
    assert "current" not in variables["datasource"], f"{name}: the datasource variable names a fixed data source"


@pytest.mark.parametrize("name", FILES)
def test_every_panel_has_datasource_unit_description_and_a_query(name):
    problems = []
    for p in panels(name):
        where = f"{name} panel {p.get('id')} {p.get('title')!r}"
        if p.get("datasource") != DATASOURCE:
            problems.append(f"{where}: datasource {p.get('datasource')}")
        if not (p.get("description") or "").strip():
            problems.append(f"{where}: no description")
        if not p.get("fieldConfig", {}).get("defaults", {}).get("unit"):
            problems.append(f"{where}: no unit")
        targets = p.get("targets") or []
        if not targets or not all(t.get("expr") for t in targets):
            problems.append(f"{where}: a target without expr")
        if len({t.get("refId") for t in targets}) != len(targets):
            problems.append(f"{where}: refIds not unique {[t.get('refId') for t in targets]}")
        problems += [f"{where} {t.get('refId')}: datasource {t['datasource']}"
                     for t in targets if "datasource" in t and t["datasource"] != DATASOURCE]  # fmt: skip
    assert not problems, "\n".join(problems)
    assert panels(name), f"{name} has no panels"


def datasource_refs(node: Any, path: str = "$") -> list[tuple[str, Any]]:
    """(path, value) of every `datasource` key: panels, targets, annotations, variables."""
    found: list[tuple[str, Any]] = []
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "datasource":
                found.append((f"{path}.{key}", value))
            found += datasource_refs(value, f"{path}.{key}")
    elif isinstance(node, list):
        for i, value in enumerate(node):
            found += datasource_refs(value, f"{path}[{i}]")
    return found


def hard_coded_datasources(b: dict[str, Any]) -> list[str]:
    """Data source references that are not the `datasource` variable: a fixed uid anywhere (panels, targets,
    annotations, variables) or a `datasourceUid` key."""
    bad = [f"{path} = {value}" for path, value in datasource_refs(b) if value != DATASOURCE]
    text = json.dumps(b)
    bad += [f"datasourceUid {m}" for m in re.findall(r'"datasourceUid":\s*"[^"]*"', text)]
    return bad


@pytest.mark.parametrize("name", FILES)
def test_no_datasource_uid_is_hard_coded(name):
    assert not (bad := hard_coded_datasources(board(name))), f"{name}: {bad}"


def test_hard_coded_datasource_is_caught():
    b = board("serving.json")
    broken = copy.deepcopy(b)
    next(p for p in broken["panels"] if p["type"] != "row")["targets"][0]["datasource"] = {
        "type": "prometheus",
        "uid": "P1809F7CD0C75ACF3",
    }
    assert any("P1809F7CD0C75ACF3" in p for p in hard_coded_datasources(broken))
    broken = copy.deepcopy(b)
    broken["panels"][1]["datasource"] = "Prometheus"  # a data source by name is as fixed as a uid
    assert hard_coded_datasources(broken)


def overlaps(a: dict[str, int], b: dict[str, int]) -> bool:
    return (
        a["x"] < b["x"] + b["w"] and b["x"] < a["x"] + a["w"] and a["y"] < b["y"] + b["h"] and b["y"] < a["y"] + a["h"]
    )


@pytest.mark.parametrize("name", FILES)
def test_layout_fits_the_grid(name):
    """Rows span the 24 columns, no panel leaves the grid or covers another, ids are unique."""
    every = list(queries().panels(board(name)))
    ids = [p["id"] for p in every]
    assert len(set(ids)) == len(ids) and all(isinstance(i, int) and i > 0 for i in ids), ids
    boxes = [(p["title"], p["gridPos"]) for p in every]
    outside = [t for t, g in boxes if g["x"] < 0 or g["w"] < 1 or g["h"] < 1 or g["x"] + g["w"] > 24]
    assert not outside, f"{name}: panels outside the 24 columns: {outside}"
    rows = [p for p in every if p["type"] == "row"]
    assert rows and all(r["gridPos"]["w"] == 24 and r["gridPos"]["x"] == 0 for r in rows), f"{name}: rows"
    assert every[0]["type"] == "row", f"{name}: the first panel is not a row"
    clash = [(a, b) for i, (a, ga) in enumerate(boxes) for b, gb in boxes[i + 1 :] if overlaps(ga, gb)]
    assert not clash, f"{name}: overlapping panels {clash}"


# ---------------------------------------------------------------------------------------------- PromQL


def all_queries() -> list[tuple[str, str, str, str]]:
    return [q for name in FILES for q in queries().panel_queries(SOURCE / name)]


def test_panel_queries_lists_every_target():
    found = all_queries()
    expected = sum(len(p.get("targets") or []) for name in FILES for p in panels(name))
    assert len(found) == expected and expected > 0, (len(found), expected)
    assert {uid for uid, *_ in found} == set(UIDS.values())
    assert all(isinstance(x, str) and x for q in found for x in q), "an empty field in panel_queries"
    assert (
        "streamflow-quality",
        "Drift share against its threshold",
        "B",
        "max(streamflow_drift_share_threshold)",
    ) in (found)


def test_every_expression_names_only_catalogue_metrics():
    bad = [f"{uid} {title!r} {ref}: {sorted(unknown_metrics(expr))} in {expr}"
           for uid, title, ref, expr in all_queries() if unknown_metrics(expr)]  # fmt: skip
    assert not bad, "metrics outside the catalogue:\n" + "\n".join(bad)


def test_every_metric_of_the_catalogue_is_shown():
    shown = set().union(*(metric_names(expr) for *_, expr in all_queries()))
    assert not (missing := CATALOGUE - UNSHOWN - shown), f"metrics no dashboard shows: {sorted(missing)}"


@pytest.mark.parametrize(
    ("expr", "unknown"),
    [
        ("sum by (server) (rate(streamflow_request_total[$__rate_interval]))", {"streamflow_request_total"}),
        ('rate(node_cpu_seconds_total{mode="idle"}[5m])', {"node_cpu_seconds_total"}),
        ("streamflow_drift_share > on (job) group_left kube_pod_info", {"kube_pod_info"}),
        ("max(streamflow_model_auc) - streamflow_model_auc_realized offset 1d", {"streamflow_model_auc_realized"}),
        ('sum by (le) (streamflow_churn_probability_bucket{le="0.5"}) / 1e-9 + inf', set()),
        ('time() - max by (step) (streamflow_step_success{step=~"train|up"})', set()),
        ("up == bool 1 and streamflow_model_info unless streamflow_model_version_pending", set()),
    ],
    ids=["typo", "foreign", "join", "offset", "literals", "label-values", "keywords"],
)
def test_metric_check_can_fail(expr, unknown):
    assert unknown_metrics(expr) == unknown


def test_only_rate_interval_and_no_job_or_instance():
    bad = []
    for uid, title, ref, expr in all_queries():
        where = f"{uid} {title!r} {ref}"
        if variables := set(re.findall(r"\$\{?(\w+)", expr)) - {"__rate_interval"}:
            bad.append(f"{where}: variables {sorted(variables)}")
        if windows := [w for w in re.findall(r"\[([^\]]*)\]", expr) if w != "$__rate_interval"]:
            bad.append(f"{where}: range windows {windows} (use $__rate_interval)")
        grouped = {label.strip() for labels in LABEL_LISTS.findall(expr) for label in labels.split(",")}
        if grouped & {"job", "instance"}:
            bad.append(f"{where}: grouped by {sorted(grouped & {'job', 'instance'})}")
    assert not bad, "\n".join(bad)


# ---------------------------------------------------------------------------------------------- the chart ships them


def dashboard_configmaps(objects: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [
        o for o in objects if o["kind"] == "ConfigMap" and o["metadata"].get("labels", {}).get(LABEL[0]) == LABEL[1]
    ]


def test_configmaps_per_scenario(scenario):
    """One ConfigMap per JSON file, its data the file's bytes, when monitoring and dashboards are on; else none."""
    values = values_of(scenario)
    maps = dashboard_configmaps(rendered(scenario).objects)
    if not (values["monitoring"]["enabled"] and values["monitoring"]["dashboards"]):
        assert not maps, f"{scenario}: dashboards rendered with monitoring off: {[m['metadata']['name'] for m in maps]}"
        return
    shipped = {}
    for cm in maps:
        meta = cm["metadata"]
        assert list(cm["data"]) and len(cm["data"]) == 1, f"{meta['name']}: data keys {list(cm['data'])}"
        (key,) = cm["data"]
        assert key.endswith(".json") and key not in shipped, f"{meta['name']}: data key {key!r}"
        shipped[key] = cm["data"][key]
        assert meta["labels"].get("app.kubernetes.io/part-of") == "streamflow", meta["labels"]
        assert meta["labels"].get("app.kubernetes.io/component") == "dashboards", meta["labels"]
        assert meta.get("annotations", {}).get("grafana_folder") == "StreamFlow", meta.get("annotations")
        size = len(json.dumps(strip(cm)).encode())
        assert size < CONFIGMAP_LIMIT, f"{meta['name']} is {size} bytes, over Kubernetes' 1 MiB"
        assert cm["_template"].endswith("templates/dashboards.yaml"), cm["_template"]
    assert sorted(shipped) == FILES, f"{scenario}: ConfigMaps for {sorted(shipped)}, files {FILES}"
    different = [k for k, text in shipped.items() if text != (SOURCE / k).read_text(encoding="utf-8")]
    assert not different, f"{scenario}: ConfigMap data differs from the file for {different}"


def test_monitoring_off_scenario_renders_none():
    assert "monitoring-off" in SCENARIOS
    assert not dashboard_configmaps(rendered("monitoring-off").objects)
    assert dashboard_configmaps(rendered("default").objects), "the default values render no dashboard"


def test_dashboards_switch_off_renders_none():
    assert not dashboard_configmaps(render({"monitoring": {"dashboards": False}}).objects)


def test_configmaps_are_schema_checked():
    """The chart tier's schema check (test_render.test_every_object_validates) covers these ConfigMaps: they pass
    it, and a broken copy fails it."""
    maps = dashboard_configmaps(rendered("default").objects)
    assert maps
    assert not [p for cm in maps for p in object_problems(cm)]
    broken = copy.deepcopy(maps[0])
    broken["data"]["extra"] = 1  # ConfigMap data holds strings only
    assert object_problems(broken), "a ConfigMap with a number in data passed the schema check"
