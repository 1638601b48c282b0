"""The Feast transformer: user ids in, churn predictions out, through Feast's online store and the predictor.

    python -m model_server.transformer --predictor_host 127.0.0.1:8082 [--predictor_protocol v2|grpc-v2]
                                       [--http_port 8080] [--grpc_port 8081] [--max_batch_size 10000]

v2 request ``{"inputs":[{"name":"user_id","datatype":"BYTES","shape":[N],"data":[...]}]}`` → one batched lookup of
the FeatureService ``churn_features`` (:class:`pipelines.features.OnlineFeatures`) → the predictor's feature tensors
(:mod:`model_server.churn_model`) as two column blocks → the predictor over v2 REST (default) or gRPC →
response ``user_id`` (BYTES), ``churn_probability`` (FP32), ``churn_label`` (INT64), with the predictor's model
version. A user with a missing feature fails the whole request — HTTP 422 (gRPC INVALID_ARGUMENT) listing
``missing_features`` per user id — so nothing is ever predicted on invalid data. Contract NULLs are values.

The REST hop is KServe's v2 codec (``InferRequest.to_rest``, ``InferResponse.from_bytes``) on one keep-alive aiohttp
session (:class:`PredictorHop`); ``--predictor_protocol grpc-v2`` uses KServe's gRPC client instead. Measured side by
side (bench/README): the REST hop answers one user sooner and costs both servers less CPU (grpcio's aio server and
client cost more than uvicorn and aiohttp here); gRPC's raw contents are cheaper for 1,000-row batches; KServe's own
REST client (httpx) cost the most.

Course-compatible routes on the same code path: ``GET /health``, ``GET /features/{user_id}``,
``POST /predict {"user_id": …}``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextvars
import json
import logging
import os
import threading
import time
import uuid

import numpy as np
from fastapi import Request
from kserve import Model
from kserve.errors import InvalidInput, ServerNotReady
from kserve.model import InferenceVerb, append_forwardable_headers
from kserve.protocol.infer_type import InferInput, InferOutput, InferRequest, InferResponse

from model_server.churn_model import BLOCK_COLUMNS, wire_tensor
from model_server.server import (
    ServerMetrics,
    add_request_metrics,
    base_parser,
    counted_call,
    request_guard,
    run_server,
)
from pipelines.config import Settings
from pipelines.online import StoreBusy

log = logging.getLogger("streamflow.transformer")

USER_ID = "user_id"
_REQUEST_IDS: contextvars.ContextVar[list[str]] = contextvars.ContextVar("streamflow_user_ids")


class PredictorHop:
    """v2 REST requests to the predictor on one keep-alive aiohttp session, encoded and decoded by KServe's codec.

    KServe's own REST client does the same on httpx, at more CPU per request (measured side by side: bench/README).
    Connection failures (refused, a keep-alive connection the predictor closed) are retried ``retries`` times; an
    HTTP error answer is not retried.
    """

    def __init__(self, base_url: str, model_name: str, timeout: float, retries: int) -> None:
        self.url = f"{base_url}/v2/models/{model_name}/infer"
        self.timeout = timeout
        self.retries = max(0, retries)
        self._session = None

    def _open(self):
        import ssl

        import aiohttp

        context = None
        if self.url.startswith("https:"):  # the CA bundle KServe's client honours for transformer → predictor TLS
            context = ssl.create_default_context(
                cafile=os.environ.get("REQUESTS_CA_BUNDLE") or os.environ.get("CURL_CA_BUNDLE") or None
            )
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=0, ssl=context if context is not None else True),
            timeout=aiohttp.ClientTimeout(total=self.timeout),
            skip_auto_headers=("User-Agent",),
        )
        return self._session

    async def infer(self, request, headers: dict[str, str] | None = None):
        """Send ``request`` (an ``InferRequest``); return the predictor's ``InferResponse``.

        Raises:
            HopError: the predictor answered an error status, or could not be reached.
        """
        import aiohttp
        import orjson
        from kserve.constants.constants import INFERENCE_CONTENT_LENGTH_HEADER
        from kserve.protocol.infer_type import InferResponse

        session = self._session or self._open()
        body, _ = request.to_rest()  # JSON tensors: the predictor's lean JSON path (model_server.server.fast_infer)
        body = orjson.dumps(body, option=orjson.OPT_SERIALIZE_NUMPY)
        send = {**(headers or {}), "Content-Type": "application/json"}
        for attempt in range(self.retries + 1):
            try:
                async with session.post(self.url, data=body, headers=send) as response:
                    content = await response.read()
                    length = response.headers.get(INFERENCE_CONTENT_LENGTH_HEADER)
                    status = response.status
                break
            except (aiohttp.ClientConnectionError, TimeoutError) as err:
                if attempt == self.retries or isinstance(err, TimeoutError):
                    reason = "timed out" if isinstance(err, TimeoutError) else f"unreachable ({err})"
                    raise HopError(f"{self.url}: {reason}") from None
        if status != 200:
            try:
                message = orjson.loads(content).get("error", content[:300].decode(errors="replace"))
            except (orjson.JSONDecodeError, AttributeError):
                message = content[:300].decode(errors="replace")
            raise HopError(f"{self.url}: HTTP {status}: {message}")
        return InferResponse.from_bytes(content, int(length) if length else len(content))

    async def close(self) -> None:
        if self._session is not None:
            session, self._session = self._session, None
            await session.close()


# Most ids a request may have for its features to be read on the event loop (when the store reads without waiting)
ON_LOOP_MAX_IDS = 64


def _rows(payload) -> int:
    """The number of ids a v2 request carries (0 when it is not one: its checks refuse it on the loop)."""
    inputs = getattr(payload, "inputs", None) or []
    return max((int(i.shape[0]) for i in inputs if getattr(i, "shape", None)), default=0)


class HopError(RuntimeError):
    """The predictor refused a request or could not be reached."""


class MissingFeatures(InvalidInput):
    """Users whose features are missing: answered 422 with ``missing_features`` per user id."""

    def __init__(self, missing: dict[str, list[str]]) -> None:
        self.missing = missing
        first = next(iter(missing))
        super().__init__(
            f"missing features for {len(missing)} user id(s), e.g. user_id={first}: {', '.join(missing[first])}; "
            f"missing_features={json.dumps(missing, separators=(',', ':'))}"
        )


class BatchTooLarge(InvalidInput):
    """More user ids than ``--max_batch_size``: answered 413."""


class PredictorFailed(RuntimeError):
    """The predictor did not answer or refused the features: answered 502."""


class FeaturesUnavailable(ServerNotReady):
    """The online store could not be read (locked by a writer, unreachable, unreadable): answered 503 (gRPC
    UNAVAILABLE), a status a client may retry, with the store's reason and never an exception class. A
    ``ServerNotReady`` so both servers' 503 handler and KServe's gRPC interceptor answer it; ``reason`` is what that
    interceptor sends."""

    def __init__(self, message: str) -> None:
        super().__init__()
        self.error_msg = self.reason = message


class FeastTransformer(Model):
    def __init__(self, name: str, features, hop: PredictorHop | None, max_batch: int, metrics: ServerMetrics):
        super().__init__(name)
        self.features = None  # None until the online store opens (a fresh install: before `features apply`)
        self.waiting_for: str | None = None  # why it is not open yet
        self.texts: list[str] = []
        self.numbers: list[str] = []
        self.hop = hop  # None: KServe's gRPC client (--predictor_protocol grpc-v2)
        self.max_batch = max_batch
        self.metrics = metrics
        self.ready = False
        self.answered_version: str | None = None  # the predictor's model version in the last answer
        if features is not None:
            self.attach(features)

    def start(self) -> None:
        """KServe's start-up hook, which would say ready: ready only once the online store is attached."""

    def attach(self, features) -> None:
        """Serve with this online store (:class:`pipelines.online.OnlineFeatures`); ready from now on."""
        self.texts = [n for n in features.names if n in features.text_features]
        self.numbers = [n for n in features.names if n not in self.texts]
        self.features = features
        self.waiting_for = None
        self.ready = True

    def open_features(self):
        """The online store, or FeaturesUnavailable (503) while it has not opened yet."""
        features = self.features
        if features is None:
            raise FeaturesUnavailable(f"the feature store is not open yet: {self.waiting_for}")
        return features

    async def __call__(self, body, headers=None, verb=InferenceVerb.PREDICT):
        return await counted_call(self.metrics, super().__call__, body, headers, verb)

    # ------------------------------------------------------------ request → features

    def user_ids(self, payload) -> list[str]:
        if not isinstance(payload, InferRequest):
            raise InvalidInput('send a v2 request: {"inputs":[{"name":"user_id","datatype":"BYTES",...}]}')
        names = [i.name for i in payload.inputs]
        if names != [USER_ID]:
            raise InvalidInput(f"inputs: expected exactly one input named 'user_id', got {names}")
        tensor = payload.inputs[0]
        if tensor.datatype != "BYTES":
            raise InvalidInput(f"input 'user_id': datatype {tensor.datatype}; expected BYTES")
        shape = list(tensor.shape)
        if len(shape) != 1:
            raise InvalidInput(f"input 'user_id': shape {shape}; expected [N]")
        if shape[0] > self.max_batch:
            raise BatchTooLarge(f"input 'user_id': {shape[0]} ids; at most {self.max_batch} per request")
        try:
            values = tensor.as_numpy()
        except Exception as err:  # noqa: BLE001 - kserve raises several types for undecodable data
            raise InvalidInput(f"input 'user_id': data does not match its shape/datatype ({err})") from None
        values = values.reshape(-1) if values.ndim else values.reshape(1)
        if len(values) != shape[0]:
            raise InvalidInput(f"input 'user_id': shape {shape} but {len(values)} values")
        if shape[0] == 0:
            raise InvalidInput("input 'user_id': empty batch (give at least one user id)")
        ids = []
        for position, value in enumerate(values.tolist()):
            if isinstance(value, bytes | bytearray):
                try:
                    value = value.decode("utf-8")
                except UnicodeDecodeError:
                    raise InvalidInput(f"input 'user_id': value at position {position} is not UTF-8") from None
            if not isinstance(value, str) or not value.strip():
                raise InvalidInput(f"input 'user_id': value {value!r} at position {position} is not a user id")
            if not value.isascii():  # a lone surrogate (JSON "\ud800") is a str no store can be asked for
                try:
                    value.encode("utf-8")
                except UnicodeEncodeError:
                    raise InvalidInput(
                        f"input 'user_id': value {value!r} at position {position} is not valid Unicode text"
                    ) from None
            ids.append(value)
        return ids

    def lookup(self, ids: list[str], wait: bool = True):
        """The users' features (blocking unless ``wait`` is False: call it off the event loop).

        Raises:
            MissingFeatures: some user has a missing feature.
            FeaturesUnavailable: the online store could not be read.
            StoreBusy: ``wait`` is False and the store is busy now.
        """
        from pipelines.online import OnlineStoreUnavailable

        try:
            result = self.open_features().lookup(ids, wait=wait)
        except OnlineStoreUnavailable as err:
            raise FeaturesUnavailable(str(err)) from None
        if result.missing:
            for gaps in result.missing.values():
                for name in gaps:
                    self.metrics.missing_features.labels(self.metrics.server, name).inc()
            raise MissingFeatures(result.missing)
        return result

    async def preprocess(self, payload, headers=None):
        # Features are read off the event loop (a 10,000-id read takes ~0.2 s, a locked store seconds, a Postgres
        # read a network round trip): readiness probes and other requests are answered meanwhile. A few ids from a
        # local SQLite file (~0.4 ms) are read on the loop, never waiting: a thread hop there cost a third of the
        # c=8 throughput (bench, same run); when the store is busy they go to a thread too. The ids reach
        # postprocess through this request's context, set here on the loop (a thread works on a copy of it).
        try:
            if not (self.open_features().reads_without_waiting and _rows(payload) < ON_LOOP_MAX_IDS):
                raise StoreBusy("a read that may wait")
            ids, request = self._features_request(payload, wait=False)
        except StoreBusy:
            ids, request = await asyncio.to_thread(self._features_request, payload)
        _REQUEST_IDS.set(ids)
        return request

    def _features_request(self, payload, wait: bool = True) -> tuple[list[str], InferRequest]:
        """The request's user ids and the predictor's request holding their features."""
        ids = self.user_ids(payload)
        result = self.lookup(ids, wait=wait)
        # two blocks instead of 14 tensors (model_server.churn_model: each tensor costs both servers)
        numbers = np.array([result.columns[n] for n in self.numbers], dtype=np.float64).T  # None → NaN
        texts = np.array([["" if v is None else v for v in result.columns[n]] for n in self.texts], dtype=object).T
        inputs = [  # raw contents for KServe's gRPC client (hop None), JSON for the REST hop
            wire_tensor(InferInput, f"{datatype.lower()}_features", block, datatype, self.hop is None,
                        {BLOCK_COLUMNS: ",".join(names)})
            for block, names, datatype in ((numbers, self.numbers, "FP64"), (texts, self.texts, "BYTES"))
            if names
        ]  # fmt: skip
        return ids, InferRequest(self.name, inputs, request_id=payload.id)

    async def predict(self, payload, headers=None, response_headers=None):
        try:
            if self.hop is not None:
                return await self.hop.infer(payload, append_forwardable_headers(headers))
            return await super().predict(payload, headers)
        except Exception as err:  # noqa: BLE001 - the client gets a 502 naming the predictor's answer
            detail = getattr(err, "details", None)
            message = detail() if callable(detail) else str(err)
            raise PredictorFailed(f"predictor {self.predictor_config.predictor_host}: {message}") from None

    def stop(self):
        super().stop()
        if self.hop is not None:  # KServe unloads models from its signal handler, on the server's loop
            try:
                asyncio.get_running_loop().create_task(self.hop.close())
            except RuntimeError:  # no loop running: the session dies with the process
                pass

    def postprocess(self, result, headers=None, response_headers=None):
        ids = _REQUEST_IDS.get()
        proba = result.get_output_by_name("churn_probability")
        labels = result.get_output_by_name("churn_label")
        if proba is None or labels is None:
            raise PredictorFailed("predictor answered without churn_probability/churn_label")
        proba = proba.as_numpy().astype(np.float32).reshape(-1)
        labels = labels.as_numpy().astype(np.int64).reshape(-1)
        version = result.model_version or (result.parameters or {}).get("model_version")
        if version:
            self.answered_version = str(version)
        outputs = [
            InferOutput(USER_ID, [len(ids)], "BYTES", data=ids),
            InferOutput("churn_probability", [len(ids)], "FP32", data=proba.tolist()),
            InferOutput("churn_label", [len(ids)], "INT64", data=labels.tolist()),
        ]
        return InferResponse(
            response_id=result.id or uuid.uuid4().hex,
            model_name=self.name,
            infer_outputs=outputs,
            model_version=version,
            parameters={"model_version": str(version)},
        )

    def get_input_types(self):
        return [{"name": USER_ID, "datatype": "BYTES", "shape": [-1]}]

    def versions(self) -> list[str]:
        """The model metadata's ``versions``: the model version the predictor answered the last request with (none
        before the first answer). Not asked of the predictor: a metadata call makes no hop, so it answers while the
        predictor is away; after a hot swap it shows the new version from the next answer on."""
        return [self.answered_version] if self.answered_version else []

    def get_output_types(self):
        return [
            {"name": USER_ID, "datatype": "BYTES", "shape": [-1]},
            {"name": "churn_probability", "datatype": "FP32", "shape": [-1]},
            {"name": "churn_label", "datatype": "INT64", "shape": [-1]},
        ]


