"""Every pipeline step publishes its figures (issue 18): the `streamflow` CLI run as a real process against a real
Pushgateway — step duration, outcome and last success, rows read / loaded / quarantined per table and month — and
the same figures as node-exporter text files, valid for promtool. A failed run keeps when the step last worked; a
refused month still shows its quarantine; an unreachable Pushgateway never fails the step."""

from __future__ import annotations

import shutil
import subprocess
import urllib.request
from pathlib import Path

import pandas as pd
import pytest
from prometheus_client.parser import text_string_to_metric_families

from model_server.local import free_port
from tests.integration.test_cli import one_json, run

pytestmark = pytest.mark.integration

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def samples(text: str) -> Samples:
    """(name, sorted labels) → value of a Prometheus text page (the Pushgateway's ``instance=""`` dropped)."""
    return {
        (s.name, tuple(sorted((k, v) for k, v in s.labels.items() if not (k == "instance" and v == "")))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.name.startswith("streamflow_")
    }


def scrape(url: str) -> Samples:
    with urllib.request.urlopen(f"{url}/metrics", timeout=10) as resp:
        return samples(resp.read().decode())


def step_figure(found: Samples, name: str, step: str) -> float:
    return found[(f"streamflow_step_{name}", (("job", "streamflow_pipeline"), ("step", step)))]


def rows(found: Samples, as_of: str, table: str, kind: str) -> float:
    key = (("as_of", as_of), ("job", "streamflow_ingest"), ("kind", kind), ("table", table))
    return found[("streamflow_ingest_rows", key)]


def check_text(path: Path) -> Samples:
    text = path.read_text()
    if shutil.which("promtool"):
        checked = subprocess.run(["promtool", "check", "metrics"], input=text, capture_output=True, text=True)
        assert checked.returncode == 0, checked.stdout + checked.stderr
    return samples(text)


def test_steps_publish_rows_duration_outcome_and_last_success(pushgateway: str, tmp_path: Path) -> None:
    home, data = tmp_path / "home", tmp_path / "data"
    env = {"STREAMFLOW_PUSHGATEWAY_URL": pushgateway}
    run(home, "data", "generate", "--out", str(data), "--users", "300", "--json", check=True)
    ingested = one_json(run(home, "ingest", str(data / "month_000"), "--json", env=env, check=True))
    run(home, "snapshot", "--as-of", "2024-01-31", "--json", env=env, check=True)

    found = scrape(pushgateway)
    for table, counts in ingested["tables"].items():
        for kind in ("input", "loaded", "quarantined"):
            assert rows(found, "2024-01-31", table, kind) == counts[kind], (table, kind)
    assert rows(found, "2024-01-31", "users", "input") == 300
    for step in ("ingest", "snapshot"):
        assert step_figure(found, "success", step) == 1
        assert step_figure(found, "duration_seconds", step) > 0
        ended = step_figure(found, "last_run_timestamp_seconds", step)
        assert step_figure(found, "last_success_timestamp_seconds", step) == ended
    first_success = step_figure(found, "last_success_timestamp_seconds", "ingest")
    # read-only commands are not steps
    run(home, "status", "--json", env=env, check=True)
    assert not any(k[1] == (("job", "streamflow_pipeline"), ("step", "status")) for k in scrape(pushgateway))

    # a failed run: outcome 0, a newer last run, and the last success kept — on the Pushgateway and in the file
    failed = run(home, "ingest", str(data / "month_009"), "--json", env=env)
    assert failed.returncode == 2
    found = scrape(pushgateway)
    assert step_figure(found, "success", "ingest") == 0
    assert step_figure(found, "last_run_timestamp_seconds", "ingest") > first_success
    assert step_figure(found, "last_success_timestamp_seconds", "ingest") == first_success
    text = check_text(home / "metrics" / "streamflow_pipeline_ingest.prom")
    assert text[("streamflow_step_success", (("step", "ingest"),))] == 0
    assert text[("streamflow_step_last_success_timestamp_seconds", (("step", "ingest"),))] == first_success
    month = check_text(home / "metrics" / "streamflow_ingest_2024-01-31.prom")
    assert month[("streamflow_ingest_rows", (("as_of", "2024-01-31"), ("kind", "loaded"), ("table", "users")))] == 300

    # a month refused for its quarantine still shows it (loaded 0): the alert on the quarantine ratio sees it
    feb = tmp_path / "month_001"
    shutil.copytree(data / "month_001", feb)
    payments = pd.read_csv(feb / "payments_agg_90d.csv", dtype=str, keep_default_na=False)
    payments.loc[:9, "failed_payments_90d"] = "x"
    payments.to_csv(feb / "payments_agg_90d.csv", index=False)
    refused = run(home, "ingest", str(feb), "--json", env=env)
    assert refused.returncode == 2 and "nothing of as_of 2024-02-29 was loaded" in refused.stdout
    found = scrape(pushgateway)
    assert rows(found, "2024-02-29", "payments_agg_90d", "quarantined") == 10
    assert rows(found, "2024-02-29", "payments_agg_90d", "loaded") == 0
    assert rows(found, "2024-02-29", "payments_agg_90d", "input") == len(payments)
    assert rows(found, "2024-01-31", "users", "loaded") == 300  # each month keeps its own group


def test_an_unreachable_pushgateway_never_fails_the_step(tmp_path: Path) -> None:
    home, data = tmp_path / "home", tmp_path / "data"
    down = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    run(home, "data", "generate", "--out", str(data), "--users", "200", "--months", "1", "--json", check=True)
    ingested = run(home, "ingest", str(data / "month_000"), "--json", env={"STREAMFLOW_PUSHGATEWAY_URL": down})
    assert ingested.returncode == 0, ingested.stdout + ingested.stderr
    assert one_json(ingested)["loaded"] > 0
    text = check_text(home / "metrics" / "streamflow_pipeline_ingest.prom")
    assert text[("streamflow_step_success", (("step", "ingest"),))] == 1
    assert f"streamflow_pipeline not pushed to {down}" in ingested.stderr  # said on stderr
