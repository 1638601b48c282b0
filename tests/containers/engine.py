"""The real Docker engine the container tier runs on, and the images it runs.

:func:`engine` finds a running engine, or starts ``dockerd`` when none answers and this process is root (as
``.ci/run`` and ``make test`` are on a CI machine), and stops only a daemon it started. :func:`project_image` builds
the project image with ``manifests/install.sh images`` — the command behind ``make images``, so the tier runs the
image people build — and :func:`infra_image` the tier's own test infrastructure (``tests/containers/infra``) from the
same Debian base. Images are kept between runs as the engine's build cache; containers, networks and volumes are
removed by the fixtures that create them.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from tests.chart.conftest import pins

ROOT = Path(__file__).resolve().parents[2]
INFRA = Path(__file__).resolve().parent / "infra"


class EngineMissing(RuntimeError):
    """No Docker engine can be used here; the message names what is missing."""


def app_version() -> str:
    import yaml

    return str(yaml.safe_load((ROOT / "charts" / "streamflow" / "Chart.yaml").read_text())["appVersion"])


def docker(*args: str, timeout: float = 120, check: bool = True, input: str | None = None):
    """One ``docker`` command; output captured as text. ``check``: a failure raises with docker's own message."""
    done = subprocess.run(["docker", *args], capture_output=True, text=True, timeout=timeout, input=input)
    if check and done.returncode != 0:
        raise RuntimeError(f"docker {' '.join(args[:3])} … failed ({done.returncode}): {done.stderr.strip()[-2000:]}")
    return done


def answers() -> bool:
    if shutil.which("docker") is None:
        return False
    try:
        return subprocess.run(["docker", "info"], capture_output=True, timeout=20).returncode == 0
    except subprocess.TimeoutExpired:
        return False


@dataclass
class Engine:
    """A Docker engine that answers; ``process`` is the dockerd this run started (None: it was already running)."""

    process: subprocess.Popen | None = None
    log: Path | None = None

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=10)


def engine(log_dir: Path) -> Engine:
    """A Docker engine that answers: the running one, or a ``dockerd`` started now (root only).

    Raises:
        EngineMissing: no client, no daemon binary, not root, or a daemon that did not come up (its log's tail).
    """
    if answers():
        return Engine()
    missing = [tool for tool in ("docker", "dockerd") if shutil.which(tool) is None]
    if missing:
        raise EngineMissing(f"{' and '.join(missing)} not found: Debian's docker.io (tests/system-deps.sh installs it)")
    if os.geteuid() != 0:
        raise EngineMissing("no Docker engine answers and only root may start dockerd here: start one, or run as root")
    log = log_dir / "dockerd.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            ["dockerd", "--host", "unix:///var/run/docker.sock"],
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    started = Engine(process, log)
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        if process.poll() is not None:
            break
        if answers():
            return started
        time.sleep(0.5)
    started.stop()
    raise EngineMissing(f"dockerd did not come up: {log.read_text(errors='replace')[-1500:]}")


def has_image(image: str) -> bool:
    return docker("image", "inspect", image, check=False).returncode == 0


def project_image() -> tuple[str, str]:
    """Build the project image as ``make images`` does; (image, the base it was built FROM)."""
    done = subprocess.run(
        ["bash", "manifests/install.sh", "images"], cwd=ROOT, capture_output=True, text=True, timeout=3600
    )
    if done.returncode != 0:
        raise RuntimeError(f"make images failed ({done.returncode}):\n{(done.stdout + done.stderr)[-4000:]}")
    p = pins()
    base = p["BASE_IMAGE"] if has_image(p["BASE_IMAGE"]) else p["LOCAL_BASE_IMAGE"]
    return f"streamflow:{app_version()}", base


def infra_image(base: str) -> str:
    """The tier's test infrastructure image (Debian's PostgreSQL, Pushgateway, the forwarders), from ``base``;
    tagged by the content of its folder and the base's id, so an unchanged one is not built again."""
    digest = hashlib.sha256(docker("image", "inspect", "--format", "{{.Id}}", base).stdout.encode())
    for path in sorted(INFRA.iterdir()):
        digest.update(path.name.encode() + path.read_bytes())
    image = f"streamflow-tier-infra:{digest.hexdigest()[:12]}"
    if not has_image(image):
        docker("build", "-q", "--build-arg", f"BASE_IMAGE={base}", "-t", image, str(INFRA), timeout=1200)
    return image
