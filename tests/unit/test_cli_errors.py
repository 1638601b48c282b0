"""Every failure of a `streamflow` command is one message: with --json exactly one object `{"ok": false, "error": …}`
on stdout, without it one line on stderr, the documented exit code, no traceback unless `streamflow --debug`, and
never a password (nor a piece of one a parser misread) of a STREAMFLOW_* URL.

In-process (Typer's CliRunner, a stage function replaced by one that raises) for exceptions of any kind; as a real
process for a read-only STREAMFLOW_HOME and a full disk (a read-only bind mount and a tiny tmpfs in a user namespace:
as root, chmod would not stop anything), bad settings, and a CSV with a 50 MB field."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from pipelines.cli import app

STREAMFLOW = str(Path(sys.executable).parent / "streamflow")


def lines(text: str) -> list[str]:
    return [ln for ln in text.splitlines() if ln.strip()]


def assert_one_message(stdout: str, stderr: str, code: int, returncode: int, as_json: bool) -> str:
    """The failure's message, after checking it was said once, with no traceback."""
    assert returncode == code, (stdout, stderr)
    assert "Traceback" not in stderr and "Traceback" not in stdout
    assert len(lines(stderr)) == 1 and lines(stderr)[0].startswith("error: "), stderr
    if not as_json:
        assert stdout == ""
        return lines(stderr)[0].removeprefix("error: ")
    assert len(lines(stdout)) == 1, stdout
    err = json.loads(stdout)
    assert err == {"ok": False, "error": err["error"], "exit_code": code}
    assert lines(stderr)[0] == f"error: {err['error']}"
    return err["error"]


def invoke(tmp_path: Path, *args: str):
    env = {"STREAMFLOW_HOME": str(tmp_path / "home"), "STREAMFLOW_DB_URL": ""}
    return CliRunner().invoke(app, list(args), env=env)


def boom(exc: BaseException):
    def raising(*_, **__):
        raise exc

    return raising


def duckdb_disk_full() -> Exception:
    import duckdb

    return duckdb.IOException('IO Error: Could not write file "streamflow.duckdb.wal": No space left on device')


@pytest.mark.parametrize(
    ("command", "target", "exc", "code", "message"),
    [
        (["status"], "pipelines.status.collect_status", lambda: RuntimeError("boom\n  on two lines"), 1,
         "RuntimeError: boom on two lines (unexpected error; "),
        (["snapshot", "--as-of", "2024-01-31"], "pipelines.snapshot.take_snapshot", duckdb_disk_full, 1,
         'IOException: IO Error: Could not write file "streamflow.duckdb.wal": No space left on device'),
        (["snapshot", "--as-of", "2024-01-31"], "pipelines.snapshot.take_snapshot", KeyboardInterrupt, 130,
         "interrupted"),
    ],
    ids=["runtime-error", "duckdb-disk-full", "interrupted"],
)  # fmt: skip
@pytest.mark.parametrize("as_json", [True, False], ids=["json", "human"])
def test_an_exception_of_any_kind_is_one_message(
    command, target, exc, code, message, as_json, tmp_path, monkeypatch
) -> None:
    monkeypatch.setattr(target, boom(exc()))
    result = invoke(tmp_path, *command, *(["--json"] if as_json else []))
    assert message in assert_one_message(result.stdout, result.stderr, code, result.exit_code, as_json)
    assert result.exception is None or isinstance(result.exception, SystemExit)


@pytest.mark.parametrize(
    "url",
    [
        "postgresql://u@127.0.0.1:{port}/x?password=Sup3rSecret",
        "mysql://u:Sup3rSecret@127.0.0.1:{port}/db",
        "Postgresql://u:Sup3rSecret@127.0.0.1:{port}/db",
        " postgresql://u:Sup3rSecret@127.0.0.1:{port}/db",
        "postgresql://u:Sup3r@Secret@127.0.0.1:{port}/db",
        "postgresql://u:Sup3r/Secret@127.0.0.1:{port}/db",
    ],
    ids=["query-password", "mysql-scheme", "capital-scheme", "leading-space", "unencoded-at", "unencoded-slash"],
)  # fmt: skip
def test_no_failure_message_shows_a_password_or_a_piece_of_it(url: str, tmp_path: Path) -> None:
    from model_server.local import free_port

    env = {"STREAMFLOW_HOME": str(tmp_path / "home"), "STREAMFLOW_DB_URL": url.format(port=free_port())}
    for command in (["status", "--json"], ["ingest", str(tmp_path), "--json"]):
        result = CliRunner().invoke(app, command, env=env)
        said = result.stdout + result.stderr
        assert result.exit_code in (1, 2) and json.loads(result.stdout)["ok"] is False, said
        assert "Sup3r" not in said and "Secret" not in said, said


