"""OpenTelemetry: one tracer provider per process, W3C trace context across gRPC and NATS.

gRPC spans come from opentelemetry-instrumentation-grpc's aio interceptors. NATS carries
the context in message headers (``traceparent``), written by the outbox relay and read by
consumers, so one REST call yields one trace through every hop it causes.
"""

from __future__ import annotations

from collections.abc import Mapping

from opentelemetry import context as otel_context
from opentelemetry import propagate, trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter

_configured = False


def configure_tracing(service: str, otlp_endpoint: str | None = None) -> None:
    """Install the SDK tracer provider when traces go somewhere (an OTLP endpoint).

    Without an endpoint the API's no-op provider stays: spans cost next to nothing, and
    the W3C trace context still flows through gRPC metadata and NATS headers, so a
    caller's trace continues across Accrue. (Recording spans nobody exports cost 10-15%
    of the gateway's CPU on the meter-event path.) Sampling follows the standard
    OTEL_TRACES_SAMPLER / OTEL_TRACES_SAMPLER_ARG variables. Tests install their own.
    """
    global _configured
    if _configured or isinstance(trace.get_tracer_provider(), TracerProvider):
        _configured = True
        return
    _configured = True
    exporter = _otlp_exporter(otlp_endpoint) if otlp_endpoint else None
    if exporter is None:
        return
    provider = TracerProvider(resource=Resource.create({"service.name": service}))
    provider.add_span_processor(BatchSpanProcessor(exporter))
    trace.set_tracer_provider(provider)


def _otlp_exporter(endpoint: str) -> SpanExporter | None:
    try:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import (  # type: ignore[import-not-found]
            OTLPSpanExporter,
        )
    except ImportError:  # the exporter is an optional extra
        return None
    exporter: SpanExporter = OTLPSpanExporter(endpoint=endpoint)
    return exporter


def tracer(name: str) -> trace.Tracer:
    return trace.get_tracer(name)


def inject_headers(headers: dict[str, str] | None = None) -> dict[str, str]:
    """The current trace context as W3C headers (traceparent, tracestate)."""
    carrier: dict[str, str] = dict(headers or {})
    propagate.inject(carrier)
    return carrier


def extract_context(headers: Mapping[str, str] | None) -> otel_context.Context:
    return propagate.extract(dict(headers or {}))
