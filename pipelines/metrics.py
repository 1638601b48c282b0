"""The figures batch work publishes for Prometheus: a text file per group under ``STREAMFLOW_HOME/metrics``
(node-exporter textfile format, what a cron host or a sidecar scrapes) and, when ``STREAMFLOW_PUSHGATEWAY_URL`` is
set, a push to the Pushgateway (what the cluster's Prometheus scrapes with ``honor_labels``).

Groups (the Pushgateway's grouping key is ``job`` plus the labels named here; one text file each):

- ``streamflow_pipeline`` / ``step``: every state-changing command and every stage ``monthly`` runs —
  ``streamflow_step_duration_seconds``, ``streamflow_step_last_run_timestamp_seconds``,
  ``streamflow_step_success`` (1/0) and ``streamflow_step_last_success_timestamp_seconds``. A failed run is pushed
  with POST (only the figures it carries are replaced) and its text file keeps the previous success time, so a
  failure never erases when the step last worked.
- ``streamflow_ingest`` / ``as_of``: ``streamflow_ingest_rows{as_of,table,kind}`` (input, loaded, quarantined).
- ``streamflow_monthly`` / ``as_of``: ``streamflow_monthly_decision{as_of,decision}`` = 1.
- ``streamflow_registry``: ``streamflow_production_model_version`` after a gate or a rollback.
- ``streamflow_drift``: the drift job's figures (:mod:`pipelines.drift`).
- ``streamflow_score`` / ``as_of``: the month's list (:mod:`pipelines.score`) — ``streamflow_score_rows``,
  ``streamflow_score_share_above_threshold`` and ``streamflow_score_mean_probability``, each ``{as_of}``.

Publishing never fails the work it describes: a failed push or an unwritable folder is logged and reported.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from datetime import date
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry

    from pipelines.config import Settings

log = logging.getLogger(__name__)

PIPELINE_JOB = "streamflow_pipeline"
INGEST_JOB = "streamflow_ingest"
MONTHLY_JOB = "streamflow_monthly"
REGISTRY_JOB = "streamflow_registry"
DRIFT_JOB = "streamflow_drift"
SCORE_JOB = "streamflow_score"
PUSH_TIMEOUT = 10.0
LAST_SUCCESS = "streamflow_step_last_success_timestamp_seconds"


def text_file(settings: Settings, job: str, grouping: Mapping[str, str] | None = None) -> Path:
    """The text file of one group: ``<job>[_<value>...].prom`` under the metrics folder."""
    suffix = "".join(f"_{value}" for value in (grouping or {}).values())
    return settings.metrics_dir / f"{job}{suffix}.prom"


# the grouping key of each job's files, from the file name (``text_file``): <job>_<value>.prom
GROUPED_BY = {PIPELINE_JOB: "step", INGEST_JOB: "as_of", MONTHLY_JOB: "as_of", REGISTRY_JOB: None, DRIFT_JOB: None,
              SCORE_JOB: "as_of"}  # fmt: skip


def text_file_groups(settings: Settings) -> list[tuple[Path, str, dict[str, str]]]:
    """Every text file of the metrics folder with its job and grouping key (files of other jobs are left out)."""
    found = []
    for path in sorted(settings.metrics_dir.glob("*.prom")):
        for job, key in GROUPED_BY.items():
            if key is None and path.stem == job:
                found.append((path, job, {}))
            elif key is not None and path.stem.startswith(f"{job}_"):
                found.append((path, job, {key: path.stem.removeprefix(f"{job}_")}))
    return found


def publish(
    settings: Settings,
    job: str,
    registry: CollectorRegistry,
    grouping: Mapping[str, str] | None = None,
    *,
    replace: bool = True,
    quiet: bool = False,
) -> tuple[Path | None, str | None]:
    """Write the group's text file and push it when a Pushgateway is set.

    ``replace``: PUT (the group holds exactly these figures) rather than POST (figures of the same name replaced,
    others kept). ``quiet``: a failure is logged at INFO, not WARNING — for figures of a step that failed, whose own
    error is the one message the user gets.

    Returns:
        (the text file or None when it could not be written, "ok" / the failure / None when no Pushgateway is set).
    """
    from prometheus_client import push_to_gateway, pushadd_to_gateway, write_to_textfile

    warn = log.info if quiet else log.warning
    path: Path | None = text_file(settings, job, grouping)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_to_textfile(str(path), registry)  # written beside, then renamed: a scraper never reads half a file
    except OSError as err:
        warn("metrics of %s not written to %s: %s", job, path, err)
        path = None
    if not settings.pushgateway_url:
        return path, None
    push = push_to_gateway if replace else pushadd_to_gateway
    try:
        push(settings.pushgateway_url, job=job, registry=registry, grouping_key=dict(grouping or {}),
             timeout=PUSH_TIMEOUT)  # fmt: skip
    except OSError as err:  # urllib's URLError and HTTPError are OSErrors
        warn("metrics of %s not pushed to %s: %s", job, settings.pushgateway_url, err)
        return path, f"push to {settings.pushgateway_url} failed: {err}"
    return path, "ok"


def _previous_success(path: Path) -> float | None:
    """The last success time a step's text file holds (None: no file, or it never succeeded)."""
    from prometheus_client.parser import text_string_to_metric_families

    try:
        text = path.read_text()
    except OSError:
        return None
    try:
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if sample.name == LAST_SUCCESS:
                    return float(sample.value)
    except ValueError:  # a file someone edited by hand: start again
        return None
    return None


