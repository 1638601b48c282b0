"""The alert rules (issue 18): ``charts/streamflow/rules/streamflow.rules.yaml`` is the one source — a plain
Prometheus rule file a Prometheus without the operator loads as is, and the spec of the chart's PrometheusRule.

- promtool (Debian's ``prometheus`` package): ``promtool check rules`` on the source and on what the chart renders,
  ``promtool test rules`` on ``tests/chart/promtool/streamflow.test.yaml``.
- Every alert has its three cases in that file: a series over the threshold that fires, the same series evaluated
  before ``for`` has run out (no alert yet), and a series just below the threshold (no alert, long after ``for``).
  That each case tests what it says is checked by running promtool on altered copies of the rules: without the
  alert's ``for`` the "not yet" evaluation fails and the below case still holds; with the threshold nudged past the
  below case's value (``NUDGES``) the below case fires.
- "The rule group file the chart renders" is the text the rendered manifest ``templates/prometheusrule.yaml`` holds
  under ``spec:``: the chart embeds the file with ``.Files.Get | indent 2``, so every line after ``spec:`` with its
  two leading spaces removed (and without the newline Helm ends the document with) must be the source file byte for
  byte — comments, quoting and the alerts' own ``{{ $value }}`` templates included, which proves Helm did not
  evaluate them. The parsed object's ``spec`` (what the API server stores and the operator hands to Prometheus) must
  equal the parsed source and, dumped back to YAML, pass ``promtool check rules`` too. The PrometheusRule is
  validated against its upstream CRD schema like every custom resource (test_render.py's ``object_problems``).
- Every alert has ``for``, ``severity`` (its only label), ``summary``, ``description`` and a ``runbook_url`` whose
  anchor is a heading of ``docs/runbook.md`` (computed as GitHub does), and reads only metrics of the catalogue.

Each check is shown to fail on a broken copy.
"""

from __future__ import annotations

import copy
import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.chart.catalogue import catalogue
from tests.chart.conftest import CHART, ROOT, SCENARIOS, crd_validator, rendered, strip, values_of
from tests.chart.test_render import object_problems

RULES = CHART / "rules" / "streamflow.rules.yaml"
UNIT_TESTS = Path(__file__).parent / "promtool" / "streamflow.test.yaml"
RUNBOOK = ROOT / "docs" / "runbook.md"
RUNBOOK_URL = "https://github.com/streamflow-mlops/streamflow/blob/main/docs/runbook.md#"
TEMPLATE = "streamflow/templates/prometheusrule.yaml"
SEVERITIES = {"critical", "warning"}
ANNOTATIONS = {"summary", "description", "runbook_url"}
SECTION_PARTS = ("**What it means.**", "**What to check.**", "**What to do.**")
OVER, BELOW = "over the threshold", "just below the threshold"

CATALOGUE = catalogue()  # the only series dashboards and rules may read (tests/chart/catalogue.py)

# A change of each alert's expression that moves its threshold just past the value its "just below" case sits at:
# with it, that case must fire. So the below case is within this distance of the threshold, and the threshold in the
# rule is the one the test file was written against.
NUDGES = {
    "StreamflowLatencyP99High": ("> 0.1", "> 0.098"),  # below case: p99 0.0989 s
    "StreamflowErrorRatioHigh": ("> 0.05", "> 0.039"),  # below case: 4%
    "StreamflowServerDown": ("== 0", "== 1"),  # below case: every target up
    "StreamflowPredictorAbsent": ('up{server="predictor"}', 'up{server="predictor"} == 1'),  # present, down
    "StreamflowTransformerAbsent": ('up{server="transformer"}', 'up{server="transformer"} == 1'),
    "StreamflowNoModelLoaded": ("(streamflow_model_info == 1)", "(streamflow_model_info == 2)"),  # models at 1
    "StreamflowRegistryUnreachable": ("== 0", "== 1"),  # below case: reachable
    "StreamflowModelReloadFailed": ("> 0)", ">= 0)"),  # below case: no failure in the window
    "StreamflowMissingFeaturesHigh": ("> 0.05", "> 0.039"),  # below case: 4%
    "StreamflowDriftShareHigh": (">= streamflow_drift_share_threshold", ">= streamflow_drift_share_threshold - 0.08"),
    "StreamflowRealizedAucDropped": (  # below case: a drop of 0.049 against the pushed 0.05
        "group_left () streamflow_quality_drop_margin",
        "group_left () (streamflow_quality_drop_margin - 0.002)",
    ),
    "StreamflowQuarantineRatioHigh": ("> 0.005", "> 0.0048"),  # below case: 0.49%
    "StreamflowMonthlyWorkflowFailed": ("== 0", "== 1"),  # below case: succeeded
    "StreamflowMonthlyWorkflowLate": ("> 35 * 86400", "> 35 * 86400 - 3600"),  # below case: 30 min short
}


