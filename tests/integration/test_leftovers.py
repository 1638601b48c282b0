"""Nothing left behind, nothing leaking out:

* a STREAMFLOW_HOME whose path holds an apostrophe works (paths and values are bound, never pasted into SQL);
* a snapshot killed half-way leaves files in ``snapshots/.tmp``: the next run removes them, a success leaves none;
* a materialize that reached only some feature views is visible: ``streamflow status`` shows the as_of each view
  holds and says they disagree;
* a successful command prints StreamFlow's lines only; what Feast, MLflow and SQLAlchemy print goes to
  ``STREAMFLOW_HOME/logs/streamflow.log`` (and to stderr with ``--verbose``);
* ``-m "not postgres"`` runs no test that reaches Postgres."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import textwrap
from datetime import timedelta
from pathlib import Path

import pytest

from pipelines.config import Settings

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
STREAMFLOW = str(Path(sys.executable).parent / "streamflow")


def _cli(home: Path, *args: str, db_url: str = "") -> subprocess.CompletedProcess:
    env = {**os.environ, "STREAMFLOW_HOME": str(home), "STREAMFLOW_DB_URL": db_url}
    return subprocess.run([STREAMFLOW, *args], env=env, capture_output=True, text=True, timeout=600, cwd=home.parent)


# ------------------------------------------------------------------------------------------------ paths in SQL


def test_ingest_snapshot_and_status_under_a_home_with_an_apostrophe(tmp_path: Path, months_dir: Path) -> None:
    from pipelines.db import connect
    from pipelines.ingest import ingest_month
    from pipelines.months import as_of_for_index
    from pipelines.snapshot import take_snapshot
    from pipelines.status import collect_status
    from pipelines.tables import SNAPSHOTS

    settings = Settings(home=tmp_path / "o'brien's home", db_url=None)
    as_of = as_of_for_index(0)
    db = connect(settings)
    try:
        result = ingest_month(db, settings, months_dir / "month_000", as_of)
        assert result.tables["users"]["loaded"] == 300
        rows = take_snapshot(db, as_of).rows
        assert rows == {snap.name: 300 for snap in SNAPSHOTS}
        assert len(db.read_snapshot(SNAPSHOTS[0], as_of)) == 300
        state = collect_status(db)
    finally:
        db.close()
    assert state["snapshots"][SNAPSHOTS[1].name] == {as_of.isoformat(): 300}


# ------------------------------------------------------------------------------------------------ snapshot tmp files

KILLED_SNAPSHOT = """
import os, signal, sys
from pathlib import Path
from pipelines.config import Settings
from pipelines.db import connect
from pipelines.months import as_of_for_index
from pipelines.snapshot import take_snapshot

def die(src, dst):  # every table is written to .tmp; the process dies by SIGKILL before the first rename
    os.kill(os.getpid(), signal.SIGKILL)

