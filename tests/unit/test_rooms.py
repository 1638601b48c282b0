"""Rooms: the servers import no pipeline stage, and their KServe Model classes are importable.

Checked in a fresh interpreter (``sys.modules`` of this test process holds whatever earlier tests imported)."""

from __future__ import annotations

import json
import subprocess
import sys

# the modules that do a pipeline step's work; the servers may read config, errors, the registry and the online store
STAGES = {
    "pipelines.cli",
    "pipelines.demo",
    "pipelines.drift",
    "pipelines.features",
    "pipelines.generate",
    "pipelines.ingest",
    "pipelines.monthly",
    "pipelines.snapshot",
    "pipelines.status",
    "pipelines.train",
    "pipelines.validate",
    "pipelines.db",
}


def _modules_after(code: str) -> set[str]:
    out = subprocess.run(
        [sys.executable, "-c", f"{code}\nimport json, sys; print(json.dumps(sorted(sys.modules)))"],
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    )
    return set(json.loads(out.stdout.strip().splitlines()[-1]))


def test_model_server_imports_no_pipeline_stage():
    loaded = _modules_after(
        "import model_server, model_server.server, model_server.churn_model, model_server.predictor, "
        "model_server.transformer, model_server.local\n"
        "import pipelines.online, pipelines.registry"  # what the servers import at start-up
    )
    assert "model_server.transformer" in loaded and "pipelines.online" in loaded
    assert loaded & STAGES == set(), f"model_server pulled in pipeline stages: {sorted(loaded & STAGES)}"


def test_kserve_model_classes_are_importable():
    from kserve import Model

    from model_server.predictor import ChurnPredictor
    from model_server.transformer import BatchTooLarge, FeastTransformer, MissingFeatures, PredictorFailed

    assert issubclass(ChurnPredictor, Model) and issubclass(FeastTransformer, Model)
    errors = (MissingFeatures, BatchTooLarge, PredictorFailed)
    assert {cls.__module__ for cls in errors} == {"model_server.transformer"}
