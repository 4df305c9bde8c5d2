"""One aggregate over its table: get / add / save and a newest-first page, the part every
service's repositories share (services/*/store.py subclass it with their queries).

A row maps to the aggregate by column name (every column is a field of the aggregate),
a merchant sees only its rows, and a table with ``delete_time`` hides deleted ones.
"""

from __future__ import annotations

from typing import Any, Generic, TypeVar

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from libs.core.domain import Aggregate, EventCollector
from libs.core.errors import NotFound
from libs.core.paging import Page

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