# ------------------------------------------------------------------------------------------------ helpers


@pytest.fixture(scope="module")
def promtool() -> str:
    """The promtool binary: tests/system-deps.sh installs Debian's ``prometheus`` when run as root."""
    if found := shutil.which("promtool"):
        return found
    if os.geteuid() != 0:
        pytest.skip("needs promtool (Debian package prometheus; tests/system-deps.sh installs it when run as root)")
    pytest.fail("promtool is missing although this runs as root: run tests/system-deps.sh (make test does)")


def run(promtool: str, *args: str | Path) -> subprocess.CompletedProcess:
    return subprocess.run([promtool, *map(str, args)], capture_output=True, text=True, timeout=120)


def source() -> dict[str, Any]:
    return yaml.safe_load(RULES.read_text())


def unit_tests() -> dict[str, Any]:
    return yaml.safe_load(UNIT_TESTS.read_text())


def rules_of(doc: dict[str, Any]) -> list[dict[str, Any]]:
    return [rule for group in doc["groups"] for rule in group["rules"]]


def alerts_of(doc: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {rule["alert"]: rule for rule in rules_of(doc) if "alert" in rule}


def seconds(duration: str) -> float:
    """A Prometheus duration ("90s", "5m", "1h30m", "35d") in seconds."""
    units = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800, "y": 31536000}
    parts = re.findall(r"(\d+)(ms|s|m|h|d|w|y)", duration)
    assert parts and "".join(n + u for n, u in parts) == duration, f"not a Prometheus duration: {duration!r}"
    return sum(int(n) * units[u] for n, u in parts)


def spec_text(manifest: str) -> str:
    """The rule file the chart renders: the lines after ``spec:`` without the two spaces ``indent 2`` added."""
    head, sep, body = manifest.partition("\nspec:\n")
    assert sep, "no top-level `spec:` line in the rendered PrometheusRule"
    lines = body.removesuffix("\n").split("\n")
    bad = [i for i, line in enumerate(lines, 1) if not line.startswith("  ")]
    assert not bad, f"lines {bad[:5]} after `spec:` are not indented by two spaces"
    return "\n".join(line[2:] for line in lines)


def promtool_test(promtool: str, folder: Path, rules: dict[str, Any], alert: str | None = None) -> set[str]:
    """Run the unit tests (only ``alert``'s groups when given) against ``rules``; the names of the failing groups."""
    rules_file, tests_file = folder / "rules.yaml", folder / "tests.yaml"
    rules_file.write_text(yaml.safe_dump(rules, sort_keys=False))
    doc = unit_tests()
    if alert is not None:
        doc["tests"] = [t for t in doc["tests"] if t["name"].split(":")[0] == alert]
    doc["rule_files"] = [str(rules_file)]
    tests_file.write_text(yaml.safe_dump(doc, sort_keys=False))
    result = run(promtool, "test", "rules", tests_file)
    output = result.stdout + result.stderr
    failed = set(re.findall(r"^\s*name: (.+?),\s*$", output, flags=re.M))
    if result.returncode == 0:
        assert not failed, output
    else:  # a failure that names no group is not a test failing: a file promtool could not read
        assert failed, f"promtool test failed without naming a test group:\n{output}"
    return failed


def group_names(alert: str, case: str) -> set[str]:
    return {t["name"] for t in unit_tests()["tests"] if t["name"].startswith(f"{alert}: {case}")}


def with_rule(alert: str, change) -> dict[str, Any]:
    doc = copy.deepcopy(source())
    change(alerts_of(doc)[alert])
    return doc


# ------------------------------------------------------------------------------------------------ promtool


def test_promtool_checks_the_source(promtool):
    result = run(promtool, "check", "rules", RULES)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(rules_of(source()))} rules found" in result.stdout


