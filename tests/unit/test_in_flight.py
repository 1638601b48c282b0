"""``streamflow_requests_in_flight``: requests received and not yet answered, per server and protocol, over REST (the
ASGI middleware both servers install) and gRPC (``counted_call``), back to 0 whatever the outcome."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

import pytest
from prometheus_client import CollectorRegistry

from model_server.server import ServerMetrics, add_request_metrics, counted_call


def in_flight(registry: CollectorRegistry, protocol: str) -> float:
    value = registry.get_sample_value("streamflow_requests_in_flight", {"server": "transformer", "protocol": protocol})
    return 0.0 if value is None else value


class _App:
    """What ``add_request_metrics`` needs of a FastAPI app: ``add_middleware``; keeps the middleware's factory."""

    def add_middleware(self, _cls, factory) -> None:
        self.factory = factory


def test_rest_requests_in_flight_rise_while_answered_and_fall_after_even_on_error() -> None:
    registry = CollectorRegistry()
    metrics = ServerMetrics("transformer", registry)
    app = _App()
    add_request_metrics(app, metrics, lambda path: path.endswith("/infer"))
    release = asyncio.Event()

    async def slow(scope, receive, send) -> None:
        await release.wait()
        if scope["path"].startswith("/fail"):
            raise RuntimeError("handler failed")
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"{}"})

    wrapped = app.factory(slow)

    async def scenario() -> list[float]:
        async def noop(_message) -> None:
            return None

        seen = []
        calls = [
            asyncio.create_task(wrapped({"type": "http", "path": p}, None, noop))
            for p in ("/v2/models/m/infer", "/v2/models/m/infer", "/fail/v2/models/m/infer")
        ]
        await asyncio.sleep(0.01)
        seen.append(in_flight(registry, "rest"))
        release.set()
        results = await asyncio.gather(*calls, return_exceptions=True)
        seen.append(in_flight(registry, "rest"))
        assert isinstance(results[2], RuntimeError)
        return seen

    assert asyncio.run(scenario()) == [3.0, 0.0]
    assert in_flight(registry, "grpc") == 0.0


@pytest.mark.parametrize("fails", [False, True])
def test_grpc_requests_in_flight_are_counted_by_counted_call(fails: bool) -> None:
    registry = CollectorRegistry()
    metrics = ServerMetrics("transformer", registry)
    release = asyncio.Event()
    body = SimpleNamespace(from_grpc=True, request_outputs=None)

    async def call(_body, _headers, _verb):
        await release.wait()
        if fails:
            raise ValueError("bad request")
        return (SimpleNamespace(outputs=[]), {})

    async def scenario() -> tuple[float, float]:
        task = asyncio.create_task(counted_call(metrics, call, body, None, None))
        await asyncio.sleep(0.01)
        during = in_flight(registry, "grpc")
        release.set()
        await asyncio.gather(task, return_exceptions=True)
        return during, in_flight(registry, "grpc")

    assert asyncio.run(scenario()) == (1.0, 0.0)
