"""The dashboard pictures (tests/monitoring/pictures.py, issue 18): drawn from the monitoring scenario's real
Prometheus, one PNG per dashboard at the size its layout gives, every panel with data."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from tests.monitoring.pictures import (
    BOARDS,
    WIDTH_PX,
    Drawn,
    all_panels,
    figure_size,
    format_value,
    legend,
    load_board,
    render,
    render_board,
    run_range,
)
from tests.monitoring.scenario import Scenario

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@pytest.mark.integration
@pytest.mark.slow
def test_each_dashboard_is_drawn_at_its_size_with_data_in_every_panel(run: Scenario, tmp_path: Path) -> None:
    from matplotlib.image import imread

    start, end = run_range(run)
    assert 60 < end - start < 3600, (start, end)  # the scenario's months and traffic, not an empty instant
    drawn: list[Drawn] = []
    paths = render(run, tmp_path, start, end, drawn)
    assert paths == [tmp_path / f"{name}.png" for name in BOARDS]
    for name, path in zip(BOARDS, paths, strict=True):
        assert path.read_bytes()[:8] == PNG_SIGNATURE
        width, height = figure_size(load_board(name))
        assert width == WIDTH_PX
        pixels = imread(path)
        assert pixels.shape[:2] == (height, width), path
        assert path.stat().st_size < 400_000, f"{path.name}: {path.stat().st_size} bytes"
    panels = [
        (load_board(name)["uid"], panel["title"], panel["type"])
        for name in BOARDS
        for panel in all_panels(load_board(name))
        if panel["type"] != "row"
    ]
    assert [(d.board, d.title, d.kind) for d in drawn] == panels  # every panel drawn, in the dashboards' order
    empty = [f"{d.board} / {d.title!r} ({d.kind})" for d in drawn if d.series == 0]
    assert not empty, f"panels drawn without data: {empty}"
    kinds = {d.kind for d in drawn}
    assert kinds == {"timeseries", "stat", "heatmap", "table"}


@pytest.mark.integration
@pytest.mark.slow
def test_a_panel_without_data_is_counted_empty(run: Scenario, tmp_path: Path) -> None:
    """The check above can fail: a panel whose query matches nothing is drawn "No data" and counted 0."""
    start, end = run_range(run)
    nothing = [{"expr": 'streamflow_requests_total{server="nobody"}', "legendFormat": "{{server}}"}]
    board = {
        "uid": "nothing",
        "title": "Nothing",
        "panels": [{"type": "row", "title": "Row", "gridPos": {"x": 0, "y": 0, "w": 24, "h": 1}}]
        + [
            {"type": kind, "title": kind, "gridPos": {"x": 6 * i, "y": 1, "w": 6, "h": 6}, "targets": nothing}
            for i, kind in enumerate(("timeseries", "stat", "heatmap", "table"))
        ],
    }
    drawn = render_board(run, board, tmp_path / "nothing.png", start, end)
    assert [(d.kind, d.series) for d in drawn] == [("timeseries", 0), ("stat", 0), ("heatmap", 0), ("table", 0)]
    assert (tmp_path / "nothing.png").read_bytes()[:8] == PNG_SIGNATURE


def test_values_are_written_in_the_panels_units() -> None:
    assert format_value(0.0123, "s") == "12.3 ms"
    assert format_value(150, "s") == "2.5 min"
    assert format_value(45, "ms") == "45 ms"
    assert format_value(0.429, "percentunit") == "42.9%"
    assert format_value(0.5, "percentunit", 0) == "50%"
    assert format_value(1.45, "reqps") == "1.45 req/s"
    assert format_value(9140, "short") == "9.14 K"
    assert format_value(2, "short", 0) == "2"
    assert format_value(math.nan, "s") == "NaN"


def test_legends_fill_their_labels_and_fall_back_to_the_series_labels() -> None:
    target = {"expr": "x", "legendFormat": "{{server}} {{protocol}} {{status}}"}
    assert legend(target, {"server": "transformer", "protocol": "rest", "status": "422"}, "x") == "transformer rest 422"
    # a legend naming a label the series lacks shows the series' labels, not an empty name
    assert legend({"expr": "x", "legendFormat": "{{alias}}"}, {"server": "predictor"}, "x") == '{server="predictor"}'
    assert legend({"expr": "max(y)"}, {}, "max(y)") == "max(y)"