def test_promtool_check_fails_on_a_broken_rule(promtool, tmp_path):
    broken = copy.deepcopy(source())
    rules_of(broken)[0]["expr"] = "sum by (server (up)"
    (tmp_path / "broken.yaml").write_text(yaml.safe_dump(broken))
    result = run(promtool, "check", "rules", tmp_path / "broken.yaml")
    assert result.returncode != 0 and "FAILED" in result.stdout + result.stderr


def test_promtool_unit_tests_pass(promtool):
    result = run(promtool, "test", "rules", UNIT_TESTS)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_promtool_unit_tests_fail_on_a_changed_threshold(promtool, tmp_path):
    """The harness that runs altered copies sees a failure, and names the group that failed."""
    doc = with_rule("StreamflowLatencyP99High", lambda r: r.update(expr=r["expr"].replace("> 0.1", "> 0.3")))
    assert promtool_test(promtool, tmp_path, doc, "StreamflowLatencyP99High") == {
        "StreamflowLatencyP99High: over the threshold"
    }
    assert promtool_test(promtool, tmp_path, source(), "StreamflowLatencyP99High") == set()


def test_without_for_only_the_not_yet_cases_fail(promtool, tmp_path):
    """Without their ``for``, the alerts fire at the "not yet" evaluations (so the series were already over the
    threshold there: only ``for`` held them back), while every below case stays quiet (quiet on its own). One
    promtool run for all alerts: each group tests only its own alert (test_every_alert_has_its_three_cases)."""
    doc = copy.deepcopy(source())
    for rule in rules_of(doc):
        rule.pop("for")
    assert promtool_test(promtool, tmp_path, doc) == {g for a in NUDGES for g in group_names(a, OVER)}


def test_nudged_thresholds_fire_the_below_cases(promtool, tmp_path):
    """Every threshold moved just past the value its below case sits at (``NUDGES``, without ``for`` too): every
    below case then fires."""
    doc = copy.deepcopy(source())
    for alert, rule in alerts_of(doc).items():
        old, new = NUDGES[alert]
        assert rule["expr"].count(old) == 1, f"{alert}: {old!r} is not once in its expr"
        rule["expr"] = rule["expr"].replace(old, new)
        rule.pop("for")
    failed = promtool_test(promtool, tmp_path, doc)
    assert not (quiet := {g for a in NUDGES for g in group_names(a, BELOW)} - failed), f"still quiet: {quiet}"


def test_every_alert_is_nudged():
    assert set(NUDGES) == set(alerts_of(source()))


# ------------------------------------------------------------------------------------------------ the three cases


def case_problems(tests: dict[str, Any], alerts: dict[str, dict[str, Any]]) -> list[str]:
    """Each alert has a group "<alert>: over the threshold" that expects no alert at one evaluation and the alert
    firing at a later one, at most ``for`` apart, and a group "<alert>: just below the threshold" that expects no
    alert at evaluations from ``for`` on. Every group is named after one alert and tests only that alert."""
    problems = []
    groups: dict[str, list[dict[str, Any]]] = {}
    for group in tests["tests"]:
        alert = group.get("name", "").split(":")[0]
        if alert not in alerts:
            problems.append(f"test group {group.get('name')!r} is not named '<alert>: <case>' after an alert")
            continue
        groups.setdefault(alert, []).append(group)
        others = {c["alertname"] for c in group.get("alert_rule_test", [])} - {alert}
        if others:
            problems.append(f"{group['name']!r} also tests {sorted(others)}")
    for alert, rule in alerts.items():
        hold = seconds(rule["for"]) if "for" in rule else 0
        mine = groups.get(alert, [])
        over = [g for g in mine if g["name"].startswith(f"{alert}: {OVER}")]
        below = [g for g in mine if g["name"].startswith(f"{alert}: {BELOW}")]
        if not over:
            problems.append(f"{alert}: no '{OVER}' group")
        if not below:
            problems.append(f"{alert}: no '{BELOW}' group")
        for group in over:
            checks = [(seconds(c["eval_time"]), bool(c.get("exp_alerts"))) for c in group.get("alert_rule_test", [])]
            quiet = [t for t, fires in checks if not fires]
            firing = [t for t, fires in checks if fires]
            if not any(0 < f - q <= hold for q in quiet for f in firing):
                problems.append(f"{group['name']!r}: no 'not yet' evaluation within `for` ({rule.get('for')}) before "
                                f"one that fires")  # fmt: skip
        for group in below:
            checks = group.get("alert_rule_test", [])
            if not checks or any(c.get("exp_alerts") or seconds(c["eval_time"]) < hold for c in checks):
                problems.append(f"{group['name']!r}: must expect no alert, evaluated after `for` ({rule.get('for')})")
    return problems


