"""Test helpers around domain events: a counting consumer and a stream reader."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable

import sqlalchemy as sa
from nats.aio.client import Client as NatsClient
from nats.errors import TimeoutError as NatsTimeoutError

from libs.infra import messaging
from libs.infra.db import Database, UnitOfWork, add_infra_tables, create_engine


async def consumer_database(database_url: str) -> Database:
    """A database holding only the inbox (and its siblings), for a test consumer."""
    metadata = sa.MetaData()
    add_infra_tables(metadata)
    engine = create_engine(database_url, pool_size=2)
    async with engine.begin() as conn:
        await conn.run_sync(metadata.create_all)
    return Database(engine, metadata)


class CountingConsumer:
    """Runs an EventConsumer and records each event the handler committed for."""

    def __init__(
        self, db: Database, nc: NatsClient, *, stream: str, filter_subject: str, accept: Callable[[messaging.ReceivedEvent], bool]
    ):
        self.handled: list[messaging.ReceivedEvent] = []
        self.seen = asyncio.Event()

        async def handler(event: messaging.ReceivedEvent, uow: UnitOfWork) -> None:
            if accept(event):
                self.handled.append(event)
                self.seen.set()

        self.consumer = messaging.EventConsumer(
            db,
            nc.jetstream(),
            messaging.PullSpec(stream=stream, durable=f"test-{uuid.uuid4().hex[:8]}", filter_subject=filter_subject),
            handler=handler,
        )
        self.task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self.task = asyncio.create_task(self.consumer.run())

    async def stop(self) -> None:
        self.consumer.stop()
        if self.task is not None:
            await asyncio.wait_for(self.task, 5)


async def messages_on(nc: NatsClient, stream: str, subject: str) -> list[messaging.ReceivedEvent]:
    """Every message currently stored on ``subject``, read by a throwaway consumer."""
    js = nc.jetstream()
    sub = await js.pull_subscribe(subject, stream=stream)
    out: list[messaging.ReceivedEvent] = []
    while True:
        try:
            batch = await sub.fetch(100, timeout=0.5)
        except (NatsTimeoutError, TimeoutError):
            break
        for msg in batch:
            out.append(messaging.ReceivedEvent.of(msg))
            await msg.ack()
    await sub.unsubscribe()
    return out
