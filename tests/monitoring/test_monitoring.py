"""Every dashboard panel and every alert rule, evaluated by a real Prometheus on real data (issue 18).

The scenario (tests/monitoring/scenario.py) runs `streamflow monitor`'s Prometheus and Pushgateway, the demo's three
months through `streamflow monthly`, both servers and bounded REST + gRPC traffic. Then every PromQL expression of
every panel of the committed dashboards (charts/streamflow/dashboards/*.json) and of every rule of the rules file
(the one the chart embeds) goes through Prometheus's HTTP API: it parses, every metric it names exists in what
Prometheus scraped, and every panel target returns a non-empty series. The rules are loaded by that Prometheus too:
it reports them healthy.
"""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import pytest
import yaml

from pipelines.monitor import RULES_FILE
from tests.monitoring.scenario import Scenario, api

pytestmark = [pytest.mark.integration, pytest.mark.slow]

DASHBOARDS = Path(__file__).resolve().parents[2] / "charts" / "streamflow" / "dashboards"
METRIC = re.compile(r"\b(streamflow_[a-z0-9_]+|up)\b(?!\s*\()")  # a name followed by "(" is a function
RATE_INTERVAL = "30s"  # what Grafana's $__rate_interval is at a 1 s scrape interval and a short time range


def panel_queries() -> list[tuple[str, str, str, str]]:
    spec = importlib.util.spec_from_file_location("dashboard_queries", DASHBOARDS / "queries.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return [q for path in sorted(DASHBOARDS.glob("*.json")) for q in module.panel_queries(path)]


def rule_queries() -> list[tuple[str, str]]:
    groups = yaml.safe_load(RULES_FILE.read_text())["groups"]
    return [(r.get("alert") or r.get("record"), r["expr"]) for g in groups for r in g["rules"]]


def metrics_of(expr: str) -> set[str]:
    """Metric names an expression reads (label names inside {...} and by/without lists are not metrics)."""
    bare = re.sub(r"\{[^}]*\}", "", expr)  # matchers
    bare = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", "", bare)
    return set(METRIC.findall(bare))


def test_the_scenario_ran_the_loop_and_the_traffic(run: Scenario) -> None:
    assert [m["decision"] for m in run.months] == ["BOOTSTRAP", "NO_ACTION", "RETRAIN"]
    assert run.months[-1]["production_version"] == "2"
    assert run.requests["rest -> 200"] > 0 and run.requests["grpc -> OK"] > 0
    assert run.requests["rest unknown -> 422"] > 0 and run.requests["rest malformed -> 400"] > 0
    assert run.requests["grpc unknown -> StatusCode.INVALID_ARGUMENT"] > 0


def test_every_dashboard_panel_parses_names_scraped_metrics_and_returns_series(run: Scenario) -> None:
    queries = panel_queries()
    assert {q[0] for q in queries} == {"streamflow-serving", "streamflow-pipelines", "streamflow-quality"}
    scraped = run.metric_names()
    problems = []
    for uid, title, ref, expr in queries:
        where = f"{uid} / {title!r} / {ref}: {expr}"
        unknown = metrics_of(expr) - scraped
        if unknown:
            problems.append(f"{where}: metric(s) nobody emitted: {sorted(unknown)}")
            continue
        try:
            result = run.query(expr.replace("$__rate_interval", RATE_INTERVAL))["result"]
        except Exception as err:  # noqa: BLE001 - every failing query is listed, not only the first
            problems.append(f"{where}: {err}")
            continue
        if not result:
            problems.append(f"{where}: no series")
    assert not problems, "\n".join(problems)


def test_every_rule_parses_names_scraped_metrics_and_is_loaded_healthy(run: Scenario) -> None:
    scraped = run.metric_names()
    rules = rule_queries()
    assert rules
    problems = []
    for name, expr in rules:
        unknown = metrics_of(expr) - scraped
        if unknown:
            problems.append(f"{name}: metric(s) nobody emitted: {sorted(unknown)}")
        try:
            run.query(expr)
        except Exception as err:  # noqa: BLE001
            problems.append(f"{name}: {err}")
    loaded = {r["name"]: r for g in api(run.prometheus, "rules", {})["groups"] for r in g["rules"]}
    problems += [f"{name}: not loaded by Prometheus" for name, _ in rules if name not in loaded]
    problems += [f"{n}: {r['health']} {r.get('lastError', '')}" for n, r in loaded.items() if r["health"] != "ok"]
    assert not problems, "\n".join(problems)


def test_the_metric_name_check_catches_a_name_nobody_emits(run: Scenario) -> None:
    """The check above can fail: a misspelt metric is reported, and an empty series is seen as empty."""
    scraped = run.metric_names()
    assert metrics_of('sum by (server) (rate(streamflow_request_total{server="x"}[5m]))') - scraped == {
        "streamflow_request_total"
    }
    assert metrics_of("histogram_quantile(0.99, sum by (le) (rate(streamflow_request_duration_seconds_bucket[1m])))")
    assert run.query('streamflow_requests_total{server="nobody"}')["result"] == []


def test_alerts_active_after_the_run_are_the_ones_its_data_call_for(run: Scenario) -> None:
    """The rules, evaluated by Prometheus on the run's real figures, agree with the run: the drift alert is pending
    exactly when the drifted month's share reached its threshold, the AUC alert exactly when the realized AUC fell
    more than the margin, the missing-features alert because the traffic asked for unknown users on purpose; nothing
    says a server is down, absent, without a model, cut off from the registry, failing reloads or erroring.
    (The p99 latency alert is left out: whether a loaded 2-core machine stays under it is the machine's business.)"""
    active = {a["labels"]["alertname"] for a in api(run.prometheus, "alerts", {})["alerts"]}  # pending or firing
    drift = run.months[-1]["drift"]
    assert ("StreamflowDriftShareHigh" in active) == (drift["drift_share"] >= drift["thresholds"]["drift_share"])
    assert ("StreamflowRealizedAucDropped" in active) == (drift["auc_drop"] > 0.05), drift["auc_drop"]
    assert "StreamflowMissingFeaturesHigh" in active, active
    quiet = {"StreamflowServerDown", "StreamflowPredictorAbsent", "StreamflowTransformerAbsent",
             "StreamflowNoModelLoaded", "StreamflowRegistryUnreachable", "StreamflowModelReloadFailed",
             "StreamflowErrorRatioHigh", "StreamflowQuarantineRatioHigh", "StreamflowMonthlyWorkflowFailed",
             "StreamflowMonthlyWorkflowLate"}  # fmt: skip
    assert not active & quiet, f"alerts a healthy loop should not raise: {sorted(active & quiet)}"
    assert quiet < {name for name, _ in rule_queries()}  # the names above are the rules' own


def test_streamflow_monitor_runs_prometheus_with_the_rules_and_replays_written_figures(tmp_path: Path) -> None:
    """`streamflow monitor --json` (what `make monitor` runs): one JSON object once ready; the figures steps wrote
    before it started are on its Pushgateway; Prometheus scrapes both servers' addresses and the Pushgateway with
    honor_labels and has the rules file loaded; SIGINT (Ctrl-C) stops both processes."""
    import datetime
    import json
    import os
    import signal
    import subprocess
    import urllib.request

    from model_server.local import free_port, settings_env
    from pipelines.config import Settings
    from pipelines.metrics import record_ingest, record_production
    from tests.monitoring.scenario import STREAMFLOW, wait_for

    settings = Settings(home=tmp_path / "home", monitor_prometheus_port=free_port(),
                        monitor_pushgateway_port=free_port())  # fmt: skip
    record_ingest(settings, datetime.date(2024, 1, 31), {"users": {"input": 5, "loaded": 4, "quarantined": 1}})
    record_production(settings, "3")
    env = {**os.environ, **settings_env(settings)}
    proc = subprocess.Popen([STREAMFLOW, "monitor", "--json"], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)  # fmt: skip
    try:
        ready = json.loads(proc.stdout.readline())
        assert ready["prometheus"] == f"http://127.0.0.1:{settings.monitor_prometheus_port}"
        with urllib.request.urlopen(f"{ready['pushgateway']}/metrics", timeout=10) as resp:
            pushed = resp.read().decode()
        assert 'streamflow_ingest_rows{as_of="2024-01-31",instance="",job="streamflow_ingest",kind="quarantined",' \
               'table="users"} 1' in pushed  # fmt: skip
        assert 'streamflow_production_model_version{instance="",job="streamflow_registry"} 3' in pushed
        wait_for(lambda: len(api(ready["prometheus"], "targets", {})["activeTargets"]) == 3, "three targets")
        targets = api(ready["prometheus"], "targets", {})["activeTargets"]
        servers = {t["labels"].get("server"): t["scrapeUrl"] for t in targets if t["labels"].get("server")}
        assert servers == {
            "predictor": f"http://127.0.0.1:{settings.predictor_http_port}/metrics",
            "transformer": f"http://127.0.0.1:{settings.transformer_http_port}/metrics",
        }
        config = yaml.safe_load(api(ready["prometheus"], "status/config", {})["yaml"])
        gateway = next(c for c in config["scrape_configs"] if c["job_name"] == "pushgateway")
        assert gateway["honor_labels"] is True
        pushgateway_pid = ready["pids"]["pushgateway"]
        cmdline = Path(f"/proc/{pushgateway_pid}/cmdline").read_bytes().split(b"\0")
        assert f"--persistence.file={settings.home / 'monitor' / 'pushgateway.data'}".encode() in cmdline
        wait_for(lambda: bool(api(ready["prometheus"], "rules", {})["groups"]), "Prometheus to load the rules")
        names = {r["name"] for g in api(ready["prometheus"], "rules", {})["groups"] for r in g["rules"]}
        assert names == {name for name, _ in rule_queries()}
        wait_for(lambda: bool(api(ready["prometheus"], "query", {"query": "streamflow_production_model_version"})
                              ["result"]), "Prometheus to scrape the Pushgateway")  # fmt: skip
        pids = list(ready["pids"].values())
        os.killpg(proc.pid, signal.SIGINT)
        assert proc.wait(timeout=60) == 0, proc.stderr.read()
        for pid in pids:
            wait_for(lambda pid=pid: not Path(f"/proc/{pid}").exists(), f"process {pid} to stop", timeout=30)
    finally:  # on a failure too: Ctrl-C first, so the monitor stops the processes it started
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGINT)
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
