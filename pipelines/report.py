"""The drift report a person opens: ``reports/evidently/drift_<A>_vs_<B>.html``.

Evidently's own page for the run is one section per compared column and nothing else. This page opens with what a
reader came for, in this order:

1. the decision and its reasons — StreamFlow's (:func:`pipelines.drift.decide`), word for word;
2. how many of the model features drifted, their share and the share at which the job retrains;
3. one table row per feature: Evidently's method, score, threshold and verdict;
4. the label's drift and rates, the drift of the model's scores, and the validation vs realized ROC AUC;

then Evidently's per-column widgets and its test summary, as the run's snapshot holds them.

The summary is made of Evidently's widgets (counters, a markdown text, its rich table) filled from the run's
``ValueDrift`` results, and the whole page is rendered by Evidently's HTML template, which inlines its JavaScript
and its icon font: the file opens without a network. Nothing is computed again: Evidently's ``DriftedColumnsCount``
(and the ``DataDriftPreset`` built on it) would run the test of every column a second time to count them, the very
cost ``pipelines.drift`` avoids by running one ``ValueDrift`` per column.
"""

from __future__ import annotations

import html
import re
import string
from typing import TYPE_CHECKING

from pipelines.drift import LABEL, PREDICTION, RETRAIN

if TYPE_CHECKING:
    from pipelines.drift import ColumnDrift, DriftResult

SCORE_DECIMALS = 4  # what the table shows; the JSON report keeps Evidently's full value
DETECTED, NOT_DETECTED = "Detected", "Not detected"
_MARKDOWN_SPECIAL = re.compile("([" + re.escape(string.punctuation) + "])")


def verdict(drifted: bool) -> str:
    """The word the report shows for a column's test."""
    return DETECTED if drifted else NOT_DETECTED


def render_html(result: DriftResult) -> str:
    """The whole report page for one drift run: the summary above, then Evidently's widgets of the same run.

    Args:
        result: the run, decided (its snapshot may be None when no column could be given to Evidently).

    Returns:
        A self-contained HTML document (script and font inlined, nothing fetched when it opens).
    """
    from evidently.core.metric_types import render_widgets
    from evidently.legacy.renderers.html_widgets import group_widget, text_widget

    snapshot = result.comparison.snapshot
    model = None if snapshot is None else snapshot.to_snapshot_model()
    plots = {} if snapshot is None else _plots_by_column(snapshot.dict(), model.widgets)
    widgets = [
        *_decision_widgets(result),
        *_share_widgets(result),
        _features_table(result, plots),
        *_outcome_widgets(result),
    ]
    tests = []
    if model is None:
        widgets.append(text_widget(title="Per-column detail", text="No column could be compared: NULL in every row."))
    else:
        widgets.append(group_widget(title="Per-column detail (Evidently)", widgets=model.widgets))
        tests = model.tests_widgets  # Evidently's test summary: its "Tests" tab
    page = render_widgets(widgets + tests, as_iframe=False)
    title = f"StreamFlow drift {result.reference_as_of} vs {result.current_as_of}: {result.decision}"
    return page.replace("<head>", f"<head>\n<title>{html.escape(title)}</title>", 1)


def _plots_by_column(report: dict, widgets: list) -> dict:
    """Evidently's plots (the tabbed widget each ``ValueDrift`` draws) by column, found by the metric they link."""
    columns = {metric["id"]: metric["config"]["column"] for metric in report["metrics"]}
    return {
        columns[metric_id]: widget
        for widget in widgets
        if widget.type == "tabs"
        for metric_id in widget.linked_metrics or ()
        if metric_id in columns
    }


def _md(text: str) -> str:
    """Plain text for Evidently's markdown widget: every ASCII punctuation escaped, so it reads as written."""
    return _MARKDOWN_SPECIAL.sub(r"\\\1", text)