ERRORS = (MissingFeatures, BatchTooLarge, PredictorFailed)


def course_routes(app, model, errors) -> None:
    """``GET /health``, ``GET /features/{user_id}``, ``POST /predict`` as the course API answered, on the v2 path."""
    from fastapi.responses import JSONResponse
    from kserve.protocol.infer_type import InferInput, InferRequest

    from pipelines.errors import InvalidInput as PipelineInvalidInput
    from pipelines.online import OnlineStoreUnavailable

    missing_features, batch_too_large, predictor_failed = errors

    async def health():
        return {"status": "ok", "model": model.name}

    async def features(user_id: str):
        if not user_id.strip():
            return JSONResponse({"error": f"user_id {user_id!r} is not a user id"}, status_code=400)
        store = model.open_features()
        try:
            result = await asyncio.to_thread(store.lookup, [user_id])
        except OnlineStoreUnavailable as err:
            raise FeaturesUnavailable(str(err)) from None
        except PipelineInvalidInput as err:
            return JSONResponse({"error": str(err)}, status_code=400)
        body = {
            "user_id": user_id,
            "features": {n: result.columns[n][0] for n in store.names},
            "missing_features": result.missing.get(user_id, []),
        }
        known = len(body["missing_features"]) < len(store.names)
        return JSONResponse(body, status_code=200 if known else 404)

    async def predict(request: Request):
        try:
            body = json.loads(await request.body())
        except ValueError as err:
            return JSONResponse({"error": f"body is not JSON: {err}"}, status_code=400)
        user_id = body.get("user_id") if isinstance(body, dict) else None
        if not isinstance(user_id, str) or not user_id.strip():
            return JSONResponse({"error": f'expected {{"user_id": "<id>"}}, got {body!r}'[:300]}, status_code=400)
        tensor = InferInput(USER_ID, [1], "BYTES", data=[user_id])
        try:
            response, _ = await model(InferRequest(model.name, [tensor]))
        except missing_features as err:
            return JSONResponse(
                {"error": f"Missing features for user_id={user_id}", "missing_features": err.missing[user_id]},
                status_code=422,
            )
        except InvalidInput as err:  # the id itself (a lone surrogate): answered here, without KServe's traceback
            return JSONResponse({"error": str(err)}, status_code=400)
        return {
            "user_id": user_id,
            "prediction": int(response.get_output_by_name("churn_label").data[0]),
            "probability": float(response.get_output_by_name("churn_probability").data[0]),
            "model_version": response.model_version,
        }

    app.add_api_route("/health", health, methods=["GET"])
    app.add_api_route("/features/{user_id}", features, methods=["GET"])
    app.add_api_route("/predict", predict, methods=["POST"])


