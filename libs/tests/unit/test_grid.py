"""The billing grid: durations, boundaries from the anchor, exact proration; with hypothesis
properties of the grid and of money rounded with the carry (DESIGN sections 3 and 7)."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from fractions import Fraction

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from libs.core.errors import InvalidArgument
from libs.core.grid import (
    Duration,
    add,
    boundaries_between,
    boundary,
    index_at,
    parse_duration,
    period,
    prorate,
    proration,
)
from libs.core.money import minor_unit_atomic, round_half_up

PROPERTY = settings(max_examples=150, deadline=None)


def utc(year: int, month: int, day: int, hour: int = 0, minute: int = 0, second: int = 0) -> datetime:
    return datetime(year, month, day, hour, minute, second, tzinfo=UTC)


# --- durations ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("P1M", Duration(months=1)),
        ("P7D", Duration(days=7)),
        ("PT2H", Duration(hours=2)),
        ("P1Y2M3DT4H5M6S", Duration(years=1, months=2, days=3, hours=4, minutes=5, seconds=6)),
        ("P0D", Duration()),
        ("PT0S", Duration()),
        ("P2W", Duration(weeks=2)),
        ("P1Y", Duration(years=1)),
        ("PT30M", Duration(minutes=30)),
        ("PT90S", Duration(seconds=90)),
        ("P1W3D", Duration(weeks=1, days=3)),
        ("P0001M", Duration(months=1)),
    ],
)
def test_parse_duration(text: str, expected: Duration) -> None:
    assert parse_duration(text, "advanceBy") == expected


def test_duration_renders_canonically() -> None:
    assert str(parse_duration("P1Y2M3DT4H5M6S", "f")) == "P1Y2M3DT4H5M6S"
    assert str(parse_duration("PT0S", "f")) == "P0D"
    assert str(parse_duration("P2W", "f")) == "P2W"
    assert parse_duration("P0D", "f").is_zero
    assert not parse_duration("PT1S", "f").is_zero


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("-P1D", "signed"),
        ("+P1D", "signed"),
        ("PT0.5S", "whole units"),
        ("P1,5D", "whole units"),
        ("p1m", "upper-case"),
        ("P", "ISO 8601 duration"),
        ("PT", "ISO 8601 duration"),
        ("P1DT", "ISO 8601 duration"),
        ("1M", "ISO 8601 duration"),
        ("P1M1Y", "ISO 8601 duration"),  # designators out of order
        ("PT1D", "ISO 8601 duration"),
        ("P1H", "ISO 8601 duration"),
        ("", "ISO 8601 duration"),
        (" P1M", "ISO 8601 duration"),
        ("P1234567890D", "more than 9 digits"),
        ("P" + "1" * 70 + "D", "longer than"),
    ],
)
def test_bad_durations_are_refused_naming_the_field(text: str, says: str) -> None:
    with pytest.raises(InvalidArgument) as info:
        parse_duration(text, "advanceBy")
    assert info.value.field == "advanceBy"
    assert info.value.reason == "INVALID_DURATION"
    assert says in info.value.message
    assert info.value.message.startswith("advanceBy ")


@pytest.mark.parametrize("value", [None, 30, 1.5, b"P1M", ["P1M"]])
def test_non_strings_are_refused(value: object) -> None:
    with pytest.raises(InvalidArgument) as info:
        parse_duration(value, "billingCadence")
    assert info.value.field == "billingCadence"


def test_negative_components_cannot_be_built() -> None:
    with pytest.raises(ValueError):
        Duration(days=-1)


# --- add ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("start", "text", "expected"),
    [
        (utc(2026, 1, 31), "P1M", utc(2026, 2, 28)),
        (utc(2028, 1, 31), "P1M", utc(2028, 2, 29)),  # leap year
        (utc(2026, 3, 31, 12), "P1M", utc(2026, 4, 30, 12)),
        (utc(2026, 1, 15, 10, 30), "P7D", utc(2026, 1, 22, 10, 30)),
        (utc(2026, 1, 15, 23), "PT2H", utc(2026, 1, 16, 1)),
        (utc(2026, 1, 1), "P1Y2M3DT4H5M6S", utc(2027, 3, 4, 4, 5, 6)),
        (utc(2028, 2, 29), "P1Y", utc(2029, 2, 28)),
        (utc(2026, 1, 31), "P1M1D", utc(2026, 3, 1)),  # months first (Feb 28), then a day
        (utc(2026, 12, 15), "P1M", utc(2027, 1, 15)),
        (utc(2026, 5, 5), "P0D", utc(2026, 5, 5)),
        (utc(2026, 5, 5), "P2W", utc(2026, 5, 19)),
    ],
)
def test_add(start: datetime, text: str, expected: datetime) -> None:
    assert add(start, parse_duration(text, "advanceBy")) == expected
    assert add(start, text) == expected


def test_add_many_times_is_computed_from_the_start() -> None:
    assert add(utc(2026, 1, 31), "P1M", 3) == utc(2026, 4, 30)
    assert add(utc(2026, 3, 31), "P1M", -1) == utc(2026, 2, 28)


def test_add_beyond_the_calendar_is_refused() -> None:
    with pytest.raises(InvalidArgument) as info:
        add(utc(9999, 6, 1), parse_duration("P1Y", "advanceBy"))
    assert info.value.reason == "DURATION_OUT_OF_RANGE"
    assert info.value.field == "advanceBy"


def test_add_needs_an_aware_instant() -> None:
    with pytest.raises(ValueError):
        add(datetime(2026, 1, 1), "P1D")


# --- boundaries ---------------------------------------------------------------------------


def test_month_end_anchor_clamps_and_does_not_stick() -> None:
    anchor = utc(2026, 1, 31, 9)
    got = [boundary(anchor, "P1M", k) for k in range(6)]
    assert got == [
        utc(2026, 1, 31, 9),
        utc(2026, 2, 28, 9),
        utc(2026, 3, 31, 9),
        utc(2026, 4, 30, 9),
        utc(2026, 5, 31, 9),
        utc(2026, 6, 30, 9),
    ]


def test_leap_year_february() -> None:
    anchor = utc(2027, 11, 30)
    assert boundary(anchor, "P1M", 3) == utc(2028, 2, 29)
    assert boundary(anchor, "P1M", 4) == utc(2028, 3, 30)


def test_negative_k_extends_the_grid_before_the_anchor() -> None:
    anchor = utc(2026, 3, 31)
    assert boundary(anchor, "P1M", -1) == utc(2026, 2, 28)
    assert boundary(anchor, "P1M", -2) == utc(2026, 1, 31)
    assert index_at(anchor, "P1M", utc(2026, 2, 28)) == -1
    assert index_at(anchor, "P1M", utc(2026, 2, 27, 23, 59, 59)) == -2


def test_period_and_index_at() -> None:
    anchor = utc(2026, 1, 31)
    p = period(anchor, "P1M", 1)
    assert (p.index, p.start, p.end) == (1, utc(2026, 2, 28), utc(2026, 3, 31))
    assert utc(2026, 3, 30, 23, 59, 59) in p
    assert utc(2026, 3, 31) not in p
    assert index_at(anchor, "P1M", utc(2026, 2, 28)) == 1
    assert index_at(anchor, "P1M", utc(2026, 2, 27, 23, 59, 59)) == 0
    assert index_at(anchor, "P1M", utc(2036, 1, 31)) == 120


def test_once_has_no_grid() -> None:
    with pytest.raises(ValueError):
        boundary(utc(2026, 1, 1), "P0D", 1)


def test_boundaries_between_lists_what_an_advance_passes() -> None:
    anchor = utc(2026, 1, 31)
    assert boundaries_between(anchor, "P1M", utc(2026, 2, 28), utc(2026, 5, 1)) == [
        (2, utc(2026, 3, 31)),
        (3, utc(2026, 4, 30)),
    ]
    assert boundaries_between(anchor, "P1M", utc(2026, 2, 27), utc(2026, 2, 28)) == [(1, utc(2026, 2, 28))]
    assert boundaries_between(anchor, "P1M", utc(2026, 3, 1), utc(2026, 3, 1)) == []


# --- proration ----------------------------------------------------------------------------


def test_proration_is_exact_to_the_second() -> None:
    share = proration(utc(2026, 2, 10), utc(2026, 2, 28), utc(2026, 1, 31), utc(2026, 2, 28))
    assert share == Fraction(18, 28)
    assert proration(utc(2026, 1, 1), utc(2026, 1, 1), utc(2026, 1, 1), utc(2026, 2, 1)) == 0
    third = proration(utc(2026, 1, 1), utc(2026, 1, 1, 8), utc(2026, 1, 1), utc(2026, 1, 2))
    assert third == Fraction(1, 3)
    assert prorate(3_000_000_000, third) == 1_000_000_000
    assert prorate(Decimal("1.5"), third) == Fraction(1, 2)


def test_proration_refuses_a_window_outside_its_period() -> None:
    with pytest.raises(ValueError):
        proration(utc(2026, 1, 1), utc(2026, 3, 1), utc(2026, 1, 1), utc(2026, 2, 1))
    with pytest.raises(ValueError):
        proration(utc(2026, 1, 1), utc(2026, 1, 2), utc(2026, 1, 1), utc(2026, 1, 1))


# --- properties ---------------------------------------------------------------------------

anchors = st.datetimes(min_value=datetime(2000, 1, 1), max_value=datetime(2090, 12, 31), timezones=st.just(UTC)).map(
    lambda t: t.replace(microsecond=0)
)
cadences = st.one_of(
    st.builds(Duration, months=st.integers(1, 13)),
    st.builds(Duration, years=st.integers(1, 2)),
    st.builds(Duration, days=st.integers(1, 45)),
    st.builds(Duration, weeks=st.integers(1, 5)),
    st.builds(Duration, hours=st.integers(1, 72)),
    st.builds(Duration, months=st.integers(0, 3), days=st.integers(1, 10), hours=st.integers(0, 23)),
)
steps = st.one_of(
    st.builds(Duration, months=st.integers(1, 14)),
    st.builds(Duration, days=st.integers(1, 40)),
    st.builds(Duration, hours=st.integers(1, 100)),
    st.builds(Duration, seconds=st.integers(1, 86_400 * 3)),
    st.builds(Duration, years=st.integers(0, 1), months=st.integers(0, 2), days=st.integers(0, 3), minutes=st.integers(1, 59)),
)


@PROPERTY
@given(anchor=anchors, cadence=cadences, first=st.integers(-30, 30), count=st.integers(1, 40))
def test_boundaries_strictly_increase_and_tile_time(anchor: datetime, cadence: Duration, first: int, count: int) -> None:
    periods = [period(anchor, cadence, k) for k in range(first, first + count)]
    for p in periods:
        assert p.start < p.end
    for before, after in itertools.pairwise(periods):
        assert before.end == after.start  # no gap, no overlap
    assert boundary(anchor, cadence, 0) == anchor
    # every instant of the span lies in exactly one period, the one index_at names
    for p in periods:
        for t in (p.start, p.end - timedelta(seconds=1), p.start + (p.end - p.start) / 2):
            assert index_at(anchor, cadence, t) == p.index
            assert sum(1 for q in periods if t in q) == 1


@PROPERTY
@given(anchor=anchors, cadence=cadences, advances=st.lists(steps, min_size=1, max_size=25))
def test_every_boundary_is_reached_whatever_the_advance_steps(anchor: datetime, cadence: Duration, advances: list[Duration]) -> None:
    # a test clock starting at the anchor, advanced by arbitrary steps: the boundaries each
    # advance passes, put together, are every boundary up to the clock's end, each once
    now = anchor
    passed: list[tuple[int, datetime]] = []
    for step in advances:
        later = add(now, step)
        assert later > now
        passed.extend(boundaries_between(anchor, cadence, now, later))
        now = later
    last = index_at(anchor, cadence, now)
    assert passed == [(k, boundary(anchor, cadence, k)) for k in range(1, last + 1)]
    assert boundary(anchor, cadence, last) <= now < boundary(anchor, cadence, last + 1)


@PROPERTY
@given(
    anchor=anchors,
    cadence=cadences,
    k=st.integers(-5, 50),
    cut=st.floats(min_value=0, max_value=1),
    charge=st.integers(min_value=0, max_value=10**15),
)
def test_proration_credit_plus_used_part_is_the_full_charge(anchor: datetime, cadence: Duration, k: int, cut: float, charge: int) -> None:
    p = period(anchor, cadence, k)
    seconds = int((p.end - p.start).total_seconds())
    t = p.start + timedelta(seconds=int(seconds * cut))  # termination at t in [s, e]
    used = prorate(charge, proration(p.start, t, p.start, p.end))
    credit = prorate(charge, proration(t, p.end, p.start, p.end))
    assert used + credit == charge
    assert 0 <= used <= charge and 0 <= credit <= charge


# --- money over the grid: the rounding carry ----------------------------------------------


def _carry_run(exact_amounts: list[Decimal], currency: str) -> list[tuple[Decimal, int]]:
    """Invoices each with one line of an exact amount: the line rounded once half up, then
    the carry line settling B to round_half_up(E) (DESIGN section 7). (E, B) after each."""
    exact_total, billed_total = Decimal(0), 0
    out = []
    for exact in exact_amounts:
        line = round_half_up(exact, currency)
        exact_total += exact
        carry = round_half_up(exact_total, currency) - (billed_total + line)
        billed_total += line + carry
        out.append((exact_total, billed_total))
    return out


@PROPERTY
@given(
    unit_prices=st.lists(st.integers(min_value=1, max_value=9_999_999), min_size=1, max_size=1),  # below one US cent
    quantities=st.lists(st.integers(min_value=0, max_value=10_000), min_size=2, max_size=120),
    currency=st.sampled_from(["USD", "JPY", "KWD", "EUR"]),
)
def test_cumulative_rounding_drift_stays_below_half_a_minor_unit(unit_prices: list[int], quantities: list[int], currency: str) -> None:
    # many periods of sub-cent usage: the billed cumulative total never drifts from the exact
    unit = minor_unit_atomic(currency)
    exact_amounts = [Decimal(unit_prices[0]) * q / 3 for q in quantities]  # a third: not a clean decimal
    for exact_total, billed_total in _carry_run(exact_amounts, currency):
        drift = abs(exact_total - billed_total)
        assert billed_total % unit == 0
        assert drift * 2 <= unit
        if drift * 2 == unit:  # only an exact tie sits at half, and half up took it away from zero
            assert abs(billed_total) > abs(exact_total)


@PROPERTY
@given(
    anchor=anchors,
    monthly_fee=st.integers(min_value=1, max_value=999_999_999),
    cuts=st.lists(st.integers(min_value=1, max_value=27 * 86_400), min_size=1, max_size=24),
)
def test_prorated_periods_with_carry_stay_within_half_a_cent(anchor: datetime, monthly_fee: int, cuts: list[int]) -> None:
    # each invoice bills a prorated stub of a monthly fee (a fraction of a period): exact
    # amounts are Fractions, quantised to 1e-9 of an atomic unit for the carry ledger
    exact_amounts = []
    for k, cut in enumerate(cuts):
        p = period(anchor, "P1M", k)
        share = proration(p.start, p.start + timedelta(seconds=cut), p.start, p.end)
        exact = prorate(monthly_fee, share)
        exact_amounts.append(Decimal(exact.numerator) / Decimal(exact.denominator))
    unit = minor_unit_atomic("USD")
    for exact_total, billed_total in _carry_run(exact_amounts, "USD"):
        assert abs(exact_total - billed_total) * 2 <= unit


def test_without_the_carry_sub_cent_lines_drift_and_with_it_they_do_not() -> None:
    # 1,000 periods of 0.004 USD: each line rounds to 0.00; the carry bills the 4.00
    exact = [Decimal(4_000_000)] * 1000
    lines_only = sum(round_half_up(x, "USD") for x in exact)
    assert lines_only == 0
    exact_total, billed_total = _carry_run(exact, "USD")[-1]
    assert exact_total == 4_000_000_000
    assert billed_total == 4_000_000_000
    # and 0.005 each way: half up bills the half, the carry keeps B = round(E)
    e, b = _carry_run([Decimal(5_000_000), Decimal(5_000_000), Decimal(-5_000_000)], "USD")[-1]
    assert e == 5_000_000
    assert b == 10_000_000
