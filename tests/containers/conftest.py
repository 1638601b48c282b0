"""Fixtures of the container tier: a real Docker engine and the images it runs (tests/containers/engine.py)."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from tests.containers import engine as eng


@pytest.fixture(scope="session")
def docker_engine(tmp_path_factory) -> Iterator[eng.Engine]:
    """A Docker engine that answers, started here when none runs (root); stopped at the end if started here.
    Without one, the tier is skipped when not root (saying what is missing) and fails as root, where
    tests/system-deps.sh has installed the engine."""
    try:
        found = eng.engine(tmp_path_factory.mktemp("dockerd"))
    except eng.EngineMissing as err:
        if os.geteuid() == 0:
            pytest.fail(f"container tier: {err}")
        pytest.skip(f"container tier skipped: {err}")
    yield found
    found.stop()


@pytest.fixture(scope="session")
def images(docker_engine) -> dict[str, str]:
    """{"project": the image `make images` builds, "base": what it was built FROM, "infra": the tier's own}."""
    project, base = eng.project_image()
    return {"project": project, "base": base, "infra": eng.infra_image(base)}
