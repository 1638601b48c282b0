"""tests/system-deps.sh: what `make test` and `.ci/run` install from Debian's packages, run in a sandbox whose PATH
holds bash and shims only (``id`` says who we are, ``apt-get`` records its calls): nothing is installed for real."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "system-deps.sh"
# the tool each Debian package brings, in the order the script checks them
PACKAGES = {"pg_ctl": "postgresql", "prometheus": "prometheus", "prometheus-pushgateway": "prometheus-pushgateway",
            "dockerd": "docker.io", "debootstrap": "debootstrap", "chromium": "chromium"}  # fmt: skip
EVERYTHING = list(PACKAGES.values())


def sandbox(tmp_path: Path, uid: int, have: list[str]) -> tuple[dict[str, str], Path]:
    """A PATH with bash, ``id`` answering ``uid``, a recording ``apt-get`` and ``useradd``, and empty stand-ins
    for the tools in ``have``; returns (env, the apt-get log)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "bash").symlink_to(shutil.which("bash"))
    log = tmp_path / "calls.log"

    def shim(name: str, body: str) -> None:
        path = bin_dir / name
        path.write_text(f"#!{shutil.which('bash')}\n{body}\n")
        path.chmod(0o755)

    shim("id", f'if [ "$1" = -u ]; then echo {uid}; else exit 0; fi')  # `id postgres`: the user exists
    shim("apt-get", f'echo "apt-get $*" >> {log}')
    shim("useradd", f'echo "useradd $*" >> {log}')
    for tool in have:
        shim(tool, "exit 0")
    return {"PATH": str(bin_dir), "HOME": str(tmp_path)}, log


def run(env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run([env["PATH"] + "/bash", str(SCRIPT)], env=env, capture_output=True, text=True, timeout=60)


def test_as_root_it_installs_every_missing_package_from_debian(tmp_path: Path) -> None:
    env, log = sandbox(tmp_path, 0, [])
    done = run(env)
    assert done.returncode == 0, done.stderr
    calls = log.read_text().splitlines()
    assert calls[0] == "apt-get update -q"
    assert calls[1].split() == ["apt-get", "install", "-y", "-q", "--no-install-recommends", *EVERYTHING]


def test_as_root_with_everything_present_it_installs_nothing(tmp_path: Path) -> None:
    env, log = sandbox(tmp_path, 0, list(PACKAGES))
    done = run(env)
    assert done.returncode == 0 and not log.exists(), done.stderr


@pytest.mark.parametrize("have", [[], ["pg_ctl", "dockerd"]])
def test_as_another_user_it_names_what_is_missing_and_installs_nothing(tmp_path: Path, have: list[str]) -> None:
    env, log = sandbox(tmp_path, 1000, have)
    done = run(env)
    assert done.returncode == 0 and not log.exists()
    missing = [package for tool, package in PACKAGES.items() if tool not in have]
    assert f"not installing: {' '.join(missing)}" in done.stderr
    assert "skip" in done.stderr


def test_make_test_and_ci_run_it() -> None:
    root = SCRIPT.parents[1]
    assert "bash tests/system-deps.sh" in (root / "Makefile").read_text()
    ci = (root / ".ci" / "run").read_text()
    assert "make test" in ci and os.access(SCRIPT, os.X_OK)
