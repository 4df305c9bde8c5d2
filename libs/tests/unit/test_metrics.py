"""The metrics plumbing (libs/infra/metrics.py) on an in-process gRPC server on loopback and
a bare ASGI app: what each RPC and request adds, by method, code, route and status."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any, cast

import grpc
import httpx
import pytest

from libs.infra import metrics

SERVICE = "test.metrics.v1.Probe"


def _value(name: str, **labels: str) -> float:
    return metrics.REGISTRY.get_sample_value(name, labels) or 0.0


def _requests(method: str, code: str) -> float:
    return _value("accrue_rpc_requests_total", method=f"/{SERVICE}/{method}", code=code)


def _latency_count(method: str) -> float:
    return _value("accrue_rpc_duration_seconds_count", method=f"/{SERVICE}/{method}")


async def _ok(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
    return request


async def _not_found(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
    await context.abort(grpc.StatusCode.NOT_FOUND, "no such thing")
    raise AssertionError("abort returns never")


async def _set_code(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
    context.set_code(grpc.StatusCode.FAILED_PRECONDITION)
    return b""


async def _crash(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
    raise RuntimeError("boom")


async def _generator(request: bytes, context: grpc.aio.ServicerContext) -> AsyncIterator[bytes]:
    for part in (b"a", b"b"):
        yield part


async def _writer(request: bytes, context: grpc.aio.ServicerContext) -> None:
    await context.write(b"w")  # a streaming handler that writes and returns nothing (health Watch)


async def _hang(request: bytes, context: grpc.aio.ServicerContext) -> None:
    await context.write(b"w")
    await asyncio.sleep(30)  # until the client cancels


async def _count(requests: AsyncIterator[bytes], context: grpc.aio.ServicerContext) -> bytes:
    return str(len([r async for r in requests])).encode()


@pytest.fixture
async def channel() -> AsyncIterator[grpc.aio.Channel]:
    handlers = {
        "Ok": grpc.unary_unary_rpc_method_handler(_ok),
        "NotFound": grpc.unary_unary_rpc_method_handler(_not_found),
        "SetCode": grpc.unary_unary_rpc_method_handler(_set_code),
        "Crash": grpc.unary_unary_rpc_method_handler(_crash),
        "Generator": grpc.unary_stream_rpc_method_handler(_generator),
        "Writer": grpc.unary_stream_rpc_method_handler(_writer),
        "Hang": grpc.unary_stream_rpc_method_handler(_hang),
        "Count": grpc.stream_unary_rpc_method_handler(_count),
    }
    server = grpc.aio.server(interceptors=[metrics.MetricsInterceptor()])
    server.add_generic_rpc_handlers([grpc.method_handlers_generic_handler(SERVICE, handlers)])
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as ch:
        yield ch
    await server.stop(None)


def _path(method: str) -> str:
    return f"/{SERVICE}/{method}"


async def test_unary_calls_are_counted_by_method_and_final_code(channel: grpc.aio.Channel) -> None:
    cases = [("Ok", "OK"), ("NotFound", "NOT_FOUND"), ("SetCode", "FAILED_PRECONDITION"), ("Crash", "UNKNOWN")]
    before = {(m, c): (_requests(m, c), _latency_count(m)) for m, c in cases}
    for method, code in cases:
        call = channel.unary_unary(_path(method))
        try:
            await call(b"x")
            got = grpc.StatusCode.OK
        except grpc.aio.AioRpcError as err:
            got = err.code()
        assert got.name == code
    for method, code in cases:
        requests, latencies = before[(method, code)]
        assert _requests(method, code) == requests + 1, (method, code)
        assert _latency_count(method) == latencies + 1
    # a method's other codes did not move
    assert _requests("Ok", "NOT_FOUND") == 0.0


async def test_streaming_calls_are_counted_once_each_whatever_the_handler_style(channel: grpc.aio.Channel) -> None:
    before = {m: _requests(m, "OK") for m in ("Generator", "Writer", "Count")}
    assert [r async for r in channel.unary_stream(_path("Generator"))(b"")] == [b"a", b"b"]
    assert [r async for r in channel.unary_stream(_path("Writer"))(b"")] == [b"w"]

    async def three() -> AsyncIterator[bytes]:
        for _ in range(3):
            yield b"."

    assert await channel.stream_unary(_path("Count"))(three()) == b"3"
    for method, count in before.items():
        assert _requests(method, "OK") == count + 1, method


async def test_a_call_the_client_cancels_counts_as_cancelled(channel: grpc.aio.Channel) -> None:
    before = _requests("Hang", "CANCELLED")
    call = channel.unary_stream(_path("Hang"))(b"")
    assert await call.read() == b"w"
    call.cancel()
    for _ in range(200):  # the server learns of the cancel asynchronously
        if _requests("Hang", "CANCELLED") > before:
            break
        await asyncio.sleep(0.01)
    assert _requests("Hang", "CANCELLED") == before + 1
    assert _requests("Hang", "OK") == 0.0


async def _app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["path"].startswith("/v0/things/"):
        scope[metrics.ROUTE_SCOPE_KEY] = "/v0/things/{id}"
        status = 200
    else:
        status = 404
    await send({"type": "http.response.start", "status": status, "headers": []})
    await send({"type": "http.response.body", "body": b"{}"})


async def test_http_requests_are_labelled_by_route_template_never_by_raw_path() -> None:
    app = metrics.HttpMetrics(_app)

    def count(route: str, status: str) -> float:
        return _value("accrue_http_requests_total", method="GET", route=route, status=status)

    before_ok, before_missing = count("/v0/things/{id}", "200"), count(metrics.NO_ROUTE, "404")
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=cast(Any, app)), base_url="http://test") as client:
        for thing in ("thing_1", "thing_2", "thing_3"):
            assert (await client.get(f"/v0/things/{thing}")).status_code == 200
        assert (await client.get("/nowhere/thing_4")).status_code == 404
    assert count("/v0/things/{id}", "200") == before_ok + 3
    assert count(metrics.NO_ROUTE, "404") == before_missing + 1
    assert _value("accrue_http_request_duration_seconds_count", method="GET", route="/v0/things/{id}") >= 3
    exposed = metrics.REGISTRY.collect()
    labels = {s.labels.get("route") for family in exposed for s in family.samples}
    assert not any(label and "thing_" in label for label in labels)


def test_the_endpoint_serves_the_registry_once_per_process() -> None:
    port = metrics.start_endpoint(metrics.MetricsSettings(port=0))
    assert port is not None and metrics.start_endpoint() == port
    text = httpx.get(f"http://127.0.0.1:{port}/metrics").text
    assert "accrue_rpc_requests_total" in text or "# HELP accrue_rpc_requests_total" in text
    assert metrics.start_endpoint(metrics.MetricsSettings(enabled=False)) is None