def test_debug_prints_the_traceback_too(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("pipelines.status.collect_status", boom(RuntimeError("boom")))
    result = invoke(tmp_path, "--debug", "status", "--json")
    assert result.exit_code == 1
    assert "Traceback (most recent call last)" in result.stderr and "RuntimeError: boom" in result.stderr
    assert json.loads(result.stdout)["error"].startswith("RuntimeError: boom")  # still the one object


def test_a_failed_run_releases_the_state_lock(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("pipelines.snapshot.take_snapshot", boom(RuntimeError("boom")))
    assert invoke(tmp_path, "snapshot", "--as-of", "2024-01-31").exit_code == 1
    second = invoke(tmp_path, "snapshot", "--as-of", "2024-01-31", "--json")
    assert second.exit_code == 1 and "RuntimeError: boom" in json.loads(second.stdout)["error"]


# ------------------------------------------------------------------------------------------------ real processes


def streamflow(home: Path, *args: str, env: dict[str, str] | None = None, wrap: list[str] | None = None):
    env = {**os.environ, "STREAMFLOW_HOME": str(home), "STREAMFLOW_DB_URL": "", **(env or {})}
    return subprocess.run([*(wrap or []), STREAMFLOW, *args], env=env, capture_output=True, text=True, timeout=120)


def _namespace_mounts() -> bool:
    if shutil.which("unshare") is None:
        return False
    probe = subprocess.run(["unshare", "-rm", "mount", "-t", "tmpfs", "tmpfs", "/mnt"], capture_output=True)
    return probe.returncode == 0


needs_mounts = pytest.mark.skipif(not _namespace_mounts(), reason="no user namespaces with mounts (unshare -rm)")


@pytest.fixture(scope="module")
def month(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from pipelines.generate import generate

    out = tmp_path_factory.mktemp("months")
    generate(out, users=300, months=1, seed=3)
    return out / "month_000"


@needs_mounts
@pytest.mark.parametrize(
    ("mount", "command", "as_json", "message"),
    [
        ("mount --bind -o ro {home} {home}", "ingest", True, "streamflow.lock: Read-only file system"),
        ("mount --bind -o ro {home} {home}", "status", False, "Read-only file system"),
        ("mount -t tmpfs -o size=64k tmpfs {home}", "ingest", True, "No space left on device"),
        ("mount -t tmpfs -o size=64k tmpfs {home}", "ingest", False, "No space left on device"),
    ],
    ids=["read-only-ingest-json", "read-only-status", "disk-full-ingest-json", "disk-full-ingest"],
)
def test_read_only_home_and_full_disk_are_one_message(
    mount: str, command: str, as_json: bool, message: str, month: Path, tmp_path: Path
) -> None:
    home = tmp_path / "home"
    home.mkdir()
    args = [command, *([str(month)] if command == "ingest" else []), *(["--json"] if as_json else [])]
    script = f'{mount.format(home=home)} && exec "$0" "$@"'
    proc = streamflow(home, *args, wrap=["unshare", "-rm", "sh", "-c", script])
    assert message in assert_one_message(proc.stdout, proc.stderr, 1, proc.returncode, as_json)


def test_bad_settings_are_bad_input(tmp_path: Path) -> None:
    proc = streamflow(tmp_path / "home", "status", "--json", env={"STREAMFLOW_SEED": "forty-two"})
    error = assert_one_message(proc.stdout, proc.stderr, 2, proc.returncode, True)
    assert error.startswith("bad settings: STREAMFLOW_SEED='forty-two': Input should be a valid integer")


def test_a_50_mb_field_is_bad_input_naming_file_line_and_column(month: Path, tmp_path: Path) -> None:
    """pyarrow refuses a row longer than its 1 MiB block with `ArrowInvalid: straddling object …`; the month is bad
    input (exit 2) and the message says where."""
    folder = tmp_path / "month_000"
    shutil.copytree(month, folder)
    users = folder / "users.csv"
    rows = users.read_text().splitlines()
    header = rows[0].split(",")
    fields = rows[6].split(",")
    fields[header.index("user_gender")] = "x" * 50_000_000
    rows[6] = ",".join(fields)
    users.write_text("\n".join(rows) + "\n")

    proc = streamflow(tmp_path / "home", "ingest", str(folder), "--json")
    error = assert_one_message(proc.stdout, proc.stderr, 2, proc.returncode, True)
    assert error.startswith(f"{users}: line 7, column 'user_gender': a field of 50,000,000 bytes"), error
