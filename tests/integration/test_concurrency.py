"""One run at a time, on both backends: a state-changing command holds the state lock (a Postgres advisory lock, a
flock beside the embedded database) for its whole run; a second one refuses at once naming the holder (exit 75), or
with --wait waits for it and then runs. Read-only commands take no lock."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
from collections import Counter
from datetime import date
from pathlib import Path

import pytest

from pipelines.config import Settings
from pipelines.db import connect
from tests.integration.test_cli import STREAMFLOW, one_json, run

pytestmark = pytest.mark.integration

BACKENDS = ["embedded", pytest.param("postgres", marks=pytest.mark.postgres)]
REFUSED = "another streamflow run holds the state lock: "
HOLDER = "pid {pid} on host {host}, `{command}` since "


@pytest.fixture(scope="module")
def month(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One generated month of 300 users (read-only)."""
    from pipelines.generate import generate

    out = tmp_path_factory.mktemp("concurrency")
    generate(out, users=300, months=1, seed=11)
    return out / "month_000"


@pytest.fixture(params=BACKENDS)
def state(request: pytest.FixtureRequest, tmp_path: Path) -> Settings:
    db_url = request.getfixturevalue("postgres_url") if request.param == "postgres" else None
    return Settings(home=tmp_path / "home", db_url=db_url)


def start(settings: Settings, *args: str) -> subprocess.Popen:
    env = {**os.environ, "STREAMFLOW_HOME": str(settings.home), "STREAMFLOW_DB_URL": settings.db_url or ""}
    return subprocess.Popen(
        [STREAMFLOW, *args], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )  # fmt: skip


def cli(settings: Settings, *args: str) -> subprocess.CompletedProcess:
    return run(settings.home, *args, db_url=settings.db_url or "")


def read_until(proc: subprocess.Popen, text: str) -> list[str]:
    """stderr lines of ``proc`` up to the first one holding ``text`` (all of them if it never comes)."""
    seen = []
    for line in proc.stderr:
        seen.append(line)
        if text in line:
            break
    return seen


def assert_one_message(proc: subprocess.CompletedProcess, code: int) -> dict:
    assert proc.returncode == code, (proc.stdout, proc.stderr)
    assert "Traceback" not in proc.stderr
    assert len([ln for ln in proc.stderr.splitlines() if ln.strip()]) == 1, proc.stderr
    return one_json(proc)


def registered_versions(settings: Settings) -> list:
    from mlflow import MlflowClient

    from pipelines.registry import MODEL_NAME

    uri = settings.tracking_uri
    return MlflowClient(tracking_uri=uri, registry_uri=uri).search_model_versions(f"name = '{MODEL_NAME}'")


@pytest.mark.timeout(240)
def test_a_held_lock_refuses_a_second_run_naming_the_holder_or_makes_it_wait(state: Settings, month: Path) -> None:
    """The test process holds the lock as a run would; `ingest` then refuses (exit 75, one message naming the
    holder, nothing stored), `status` still answers, and `ingest --wait` waits until the lock is released and runs."""
    from pipelines.lock import state_lock

    holder = HOLDER.format(pid=os.getpid(), host=socket.gethostname(), command="monthly")
    release = threading.Event()
    held = threading.Event()

    def hold() -> None:
        with state_lock(state, "monthly"):
            held.set()
            release.wait(120)

    thread = threading.Thread(target=hold)
    thread.start()
    try:
        assert held.wait(60)
        refused = assert_one_message(cli(state, "ingest", str(month), "--json"), 75)
        assert refused["ok"] is False and refused["exit_code"] == 75
        assert refused["error"].startswith(REFUSED + holder), refused["error"]
        assert refused["error"].endswith("; retry later or pass --wait SECONDS")
        human = cli(state, "snapshot", "--as-of", "2024-01-31")
        assert human.returncode == 75 and human.stdout == "" and holder in human.stderr
        assert one_json(cli(state, "status", "--json"))["months"] == []  # read-only: no lock, and nothing stored

        waiting = start(state, "ingest", str(month), "--wait", "120", "--json")
        seen = read_until(waiting, "waiting up to 120 s for the state lock")
        assert holder in seen[-1], "".join(seen)
    finally:
        release.set()
        thread.join(60)
    out, err = waiting.communicate(timeout=120)
    assert waiting.returncode == 0, "".join(seen) + err
    assert one_json(subprocess.CompletedProcess([], 0, out, err))["as_of"] == "2024-01-31"
    db = connect(state)
    try:
        assert db.months() == [date(2024, 1, 31)]
    finally:
        db.close()