def error_handlers(app, errors) -> None:
    from fastapi.responses import JSONResponse

    missing_features, batch_too_large, predictor_failed = errors

    async def on_missing(_request, exc):
        return JSONResponse(
            {"error": "missing features: no prediction was made", "missing_features": exc.missing}, status_code=422
        )

    async def on_too_large(_request, exc):
        return JSONResponse({"error": str(exc)}, status_code=413)

    async def on_predictor(_request, exc):
        return JSONResponse({"error": str(exc)}, status_code=502)

    app.add_exception_handler(missing_features, on_missing)
    app.add_exception_handler(batch_too_large, on_too_large)
    app.add_exception_handler(predictor_failed, on_predictor)


def build_parser(settings: Settings) -> argparse.ArgumentParser:
    """The transformer's command line (what :func:`main` parses): KServe's arguments with StreamFlow's defaults.
    Importable without starting anything, so a test can parse a manifest's exact args."""
    parser = base_parser(
        "StreamFlow Feast transformer (KServe v2)",
        settings,
        settings.transformer_http_port,
        settings.transformer_grpc_port,
    )
    parser.add_argument(
        "--max_batch_size", type=int, default=settings.max_batch_size, help="Most user ids per request (more: 413)."
    )
    parser.set_defaults(predictor_protocol="v2", predictor_host=f"{settings.serve_host}:{settings.predictor_http_port}")
    return parser


