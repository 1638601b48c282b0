"""The MLflow model registry as StreamFlow uses it: the client, the registered model's name and aliases.

Its own module so that the servers (``model_server``) can follow an alias without importing a pipeline stage:
``train``, ``promote``, ``drift``, ``monthly`` and the predictor all read the registry through these helpers.
"""

from __future__ import annotations

import os

from pipelines.config import Settings
from pipelines.errors import StreamflowError, redact_url

MODEL_NAME = "streamflow_churn"
EXPERIMENT = "streamflow_churn"
PRODUCTION, CHALLENGER, PREVIOUS = "production", "challenger", "previous"


def mlflow_client(settings: Settings):
    """Point MLflow at the settings' tracking/registry store and check that it answers.

    Raises:
        StreamflowError: the tracking server or database does not answer (nothing was registered).
    """
    import mlflow
    from mlflow import MlflowClient

    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "1")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")
    uri = settings.tracking_uri
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    try:
        client.search_registered_models(max_results=1)
    except Exception as err:  # noqa: BLE001 - any failure here means "unreachable" to the user
        raise StreamflowError(
            f"MLflow registry unreachable at {redact_url(uri)}: {str(err).splitlines()[0][:200]}"
        ) from None
    return client


def experiment_id(client, settings: Settings, name: str = EXPERIMENT) -> str:
    """The id of an MLflow experiment, created on first use (local artifacts under STREAMFLOW_HOME)."""
    found = client.get_experiment_by_name(name)
    if found is not None:
        return found.experiment_id
    location = None if settings.tracking_uri.startswith("http") else settings.artifacts_dir.resolve().as_uri()
    return client.create_experiment(name, artifact_location=location)


def absent_in_registry(err: BaseException) -> bool:
    """True when MLflow answered that the registered model or the alias does not exist: the registry is reachable,
    there is just nothing there yet. A transport failure (refused, timed out, a 5xx) is not this."""
    return getattr(err, "error_code", None) in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE")


def version_by_alias(client, alias: str):
    """The version of ``streamflow_churn`` holding ``alias``, or None."""
    from mlflow.exceptions import MlflowException

    try:
        return client.get_model_version_by_alias(MODEL_NAME, alias)
    except MlflowException:
        return None
