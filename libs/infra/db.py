"""PostgreSQL access: async engine, the infrastructure tables every service owns
(outbox, inbox, idempotency keys) and the unit of work that ties them together.

A unit of work is one database transaction. Domain rows and the domain events they
cause commit together (transactional outbox); a consumer's inbox claim commits with the
handler's writes; an idempotency record commits with the mutation it guards.

Events come from aggregates (libs/core/domain.py), after cosmicpython's
``collect_new_events``: repositories register what they load and add in ``uow.seen``;
on commit the unit of work takes every event those aggregates recorded, has the
service's translator (its events.py) turn each into a subject and a proto, and writes
them to the outbox in the same transaction. No handler writes an event by hand.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from types import TracebackType
from typing import NamedTuple

import sqlalchemy as sa
from google.protobuf.message import Message
from sqlalchemy.dialects import postgresql as pg
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, AsyncTransaction, create_async_engine

from libs.core.clock import Clock, SystemClock
from libs.core.domain import DomainEvent, EventCollector
from libs.core.errors import AlreadyExists
from libs.core.ids import new_event_id
from libs.infra.tables import add_infra_tables
from libs.infra.telemetry import inject_headers

__all__ = ["Database", "EventTranslator", "OutboxMessage", "UnitOfWork", "add_infra_tables", "create_engine"]


class OutboxMessage(NamedTuple):
    """A domain event as it leaves: its subject and its proto."""

    subject: str
    event: Message
    merchant_id: str


# A service's domain event -> outbox message; may read through the unit of work's
# connection (the event shows the resource as it is at commit).
EventTranslator = Callable[[DomainEvent], Awaitable[OutboxMessage]]


def create_engine(database_url: str, *, pool_size: int = 10) -> AsyncEngine:
    return create_async_engine(
        database_url,
        pool_size=pool_size,
        max_overflow=pool_size,
        # no pre-ping: it costs a round trip per checkout on every request; a dead
        # connection surfaces as an error on use and the pool replaces it.
        pool_recycle=1800,
    )


class UnitOfWork:
    """One transaction: ``async with uow_factory() as uow: ... uow.conn ...``.

    Commits on a clean exit, rolls back on an exception. Before committing it writes the
    events of every aggregate in ``seen`` to the outbox through ``translate``. After a
    commit that wrote outbox rows it pokes the relay so events leave at once rather than
    at the next poll.
    """

    def __init__(
        self,
        engine: AsyncEngine,
        tables: sa.MetaData,
        on_events_committed: Callable[[], None],
        *,
        translate: EventTranslator | None = None,
        clock: Clock | None = None,
    ) -> None:
        self._engine = engine
        self._translate = translate
        self._clock = clock or SystemClock()
        self.seen = EventCollector()
        self._outbox = tables.tables["outbox"]
        self._inbox = tables.tables["inbox"]
        self._idempotency = tables.tables["idempotency_keys"]
        self._on_events_committed = on_events_committed
        self._conn: AsyncConnection | None = None
        self._tx: AsyncTransaction | None = None
        self._wrote_events = False

    @property
    def conn(self) -> AsyncConnection:
        if self._conn is None:
            raise RuntimeError("unit of work used outside 'async with'")
        return self._conn

    async def __aenter__(self) -> UnitOfWork:
        self._conn = await self._engine.connect()
        self._tx = await self._conn.begin()
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        assert self._conn is not None and self._tx is not None
        try:
            if exc_type is None:
                try:
                    await self._write_recorded_events()
                except BaseException:
                    await self._tx.rollback()
                    raise
                await self._tx.commit()
                if self._wrote_events:
                    self._on_events_committed()
            else:
                await self._tx.rollback()
        finally:
            await self._conn.close()

    async def _write_recorded_events(self) -> None:
        for event in self.seen.collect_new_events():
            if self._translate is None:
                raise RuntimeError(f"{type(event).__name__} was recorded, but this unit of work has no event translator")
            message = await self._translate(event)
            await self.record_event(message.subject, message.event, merchant_id=message.merchant_id, now=self._clock.now())

    async def record_event(self, subject: str, event: Message, *, merchant_id: str, now: datetime) -> str:
        """Write an event to the outbox, in this transaction, with the trace context.

        Services with aggregates never call this: their recorded events arrive here at commit.
        """
        event_id = new_event_id()
        await self.conn.execute(
            self._outbox.insert().values(
                event_id=event_id,
                subject=subject,
                event_type=event.DESCRIPTOR.full_name,
                merchant_id=merchant_id,
                payload=event.SerializeToString(deterministic=True),
                headers=inject_headers(),
                created_at=now,
            )
        )
        self._wrote_events = True
        return event_id

    async def claim_inbox(self, consumer: str, event_id: str) -> bool:
        """True the first time (consumer, event_id) is seen; False for a redelivery."""
        stmt = (
            pg.insert(self._inbox)
            .values(consumer=consumer, event_id=event_id, processed_at=datetime.now(UTC))
            .on_conflict_do_nothing()
            .returning(self._inbox.c.event_id)
        )
        return (await self.conn.execute(stmt)).first() is not None

    async def idempotent(
        self,
        *,
        merchant_id: str,
        key: str,
        method: str,
        request: Message,
        response_type: type[Message],
        run: Callable[[], Awaitable[Message]],
    ) -> Message:
        """Run a mutation once per (merchant, key); a replay returns the stored response.

        The key row is inserted first: a concurrent duplicate blocks on the unique index
        until this transaction ends, then finds the committed response.
        """
        request_hash = hashlib.sha256(method.encode() + b"\0" + request.SerializeToString(deterministic=True)).hexdigest()
        claimed = (
            await self.conn.execute(
                pg.insert(self._idempotency)
                .values(
                    merchant_id=merchant_id,
                    key=key,
                    method=method,
                    request_hash=request_hash,
                    created_at=datetime.now(UTC),
                )
                .on_conflict_do_nothing()
                .returning(self._idempotency.c.key)
            )
        ).first()
        if claimed is None:
            row = (
                await self.conn.execute(
                    sa.select(self._idempotency.c.method, self._idempotency.c.request_hash, self._idempotency.c.response).where(
                        self._idempotency.c.merchant_id == merchant_id, self._idempotency.c.key == key
                    )
                )
            ).one()
            if row.method != method or row.request_hash != request_hash or row.response is None:
                raise AlreadyExists(
                    "IDEMPOTENCY_KEY_REUSED",
                    "this Idempotency-Key was already used with different parameters",
                    field="Idempotency-Key",
                )
            replay = response_type()
            replay.ParseFromString(row.response)
            return replay
        response = await run()
        await self.conn.execute(
            self._idempotency.update()
            .where(self._idempotency.c.merchant_id == merchant_id, self._idempotency.c.key == key)
            .values(response=response.SerializeToString(deterministic=True))
        )
        return response


class Database:
    """A service's database handle: the engine, its tables and the unit-of-work factory."""

    def __init__(self, engine: AsyncEngine, metadata: sa.MetaData) -> None:
        self.engine = engine
        self.metadata = metadata
        self.events_committed = asyncio.Event()

    def uow(self, *, translate: EventTranslator | None = None, clock: Clock | None = None) -> UnitOfWork:
        """A unit of work; ``translate`` turns the events its aggregates record into outbox messages."""
        return UnitOfWork(self.engine, self.metadata, self.events_committed.set, translate=translate, clock=clock)

    async def dispose(self) -> None:
        await self.engine.dispose()
