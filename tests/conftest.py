"""Shared fixtures: isolated settings, tiny generated months, and a real PostgreSQL 15 server.

The Postgres server is the machine's own PostgreSQL binaries (initdb / pg_ctl), started once per test session on
a free loopback port and stopped at the end. Each test gets a fresh database in it. Postgres refuses to run as
root, so when the tests run as root the server runs as the ``postgres`` system user.
"""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from model_server.local import free_port
from pipelines.config import Settings


def wait_http(url: str, proc: subprocess.Popen, timeout: float = 120, what: str = "server") -> None:
    """Wait until ``url`` answers 200; fail with the process's stderr if it exits first."""
    from model_server.local import wait_answering

    problem = wait_answering(url, proc, timeout)
    if problem is None:
        return
    if proc.poll() is not None:
        err = proc.stderr.read()[-3000:] if proc.stderr else ""
        pytest.fail(f"{what} {problem} before answering {url}: {err}")
    stop_group(proc)
    pytest.fail(f"{what} {problem}")


def stop_group(proc: subprocess.Popen, timeout: float = 30) -> None:
    """Stop a process started with ``start_new_session=True`` and everything it spawned (SIGTERM, then SIGKILL)."""
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=timeout)
        except ProcessLookupError:
            pass


def start_mlflow_server(backend: str, artifacts: Path) -> tuple[str, subprocess.Popen]:
    """A real ``mlflow server`` on a free loopback port, in its own process group (it spawns job runners)."""
    port = free_port()
    cmd = [
        str(Path(sys.executable).parent / "mlflow"), "server", "--host", "127.0.0.1", "--port", str(port),
        "--backend-store-uri", backend, "--artifacts-destination", str(artifacts), "--workers", "1",
    ]  # fmt: skip
    # as the chart runs it: without MLflow 3's job runner (a runner and seven huey consumers, ~250 MB and an import
    # of mlflow each: CPU the suite's two cores do not have to spare at every server start)
    env = os.environ | {"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    proc = subprocess.Popen(
        cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, start_new_session=True, env=env
    )
    url = f"http://127.0.0.1:{port}"
    wait_http(f"{url}/health", proc, what="mlflow server")
    return url, proc


