"""Both servers as local processes on loopback: what ``streamflow serve`` and ``streamflow demo`` start.

The processes are the pod entrypoints (``python -m model_server.predictor`` / ``model_server.transformer``), given
the settings as ``STREAMFLOW_*`` environment variables — the same way the chart configures them. Their logs go to
``$STREAMFLOW_HOME/logs/``.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pipelines.config import Settings
from pipelines.errors import StreamflowError


def free_port() -> int:
    """A TCP port free on loopback now (for tests and benchmarks that start servers)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_answering(url: str, proc: subprocess.Popen, timeout: float) -> str | None:
    """Poll ``url`` until it answers 200 (→ None) while ``proc`` runs. Otherwise why not, for the caller's error:
    ``exited with code N`` or ``did not answer <url> within T s`` (the process is left running)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(url, timeout=2) as resp:
                if resp.status == 200:
                    return None
        except OSError:  # refused while starting, or an HTTP error status (urllib's HTTPError is an OSError)
            pass
        if proc.poll() is not None:
            return f"exited with code {proc.returncode}"
        if time.monotonic() > deadline:
            return f"did not answer {url} within {timeout:.0f} s"
        time.sleep(0.3)


def settings_env(settings: Settings) -> dict[str, str]:
    """The settings as the ``STREAMFLOW_*`` variables a child process reads them from."""
    env = {}
    for name in type(settings).model_fields:
        value = getattr(settings, name)
        if value is not None:
            env[f"STREAMFLOW_{name.upper()}"] = str(value.resolve() if isinstance(value, Path) else value)
    return env


def curl_line(settings: Settings, user_ids: list[str]) -> str:
    body = json.dumps(
        {"inputs": [{"name": "user_id", "datatype": "BYTES", "shape": [len(user_ids)], "data": user_ids}]},
        separators=(",", ":"),
    )
    host = "localhost" if settings.serve_host in ("127.0.0.1", "0.0.0.0") else settings.serve_host
    return f"curl -s {host}:{settings.transformer_http_port}/v2/models/{settings.served_model_name}/infer -d '{body}'"


class LocalProcesses:
    """Named processes (``self.procs``), each in its own process group, logging to ``<log_dir>/<name>.log``."""

    procs: dict[str, subprocess.Popen]
    log_dir: Path

    def _tail(self, name: str, lines: int = 6) -> str:
        path = self.log_dir / f"{name}.log"
        text = path.read_text(errors="replace").strip().splitlines() if path.exists() else []
        return " | ".join(text[-lines:]) + f" (log: {path})"

    def stop(self, grace: float = 15.0) -> None:
        """SIGTERM every group (servers finish in-flight requests), SIGKILL what is still there after ``grace`` s."""
        for proc in self.procs.values():
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
        for proc in self.procs.values():
            try:
                proc.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=grace)

    def wait(self) -> int:
        """Block until one process exits (or a signal stops us); returns its exit code."""
        while True:
            for proc in self.procs.values():
                if proc.poll() is not None:
                    return proc.returncode
            time.sleep(0.5)


@dataclass
class LocalServers(LocalProcesses):
    """Predictor + transformer on ``settings.serve_host``; use as a context manager."""

    settings: Settings
    startup_timeout: float = 180.0
    procs: dict[str, subprocess.Popen] = field(default_factory=dict)

    @property
    def log_dir(self) -> Path:
        return self.settings.home / "logs"

    @property
    def transformer_url(self) -> str:
        return f"http://{self.settings.serve_host}:{self.settings.transformer_http_port}"

    @property
    def predictor_url(self) -> str:
        return f"http://{self.settings.serve_host}:{self.settings.predictor_http_port}"

    def start(self) -> LocalServers:
        """Start both and wait until both answer ready.

        Raises:
            StreamflowError: a server exited or did not get ready in time (the message carries its log's end).
        """
        return self.launch().wait_ready()

    def launch(self) -> LocalServers:
        """Start both processes and return at once (they load Feast and the model meanwhile)."""
        s = self.settings
        self.log_dir.mkdir(parents=True, exist_ok=True)
        env = {**os.environ, **settings_env(s), "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false"}
        commands = {
            "predictor": ["--http_port", str(s.predictor_http_port), "--grpc_port", str(s.predictor_grpc_port)],
            "transformer": [
                "--http_port", str(s.transformer_http_port), "--grpc_port", str(s.transformer_grpc_port),
                "--predictor_host", f"{s.serve_host}:{s.predictor_http_port}",
            ],
        }  # fmt: skip
        for name, args in commands.items():
            log = (self.log_dir / f"{name}.log").open("w")
            self.procs[name] = subprocess.Popen(
                [sys.executable, "-m", f"model_server.{name}", "--host", s.serve_host, *args],
                env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
            )  # fmt: skip
        return self

    def wait_ready(self) -> LocalServers:
        """Wait until both launched servers answer ready; stop both if one fails."""
        try:
            self._wait_ready("predictor", self.predictor_url)
            self._wait_ready("transformer", self.transformer_url)
        except BaseException:
            self.stop()
            raise
        return self

    def _wait_ready(self, name: str, base: str) -> None:
        problem = wait_answering(f"{base}/v2/health/ready", self.procs[name], self.startup_timeout)
        if problem:
            raise StreamflowError(f"the {name} {problem}: {self._tail(name)}")

    def infer(self, user_ids: list[str]) -> dict[str, Any]:
        """One v2 request through the transformer, as a client sends it."""
        body = {"inputs": [{"name": "user_id", "datatype": "BYTES", "shape": [len(user_ids)], "data": user_ids}]}
        request = urllib.request.Request(
            f"{self.transformer_url}/v2/models/{self.settings.served_model_name}/infer",
            data=json.dumps(body).encode(),
            headers={"Content-Type": "application/json"},
            method="POST",
        )
        try:
            with urllib.request.urlopen(request, timeout=60) as resp:
                return json.loads(resp.read())
        except urllib.error.HTTPError as err:
            raise StreamflowError(f"the transformer answered {err.code}: {err.read().decode()[:500]}") from None

    def __enter__(self) -> LocalServers:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