def record_step(settings: Settings, step: str, started: float, ended: float, ok: bool) -> str | None:
    """Publish one run of a step (unix times ``started`` / ``ended``). Returns the push outcome (see publish)."""
    from prometheus_client import CollectorRegistry, Gauge

    registry = CollectorRegistry()

    def gauge(name: str, doc: str, value: float) -> None:
        Gauge(name, doc, ["step"], registry=registry).labels(step).set(value)

    gauge("streamflow_step_duration_seconds", "Seconds the step's last run took.", ended - started)
    gauge("streamflow_step_last_run_timestamp_seconds", "When the step's last run ended (unix time).", ended)
    gauge("streamflow_step_success", "1 when the step's last run succeeded, 0 when it failed.", float(ok))
    last_success = ended if ok else _previous_success(text_file(settings, PIPELINE_JOB, {"step": step}))
    if last_success is not None:
        gauge(LAST_SUCCESS, "When the step last succeeded (unix time).", last_success)
    # the grouping key's labels are on the samples too (same values, as the Pushgateway requires): a text file
    # read without the key still says which step / month it is
    _, pushed = publish(settings, PIPELINE_JOB, registry, {"step": step}, replace=ok, quiet=not ok)
    return pushed


@contextmanager
def step(settings: Settings, name: str) -> Iterator[None]:
    """Time the block as one run of step ``name`` and publish it, failed or not (the error goes on)."""
    started, ok = time.time(), False
    try:
        yield
        ok = True
    finally:
        try:
            record_step(settings, name, started, time.time(), ok)
        except Exception as err:  # noqa: BLE001 - the figures never fail the step they describe
            log.warning("figures of step %s not published: %s", name, err)


def record_ingest(
    settings: Settings, as_of: date, tables: Mapping[str, Mapping[str, int]], *, refused: bool = False
) -> str | None:
    """Publish a month's rows per table: input, loaded and quarantined (``refused``: the month failed, loaded 0)."""
    from prometheus_client import CollectorRegistry, Gauge

    registry = CollectorRegistry()
    rows = Gauge("streamflow_ingest_rows", "Rows of the month's files, by table and kind.",
                 ["as_of", "table", "kind"], registry=registry)  # fmt: skip
    for table, counts in tables.items():
        for kind in ("input", "loaded", "quarantined"):
            rows.labels(as_of.isoformat(), table, kind).set(counts[kind])
    return publish(settings, INGEST_JOB, registry, {"as_of": as_of.isoformat()}, quiet=refused)[1]


def record_month(settings: Settings, as_of: date, decision: str) -> str | None:
    """Publish the decision ``monthly`` took for a month."""
    from prometheus_client import CollectorRegistry, Gauge

    registry = CollectorRegistry()
    Gauge("streamflow_monthly_decision", "1 for the decision monthly took for the month (BOOTSTRAP, NO_ACTION, "
          "RETRAIN).", ["as_of", "decision"], registry=registry).labels(as_of.isoformat(), decision).set(1)  # fmt: skip
    return publish(settings, MONTHLY_JOB, registry, {"as_of": as_of.isoformat()})[1]


def record_production(settings: Settings, version: str | None) -> str | None:
    """Publish the version holding alias ``production`` (nothing when there is none)."""
    from prometheus_client import CollectorRegistry, Gauge

    if version is None or not str(version).isdigit():
        return None
    registry = CollectorRegistry()
    Gauge("streamflow_production_model_version", "The registered model version holding alias 'production'.",
          registry=registry).set(int(version))  # fmt: skip
    return publish(settings, REGISTRY_JOB, registry)[1]


def record_scores(settings: Settings, result) -> str | None:
    """Publish a month's list (a :class:`pipelines.score.ScoreResult`): users scored, the share at or above the
    model's threshold and the mean probability, grouped by as_of (the version that scored is a label)."""
    from prometheus_client import CollectorRegistry, Gauge

    registry = CollectorRegistry()
    as_of = result.as_of.isoformat()
    for name, doc, value in (
        ("streamflow_score_rows", "Users scored by `streamflow score` for the month.", result.rows),
        ("streamflow_score_share_above_threshold", "Share of the month's users at or above the production model's "
         "threshold (churn_label 1).", result.share_above_threshold),
        ("streamflow_score_mean_probability", "Mean churn probability of the month's users.", result.mean_probability),
    ):  # fmt: skip
        Gauge(name, doc, ["as_of", "model_version"], registry=registry).labels(as_of, result.model_version).set(value)
    return publish(settings, SCORE_JOB, registry, {"as_of": as_of})[1]


def quietly(fn, *args, **kwargs) -> str | None:
    """Call a ``record_*`` function; a failure is logged, never raised (the figures never fail the work)."""
    try:
        return fn(*args, **kwargs)
    except Exception as err:  # noqa: BLE001
        log.warning("figures not published (%s): %s", getattr(fn, "__name__", fn), err)
        return None