def open_store(model: FeastTransformer, settings: Settings, interval: float) -> threading.Thread | None:
    """Open the online store for ``model`` now, or keep trying every ``interval`` seconds in a thread (returned).

    On a fresh install the transformer starts before the first workflow has run ``features apply``: it is live and
    not ready (requests answered 503 with the reason) until the store opens, as the predictor waits for its first
    model, instead of exiting into a restart loop whose back-off outlasts the bootstrap. One log line per reason."""
    from pipelines.online import OnlineFeatures

    def attempt() -> str | None:
        try:
            model.attach(OnlineFeatures(settings))
        except Exception as err:  # noqa: BLE001 - any reason the store cannot open: wait, say why once
            return str(err).splitlines()[0][:300] if str(err) else type(err).__name__
        return None

    reason = attempt()
    if reason is None:
        return None
    model.waiting_for = reason
    log.warning("transformer: waiting for the feature store (not ready until it opens): %s", reason)

    def keep_trying() -> None:
        said = reason
        while True:
            time.sleep(interval)
            now = attempt()
            if now is None:
                log.warning("transformer: the feature store is open: ready")
                return
            model.waiting_for = now
            if now != said:
                log.warning("transformer: waiting for the feature store: %s", now)
                said = now

    thread = threading.Thread(target=keep_trying, name="feature-store-wait", daemon=True)
    thread.start()
    return thread


