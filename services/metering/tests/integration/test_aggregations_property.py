"""P50/P95/P99 and TIME_WEIGHTED_SUM against the real PostgreSQL, by property.

Hypothesis draws event sets and query ranges; each example is inserted into meter_events
of a real database and read back through query_usage, then compared with a pure-Python
reference over Decimal / Fraction:

* a percentile is the nearest-rank sample: sorted ascending, the value at rank
  max(1, ceil(p * N)), per window and group too;
* a time-weighted sum is the integral of the step function each subject's (and group's)
  samples describe, carried in from before the range and across window boundaries,
  divided by 3600 and rounded once to 20 decimal places;
* splitting a range into sub-ranges (or into windows) conserves the total: the parts add
  up to the whole within the 20th-place rounding of each reported value.

How async and Hypothesis meet: the tests are ``async def`` decorated with ``@given``.
pytest-asyncio recognizes such tests (its AsyncHypothesisTest item) and wraps Hypothesis'
inner test so that *each example* runs to completion on the session's event loop, the
loop the module-scoped engine fixture was created on. So one engine and one database
serve every example, and no example ever reaches into another loop. (Drawing examples by
hand with ``strategy.example()`` would not shrink nor replay failures, and a fresh event
loop per example would need a fresh engine per example.) Examples are isolated by a
merchant id of their own.
"""

from __future__ import annotations

import itertools
import math
import re
from collections import defaultdict
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from fractions import Fraction
from random import Random
from typing import Any

import pytest
import pytest_asyncio
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy.ext.asyncio import AsyncEngine

from libs.infra.db import create_engine
from libs.testing.fixtures import Infra
from services.metering import store
from services.metering.metrics import Metric
from services.metering.usage_query import Usage, UsageQuery, query_usage

pytestmark = pytest.mark.integration

PROPERTY = settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.too_slow])
EVENT_TYPE = "storage.sample"
# 21:00 on the last day of February: ranges below cross a day and a month boundary
T0 = datetime(2026, 2, 28, 21, 0, tzinfo=UTC)
HALF_ULP = Fraction(1, 2 * 10**20)
DECIMAL_TEXT = re.compile(r"-?[0-9]+(\.[0-9]+)?")  # the strings metering reads as numbers
_merchants = itertools.count()


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def engine(infra: Infra) -> AsyncIterator[AsyncEngine]:
    engine = create_engine(infra.new_database_url("aggregations"), pool_size=2)
    async with engine.begin() as conn:
        await conn.run_sync(store.metadata.create_all)
    yield engine
    await engine.dispose()


# --- generated data -------------------------------------------------------------------


@dataclass(frozen=True)
class Event:
    key: str
    subject: str
    time: datetime
    raw: int | float | str | bool | None  # the stored $.gb: JSON number, decimal string, or junk
    region: str | None  # $.region, or absent

    @property
    def value(self) -> Decimal | None:
        """What the aggregation reads: numbers and decimal strings, nothing else."""
        if isinstance(self.raw, bool) or self.raw is None:
            return None
        if isinstance(self.raw, int):
            return Decimal(self.raw)
        if isinstance(self.raw, float):
            return Decimal(repr(self.raw))
        return Decimal(self.raw) if DECIMAL_TEXT.fullmatch(self.raw) else None

    @property
    def data(self) -> dict[str, Any]:
        data: dict[str, Any] = {"gb": self.raw}
        if self.region is not None:
            data["region"] = self.region
        return data


decimals = st.decimals(min_value=-1000, max_value=100000, places=3, allow_nan=False, allow_infinity=False)
raw_values = st.one_of(
    st.integers(min_value=-50, max_value=10**6),
    decimals.map(str),
    decimals.map(float),  # a JSON number with decimals (stored as its shortest repr)
    st.sampled_from(["n/a", "", "1e3", "12.", None, True]),  # ignored by every aggregation
)
# seconds from T0: often on quarter hours (ties, values on window boundaries), else anywhere
offsets = st.one_of(
    st.integers(min_value=-12, max_value=36).map(lambda q: timedelta(minutes=15 * q)),
    st.integers(min_value=-3 * 3600 * 10**6, max_value=9 * 3600 * 10**6).map(lambda us: timedelta(microseconds=us)),
)


