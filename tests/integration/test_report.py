"""The drift report a person opens, opened for real: headless Chromium loads the saved HTML with every host name
unresolvable, runs its JavaScript, and the test reads the page text it drew. No mocks.

The months are the demo's (pipelines.demo: a first month, a calm one, and one with its usage, price and churn
drivers moved): January trains the production model; February and March are judged against it, the way
``streamflow drift`` judges them. The values on the page are checked against Evidently's JSON report of the same run
and the DriftResult; what the browser fetched is read from its own network log.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from dataclasses import dataclass
from datetime import date
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from pipelines.config import Settings
from pipelines.db import connect
from pipelines.demo import CONCEPT_SHIFT, DRIFT
from pipelines.drift import LABEL, NO_ACTION, RETRAIN, DriftResult, compare, decide, run_drift
from pipelines.features import apply_repo, build_dataset
from pipelines.generate import generate, parse_drift
from pipelines.ingest import ingest_month
from pipelines.online import feature_names, open_store
from pipelines.report import render_html
from pipelines.snapshot import take_snapshot
from pipelines.train import categorical_features, promote, train

pytestmark = pytest.mark.integration

USERS, SEED = 1500, 5  # the sizes test_drift's monthly loop uses: February calm, March drifted
JAN, FEB, MAR = date(2024, 1, 31), date(2024, 2, 29), date(2024, 3, 31)


# ------------------------------------------------------------------------------------------------ the browser


def chromium() -> str:
    """Debian's Chromium; missing: skipped when not root (tests/system-deps.sh names it), a failure as root (the
    script installs it)."""
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found:
        return found
    if os.geteuid() != 0:
        pytest.skip(
            "needs Chromium to open the report (Debian package chromium; tests/system-deps.sh installs it as root)"
        )
    pytest.fail("chromium is missing although we are root: run tests/system-deps.sh")


class _Text(HTMLParser):
    """The text a reader sees (text nodes outside script, style and title) and each table row's cells."""

    HIDDEN = {"script", "style", "title"}

    def __init__(self) -> None:
        super().__init__()
        self.hidden = 0
        self.texts: list[str] = []
        self.rows: list[list[str]] = []
        self._row: list[str] | None = None

    def handle_starttag(self, tag: str, attrs) -> None:
        if tag in self.HIDDEN:
            self.hidden += 1
        elif tag == "tr":
            self._row = []
        elif tag in ("td", "th") and self._row is not None:
            self._row.append("")

    def handle_endtag(self, tag: str) -> None:
        if tag in self.HIDDEN:
            self.hidden -= 1
        elif tag == "tr" and self._row is not None:
            self.rows.append([cell.strip() for cell in self._row])
            self._row = None

    def handle_data(self, data: str) -> None:
        if self.hidden or not data.strip():
            return
        self.texts.append(data.strip())
        if self._row:
            self._row[-1] += data


@dataclass
class Page:
    texts: list[str]  # visible text nodes, in document order
    rows: list[list[str]]  # every table row's cell texts
    requests: list[str]  # what the page asked the network for (Chromium's own background calls left out)

    def at(self, text: str) -> int:
        assert text in self.texts, f"{text!r} is not on the page"
        return self.texts.index(text)

    def after(self, heading: str, count: int) -> list[str]:
        start = self.at(heading) + 1
        return self.texts[start : start + count]


def open_page(path: Path, work: Path) -> Page:
    """The DOM after the page's JavaScript ran, with no host name resolvable; and the page's network requests from
    Chromium's net log (those whose isolation key is the file's own origin)."""
    work.mkdir(parents=True, exist_ok=True)
    netlog = work / "netlog.json"
    cmd = [
        chromium(), "--headless", "--disable-gpu", "--disable-background-networking", "--no-first-run",
        f"--user-data-dir={work / 'profile'}", "--host-resolver-rules=MAP * ~NOTFOUND", f"--log-net-log={netlog}",
        "--virtual-time-budget=5000", "--dump-dom", path.as_uri(),
    ]  # fmt: skip
    if os.geteuid() == 0:
        cmd.insert(1, "--no-sandbox")  # Chromium refuses to run as root with its sandbox
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    parser = _Text()
    parser.feed(done.stdout)
    log = json.loads(netlog.read_text())
    starts = {code for name, code in log["constants"]["logEventTypes"].items() if name == "URL_REQUEST_START_JOB"}
    requests = [
        event["params"]["url"]
        for event in log["events"]
        if event["type"] in starts and event["params"].get("network_isolation_key", "").startswith("file://")
    ]
    return Page(parser.texts, parser.rows, requests)


def test_the_network_check_sees_a_page_that_fetches(tmp_path: Path) -> None:
    """The control for the check below: a page with a CDN script is caught asking for it."""
    page = tmp_path / "cdn.html"
    page.write_text('<html><body><p>hello</p><script src="https://cdn.example.org/lib.js"></script></body></html>')
    opened = open_page(page, tmp_path / "browser")
    assert opened.requests == ["https://cdn.example.org/lib.js"] and "hello" in opened.texts


# ------------------------------------------------------------------------------------------------ the months


@dataclass
class Loop:
    settings: Settings
    db: object
    store: object
    features: list[str]


