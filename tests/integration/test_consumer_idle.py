"""An idle pull consumer, against real NATS and PostgreSQL: it waits with one long pull
instead of polling, is handed a message the moment one is published, and stops at once."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator

import pytest
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg

from libs.infra import messaging
from libs.infra.db import Database, UnitOfWork
from libs.testing.events import consumer_database
from libs.testing.fixtures import Infra

pytestmark = pytest.mark.integration


@pytest.fixture
async def db(infra: Infra) -> AsyncIterator[Database]:
    database = await consumer_database(infra.new_database_url("idle_consumer"))
    yield database
    await database.dispose()


class Setup:
    def __init__(self, nc: NatsClient, db: Database, *, idle_wait: float) -> None:
        tag = uuid.uuid4().hex[:10]
        self.nc, self.js = nc, nc.jetstream()
        self.stream, self.prefix, self.durable = f"TEST_IDLE_{tag}", f"test.idle.{tag}", f"idle-{tag}"
        self.handled: list[tuple[str, float]] = []
        self.spec = messaging.PullSpec(
            stream=self.stream, durable=self.durable, filter_subject=f"{self.prefix}.>", fetch_wait=0.05, idle_wait=idle_wait
        )

        async def handler(event: messaging.ReceivedEvent, uow: UnitOfWork) -> None:
            self.handled.append((event.event_id, time.monotonic()))

        self.consumer = messaging.EventConsumer(db, self.js, self.spec, handler=handler)
        self.task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        await messaging.ensure_stream(self.js, self.stream, [f"{self.prefix}.>"])
        self.task = asyncio.create_task(self.consumer.run())

    async def stop(self) -> float:
        started = time.monotonic()
        self.consumer.stop()
        assert self.task is not None
        await asyncio.wait_for(self.task, 10)
        return time.monotonic() - started

    async def pull_requests(self, seconds: float) -> int:
        """How many pull requests the consumer sends in ``seconds`` (a plain subscriber of
        JetStream's next-message subject sees each one)."""
        seen: list[Msg] = []

        async def note(msg: Msg) -> None:
            seen.append(msg)

        sub = await self.nc.subscribe(f"$JS.API.CONSUMER.MSG.NEXT.{self.stream}.{self.durable}", cb=note)
        await asyncio.sleep(seconds)
        await sub.unsubscribe()
        return len(seen)

    async def handled_by(self, event_id: str, deadline: float) -> float | None:
        while time.monotonic() < deadline:
            for handled, at in self.handled:
                if handled == event_id:
                    return at
            await asyncio.sleep(0.01)
        return None


async def test_an_idle_consumer_waits_with_one_pull_per_idle_wait_not_one_per_fetch_wait(nc: NatsClient, db: Database) -> None:
    setup = Setup(nc, db, idle_wait=1.0)
    await setup.start()
    try:
        await asyncio.sleep(0.5)  # subscribed, and idle
        requests = await setup.pull_requests(3.0)
        # polling every fetch_wait (0.05 s) would be about 60 (120 with the no-wait probes)
        assert 1 <= requests <= 6, requests
    finally:
        await setup.stop()


async def test_a_message_published_to_an_idle_consumer_is_handled_without_waiting_for_the_pull_to_expire(
    nc: NatsClient, db: Database
) -> None:
    setup = Setup(nc, db, idle_wait=30.0)
    await setup.start()
    try:
        await asyncio.sleep(1.0)  # idle: its pull of one message waits up to 30 s
        for n in range(3):  # the first after idling, then two more: each is taken at once
            event_id = f"evt_{n}"
            published = time.monotonic()
            await setup.js.publish(f"{setup.prefix}.thing", b"{}", headers={messaging.MSG_ID_HEADER: event_id})
            handled = await setup.handled_by(event_id, published + 10.0)
            assert handled is not None, f"{event_id} was not handled within 10 s of a 30-s pull"
            await asyncio.sleep(0.3)  # idle again between them
    finally:
        # stopping cuts the long pull short
        assert await setup.stop() < 5.0
