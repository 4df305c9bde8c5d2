"""The one composition root of every process: settings -> migrations -> engine -> NATS ->
the definition's parts (a gRPC server, an HTTP server, workers) -> serve, and the reverse
on SIGTERM. A service's app.py only declares what is its own (tables, streams, servicers,
consumers) as a ``ServiceDefinition``; services/registry.py lists the definitions.

Every process gets the same plumbing: logging, tracing (configure_tracing), Prometheus
metrics (libs/infra/metrics.py: ACCRUE_METRICS_PORT, the bound port also in
``<port file>.metrics``), gRPC health (a process without an HTTP part serves gRPC, health at least, so the runner and the
kubelet can probe a worker too), the outbox relay, and a graceful stop.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import signal
import socket
from collections.abc import Callable, Coroutine, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, Self, TypeVar

import grpc
import sqlalchemy as sa
import uvicorn
from nats.aio.client import Client as NatsClient
from nats.js import JetStreamContext

from libs.core.clock import Clock, SystemClock
from libs.infra import metrics, migrations
from libs.infra.db import Database, create_engine
from libs.infra.grpc_server import GrpcServer
from libs.infra.logging import configure_logging, get_logger
from libs.infra.messaging import OutboxRelay, connect, ensure_stream
from libs.infra.settings import ServiceSettings
from libs.infra.telemetry import configure_tracing

log = get_logger(__name__)
S = TypeVar("S", bound=ServiceSettings)
T = TypeVar("T")


@dataclass
class Runtime:
    """What a service's servicers, HTTP app and workers are built from."""

    settings: ServiceSettings
    db: Database
    nats: NatsClient
    js: JetStreamContext
    clock: Clock
    # objects a service's parts share (built once, in register / http / workers)
    extras: dict[str, Any] = field(default_factory=dict)

    def settings_as(self, cls: type[S]) -> S:
        """The settings, as the definition's own class (ServiceDefinition.settings)."""
        if not isinstance(self.settings, cls):
            raise TypeError(f"{type(self.settings).__name__} is not {cls.__name__}")
        return self.settings


class Worker(Protocol):
    """A background loop of a service: consumers, aggregators."""

    async def run(self) -> None: ...

    def stop(self) -> None: ...


def _no_workers(runtime: Runtime) -> Sequence[Worker]:
    return []


@dataclass
class ServiceDefinition:
    """One process kind of Accrue: what it serves, its database and streams, and how the
    mesh deploys it (the runner and the Kubernetes manifests follow the same fields)."""

    name: str
    # the tables of the database it opens (infra tables included)
    metadata: sa.MetaData
    # its Alembic history; None: the schema belongs to another definition (a worker
    # process of a service opens the service's database and never migrates it)
    migrations_dir: Path | None = None
    # the settings class it reads from the environment (ACCRUE_*)
    settings: type[ServiceSettings] = ServiceSettings
    # gRPC: the fully qualified proto services served (health, reflection) and the
    # function adding their servicers; a process without an HTTP part serves gRPC
    # health even when it has no servicers (a worker)
    grpc_services: Sequence[str] = ()
    register: Callable[[grpc.aio.Server, Runtime], None] | None = None
    # HTTP: the uvicorn configuration of its ASGI app (the gateway); probed on HTTP
    http: Callable[[Runtime], uvicorn.Config] | None = None
    # JetStream streams this service produces: name -> subjects (only the producer
    # creates its stream; consumers import the names from the producer's events.py)
    streams: dict[str, list[str]] = field(default_factory=dict)
    # background workers (event consumers, aggregators), built after register()
    workers: Callable[[Runtime], Sequence[Worker]] = _no_workers
    # whether it connects to NATS at all, and relays its outbox there
    messaging: bool = True
    relay_outbox: bool = True
    # deployment: whose database it opens (default its own: accrue_<name>), the
    # services whose gRPC address it is given (ACCRUE_<NAME>_ADDR), fixed settings
    database: str | None = None
    talks_to: Sequence[str] = ()
    env: Mapping[str, str] = field(default_factory=dict)
    # whether it mints merchant tokens (ACCRUE_TOKEN_SIGNING_KEY): the gateway for its
    # callers, and services that call others for a merchant outside any request (the
    # billing timeline's scheduler, libs.infra.context.acting_for); every other process
    # only verifies them and never gets the key
    mints_tokens: bool = False

    def __post_init__(self) -> None:
        if self.http is not None and (self.register is not None or self.grpc_services):
            raise ValueError(f"{self.name}: a process serves gRPC or HTTP, not both")

    @property
    def database_name(self) -> str:
        """Which service's database it opens."""
        return self.database or self.name

    @property
    def serves_grpc(self) -> bool:
        return self.http is None