@pytest.fixture(scope="module")
def loop(tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("report")
    months = generate(root / "data", users=USERS, months=3, seed=SEED, drift=[parse_drift(d) for d in DRIFT],
                      drift_start=2, concept_shift=CONCEPT_SHIFT).months  # fmt: skip
    settings = Settings(home=root / "home", db_url=None)
    db = connect(settings)
    for month in months:
        ingest_month(db, settings, month.folder, month.as_of)
        take_snapshot(db, month.as_of)
    apply_repo(settings)
    store = open_store(settings)
    train(settings, db, JAN, store=store)
    promote(settings, db, store=store)
    yield Loop(settings, db, store, feature_names(store.get_feature_service(settings.feature_service)))
    db.close()


# ------------------------------------------------------------------------------------------------ the report


@pytest.mark.parametrize(("month", "decision"), [(FEB, NO_ACTION), (MAR, RETRAIN)], ids=["calm", "drifted"])
def test_the_report_opens_with_the_decision_share_and_feature_table_then_evidently(
    loop: Loop, tmp_path: Path, month: date, decision: str
) -> None:
    result = run_drift(loop.settings, loop.db, month, store=loop.store)
    assert result.decision == decision
    source = result.report_html.read_text(encoding="utf-8")
    assert "<script src" not in source and "<link" not in source  # script and font are inlined
    page = open_page(result.report_html, tmp_path / "browser")
    assert page.requests == []  # it opened without a network

    # 1. the decision and every reason, word for word
    assert page.after("Decision", 1) == [decision]
    heading = "Reasons to retrain" if decision == RETRAIN else "Checked, nothing calls for a retrain"
    assert page.after(heading, len(result.reasons)) == result.reasons
    # 2. the drifted features: count and share
    comp = result.comparison
    shown = page.after("Data drift of the model features", 6)
    assert shown[0::2] == [str(len(loop.features)), str(len(comp.drifted_features)), f"{result.drift_share:.2f}"]
    # 3. every feature's row: Evidently's method, its score as displayed, the threshold and the test's verdict, as in
    # the JSON report of the same run
    report = json.loads(result.report_json.read_text())
    statuses = {test["metric_config"]["metric_id"]: test["status"] for test in report["tests"]}
    methods = {c.column: c.method for c in comp.features}
    expected = {
        metric["config"]["column"]: [
            metric["config"]["column"],
            methods[metric["config"]["column"]],
            f"{metric['value']:.4f}",
            f"{metric['config']['threshold']:g}",
            "Detected" if statuses[metric["id"]] == "FAIL" else "Not detected",
            "",
        ]
        for metric in report["metrics"]
        if metric["config"]["column"] in methods
    }
    rows = {row[1]: row[1:] for row in page.rows if len(row) == 7 and row[1] in methods}
    assert rows == {feature: expected[feature] for feature in loop.features}
    assert {f for f, row in rows.items() if row[4] == "Detected"} == set(comp.drifted_features)
    # 4. label drift, prediction drift, validation vs realized AUC
    assert page.after("Label drift", 1) == [f"{comp.target.score:.4f}"]
    assert page.after("Prediction drift", 1) == [f"{comp.prediction.score:.4f}"]
    assert page.after("Model quality", 3)[0::2] == [f"{result.validation_auc:.4f}", f"{result.realized_auc:.4f}"]
    # 5. then Evidently's own sections, one per compared column; in that order on the page
    order = ["Decision", heading, "Data drift of the model features", "Label drift", "Prediction drift",
             "Model quality", "Per-column detail (Evidently)"]  # fmt: skip
    positions = [page.at(text) for text in order]
    first_row = page.texts.index(page.rows[1][1]) if len(page.rows) > 1 else -1
    assert positions == sorted(positions) and positions[2] < first_row < positions[3]
    for metric in report["metrics"]:
        assert page.at(f"Drift in column '{metric['config']['column']}'") > positions[-1]


def test_a_month_evidently_could_not_compare_still_opens_with_the_decision(loop: Loop, tmp_path: Path) -> None:
    """Every feature NULL in the current month: nothing for Evidently to draw (no snapshot), yet the page gives the
    decision and each feature's row, marked all NULL."""
    names = (JAN.isoformat(), FEB.isoformat())
    frames = [pd.read_parquet(build_dataset(loop.settings, loop.db, d, store=loop.store).path) for d in (JAN, FEB)]
    reference = frames[0][["user_id", *loop.features]]
    current = frames[1][["user_id"]].assign(**{f: np.nan for f in loop.features})
    categorical = categorical_features(frames[0], loop.features)
    comparison = compare(reference, current, loop.features, categorical, threshold=0.1, names=names)
    assert comparison.snapshot is None
    label_rate = {name: float(frame[LABEL].mean()) for name, frame in zip(names, frames, strict=True)}
    decision, reasons = decide(comparison, None, None, label_rate, loop.settings, names)
    result = DriftResult(
        reference_as_of=JAN, current_as_of=FEB, model_version="1",
        rows={name: len(frame) for name, frame in zip(names, frames, strict=True)}, comparison=comparison,
        label_rate=label_rate, realized_auc=None, validation_auc=None, decision=decision, reasons=reasons,
        thresholds={"drift_share": 0.3, "column": 0.1, "quality_drop": 0.05},
        report_html=tmp_path / "report.html", report_json=tmp_path / "report.json",
    )  # fmt: skip
    result.report_html.write_text(render_html(result), encoding="utf-8")
    page = open_page(result.report_html, tmp_path / "browser")
    assert page.requests == []
    assert decision == RETRAIN and page.after("Decision", 1) == [RETRAIN]
    assert page.after("Reasons to retrain", len(reasons)) == reasons
    note = f"NULL in every row of {FEB.isoformat()}"
    rows = {row[1]: row[1:] for row in page.rows if len(row) == 7 and row[1] in loop.features}
    assert rows == {f: [f, "all NULL", "1.0000", "0.1", "Detected", note] for f in loop.features}
    assert page.after("Label drift", 1) == ["n/a"]  # nothing compared is said so, not left blank
    assert "No column could be compared: NULL in every row." in page.texts