@st.composite
def event_sets(draw: st.DrawFn, max_size: int = 25) -> list[Event]:
    rows = draw(
        st.lists(
            st.tuples(st.sampled_from(["cus_a", "cus_b", "cus_c"]), offsets, raw_values, st.sampled_from(["eu", "us", None])),
            max_size=max_size,
        )
    )
    return [Event(f"k{i:03d}", subject, T0 + offset, raw, region) for i, (subject, offset, raw, region) in enumerate(rows)]


@st.composite
def ranges(draw: st.DrawFn) -> tuple[datetime, datetime]:
    start = T0 + draw(offsets)
    length = draw(st.one_of(st.integers(1, 9 * 3600).map(lambda s: timedelta(seconds=s)), st.just(timedelta(hours=3))))
    return start, start + length


async def load(engine: AsyncEngine, events: list[Event]) -> str:
    merchant_id = f"org_prop_{next(_merchants)}"
    if events:
        rows = [
            {
                "merchant_id": merchant_id,
                "idempotency_key": e.key,
                "id": f"evt_{merchant_id}_{e.key}",
                "type": EVENT_TYPE,
                "source": "tests",
                "subject": e.subject,
                "time": e.time,
                "data": e.data,
                "ingested_at": T0,
            }
            for e in events
        ]
        async with engine.begin() as conn:
            await conn.execute(store.meter_events.insert(), rows)
    return merchant_id


def metric(merchant_id: str, aggregation: str, event_from: datetime | None = None) -> Metric:
    return Metric(
        id="bm_prop",
        merchant_id=merchant_id,
        event_type=EVENT_TYPE,
        aggregation=aggregation,
        value_property="$.gb",
        group_by={"region": "$.region"},
        event_from=event_from,
    )


async def usage(engine: AsyncEngine, query: UsageQuery) -> Usage:
    async with engine.connect() as conn:
        return await query_usage(conn, query)


# --- reference ------------------------------------------------------------------------


def truncate(instant: datetime, unit: str) -> datetime:
    if unit == "minute":
        return instant.replace(second=0, microsecond=0)
    if unit == "hour":
        return instant.replace(minute=0, second=0, microsecond=0)
    if unit == "day":
        return instant.replace(hour=0, minute=0, second=0, microsecond=0)
    return instant.replace(day=1, hour=0, minute=0, second=0, microsecond=0)


def step(instant: datetime, unit: str) -> datetime:
    if unit == "month":
        return instant.replace(year=instant.year + 1, month=1) if instant.month == 12 else instant.replace(month=instant.month + 1)
    return instant + {"minute": timedelta(minutes=1), "hour": timedelta(hours=1), "day": timedelta(days=1)}[unit]