class Host:
    """Runs one definition in this process; tests use it directly, main() wraps it."""

    def __init__(self, definition: ServiceDefinition, settings: ServiceSettings | None = None, clock: Clock | None = None) -> None:
        self.definition = definition
        self.settings = settings if settings is not None else definition.settings()
        self.clock = clock or SystemClock()
        # the port it is reached on (the HTTP one for an HTTP process, else gRPC's)
        self.port = 0
        self.grpc_port = 0
        self.http_port = 0
        # the process's Prometheus endpoint (shared by every host of the process); None: off
        self.metrics_port: int | None = None
        self.runtime: Runtime | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._relay: OutboxRelay | None = None
        self._workers: list[Worker] = []
        self._grpc: GrpcServer | None = None
        self._http: uvicorn.Server | None = None
        self._http_task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        d, s = self.definition, self.settings
        if s.migrate_on_start and d.migrations_dir is not None:
            await asyncio.to_thread(migrations.upgrade, s.database_url, d.migrations_dir, d.metadata)
        db = Database(create_engine(s.database_url, pool_size=s.db_pool_size), d.metadata)
        metrics.POOLS.add(d.name, db.engine)
        self.metrics_port = metrics.start_endpoint()
        if d.messaging:
            nc = await connect(s.nats_url, name=f"accrue-{d.name}")
            for stream, subjects in d.streams.items():
                await ensure_stream(nc.jetstream(), stream, subjects)
        else:
            nc = NatsClient()  # never connected: what uses it fails at once
        self.runtime = Runtime(settings=s, db=db, nats=nc, js=nc.jetstream(), clock=self.clock)
        if d.serves_grpc:
            self._grpc = GrpcServer(d.grpc_services, s.grpc_host, s.grpc_port, settings=s)
            if d.register is not None:
                d.register(self._grpc.server, self.runtime)
        if d.messaging and d.relay_outbox and s.outbox_relay_enabled:
            self._relay = OutboxRelay(db, self.runtime.js, service=d.name)
            self._tasks.append(asyncio.create_task(self._relay.run(), name=f"{d.name}-outbox-relay"))
        self._workers = list(d.workers(self.runtime))
        for worker in self._workers:
            self._tasks.append(asyncio.create_task(worker.run()))
        if self._grpc is not None:
            await self._grpc.start()
            self.port = self.grpc_port = self._grpc.port
        if d.http is not None:
            await self._start_http(d.http(self.runtime))
            self.port = self.http_port
        if s.port_file:
            if self.metrics_port is not None:  # before the port file: once that exists, both do
                Path(f"{s.port_file}.metrics").write_text(str(self.metrics_port))
            Path(s.port_file).write_text(str(self.port))
        log.info("service_started", port=self.port, metrics_port=self.metrics_port)

    async def _start_http(self, config: uvicorn.Config) -> None:
        """uvicorn on a socket bound here (http_port 0: any free port, known at once)."""
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if self.settings.http_reuse_port:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        try:
            sock.bind((self.settings.http_host, self.settings.http_port))
        except OSError:
            sock.close()
            raise
        self.http_port = sock.getsockname()[1]
        self._http = uvicorn.Server(config)
        self._http_task = asyncio.create_task(self._http.serve(sockets=[sock]))
        while not self._http.started:
            if self._http_task.done():
                await self._http_task
                raise RuntimeError(f"{self.definition.name}: the HTTP server exited while starting")
            await asyncio.sleep(0.01)

    async def wait(self) -> None:
        """Until the HTTP server exits by itself (uvicorn stops on SIGINT/SIGTERM), or forever."""
        if self._http_task is not None:
            # wait(), not await: cancelling this waiter must not cancel the server
            await asyncio.wait([self._http_task])
        else:
            await asyncio.Event().wait()

    async def stop(self) -> None:
        if self._http is not None and self._http_task is not None:
            self._http.should_exit = True
            with contextlib.suppress(Exception):
                await self._http_task
        if self._grpc is not None:
            await self._grpc.stop(self.settings.shutdown_grace_seconds)
        if self._relay is not None:
            self._relay.stop()
        for worker in self._workers:
            worker.stop()
        if self._tasks:
            _, pending = await asyncio.wait(self._tasks, timeout=2.0)
            for task in pending:
                task.cancel()
            with contextlib.suppress(Exception, asyncio.CancelledError):
                await asyncio.gather(*pending, return_exceptions=True)
        if self.runtime is not None:
            if self.definition.messaging:
                # not drain(): it waits up to 30 s for pull subscriptions; the workers have
                # stopped, unacked messages are redelivered, and publishes were all awaited
                with contextlib.suppress(Exception):
                    await self.runtime.nats.flush(timeout=2)
                with contextlib.suppress(Exception):
                    await self.runtime.nats.close()
            metrics.POOLS.remove(self.definition.name, self.runtime.db.engine)
            await self.runtime.db.dispose()
        log.info("service_stopped")


