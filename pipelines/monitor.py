"""``streamflow monitor`` (``make monitor``): the cluster's monitoring on one machine — a real Prometheus (Debian's
``prometheus``) on loopback scraping the local transformer and predictor (``streamflow serve``) and a local
Pushgateway (``honor_labels``, as the chart's ServiceMonitor), evaluating the chart's own alert rules file.

The MLflow server is not scraped: its ``/metrics`` needs ``--expose-prometheus`` and prometheus-flask-exporter,
which StreamFlow does not ship (the chart does not scrape it either). What the pipeline steps wrote under
``STREAMFLOW_HOME/metrics`` before the monitor started (``make demo``'s months) is pushed to the Pushgateway at
start, so the pipelines and quality dashboards have something to show at once.
"""

from __future__ import annotations

import shutil
import subprocess
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from model_server.local import LocalProcesses
from pipelines.config import Settings
from pipelines.errors import NotFound, StreamflowError

ROOT = Path(__file__).resolve().parents[1]
RULES_FILE = ROOT / "charts" / "streamflow" / "rules" / "streamflow.rules.yaml"


def binary(name: str) -> str:
    found = shutil.which(name)
    if found is None:
        raise NotFound(f"{name} is not installed: `apt-get install {name}` (Debian; tests/system-deps.sh does it)")
    return found


def prometheus_config(
    settings: Settings, pushgateway: str, rules: Path = RULES_FILE, interval: str = "5s"
) -> dict[str, object]:
    """The scrape configuration: both servers (target label ``server``, as the chart's PodMonitor sets it) and the
    Pushgateway with ``honor_labels`` (pushed series keep their own ``job``)."""
    host = settings.serve_host if settings.serve_host not in ("0.0.0.0", "::") else "127.0.0.1"
    servers = [  # the labels the chart's PodMonitor gives its targets: server, and the alias the predictor follows
        {"targets": [f"{host}:{settings.transformer_http_port}"], "labels": {"server": "transformer"}},
        {"targets": [f"{host}:{settings.predictor_http_port}"],
         "labels": {"server": "predictor", "alias": settings.model_alias}},
    ]  # fmt: skip
    return {
        "global": {"scrape_interval": interval, "evaluation_interval": interval},
        "rule_files": [str(rules)],
        "scrape_configs": [
            {"job_name": "streamflow-servers", "metrics_path": "/metrics", "static_configs": servers},
            {"job_name": "pushgateway", "honor_labels": True,
             "static_configs": [{"targets": [pushgateway.removeprefix("http://").rstrip("/")]}]},
        ],
    }  # fmt: skip


@dataclass
class LocalMonitor(LocalProcesses):
    """Prometheus (+ a Pushgateway unless ``STREAMFLOW_PUSHGATEWAY_URL`` names one) on loopback; a context manager.

    ``interval``: scrape and rule evaluation interval (5 s here, against the chart's 30 s: one machine, a few series).
    """

    settings: Settings
    interval: str = "5s"
    rules: Path = RULES_FILE
    startup_timeout: float = 60.0
    procs: dict[str, subprocess.Popen] = field(default_factory=dict)

    @property
    def folder(self) -> Path:
        return self.settings.home / "monitor"

    @property
    def log_dir(self) -> Path:
        return self.folder

    @property
    def prometheus_url(self) -> str:
        return f"http://127.0.0.1:{self.settings.monitor_prometheus_port}"

    @property
    def pushgateway_url(self) -> str:
        return self.settings.pushgateway_url or f"http://127.0.0.1:{self.settings.monitor_pushgateway_port}"

    def start(self) -> LocalMonitor:
        """Start what is missing, wait until it answers ready, push the figures already written.

        Raises:
            NotFound: prometheus or prometheus-pushgateway not installed, or the rules file missing (not a checkout).
            StreamflowError: a process exited or did not get ready in time (its log's end in the message).
        """
        from model_server.local import wait_answering

        if not self.rules.exists():
            raise NotFound(f"{self.rules}: the alert rules file; `streamflow monitor` runs from a StreamFlow checkout")
        self.folder.mkdir(parents=True, exist_ok=True)
        commands: dict[str, list[str]] = {}
        if not self.settings.pushgateway_url:
            port = self.settings.monitor_pushgateway_port
            # its own persistence file: Debian's default is one machine-wide file every Pushgateway would start from
            commands["pushgateway"] = [
                binary("prometheus-pushgateway"), f"--web.listen-address=127.0.0.1:{port}",
                f"--persistence.file={self.folder / 'pushgateway.data'}",
            ]  # fmt: skip
        config = self.folder / "prometheus.yml"
        config.write_text(yaml.safe_dump(prometheus_config(self.settings, self.pushgateway_url, self.rules,
                                                           self.interval), sort_keys=False))  # fmt: skip
        commands["prometheus"] = [
            binary("prometheus"), f"--config.file={config}", f"--storage.tsdb.path={self.folder / 'data'}",
            f"--web.listen-address=127.0.0.1:{self.settings.monitor_prometheus_port}",
            "--storage.tsdb.retention.time=15d",
        ]  # fmt: skip
        try:
            for name, cmd in commands.items():
                log = (self.folder / f"{name}.log").open("w")
                self.procs[name] = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
            for name, url in (("pushgateway", self.pushgateway_url), ("prometheus", self.prometheus_url)):
                if name in self.procs:
                    problem = wait_answering(f"{url}/-/ready", self.procs[name], self.startup_timeout)
                    if problem:
                        raise StreamflowError(f"{name} {problem}: {self._tail(name)}")
            self.replay()
        except BaseException:
            self.stop(grace=30)
            raise
        return self

    def replay(self) -> list[str]:
        """Push the text files the pipeline steps wrote (``STREAMFLOW_HOME/metrics``) to the Pushgateway, each to
        its own group. Returns the groups pushed."""
        from pipelines.metrics import text_file_groups

        pushed = []
        for path, job, grouping in text_file_groups(self.settings):
            url = "/".join([f"{self.pushgateway_url}/metrics/job/{job}", *(f"{k}/{v}" for k, v in grouping.items())])
            request = urllib.request.Request(url, data=path.read_bytes(), method="PUT")
            with urllib.request.urlopen(request, timeout=10):
                pushed.append(path.name)
        return pushed

    def __enter__(self) -> LocalMonitor:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop(grace=30)  # Prometheus writes its head block on SIGTERM
