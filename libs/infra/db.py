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

Post-commit listeners (``Database.add_commit_listener``) are the one synchronous path
out of a transaction, for read-your-writes across services (DESIGN section 7:
synchronous gRPC for the causal chain, NATS for fan-out). After a unit of work that wrote
outbox events has committed, each listener is awaited, inside ``__aexit__``, with the
events that transaction wrote, so an RPC that used the unit of work answers only after
its listeners ran. A listener's failure is logged and swallowed: the commit happened and
the stream delivers the same events later (consumers are idempotent).
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from types import TracebackType
from typing import Any, NamedTuple, TypeVar

import psycopg
import sqlalchemy as sa
from google.protobuf.message import Message
from psycopg import pq
from sqlalchemy.dialects import postgresql as pg
from sqlalchemy.dialects.postgresql.psycopg import dialect as psycopg_dialect
from sqlalchemy.engine import URL, make_url
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, AsyncTransaction, create_async_engine
from sqlalchemy.pool import QueuePool

from libs.core.clock import Clock, SystemClock
from libs.core.domain import DomainEvent, EventCollector
from libs.core.errors import AlreadyExists
from libs.core.ids import new_event_id
from libs.infra.logging import get_logger
from libs.infra.tables import add_infra_tables
from libs.infra.telemetry import inject_headers

__all__ = [
    "CommitListener",
    "Database",
    "EventTranslator",
    "OutboxMessage",
    "ReadConnections",
    "UnitOfWork",
    "add_infra_tables",
    "create_engine",
]

log = get_logger(__name__)
R = TypeVar("R")


class OutboxMessage(NamedTuple):
    """A domain event as it leaves: its subject and its proto."""

    subject: str
    event: Message
    merchant_id: str


# A service's domain event -> outbox message; may read through the unit of work's
# connection (the event shows the resource as it is at commit).
EventTranslator = Callable[[DomainEvent], Awaitable[OutboxMessage]]

# Called after a commit that wrote outbox events, with those events in the order written
# (Database.add_commit_listener). It runs in the committing task (same merchant, token
# and trace context); what it raises is logged, never raised.
CommitListener = Callable[[Sequence[OutboxMessage]], Awaitable[None]]