def main(argv: list[str] | None = None) -> None:
    settings = Settings()
    args = build_parser(settings).parse_args(argv)
    if args.predictor_protocol not in ("v2", "grpc-v2"):
        raise SystemExit(f"--predictor_protocol {args.predictor_protocol}: the predictor speaks v2 (REST) or grpc-v2")
    logging.basicConfig(level=settings.log_level)

    from kserve.predictor_config import PredictorConfig

    metrics = ServerMetrics("transformer")
    errors = ERRORS
    config = PredictorConfig(
        predictor_host=args.predictor_host,
        predictor_protocol=args.predictor_protocol,
        predictor_use_ssl=args.predictor_use_ssl,
        predictor_request_timeout_seconds=args.predictor_request_timeout_seconds,
        predictor_request_retries=args.predictor_request_retries,
        predictor_health_check=args.enable_predictor_health_check,
    )
    hop = None
    if args.predictor_protocol == "v2":
        hop = PredictorHop(
            config.predictor_base_url,
            args.model_name,
            args.predictor_request_timeout_seconds,
            args.predictor_request_retries,
        )
    model = FeastTransformer(args.model_name, None, hop, args.max_batch_size, metrics)
    open_store(model, settings, settings.model_poll_seconds)
    # ~64 bytes of JSON per id is generous (ids are ~10 characters); past it the body is refused before parsing
    max_body = 64 * args.max_batch_size + 4096

    def hooks(app) -> None:
        error_handlers(app, errors)
        course_routes(app, model, errors)
        request_guard(app, max_body)
        add_request_metrics(app, metrics, lambda path: path.endswith("/infer") or path == "/predict")

    log.warning(
        "transformer %s → predictor %s (%s); listening on %s:%d (REST) and :%d (gRPC)",
        args.model_name,
        args.predictor_host,
        args.predictor_protocol,
        args.host,
        args.http_port,
        args.grpc_port,
    )
    run_server(args, model, predictor_config=config, app_hooks=hooks)


if __name__ == "__main__":
    main()
