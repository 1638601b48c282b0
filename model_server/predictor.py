"""The predictor: serves ``models:/streamflow_churn@production`` over the v2 Open Inference Protocol.

    python -m model_server.predictor [--model_name streamflow-churn] [--http_port 8082] [--grpc_port 8083]
                                     [--alias production] [--poll_seconds 10] [--host 127.0.0.1]

Inputs are the feature tensors of :mod:`model_server.churn_model`; outputs ``churn_probability`` (FP32 [N]) and
``churn_label`` (INT64 [N], the version's F1-optimal threshold); the response's ``model_version`` and parameters name
the registry version that answered.

Hot reload: a background thread asks the registry every ``--poll_seconds`` which version holds the alias. A new
version is downloaded and checked *beside* the serving one, then swapped in with one reference assignment: a request
takes the model reference once, so in-flight requests finish on the old model, readiness never drops. When the
registry does not answer, the server keeps its model, logs it once and sets ``streamflow_registry_reachable 0``.

No model yet (a fresh install: nothing promoted, or MLflow still starting): the server starts anyway, live but not
ready — ``/v2/health/ready`` and the model's ``/ready`` answer 503, an inference 503 ``ModelNotReady`` — logs one line
saying why, and the same polling thread loads the alias's version as soon as there is one: ready, no restart.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import threading
import time
import uuid

import numpy as np
from kserve import Model
from kserve.errors import InvalidInput, ModelNotReady
from kserve.model import InferenceVerb
from kserve.protocol.infer_type import InferOutput, InferRequest, InferResponse

from model_server.churn_model import (
    COMPILED_MAX_ROWS,
    FeatureError,
    ModelRefused,
    ServedModel,
    feature_tensors,
    load_version,
    metadata_inputs,
    wire_tensor,
)
from model_server.server import (
    ServerMetrics,
    add_request_metrics,
    base_parser,
    counted_call,
    request_guard,
    run_server,
)
from pipelines.config import Settings
from pipelines.errors import redact_url
from pipelines.registry import MODEL_NAME, absent_in_registry, mlflow_client

log = logging.getLogger("streamflow.predictor")

# a version that failed to load is tried again after the poll interval, then twice as long each time, up to this
RETRY_MAX_SECONDS = 300.0


class ChurnPredictor(Model):
    """kserve.Model answering with the registry's ``alias`` version of ``registered_model``."""

    def __init__(
        self,
        name: str,
        settings: Settings,
        registered_model: str,
        alias: str,
        poll_seconds: float,
        metrics: ServerMetrics,
    ) -> None:
        super().__init__(name)
        self.settings = settings
        self.registered_model = registered_model
        self.alias = alias
        self.poll_seconds = poll_seconds
        self.metrics = metrics
        self.served: ServedModel | None = None
        self._client = None
        self._stop = threading.Event()
        self._reachable: bool | None = None
        self._broken: str | None = None  # the alias's version that failed to load, retried with backoff
        self._failures = 0  # failed attempts at ``_broken`` in a row
        self._retry_at = 0.0  # monotonic time of the next attempt at ``_broken``
        self._refused = False  # ``_broken`` was refused (could run code): not retried until the alias moves
        self._absent = False  # the registry answered that the alias (or the model) does not exist
        # every label set exported from the start, at 0: a rule or panel on failures finds its series before the
        # first failure (Prometheus cannot tell "never failed" from "not scraped" otherwise)
        for result in ("swapped", "failed"):
            metrics.reloads.labels(metrics.server, result)
        metrics.load_failures.labels(metrics.server)
        metrics.pending_version.labels(metrics.server).set(0)

    # ------------------------------------------------------------ registry

    def _registry(self):
        if self._client is None:
            self._client = mlflow_client(self.settings)
        return self._client

    def _alias_version(self):
        return self._registry().get_model_version_by_alias(self.registered_model, self.alias)

    def load(self) -> bool:
        """Load the alias's version if there is one, and start polling the registry either way.

        Never raises: without a version to serve the server still starts, not ready, and the polling thread
        makes it ready when one appears. Returns whether a model is served now."""
        self.poll_once()
        threading.Thread(target=self._poll, name="registry-poll", daemon=True).start()
        return self.ready

    def start(self) -> None:
        """Called by the ModelServer at start: readiness stays what loading made it (KServe's sets it True)."""

    @property
    def _polling(self) -> str:
        return f"polling every {self.poll_seconds:g} s"

    def _swap(self, model: ServedModel) -> None:
        self.served = model  # one reference assignment: requests already holding the old one finish on it
        self.ready = True
        self.metrics.set_model(model.name, model.version, self.alias, model.run_id)
        log.warning(
            "serving %s version %s (%s scoring, threshold %.4f)",
            model.name,
            model.version,
            model.scoring,
            model.threshold,
        )

    def _set_reachable(self, ok: bool, err: Exception | None = None) -> None:
        self.metrics.registry_reachable.labels(self.metrics.server).set(1 if ok else 0)
        if ok != self._reachable:
            if ok and self._reachable is False:
                log.warning("MLflow registry reachable again")
            elif not ok and self.served is not None:
                log.warning("MLflow registry unreachable: still serving version %s", self.served.version)
            elif not ok:
                why = str(err).splitlines()[0][:300] if err else ""
                if not why.startswith("MLflow registry unreachable"):  # mlflow_client's own message names it
                    why = f"MLflow registry unreachable at {redact_url(self.settings.tracking_uri)}: {why}"
                log.warning("%s; no model yet: not ready; %s", why, self._polling)
        self._reachable = ok

    def _set_absent(self) -> None:
        """The registry answered: no such alias (or model). Said once, until a version shows up."""
        if not self._absent:
            where = f"{self.registered_model}@{self.alias}"
            if self.served is None:
                log.warning("no %s yet: not ready; %s", where, self._polling)
            else:
                log.warning("no %s in the registry any more: still serving version %s", where, self.served.version)
        self._absent = True

    def poll_once(self) -> bool:
        """Swap to the alias's version if it moved (or load the first); True when a new version is now served."""
        try:
            version = self._alias_version()
        except Exception as err:  # noqa: BLE001 - any registry failure: keep serving what we have
            log.debug("registry poll failed: %s", err)
            if absent_in_registry(err):
                self._set_reachable(True)
                self._set_absent()
            else:
                self._set_reachable(False, err)
            return False
        self._set_reachable(True)
        self._absent = False
        wanted = str(version.version)
        if self.served is not None and wanted == self.served.version:
            self._loaded()  # the alias moved back to the version served: nothing pending any more
            return False
        if wanted == self._broken and (self._refused or time.monotonic() < self._retry_at):
            return False
        try:
            model = load_version(self.registered_model, version)
        except Exception as err:  # noqa: BLE001 - a broken new version must not take the old one down
            self._failed(wanted, err)
            return False
        self._swap(model)
        self._loaded()
        self.metrics.reloads.labels(self.metrics.server, "swapped").inc()
        return True

    def _failed(self, wanted: str, err: Exception) -> None:
        """A failed load of the alias's version: counted, said once per version, retried with backoff (the poll
        interval doubling up to ``RETRY_MAX_SECONDS``) unless it was refused."""
        again = self._broken == wanted
        self._broken, self._refused = wanted, isinstance(err, ModelRefused)
        self._failures = self._failures + 1 if again else 1
        delay = min(self.poll_seconds * 2 ** (self._failures - 1), max(self.poll_seconds, RETRY_MAX_SECONDS))
        self._retry_at = time.monotonic() + delay
        server = self.metrics.server
        self.metrics.load_failures.labels(server).inc()
        self.metrics.pending_version.labels(server).set(float(wanted) if wanted.isdigit() else -1)
        why = str(err).splitlines()[0][:500] if str(err) else type(err).__name__
        if again:
            log.info("version %s still cannot be loaded (attempt %d, next in %g s): %s", wanted, self._failures,
                     delay, why)  # fmt: skip
            return
        self.metrics.reloads.labels(server, "failed").inc()
        log.error(
            "version %s of %s %s, %s; %s: %s",
            wanted,
            self.registered_model,
            "was refused" if self._refused else "could not be loaded",
            f"still serving {self.served.version}" if self.served else "not ready",
            "not retried until the alias moves" if self._refused else f"retrying with backoff from {delay:g} s",
            why,
        )

    def _loaded(self) -> None:
        if self._broken is not None:
            self._broken, self._failures, self._refused = None, 0, False
        self.metrics.pending_version.labels(self.metrics.server).set(0)

    def _poll(self) -> None:
        while not self._stop.wait(self.poll_seconds):
            self.poll_once()

    def stop(self) -> None:
        self._stop.set()

    # ------------------------------------------------------------ inference

    async def __call__(self, body, headers=None, verb=InferenceVerb.PREDICT):
        return await counted_call(self.metrics, super().__call__, body, headers, verb)

    async def predict(self, payload, headers=None, response_headers=None):
        model = self.served  # taken once: a swap during this request does not change it
        if model is None:
            raise ModelNotReady(self.name)
        if not isinstance(payload, InferRequest):
            raise InvalidInput("the predictor speaks the v2 protocol: POST /v2/models/{name}/infer")
        # a batch is checked and scored off the event loop, so probes and small requests are answered meanwhile;
        # a few rows (treelite's ~0.1 ms) stay on it: a thread hop would cost more than the work
        rows = max((int(i.shape[0]) for i in payload.inputs if i.shape), default=0)
        if rows < COMPILED_MAX_ROWS:
            proba, labels = _score(model, payload)
        else:
            proba, labels = await asyncio.to_thread(_score, model, payload)
        self.metrics.observe_predictions(proba.tolist(), labels)
        binary = payload.use_binary_outputs
        outputs = [
            wire_tensor(InferOutput, "churn_probability", proba.astype(np.float32), "FP32", binary),
            wire_tensor(InferOutput, "churn_label", labels, "INT64", binary),
        ]
        return InferResponse(
            response_id=payload.id or uuid.uuid4().hex,
            model_name=self.name,
            infer_outputs=outputs,
            model_version=model.version,
            use_binary_outputs=binary,
            parameters={
                "model_version": model.version,
                "registered_model": model.name,
                "threshold": f"{model.threshold:.6f}",
            },
        )

    def get_input_types(self):
        return metadata_inputs(self.served.specs) if self.served else []

    def versions(self) -> list[str]:
        """The model metadata's ``versions``: the registry version loaded now (none before the first load)."""
        model = self.served
        return [model.version] if model is not None else []

    def get_output_types(self):
        return [
            {"name": "churn_probability", "datatype": "FP32", "shape": [-1]},
            {"name": "churn_label", "datatype": "INT64", "shape": [-1]},
        ]


