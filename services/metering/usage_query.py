"""Usage of one billable metric over [start, end): total, per window, per group.

The query layer of metering: what invoicing and entitlement will ask through the gRPC
usage API, and what GET /v0/billableMetrics/{id}/meter answers. Exact numerics only.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql as pg
from sqlalchemy.ext.asyncio import AsyncConnection

from libs.core.errors import InvalidArgument
from services.metering import store
from services.metering.aggregations import aggregate_expression
from services.metering.domain.usage import jsonpath_segments
from services.metering.metrics import Metric


@dataclass(frozen=True)
class UsageQuery:
    metric: Metric
    start: datetime
    end: datetime
    subject: str | None = None
    # dimension name -> required value
    filters: dict[str, str] = field(default_factory=dict)
    # date_trunc unit: minute, hour, day, month; None = no windows
    window_unit: str | None = None
    # dimension names to group by ("subject" is always available)
    group_by: tuple[str, ...] = ()
    group_limit: int | None = None
    group_offset: int = 0


@dataclass(frozen=True)
class UsageRow:
    window_start: datetime | None
    group: dict[str, str]
    value: Decimal
    events: int


@dataclass(frozen=True)
class Usage:
    total: Decimal
    rows: list[UsageRow]
    # distinct groups before group_limit/group_offset (only with a group_limit)
    group_count: int | None
    # every event accepted before this instant is counted (None: aggregator not started)
    complete_until: datetime | None


def conditions(metric: Metric, start: datetime, end: datetime, subject: str | None) -> list[Any]:
    e = store.meter_events
    out = [e.c.merchant_id == metric.merchant_id, e.c.type == metric.event_type, e.c.time >= start, e.c.time < end]
    if metric.event_from is not None:
        out.append(e.c.time >= metric.event_from)
    if subject is not None:
        out.append(e.c.subject == subject)
    return out


def dimension(metric: Metric, name: str) -> Any:
    e = store.meter_events
    if name == "subject":
        return e.c.subject
    if name not in metric.group_by:
        known = ", ".join(["subject", *metric.group_by])
        raise InvalidArgument("groupBy", f"{name!r} is not a dimension of this metric (have: {known})", reason="UNKNOWN_DIMENSION")
    return e.c.data.op("#>>")(sa.literal(jsonpath_segments(metric.group_by[name]), pg.ARRAY(sa.Text)))


def _exact(value: Any) -> Decimal:
    return Decimal(0) if value is None else Decimal(value)


async def complete_until(conn: AsyncConnection) -> datetime | None:
    t = store.aggregator_state
    value = (await conn.execute(sa.select(sa.func.min(t.c.drained_at)))).scalar()
    return value if isinstance(value, datetime) else None


async def query_usage(conn: AsyncConnection, q: UsageQuery) -> Usage:
    where = conditions(q.metric, q.start, q.end, q.subject)
    where += [dimension(q.metric, name) == value for name, value in q.filters.items()]
    aggregate = aggregate_expression(q.metric).label("value")
    total = _exact((await conn.execute(sa.select(aggregate).where(*where))).scalar())
    rows: list[UsageRow] = []
    group_count: int | None = None
    if q.window_unit is not None or q.group_by:
        keys: list[Any] = []
        if q.window_unit is not None:
            keys.append(sa.func.date_trunc(q.window_unit, store.meter_events.c.time, "UTC").label("window"))
        dims = [dimension(q.metric, name).label(f"dim_{i}") for i, name in enumerate(q.group_by)]
        query = sa.select(*keys, *dims, aggregate, sa.func.count().label("events")).where(*where).group_by(*keys, *dims)
        found = list((await conn.execute(query.order_by(sa.text("value DESC")))).all())
        if q.group_by and q.group_limit is not None:
            group_count = len(found)
            found = found[q.group_offset : q.group_offset + q.group_limit]
        if q.window_unit is not None:
            found.sort(key=lambda r: r.window)
        for row in found:
            rows.append(
                UsageRow(
                    window_start=row.window if q.window_unit is not None else None,
                    group={name: getattr(row, f"dim_{i}") or "" for i, name in enumerate(q.group_by)},
                    value=_exact(row.value),
                    events=int(row.events),
                )
            )
    return Usage(total=total, rows=rows, group_count=group_count, complete_until=await complete_until(conn))
