"""Usage of one billable metric over [start, end): total, per window, per group.

The query layer of metering: what invoicing and entitlement will ask through the gRPC
usage API, and what GET /v0/billableMetrics/{id}/meter answers. Exact numerics only.

TIME_WEIGHTED_SUM (value-hours, e.g. GB-hours) is an integral, not an aggregate of the
events in range:

* The samples are the metric's events with a numeric value (anything else is ignored and
  interrupts nothing), after the subject / dimension filters and ``eventFrom``.
* Samples are ordered per subject (per subject and group when grouping) by
  (time, idempotencyKey), the order LATEST uses. Each one holds from its time until the
  next sample of its subject (and group), or until ``end``. Of samples with the same
  timestamp only the last one in that order holds (the others hold 0 seconds).
* The latest sample of each subject (and group) before ``start``, if any, holds from
  ``start``: a level set before the range is carried into it.
* Value = sum(value x seconds held within [start, end)) / 3600, computed exactly in
  numeric (seconds are exact to the microsecond) and divided once: the exact quotient
  rounded half-even to 20 decimal places (``aggregations.value_hours``).
* Windows: each window integrates its own slice of [start, end), a value carried across
  window boundaries (so a window without events still has a row when a level holds in
  it). ``events`` counts the samples whose own time lies in the window. Adjacent windows
  add up to the whole, up to the 20th-place rounding of each reported value.
* The total never depends on ``group_by`` (as for every aggregation): it is integrated
  per subject, while grouped rows are integrated per (subject, group).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql as pg
from sqlalchemy.ext.asyncio import AsyncConnection

from libs.core.errors import InvalidArgument
from services.metering import store
from services.metering.aggregations import aggregate_expression, is_time_weighted, numeric_value, value_hours
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
    if is_time_weighted(q.metric):
        return await _query_time_weighted(conn, q)
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
        rows, group_count = _usage_rows(q, found, _exact)
    return Usage(total=total, rows=rows, group_count=group_count, complete_until=await complete_until(conn))


def _usage_rows(q: UsageQuery, found: list[Any], value_of: Callable[[Any], Decimal]) -> tuple[list[UsageRow], int | None]:
    """Grouped/windowed result rows: top groups by value (group_limit/offset), then in
    window order; the count of groups before truncation."""
    group_count: int | None = None
    if q.group_by and q.group_limit is not None:
        group_count = len(found)
        found = found[q.group_offset : q.group_offset + q.group_limit]
    if q.window_unit is not None:
        found.sort(key=lambda r: r.window)
    rows = [
        UsageRow(
            window_start=row.window if q.window_unit is not None else None,
            group={name: getattr(row, f"dim_{i}") or "" for i, name in enumerate(q.group_by)},
            value=value_of(row.value),
            events=int(row.events),
        )
        for row in found
    ]
    return rows, group_count


# --- TIME_WEIGHTED_SUM ----------------------------------------------------------------


def _held_spans(q: UsageQuery, dims: list[Any]) -> Any:
    """One row per sample: its value and the span [held_from, held_to) it holds within
    [start, end), partitioned by subject and ``dims``; ``counted`` when its time is in range."""
    e = store.meter_events
    value = numeric_value(q.metric)
    start, end = sa.literal(q.start, store.TS), sa.literal(q.end, store.TS)
    # conditions() without its time bounds: the carried-in sample lies before start
    where = [
        e.c.merchant_id == q.metric.merchant_id,
        e.c.type == q.metric.event_type,
        value.is_not(None),
        *([e.c.time >= q.metric.event_from] if q.metric.event_from is not None else []),
        *([e.c.subject == q.subject] if q.subject is not None else []),
        *[dimension(q.metric, name) == wanted for name, wanted in q.filters.items()],
    ]
    columns = [e.c.subject.label("subject"), *[d.label(f"dim_{i}") for i, d in enumerate(dims)]]
    sample = [*columns, e.c.time.label("time"), e.c.idempotency_key.label("key"), value.label("value")]
    in_range = sa.select(*sample).where(*where, e.c.time >= start, e.c.time < end)
    # the latest sample before start of each partition (DISTINCT ON keeps the first row)
    partition = [e.c.subject, *dims]
    before = (
        sa.select(*sample)
        .where(*where, e.c.time < start)
        .ext(pg.distinct_on(*partition))
        .order_by(*partition, e.c.time.desc(), e.c.idempotency_key.desc())
        .subquery("before")
    )
    samples = sa.union_all(in_range, sa.select(before)).subquery("samples")
    s = samples.c
    held_from = sa.func.greatest(s.time, start)
    following = sa.func.lead(held_from).over(partition_by=[s.subject, *[s[f"dim_{i}"] for i in range(len(dims))]], order_by=[s.time, s.key])
    return sa.select(
        *[s[f"dim_{i}"] for i in range(len(dims))],
        s.value,
        held_from.label("held_from"),
        sa.func.coalesce(following, end).label("held_to"),
        (s.time >= start).label("counted"),
    ).subquery("spans")


def _epoch(instant: Any) -> Any:
    # numeric seconds (PostgreSQL 14+), exact to the microsecond
    return sa.extract("epoch", instant)


async def _query_time_weighted(conn: AsyncConnection, q: UsageQuery) -> Usage:
    whole = _held_spans(q, [])
    value_seconds = sa.func.coalesce(sa.func.sum(whole.c.value * (_epoch(whole.c.held_to) - _epoch(whole.c.held_from))), 0)
    total = value_hours(_exact((await conn.execute(sa.select(value_seconds))).scalar()))
    rows: list[UsageRow] = []
    group_count: int | None = None
    if q.window_unit is None and not q.group_by:
        return Usage(total=total, rows=rows, group_count=group_count, complete_until=await complete_until(conn))
    spans = _held_spans(q, [dimension(q.metric, name) for name in q.group_by])
    dims = [spans.c[f"dim_{i}"] for i in range(len(q.group_by))]
    if q.window_unit is None:
        seconds = _epoch(spans.c.held_to) - _epoch(spans.c.held_from)
        events = sa.func.count().filter(spans.c.counted)
        query = sa.select(*dims, sa.func.sum(spans.c.value * seconds).label("value"), events.label("events")).group_by(*dims)
    else:
        # cut every span at the window boundaries, in UTC wall time (timestamp without time
        # zone: calendar steps independent of the session time zone)
        step = sa.cast(sa.literal(f"1 {q.window_unit}"), pg.INTERVAL)
        utc_from = sa.func.timezone("UTC", spans.c.held_from)
        utc_to = sa.func.timezone("UTC", spans.c.held_to)
        first = sa.func.date_trunc(q.window_unit, utc_from)
        pieces = sa.select(
            *dims,
            spans.c.value,
            spans.c.counted,
            utc_from.label("held_from"),
            utc_to.label("held_to"),
            first.label("first"),
            sa.func.generate_series(first, utc_to, step).label("window"),
        ).subquery("pieces")
        p = pieces.c
        dims = [p[f"dim_{i}"] for i in range(len(q.group_by))]
        seconds = _epoch(sa.func.least(p.held_to, p.window + step)) - _epoch(sa.func.greatest(p.held_from, p.window))
        events = sa.func.count().filter(p.counted, p.window == p.first)
        window = sa.func.timezone("UTC", p.window).label("window")
        query = (
            sa.select(window, *dims, sa.func.sum(p.value * seconds).label("value"), events.label("events"))
            # the stop of generate_series is inclusive: a window starting at held_to holds
            # nothing (kept only as the first window of a zero-length span)
            .where(sa.or_(p.window < p.held_to, p.window == p.first))
            .group_by(p.window, *dims)
        )
    found = list((await conn.execute(query.order_by(sa.text("value DESC")))).all())
    rows, group_count = _usage_rows(q, found, lambda value: value_hours(_exact(value)))
    return Usage(total=total, rows=rows, group_count=group_count, complete_until=await complete_until(conn))


# --- many readings at once (invoicing's batches) --------------------------------------


@dataclass(frozen=True)
class Reading:
    """One (metric, subject, [start, end)) total of ``query_totals``."""

    metric: Metric
    subject: str
    start: datetime
    end: datetime


async def query_totals(conn: AsyncConnection, readings: list[Reading]) -> list[Decimal]:
    """The total of each reading, in order: what ``query_usage`` answers for it alone
    (no windows, no groups), in one query per metric over all of its readings (unnest of
    array parameters joined on the subject and window). TIME_WEIGHTED_SUM readings are asked one by one."""
    totals: list[Decimal] = [Decimal(0)] * len(readings)
    by_metric: dict[str, list[int]] = {}
    for index, reading in enumerate(readings):
        by_metric.setdefault(reading.metric.id, []).append(index)
    e = store.meter_events
    for indices in by_metric.values():
        metric = readings[indices[0]].metric
        if is_time_weighted(metric):
            for index in indices:
                r = readings[index]
                totals[index] = (await query_usage(conn, UsageQuery(metric=metric, start=r.start, end=r.end, subject=r.subject))).total
            continue
        # the readings as four array parameters: one cached statement whatever their number
        items = (
            sa.func.unnest(
                sa.bindparam("idx", [index for index in indices], type_=pg.ARRAY(sa.Integer)),
                sa.bindparam("subjects", [readings[index].subject for index in indices], type_=pg.ARRAY(sa.Text)),
                sa.bindparam("starts", [readings[index].start for index in indices], type_=pg.ARRAY(store.TS)),
                sa.bindparam("ends", [readings[index].end for index in indices], type_=pg.ARRAY(store.TS)),
            )
            .table_valued(
                sa.column("idx", sa.Integer),
                sa.column("subject", sa.Text),
                sa.column("w_start", store.TS),
                sa.column("w_end", store.TS),
            )
            .render_derived(name="items")
        )
        join = [
            e.c.merchant_id == metric.merchant_id,
            e.c.type == metric.event_type,
            e.c.subject == items.c.subject,
            e.c.time >= items.c.w_start,
            e.c.time < items.c.w_end,
        ]
        if metric.event_from is not None:
            join.append(e.c.time >= metric.event_from)
        query = (
            sa.select(items.c.idx, aggregate_expression(metric).label("value"))
            .select_from(items.join(e, sa.and_(*join)))
            .group_by(items.c.idx)
        )
        for row in (await conn.execute(query)).all():
            totals[row.idx] = _exact(row.value)
    return totals