def _score(model: ServedModel, payload: InferRequest) -> tuple[np.ndarray, np.ndarray]:
    """Check the feature tensors against ``model`` and score them: (churn probability, label) per row.

    Raises:
        InvalidInput: a tensor the model cannot take (the message names the feature and the value).
    """
    try:
        tensors = feature_tensors((i.name, i.datatype, i.as_numpy(), i.parameters) for i in payload.inputs)
        columns, _ = model.columns_from_tensors(tensors)
    except FeatureError as err:
        raise InvalidInput(str(err)) from None
    except (ValueError, TypeError) as err:
        raise InvalidInput(f"malformed input tensor: {err}") from None
    proba = model.predict_proba(columns)
    return proba, model.labels(proba)


def build_parser(settings: Settings) -> argparse.ArgumentParser:
    """The predictor's command line (what :func:`main` parses): KServe's arguments with StreamFlow's defaults plus
    the registry ones. Importable without starting anything, so a test can parse a manifest's exact args."""
    parser = base_parser(
        "StreamFlow predictor (KServe v2)", settings, settings.predictor_http_port, settings.predictor_grpc_port
    )
    parser.add_argument("--registered_model", default=MODEL_NAME, help="MLflow registered model.")
    parser.add_argument("--alias", default=settings.model_alias, help="Registry alias to serve.")
    parser.add_argument(
        "--poll_seconds",
        type=float,
        default=settings.model_poll_seconds,
        help="How often to ask the registry whether the alias moved.",
    )
    parser.add_argument("--threads", type=int, default=settings.serve_threads, help="OpenMP/BLAS threads.")
    parser.add_argument("--max_body_bytes", type=int, default=64 * 1024 * 1024, help="Larger bodies: 413.")
    return parser


