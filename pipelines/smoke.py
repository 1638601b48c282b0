"""``streamflow smoke``: one v2 request through the served path, checked — what the chart's ``helm test`` pod runs.

    streamflow smoke --url http://streamflow-churn.streamflow --user-id 7590-VHVEG [--user-id …] [--alias production]

The request is the body users send: ``{"inputs":[{"name":"user_id","datatype":"BYTES","shape":[N],"data":[…]}]}``,
POSTed to ``--url`` as given — the InferenceGraph's router takes it at ``/``, a transformer at
``/v2/models/streamflow-churn/infer``. The answer must carry one probability in [0, 1] and one label 0/1 per id, and
the ``model_version`` (top level or in ``parameters``) of the version the MLflow registry's ``--alias`` names
(repeat ``--alias`` when the graph splits traffic: any of them).

Run too early, it says which bootstrap step is missing (exit 1): MLflow unreachable, no model promoted yet, the
predictor without a model loaded, the ids unknown to the online store, or nothing listening at ``--url``.
"""

from __future__ import annotations

import json
import math
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from typing import Any

from pipelines.config import Settings
from pipelines.errors import InvalidInput, StreamflowError

BOOTSTRAP = "run `make bootstrap` (generate → ingest → train → promote)"
INGEST = "run the ingest workflow (ingest → snapshot → materialize) for month_000"


class SmokeFailed(StreamflowError):
    """The served path did not answer as it should; the message names the missing step."""


@dataclass
class SmokeResult:
    url: str
    aliases: dict[str, str]  # alias -> registry version
    model_version: str
    user_ids: list[str]
    churn_probability: list[float]
    churn_label: list[int]
    seconds: float

    def to_json(self) -> dict[str, Any]:
        return {
            "ok": True,
            "url": self.url,
            "aliases": self.aliases,
            "model_version": self.model_version,
            "user_ids": self.user_ids,
            "churn_probability": self.churn_probability,
            "churn_label": self.churn_label,
            "seconds": round(self.seconds, 4),
        }


def v2_request(user_ids: list[str]) -> dict[str, Any]:
    return {"inputs": [{"name": "user_id", "datatype": "BYTES", "shape": [len(user_ids)], "data": user_ids}]}


def registry_versions(settings: Settings, aliases: list[str]) -> dict[str, str]:
    """The version each alias names in the registry.

    Raises:
        SmokeFailed: MLflow unreachable, or an alias (or the registered model) does not exist yet.
    """
    from pipelines.db import redact_url
    from pipelines.registry import MODEL_NAME, absent_in_registry, mlflow_client

    uri = redact_url(settings.tracking_uri)
    try:
        client = mlflow_client(settings)
    except StreamflowError as err:
        raise SmokeFailed(f"MLflow at {uri} unreachable: {str(err).split(': ', 1)[-1]}") from None
    versions = {}
    for alias in aliases:
        try:
            versions[alias] = str(client.get_model_version_by_alias(MODEL_NAME, alias).version)
        except Exception as err:  # noqa: BLE001 - absent, or the registry failed between two calls
            if absent_in_registry(err):
                raise SmokeFailed(f"no model in {alias} yet: {BOOTSTRAP}") from None
            raise SmokeFailed(f"MLflow at {uri} unreachable: {str(err).splitlines()[0][:200]}") from None
    return versions


def refusal(url: str, status: int, body: Any, user_ids: list[str]) -> str:
    """What an error answer of the served path means, as the bootstrap step that is missing."""
    error = str(body.get("error", "")) if isinstance(body, dict) else str(body)
    text = f"HTTP {status}: {error[:300]}"
    # the predictor's 503 ModelNotReady, as it is or inside the transformer's 502 naming the predictor's answer
    if status == 503 or "is not ready" in error or "HTTP 503" in error:
        return (
            f"the predictor has no model loaded yet ({text}): it loads the registry's version at its next poll; "
            f"if it stays so, read the predictor's log (a model that cannot be loaded, or MLflow unreachable from it)"
        )
    if isinstance(body, dict) and "missing_features" in body:
        unknown = list(body["missing_features"]) or user_ids
        return f"user ids unknown to the online store ({', '.join(map(str, unknown[:5]))}): {INGEST}"
    return f"{url} answered {text}"


