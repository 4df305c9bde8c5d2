"""OpenTelemetry: one tracer provider per process, W3C trace context across gRPC and NATS.

gRPC spans come from opentelemetry-instrumentation-grpc's aio interceptors. NATS carries
the context in message headers (``traceparent``), written by the outbox relay and read by
consumers, so one REST call yields one trace through every hop it causes.

Probes are not traces: health checks and reflection (``grpc.health.v1``,
``grpc.reflection.*``) are dropped by the sampler (``ProbeFilter``), on the server and on
the client side alike, so a kubelet probing every few seconds exports nothing.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from opentelemetry import context as otel_context
from opentelemetry import propagate, trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter
from opentelemetry.sdk.trace.sampling import Decision, Sampler, SamplingResult, _get_from_env_or_default
from opentelemetry.trace import Link, SpanKind
from opentelemetry.util.types import Attributes

from libs.infra.logging import get_logger

log = get_logger(__name__)
_configured = False
# gRPC span names are the full method (/package.Service/Method): these are probes
PROBE_PREFIXES = ("/grpc.health.v1.", "/grpc.reflection.")


class ProbeFilter(Sampler):
    """Drops the spans of health checks and reflection; the rest is up to ``inner`` (the
    sampler OTEL_TRACES_SAMPLER names, parent-based always-on by default)."""

    def __init__(self, inner: Sampler | None = None) -> None:
        self._inner = inner or _get_from_env_or_default()

    def should_sample(
        self,
        parent_context: otel_context.Context | None,
        trace_id: int,
        name: str,
        kind: SpanKind | None = None,
        attributes: Attributes = None,
        links: Sequence[Link] | None = None,
        trace_state: trace.TraceState | None = None,
    ) -> SamplingResult:
        if name.startswith(PROBE_PREFIXES):
            return SamplingResult(Decision.DROP)
        return self._inner.should_sample(parent_context, trace_id, name, kind, attributes, links, trace_state)

    def get_description(self) -> str:
        return f"ProbeFilter{{{self._inner.get_description()}}}"


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
    provider = TracerProvider(resource=Resource.create({"service.name": service}), sampler=ProbeFilter())
    provider.add_span_processor(BatchSpanProcessor(exporter))
    trace.set_tracer_provider(provider)


def _otlp_exporter(endpoint: str) -> SpanExporter | None:
    try:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    except ImportError as exc:  # a broken install: say so, tracing stays off
        log.error("tracing_off_exporter_missing", endpoint=endpoint, error=repr(exc), install="opentelemetry-exporter-otlp-proto-http")
        return None
    exporter: SpanExporter = OTLPSpanExporter(endpoint=_traces_url(endpoint))
    log.info("tracing_on", endpoint=_traces_url(endpoint))
    return exporter


def _traces_url(endpoint: str) -> str:
    """The OTLP/HTTP traces URL: an endpoint given as the collector's base address
    (``http://collector:4318``, as OTEL_EXPORTER_OTLP_ENDPOINT is) gets ``/v1/traces``."""
    base = endpoint.rstrip("/")
    return base if base.endswith("/v1/traces") else f"{base}/v1/traces"


def records_spans() -> bool:
    """Whether a tracer provider that records spans is installed (the SDK's, or a test's).
    When none is, the hot paths skip OpenTelemetry's no-op spans and only carry the
    caller's W3C context on (libs/infra/grpc_server.py, grpc_client.py, the gateway)."""
    # the global the API's set_tracer_provider sets (get_tracer_provider would read the
    # environment on every call while none is set: this runs once per request)
    provider = getattr(trace, "_TRACER_PROVIDER", None) or trace.get_tracer_provider()
    return not isinstance(provider, (trace.ProxyTracerProvider, trace.NoOpTracerProvider))


def tracer(name: str) -> trace.Tracer:
    return trace.get_tracer(name)


def inject_headers(headers: dict[str, str] | None = None) -> dict[str, str]:
    """The current trace context as W3C headers (traceparent, tracestate)."""
    carrier: dict[str, str] = dict(headers or {})
    propagate.inject(carrier)
    return carrier


def extract_context(headers: Mapping[str, str] | None) -> otel_context.Context:
    return propagate.extract(dict(headers or {}))