@pytest.mark.slow  # two whole monthly runs one after the other, per backend: ~1-2 min each
@pytest.mark.timeout(900)
def test_two_monthly_at_once_one_runs_the_other_refuses_and_wait_reuses_the_version(
    state: Settings, month: Path
) -> None:
    """Two `monthly` started at once on an empty state: exactly one runs, the other refuses at once naming it; a
    third with --wait started while the first runs waits, then runs the month again and reuses the version. The
    registry holds exactly one version per training set."""
    first, second = start(state, "monthly", str(month), "--json"), start(state, "monthly", str(month), "--json")
    finished: dict[int, subprocess.CompletedProcess] = {}

    def collect(proc: subprocess.Popen) -> None:
        out, err = proc.communicate(timeout=600)
        finished[proc.pid] = subprocess.CompletedProcess(proc.args, proc.returncode, out, err)

    threads = [threading.Thread(target=collect, args=(proc,)) for proc in (first, second)]
    for thread in threads:
        thread.start()
    while not finished and any(t.is_alive() for t in threads):  # the refused one exits within seconds
        threading.Event().wait(0.1)
    winner = second if first.pid in finished else first
    # a third one with --wait, while the winner still runs
    waiter = start(state, "monthly", str(month), "--wait", "600", "--json")
    seen = read_until(waiter, "waiting up to 600 s for the state lock")
    for thread in threads:
        thread.join(600)
    won, lost = finished[winner.pid], finished[(first if winner is second else second).pid]
    assert won.returncode == 0, won.stderr[-3000:]
    assert one_json(won)["decision"] == "BOOTSTRAP"
    refused = assert_one_message(lost, 75)
    holder = HOLDER.format(pid=winner.pid, host=socket.gethostname(), command="monthly")
    assert refused["error"].startswith(REFUSED + holder), refused["error"]

    assert holder in seen[-1], "".join(seen)  # the third one waited for the winner…
    out, err = waiter.communicate(timeout=600)
    assert waiter.returncode == 0, err[-3000:]
    again = one_json(subprocess.CompletedProcess([], 0, out, err))
    assert again["retrain"]["reused_version"] == "1" and again["production_version"] == "1"  # …and reused its version

    versions = registered_versions(state)
    per_training_set = Counter(v.tags.get("training_set_sha256") for v in versions)
    assert len(versions) == 1 and set(per_training_set.values()) == {1}, per_training_set


@pytest.mark.timeout(180)
def test_status_during_an_embedded_run_names_the_run_instead_of_duckdbs_lock_error(tmp_path: Path) -> None:
    """DuckDB lets one process open its file at a time: while a run holds it, `status` gets one message naming the
    run (exit 75, as a refused run), not DuckDB's `IOException: Could not set lock on file` traceback."""
    settings = Settings(home=tmp_path / "home", db_url=None)
    holding = subprocess.Popen(  # a run: the state lock, then the database open, until told to stop
        [
            sys.executable,
            "-c",
            "import sys; from pipelines.config import Settings; from pipelines.db import connect; "
            "from pipelines.lock import state_lock\n"
            f"s = Settings(home={str(settings.home)!r}, db_url=None)\n"
            "with state_lock(s, 'monthly'):\n"
            "    db = connect(s); print('held', flush=True); sys.stdin.readline(); db.close()",
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holding.stdout.readline().strip() == "held"
        refused = assert_one_message(cli(settings, "status", "--json"), 75)
        holder = HOLDER.format(pid=holding.pid, host=socket.gethostname(), command="monthly")
        assert refused["error"].startswith("the embedded database "), refused["error"]
        assert holder in refused["error"] and "retry when it ends" in refused["error"], refused["error"]
    finally:
        holding.communicate("\n", timeout=60)
    assert one_json(cli(settings, "status", "--json"))["months"] == []  # the run ended: status reads again