def main(argv: list[str] | None = None) -> None:
    settings = Settings()
    args = build_parser(settings).parse_args(argv)

    # one OpenMP/BLAS thread per request: on 2 cores, HGB's default threads fight the two servers (calibration
    # in issue 6: 1,560 → 50–220 req/s). The variable covers libraries loaded later; threadpoolctl those loaded now.
    os.environ["OMP_NUM_THREADS"] = str(args.threads)
    from threadpoolctl import threadpool_limits

    threadpool_limits(limits=args.threads)
    logging.basicConfig(level=settings.log_level)
    metrics = ServerMetrics("predictor")
    model = ChurnPredictor(args.model_name, settings, args.registered_model, args.alias, args.poll_seconds, metrics)
    started = time.perf_counter()
    if model.load():  # no model yet: not ready, the registry polling loads one later (its log line says why)
        threadpool_limits(limits=args.threads)  # the model's own OpenMP runtime is loaded now
    log.warning(
        "%s; listening on %s:%d (REST) and :%d (gRPC)",
        f"model ready in {time.perf_counter() - started:.1f} s" if model.ready else "no model yet",
        args.host,
        args.http_port,
        args.grpc_port,
    )

    def hooks(app) -> None:
        request_guard(app, args.max_body_bytes)
        add_request_metrics(app, metrics, lambda path: path.endswith("/infer"))

    run_server(args, model, app_hooks=hooks)


if __name__ == "__main__":
    main()