def test_every_alert_has_its_three_cases():
    assert not (problems := case_problems(unit_tests(), alerts_of(source()))), "\n".join(problems)


def test_case_rule_catches_missing_cases():
    tests, alerts = unit_tests(), alerts_of(source())
    no_below = copy.deepcopy(tests)
    no_below["tests"] = [t for t in no_below["tests"] if t["name"] != f"StreamflowServerDown: {BELOW}"]
    assert case_problems(no_below, alerts) == [f"StreamflowServerDown: no '{BELOW}' group"]
    early = copy.deepcopy(tests)  # the "not yet" evaluation moved to long before the alert could fire
    group = next(t for t in early["tests"] if t["name"] == f"StreamflowServerDown: {OVER}")
    group["alert_rule_test"][0]["eval_time"] = "0m"
    group["alert_rule_test"][1]["eval_time"] = "30m"
    assert case_problems(early, alerts) == [
        f"'StreamflowServerDown: {OVER}': no 'not yet' evaluation within `for` (5m) before one that fires"
    ]
    hasty = copy.deepcopy(tests)  # a below case evaluated before `for` could have run out proves nothing
    group = next(t for t in hasty["tests"] if t["name"] == f"StreamflowServerDown: {BELOW}")
    group["alert_rule_test"][0]["eval_time"] = "2m"
    assert len(case_problems(hasty, alerts)) == 1
    stray = copy.deepcopy(tests)
    stray["tests"][0]["name"] = "latency: over the threshold"
    assert any("not named" in p for p in case_problems(stray, alerts))


# ------------------------------------------------------------------------------------------------ what on-call reads


def alert_problems(rule: dict[str, Any]) -> list[str]:
    name = rule.get("alert", "<recording rule>")
    problems = []
    if "alert" not in rule:
        problems.append(f"{rule.get('record')}: recording rules are not expected here")
    if "for" not in rule or seconds(str(rule["for"])) <= 0:
        problems.append(f"{name}: no `for`")
    labels = rule.get("labels") or {}
    if set(labels) != {"severity"} or labels["severity"] not in SEVERITIES:
        problems.append(f"{name}: labels must be exactly severity ({'|'.join(sorted(SEVERITIES))}): {labels}")
    annotations = rule.get("annotations", {})
    if set(annotations) != ANNOTATIONS or not all(str(v).strip() for v in annotations.values()):
        problems.append(f"{name}: annotations must be {sorted(ANNOTATIONS)}, non-empty: {sorted(annotations)}")
    if annotations.get("runbook_url") != RUNBOOK_URL + name.lower():
        problems.append(f"{name}: runbook_url must be {RUNBOOK_URL + name.lower()}")
    return problems


def test_every_alert_has_for_severity_and_annotations():
    problems = [p for rule in rules_of(source()) for p in alert_problems(rule)]
    assert not problems, "\n".join(problems)
    assert len(alerts_of(source())) == len(rules_of(source())), "an alert name is used twice"


def test_alert_rule_catches_missing_parts():
    rule = alerts_of(source())["StreamflowServerDown"]
    assert alert_problems(rule) == []
    for change, words in [
        (lambda r: r.pop("for"), "no `for`"),
        (lambda r: r.update({"for": "0s"}), "no `for`"),
        (lambda r: r["labels"].update(team="ml-platform"), "labels must be exactly severity"),
        (lambda r: r["labels"].update(severity="page"), "labels must be exactly severity"),
        (lambda r: r["annotations"].pop("summary"), "annotations must be"),
        (lambda r: r["annotations"].update(description=" "), "annotations must be"),
        (lambda r: r["annotations"].update(runbook_url=RUNBOOK_URL + "serverdown"), "runbook_url must be"),
    ]:
        broken = copy.deepcopy(rule)
        change(broken)
        assert any(words in p for p in alert_problems(broken)), (words, alert_problems(broken))