# The cyclic collector's young-generation threshold for a serving process (CPython's
# default is 700). A batch of 1,000 meter events makes tens of thousands of short-lived
# containers that reference counting frees anyway; at 700 the collector ran dozens of
# times per batch. Measured (bench/profile_ingest.py, alternately): metering's CPU per
# streamed event 31/28 -> 25/25 us, the aggregator's 9.7/8.7 -> 6.7/6.4 us.
GC_THRESHOLD = (50_000, 20, 100)


def tune_garbage_collector() -> None:
    """Once a process is up: what it has loaded (modules, descriptors, pools, caches)
    moves out of the collector's sight (``gc.freeze``), so no collection walks it again,
    and the young generation is collected less often (``GC_THRESHOLD``). Cyclic garbage
    is still collected, later."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLD)


async def serve_until_signalled(host: Host) -> None:
    """Start, run until SIGINT/SIGTERM (or the HTTP server stops on one), stop."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await host.start()
    tune_garbage_collector()
    stopped = asyncio.create_task(stop.wait())
    exited = asyncio.create_task(host.wait())
    await asyncio.wait([stopped, exited], return_when=asyncio.FIRST_COMPLETED)
    for task in (stopped, exited):
        task.cancel()
    await host.stop()


def main(definition: ServiceDefinition, argv: Sequence[str] | None = None) -> None:
    """Entry point of one process: ``[serve|migrate]`` (``python -m services.run <name>``)."""
    parser = argparse.ArgumentParser(prog=f"accrue-{definition.name}")
    parser.add_argument("command", nargs="?", default="serve", choices=["serve", "migrate"])
    args = parser.parse_args(argv)
    settings = definition.settings()
    configure_logging(definition.name, settings.log_level)
    if args.command == "migrate":
        if definition.migrations_dir is None:
            parser.error(f"{definition.name} has no migrations of its own (its service's migrate does them)")
        migrations.upgrade(settings.database_url, definition.migrations_dir, definition.metadata)
        log.info("migrated")
        return
    configure_tracing(definition.name, settings.otel_exporter_otlp_endpoint)
    run(serve_until_signalled(Host(definition, settings)))


class Servicer:
    """Base of a service's servicer (next to the generated base): the database and the clock
    it is built from; ``of`` builds it from the runtime, for ``servicer(...)``."""

    def __init__(self, db: Database, clock: Clock) -> None:
        self._db = db
        self._clock = clock

    @classmethod
    def of(cls, runtime: Runtime) -> Self:
        return cls(runtime.db, runtime.clock)


def servicer(
    add_to_server: Callable[[T, grpc.aio.Server], None], build: Callable[[Runtime], T]
) -> Callable[[grpc.aio.Server, Runtime], None]:
    """A ``register`` that adds one servicer: ``servicer(pb2_grpc.add_XServicer_to_server, lambda runtime: XServicer(...))``."""

    def register(server: grpc.aio.Server, runtime: Runtime) -> None:
        add_to_server(build(runtime), server)

    return register


def run(main: Coroutine[Any, Any, None]) -> None:
    """Run a process's main coroutine on uvloop (the same event loop for every process)."""
    import uvloop

    uvloop.run(main)