def _decision_widgets(result: DriftResult) -> list:
    from evidently.legacy.renderers.html_widgets import CounterData, counter, text_widget

    reference, current = result.reference_as_of.isoformat(), result.current_as_of.isoformat()
    judged = (
        f"model version {result.model_version}: {current} ({result.rows[current]:,} labelled users) "
        f"compared with {reference} ({result.rows[reference]:,})"
    )
    heading = "Reasons to retrain" if result.decision == RETRAIN else "Checked, nothing calls for a retrain"
    reasons = "\n".join(f"- {_md(reason)}" for reason in result.reasons)
    return [
        counter(title="Decision", counters=[CounterData(judged, result.decision)]),
        text_widget(title=heading, text=reasons),
    ]


def _share_widgets(result: DriftResult) -> list:
    from evidently.legacy.renderers.html_widgets import CounterData, counter

    comp, limit = result.comparison, result.thresholds["drift_share"]
    return [
        counter(
            title="Data drift of the model features",
            counters=[
                CounterData.int("features compared", len(comp.features)),
                CounterData.int("features drifted", len(comp.drifted_features)),
                CounterData(f"drift share ({comp.drift_share:.1%})", f"{comp.drift_share:.2f}"),
                CounterData("drift share that retrains", f">= {limit:.2f}"),
            ],
        )
    ]


def _features_table(result: DriftResult, plots: dict):
    """One row per feature; a row opens on Evidently's plots of that column, as Evidently's own drift table does."""
    from evidently.legacy.renderers.html_widgets import ColumnDefinition, RichTableDataRow, RowDetails, rich_table_data

    comp = result.comparison
    # drifted first, then by score: the columns to look at lead
    ordered = sorted(comp.features, key=lambda c: (not c.drifted, -c.score))
    rows = [
        RichTableDataRow(
            fields={
                "column": c.column,
                "method": c.method,
                "score": f"{c.score:.{SCORE_DECIMALS}f}",
                "threshold": f"{c.threshold:g}",
                "drift": verdict(c.drifted),
                "note": c.note or "",
            },
            details=RowDetails().with_part("Evidently", plots[c.column]) if c.column in plots else None,
        )
        for c in ordered
    ]
    columns = [
        ColumnDefinition("Feature", "column"),
        ColumnDefinition("Method", "method"),
        ColumnDefinition("Score", "score"),
        ColumnDefinition("Threshold", "threshold"),
        ColumnDefinition("Drift", "drift"),
        ColumnDefinition("Note", "note"),
    ]
    title = (
        f"Drift detected in {len(comp.drifted_features)} of {len(comp.features)} features "
        f"(the test fails when the score reaches the threshold)"
    )
    return rich_table_data(title=title, columns=columns, data=rows, rows_per_page=len(rows))


def _drift_counter(column: ColumnDrift | None, name: str, what: str):
    from evidently.legacy.renderers.html_widgets import CounterData

    if column is None:
        return CounterData(f"{what}: not compared", "n/a")
    label = f"{what} ({name}): {column.method}, threshold {column.threshold:g}, {verdict(column.drifted).lower()}"
    return CounterData(label, f"{column.score:.{SCORE_DECIMALS}f}")


def _outcome_widgets(result: DriftResult) -> list:
    from evidently.legacy.renderers.html_widgets import CounterData, counter

    comp = result.comparison
    reference, current = result.reference_as_of.isoformat(), result.current_as_of.isoformat()
    rates = result.label_rate
    label = [
        _drift_counter(comp.target, LABEL, "label drift"),
        CounterData(f"{LABEL} rate, {reference} → {current}", f"{rates[reference]:.1%} → {rates[current]:.1%}"),
    ]
    prediction = [_drift_counter(comp.prediction, PREDICTION, "drift of the model's scores")]
    margin = result.thresholds["quality_drop"]
    realized = "undefined" if result.realized_auc is None else f"{result.realized_auc:.4f}"
    validation = "not recorded" if result.validation_auc is None else f"{result.validation_auc:.4f}"
    drop = "n/a" if result.auc_drop is None else f"{result.auc_drop:.4f}"
    quality = [
        CounterData(f"ROC AUC at validation (version {result.model_version})", validation),
        CounterData(f"ROC AUC realized on {current}'s labels", realized),
        CounterData(f"drop (retrains above {margin:g})", drop),
    ]
    return [
        counter(title="Label drift", counters=label),
        counter(title="Prediction drift", counters=prediction),
        counter(title="Model quality", counters=quality),
    ]