os.replace = die
take_snapshot(connect(Settings(home=Path(sys.argv[1]))), as_of_for_index(0))
"""


def test_a_killed_snapshot_leaves_nothing_after_the_next_success(tmp_path: Path, months_dir: Path) -> None:
    from pipelines.db import connect
    from pipelines.ingest import ingest_month
    from pipelines.months import as_of_for_index
    from pipelines.snapshot import take_snapshot

    settings = Settings(home=tmp_path / "home", db_url=None)
    as_of = as_of_for_index(0)
    db = connect(settings)
    ingest_month(db, settings, months_dir / "month_000", as_of)
    db.close()

    proc = subprocess.run(
        [sys.executable, "-c", KILLED_SNAPSHOT, str(settings.home)], cwd=ROOT, capture_output=True, text=True,
        timeout=300,
    )  # fmt: skip
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    tmp = settings.snapshot_dir / ".tmp"
    left = sorted(p.name for p in tmp.iterdir())
    assert len(left) == 4, left  # the dead run's files are there

    db = connect(settings)
    try:
        take_snapshot(db, as_of)
    finally:
        db.close()
    assert not tmp.exists(), sorted(p.name for p in tmp.iterdir())
    assert all((settings.snapshot_dir / name).is_dir() for name in ("usage_agg_30d_snapshots",))


# ------------------------------------------------------------------------------------------------ online store


def test_status_shows_feature_views_that_disagree(applied) -> None:
    """A materialize that reached one view only (what a kill between views leaves): status names each view's
    as_of and says they disagree; a full materialize makes them agree again."""
    from pipelines.db import connect
    from pipelines.features import as_of_timestamp, materialize
    from pipelines.months import as_of_for_index
    from pipelines.online import open_store
    from pipelines.status import collect_status

    settings, db = applied
    jan, feb = as_of_for_index(0), as_of_for_index(1)
    materialize(settings, db, jan)
    start = as_of_timestamp(feb)
    open_store(settings).materialize(start, start + timedelta(days=1), feature_views=["usage_agg_30d_fv"])

    online = collect_status(db, settings)["online"]
    assert online["views"] == {
        "subs_profile_fv": jan.isoformat(),
        "usage_agg_30d_fv": feb.isoformat(),
        "payments_agg_90d_fv": jan.isoformat(),
        "support_agg_90d_fv": jan.isoformat(),
    }
    assert online["consistent"] is False and online["as_of"] is None

    db.close()  # the embedded database admits one process at a time
    shown = _cli(settings.home, "status", db_url=settings.db_url or "")
    assert shown.returncode == 0, shown.stderr
    said = " ".join(shown.stdout.split())
    assert "disagree" in said and f"--as-of {feb.isoformat()}" in said, shown.stdout
    as_json = json.loads(_cli(settings.home, "status", "--json", db_url=settings.db_url or "").stdout)
    assert as_json["online"]["consistent"] is False

    db = connect(settings)
    try:
        materialize(settings, db, feb)
        online = collect_status(db, settings)["online"]
    finally:
        db.close()
    assert online["consistent"] is True and online["as_of"] == feb.isoformat()


# ------------------------------------------------------------------------------------------------ quiet output

NOISE = {
    "Feast's materialize lines": "Materializing",
    "MLflow's registration": "Successfully registered model",
    "MLflow's new version": "Created version",
    "SQLAlchemy's deprecation warning": "SADeprecationWarning",
}


def test_a_successful_run_prints_streamflow_lines_only(tmp_path: Path, months_dir: Path) -> None:
    home = tmp_path / "home"
    home.mkdir()
    steps = [
        ("ingest", str(months_dir / "month_000")),
        ("snapshot", "--as-of", "2024-01-31"),
        ("features", "apply"),
        ("features", "materialize", "--as-of", "2024-01-31"),
        ("train", "--as-of", "2024-01-31"),
    ]
    said = ""
    for step in steps:
        proc = _cli(home, *step)
        assert proc.returncode == 0, (step, proc.stderr)
        said += proc.stdout + proc.stderr
    leaked = {what: text for what, text in NOISE.items() if text in said}
    assert not leaked, f"on the terminal: {leaked}\n{said}"
    assert re.search(r"trained \w+ on 2024-01-31", said) and "materialized as_of 2024-01-31" in said
    log = (home / "logs" / "streamflow.log").read_text()
    missing = {what: text for what, text in NOISE.items() if text not in log}
    assert not missing, f"not in the log file: {missing}"

    verbose = _cli(home, "--verbose", "features", "materialize", "--as-of", "2024-01-31")
    assert verbose.returncode == 0 and "Materializing" in verbose.stderr, verbose.stderr
    assert "Materializing" not in verbose.stdout


# ------------------------------------------------------------------------------------------------ markers

DUMP_PLUGIN = """
import json, os

def pytest_collection_finish(session):
    items = []
    for item in session.items:
        callspec = getattr(item, "callspec", None)
        items.append({
            "id": item.nodeid,
            "fixtures": list(getattr(item, "fixturenames", [])),
            "params": [repr(v) for v in (callspec.params.values() if callspec else [])],
        })
    with open(os.environ["STREAMFLOW_TEST_DUMP"], "w") as f:
        json.dump(items, f)
"""


def test_not_postgres_collects_no_test_that_reaches_postgres(tmp_path: Path) -> None:
    (tmp_path / "dump_items.py").write_text(textwrap.dedent(DUMP_PLUGIN))
    dump = tmp_path / "items.json"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), str(ROOT)]), "STREAMFLOW_TEST_DUMP": str(dump)}
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-p", "dump_items", "--collect-only", "-q",
         "-m", "not postgres", "tests/integration", "tests/unit"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert dump.is_file(), proc.stdout[-3000:] + proc.stderr[-3000:]
    items = json.loads(dump.read_text())
    assert len(items) > 50, proc.stdout[-2000:]
    reaching = [
        item["id"]
        for item in items
        if "postgres" in item["id"].partition("[")[2].rstrip("]").split("-")
        or "postgres_server" in item["fixtures"]
        or "postgres_url" in item["fixtures"]
        or "'postgres'" in item["params"]
    ]
    assert not reaching, f'-m "not postgres" still collects: {reaching}'
    assert "::test_ingest_snapshot_and_status_under_a_home_with_an_apostrophe" in proc.stdout