def seconds(delta: timedelta) -> Fraction:
    return Fraction(delta // timedelta(microseconds=1), 10**6)


def nearest_rank(values: list[Decimal], p: Fraction) -> Decimal:
    if not values:
        return Decimal(0)
    ordered = sorted(values)
    return ordered[max(1, math.ceil(p * len(ordered))) - 1]


Span = tuple[Decimal, datetime, datetime]  # value held over [from, to)


def held_spans(events: list[Event], start: datetime, end: datetime, *, by_region: bool) -> dict[tuple[str, str | None], list[Span]]:
    """Per (subject, region or None): the spans each sample holds within [start, end)."""
    partitions: dict[tuple[str, str | None], list[Event]] = defaultdict(list)
    for e in events:
        if e.value is not None and e.time < end:
            partitions[(e.subject, e.region if by_region else None)].append(e)
    out: dict[tuple[str, str | None], list[Span]] = {}
    for key, samples in partitions.items():
        samples.sort(key=lambda e: (e.time, e.key))
        before = [e for e in samples if e.time < start]
        live = before[-1:] + [e for e in samples if e.time >= start]
        if not live:
            continue
        froms = [max(e.time, start) for e in live]
        tos = [*froms[1:], end]
        out[key] = [(e.value, a, b) for e, a, b in zip(live, froms, tos, strict=True) if e.value is not None]
    return out


def integral(spans: list[Span], lo: datetime, hi: datetime) -> Fraction:
    """Exact value-seconds of the spans within [lo, hi)."""
    total = Fraction(0)
    for value, a, b in spans:
        overlap = min(b, hi) - max(a, lo)
        if overlap > timedelta(0):
            total += Fraction(value) * seconds(overlap)
    return total


def covered(spans: list[Span], lo: datetime, hi: datetime) -> bool:
    return any(min(b, hi) > max(a, lo) for _, a, b in spans)


def assert_value_hours(reported: Decimal, value_seconds: Fraction, what: str) -> None:
    """``reported`` is the exact value-hours correctly rounded to 20 decimal places."""
    exact = value_seconds / 3600
    exponent = reported.as_tuple().exponent
    assert isinstance(exponent, int) and exponent >= -20, f"{what}: {reported} has more than 20 places"
    assert abs(Fraction(reported) - exact) <= HALF_ULP, f"{what}: {reported} is not {float(exact)} rounded"
    if (exact * 10**20).denominator == 1:
        assert Fraction(reported) == exact, f"{what}: {reported} != exact {exact}"


def windows(start: datetime, end: datetime, unit: str) -> list[tuple[datetime, datetime, datetime]]:
    """(window start, slice start, slice end) of every window meeting [start, end)."""
    out = []
    w = truncate(start, unit)
    while w < end:
        out.append((w, max(w, start), min(step(w, unit), end)))
        w = step(w, unit)
    return out


# --- percentiles ----------------------------------------------------------------------


@st.composite
def percentile_events(draw: st.DrawFn) -> list[Event]:
    """Up to 150 mostly distinct values (a rank off by one shows), as JSON numbers or
    decimal strings, plus junk; spread over [T0 - 3h, T0 + 9h)."""
    rows = draw(
        st.lists(
            st.tuples(decimals, st.booleans(), offsets, st.sampled_from(["eu", "us", None])),
            max_size=150,
            unique_by=lambda row: row[0],
        )
    )
    junk = draw(st.lists(st.tuples(st.sampled_from(["n/a", "1e3", None, True]), offsets), max_size=5))
    events = [
        Event(f"k{i:03d}", "cus_a", T0 + offset, str(d) if text else float(d), region) for i, (d, text, offset, region) in enumerate(rows)
    ]
    events += [Event(f"j{i:03d}", "cus_b", T0 + offset, raw, None) for i, (raw, offset) in enumerate(junk)]
    return events


@PROPERTY
@given(
    events=percentile_events(),
    aggregation=st.sampled_from(["P50", "P95", "P99"]),
    unit=st.sampled_from([None, "hour", "day"]),
    grouped=st.booleans(),
)
async def test_percentile_is_the_nearest_rank_sample(
    engine: AsyncEngine, events: list[Event], aggregation: str, unit: str | None, grouped: bool
) -> None:
    merchant_id = await load(engine, events)
    p = Fraction(int(aggregation[1:]), 100)
    start, end = T0 - timedelta(hours=2), T0 + timedelta(hours=8)
    m = metric(merchant_id, aggregation)
    in_range = [e for e in events if start <= e.time < end]

    got = await usage(engine, UsageQuery(metric=m, start=start, end=end, window_unit=unit, group_by=("region",) if grouped else ()))

    assert got.total == nearest_rank([e.value for e in in_range if e.value is not None], p)
    cells: dict[tuple[datetime | None, str], list[Event]] = defaultdict(list)
    if unit is not None or grouped:
        for e in in_range:
            cells[(truncate(e.time, unit) if unit else None, (e.region or "") if grouped else "")].append(e)
    expected = {cell: (nearest_rank([e.value for e in members if e.value is not None], p), len(members)) for cell, members in cells.items()}
    assert {(r.window_start, r.group.get("region", "")): (r.value, r.events) for r in got.rows} == expected
    for row in got.rows:  # an actual sample (or 0 when the cell has no numeric value)
        assert row.value == 0 or row.value in {e.value for e in in_range}


async def test_percentile_rank_for_every_count_up_to_120(engine: AsyncEngine) -> None:
    """Subject n holds the values 1..n shuffled: its percentile p must be ceil(p * n),
    whatever float8 arithmetic percentile_disc does with p * n."""
    shuffle = Random(2026)
    events = []
    for n in range(1, 121):
        values = list(range(1, n + 1))
        shuffle.shuffle(values)
        events += [Event(f"n{n:03d}_{i:03d}", f"s{n:03d}", T0 + timedelta(seconds=i), str(v), None) for i, v in enumerate(values)]
    merchant_id = await load(engine, events)
    for aggregation in ("P50", "P95", "P99"):
        p = Fraction(int(aggregation[1:]), 100)
        query = UsageQuery(metric=metric(merchant_id, aggregation), start=T0, end=T0 + timedelta(hours=1), group_by=("subject",))
        got = {r.group["subject"]: r.value for r in (await usage(engine, query)).rows}
        assert got == {f"s{n:03d}": Decimal(math.ceil(p * n)) for n in range(1, 121)}, aggregation


# --- time-weighted sum ----------------------------------------------------------------


@PROPERTY
@given(
    events=event_sets(),
    span=ranges(),
    unit=st.sampled_from([None, "minute", "hour", "day", "month"]),
    grouped=st.booleans(),
    subject=st.sampled_from([None, "cus_a"]),
    region_filter=st.sampled_from([None, "eu"]),
    event_from=st.one_of(st.none(), offsets.map(lambda o: T0 + o)),
)
async def test_time_weighted_sum_is_the_integral(
    engine: AsyncEngine,
    events: list[Event],
    span: tuple[datetime, datetime],
    unit: str | None,
    grouped: bool,
    subject: str | None,
    region_filter: str | None,
    event_from: datetime | None,
) -> None:
    merchant_id = await load(engine, events)
    start, end = span
    query = UsageQuery(
        metric=metric(merchant_id, "TIME_WEIGHTED_SUM", event_from),
        start=start,
        end=end,
        subject=subject,
        filters={"region": region_filter} if region_filter else {},
        window_unit=unit,
        group_by=("region",) if grouped else (),
    )
    got = await usage(engine, query)

    seen = [
        e
        for e in events
        if (subject is None or e.subject == subject)
        and (region_filter is None or e.region == region_filter)
        and (event_from is None or e.time >= event_from)
    ]
    per_subject = held_spans(seen, start, end, by_region=False)
    assert_value_hours(got.total, sum((integral(s, start, end) for s in per_subject.values()), Fraction(0)), "total")
    if unit is None and not grouped:
        assert got.rows == []
        return

    partitions = held_spans(seen, start, end, by_region=grouped)
    cuts = windows(start, end, unit) if unit else [(None, start, end)]
    expected: dict[tuple[datetime | None, str], tuple[Fraction, int]] = {}
    for window, lo, hi in cuts:
        for (_, region), spans in partitions.items():
            if covered(spans, lo, hi):
                cell = (window, (region or "") if grouped else "")
                value, count = expected.get(cell, (Fraction(0), 0))
                expected[cell] = (value + integral(spans, lo, hi), count)
    for e in seen:
        if start <= e.time < end and e.value is not None:
            cell = (truncate(e.time, unit) if unit else None, (e.region or "") if grouped else "")
            value, count = expected[cell]  # a sample in range always holds a moment in its own window
            expected[cell] = (value, count + 1)

    rows = {(r.window_start, r.group.get("region", "")): r for r in got.rows}
    assert set(rows) == set(expected)
    for cell, (value_seconds, count) in expected.items():
        assert_value_hours(rows[cell].value, value_seconds, f"row {cell}")
        assert rows[cell].events == count, cell
    if unit is not None:
        assert [r.window_start for r in got.rows] == sorted(r.window_start for r in got.rows if r.window_start is not None)
    if not grouped:  # windows partition the range: they add up to the total
        assert abs(sum((r.value for r in got.rows), Decimal(0)) - got.total) <= Decimal("5e-21") * (len(got.rows) + 1)


@PROPERTY
@given(events=event_sets(), span=ranges(), cut=st.fractions(min_value=0, max_value=1), subject=st.sampled_from([None, "cus_b"]))
async def test_time_weighted_sum_is_conserved_when_the_range_is_split(
    engine: AsyncEngine, events: list[Event], span: tuple[datetime, datetime], cut: Fraction, subject: str | None
) -> None:
    merchant_id = await load(engine, events)
    start, end = span
    middle = start + timedelta(microseconds=math.floor(cut * ((end - start) // timedelta(microseconds=1))))
    m = metric(merchant_id, "TIME_WEIGHTED_SUM")

    whole = await usage(engine, UsageQuery(metric=m, start=start, end=end, subject=subject))
    parts = [
        await usage(engine, UsageQuery(metric=m, start=a, end=b, subject=subject)) for a, b in ((start, middle), (middle, end)) if a < b
    ]

    # each part carries in what was held at its start, so the exact integrals add up; the
    # reported values differ from them by at most half a unit in the 20th place each
    assert abs(sum((p.total for p in parts), Decimal(0)) - whole.total) <= Decimal("5e-21") * (len(parts) + 1)
    seen = [e for e in events if subject is None or e.subject == subject]
    exact_parts = [
        sum((integral(s, a, b) for s in held_spans(seen, a, b, by_region=False).values()), Fraction(0))
        for a, b in ((start, middle), (middle, end))
        if a < b
    ]
    for reported, exact in zip(parts, exact_parts, strict=True):
        assert_value_hours(reported.total, exact, "part")
    assert_value_hours(whole.total, sum(exact_parts, Fraction(0)), "whole")


async def test_time_weighted_sum_worked_example(engine: AsyncEngine) -> None:
    """2 GB from before the range, 5 GB at 00:30, 1 GB at 01:45 (the other subject 4 GB at
    00:00 exactly), range [00:00, 03:00) by hour: 2*0.5 + 5*1.25 + 1*1.25 + 4*3 = 20.5."""
    day = datetime(2026, 3, 2, tzinfo=UTC)
    events = [
        Event("k1", "cus_a", day - timedelta(hours=5), "7", None),  # superseded before the range
        Event("k2", "cus_a", day - timedelta(hours=1), 2, None),
        Event("k3", "cus_a", day + timedelta(minutes=30), "5", None),
        Event("k4", "cus_a", day + timedelta(minutes=105), 1, None),
        Event("k5", "cus_a", day + timedelta(minutes=110), "n/a", None),  # ignored, interrupts nothing
        Event("k6", "cus_b", day, "4", None),
        Event("k7", "cus_b", day + timedelta(hours=3), "1000", None),  # at the end: outside
    ]
    merchant_id = await load(engine, events)
    got = await usage(
        engine,
        UsageQuery(metric=metric(merchant_id, "TIME_WEIGHTED_SUM"), start=day, end=day + timedelta(hours=3), window_unit="hour"),
    )
    assert got.total == Decimal("20.5")
    assert [(r.window_start, r.value, r.events) for r in got.rows] == [
        (day, Decimal("7.5"), 2),  # 2*0.5 + 5*0.5 + 4
        (day + timedelta(hours=1), Decimal("8"), 1),  # 5*0.75 + 1*0.25 + 4 (k5 is not a sample)
        (day + timedelta(hours=2), Decimal("5"), 0),  # 1 + 4, carried across the boundary
    ]
    one_second = await usage(
        engine,
        UsageQuery(metric=metric(merchant_id, "TIME_WEIGHTED_SUM"), start=day, end=day + timedelta(seconds=1), subject="cus_a"),
    )
    assert one_second.total == Decimal("0.00055555555555555556")  # 2 GB for 1 s: 2/3600, 20 places
