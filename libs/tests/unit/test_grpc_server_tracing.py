"""The server's tracing interceptor when no tracer provider records spans (tracing off):
the call runs in the caller's trace context from its metadata, as OpenTelemetry's no-op
span would have made it, and the wrapped handler is built once per method."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest
from opentelemetry import trace
from opentelemetry.instrumentation.grpc import aio_server_interceptor

from libs.infra import grpc_server, telemetry

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
SPAN_ID = "00f067aa0ba902b7"


class _Context:
    def __init__(self, metadata: tuple[tuple[str, str], ...]) -> None:
        self._metadata = metadata

    def invocation_metadata(self) -> tuple[tuple[str, str], ...]:
        return self._metadata


class _Details:
    def __init__(self, method: str) -> None:
        self.method = method


def _seen_ids() -> tuple[str, str]:
    context = trace.get_current_span().get_span_context()
    return format(context.trace_id, "032x"), format(context.span_id, "016x")


async def _unary(request: Any, context: Any) -> tuple[str, str]:
    return _seen_ids()


async def _streamed(request: Any, context: Any) -> AsyncIterator[tuple[str, str]]:
    yield _seen_ids()
    yield _seen_ids()


@pytest.fixture
def tracing_off(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(grpc_server, "records_spans", lambda: False)


async def _intercepted(handler: grpc.RpcMethodHandler, method: str = "/accrue.catalog.v1.CatalogService/GetProduct") -> Any:
    traced = grpc_server._Traced(aio_server_interceptor())  # type: ignore[no-untyped-call]

    async def continuation(details: Any) -> grpc.RpcMethodHandler:
        return handler

    first = await traced.intercept_service(continuation, _Details(method))
    again = await traced.intercept_service(continuation, _Details(method))
    assert again is first  # built once per method
    return first


async def test_a_unary_call_runs_in_the_callers_trace(tracing_off: None) -> None:
    wrapped = await _intercepted(grpc.unary_unary_rpc_method_handler(_unary))
    context = _Context((("traceparent", f"00-{TRACE_ID}-{SPAN_ID}-01"), ("authorization", "Bearer x")))
    assert await wrapped.unary_unary(None, context) == (TRACE_ID, SPAN_ID)
    assert not trace.get_current_span().get_span_context().is_valid  # detached afterwards


async def test_a_streaming_call_runs_in_the_callers_trace(tracing_off: None) -> None:
    wrapped = await _intercepted(grpc.unary_stream_rpc_method_handler(_streamed))
    context = _Context((("traceparent", f"00-{TRACE_ID}-{SPAN_ID}-01"),))
    assert [ids async for ids in wrapped.unary_stream(None, context)] == [(TRACE_ID, SPAN_ID)] * 2


async def test_a_call_without_trace_context_has_no_span(tracing_off: None) -> None:
    wrapped = await _intercepted(grpc.unary_unary_rpc_method_handler(_unary))
    assert await wrapped.unary_unary(None, _Context(())) == ("0" * 32, "0" * 16)


def test_the_full_interceptor_runs_only_when_a_provider_records_spans(monkeypatch: pytest.MonkeyPatch) -> None:
    from opentelemetry.sdk.trace import TracerProvider

    for provider, records in ((trace.ProxyTracerProvider(), False), (trace.NoOpTracerProvider(), False), (TracerProvider(), True)):
        monkeypatch.setattr(trace, "_TRACER_PROVIDER", None)  # records_spans reads the global first
        monkeypatch.setattr(trace, "get_tracer_provider", lambda provider=provider: provider)
        assert telemetry.records_spans() is records, type(provider).__name__
