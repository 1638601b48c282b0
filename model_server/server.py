"""What both StreamFlow model servers share: the KServe ModelServer they run in, their arguments and metrics.

Both servers are plain ``kserve.Model`` subclasses run by ``kserve.ModelServer``, exactly as in a pod. Two things
differ from the SDK's defaults, each on purpose:

* **the listen address is an argument** (``--host``, default ``STREAMFLOW_SERVE_HOST``): KServe 0.21 binds REST to
  ``0.0.0.0`` and gRPC to ``[::]`` unconditionally; a local run and the tests listen on ``127.0.0.1`` only, a pod
  passes ``0.0.0.0``;
* **no per-request log lines by default**: KServe's timing middleware and latency log line cost up to a quarter of
  a 1-row request (measured, see bench/README); the same figures are in the Prometheus histograms.
  ``--access_log`` / ``--enable_latency_logging true`` bring the lines back;
* **a model that is not ready yet is served anyway** (the predictor on a fresh install, before the first
  promotion): KServe's ``ModelServer`` refuses to start without a ready model and its server readiness ignores the
  models. Here every model is registered, the server is live at once, and ``/v2/health/ready`` (REST and gRPC) is
  true only when every model is ready; until then the model's ``/ready`` and ``/infer`` answer 503 ``ModelNotReady``
  — without KServe's traceback per answer, which a readiness probe would print every few seconds;
* **KServe's model-repository API is off** (REST ``/v2/repository/...`` answers 403, gRPC ``RepositoryModelLoad`` /
  ``RepositoryModelUnload`` UNIMPLEMENTED): see :data:`REPOSITORY_OFF`.

The one Prometheus registry of the process (``prometheus_client.REGISTRY``) is what KServe serves on ``/metrics``:
KServe's own request histograms plus the ``streamflow_*`` metrics built by :class:`ServerMetrics`.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import logging
import re
import sys
import time
import warnings
from collections.abc import Awaitable, Callable
from typing import Any

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram

from pipelines.config import Settings

log = logging.getLogger(__name__)

# 0.25 ms … 2.5 s: a 1-row request is a few milliseconds, a 10,000-id batch a few hundred
LATENCY_BUCKETS = (0.00025, 0.0005, 0.001, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.02, 0.03, 0.05, 0.1, 0.25, 0.5, 1, 2.5)
PROBABILITY_BUCKETS = tuple(round(0.05 * i, 2) for i in range(1, 20))

# KServe 0.21 registers ``POST /v2/repository/models/{name}/load|unload`` (REST) and ``RepositoryModelLoad|Unload``
# (gRPC) on every server, unauthenticated. One unload made every later inference fail until a restart (``load``
# cannot bring the model back: it answers 503) while readiness and /metrics still said all was well. They are off,
# not kept behind an admin credential: what a StreamFlow server serves is decided in one place, the MLflow registry
# alias the predictor follows (``streamflow promote`` / ``--rollback``), and the transformer has one model for its
# whole life; there is nothing an operator could usefully load or unload here, so a credential (and the Secret
# holding it) would guard a door that only ever leads to an outage. REST answers 403 (a deliberate refusal, not a
# 404 that reads as "no such model"); gRPC answers UNIMPLEMENTED, its code for "not enabled in this service"
# (PERMISSION_DENIED would suggest another caller may).
REPOSITORY_OFF = (
    "the model repository API (load/unload) is off on StreamFlow servers: what is served follows the MLflow "
    "registry alias (change it with `streamflow promote`, or `streamflow promote --rollback`)"
)


class ServerMetrics:
    """The ``streamflow_*`` metrics of one server process (labelled by ``server``: predictor | transformer)."""

    def __init__(self, server: str, registry: CollectorRegistry = REGISTRY) -> None:
        self.server = server
        self.requests = Counter(
            "streamflow_requests",
            "Inference requests answered, by protocol and status (HTTP code or gRPC status name).",
            ["server", "protocol", "status"],
            registry=registry,
        )
        self.latency = Histogram(
            "streamflow_request_duration_seconds",
            "End-to-end time of an inference request inside this server, by protocol.",
            ["server", "protocol"],
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.predictions = Counter(
            "streamflow_predictions",
            "Predictions returned, by label (1 = will churn).",
            ["server", "label"],
            registry=registry,
        )
        self.probability = Histogram(
            "streamflow_churn_probability",
            "Churn probabilities returned.",
            ["server"],
            buckets=PROBABILITY_BUCKETS,
            registry=registry,
        )
        self.missing_features = Counter(
            "streamflow_missing_features",
            "Features found missing for a requested user id (unknown users count every feature).",
            ["server", "feature"],
            registry=registry,
        )
        self.model_info = Gauge(
            "streamflow_model_info",
            "1 for the model version this server answers with (registered model, version, alias, run).",
            ["server", "model", "version", "alias", "run_id"],
            registry=registry,
        )
        self.registry_reachable = Gauge(
            "streamflow_registry_reachable",
            "1 when the last poll of the MLflow registry answered, 0 while the server keeps its last model.",
            ["server"],
            registry=registry,
        )
        self.reloads = Counter(
            "streamflow_model_reloads",
            "Model swaps after the registry alias moved, by result.",
            ["server", "result"],
            registry=registry,
        )
        self.load_failures = Counter(
            "streamflow_model_load_failures",
            "Failed attempts to load the version the registry alias names (each retry counts; retried with backoff).",
            ["server"],
            registry=registry,
        )
        self.pending_version = Gauge(
            "streamflow_model_version_pending",
            "The version the registry alias names but this server could not load yet (0: none pending).",
            ["server"],
            registry=registry,
        )
        self.in_flight = Gauge(
            "streamflow_requests_in_flight",
            "Inference requests this server is answering now (received, not yet answered), by protocol.",
            ["server", "protocol"],
            registry=registry,
        )
        self._in_flight = {p: self.in_flight.labels(server, p) for p in ("rest", "grpc")}

        self._request_children: dict[tuple[str, str], tuple] = {}
        self._prediction_children: tuple | None = None

    def started(self, protocol: str):
        """One more request in flight; call the returned function once it is answered (whatever the outcome)."""
        child = self._in_flight[protocol]
        child.inc()
        return child.dec

    def observe_request(self, protocol: str, status: str, seconds: float) -> None:
        children = self._request_children.get((protocol, status))
        if children is None:  # ``labels()`` costs a few µs a call: each label set is looked up once
            children = (self.requests.labels(self.server, protocol, status), self.latency.labels(self.server, protocol))
            self._request_children[(protocol, status)] = children
        children[0].inc()
        children[1].observe(seconds)

    def observe_predictions(self, probabilities: list[float], labels) -> None:
        """Count the returned labels and record each churn probability."""
        if self._prediction_children is None:  # looked up once, as in observe_request
            self._prediction_children = (
                self.probability.labels(self.server),
                self.predictions.labels(self.server, "1"),
                self.predictions.labels(self.server, "0"),
            )
        histogram, churn, stay = self._prediction_children
        for p in probabilities:
            histogram.observe(p)
        churners = int(labels.sum())
        churn.inc(churners)
        stay.inc(len(labels) - churners)

    def set_model(self, model: str, version: str, alias: str, run_id: str) -> None:
        self.model_info.clear()
        self.model_info.labels(self.server, model, version, alias, run_id).set(1)


def add_request_metrics(app, metrics: ServerMetrics, paths: Callable[[str], bool]) -> None:
    """Count and time the REST requests whose path ``paths`` accepts, whatever their status (malformed JSON too).

    A plain ASGI middleware: it sees the status KServe's exception handlers chose.
    """

    def middleware(asgi_app):
        async def wrapped(scope, receive, send):
            if scope["type"] != "http" or not paths(scope["path"]):
                return await asgi_app(scope, receive, send)
            start = time.perf_counter()
            status = {"code": 500}
            done = metrics.started("rest")

            async def send_status(message):
                if message["type"] == "http.response.start":
                    status["code"] = message["status"]
                await send(message)

            try:
                await asgi_app(scope, receive, send_status)
            finally:
                done()
                metrics.observe_request("rest", str(status["code"]), time.perf_counter() - start)

        return wrapped

    app.add_middleware(_Wrap, factory=middleware)


class _Wrap:
    """Adapter so ``app.add_middleware`` can take a function-style ASGI middleware."""

    def __init__(self, app, factory) -> None:
        self._app = factory(app)

    async def __call__(self, scope, receive, send) -> None:
        await self._app(scope, receive, send)


def request_guard(app, max_bytes: int) -> None:
    """Before KServe reads a request:

    * answer 413 when its body passes ``max_bytes`` (a JSON body is parsed whole, so a limit on ids alone would
      come after the cost): at once when its Content-Length says so; for a body sent ``Transfer-Encoding:
      chunked`` (no length up front) by counting the bytes as they arrive, see :func:`_read_bounded`;
    * read an ``/infer`` body sent without a JSON content type (``curl -d`` sends a form type) as JSON, unless it
      carries the binary-tensor header: KServe would otherwise take it for binary tensors and refuse it.

    Every route of the app goes through it: v2, v1 and the transformer's course routes.
    """

    def middleware(asgi_app):
        async def wrapped(scope, receive, send):
            if scope["type"] == "http":
                headers = dict(scope.get("headers") or [])
                length = headers.get(b"content-length")
                if length is not None and length.isdigit() and int(length) > max_bytes:
                    return await _too_large(send, f"request body of {int(length)} bytes", max_bytes)
                if b"transfer-encoding" in headers:
                    receive = await _read_bounded(receive, send, max_bytes)
                    if receive is None:  # answered 413, or the client went away
                        return
                if (
                    scope["path"].endswith("/infer")
                    and not headers.get(b"content-type", b"").startswith(b"application/json")
                    and b"inference-header-content-length" not in headers
                ):
                    headers[b"content-type"] = b"application/json"
                    scope = {**scope, "headers": list(headers.items())}
            await asgi_app(scope, receive, send)

        return wrapped

    app.add_middleware(_Wrap, factory=middleware)


async def _read_bounded(receive, send, max_bytes: int):
    """Read a chunked body here, before the app starts, counting as it arrives; past ``max_bytes`` answer 413 and
    stop reading (uvicorn drops what the client still sends once the answer is complete: it is never held).

    Returns a ``receive`` that hands the app the body read, or None when the request is over (413 sent, or the
    client disconnected). Read up front rather than counted inside the app's own reads: FastAPI turns any exception
    raised while it reads a body into a 400 "There was an error parsing the body", and a route that has begun to
    answer cannot become a 413. It costs nothing more: every route here reads the whole body before using it.
    A body with a Content-Length needs none of this: the HTTP parser delivers no more than the length checked.
    """
    chunks: list[bytes] = []
    received = 0
    more = True
    while more:
        message = await receive()
        if message["type"] == "http.disconnect":
            return None
        chunk = message.get("body", b"")
        received += len(chunk)
        if received > max_bytes:
            chunks.clear()
            await _too_large(send, "chunked request body", max_bytes)
            return None
        chunks.append(chunk)
        more = message.get("more_body", False)
    body = b"".join(chunks)
    chunks.clear()
    replayed = False

    async def replay():
        nonlocal replayed
        if replayed:
            return await receive()  # after the body: the server's own (disconnect) messages
        replayed = True
        return {"type": "http.request", "body": body, "more_body": False}

    return replay


async def _too_large(send, what: str, max_bytes: int) -> None:
    body = json.dumps({"error": f"{what} is over the {max_bytes} bytes limit"}).encode()
    await send(
        {
            "type": "http.response.start",
            "status": 413,
            "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())],
        }
    )
    await send({"type": "http.response.body", "body": body})


async def models_ready(model_registry) -> bool:
    """At least one model registered and every registered model ready: the servers' readiness (with KServe's own).

    KServe's ``all(...)`` over the registered models is true for none, and a model unloaded is no longer registered:
    whatever takes the model away, readiness goes with it."""
    models = list(model_registry.get_models().values())
    return bool(models) and all([await m.healthy() for m in models])


def refuse_repository_api(app) -> None:
    """Answer every ``/v2/repository/...`` request (any method) 403 with :data:`REPOSITORY_OFF`.

    Called before KServe registers its routes: the first API route that matches answers, so KServe's load/unload
    handlers are never reached. (Taking them out instead would mean editing FastAPI's internals: 0.16x keeps an
    included router's routes inside it, not in ``app.router.routes``; and a plain Starlette route would not do,
    FastAPI tries those only after every API route.)"""
    from fastapi.responses import JSONResponse

    async def refused():
        return JSONResponse({"error": REPOSITORY_OFF}, status_code=403)

    methods = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"]
    app.add_api_route("/v2/repository/{rest:path}", refused, methods=methods, include_in_schema=False)


class RepositoryOff(Exception):
    """A model-repository call over gRPC: answered UNIMPLEMENTED with :data:`REPOSITORY_OFF`."""


def fast_infer(app, endpoints: Callable[[], Any]) -> None:
    """Answer ``POST /v2/models/{name}/infer`` with a JSON body by calling KServe's ``V2Endpoints.infer`` directly.

    The handler the FastAPI route runs (``model_ready``, ``decode``, ``infer``, ``encode`` on the same ``DataPlane``),
    with the body validated as a v2 ``InferenceRequest`` by pydantic as the route does, and two costs left out:
    FastAPI's per-request routing and dependency solving, and ``jsonable_encoder`` walking the response in Python
    (pydantic serialises it instead, to the same JSON). Measured on one user: ~0.5 ms of the transformer's ~2.5 ms
    of CPU. Errors go to the exception handlers registered on the app (KServe's and ours), so every status and
    message is the one the route gives; anything else (binary tensors, versioned paths, other routes) goes to FastAPI.
    """
    from kserve.protocol.rest.v2_datamodels import InferenceRequest
    from pydantic import ValidationError
    from starlette.requests import Request
    from starlette.responses import JSONResponse, Response

    path = re.compile(r"^/v2/models/([^/]+)/infer$")

    async def answer(name: str, body: bytes, request: Request) -> Response:
        raw = Response()  # the response FastAPI would inject: KServe sets headers (or a binary body) on it
        del raw.headers["content-length"]
        result = await endpoints().infer(request, raw, name, InferenceRequest.model_validate_json(body))
        if result is raw:  # binary outputs asked for: the body KServe encoded
            return raw
        headers = {k: v for k, v in raw.headers.items() if k != "content-type"}
        return Response(result.model_dump_json(), media_type="application/json", headers=headers)

    def middleware(asgi_app):
        async def wrapped(scope, receive, send):
            match = path.match(scope["path"]) if scope["type"] == "http" and scope["method"] == "POST" else None
            headers = dict(scope.get("headers") or []) if match else {}
            if (
                match is None
                or not headers.get(b"content-type", b"").startswith(b"application/json")
                or b"inference-header-content-length" in headers
            ):
                return await asgi_app(scope, receive, send)
            chunks, more = [], True
            while more:
                message = await receive()
                if message["type"] == "http.disconnect":
                    return
                chunks.append(message.get("body", b""))
                more = message.get("more_body", False)
            try:
                response = await answer(match.group(1), b"".join(chunks), Request(scope))
            except ValidationError as err:
                response = JSONResponse({"error": _malformed_message(err.errors())}, status_code=400)
            except Exception as err:
                handlers = app.exception_handlers
                handler = next((handlers[c] for c in type(err).__mro__ if c in handlers), None)
                if handler is None:
                    raise
                response = await handler(Request(scope), err)
            await response(scope, receive, send)

        return wrapped

    app.add_middleware(_Wrap, factory=middleware)


def base_parser(description: str, settings: Settings, http_port: int, grpc_port: int) -> argparse.ArgumentParser:
    """KServe's own arguments (``--http_port``, ``--grpc_port``, ``--model_name``, ``--predictor_host`` …) with
    StreamFlow's defaults, plus ``--host`` and ``--access_log``."""
    from kserve import model_server

    # allow_abbrev=False: a manifest's flag must be spelled out (``--poll`` is not silently ``--poll_seconds``);
    # an unknown flag is an error of parse_args (KServe's own import-time parse_known_args ignores it)
    parser = argparse.ArgumentParser(description=description, parents=[model_server.parser], allow_abbrev=False)
    parser.add_argument("--host", default=settings.serve_host, help="Address to listen on (REST and gRPC).")
    parser.add_argument("--access_log", action="store_true", help="Log one line per request (off: it costs ~25 %%).")
    parser.set_defaults(
        http_port=http_port,
        grpc_port=grpc_port,
        model_name=settings.served_model_name,
        enable_latency_logging=False,
        max_threads=2,
    )
    return parser


def run_server(args: argparse.Namespace, model, predictor_config=None, app_hooks: Callable | None = None) -> None:
    """Serve ``model`` on REST and gRPC at ``args.host`` until SIGTERM/SIGINT."""
    from fastapi.exceptions import FastAPIDeprecationWarning, RequestValidationError
    from grpc import StatusCode
    from kserve import ModelServer
    from kserve.constants.constants import FASTAPI_APP_IMPORT_STRING
    from kserve.errors import InvalidInput, ModelNotReady, ServerNotReady
    from kserve.model_server import app
    from kserve.protocol.dataplane import DataPlane
    from kserve.protocol.grpc import grpc_predict_v2_pb2, grpc_predict_v2_pb2_grpc
    from kserve.protocol.grpc.interceptors import ExceptionToStatusInterceptor
    from kserve.protocol.grpc.server import GRPCServer
    from kserve.protocol.grpc.servicer import InferenceServicer
    from kserve.protocol.rest.server import RESTServer
    from kserve.protocol.rest.v2_endpoints import V2Endpoints

    host = args.host
    # What each override of KServe's start-up buys (everything else is KServe's own code path):
    # - _RESTServer / _GRPCServer: the listen address (KServe 0.21 binds 0.0.0.0 and [::] in code: a pod needs it, a
    #   laptop must not); the per-request timing middleware off (~0.3 ms a request); the repository API refused.
    # - _DataPlane: readiness false without a loaded model; metadata with the served version.
    # - _Interceptor / _Servicer: gRPC statuses KServe gets wrong (UNKNOWN + traceback for not-ready), repository off.
    # - _ModelServer.start: starts with a model that is not ready yet (KServe refuses to), and runs the loop under
    #   uvloop as uvicorn's "auto" means (measured side by side: c=1 p50 6.7 → 5.5 ms, commit 1370754).

    class _RESTServer(RESTServer):
        def __init__(self, *a, **kw) -> None:
            super().__init__(*a, **kw)
            self.config.host = host

        def _add_middlewares(self, app) -> None:
            # KServe's TimingMiddleware formats a log line per request even when nobody reads it
            if args.access_log:
                super()._add_middlewares(app)

        def _register_endpoints(self, app) -> None:
            refuse_repository_api(app)  # first: it shadows KServe's load/unload routes
            super()._register_endpoints(app)

        def _add_exception_handlers(self, app) -> None:
            super()._add_exception_handlers(app)
            for error in (ModelNotReady, ServerNotReady):  # the same 503, without a traceback per probe
                app.add_exception_handler(error, _not_ready)
            app.add_exception_handler(InvalidInput, _bad_request)  # the same 400, without a traceback per bad request

    class _DataPlane(DataPlane):
        async def ready(self) -> bool:
            """KServe's server readiness, and a model registered, every one ready."""
            return await models_ready(self.model_registry) and await super().ready()

        async def model_metadata(self, model_name: str) -> dict:
            """KServe's model metadata, with ``versions`` (KServe leaves it null): the model's ``versions()``."""
            metadata = await super().model_metadata(model_name)
            versions = getattr(self.get_model_from_registry(model_name), "versions", None)
            if versions is not None:
                metadata["versions"] = versions()
            return metadata

    class _Interceptor(ExceptionToStatusInterceptor):
        async def handle_exception(self, ex, request_or_iterator, context, method_name):
            if isinstance(ex, ModelNotReady | ServerNotReady):  # KServe 0.21 reads ModelNotReady's missing .reason
                await context.abort(StatusCode.UNAVAILABLE, str(ex))  # (UNKNOWN) and logs a traceback for both
            if isinstance(ex, RepositoryOff):
                await context.abort(StatusCode.UNIMPLEMENTED, str(ex))
            await super().handle_exception(ex, request_or_iterator, context, method_name)

    class _Servicer(InferenceServicer):
        async def ModelMetadata(self, request, context):
            metadata = await self._data_plane.model_metadata(model_name=request.name)
            return grpc_predict_v2_pb2.ModelMetadataResponse(
                name=metadata["name"],
                versions=metadata.get("versions") or [],
                platform=metadata["platform"],
                inputs=metadata["inputs"],
                outputs=metadata["outputs"],
            )

        async def RepositoryModelLoad(self, request, context):
            raise RepositoryOff(REPOSITORY_OFF)

        async def RepositoryModelUnload(self, request, context):
            raise RepositoryOff(REPOSITORY_OFF)

    class _GRPCServer(GRPCServer):
        async def start(self, max_workers):
            from concurrent import futures

            from grpc import aio

            self._server = aio.server(
                futures.ThreadPoolExecutor(max_workers=max_workers),
                interceptors=(_Interceptor(),),
                options=[
                    ("grpc.max_send_message_length", args.grpc_max_send_message_length),
                    ("grpc.max_receive_message_length", args.grpc_max_receive_message_length),
                ],
            )
            grpc_predict_v2_pb2_grpc.add_GRPCInferenceServiceServicer_to_server(
                _Servicer(self._data_plane, self._model_repository_extension), self._server
            )
            address = f"[::]:{self._port}" if host in ("0.0.0.0", "::") else f"{host}:{self._port}"
            self._server.add_insecure_port(address)
            log.info("gRPC listening on %s", address)
            await self._server.start()
            await self._server.wait_for_termination()

    class _ModelServer(ModelServer):
        def __init__(self, **kwargs) -> None:
            super().__init__(**kwargs)
            self.dataplane = _DataPlane(model_registry=self.registered_models)

        def start(self, models) -> None:
            for model in models:  # ready or not (KServe would refuse to start without a ready one)
                self.register_model(model)
                model.enable_latency_logging = self.enable_latency_logging
                model.start()
            self._rest_server = _RESTServer(
                FASTAPI_APP_IMPORT_STRING,
                self.dataplane,
                self.model_repository_extension,
                self.http_port,
                access_log_format=self.access_log_format,
                workers=1,
                grace_period=self.grace_period,
                event_loop=self.event_loop,
                timeout_keep_alive=self.timeout_keep_alive,
            )
            self.servers.append(self._rest_server.start())
            if self.enable_grpc:
                self._grpc_server = _GRPCServer(
                    self.grpc_port,
                    self.dataplane,
                    self.model_repository_extension,
                    kwargs=vars(args),
                    grace_period=self.grace_period,
                )
                self.servers.append(self._grpc_server.start(self.max_threads))
            self.setup_event_loop()
            self.register_signal_handler()
            run = asyncio.run
            if args.event_loop != "asyncio":  # uvicorn's meaning of auto: uvloop when installed
                try:
                    from uvloop import run
                except ImportError:
                    if args.event_loop == "uvloop":
                        raise SystemExit("--event_loop uvloop: uvloop is not installed") from None
            run(self._serve())

    # FastAPI 0.16x deprecates the ORJSONResponse KServe answers with and warns on *every* response (other
    # libraries' catch_warnings reset the once-only registry): a log line and ~0.3 ms per request
    warnings.filterwarnings("ignore", category=FastAPIDeprecationWarning)
    if args.workers != 1:
        raise SystemExit("--workers: StreamFlow servers run one worker per process; scale with replicas")
    if not args.access_log:
        logging.getLogger("uvicorn.access").setLevel(logging.WARNING)
    app.add_exception_handler(RequestValidationError, _malformed)
    endpoints = []
    fast_infer(app, lambda: endpoints[0])  # innermost: the hooks' guards and request metrics see its requests too
    if app_hooks is not None:
        app_hooks(app)
    server = _ModelServer(
        http_port=args.http_port,
        grpc_port=args.grpc_port,
        workers=1,
        max_threads=args.max_threads,
        max_asyncio_workers=args.max_asyncio_workers,
        enable_grpc=args.enable_grpc,
        enable_latency_logging=args.enable_latency_logging,
        access_log_format=args.access_log_format,
        event_loop=args.event_loop,
        timeout_keep_alive=args.timeout_keep_alive,
        grace_period=5,
        predictor_config=predictor_config,
    )
    endpoints.append(V2Endpoints(server.dataplane, server.model_repository_extension))
    # Feast, MLflow, pandas and the model leave ~215k long-lived objects that a full collection walks in ~0.2 s
    # here, in the middle of whatever request triggered it (the c=8 p99 outliers): frozen out of its reach
    gc.collect()
    gc.freeze()
    # Batches are read and scored in threads: with CPython's default 5 ms GIL switch interval the event loop waited
    # up to 5 ms for the GIL each time it woke while a thread ran Python (Feast's row decoding). 0.5 ms, measured
    # side by side (all reads in threads): c=8 1,095 → 1,405 req/s, a 1-user request beside 10,000-id batches
    # p50 35 → 14 ms; the batches themselves no slower.
    sys.setswitchinterval(0.0005)
    server.start([model])


async def _bad_request(_request, exc):
    """KServe's 400 for a refused request (same body), logged as one line: the client's mistake is not a server
    error, and KServe's handler logs a traceback at ERROR for each one."""
    from fastapi.responses import JSONResponse

    log.info("refused request: %s", str(exc).splitlines()[0][:300] if str(exc) else type(exc).__name__)
    return JSONResponse(status_code=400, content={"error": str(exc)})


async def _not_ready(_request, exc):
    """KServe's 503 for a model or server not ready yet, logged at debug level only."""
    from fastapi.responses import JSONResponse

    log.debug("not ready: %s", exc)
    return JSONResponse({"error": str(exc)}, status_code=503)


async def _malformed(_request, exc):
    """A body FastAPI could not parse as a v2 request: 400 with the first problem, not a pydantic dump."""
    from fastapi.responses import JSONResponse

    return JSONResponse({"error": _malformed_message(exc.errors())}, status_code=400)


def _malformed_message(errors: list[dict]) -> str:
    first = (errors or [{}])[0]
    where = ".".join(str(p) for p in first.get("loc", ()) if p != "body")
    detail = first.get("ctx", {}).get("error") or first.get("msg", "invalid")
    return f"malformed request{' at ' + where if where else ''}: {detail}"


async def counted_call(metrics: ServerMetrics, call: Callable[..., Awaitable], body, headers, verb):
    """``Model.__call__`` with gRPC requests counted and timed (REST ones are counted by the HTTP middleware of
    :func:`add_request_metrics`, which sees every status, malformed bodies included), and the answer's outputs
    shaped as the v2 request asks (:func:`shape_outputs`): the one place both servers' inferences pass through."""
    wanted = _requested_outputs(call, body)
    if not getattr(body, "from_grpc", False):
        result = await call(body, headers, verb)
        if wanted is not None or getattr(body, "use_binary_outputs", False):  # common JSON request: nothing to do
            shape_outputs(body, result[0], wanted)
        return result
    start = time.perf_counter()
    status = "OK"
    done = metrics.started("grpc")
    try:
        result = await call(body, headers, verb)
        shape_outputs(body, result[0], wanted)
        return result
    except BaseException as err:
        status = _grpc_status(err)
        raise
    finally:
        done()
        metrics.observe_request("grpc", status, time.perf_counter() - start)


def _requested_outputs(call, body) -> list | None:
    """The outputs a v2 request names (None: it names none), checked against the model's outputs before any work.

    Raises:
        InvalidInput: an output the model does not answer (400 over REST, INVALID_ARGUMENT over gRPC).
    """
    wanted = getattr(body, "request_outputs", None)
    if not wanted:
        return None
    from kserve.errors import InvalidInput

    known = [o["name"] for o in call.__self__.get_output_types()]  # ``call`` is the model's bound ``__call__``
    for output in wanted:
        if output.name not in known:
            raise InvalidInput(f"outputs: unknown output {output.name!r}; this model answers {', '.join(known)}")
    return wanted


def shape_outputs(body, response, wanted: list | None) -> None:
    """Shape ``response`` (a KServe ``InferResponse``) as the v2 request ``body`` asks:

    * the requested ``outputs`` only, in their order (KServe itself returns every output);
    * over gRPC, every output in ``raw_output_contents``: NVIDIA's ``tritonclient`` reads nothing else (typed
      ``contents`` came back as empty arrays), and raw bytes are the cheaper encoding anyway;
    * over REST, binary tensors (the binary-tensor extension: ``Inference-Header-Content-Length``) for the outputs
      asked for so: the request's ``binary_data_output`` parameter, overridden by an output's own ``binary_data``.

    KServe's ``InferResponse`` has no public setters for the two encodings ``to_grpc`` / ``to_rest`` read.
    """
    from kserve.errors import InferenceError
    from kserve.protocol.infer_type import InferResponse, RequestedOutput

    if not isinstance(response, InferResponse):
        return
    if wanted is not None:
        outputs = [response.get_output_by_name(o.name) for o in wanted]
        if any(o is None for o in outputs):
            missing = [o.name for o, found in zip(wanted, outputs, strict=True) if found is None]
            raise InferenceError(f"outputs: the model answered without {', '.join(missing)}")
        response.outputs = outputs
    if body.from_grpc:
        response._use_binary_outputs = True
        return
    binary = bool(body.use_binary_outputs)
    if wanted is not None:
        response._requested_outputs = [
            RequestedOutput(o.name, {"binary_data": binary if o.binary_data is None else bool(o.binary_data)})
            for o in wanted
        ]
    else:
        response._use_binary_outputs = binary


def _grpc_status(err: BaseException) -> str:
    """The gRPC status KServe's interceptor sends for an exception."""
    from kserve.errors import InferenceError, InvalidInput, ModelNotReady, ServerNotReady

    if isinstance(err, InvalidInput | InferenceError):
        return "INVALID_ARGUMENT"
    if isinstance(err, ModelNotReady | ServerNotReady):
        return "UNAVAILABLE"
    return "INTERNAL"
