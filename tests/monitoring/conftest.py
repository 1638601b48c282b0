"""The monitoring scenario, run once per session for every test that reads its Prometheus (tests/monitoring)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.monitoring.scenario import Scenario, scenario


@pytest.fixture(scope="session")
def run(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Scenario]:
    """The scenario's state while its Prometheus runs (tests/monitoring/scenario.py); stopped after the session."""
    with scenario(tmp_path_factory.mktemp("monitoring") / "home") as found:
        yield found
