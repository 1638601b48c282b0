"""The PromQL of a dashboard JSON file, read with the standard library only (no grafana-foundation-sdk), so a test
can evaluate every query of the committed dashboards against a real Prometheus."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any


def panel_queries(path: Path) -> list[tuple[str, str, str, str]]:
    """Every Prometheus query of a dashboard JSON file.

    Args:
        path: a dashboard JSON file (e.g. charts/streamflow/dashboards/serving.json).

    Returns:
        (dashboard uid, panel title, refId, expr) for every target that has an ``expr``, in the file's order,
        panels inside collapsed rows included.
    """
    board = json.loads(Path(path).read_text(encoding="utf-8"))
    uid = board.get("uid") or Path(path).stem
    return [
        (uid, panel.get("title", ""), target.get("refId", ""), target["expr"])
        for panel in panels(board)
        for target in panel.get("targets") or []
        if target.get("expr")
    ]


def panels(board: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """Every panel of a dashboard, rows and the panels a collapsed row holds included."""
    for panel in board.get("panels") or []:
        yield panel
        yield from panel.get("panels") or []
