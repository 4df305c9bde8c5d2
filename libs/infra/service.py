"""The composition root shared by every gRPC service: settings -> migrations -> engine ->
NATS -> servicers -> serve, and the reverse on SIGTERM. A service's app.py only
declares what is its own (tables, streams, servicers, consumers)."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import grpc
import sqlalchemy as sa
from nats.aio.client import Client as NatsClient
from nats.js import JetStreamContext

from libs.core.clock import Clock, SystemClock
from libs.infra import migrations
from libs.infra.db import Database, create_engine
from libs.infra.grpc_server import GrpcServer
from libs.infra.logging import configure_logging, get_logger
from libs.infra.messaging import OutboxRelay, connect, ensure_stream
from libs.infra.settings import ServiceSettings
from libs.infra.telemetry import configure_tracing

log = get_logger(__name__)


@dataclass
class Runtime:
    """What a service's servicers and consumers are built from."""

    settings: ServiceSettings
    db: Database
    nats: NatsClient
    js: JetStreamContext
    clock: Clock
    # objects a service's servicers and workers share (built once, in register)
    extras: dict[str, Any] = field(default_factory=dict)


class Worker(Protocol):
    """A background loop of a service: consumers, aggregators."""

    async def run(self) -> None: ...

    def stop(self) -> None: ...


@dataclass
class ServiceDefinition:
    name: str
    # fully qualified proto service names served (for health and reflection)
    grpc_services: Sequence[str]
    metadata: sa.MetaData
    migrations_dir: Path
    register: Callable[[grpc.aio.Server, Runtime], None]
    # JetStream streams this service publishes to: name -> subjects
    streams: dict[str, list[str]] = field(default_factory=dict)
    # background workers (event consumers, aggregators), built after register()
    workers: Callable[[Runtime], Sequence[Worker]] = lambda runtime: []


class ServiceHost:
    """Runs one service in this process; tests use it directly, main() wraps it."""

    def __init__(self, definition: ServiceDefinition, settings: ServiceSettings, clock: Clock | None = None) -> None:
        self.definition = definition
        self.settings = settings
        self.clock = clock or SystemClock()
        self.port = 0
        self._tasks: list[asyncio.Task[None]] = []
        self._relay: OutboxRelay | None = None
        self._workers: list[Worker] = []
        self._server: GrpcServer | None = None
        self.runtime: Runtime | None = None

    async def start(self) -> None:
        d, s = self.definition, self.settings
        if s.migrate_on_start:
            await asyncio.to_thread(migrations.upgrade, s.database_url, d.migrations_dir, d.metadata)
        db = Database(create_engine(s.database_url, pool_size=s.db_pool_size), d.metadata)
        nc = await connect(s.nats_url, name=f"accrue-{d.name}")
        js = nc.jetstream()
        for stream, subjects in d.streams.items():
            await ensure_stream(js, stream, subjects)
        self.runtime = Runtime(settings=s, db=db, nats=nc, js=js, clock=self.clock)
        self._server = GrpcServer(d.grpc_services, s.grpc_host, s.grpc_port)
        d.register(self._server.server, self.runtime)
        if s.outbox_relay_enabled:
            self._relay = OutboxRelay(db, js)
            self._tasks.append(asyncio.create_task(self._relay.run(), name=f"{d.name}-outbox-relay"))
        self._workers = list(d.workers(self.runtime))
        for worker in self._workers:
            self._tasks.append(asyncio.create_task(worker.run()))
        await self._server.start()
        self.port = self._server.port
        if s.port_file:
            Path(s.port_file).write_text(str(self.port))
        log.info("service_started", port=self.port)

    async def stop(self) -> None:
        if self._server is not None:
            await self._server.stop(self.settings.shutdown_grace_seconds)
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
            # not drain(): it waits up to 30 s for pull subscriptions; the workers have
            # stopped, unacked messages are redelivered, and publishes were all awaited
            with contextlib.suppress(Exception):
                await self.runtime.nats.flush(timeout=2)
            with contextlib.suppress(Exception):
                await self.runtime.nats.close()
            await self.runtime.db.dispose()
        log.info("service_stopped")


async def _serve_until_signalled(host: ServiceHost) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await host.start()
    await stop.wait()
    await host.stop()


def main(definition: ServiceDefinition, argv: Sequence[str] | None = None) -> None:
    """Entry point: ``python -m services.<name>.app [serve|migrate]``."""
    parser = argparse.ArgumentParser(prog=f"accrue-{definition.name}")
    parser.add_argument("command", nargs="?", default="serve", choices=["serve", "migrate"])
    args = parser.parse_args(argv)
    settings = ServiceSettings()
    configure_logging(definition.name, settings.log_level)
    if args.command == "migrate":
        migrations.upgrade(settings.database_url, definition.migrations_dir, definition.metadata)
        log.info("migrated")
        return
    configure_tracing(definition.name, settings.otel_exporter_otlp_endpoint)
    run(_serve_until_signalled(ServiceHost(definition, settings)))


def unimplemented_servicer(servicer_class: type[Any]) -> Any:
    """The generated base servicer, which answers UNIMPLEMENTED to every RPC: what a
    service serves until its issue comes."""
    return servicer_class()


def run(main: Coroutine[Any, Any, None]) -> None:
    """Run a process's main coroutine on uvloop (the same event loop for every process)."""
    import uvloop

    uvloop.run(main)
