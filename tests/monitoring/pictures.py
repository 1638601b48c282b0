"""Pictures of the three Grafana dashboards, drawn from a real Prometheus's data (issue 18).

No Grafana server runs here, so each committed dashboard JSON (charts/streamflow/dashboards/*.json) is drawn with
matplotlib instead, panel by panel at its ``gridPos`` on Grafana's 24-column grid: timeseries as lines over the run,
stat panels as big numbers (value mappings and threshold colours applied), the churn-probability heatmap as bucket
counts over time, tables as the instant result. Every query is the panel's own PromQL, with ``$__rate_interval`` at
what Grafana picks for a 1 s scrape, sent to the Prometheus of the monitoring scenario (tests/monitoring/scenario.py).

    python -m tests.monitoring.pictures --out docs/img/dashboards     # what `make pictures` runs (~3 minutes)

The scenario runs in a temporary STREAMFLOW_HOME; the README shows the PNGs this writes.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import math
import os
import re
import sys
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

ROOT = Path(__file__).resolve().parents[2]
DASHBOARDS = ROOT / "charts" / "streamflow" / "dashboards"
BOARDS = ("serving", "pipelines", "quality")
RATE_INTERVAL = "30s"  # Grafana's $__rate_interval at a 1 s scrape interval and a range of minutes
STEP_SECONDS = 2.0

# Figure geometry, fixed so that a picture's size depends on its dashboard's layout only.
DPI = 100
WIDTH_PX = 1600
GRID_COLUMNS = 24
UNIT_PX = 34  # one grid unit of height (Grafana: 30 px + the gap between panels)
HEADER_PX = 64  # the dashboard title and time range
MARGIN_PX = 8
GAP_PX = 6
PANEL_TITLE_PX = 22

# Grafana's dark theme, approximately
BACKGROUND = "#111217"
PANEL = "#181b1f"
BORDER = "#2c3235"
TEXT = "#ccccdc"
WEAK_TEXT = "#8e8e9e"
GRID = "#2c3235"
NAMED_COLORS = {
    "green": "#73bf69",
    "red": "#f2495c",
    "orange": "#ff9830",
    "dark-orange": "#fa6400",
    "yellow": "#fade2a",
    "blue": "#5794f2",
    "purple": "#b877d9",
    "text": TEXT,
}
SERIES_COLORS = ("#7eb26d", "#eab839", "#6ed0e0", "#ef843c", "#e24d42", "#1f78c1", "#ba43a9", "#705da0",
                 "#508642", "#cca300", "#447ebc", "#c15c17", "#890f02", "#0a437c", "#6d1f62", "#584477")  # fmt: skip
LEGEND = re.compile(r"\{\{\s*(\w+)\s*\}\}")


class Source(Protocol):
    """What is drawn from: tests.monitoring.scenario.Scenario (its Prometheus's instant and range queries)."""

    def query(self, expr: str, at: float | None = None) -> dict[str, Any]: ...

    def query_range(self, expr: str, start: float, end: float, step: float) -> dict[str, Any]: ...


@dataclass(frozen=True)
class Drawn:
    """One panel as drawn: its dashboard, title, type and how many series (table rows, heatmap buckets) it showed."""

    board: str
    title: str
    kind: str
    series: int


class PanelError(Exception):
    """A panel's query failed; the message names the dashboard, the panel and the query."""


# ------------------------------------------------------------------------------------------------------- geometry


def load_board(name: str) -> dict[str, Any]:
    return json.loads((DASHBOARDS / f"{name}.json").read_text(encoding="utf-8"))


def all_panels(board: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """Every panel, rows and the panels a collapsed row holds included (as queries.panels)."""
    for panel in board.get("panels") or []:
        yield panel
        yield from panel.get("panels") or []


def grid_units(board: dict[str, Any]) -> int:
    return max(p["gridPos"]["y"] + p["gridPos"]["h"] for p in all_panels(board))


def figure_size(board: dict[str, Any]) -> tuple[int, int]:
    """(width, height) in pixels of a dashboard's picture: fixed width, height from its grid."""
    return WIDTH_PX, HEADER_PX + grid_units(board) * UNIT_PX + MARGIN_PX


def _panel_box(pos: dict[str, int], height_px: int) -> tuple[float, float, float, float]:
    """A gridPos as a figure rectangle (left, bottom, width, height), fractions of the figure."""
    column = (WIDTH_PX - 2 * MARGIN_PX) / GRID_COLUMNS
    left = MARGIN_PX + pos["x"] * column + GAP_PX / 2
    top = HEADER_PX + pos["y"] * UNIT_PX + GAP_PX / 2
    width = pos["w"] * column - GAP_PX
    height = pos["h"] * UNIT_PX - GAP_PX
    return left / WIDTH_PX, 1 - (top + height) / height_px, width / WIDTH_PX, height / height_px


def _inset(box: tuple[float, float, float, float], height_px: int, *, left: float = 0, right: float = 0,
           top: float = 0, bottom: float = 0) -> tuple[float, float, float, float]:  # fmt: skip
    """``box`` shrunk by margins given in pixels."""
    x, y, w, h = box
    return (x + left / WIDTH_PX, y + bottom / height_px, w - (left + right) / WIDTH_PX,
            h - (top + bottom) / height_px)  # fmt: skip


# ---------------------------------------------------------------------------------------------------------- units


def format_value(value: float, unit: str | None, decimals: int | None = None) -> str:
    """A value as Grafana writes it for the units the dashboards use (s, ms, reqps, cps, percentunit, short)."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "NaN"
    if math.isinf(value):
        return "∞" if value > 0 else "-∞"
    if unit == "percentunit":
        return f"{_number(value * 100, decimals)}%"
    if unit == "percent":
        return f"{_number(value, decimals)}%"
    if unit in ("s", "ms"):
        return _duration(value / 1000 if unit == "ms" else value, decimals)
    if unit == "reqps":
        return f"{_short(value, decimals)} req/s"
    if unit == "cps":
        return f"{_short(value, decimals)} c/s"
    return _short(value, decimals)


def _number(value: float, decimals: int | None) -> str:
    if decimals is not None:
        return f"{value:.{decimals}f}"
    if value == 0:
        return "0"
    digits = max(0, 2 - int(math.floor(math.log10(abs(value)))))  # three significant digits
    text = f"{value:.{min(digits, 4)}f}"
    return text.rstrip("0").rstrip(".") if "." in text else text


def _short(value: float, decimals: int | None) -> str:
    for size, suffix in ((1e9, " B"), (1e6, " M"), (1e3, " K")):
        if abs(value) >= size:
            return f"{_number(value / size, decimals)}{suffix}"
    return _number(value, decimals)


def _duration(seconds: float, decimals: int | None) -> str:
    magnitude = abs(seconds)
    if magnitude == 0:
        return "0 s"
    for limit, size, suffix in ((1e-3, 1e-6, "µs"), (1, 1e-3, "ms"), (60, 1, "s"), (3600, 60, "min"),
                                (86400, 3600, "hour"), (7 * 86400, 86400, "day")):  # fmt: skip
        if magnitude < limit:
            return f"{_number(seconds / size, decimals)} {suffix}"
    return f"{_number(seconds / (7 * 86400), decimals)} week"


def color(name: str | None) -> str:
    if not name or name == "transparent":
        return TEXT
    return NAMED_COLORS.get(name, name)


def threshold_color(defaults: dict[str, Any], value: float) -> str | None:
    """The colour of the last threshold step at or below ``value`` (Grafana's absolute thresholds)."""
    steps = (defaults.get("thresholds") or {}).get("steps") or []
    chosen = None
    for step in steps:
        if step.get("value") is None or value >= step["value"]:
            chosen = step.get("color")
    return None if chosen in (None, "transparent") else color(chosen)


def mapped(defaults: dict[str, Any], value: float) -> tuple[str, str] | None:
    """(text, colour) of a value mapping that matches ``value``, if any."""
    for mapping in defaults.get("mappings") or []:
        if mapping.get("type") != "value":
            continue
        for key, result in (mapping.get("options") or {}).items():
            try:
                matches = float(key) == value
            except ValueError:
                continue
            if matches:
                return result.get("text", key), color(result.get("color"))
    return None


# -------------------------------------------------------------------------------------------------------- queries


def _expr(target: dict[str, Any]) -> str:
    return target["expr"].replace("$__rate_interval", RATE_INTERVAL)


def legend(target: dict[str, Any], labels: dict[str, str], expr: str) -> str:
    """A series' name: the target's legendFormat with {{label}} filled in, else its labels, else the query."""
    fmt = target.get("legendFormat")
    if fmt and fmt != "__auto":
        name = LEGEND.sub(lambda m: labels.get(m.group(1), ""), fmt).strip()
        if name:
            return name
    shown = {k: v for k, v in labels.items() if k != "__name__"}
    if shown:
        return "{" + ", ".join(f'{k}="{v}"' for k, v in sorted(shown.items())) + "}"
    return expr


def _instant(source: Source, where: str, target: dict[str, Any], at: float) -> list[dict[str, Any]]:
    try:
        data = source.query(_expr(target), at)
    except Exception as err:  # noqa: BLE001 - re-raised naming the panel
        raise PanelError(f"{where}: {_expr(target)}: {err}") from err
    if data.get("resultType") == "scalar":
        return [{"metric": {}, "value": data["result"]}]
    return data["result"]


def _range(source: Source, where: str, target: dict[str, Any], start: float, end: float) -> list[dict[str, Any]]:
    try:
        return source.query_range(_expr(target), start, end, STEP_SECONDS)["result"]
    except Exception as err:  # noqa: BLE001
        raise PanelError(f"{where}: {_expr(target)}: {err}") from err


def _floats(values: Sequence[Sequence[Any]]) -> tuple[list[float], list[float]]:
    return [float(t) for t, _ in values], [float(v) for _, v in values]


# -------------------------------------------------------------------------------------------------------- drawing


def render(run: Source, out: Path, start: float, end: float, drawn: list[Drawn] | None = None) -> list[Path]:
    """Draw the three dashboards from ``run``'s Prometheus over [start, end] into ``out``.

    Args:
        run: the monitoring scenario (anything with its ``query`` and ``query_range``).
        out: folder for serving.png, pipelines.png and quality.png (created if missing).
        start: first instant drawn (Unix seconds).
        end: last instant drawn; stat and table panels show the values at this instant.
        drawn: if given, one ``Drawn`` per non-row panel is appended to it, saying how many series it drew.

    Returns:
        The PNG paths, in the order serving, pipelines, quality.

    Raises:
        PanelError: a panel's query failed (the message names the panel and the query).
    """
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for name in BOARDS:
        path = out / f"{name}.png"
        found = render_board(run, load_board(name), path, start, end)
        if drawn is not None:
            drawn.extend(found)
        paths.append(path)
    return paths


def render_board(run: Source, board: dict[str, Any], path: Path, start: float, end: float) -> list[Drawn]:
    """Draw one dashboard into ``path``; returns what each non-row panel drew."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    width, height = figure_size(board)
    fig = Figure(figsize=(width / DPI, height / DPI), dpi=DPI, facecolor=BACKGROUND)
    FigureCanvasAgg(fig)
    first, last = (dt.datetime.fromtimestamp(t, dt.UTC) for t in (start, end))
    fig.text(MARGIN_PX / width, 1 - 26 / height, board.get("title", ""), color=TEXT, fontsize=17,
             fontweight="bold", va="baseline")  # fmt: skip
    fig.text(MARGIN_PX / width, 1 - 48 / height,
             f"{first:%Y-%m-%d %H:%M:%S} to {last:%H:%M:%S} UTC ({_duration(end - start, 0)}) · drawn from "
             "Prometheus by tests/monitoring/pictures.py, laid out as the Grafana dashboard",
             color=WEAK_TEXT, fontsize=10, va="baseline")  # fmt: skip
    uid = board.get("uid") or path.stem
    drawn = []
    for panel in all_panels(board):
        box = _panel_box(panel["gridPos"], height)
        if panel["type"] == "row":
            _row(fig, box, panel)
            continue
        where = f"{uid} / {panel.get('title', '')!r}"
        draw = {"timeseries": _timeseries, "stat": _stat, "heatmap": _heatmap, "table": _table}.get(panel["type"])
        if draw is None:
            raise PanelError(f"{where}: panel type {panel['type']!r} is not drawn by this module")
        body = _frame(fig, box, panel, height)
        series = draw(fig, body, panel, run, start, end, height, where)
        if series == 0:
            fig.text(body[0] + body[2] / 2, body[1] + body[3] / 2, "No data", color=WEAK_TEXT, fontsize=12,
                     ha="center", va="center")  # fmt: skip
        drawn.append(Drawn(uid, panel.get("title", ""), panel["type"], series))
    fig.savefig(path, dpi=DPI, facecolor=BACKGROUND, metadata={"Software": None})
    return drawn


def _row(fig: Any, box: tuple[float, float, float, float], panel: dict[str, Any]) -> None:
    x, y, w, h = box
    fig.text(x, y + h * 0.3, panel.get("title", ""), color=TEXT, fontsize=13, fontweight="bold", va="bottom")
    fig.add_artist(_line(fig, x, x + w, y + h * 0.15))


def _line(fig: Any, x0: float, x1: float, y: float) -> Any:
    from matplotlib.lines import Line2D

    return Line2D([x0, x1], [y, y], transform=fig.transFigure, color=BORDER, linewidth=1)


def _frame(fig: Any, box: tuple[float, float, float, float], panel: dict[str, Any], height_px: int):
    """The panel's background and title; returns the rectangle left for its content."""
    from matplotlib.patches import FancyBboxPatch

    x, y, w, h = box
    fig.add_artist(FancyBboxPatch((x, y), w, h, boxstyle="round,pad=0,rounding_size=0.002", transform=fig.transFigure,
                                  facecolor=PANEL, edgecolor=BORDER, linewidth=1, zorder=-1))  # fmt: skip
    fig.text(x + 8 / WIDTH_PX, y + h - 15 / height_px, panel.get("title", ""), color=TEXT, fontsize=10,
             fontweight="bold", va="baseline")  # fmt: skip
    return _inset(box, height_px, left=6, right=6, top=PANEL_TITLE_PX, bottom=4)


def _axes(fig: Any, rect: tuple[float, float, float, float]) -> Any:
    ax = fig.add_axes(rect, facecolor=PANEL)
    for side in ("top", "right"):
        ax.spines[side].set_visible(False)
    for side in ("left", "bottom"):
        ax.spines[side].set_color(BORDER)
    ax.tick_params(colors=WEAK_TEXT, labelsize=8, length=2)
    ax.grid(True, color=GRID, linewidth=0.6)
    ax.set_axisbelow(True)
    return ax


def _time_axis(ax: Any, start: float, end: float) -> None:
    from matplotlib import dates, ticker

    ax.set_xlim(dates.date2num(dt.datetime.fromtimestamp(start, dt.UTC)),
                dates.date2num(dt.datetime.fromtimestamp(end, dt.UTC)))  # fmt: skip
    ax.xaxis.set_major_locator(dates.AutoDateLocator(minticks=3, maxticks=8))
    ax.xaxis.set_major_formatter(dates.DateFormatter("%H:%M:%S", tz=dt.UTC))
    ax.xaxis.set_minor_locator(ticker.NullLocator())


def _unit_axis(ax: Any, unit: str | None, decimals: int | None) -> None:
    from matplotlib import ticker

    ax.yaxis.set_major_formatter(ticker.FuncFormatter(lambda v, _: format_value(v, unit)))
    ax.yaxis.set_major_locator(ticker.MaxNLocator(nbins=5, integer=decimals == 0, min_n_ticks=3))


def _timeseries(fig: Any, body, panel, run: Source, start: float, end: float, height_px: int, where: str) -> int:
    from matplotlib import dates

    defaults = panel.get("fieldConfig", {}).get("defaults", {})
    custom = defaults.get("custom") or {}
    unit, decimals = defaults.get("unit"), defaults.get("decimals")
    lines: list[tuple[str, list[float], list[float]]] = []
    for target in panel.get("targets") or []:
        for series in _range(run, where, target, start, end):
            times, values = _floats(series["values"])
            if any(not math.isnan(v) for v in values):
                lines.append((legend(target, series["metric"], _expr(target)), times, values))
    lines.sort(key=lambda line: line[0])
    placement = ((panel.get("options") or {}).get("legend") or {}).get("placement", "bottom")
    names = [f"{name}   {format_value(_last(values), unit, decimals)}" for name, _, values in lines]
    longest = max((len(n) for n in names), default=0)
    if placement == "right":
        legend_px = min(0.45 * body[2] * WIDTH_PX, 12 + 5.6 * longest)
        plot = _inset(body, height_px, left=56, right=legend_px + 8, bottom=20)
        columns = 1
    else:
        columns = max(1, min(len(names), int(body[2] * WIDTH_PX // (28 + 5.6 * longest))))
        rows = math.ceil(len(names) / columns)
        plot = _inset(body, height_px, left=56, right=4, bottom=22 + 12.5 * rows)
    ax = _axes(fig, plot)
    drawstyle = "steps-post" if custom.get("lineInterpolation") == "stepAfter" else "default"
    for i, (_, times, values) in enumerate(lines):
        when = [dates.date2num(dt.datetime.fromtimestamp(t, dt.UTC)) for t in times]
        tint = SERIES_COLORS[i % len(SERIES_COLORS)]
        ax.plot(when, values, color=tint, linewidth=max(1.0, custom.get("lineWidth", 1)) * 1.2, drawstyle=drawstyle,
                label=names[i])  # fmt: skip
        if custom.get("fillOpacity"):
            step = "post" if drawstyle == "steps-post" else None
            ax.fill_between(when, values, 0, color=tint, alpha=custom["fillOpacity"] / 100, linewidth=0, step=step)
    if (custom.get("thresholdsStyle") or {}).get("mode") in ("dashed", "line", "line+area", "dashed+area"):
        for step in (defaults.get("thresholds") or {}).get("steps") or []:
            if step.get("value") is not None and step.get("color") != "transparent":
                ax.axhline(step["value"], color=color(step["color"]), linestyle=(0, (6, 4)), linewidth=1)
    _time_axis(ax, start, end)
    _unit_axis(ax, unit, decimals)
    low, high = ax.get_ylim()
    finite = [v for _, _, values in lines for v in values if not math.isnan(v)]
    if finite and max(finite) - min(finite) < 1e-12:  # a flat line: a unit range above it, not +-5 %
        low, high = min(0.0, finite[0]), max(1.0, abs(finite[0]) * 1.25)
    if defaults.get("min") is not None:
        low = defaults["min"]
    if defaults.get("max") is not None:
        high = defaults["max"]
    ax.set_ylim(low, max(high, low + 1e-9))
    if lines:
        where_legend = (
            {"loc": "upper left", "bbox_to_anchor": (1.01, 1.0), "ncol": 1}
            if placement == "right"
            else {"loc": "upper left", "bbox_to_anchor": (0.0, -0.1), "ncol": columns}
        )
        ax.legend(**where_legend, fontsize=7.5, frameon=False, labelcolor=TEXT, handlelength=1.2,
                  borderaxespad=0, columnspacing=1.6, handletextpad=0.5, labelspacing=0.35)  # fmt: skip
    return len(lines)


def _last(values: Sequence[float]) -> float:
    return next((v for v in reversed(values) if not math.isnan(v)), math.nan)


def _stat(fig: Any, body, panel, run: Source, start: float, end: float, height_px: int, where: str) -> int:
    from matplotlib.patches import FancyBboxPatch

    defaults = panel.get("fieldConfig", {}).get("defaults", {})
    options = panel.get("options") or {}
    unit, decimals = defaults.get("unit"), defaults.get("decimals")
    shown: list[tuple[str, float]] = []
    for target in panel.get("targets") or []:
        for series in _instant(run, where, target, end):
            name = legend(target, series["metric"], _expr(target)) if target.get("legendFormat") else ""
            shown.append((name, float(series["value"][1])))
    shown.sort(key=lambda item: item[0])
    if not shown:
        return 0
    x, y, w, h = body
    tile_w, tile_h, columns = _tiles(len(shown), w * WIDTH_PX, h * height_px)
    background = options.get("colorMode") == "background"
    with_name = options.get("textMode") in ("value_and_name", "auto") and (len(shown) > 1 or options.get(
        "textMode") == "value_and_name")  # fmt: skip
    tiles = []
    for name, value in shown:
        text, tint = format_value(value, unit, decimals), threshold_color(defaults, value) or NAMED_COLORS["green"]
        tiles.append((name if with_name else "", *(mapped(defaults, value) or (text, tint))))
    labelled = any(label for label, _, _ in tiles)
    longest_value = max(len(text) for _, text, _ in tiles)
    longest_name = max(len(label) for label, _, _ in tiles)
    # one size for every tile of a panel, as Grafana does: the one the longest text fits at
    value_px = min(tile_h * (0.5 if labelled else 0.62), (tile_w - 10) / (0.62 * longest_value), 56)
    name_px = min(max(9.0, tile_h * 0.18), (tile_w - 8) / (0.6 * max(longest_name, 1)), 14)
    tw, th = tile_w / WIDTH_PX, tile_h / height_px
    for i, (label, text, tint) in enumerate(tiles):
        left = x + (i % columns) * tw
        bottom = y + h - (i // columns + 1) * th
        if background:
            fig.add_artist(FancyBboxPatch((left + 2 / WIDTH_PX, bottom + 2 / height_px), tw - 4 / WIDTH_PX,
                                          th - 4 / height_px, boxstyle="round,pad=0,rounding_size=0.002",
                                          transform=fig.transFigure, facecolor=tint, edgecolor="none",
                                          zorder=-0.5))  # fmt: skip
        centre = left + tw / 2
        if labelled:
            fig.text(centre, bottom + th * 0.72, label, color="#ffffff" if background else TEXT, ha="center",
                     va="center", fontsize=name_px * 72 / DPI)  # fmt: skip
        fig.text(centre, bottom + th * (0.34 if labelled else 0.5), text, color="#ffffff" if background else tint,
                 ha="center", va="center", fontsize=value_px * 72 / DPI, fontweight="bold")  # fmt: skip
    return len(shown)


def _tiles(count: int, width: float, height: float) -> tuple[float, float, int]:
    """(tile width, tile height, columns) in pixels: the grid that gives each value the most room, tiles at least
    twice as wide as high (a number and its name read across)."""
    best = (0.0, 1)
    for columns in range(1, count + 1):
        rows = math.ceil(count / columns)
        room = min(width / columns / 2.2, height / rows)
        if room > best[0]:
            best = (room, columns)
    columns = best[1]
    return width / columns, height / math.ceil(count / columns), columns


def _heatmap(fig: Any, body, panel, run: Source, start: float, end: float, height_px: int, where: str) -> int:
    """Bucket counts over time: the cumulative ``le`` series Prometheus returns, differenced into one row per bucket
    (as Grafana's heatmap format does), rows of equal height labelled with their upper bound."""
    import numpy as np
    from matplotlib import colors, dates

    options = panel.get("options") or {}
    y_axis = options.get("yAxis") or {}
    buckets: dict[float, dict[float, float]] = {}
    for target in panel.get("targets") or []:
        for series in _range(run, where, target, start, end):
            bound = float(series["metric"].get("le", "nan"))
            times, values = _floats(series["values"])
            buckets.setdefault(bound, {}).update(zip(times, values, strict=True))
    bounds = sorted(b for b in buckets if not math.isnan(b))
    if not bounds:
        return 0
    if math.isinf(bounds[-1]) and len(bounds) > 1:
        bounds = bounds[:-1]  # nothing lies above the last finite bound of a probability; Grafana hides it too
    times = sorted({t for b in bounds for t in buckets[b]})
    cumulative = np.array([[buckets[b].get(t, np.nan) for t in times] for b in bounds])
    counts = np.diff(cumulative, axis=0, prepend=np.zeros((1, len(times))))
    hidden = float((options.get("filterValues") or {}).get("le", 1e-9))
    counts = np.ma.masked_where(~np.isfinite(counts) | (counts <= hidden), counts)
    plot = _inset(body, height_px, left=56, right=74, bottom=20)
    ax = _axes(fig, plot)
    ax.grid(False)
    when = np.array([dates.date2num(dt.datetime.fromtimestamp(t, dt.UTC)) for t in times])
    half = (when[1] - when[0]) / 2 if len(when) > 1 else 1 / 86400
    edges = np.concatenate([when - half, [when[-1] + half]])
    scheme = colors.LinearSegmentedColormap.from_list("grafana-oranges", ["#3b1d05", "#c2410c", "#ff9830", "#ffe8cc"])
    exponent = float((options.get("color") or {}).get("exponent", 1))
    mesh = ax.pcolormesh(edges, np.arange(len(bounds) + 1), counts, cmap=scheme,
                         norm=colors.PowerNorm(gamma=exponent), shading="flat", edgecolors=PANEL,
                         linewidth=0.2)  # fmt: skip
    every = 1 if len(bounds) <= 12 else 2  # room for a label on every other row
    ax.set_yticks(np.arange(len(bounds))[::-every][::-1] + 1)
    ax.set_yticklabels([format_value(b, y_axis.get("unit"), y_axis.get("decimals")) for b in bounds[::-every][::-1]])
    _time_axis(ax, start, end)
    bar = fig.colorbar(mesh, cax=fig.add_axes(_inset(body, height_px, left=body[2] * WIDTH_PX - 60, right=50,
                                                     bottom=20)))  # fmt: skip
    bar.outline.set_edgecolor(BORDER)
    bar.ax.tick_params(colors=WEAK_TEXT, labelsize=7, length=2)
    return int(np.sum(np.any(~np.ma.getmaskarray(counts), axis=1)))


def _table(fig: Any, body, panel, run: Source, start: float, end: float, height_px: int, where: str) -> int:
    defaults = panel.get("fieldConfig", {}).get("defaults", {})
    unit, decimals = defaults.get("unit"), defaults.get("decimals")
    result = [s for t in panel.get("targets") or [] for s in _instant(run, where, t, end)]
    if not result:
        return 0
    transforms = {t["id"]: t.get("options") or {} for t in panel.get("transformations") or []}
    colours: list[list[str]] = []
    if "groupingToMatrix" in transforms:  # one row per rowField value, one column per columnField value
        spec = transforms["groupingToMatrix"]
        row_key, col_key = spec["rowField"], spec["columnField"]
        row_names = sorted({s["metric"].get(row_key, "") for s in result})
        col_names = sorted({s["metric"].get(col_key, "") for s in result})
        cells = {(s["metric"].get(row_key, ""), s["metric"].get(col_key, "")): float(s["value"][1]) for s in result}
        header = [f"{row_key}\\{col_key}", *col_names]
        rows = []
        for name in row_names:
            values = [cells.get((name, c)) for c in col_names]
            rows.append([name, *("" if v is None else format_value(v, unit, decimals) for v in values)])
            colours.append([TEXT, *(TEXT if v is None else threshold_color(defaults, v) or TEXT for v in values)])
    else:
        excluded = {k for k, v in (transforms.get("organize", {}).get("excludeByName") or {}).items() if v}
        labels = sorted({k for s in result for k in s["metric"] if k != "__name__"})
        header = [*labels, *([] if "Value" in excluded else ["Value"])]
        rows = []
        for series in sorted(result, key=lambda s: [s["metric"].get(k, "") for k in labels]):
            value = float(series["value"][1])
            rows.append([series["metric"].get(k, "") for k in labels]
                        + ([] if "Value" in excluded else [format_value(value, unit, decimals)]))  # fmt: skip
            colours.append([TEXT] * len(rows[-1]))
    ax = fig.add_axes(body, facecolor=PANEL)
    ax.set_axis_off()
    line_px = 21
    shown = rows[: max(1, int(body[3] * height_px // line_px) - 1)]
    table = ax.table(cellText=shown, colLabels=header, loc="upper left", cellLoc="left", colLoc="left",
                     bbox=(0, 1 - (len(shown) + 1) * line_px / (body[3] * height_px), 1,
                           (len(shown) + 1) * line_px / (body[3] * height_px)))  # fmt: skip
    widths = [max(len(str(r[c])) for r in [header, *shown]) + 2 for c in range(len(header))]
    table.auto_set_font_size(False)  # 8 pt, smaller when the columns' text would not fit the panel's width
    table.set_fontsize(min(8.0, body[2] * WIDTH_PX / (0.66 * sum(widths)) * 72 / DPI))
    for (row, col), cell in table.get_celld().items():
        cell.set_edgecolor(BORDER)
        cell.set_linewidth(0.5)
        cell.set_width(widths[col] / sum(widths))
        cell.set_facecolor("#22252b" if row == 0 else PANEL)
        cell.get_text().set_color(TEXT if row == 0 else colours[row - 1][col])
        if row == 0:
            cell.get_text().set_fontweight("bold")
    return len(rows)


# ----------------------------------------------------------------------------------------------------------- main


def run_range(run: Any, after: float = 15.0, timeout: float = 60.0) -> tuple[float, float]:
    """The time range to draw: from the first sample the run's Prometheus holds to ``after`` seconds past the last
    request it counted. Half a rate window past the traffic, the lines show how its rates end, while the window of a
    stat panel at that instant still holds the last requests; and the range does not depend on how long the run
    was kept open afterwards (a session fixture serves other tests first). Waits, up to ``timeout`` seconds, for
    Prometheus to hold that instant.

    Args:
        run: the monitoring scenario (its ``prometheus`` URL and ``query_range``).
        after: seconds drawn past the last request.
        timeout: longest wait for Prometheus's samples to reach the end.

    Returns:
        (start, end), Unix seconds.
    """
    import time

    from tests.monitoring.scenario import api

    def head() -> tuple[float, float]:
        stats = api(run.prometheus, "status/tsdb", {})["headStats"]
        return stats["minTime"] / 1000, stats["maxTime"] / 1000

    first, last = head()
    counted = run.query_range("sum(streamflow_requests_total)", first, last, 1.0)["result"]
    if not counted:
        return first, last
    times, values = _floats(counted[0]["values"])
    changed = [t for t, before, now in zip(times[1:], values, values[1:], strict=False) if now != before]
    end = (changed[-1] if changed else times[-1]) + after
    deadline = time.monotonic() + timeout
    while last < end and time.monotonic() < deadline:
        time.sleep(0.5)
        last = head()[1]
    return first, min(end, last)


def main(argv: list[str] | None = None) -> int:
    """Run the monitoring scenario in a temporary STREAMFLOW_HOME and draw the three dashboards from it."""
    from tests.monitoring.scenario import scenario

    parser = argparse.ArgumentParser(prog="python -m tests.monitoring.pictures", description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "img" / "dashboards",
                        help="folder for serving.png, pipelines.png, quality.png (default: %(default)s)")  # fmt: skip
    args = parser.parse_args(argv)
    # The scenario is a world of its own: a STREAMFLOW_* variable of the caller's shell (the README's
    # STREAMFLOW_PUSHGATEWAY_URL for `make monitor`, a tracking server, a database) must not reach it.
    for name in [n for n in os.environ if n.startswith("STREAMFLOW_")]:
        del os.environ[name]
    drawn: list[Drawn] = []
    with tempfile.TemporaryDirectory(prefix="streamflow-pictures-") as home:
        print("running the monitoring scenario (three months, both servers, traffic; about 3 minutes)", flush=True)
        with scenario(Path(home) / "home") as run:
            start, end = run_range(run)
            paths = render(run, args.out, start, end, drawn)
    for path in paths:
        print(f"{path}  {path.stat().st_size // 1024} KiB")
    empty = [f"{d.board} / {d.title!r}" for d in drawn if d.series == 0]
    if empty:
        print(f"panels drawn without data: {', '.join(empty)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
