"""Probes are no traces: the sampler every exporting process installs drops health checks
and reflection (server or client side), and leaves the rest to the configured sampler."""

from __future__ import annotations

import sys

import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.trace.sampling import ALWAYS_OFF, ALWAYS_ON, Sampler
from opentelemetry.trace import SpanKind

from libs.infra.telemetry import ProbeFilter, _traces_url

pytestmark = pytest.mark.unit


def _recorded(sampler: Sampler, *names: str) -> list[str]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider(sampler=sampler)
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracer = provider.get_tracer("test")
    for name in names:
        with tracer.start_as_current_span(name, kind=SpanKind.SERVER):
            pass
    return [span.name for span in exporter.get_finished_spans()]


def test_health_and_reflection_spans_are_dropped_and_the_rest_kept() -> None:
    names = (
        "/grpc.health.v1.Health/Check",
        "/grpc.health.v1.Health/Watch",
        "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
        "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
        "/accrue.catalog.v1.CatalogService/CreateProduct",
        "POST /v0/products",
    )
    assert _recorded(ProbeFilter(ALWAYS_ON), *names) == ["/accrue.catalog.v1.CatalogService/CreateProduct", "POST /v0/products"]


def test_the_configured_sampler_decides_the_rest() -> None:
    assert _recorded(ProbeFilter(ALWAYS_OFF), "/accrue.catalog.v1.CatalogService/CreateProduct") == []


def test_the_endpoint_may_be_the_collectors_base_or_its_traces_url() -> None:
    assert _traces_url("http://collector:4318") == "http://collector:4318/v1/traces"
    assert _traces_url("http://collector:4318/") == "http://collector:4318/v1/traces"
    assert _traces_url("http://collector:4318/v1/traces") == "http://collector:4318/v1/traces"


def test_a_missing_exporter_is_an_error_in_the_log_not_silence(monkeypatch: pytest.MonkeyPatch) -> None:
    from libs.infra import telemetry

    logged: list[tuple[str, dict[str, object]]] = []

    class Recorder:
        def error(self, event: str, **fields: object) -> None:
            logged.append((event, fields))

        def info(self, event: str, **fields: object) -> None:
            pass

    monkeypatch.setattr(telemetry, "log", Recorder())
    monkeypatch.setitem(sys.modules, "opentelemetry.exporter.otlp.proto.http.trace_exporter", None)  # import fails
    assert telemetry._otlp_exporter("http://collector:4318") is None
    assert [event for event, _ in logged] == ["tracing_off_exporter_missing"]
    assert logged[0][1]["install"] == "opentelemetry-exporter-otlp-proto-http"