# ------------------------------------------------------------------------------------------------ runbook


def github_anchor(heading: str) -> str:
    """The anchor GitHub gives a Markdown heading: code spans and links keep their text, lowercase, punctuation
    other than ``-`` and ``_`` dropped, each space a ``-``."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading.strip())
    text = text.replace("`", "").lower()
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def headings(markdown: str) -> list[str]:
    """The ATX headings outside fenced code blocks."""
    found, fenced = [], False
    for line in markdown.splitlines():
        if line.lstrip().startswith("```"):
            fenced = not fenced
        elif not fenced and (m := re.match(r"#{1,6}\s+(.*?)\s*#*\s*$", line)):
            found.append(m.group(1))
    return found


def anchors(markdown: str) -> set[str]:
    """Every anchor of the page; a repeated heading gets -1, -2, … as on GitHub."""
    seen: dict[str, int] = {}
    out = set()
    for heading in headings(markdown):
        anchor = github_anchor(heading)
        out.add(anchor if anchor not in seen else f"{anchor}-{seen[anchor]}")
        seen[anchor] = seen.get(anchor, 0) + 1
    return out


def runbook_problems(markdown: str, alerts: dict[str, dict[str, Any]]) -> list[str]:
    problems = []
    have = anchors(markdown)
    for name, rule in alerts.items():
        url = rule["annotations"]["runbook_url"]
        if url.split("#", 1)[1] not in have:
            problems.append(f"{name}: runbook_url anchor #{url.split('#', 1)[1]} is no heading of docs/runbook.md")
        section = re.search(rf"^## {re.escape(name)}\n(.*?)(?=^## |\Z)", markdown, flags=re.M | re.S)
        if not section:
            problems.append(f"{name}: no '## {name}' section")
            continue
        missing = [part for part in SECTION_PARTS if part not in section.group(1)]
        if missing:
            problems.append(f"{name}: its section lacks {missing}")
    broken_links = sorted(set(re.findall(r"\]\(#([^)]+)\)", markdown)) - have)
    if broken_links:
        problems.append(f"in-page links to no heading: {broken_links}")
    return problems


def test_runbook_has_every_alert_section():
    problems = runbook_problems(RUNBOOK.read_text(), alerts_of(source()))
    assert not problems, "\n".join(problems)


def test_runbook_rule_catches_a_missing_section():
    assert github_anchor("StreamflowServerDown") == "streamflowserverdown"
    assert github_anchor("What `up == 0` means: [the target](x.md), again!") == "what-up--0-means-the-target-again"
    assert anchors("# A\n```\n# not a heading\n```\n## A\n## B_c-d\n") == {"a", "a-1", "b_c-d"}
    text, alerts = RUNBOOK.read_text(), alerts_of(source())
    renamed = text.replace("## StreamflowServerDown\n", "## Streamflow server down\n")
    assert runbook_problems(renamed, alerts)[:2] == [
        "StreamflowServerDown: runbook_url anchor #streamflowserverdown is no heading of docs/runbook.md",
        "StreamflowServerDown: no '## StreamflowServerDown' section",
    ]
    section = re.search(r"## StreamflowServerDown\n.*?(?=^## )", text, flags=re.M | re.S).group(0)
    hollow = text.replace(section, section.replace("**What to do.**", "**Then.**"))
    assert runbook_problems(hollow, alerts) == ["StreamflowServerDown: its section lacks ['**What to do.**']"]


# ------------------------------------------------------------------------------------------------ metric catalogue

PROMQL_WORDS = {"and", "or", "unless", "by", "without", "on", "ignoring", "group_left", "group_right", "bool",
                "offset", "inf", "nan"}  # fmt: skip


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression reads: identifiers that are not functions, keywords, label names or
    numbers, after strings, label matchers, ranges and grouping lists are removed."""
    text = re.sub(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`', '""', expr)
    text = re.sub(r"\{[^}]*\}", " ", text)
    text = re.sub(r"\[[^\]]*\]", " ", text)
    text = re.sub(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", text)
    text = re.sub(r"\boffset\s+-?\w+", " ", text)
    names = set()
    for m in re.finditer(r"(?P<num>\d+(?:\.\d*)?(?:[eE][+-]?\d+)?|0x[0-9a-fA-F]+)|(?P<id>[A-Za-z_:][\w:]*)", text):
        name = m.group("id")
        if name and name.lower() not in PROMQL_WORDS and not text[m.end() :].lstrip().startswith("("):
            names.add(name)
    return names


def test_rules_read_only_catalogue_metrics():
    used = {name: metric_names(rule["expr"]) for name, rule in alerts_of(source()).items()}
    outside = {name: sorted(found - CATALOGUE) for name, found in used.items() if found - CATALOGUE}
    assert not outside, f"metrics outside the catalogue: {outside}"
    assert all(used.values()), f"an alert reads no metric: {used}"
    # and the unit tests feed every metric a rule reads
    fed = {re.match(r"[\w:]+", s["series"]).group(0) for t in unit_tests()["tests"] for s in t["input_series"]}
    assert set().union(*used.values()) <= fed, f"never in a test's input series: {set().union(*used.values()) - fed}"


def test_metric_names_sees_what_an_expression_reads():
    assert metric_names('sum by (le) (rate(a_bucket{x="b(c", le=~"1e3"}[5m])) > 1e3 and on (x) b offset 5m') == {
        "a_bucket",
        "b",
    }
    assert metric_names("time() - c{step='monthly'} > 35 * 86400 unless ignoring (kind) d[1h:5m]") == {"c", "d"}
    assert metric_names('absent(up{server="predictor"})') == {"up"}
    invented = with_rule("StreamflowServerDown", lambda r: r.update(expr="streamflow_servers_down_total > 0"))
    assert metric_names(alerts_of(invented)["StreamflowServerDown"]["expr"]) - CATALOGUE == {
        "streamflow_servers_down_total"
    }


# ------------------------------------------------------------------------------------------------ the chart


def renders_rules(scenario: str) -> bool:
    monitoring = values_of(scenario)["monitoring"]
    return bool(monitoring["enabled"] and monitoring["rules"])


def test_some_scenarios_render_rules_and_some_not():
    assert renders_rules("default")
    assert not all(renders_rules(s) for s in SCENARIOS), "no scenario renders the chart without its rules"


def test_chart_renders_the_source_file(scenario, promtool, tmp_path):
    objects = rendered(scenario).of_kind("PrometheusRule")
    if not renders_rules(scenario):
        assert objects == [] and TEMPLATE not in {k for k, v in rendered(scenario).manifests.items() if v.strip()}
        return
    assert len(objects) == 1
    text = spec_text(rendered(scenario).manifests[TEMPLATE])
    assert text == RULES.read_text(), f"{scenario}: the rule file under spec: differs from {RULES.name}"
    assert strip(objects[0])["spec"] == source()
    # what promtool checks: the rendered file as text, and the object's spec as the operator would write it out
    (tmp_path / "rendered.yaml").write_text(text)
    (tmp_path / "spec.yaml").write_text(yaml.safe_dump(strip(objects[0])["spec"]))
    for path in ("rendered.yaml", "spec.yaml"):
        result = run(promtool, "check", "rules", tmp_path / path)
        assert result.returncode == 0, f"{scenario} {path}: {result.stdout}{result.stderr}"


def test_spec_text_fails_on_a_changed_render():
    manifest = rendered("default").manifests[TEMPLATE]
    assert spec_text(manifest) == RULES.read_text()
    assert spec_text(manifest.replace("for: 10m", "for: 11m", 1)) != RULES.read_text()
    with pytest.raises(AssertionError, match="not indented"):
        spec_text(manifest.replace("\n  groups:", "\n groups:"))
    with pytest.raises(AssertionError, match="no top-level"):
        spec_text(manifest.replace("\nspec:\n", "\nspec: \n"))


def test_prometheusrule_validated_against_its_crd():
    """test_render.py validates every rendered object; this one has a CRD schema (it is not skipped as core) and a
    broken copy of it is refused."""
    assert crd_validator("monitoring.coreos.com/v1", "PrometheusRule") is not None
    rule = rendered("default").of_kind("PrometheusRule")[0]
    assert object_problems(rule) == []
    broken = copy.deepcopy(rule)
    broken["spec"]["groups"][0]["rules"][0]["for"] = "ten minutes"
    broken["spec"]["groups"][0]["rules"][1]["severity"] = "critical"
    problems = object_problems(broken)
    assert any("for" in p for p in problems) and any("severity" in p for p in problems), problems
