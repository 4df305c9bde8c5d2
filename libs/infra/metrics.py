"""Prometheus metrics of every process: one registry per process, names prefixed ``accrue_``,
served on ``ACCRUE_METRICS_HOST:ACCRUE_METRICS_PORT`` (path /metrics) by libs/infra/service.Host.

What is measured, and where:
- gRPC: requests by method and status code, latency by method (``MetricsInterceptor``,
  the outermost interceptor of libs/infra/grpc_server.GrpcServer);
- REST (the gateway): requests by method, route template and status, latency
  (``HttpMetrics``, around the ASGI app; the app names the route in the scope);
- JetStream consumers (libs/infra/messaging.py): pending, unacknowledged and redelivered
  messages per durable (sampled from consumer_info), events handled, dead letters written;
- the outbox backlog (unpublished rows, sampled by the relay);
- the database pool (connections checked out and the pool size, read at scrape time).

The hot path only increments counters and observes histograms whose labelled children are
cached (no label resolution or allocation per request beyond a dict lookup). Gauges that
cost a query or a round trip are sampled in the background, never per request.

Port 0 (the default) binds any free port: several processes share a laptop; the bound
port is logged and, when the process has a port file, written to ``<port file>.metrics``.
Kubernetes sets a fixed one (9464) for the scrape annotations.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Awaitable, Callable, Iterable, Iterator
from typing import Any

import grpc
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, ProcessCollector, start_http_server
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector
from pydantic_settings import BaseSettings, SettingsConfigDict
from sqlalchemy.ext.asyncio import AsyncEngine

from libs.infra.grpc_handlers import Inner, each_response, rewrap

# One registry per process (not prometheus_client's global one: only what Accrue defines).
REGISTRY = CollectorRegistry(auto_describe=True)
ProcessCollector(registry=REGISTRY)

# seconds; RPCs are mostly sub-millisecond to tens of milliseconds, a deadline is seconds
_LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)

RPC_REQUESTS = Counter("accrue_rpc_requests", "gRPC requests served, by full method and status code", ["method", "code"], registry=REGISTRY)
RPC_LATENCY = Histogram(
    "accrue_rpc_duration_seconds", "gRPC request latency (server side)", ["method"], buckets=_LATENCY_BUCKETS, registry=REGISTRY
)
HTTP_REQUESTS = Counter(
    "accrue_http_requests", "REST requests answered, by method, route template and status", ["method", "route", "status"], registry=REGISTRY
)
HTTP_LATENCY = Histogram(
    "accrue_http_request_duration_seconds",
    "REST request latency, by method and route template",
    ["method", "route"],
    buckets=_LATENCY_BUCKETS,
    registry=REGISTRY,
)
CONSUMER_PENDING = Gauge(
    "accrue_consumer_pending",
    "JetStream messages not yet delivered to the durable consumer (its lag)",
    ["stream", "consumer"],
    registry=REGISTRY,
)
CONSUMER_ACK_PENDING = Gauge(
    "accrue_consumer_ack_pending", "JetStream messages delivered and not yet acknowledged", ["stream", "consumer"], registry=REGISTRY
)
CONSUMER_REDELIVERED = Gauge(
    "accrue_consumer_redelivered",
    "JetStream messages delivered more than once and not yet acknowledged",
    ["stream", "consumer"],
    registry=REGISTRY,
)
CONSUMER_EVENTS = Counter(
    "accrue_consumer_events", "events a consumer handled and acknowledged (stored, for the aggregator)", ["consumer"], registry=REGISTRY
)
DEAD_LETTERS = Counter("accrue_dead_letters", "events written to the dead_letters table", ["consumer"], registry=REGISTRY)
OUTBOX_BACKLOG = Gauge("accrue_outbox_backlog", "outbox rows not yet published to JetStream", ["service"], registry=REGISTRY)
OUTBOX_PUBLISHED = Counter("accrue_outbox_published", "outbox rows published to JetStream", ["service"], registry=REGISTRY)

# a route label for requests that matched no route (404, 405, /healthz, /openapi.json)
NO_ROUTE = "(none)"
# the ASGI scope key where the app puts the matched route's template (never the raw path)
ROUTE_SCOPE_KEY = "accrue.route"


class MetricsSettings(BaseSettings):
    """Where the endpoint listens (ACCRUE_METRICS_*): loopback and any free port on a laptop,
    0.0.0.0:9464 in Kubernetes (deploy/k8s)."""

    model_config = SettingsConfigDict(env_prefix="ACCRUE_METRICS_", extra="ignore")

    enabled: bool = True
    host: str = "127.0.0.1"
    port: int = 0


_endpoint_lock = threading.Lock()
_endpoint_port: int | None = None


def start_endpoint(settings: MetricsSettings | None = None) -> int | None:
    """Serve REGISTRY on /metrics (a daemon thread); the bound port. Once per process: a
    second call (several hosts in one test process) returns the first's port. None if off."""
    global _endpoint_port
    settings = settings or MetricsSettings()
    if not settings.enabled:
        return None
    with _endpoint_lock:
        if _endpoint_port is None:
            server, _ = start_http_server(settings.port, addr=settings.host, registry=REGISTRY)
            _endpoint_port = int(server.server_port)
        return _endpoint_port