def post(url: str, body: dict[str, Any], timeout: float) -> tuple[int, Any]:
    """POST JSON; (status, parsed body — or the text when it is not JSON).

    Raises:
        SmokeFailed: nothing answers at ``url`` (refused, unknown host, timed out).
    """
    request = urllib.request.Request(
        url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}, method="POST"
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout) as resp:
            status, raw = resp.status, resp.read()
    except urllib.error.HTTPError as err:
        status, raw = err.code, err.read()
    except TimeoutError:
        raise SmokeFailed(f"graph at {url} did not answer within {timeout:g} s") from None
    except (urllib.error.URLError, OSError) as err:
        reason = getattr(err, "reason", err)
        if isinstance(reason, TimeoutError):
            raise SmokeFailed(f"graph at {url} did not answer within {timeout:g} s") from None
        raise SmokeFailed(f"graph at {url} unreachable: {reason}") from None
    text = raw.decode(errors="replace")
    try:
        return status, json.loads(text)
    except ValueError:
        return status, text


def check_answer(body: Any, user_ids: list[str], versions: dict[str, str] | None) -> tuple[str, list[float], list[int]]:
    """The answer's model version, probabilities and labels, once each is what it must be (``make e2e`` checks the
    graph's answers with it too).

    Args:
        body: the decoded answer.
        user_ids: the ids sent, in order.
        versions: alias -> registry version; the answer's version must be one of them (None: any version).

    Raises:
        SmokeFailed: a missing or malformed output, a value out of range, or a model version no alias names.
    """
    if not isinstance(body, dict) or not isinstance(body.get("outputs"), list):
        raise SmokeFailed(f"the answer is not a v2 response: {str(body)[:300]}")
    outputs = {o.get("name"): o.get("data") for o in body["outputs"] if isinstance(o, dict)}
    proba, labels = outputs.get("churn_probability"), outputs.get("churn_label")
    n = len(user_ids)
    for name, data in (("churn_probability", proba), ("churn_label", labels)):
        if not isinstance(data, list) or len(data) != n:
            got = "none" if data is None else f"{len(data)} values" if isinstance(data, list) else repr(data)[:80]
            raise SmokeFailed(f"the answer's {name}: expected {n} values (one per user id), got {got}")
    bad = [p for p in proba if not isinstance(p, int | float) or not math.isfinite(p) or not 0.0 <= p <= 1.0]
    if bad:
        raise SmokeFailed(f"churn_probability outside [0, 1]: {bad[:5]}")
    if any(label not in (0, 1) or isinstance(label, bool) for label in labels):
        raise SmokeFailed(f"churn_label must be 0 or 1: {labels[:10]}")
    version = body.get("model_version") or (body.get("parameters") or {}).get("model_version")
    if version is None:
        raise SmokeFailed("the answer names no model_version (top level or in parameters)")
    if versions is not None and str(version) not in versions.values():
        named = ", ".join(f"{alias} = version {v}" for alias, v in versions.items())
        raise SmokeFailed(
            f"answered by model version {version}, but the registry says {named}: a promotion the predictor has not "
            "picked up yet (it polls the registry), or a graph routing to another alias"
        )
    return str(version), [float(p) for p in proba], [int(label) for label in labels]


def run_smoke(
    settings: Settings, url: str, user_ids: list[str], aliases: list[str] | None = None, timeout: float = 10.0
) -> SmokeResult:
    """Ask the registry which version should answer, send one v2 request to ``url`` and check the answer.

    Raises:
        InvalidInput: no user id, or a URL that is not http(s).
        SmokeFailed: the step that is missing or what is wrong with the answer.
    """
    aliases = aliases or ["production"]
    if not url.startswith(("http://", "https://")):
        raise InvalidInput(f"--url {url!r}: expected http://host[:port][/path]")
    if not user_ids or not all(u.strip() for u in user_ids):
        raise InvalidInput("give at least one --user-id (and no blank one)")
    versions = registry_versions(settings, aliases)
    started = time.perf_counter()
    status, body = post(url, v2_request(user_ids), timeout)
    seconds = time.perf_counter() - started
    if status != 200:
        raise SmokeFailed(refusal(url, status, body, user_ids))
    version, proba, labels = check_answer(body, user_ids, versions)
    return SmokeResult(url, versions, version, list(user_ids), proba, labels, seconds)
