"""Traces arrive: a mesh started by the runner with ACCRUE_OTEL_EXPORTER_OTLP_ENDPOINT in
its environment exports to a real OTLP/HTTP receiver, one trace per REST call across
gateway -> service -> NATS -> consumer, for a catalog change (into metering's consumer)
and for a meter event (down to the aggregator's insert); and no probe becomes a trace."""

from __future__ import annotations

import gzip
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import grpc
import httpx
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest, ExportTraceServiceResponse
from opentelemetry.proto.trace.v1.trace_pb2 import Span as OtlpSpan

from libs.infra.runner import Mesh
from libs.testing.meshes import own_mesh

pytestmark = pytest.mark.integration


@dataclass(frozen=True)
class Received:
    service: str
    name: str
    kind: str
    trace_id: str
    span_id: str
    parent_span_id: str
    links: tuple[str, ...]


class OtlpReceiver:
    """An OTLP/HTTP collector in a thread: POST /v1/traces, protobuf bodies, every span kept."""

    def __init__(self) -> None:
        self.spans: list[Received] = []
        self.posts = 0
        self._lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                if self.headers.get("Content-Encoding") == "gzip":
                    body = gzip.decompress(body)
                if self.path != "/v1/traces" or self.headers.get("Content-Type") != "application/x-protobuf":
                    self.send_response(404)
                    self.end_headers()
                    return
                receiver.add(ExportTraceServiceRequest.FromString(body))
                answer = ExportTraceServiceResponse().SerializeToString()
                self.send_response(200)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)

            def log_message(self, format: str, *args: object) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    def add(self, request: ExportTraceServiceRequest) -> None:
        with self._lock:
            self.posts += 1
            for resource_spans in request.resource_spans:
                attrs = {a.key: a.value.string_value for a in resource_spans.resource.attributes}
                for scope_spans in resource_spans.scope_spans:
                    for span in scope_spans.spans:
                        self.spans.append(
                            Received(
                                service=attrs.get("service.name", ""),
                                name=span.name,
                                kind=OtlpSpan.SpanKind.Name(span.kind).removeprefix("SPAN_KIND_"),
                                trace_id=span.trace_id.hex(),
                                span_id=span.span_id.hex(),
                                parent_span_id=span.parent_span_id.hex(),
                                links=tuple(link.span_id.hex() for link in span.links),
                            )
                        )

    def snapshot(self) -> list[Received]:
        with self._lock:
            return list(self.spans)

    def wait_for(self, found: Callable[[list[Received]], bool], timeout: float = 20) -> list[Received]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            spans = self.snapshot()
            if found(spans):
                return spans
            time.sleep(0.1)
        raise AssertionError(f"not received within {timeout}s; got {sorted({(s.service, s.name, s.kind) for s in self.snapshot()})}")

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()


@pytest.fixture
def receiver() -> Iterator[OtlpReceiver]:
    found = OtlpReceiver()
    yield found
    found.close()


@pytest.fixture
def traced_mesh(infra_mesh: Mesh, tmp_path: Path, receiver: OtlpReceiver, monkeypatch: pytest.MonkeyPatch) -> Iterator[Mesh]:
    """A mesh of its own, the endpoint in the runner's environment (as `make run` would
    have it), the collector's base address as OTEL_EXPORTER_OTLP_ENDPOINT is given."""
    monkeypatch.setenv("ACCRUE_OTEL_EXPORTER_OTLP_ENDPOINT", receiver.url)
    monkeypatch.setenv("OTEL_BSP_SCHEDULE_DELAY", "100")  # export every 0.1 s, not 5 s
    mesh = own_mesh(infra_mesh, tmp_path, "otlp")
    try:
        mesh.start(merchant_name="Traced merchant")
        yield mesh
    finally:
        mesh.stop()


def _one_trace(spans: list[Received], root_name: str) -> tuple[Received, dict[tuple[str, str, str], Received]]:
    roots = [s for s in spans if s.service == "gateway" and s.name == root_name and s.kind == "SERVER"]
    assert len(roots) == 1, roots
    in_trace = {(s.service, s.name, s.kind): s for s in spans if s.trace_id == roots[0].trace_id}
    return roots[0], in_trace


def _has_hops(spans: list[Received], root_name: str, named: list[tuple[str, str, str]], kinds: list[tuple[str, str]]) -> bool:
    """Whether the trace under the gateway's root span `root_name` holds every (service, name,
    kind) in `named` and a span of every (service, kind) in `kinds`."""
    roots = [s for s in spans if s.service == "gateway" and s.name == root_name and s.kind == "SERVER"]
    if not roots:
        return False
    in_trace = [s for s in spans if s.trace_id == roots[0].trace_id]
    have = {(s.service, s.name, s.kind) for s in in_trace}
    have_kinds = {(s.service, s.kind) for s in in_trace}
    return all(n in have for n in named) and all(k in have_kinds for k in kinds)