@pytest.fixture
def pushgateway(tmp_path: Path) -> Iterator[str]:
    """A real Pushgateway (Debian's binary) on a free loopback port; its URL. Stopped after the test."""
    binary = shutil.which("prometheus-pushgateway")
    if binary is None:
        pytest.skip("needs prometheus-pushgateway (tests/system-deps.sh installs it as root)")
    port = free_port()
    proc = subprocess.Popen(
        [binary, f"--web.listen-address=127.0.0.1:{port}", f"--persistence.file={tmp_path / 'pushgateway'}"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, start_new_session=True,
    )  # fmt: skip
    try:
        wait_http(f"http://127.0.0.1:{port}/-/ready", proc, what="pushgateway")
        yield f"http://127.0.0.1:{port}"
    finally:
        stop_group(proc)


def _pg_bindir() -> Path | None:
    if env := os.environ.get("STREAMFLOW_PG_BINDIR"):
        return Path(env)
    if found := shutil.which("pg_ctl"):
        return Path(found).resolve().parent
    candidates = sorted(Path("/usr/lib/postgresql").glob("*/bin/pg_ctl"))
    return candidates[-1].parent if candidates else None


class PostgresServer:
    """A PostgreSQL server in a temporary folder, on 127.0.0.1:<free port>, password auth."""

    user = "streamflow"
    password = "streamflow-test"

    def __init__(self, bindir: Path) -> None:
        self.bindir = bindir
        self.root = Path(tempfile.mkdtemp(prefix="streamflow-pg-"))
        self.datadir = self.root / "data"
        self.port = free_port()
        self._run_as: list[str] = []
        if os.geteuid() == 0:
            pw = pwd.getpwnam("postgres")
            os.chown(self.root, pw.pw_uid, pw.pw_gid)
            self._run_as = ["runuser", "-u", "postgres", "--"]

    def _run(self, *args: str) -> None:
        subprocess.run([*self._run_as, *args], check=True, capture_output=True, text=True, timeout=120)

    def start(self) -> None:
        pwfile = self.root / "pw"
        pwfile.write_text(self.password)
        if self._run_as:
            pw = pwd.getpwnam("postgres")
            os.chown(pwfile, pw.pw_uid, pw.pw_gid)
        self._run(
            str(self.bindir / "initdb"),
            "-D",
            str(self.datadir),
            "-U",
            self.user,
            "--pwfile",
            str(pwfile),
            "--auth",
            "scram-sha-256",
            "-E",
            "UTF8",
            "--locale",
            "C",
        )
        self._run(
            str(self.bindir / "pg_ctl"),
            "-D",
            str(self.datadir),
            "-w",
            "-l",
            str(self.root / "log"),
            "-o",
            f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 -c fsync=off",
            "start",
        )

    def stop(self) -> None:
        try:
            self._run(str(self.bindir / "pg_ctl"), "-D", str(self.datadir), "-m", "fast", "-w", "stop")
        finally:
            shutil.rmtree(self.root, ignore_errors=True)

    def url(self, dbname: str = "postgres") -> str:
        return f"postgresql://{self.user}:{self.password}@127.0.0.1:{self.port}/{dbname}"


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    bindir = _pg_bindir()
    if bindir is None:
        pytest.fail("PostgreSQL server binaries not found (.ci/run installs them; or set STREAMFLOW_PG_BINDIR)")
    server = PostgresServer(bindir)
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def postgres_url(postgres_server: PostgresServer) -> Iterator[str]:
    """A fresh, empty database on the session's real Postgres server."""
    import psycopg2

    name = f"t_{uuid.uuid4().hex[:12]}"
    admin = psycopg2.connect(postgres_server.url())
    admin.autocommit = True
    with admin.cursor() as cur:
        cur.execute(f"CREATE DATABASE {name}")
    try:
        yield postgres_server.url(name)
    finally:
        with admin.cursor() as cur:
            cur.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        admin.close()


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """``postgres`` marks every test that reaches the Postgres server, so ``-m "not postgres"`` runs none of them:
    those whose fixtures include ``postgres_server`` (directly or through ``postgres_url``, ``settings[postgres]``
    …), and those parametrized with a "postgres" backend that ask for ``postgres_url`` at run time."""
    for item in items:
        if item.get_closest_marker("postgres"):
            continue
        callspec = getattr(item, "callspec", None)
        params = callspec.params.values() if callspec is not None else ()
        if "postgres_server" in getattr(item, "fixturenames", ()) or "postgres" in params:
            item.add_marker(pytest.mark.postgres)


@pytest.fixture(params=["embedded", pytest.param("postgres", marks=pytest.mark.postgres)])
def settings(request: pytest.FixtureRequest, tmp_path: Path) -> Settings:
    """Settings for an isolated loop, on both backends."""
    if request.param == "postgres":
        url = request.getfixturevalue("postgres_url")
        return Settings(home=tmp_path / "home", db_url=url)
    return Settings(home=tmp_path / "home", db_url=None)


@pytest.fixture(scope="session")
def months_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two generated months of 300 users (read-only: copy before changing a file)."""
    from pipelines.generate import generate

    out = tmp_path_factory.mktemp("months")
    generate(out, users=300, months=2, seed=7)
    return out


@pytest.fixture
def applied(settings: Settings, months_dir: Path):
    """Two months ingested and snapshotted and the Feast repo applied, on both backends; yields (settings, db)."""
    from pipelines.db import connect
    from pipelines.features import apply_repo
    from pipelines.ingest import ingest_month
    from pipelines.months import as_of_for_index
    from pipelines.snapshot import take_snapshot

    db = connect(settings)
    for index in (0, 1):
        as_of = as_of_for_index(index)
        ingest_month(db, settings, months_dir / f"month_{index:03d}", as_of)
        take_snapshot(db, as_of)
    apply_repo(settings)
    yield settings, db
    db.close()