class _PoolCollector(Collector):
    """The SQLAlchemy pools of this process's hosts, read when scraped (no sampling loop)."""

    def __init__(self) -> None:
        self._engines: dict[str, AsyncEngine] = {}
        self._lock = threading.Lock()

    def add(self, service: str, engine: AsyncEngine) -> None:
        with self._lock:
            self._engines[service] = engine

    def remove(self, service: str, engine: AsyncEngine) -> None:
        with self._lock:
            if self._engines.get(service) is engine:
                del self._engines[service]

    def describe(self) -> Iterable[GaugeMetricFamily]:
        return self._families()

    def _families(self) -> tuple[GaugeMetricFamily, GaugeMetricFamily]:
        return (
            GaugeMetricFamily("accrue_db_pool_checked_out", "database connections in use", labels=["service"]),
            GaugeMetricFamily("accrue_db_pool_size", "database connections the pool keeps (overflow excluded)", labels=["service"]),
        )

    def collect(self) -> Iterator[GaugeMetricFamily]:
        checked_out, size = self._families()
        with self._lock:
            engines = list(self._engines.items())
        for service, engine in engines:
            pool: Any = engine.pool
            if hasattr(pool, "checkedout") and hasattr(pool, "size"):
                checked_out.add_metric([service], float(pool.checkedout()))
                size.add_metric([service], float(pool.size()))
        yield checked_out
        yield size


POOLS = _PoolCollector()
REGISTRY.register(POOLS)


class _RpcMethod:
    """The labelled children of one method: latency, and a counter per status code."""

    __slots__ = ("codes", "latency", "name")

    def __init__(self, name: str) -> None:
        self.name = name
        self.latency = RPC_LATENCY.labels(name)
        self.codes: dict[grpc.StatusCode, Any] = {}

    def observe(self, code: grpc.StatusCode, seconds: float) -> None:
        counter = self.codes.get(code)
        if counter is None:
            counter = self.codes[code] = RPC_REQUESTS.labels(self.name, code.name)
        counter.inc()
        self.latency.observe(seconds)


def _code(context: grpc.aio.ServicerContext, failed: BaseException | None) -> grpc.StatusCode:
    """The status the call ends with: set by abort / set_code, else OK, or from the error."""
    code = context.code()
    if isinstance(code, grpc.StatusCode):
        return code
    if isinstance(code, int):  # grpc keeps the raw value after abort on some paths
        return _BY_VALUE.get(code, grpc.StatusCode.UNKNOWN)
    if failed is None:
        return grpc.StatusCode.OK
    if isinstance(failed, BaseException) and type(failed).__name__ == "CancelledError":
        return grpc.StatusCode.CANCELLED
    return grpc.StatusCode.UNKNOWN


_BY_VALUE = {code.value[0]: code for code in grpc.StatusCode}


class MetricsInterceptor(grpc.aio.ServerInterceptor):  # type: ignore[misc]
    """Counts every RPC by method and final status code and observes its latency; the
    outermost interceptor, so it sees the status the others set (domain errors included)."""

    def __init__(self) -> None:
        self._methods: dict[str, _RpcMethod] = {}

    def _method(self, name: str) -> _RpcMethod:
        method = self._methods.get(name)
        if method is None:
            method = self._methods[name] = _RpcMethod(name)
        return method

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(handler_call_details)
        if handler is None:  # unknown method: grpc answers UNIMPLEMENTED itself
            return handler
        m = self._method(handler_call_details.method)
        return rewrap(handler, one_response=lambda inner: _timed(inner, m), streamed_responses=lambda inner: _timed_stream(inner, m))


def _timed(inner: Inner, m: _RpcMethod) -> Inner:
    """A handler with one response, counted and timed."""

    async def timed(request: Any, context: grpc.aio.ServicerContext) -> Any:
        started = time.perf_counter()
        failed: BaseException | None = None
        try:
            return await inner(request, context)
        except BaseException as exc:
            failed = exc
            raise
        finally:
            m.observe(_code(context, failed), time.perf_counter() - started)

    return timed


def _timed_stream(inner: Inner, m: _RpcMethod) -> Inner:
    """A handler that streams its responses: latency is the whole call, until the last one."""

    async def timed(request: Any, context: grpc.aio.ServicerContext) -> Any:
        started = time.perf_counter()
        failed: BaseException | None = None
        try:
            async for response in each_response(inner(request, context)):
                yield response
        except BaseException as exc:
            failed = exc
            raise
        finally:
            m.observe(_code(context, failed), time.perf_counter() - started)

    return timed


Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


class HttpMetrics:
    """ASGI middleware: counts each HTTP request by method, route template and status and
    observes its latency. The route is what the app put in ``scope[ROUTE_SCOPE_KEY]`` (a
    template such as ``/v0/products/{id}``), NO_ROUTE otherwise: never the raw path, whose
    ids would make a series per customer object. A request the client left unanswered
    counts with status 499."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self._latency: dict[tuple[str, str], Any] = {}
        self._requests: dict[tuple[str, str, int], Any] = {}

    def __getattr__(self, name: str) -> Any:  # the wrapped app's attributes (tests read them)
        return getattr(self.app, name)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 499

        async def send_and_note(message: dict[str, Any]) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_and_note)
        except BaseException:
            if status == 499:
                status = 500
            raise
        finally:
            self.observe(scope["method"], scope.get(ROUTE_SCOPE_KEY, NO_ROUTE), status, time.perf_counter() - started)

    def observe(self, method: str, route: str, status: int, seconds: float) -> None:
        latency = self._latency.get((method, route))
        if latency is None:
            latency = self._latency[(method, route)] = HTTP_LATENCY.labels(method, route)
        requests = self._requests.get((method, route, status))
        if requests is None:
            requests = self._requests[(method, route, status)] = HTTP_REQUESTS.labels(method, route, str(status))
        requests.inc()
        latency.observe(seconds)