def _parent(child: Received, parent: Received) -> None:
    assert child.trace_id == parent.trace_id
    assert child.parent_span_id == parent.span_id, (child, parent)


def test_traces_arrive_one_per_call_across_every_hop_and_probes_are_not_traced(traced_mesh: Mesh, receiver: OtlpReceiver) -> None:
    headers = {"Authorization": f"Bearer {traced_mesh.api_key}"}
    base = traced_mesh.gateway_url
    product = httpx.post(f"{base}/v0/products", json={"name": "Traced", "description": "t"}, headers=headers, timeout=10)
    assert product.status_code == 201, product.text
    product_id = product.json()["id"]
    # a raw id in the path: the span is named by the route's template
    assert httpx.get(f"{base}/v0/products/{product_id}", headers=headers, timeout=10).status_code == 200
    event_type = f"traced.{uuid.uuid4().hex[:8]}"
    metric = httpx.post(
        f"{base}/v0/billableMetrics",
        json={"productId": product_id, "name": "T", "description": "t", "unit": "t", "aggregation": "COUNT", "eventType": event_type},
        headers=headers,
        timeout=10,
    )
    assert metric.status_code == 201, metric.text

    # the catalog change: gateway -> catalog -> outbox publish -> metering's consumer
    method = "/accrue.catalog.v1.CatalogService/CreateBillableMetric"
    # each process exports on its own schedule: wait until every hop of the trace is in
    spans = receiver.wait_for(
        lambda spans: _has_hops(
            spans,
            "POST /v0/billableMetrics",
            [("gateway", method, "CLIENT"), ("catalog", method, "SERVER")],
            [("catalog", "PRODUCER"), ("metering", "CONSUMER")],
        )
    )
    root, in_trace = _one_trace(spans, "POST /v0/billableMetrics")
    client = in_trace[("gateway", method, "CLIENT")]
    server = in_trace[("catalog", method, "SERVER")]
    (publish,) = [s for k, s in in_trace.items() if k[0] == "catalog" and k[2] == "PRODUCER"]
    (consumed,) = [s for k, s in in_trace.items() if k[0] == "metering" and k[2] == "CONSUMER"]
    assert publish.name.startswith("accrue.catalog.") and publish.name.endswith(" publish"), publish.name
    _parent(client, root)
    _parent(server, client)
    _parent(publish, server)
    _parent(consumed, publish)
    assert consumed.name == publish.name.replace(" publish", " process")
    assert any(s.name == "GET /v0/products/{id}" for s in spans)
    assert not any(s.name.startswith("GET /v0/products/prod") for s in spans)

    # the meter event: gateway -> metering -> meter stream publish -> aggregator -> insert
    event = {"type": event_type, "source": "t", "subject": f"cus_{uuid.uuid4().hex[:10]}", "data": {}}
    accepted = httpx.post(f"{base}/v0/events", json=event, headers=headers, timeout=10)
    assert accepted.status_code in (200, 201, 202), accepted.text
    spans = receiver.wait_for(
        lambda spans: _has_hops(
            spans,
            "POST /v0/events",
            [("metering-aggregator", "INSERT meter_events", "INTERNAL")],
            [("gateway", "CLIENT"), ("metering", "SERVER"), ("metering", "PRODUCER"), ("metering-aggregator", "CONSUMER")],
        )
    )
    root, in_trace = _one_trace(spans, "POST /v0/events")
    server = next(s for k, s in in_trace.items() if k[0] == "metering" and k[2] == "SERVER")
    client = in_trace[("gateway", server.name, "CLIENT")]
    (publish,) = [s for k, s in in_trace.items() if k[0] == "metering" and k[2] == "PRODUCER"]
    consumed = next(s for k, s in in_trace.items() if k[0] == "metering-aggregator" and k[2] == "CONSUMER")
    stored = in_trace[("metering-aggregator", "INSERT meter_events", "INTERNAL")]
    _parent(client, root)
    _parent(server, client)
    _parent(publish, server)
    _parent(consumed, publish)
    _parent(stored, consumed)

    # probes: the runner's health checks ran against every service at start; check once more,
    # let the batch processors export, and no span of a probe has arrived from anyone
    for name in ("catalog", "metering"):
        with grpc.insecure_channel(f"127.0.0.1:{traced_mesh.processes[name].port}") as channel:
            health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=""), timeout=5)
    assert httpx.get(f"{base}/healthz", timeout=5).status_code == 200
    # readiness: the gateway health-checks its backends over its own (traced) channels
    httpx.get(f"{base}/readyz", timeout=5)
    time.sleep(1.0)
    probes = [s for s in receiver.snapshot() if "grpc.health" in s.name or "grpc.reflection" in s.name or "healthz" in s.name]
    assert probes == []
    services = {s.service for s in receiver.snapshot()}
    assert {"gateway", "catalog", "metering", "metering-aggregator"} <= services
