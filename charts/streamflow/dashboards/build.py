"""StreamFlow's Grafana dashboards, built with grafana-foundation-sdk and committed as JSON beside this file.

    python charts/streamflow/dashboards/build.py           # rewrite serving.json, pipelines.json, quality.json
    python charts/streamflow/dashboards/build.py --check   # exit 1 naming every JSON that differs from this source

The chart ships the JSON files as ConfigMaps labelled ``grafana_dashboard: "1"`` (templates/dashboards.yaml), which
Grafana's sidecar in kube-prometheus-stack loads. Conventions every panel follows, so that the JSON can be checked
without Grafana (tests/chart/test_dashboards.py) and every query evaluated against a real Prometheus:

* the data source is the dashboard variable ``datasource`` (type prometheus), never a fixed uid;
* PromQL names only the metrics StreamFlow emits (and ``up``), with ``$__rate_interval`` as the only variable;
* the servers are told apart by their ``server`` label (predictor | transformer), never by ``job`` or ``instance``,
  whose values depend on who scrapes them (the chart's PodMonitor or ``make monitor``);
* every panel has a unit and a description saying what to look for.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path

from grafana_foundation_sdk.builders import common as common_builders
from grafana_foundation_sdk.builders import dashboard, heatmap, prometheus, stat, table, timeseries
from grafana_foundation_sdk.cog import builder as cogbuilder
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models import common
from grafana_foundation_sdk.models import dashboard as models
from grafana_foundation_sdk.models.prometheus import PromQueryFormat, QueryEditorMode

HERE = Path(__file__).resolve().parent
TAG = "streamflow"
DATASOURCE_VARIABLE = "datasource"
FULL_WIDTH = 24

# gRPC codes that mean the server failed, beside REST's 5xx; the rest of the non-OK codes are refused requests
# (bad input, too large, missing features, a disabled route), which say more about the caller than the server.
SERVER_ERRORS = "5..|UNKNOWN|DEADLINE_EXCEEDED|INTERNAL|UNAVAILABLE|DATA_LOSS"
ANSWERED = "2..|OK"

# The settings the pipelines decide with (pipelines/config.py defaults) and the thresholds of the alerts in
# rules/streamflow.rules.yaml, drawn on the panels that show them; descriptions name those alerts.
QUARANTINE_MAX_SHARE = 0.01
QUARANTINE_WARN_SHARE = 0.005  # StreamflowQuarantineRatioHigh warns at half the limit
LATENCY_P99_WARN_SECONDS = 0.1  # StreamflowLatencyP99High
ERROR_RATIO_PAGE = 0.05  # StreamflowErrorRatioHigh
DRIFT_SHARE_THRESHOLD = 0.30
DRIFT_COLUMN_THRESHOLD = 0.1
MONTH_SECONDS = 35 * 86400  # StreamflowMonthlyWorkflowLate: the CronWorkflow runs monthly, a month has <= 31 days

PanelBuilder = cogbuilder.Builder[models.Panel]  # timeseries, stat, table and heatmap panels alike


# ------------------------------------------------------------------------------------------------ building blocks


def _datasource() -> common.DataSourceRef:
    return common.DataSourceRef(type_val="prometheus", uid="${" + DATASOURCE_VARIABLE + "}")


def _query(expr: str, legend: str = "", *, instant: bool = False, fmt: PromQueryFormat | None = None):
    """One PromQL target; refIds are given by `_targets`, in order."""
    query = prometheus.Dataquery().expr(expr).datasource(_datasource()).editor_mode(QueryEditorMode.CODE)
    query = query.instant() if instant else query.range()
    if legend:
        query = query.legend_format(legend)
    if fmt is not None:
        query = query.format(fmt)
    return query


def _targets(panel, queries: list) -> PanelBuilder:
    for i, query in enumerate(queries):
        panel = panel.with_target(query.ref_id(chr(ord("A") + i)))
    return panel


def _common(panel, title: str, description: str, unit: str, width: int, height: int, queries: list) -> PanelBuilder:
    panel = panel.title(title).description(description).datasource(_datasource()).unit(unit)
    return _targets(panel.span(width).height(height), queries)


def _thresholds(*steps: tuple[float | None, str]):
    return (
        dashboard.ThresholdsConfig()
        .mode(models.ThresholdsMode.ABSOLUTE)
        .steps([models.Threshold(value=value, color=color) for value, color in steps])
    )


def _value_map(texts: dict[str, tuple[str, str]]) -> list[models.ValueMapping]:
    """{"1": ("reachable", "green"), ...}: the text and colour shown for each value, as one value mapping."""
    options = {
        value: models.ValueMappingResult(text=text, color=color, index=i)
        for i, (value, (text, color)) in enumerate(texts.items())
    }
    return [models.ValueMap(options=options)]


def _legend(*calcs: str, right: bool = False):
    """A legend as a table of the given figures per series (a plain list without figures)."""
    return (
        common_builders.VizLegendOptions()
        .show_legend(True)
        .display_mode(common.LegendDisplayMode.TABLE if calcs else common.LegendDisplayMode.LIST)
        .placement(common.LegendPlacement.RIGHT if right else common.LegendPlacement.BOTTOM)
        .calcs(list(calcs))
    )


def series(
    title: str,
    description: str,
    unit: str,
    queries: list,
    *,
    width: int = 12,
    height: int = 8,
    stepped: bool = False,
    legend_calcs: tuple[str, ...] = ("mean", "max", "lastNotNull"),
    legend_right: bool = False,
    min_value: float | None = None,
    decimals: float | None = None,
    threshold_line: float | None = None,
):
    """A time series panel: one line per series, a table legend with the figures people compare."""
    panel = (
        timeseries.Panel()
        .legend(_legend(*legend_calcs, right=legend_right))
        .tooltip(
            common_builders.VizTooltipOptions().mode(common.TooltipDisplayMode.MULTI).sort(common.SortOrder.DESCENDING)
        )
        .line_width(1)
        .fill_opacity(10)
        .show_points(common.VisibilityMode.NEVER)
        .span_nulls(False)
    )
    if stepped:
        panel = panel.line_interpolation(common.LineInterpolation.STEP_AFTER)
    if min_value is not None:
        panel = panel.min(min_value)
    if decimals is not None:
        panel = panel.decimals(decimals)
    if threshold_line is not None:
        panel = panel.thresholds(_thresholds((None, "transparent"), (threshold_line, "red"))).thresholds_style(
            common_builders.GraphThresholdsStyleConfig().mode(common.GraphThresholdsStyleMode.DASHED)
        )
    return _common(panel, title, description, unit, width, height, queries)


def single(
    title: str,
    description: str,
    unit: str,
    queries: list,
    *,
    width: int = 4,
    height: int = 4,
    steps: tuple[tuple[float | None, str], ...] = ((None, "green"),),
    mappings: list[models.ValueMapping] | None = None,
    background: bool = False,
    names: bool = False,
    decimals: float | None = None,
):
    """A stat panel of instant values (the last one of each series), coloured by thresholds or mappings."""
    panel = (
        stat.Panel()
        .reduce_options(common_builders.ReduceDataOptions().calcs(["lastNotNull"]).values(False))
        .graph_mode(common.BigValueGraphMode.NONE)
        .color_mode(common.BigValueColorMode.BACKGROUND if background else common.BigValueColorMode.VALUE)
        .text_mode(common.BigValueTextMode.VALUE_AND_NAME if names else common.BigValueTextMode.AUTO)
        .thresholds(_thresholds(*steps))
    )
    if mappings:
        panel = panel.mappings(mappings)
    if decimals is not None:
        panel = panel.decimals(decimals)
    return _common(panel, title, description, unit, width, height, queries)


def grid(
    title: str,
    description: str,
    unit: str,
    queries: list,
    *,
    transformations: list[models.DataTransformerConfig],
    width: int = 12,
    height: int = 8,
    steps: tuple[tuple[float | None, str], ...] | None = None,
):
    """A table of instant values (batch figures keyed by a label such as as_of)."""
    panel = table.Panel().show_header(True).cell_height(common.TableCellHeight.SM)
    for transformation in transformations:
        panel = panel.with_transformation(transformation)
    if steps is not None:
        panel = panel.thresholds(_thresholds(*steps)).cell_options(common.TableColorTextCellOptions())
    return _common(panel, title, description, unit, width, height, queries)


def _hide(*columns: str) -> models.DataTransformerConfig:
    return models.DataTransformerConfig(id_val="organize", options={"excludeByName": dict.fromkeys(columns, True)})


def _matrix(rows: str, columns: str) -> models.DataTransformerConfig:
    """Instant results keyed by two labels as a table: one row per `rows` value, one column per `columns` value."""
    options = {"rowField": rows, "columnField": columns, "valueField": "Value"}
    return models.DataTransformerConfig(id_val="groupingToMatrix", options=options)


def _layout(board: dashboard.Dashboard, rows: list[tuple[str, list]]) -> dashboard.Dashboard:
    """Rows of panels laid out left to right, top to bottom (each row's widths add up to multiples of 24); panel
    ids numbered in order, so the JSON is the same on every run."""
    next_id = 1
    for title, panels in rows:
        board = board.with_row(dashboard.Row(title).id(next_id))
        next_id += 1
        for panel in panels:
            board = board.with_panel(panel.id(next_id))
            next_id += 1
    return board


def _board(
    uid: str, title: str, description: str, rows: list[tuple[str, list]], *, since: str = "now-6h"
) -> dashboard.Dashboard:
    board = (
        dashboard.Dashboard(title)
        .uid(uid)
        .description(description)
        .tags([TAG])
        .timezone("browser")
        .time(since, "now")
        .refresh("30s")
        .tooltip(models.DashboardCursorSync.CROSSHAIR)
        .readonly()  # provisioned from this file: edits in Grafana would be lost at the next sync
        .with_variable(
            dashboard.DatasourceVariable(DATASOURCE_VARIABLE)
            .label("Data source")
            .type("prometheus")
            .description("The Prometheus that scrapes StreamFlow's servers and its Pushgateway.")
        )
        .link(
            dashboard.DashboardLink("StreamFlow")
            .type(models.DashboardLinkType.DASHBOARDS)
            .tags([TAG])
            .as_dropdown(True)
            .include_vars(True)
            .keep_time(True)
        )
    )
    return _layout(board, rows)


# ------------------------------------------------------------------------------------------------ serving


def _rate(metric: str, by: str, selector: str = "") -> str:
    return f"sum by ({by}) (rate({metric}{selector}[$__rate_interval]))"


def _quantile(q: float) -> str:
    return f"histogram_quantile({q}, {_rate('streamflow_request_duration_seconds_bucket', 'server, le')})"


def _share(selector: str) -> str:
    """Share of the requests whose status matches `selector`, per server: 0 (not empty) while no request matched,
    since a counter's label set only exists once it has been counted."""
    part = _rate("streamflow_requests_total", "server", selector)
    whole = _rate("streamflow_requests_total", "server")
    return f"({part} or {whole} * 0) / {whole}"


def serving() -> dashboard.Dashboard:
    """Predictor and transformer: traffic, errors, latency, what is predicted, and which model answers."""
    errors = '{status=~"' + SERVER_ERRORS + '"}'
    refused = '{status!~"' + ANSWERED + '", status!~"' + SERVER_ERRORS + '"}'
    overview = [
        single(
            "Servers up",
            "Scrape targets answering, per server (pods in the cluster, processes with make monitor). Red: none of "
            "that server answers, so no request can be served; fewer than the replicas you run: a pod is down or "
            "not scraped. A target down for 5 minutes pages (StreamflowServerDown); no target at all pages too "
            "(StreamflowPredictorAbsent, StreamflowTransformerAbsent).",
            "short",
            [_query('sum by (server) (up{server=~"predictor|transformer"})', "{{server}}", instant=True)],
            steps=((None, "red"), (1, "green")),
            names=True,
        ),
        single(
            "Request rate",
            "Requests answered per second by each server, every status. A drop to zero while users are calling "
            "means requests no longer reach the servers (graph, Service, port-forward).",
            "reqps",
            [_query(_rate("streamflow_requests_total", "server"), "{{server}}", instant=True)],
            names=True,
        ),
        single(
            "Server error ratio",
            "Share of requests failing on the server side (HTTP 5xx, gRPC UNAVAILABLE / INTERNAL / UNKNOWN / "
            "DEADLINE_EXCEEDED / DATA_LOSS). Above 5% for 10 minutes pages (StreamflowErrorRatioHigh); orange "
            "from 1% deserves a look at the server logs. UNAVAILABLE or 503 from the transformer usually means "
            "the online store cannot be read.",
            "percentunit",
            [_query(_share(errors), "{{server}}", instant=True)],
            steps=((None, "green"), (0.01, "orange"), (ERROR_RATIO_PAGE, "red")),
            names=True,
        ),
        single(
            "p99 latency",
            "99th percentile of request time per server over the rate window. Above 100 ms for 10 minutes "
            "warns (StreamflowLatencyP99High): a 1-user request takes a few ms, so look at in-flight requests "
            "and batch sizes first.",
            "s",
            [_query(_quantile(0.99), "{{server}}", instant=True)],
            steps=((None, "green"), (LATENCY_P99_WARN_SECONDS, "red")),
            names=True,
        ),
        single(
            "Registry reachable",
            "Whether each predictor reached the MLflow registry at its last poll (every 10 s by default). "
            "UNREACHABLE: the served model keeps answering, but a promotion will not be picked up until the "
            "registry answers again; 15 minutes of it warns (StreamflowRegistryUnreachable).",
            "short",
            [_query("min by (server, alias) (streamflow_registry_reachable)", "{{alias}}", instant=True)],
            steps=((None, "red"), (1, "green")),
            mappings=_value_map({"1": ("reachable", "green"), "0": ("UNREACHABLE", "red")}),
            background=True,
            names=True,
        ),
        single(
            "Pending model version",
            "The registry version a predictor is trying to load but has not swapped in yet (none: nothing "
            "pending). A version staying here for 5 minutes warns (StreamflowModelReloadFailed): its download "
            "or load keeps failing, see Load failures below.",
            "short",
            [_query("max by (server, alias) (streamflow_model_version_pending)", "{{alias}}", instant=True)],
            steps=((None, "green"), (1, "orange")),
            mappings=_value_map({"0": ("none", "green")}),
            names=True,
            decimals=0,
        ),
    ]
    traffic = [
        series(
            "Requests per second by status and protocol",
            "Answered requests per second per server, protocol (rest, grpc) and status. 200/OK is the normal "
            "case; 422 (rest) or INVALID_ARGUMENT (grpc) from the transformer means features were missing for a "
            "requested user (see Missing features); 413 / RESOURCE_EXHAUSTED a batch over the size limit; "
            "5xx / UNAVAILABLE / INTERNAL are failures of the server.",
            "reqps",
            [
                _query(
                    _rate("streamflow_requests_total", "server, protocol, status"), "{{server}} {{protocol}} {{status}}"
                )
            ],
        ),
        series(
            "Error ratio",
            "Per server, the share of requests that failed on the server side (5xx and gRPC server codes) and "
            "the share refused as bad input (4xx, INVALID_ARGUMENT, ...). Server errors above 5% for 10 minutes "
            "page (StreamflowErrorRatioHigh, dashed line). Refused requests rising with a flat server error line "
            "is usually callers asking for unknown users or a stale online store (StreamflowMissingFeaturesHigh "
            "warns when 5% of transformer requests miss features).",
            "percentunit",
            [
                _query(_share(errors), "server errors {{server}}"),
                _query(_share(refused), "refused {{server}}"),
            ],
            min_value=0,
            threshold_line=ERROR_RATIO_PAGE,
        ),
        series(
            "In-flight requests",
            "Requests being processed right now, per server and protocol. A line that keeps growing while the "
            "request rate is flat means requests queue up (a slow feature store, large batches): latency "
            "follows.",
            "short",
            [_query("sum by (server, protocol) (streamflow_requests_in_flight)", "{{server}} {{protocol}}")],
            min_value=0,
        ),
        series(
            "Missing features by feature",
            "Features the transformer could not find per second, by feature. One feature climbing alone: its "
            "feature view was not materialized for the newest month (stale rows count as missing). All 14 "
            "climbing together: requests for unknown users (an unknown user counts every feature). Such requests "
            "are refused (422 / INVALID_ARGUMENT); 5% of them for 15 minutes warns (StreamflowMissingFeaturesHigh).",
            "cps",
            [_query(_rate("streamflow_missing_features_total", "feature"), "{{feature}}")],
            legend_right=True,
            min_value=0,
        ),
    ]
    latency = [
        series(
            "Latency p50 / p95 / p99 per server",
            "Request time quantiles per server, from the request duration histogram. p99 above 100 ms (dashed "
            "line) for 10 minutes warns (StreamflowLatencyP99High). The transformer's time includes the "
            "predictor's: when only the transformer is slow, look at the feature store.",
            "s",
            [
                _query(_quantile(0.5), "p50 {{server}}"),
                _query(_quantile(0.95), "p95 {{server}}"),
                _query(_quantile(0.99), "p99 {{server}}"),
            ],
            width=FULL_WIDTH,
            threshold_line=LATENCY_P99_WARN_SECONDS,
            min_value=0,
        ),
    ]
    predictions = [
        series(
            "Predictions by label",
            "Predictions per second by predicted label (1 = will churn, at the model's threshold). A sudden change "
            "in the share of label 1 with steady traffic means the inputs or the served model changed: compare "
            "with the model version panel and the quality dashboard.",
            "cps",
            [_query(_rate("streamflow_predictions_total", "label"), "label {{label}}")],
            width=8,
            min_value=0,
        ),
        _probability_heatmap(),
    ]
    model = [
        grid(
            "Model version served by each predictor",
            "The registered model version each predictor serves, with its registry alias and MLflow run. After a "
            "promotion every production predictor should show the new version within a poll interval; two "
            "versions under one alias for long means a predictor failed to reload. A predictor missing here while "
            "it is up has no model loaded (StreamflowNoModelLoaded after 15 minutes): expected on a fresh install "
            "until the first workflow promoted one.",
            "short",
            [
                _query(
                    "max by (server, alias, model, version, run_id, pod) (streamflow_model_info)",
                    instant=True,
                    fmt=PromQueryFormat.TABLE,
                )
            ],
            transformations=[_hide("Time", "Value")],
        ),
        series(
            "Model reloads",
            "Reloads per rate window by result. swapped: a new version went live (expected after a promote or "
            "a rollback); failed: the new version could not be loaded and the previous one keeps serving "
            "(StreamflowModelReloadFailed).",
            "short",
            [
                _query(
                    "sum by (server, result) (increase(streamflow_model_reloads_total[$__rate_interval]))",
                    "{{result}}",
                )
            ],
            min_value=0,
            decimals=0,
        ),
        series(
            "Load failures and pending version",
            "Failed model downloads or loads per rate window (A) and the version waiting to be loaded (B, 0 when "
            "none). Failures with a pending version: the artifact of that version cannot be read from MLflow "
            "(the predictor retries with backoff up to 300 s).",
            "short",
            [
                _query(
                    "sum by (server) (increase(streamflow_model_load_failures_total[$__rate_interval]))",
                    "load failures {{server}}",
                ),
                _query("max by (server, alias) (streamflow_model_version_pending)", "pending version {{alias}}"),
            ],
            min_value=0,
            decimals=0,
        ),
        series(
            "Registry reachable",
            "1 when the predictor's last registry poll succeeded, 0 when it failed. Dips to 0 explain reloads "
            "that did not happen; a flat 0 means MLflow is down or unreachable (NetworkPolicy, credentials).",
            "short",
            [_query("min by (server, alias) (streamflow_registry_reachable)", "{{alias}}")],
            stepped=True,
            min_value=0,
            decimals=0,
        ),
    ]
    return _board(
        "streamflow-serving",
        "StreamFlow / Serving",
        "The KServe predictor and Feast transformer: traffic, errors, latency, predictions and the model served.",
        [
            ("Overview", overview),
            ("Traffic", traffic),
            ("Latency", latency),
            ("Predictions", predictions),
            ("Model", model),
        ],
    )


def _probability_heatmap():
    expr = "sum by (le) (increase(streamflow_churn_probability_bucket[$__rate_interval]))"
    panel = (
        heatmap.Panel()
        .calculate(False)
        .rows_frame(heatmap.RowsHeatmapOptions().layout(common.HeatmapCellLayout.LE))
        .y_axis(heatmap.YAxisConfig().unit("percentunit").decimals(0))
        .cell_values(heatmap.CellValues().unit("short"))
        .show_legend()
        .tooltip(heatmap.HeatmapTooltip().mode(common.TooltipDisplayMode.SINGLE).y_histogram(True))
    )
    return _common(
        panel,
        "Churn probability distribution",
        "How many returned churn probabilities fell in each 5% bucket per rate window. The shape should stay "
        "alike from day to day; mass moving towards 100% (or towards 0%) without a new model version is a "
        "sign of input drift, which the quality dashboard confirms at the next drift run.",
        "short",
        FULL_WIDTH - 8,
        8,
        [_query(expr, "{{le}}", fmt=PromQueryFormat.HEATMAP)],
    )


# ------------------------------------------------------------------------------------------------ pipelines


def pipelines() -> dashboard.Dashboard:
    """The batch steps (pushed to the Pushgateway): their last runs, the months ingested, the monthly decision and
    the month's retention list (`streamflow score`)."""
    steps = [
        single(
            "Last run succeeded, per step",
            "One tile per step: FAILED means the last run of that step ended in error (its workflow's logs, or "
            "the step's one JSON line, say why). A step stays FAILED until it next succeeds; monthly FAILED for "
            "an hour warns (StreamflowMonthlyWorkflowFailed): this month's loop stopped at the stage shown FAILED "
            "beside it.",
            "short",
            [_query("max by (step) (streamflow_step_success)", "{{step}}", instant=True)],
            width=FULL_WIDTH,
            height=5,
            steps=((None, "red"), (1, "green")),
            mappings=_value_map({"1": ("OK", "green"), "0": ("FAILED", "red")}),
            background=True,
            names=True,
        ),
        single(
            "Time since last success",
            "How long ago each step last succeeded. The monthly loop (monthly, ingest, snapshot, "
            "features_materialize, drift) runs once a month: orange past 35 days means a month was skipped "
            "(StreamflowMonthlyWorkflowLate for the monthly step). Steps run by hand (train, promote, demo) may "
            "be older.",
            "s",
            [
                _query(
                    "time() - max by (step) (streamflow_step_last_success_timestamp_seconds)", "{{step}}", instant=True
                )
            ],
            width=12,
            height=6,
            steps=((None, "green"), (MONTH_SECONDS, "orange")),
            names=True,
        ),
        single(
            "Time since last run",
            "How long ago each step last ended, success or not. Much shorter than its time since last success: "
            "the step has been failing since; equal: its last run succeeded.",
            "s",
            [_query("time() - max by (step) (streamflow_step_last_run_timestamp_seconds)", "{{step}}", instant=True)],
            width=12,
            height=6,
            names=True,
        ),
        series(
            "Duration of each step's last run",
            "Seconds the last run of each step took, as pushed at its end. A step suddenly taking several times "
            "longer (ingest of a larger month, train, drift on more rows) can push the monthly workflow past "
            "its deadline.",
            "s",
            [_query("max by (step) (streamflow_step_duration_seconds)", "{{step}}")],
            width=FULL_WIDTH,
            stepped=True,
            legend_calcs=("lastNotNull", "max"),
            legend_right=True,
            min_value=0,
        ),
    ]
    months = [
        grid(
            "Rows ingested and quarantined per month",
            "Rows per month (as_of) over the six tables: input = loaded + quarantined. A month with far fewer "
            "input rows than the others, or loaded 0, deserves a look at its source folder.",
            "short",
            [
                _query(
                    "sum by (as_of, kind) (streamflow_ingest_rows)",
                    instant=True,
                    fmt=PromQueryFormat.TABLE,
                )
            ],
            transformations=[_matrix("as_of", "kind")],
            width=8,
        ),
        grid(
            "Quarantine ratio per month",
            "Share of each table's input rows quarantined, per month (as_of). Orange: above 0.5%, which warns "
            "(StreamflowQuarantineRatioHigh); red: above 1% (STREAMFLOW_QUARANTINE_MAX_SHARE), so the month "
            "failed and nothing of it was loaded. The reasons are in "
            "STREAMFLOW_HOME/quarantine/<as_of>/quarantine.csv and the quarantine table.",
            "percentunit",
            [
                _query(
                    '(sum by (as_of, table) (streamflow_ingest_rows{kind="quarantined"})'
                    ' or sum by (as_of, table) (streamflow_ingest_rows{kind="input"}) * 0)'
                    ' / sum by (as_of, table) (streamflow_ingest_rows{kind="input"})',
                    instant=True,
                    fmt=PromQueryFormat.TABLE,
                )
            ],
            transformations=[_matrix("as_of", "table")],
            width=8,
            steps=((None, "green"), (QUARANTINE_WARN_SHARE, "orange"), (QUARANTINE_MAX_SHARE, "red")),
        ),
        grid(
            "Decision per month",
            "What the monthly workflow decided for each month: BOOTSTRAP (first month: a first model), "
            "NO_ACTION (the production model is still right) or RETRAIN (drift, target drift or a drop of "
            "realized AUC: the quality dashboard says which). RETRAIN month after month means the retrained "
            "models do not hold.",
            "short",
            [
                _query(
                    "max by (as_of, decision) (streamflow_monthly_decision)",
                    instant=True,
                    fmt=PromQueryFormat.TABLE,
                )
            ],
            transformations=[_hide("Time", "Value")],
            width=8,
        ),
    ]
    scores = [
        grid(
            "Users scored per month",
            "Users of each month's snapshot on the retention list (`streamflow score`, run by monthly after the "
            "gate, or by hand with the streamflow-score workflow). It should equal the month's users: fewer "
            "means the list was not rebuilt after a corrected re-ingest.",
            "short",
            [_query("max by (as_of) (streamflow_score_rows)", instant=True, fmt=PromQueryFormat.TABLE)],
            transformations=[_hide("Time")],
            width=8,
        ),
        grid(
            "Risk on the list per month",
            "Per month (as_of): the share of users at or above the production model's threshold (labelled "
            "churners: the calls the retention team faces) and the mean churn probability. A share that jumps "
            "while the mean probability holds still means the threshold moved with a new model version.",
            "percentunit",
            [
                _query(
                    'label_replace(max by (as_of) (streamflow_score_share_above_threshold), "figure", '
                    '"share at or above threshold", "", "") or label_replace(max by (as_of) '
                    '(streamflow_score_mean_probability), "figure", "mean probability", "", "")',
                    instant=True,
                    fmt=PromQueryFormat.TABLE,
                )
            ],
            transformations=[_matrix("as_of", "figure")],
            width=16,
        ),
    ]
    return _board(
        "streamflow-pipelines",
        "StreamFlow / Pipelines",
        "The batch steps (Argo workflows or the CLI), as pushed to the Pushgateway: last runs, months ingested, "
        "monthly decisions, the monthly retention list.",
        [("Steps", steps), ("Months", months), ("Retention list", scores)],
        since="now-7d",  # batch figures change once a run, a month apart on the cluster
    )


# ------------------------------------------------------------------------------------------------ quality


def quality() -> dashboard.Dashboard:
    """The drift job's figures: data, target and prediction drift, realized AUC, and the production version."""
    last_run = [
        single(
            "Drift decision",
            "The last drift job's decision. RETRAIN: drift share at or above its threshold, the target drifted, "
            "or realized AUC fell 0.05 below validation; the panels below say which.",
            "short",
            [_query("max(streamflow_drift_decision)", instant=True)],
            width=3,
            steps=((None, "green"), (1, "orange")),
            mappings=_value_map({"1": ("RETRAIN", "orange"), "0": ("NO_ACTION", "green")}),
            background=True,
        ),
        single(
            "Drift share",
            "Share of the 14 features whose drift test failed in the last drift run. At or above the threshold "
            "(0.30 by default, STREAMFLOW_DRIFT_SHARE_THRESHOLD) the job decides RETRAIN.",
            "percentunit",
            [_query("max(streamflow_drift_share)", instant=True)],
            width=3,
            steps=((None, "green"), (DRIFT_SHARE_THRESHOLD, "orange")),
        ),
        single(
            "Target drifted",
            "Whether churn_label's distribution drifted between the two months compared. YES alone decides "
            "RETRAIN: the churn rate itself moved.",
            "short",
            [_query("max(streamflow_target_drift)", instant=True)],
            width=3,
            steps=((None, "green"), (1, "orange")),
            mappings=_value_map({"1": ("YES", "orange"), "0": ("no", "green")}),
            background=True,
        ),
        single(
            "Since last drift run",
            "How long ago the drift job last finished. It runs inside the monthly workflow: past 35 days the "
            "figures on this dashboard are more than a month old (a skipped month).",
            "s",
            [_query("time() - max(streamflow_drift_last_run_timestamp_seconds)", instant=True)],
            width=3,
            steps=((None, "green"), (MONTH_SECONDS, "orange")),
        ),
        grid(
            "Months compared",
            "The last drift run: the reference month (the production model's training month), the current "
            "month, the model version judged and the decision. A reference month far behind the current one "
            "means no retrain was promoted for a long time.",
            "short",
            [
                _query(
                    "max by (reference_as_of, current_as_of, model_version, decision) (streamflow_drift_run_info)",
                    instant=True,
                    fmt=PromQueryFormat.TABLE,
                )
            ],
            transformations=[_hide("Time", "Value")],
            height=4,
        ),
    ]
    drift = [
        series(
            "Drift share against its threshold",
            "Share of features that drifted at each drift run (A) and the threshold the job decides with (B). "
            "A at or above B is a RETRAIN and warns (StreamflowDriftShareHigh); A creeping towards B over months "
            "is drift building up before it decides.",
            "percentunit",
            [
                _query("max(streamflow_drift_share)", "drift share"),
                _query("max(streamflow_drift_share_threshold)", "threshold"),
            ],
            stepped=True,
            legend_calcs=("lastNotNull",),
            min_value=0,
        ),
        single(
            "Drifted features",
            "Which features drifted in the last drift run (red). A few related features drifting together "
            "(e.g. watch_hours_30d and avg_session_mins_7d) usually points at one change in the product or in "
            "the data feed rather than at the customers.",
            "short",
            [_query("max by (feature) (streamflow_feature_drift)", "{{feature}}", instant=True)],
            width=12,
            height=8,
            steps=((None, "green"), (1, "red")),
            mappings=_value_map({"1": ("drifted", "red"), "0": ("stable", "green")}),
            background=True,
            names=True,
        ),
        series(
            "Drift score per feature",
            "Each feature's drift score at each run: normed Wasserstein distance for numbers, Jensen-Shannon "
            "distance for categories; higher is more drift. A feature drifts when its score reaches the column "
            "threshold (0.1 by default, STREAMFLOW_DRIFT_COLUMN_THRESHOLD, dashed line).",
            "short",
            [_query("max by (feature, method) (streamflow_feature_drift_score)", "{{feature}} ({{method}})")],
            width=FULL_WIDTH,
            height=9,
            stepped=True,
            legend_calcs=("lastNotNull", "max"),
            legend_right=True,
            min_value=0,
            threshold_line=DRIFT_COLUMN_THRESHOLD,
        ),
        series(
            "Target and prediction drift",
            "Drift scores of churn_label (target) and of the production model's scores (prediction) between the "
            "months compared; dashed line at the default column threshold 0.1. Prediction drift without target "
            "drift: the inputs moved but churn did not (yet).",
            "short",
            [
                _query("max(streamflow_target_drift_score)", "target drift score"),
                _query("max(streamflow_prediction_drift_score)", "prediction drift score"),
            ],
            width=FULL_WIDTH,
            stepped=True,
            legend_calcs=("lastNotNull", "max"),
            min_value=0,
            threshold_line=DRIFT_COLUMN_THRESHOLD,
        ),
    ]
    model = [
        series(
            "Validation vs realized AUC",
            "ROC AUC of the judged model version at validation and on the current month's own labels "
            "(realized), and the line the drift job's margin below validation (STREAMFLOW_QUALITY_DROP_MARGIN, "
            "pushed as streamflow_quality_drop_margin): realized AUC "
            "under that line decides RETRAIN and warns (StreamflowRealizedAucDropped). Realized AUC drifting down "
            "month after month is the model ageing.",
            "short",
            [
                _query("max by (model_version, kind) (streamflow_model_auc)", "v{{model_version}} {{kind}}"),
                _query(
                    'max by (model_version) (streamflow_model_auc{kind="validation"})'
                    " - on () group_left () max(streamflow_quality_drop_margin)",
                    "v{{model_version}} retrain below",
                ),
            ],
            stepped=True,
            legend_calcs=("lastNotNull",),
            decimals=3,
        ),
        series(
            "Production version over time",
            "The registry version holding the production alias after each promote, retrain or monthly run. A "
            "step up is a promotion (or a step down, a rollback); the serving dashboard shows when the "
            "predictors actually swapped to it.",
            "short",
            [_query("max(streamflow_production_model_version)", "production version")],
            stepped=True,
            legend_calcs=("lastNotNull",),
            decimals=0,
        ),
    ]
    return _board(
        "streamflow-quality",
        "StreamFlow / Quality",
        "Is the production model still right? Data, target and prediction drift from the drift job (Evidently), "
        "realized against validation AUC, and the production version.",
        [("Last drift run", last_run), ("Data drift", drift), ("Model quality", model)],
        since="now-7d",
    )


# ------------------------------------------------------------------------------------------------ files

DASHBOARDS: dict[str, Callable[[], dashboard.Dashboard]] = {
    "serving": serving,
    "pipelines": pipelines,
    "quality": quality,
}


def render(board: dashboard.Dashboard) -> str:
    """The dashboard as the committed JSON text: indented by 2, keys in the SDK's order, a final newline."""
    return json.dumps(board.build(), cls=JSONEncoder, indent=2) + "\n"


def generate() -> dict[str, str]:
    """{file name: JSON text} of every dashboard, from this source."""
    return {f"{name}.json": render(build()) for name, build in DASHBOARDS.items()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Write StreamFlow's Grafana dashboards as JSON beside this file.")
    parser.add_argument("--check", action="store_true", help="write nothing; exit 1 if a JSON file is out of date")
    parser.add_argument("--out", type=Path, default=HERE, help="folder of the JSON files (default: beside this file)")
    args = parser.parse_args(argv)
    generated = generate()
    if args.check:
        stale = [name for name, text in generated.items() if _read(args.out / name) != text]
        for name in stale:
            print(f"{args.out / name} differs from {Path(__file__).name}: run make dashboards", file=sys.stderr)
        return 1 if stale else 0
    for name, text in generated.items():
        (args.out / name).write_text(text, encoding="utf-8")
        print(f"wrote {args.out / name}")
    return 0


def _read(path: Path) -> str | None:
    return path.read_text(encoding="utf-8") if path.exists() else None


if __name__ == "__main__":
    sys.exit(main())
