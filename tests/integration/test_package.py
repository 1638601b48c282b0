"""`pip install .` (not editable) gives a working StreamFlow: the wheel carries the Feast repo as package data, the
default STREAMFLOW_FEATURE_REPO finds it in site-packages, and the CLI and both servers start with no source
checkout anywhere near.

The wheel is built from a copy of the sources (nothing is written into the checkout) with the project's own build
backend and no network (no build isolation), installed with ``--no-deps`` into a fresh venv outside the checkout.
Its dependencies come from the project's venv through a ``.pth`` path line: a path line is added to sys.path, but
the ``.pth`` files inside that folder (the project's editable install) are not processed, so ``pipelines`` can only
be imported from the new venv — which the test checks."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

pytestmark = [pytest.mark.integration, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]
SOURCES = ("pyproject.toml", "README.md", "pipelines", "model_server", "feature_repo")


def _run(cmd: list[str], cwd: Path, env: dict[str, str], timeout: float = 300) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"{cmd}: exit {proc.returncode}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A venv outside the checkout with StreamFlow's wheel installed (no editable install): its bin folder."""
    work = tmp_path_factory.mktemp("package")
    src = work / "src"
    src.mkdir()
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for name in SOURCES:
        path = ROOT / name
        if path.is_dir():
            shutil.copytree(path, src / name, ignore=ignore)
        else:
            shutil.copy2(path, src / name)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("STREAMFLOW_", "PYTHON", "VIRTUAL_ENV"))}
    dist = work / "dist"
    _run(
        [shutil.which("python3") or "python3", "-m", "uv", "build", "--wheel", "--no-build-isolation", "--offline",
         "--python", sys.executable, "--out-dir", str(dist), str(src)],
        cwd=work, env=env,
    )  # fmt: skip
    wheels = list(dist.glob("streamflow-*.whl"))
    assert len(wheels) == 1, wheels
    venv = work / "venv"
    _run([sys.executable, "-m", "venv", "--without-pip", str(venv)], cwd=work, env=env)
    python = venv / "bin" / "python"
    _run(
        [shutil.which("python3") or "python3", "-m", "uv", "pip", "install", "--offline", "--no-deps",
         "--python", str(python), str(wheels[0])],
        cwd=work, env=env,
    )  # fmt: skip
    purelib = Path(_run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                        cwd=work, env=env).stdout.strip())  # fmt: skip
    (purelib / "_streamflow_deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    return venv / "bin"


def _env(home: Path, bindir: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("STREAMFLOW_", "PYTHON", "VIRTUAL_ENV"))}
    env["STREAMFLOW_HOME"] = str(home)
    env["PATH"] = f"{bindir}{os.pathsep}{env.get('PATH', '')}"
    return env


def test_the_installed_package_is_the_one_imported(installed: Path, tmp_path: Path) -> None:
    env = _env(tmp_path / "home", installed)
    code = "import pipelines, model_server, pipelines.config as c; print(pipelines.__file__); print(model_server.__file__); print(c.Settings().feature_repo)"  # noqa: E501
    lines = _run([str(installed / "python"), "-c", code], cwd=tmp_path, env=env).stdout.split()
    venv = installed.parent.resolve()
    for line in lines:
        assert Path(line).resolve().is_relative_to(venv), f"{line} is not in the new venv {venv} (checkout leaked in)"
    repo = Path(lines[2])
    assert (repo / "features.py").is_file() and (repo / "feature_store.yaml").is_file()
    assert (repo / "feature_store.postgres.yaml").is_file() and (repo / ".feastignore").is_file()


def test_cli_and_both_servers_start_without_a_checkout(installed: Path, tmp_path: Path) -> None:
    home = tmp_path / "home"
    env = _env(home, installed)
    cwd = tmp_path / "elsewhere"
    cwd.mkdir()
    applied = _run([str(installed / "streamflow"), "features", "apply", "--json"], cwd=cwd, env=env)
    assert '"feature_count": 14' in applied.stdout, applied.stdout
    assert (home / "feast" / "registry.db").is_file()
    assert "Usage" in _run([str(installed / "streamflow"), "demo", "--help"], cwd=cwd, env=env).stdout
    for server in ("model_server.predictor", "model_server.transformer"):
        answer = _run([str(installed / "python"), "-m", server, "--help"], cwd=cwd, env=env, timeout=120)
        assert "usage" in (answer.stdout + answer.stderr).lower(), (server, answer.stdout, answer.stderr)