def create_engine(database_url: str, *, pool_size: int = 10) -> AsyncEngine:
    """The pool keeps ``pool_size`` connections and opens up to half as many again for a
    burst. A connection beyond the kept ones is closed when it is given back, so the pool
    is sized for the usual concurrency of a service's reads, not for its idle state:
    under 32 concurrent entitlement checks a pool of 10 opened and closed a PostgreSQL
    connection on most checks (a backend started each time), which halved them."""
    return create_async_engine(
        database_url,
        pool_size=pool_size,
        max_overflow=max(1, pool_size // 2),
        # no pre-ping: it costs a round trip per checkout on every request; a dead
        # connection surfaces as an error on use and the pool replaces it.
        pool_recycle=1800,
    )


class ReadConnections:
    """At most ``size`` autocommit psycopg connections for a service's single-statement
    reads (the catalog's single-row Gets, the entitlement checks), beside the engine's
    pool (which the units of work keep): one prepared statement and one round trip, no
    SQLAlchemy execution layer (about 0.6 ms of CPU per read in a unit of work, 0.1 ms
    here: bench/get_product.py). Opened on first use; one that failed, was cancelled
    mid-query or is not idle after a read is closed, never reused. ``close`` closes the
    idle ones; ``beside`` ties it to a Database's dispose."""

    def __init__(self, database_url: str | URL, size: int) -> None:
        self._conninfo = make_url(database_url).set(drivername="postgresql").render_as_string(hide_password=False)
        self._slots = asyncio.Semaphore(size)
        self._idle: list[psycopg.AsyncConnection[tuple[Any, ...]]] = []
        self._closed = False

    @asynccontextmanager
    async def _connection(self) -> AsyncIterator[tuple[psycopg.AsyncConnection[tuple[Any, ...]], bool]]:
        """A connection and whether it was reused (a reused one may have been closed by the server since)."""
        async with self._slots:
            if self._closed:
                raise RuntimeError("the catalog's read connections are closed")
            reused = bool(self._idle)
            conn = self._idle.pop() if reused else await psycopg.AsyncConnection.connect(self._conninfo, autocommit=True)
            try:
                yield conn, reused
            except BaseException:
                await conn.close()  # its state is unknown (a query may be in flight): never reuse it
                raise
            if self._closed or conn.closed or conn.info.transaction_status != pq.TransactionStatus.IDLE:
                await conn.close()
            else:
                self._idle.append(conn)

    @classmethod
    def beside(cls, db: Database) -> ReadConnections:
        """As many as the engine's pool keeps, on its database, closed when it is disposed."""
        size = db.engine.pool.size() if isinstance(db.engine.pool, QueuePool) else 5
        reads = cls(db.engine.url, size)
        db.on_dispose(reads.close)
        return reads

    async def fetch_one(self, query: str, params: Sequence[Any] | Mapping[str, Any]) -> tuple[Any, ...] | None:
        """The first row of ``query``."""
        return await self._read(query, params, lambda cursor: cursor.fetchone())

    async def fetch_all(self, query: str, params: Sequence[Any] | Mapping[str, Any]) -> list[tuple[Any, ...]]:
        """Every row of ``query``."""
        return await self._read(query, params, lambda cursor: cursor.fetchall())

    async def _read(
        self,
        query: str,
        params: Sequence[Any] | Mapping[str, Any],
        take: Callable[[psycopg.AsyncCursor[tuple[Any, ...]]], Awaitable[R]],
    ) -> R:
        """``query``'s rows as ``take`` fetches them (a read: on a reused connection that
        turns out to be dead, it runs once more on a new one)."""
        while True:
            async with self._connection() as (conn, reused):
                try:
                    return await take(await conn.execute(query, params, prepare=True))
                except psycopg.OperationalError:
                    if not reused or not conn.broken:
                        raise
            # it was a dead one from the idle list (now closed): again, on the next or a new one

    async def close(self) -> None:
        self._closed = True
        idle, self._idle = self._idle, []
        for conn in idle:
            await conn.close()


def psycopg_sql(statement: sa.Select[Any]) -> tuple[str, list[str]]:
    """A Core select as psycopg's SQL (named ``%(param)s`` placeholders, for
    ReadConnections) and the names of its result columns, in order: written with the
    tables' definitions, run without SQLAlchemy's execution layer."""
    sql = str(statement.compile(dialect=_PSYCOPG_DIALECT))
    return sql, [str(column.key) for column in statement.selected_columns]


_PSYCOPG_DIALECT = psycopg_dialect()  # type: ignore[no-untyped-call]


class UnitOfWork:
    """One transaction: ``async with uow_factory() as uow: ... uow.conn ...``.

    Commits on a clean exit, rolls back on an exception. Before committing it writes the
    events of every aggregate in ``seen`` to the outbox through ``translate``. After a
    commit that wrote outbox rows it pokes the relay so events leave at once rather than
    at the next poll, releases its connection, then awaits the database's commit
    listeners with the events written (see the module docstring).
    """

    def __init__(
        self,
        engine: AsyncEngine,
        tables: sa.MetaData,
        on_events_committed: Callable[[], None],
        *,
        translate: EventTranslator | None = None,
        clock: Clock | None = None,
        listeners: Sequence[CommitListener] = (),
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
        self._written: list[OutboxMessage] = []
        self._listeners = listeners

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
        committed = False
        try:
            if exc_type is None:
                try:
                    await self._write_recorded_events()
                except BaseException:
                    await self._tx.rollback()
                    raise
                await self._tx.commit()
                committed = True
                if self._written:
                    self._on_events_committed()
            else:
                await self._tx.rollback()
        finally:
            await self._conn.close()
        if committed and self._written:
            await self._notify(list(self._written))

    async def _notify(self, written: list[OutboxMessage]) -> None:
        for listener in self._listeners:
            try:
                await listener(written)
            except Exception as exc:  # committed already: the stream delivers the events later
                log.warning(
                    "commit_listener_failed",
                    listener=getattr(listener, "__qualname__", repr(listener)),
                    subjects=sorted({m.subject for m in written}),
                    error=repr(exc),
                )

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
        self._written.append(OutboxMessage(subject, event, merchant_id))
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
        self._commit_listeners: list[CommitListener] = []
        self._on_dispose: list[Callable[[], Awaitable[None]]] = []

    def uow(self, *, translate: EventTranslator | None = None, clock: Clock | None = None) -> UnitOfWork:
        """A unit of work; ``translate`` turns the events its aggregates record into outbox messages."""
        return UnitOfWork(
            self.engine, self.metadata, self.events_committed.set, translate=translate, clock=clock, listeners=self._commit_listeners
        )

    def add_commit_listener(self, listener: CommitListener) -> None:
        """Await ``listener`` after every commit of this database's units of work that
        wrote outbox events, with those events (a listener added twice runs once)."""
        if listener not in self._commit_listeners:
            self._commit_listeners.append(listener)

    def on_dispose(self, close: Callable[[], Awaitable[None]]) -> None:
        """Await ``close`` when the database is disposed, before the engine: for connections
        a service opens beside the engine's pool (the catalog's single-row reads)."""
        self._on_dispose.append(close)

    async def dispose(self) -> None:
        for close in self._on_dispose:
            try:
                await close()
            except Exception as exc:  # stopping: the engine is disposed whatever happened
                log.warning("dispose_callback_failed", callback=getattr(close, "__qualname__", repr(close)), error=repr(exc))
        await self.engine.dispose()
