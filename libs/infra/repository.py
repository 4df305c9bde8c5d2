"""One aggregate over its table: get / add / save and a newest-first page, the part every
service's repositories share (services/*/store.py subclass it with their queries).

A row maps to the aggregate by column name (every column is a field of the aggregate),
a merchant sees only its rows, and a table with ``delete_time`` hides deleted ones.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from types import TracebackType
from typing import Any, Generic, Self, TypeVar

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from libs.core.clock import Clock
from libs.core.domain import Aggregate, DomainEvent, EventCollector
from libs.core.errors import NotFound
from libs.core.paging import Page
from libs.infra.db import Database, OutboxMessage, UnitOfWork

A = TypeVar("A", bound=Aggregate)


def load_aggregate(kind: type[A], table: sa.Table, row: sa.Row[Any], **extra: Any) -> A:
    """The aggregate of ``kind`` a row of ``table`` holds (plus fields not in the table)."""
    values = row._mapping
    return kind(**{column.name: values[column] for column in table.c}, **extra)


class TableRepository(Generic[A]):
    """get / add / save / page of one aggregate over its table. ``resource`` names it in
    NotFound; ``created_column`` orders pages (newest first, then id)."""

    resource: str = ""
    created_column = "create_time"

    def __init__(self, conn: AsyncConnection, seen: EventCollector, table: sa.Table, kind: type[A]) -> None:
        self._conn = conn
        self._seen = seen
        self._table = table
        self._kind = kind

    def _resource(self) -> str:
        return self.resource

    def _load(self, row: sa.Row[Any]) -> A:
        return self._seen.track(load_aggregate(self._kind, self._table, row))

    def _values(self, aggregate: A) -> dict[str, Any]:
        return {column.name: getattr(aggregate, column.name) for column in self._table.c}

    def _live(self, merchant_id: str) -> list[sa.ColumnElement[bool]]:
        t = self._table
        conditions = [t.c.merchant_id == merchant_id]
        if "delete_time" in t.c:
            conditions.append(t.c.delete_time.is_(None))
        return conditions

    async def get(self, merchant_id: str, resource_id: str, *, field: str | None = None, lock: bool = False) -> A:
        t = self._table
        query = sa.select(t).where(t.c.id == resource_id, *self._live(merchant_id))
        if lock:
            query = query.with_for_update()
        row = (await self._conn.execute(query)).first()
        if row is None:
            raise NotFound(self._resource(), resource_id, field=field)
        return self._load(row)

    async def add(self, aggregate: A) -> None:
        await self._conn.execute(self._table.insert().values(**self._values(aggregate)))
        self._seen.track(aggregate)

    async def save(self, aggregate: A) -> None:
        values = self._values(aggregate)
        del values["id"]
        await self._conn.execute(self._table.update().where(self._table.c.id == aggregate.id).values(**values))
        self._seen.track(aggregate)

    async def _page(self, where: sa.ColumnElement[bool], page: Page, select_from: Any = None) -> tuple[list[A], int]:
        t = self._table
        source = select_from if select_from is not None else t
        total = (await self._conn.execute(sa.select(sa.func.count()).select_from(source).where(where))).scalar_one()
        created = t.c[self.created_column]
        query = sa.select(t).select_from(source).where(where).order_by(created.desc(), t.c.id.desc()).limit(page.limit).offset(page.offset)
        rows = (await self._conn.execute(query)).all()
        return [self._load(row) for row in rows], int(total)


class RepositoryUnitOfWork:
    """A service's unit of work over PostgreSQL: one libs/infra/db.UnitOfWork (one
    transaction, its outbox written at commit) and the service's repositories on its
    connection, bound by ``_bind`` when the transaction opens. ``translate`` renders a
    recorded domain event as the outbox message; it gets this unit of work, to read what
    the event is about as it stands at commit. ``async with uow: ...`` commits on a clean
    exit and rolls back on an exception."""

    def __init__(self, db: Database, *, clock: Clock, translate: Callable[[Self, DomainEvent], Awaitable[OutboxMessage]]) -> None:
        self._translate = translate
        self._uow: UnitOfWork = db.uow(translate=self._translate_event, clock=clock)

    async def _translate_event(self: Self, event: DomainEvent) -> OutboxMessage:
        return await self._translate(self, event)

    def _bind(self, conn: AsyncConnection, seen: EventCollector) -> None:
        """Make the service's repositories on ``conn`` (each records its aggregates in ``seen``)."""
        raise NotImplementedError

    async def __aenter__(self) -> Self:
        await self._uow.__aenter__()
        self._bind(self._uow.conn, self._uow.seen)
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        await self._uow.__aexit__(exc_type, exc, tb)

    @property
    def transaction(self) -> UnitOfWork:
        """The libs/infra/db.UnitOfWork underneath (the service layer runs idempotent calls in it)."""
        return self._uow

    @property
    def conn(self) -> AsyncConnection:
        return self._uow.conn
