"""Balances over generated entitlements, grants and usage (hypothesis), against a
reference that steps through time hour by hour.

The reference is written the obvious way: from ``active_from`` it walks every hour, applies
the reset at each boundary, then burns each usage event at its instant over the grants live
then, in burn order. It never cuts periods into pieces, never reads cumulative windows and
never starts later than ``active_from``; the model must agree with it to the unit. Every
instant here lies on the hour grid (the cadences are whole hours) so the walk sees all of them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal

from hypothesis import given, settings
from hypothesis import strategies as st

from services.entitlement.domain.balance import (
    UNLIMITED,
    Evaluation,
    GrantTerms,
    MeteredTerms,
    burn_order,
    coverage,
    coverage_windows,
    evaluate,
    prepare,
    usage_windows,
)
from services.entitlement.tests.unit.meter import Meter

PROPERTY = settings(max_examples=300, deadline=None)
BASE = datetime(2026, 3, 1, tzinfo=UTC)
HOUR = timedelta(hours=1)
CADENCE_HOURS = {"PT6H": 6, "PT10H": 10, "P1D": 24}
ZERO = Decimal(0)


def h(n: int) -> datetime:
    return BASE + n * HOUR


@dataclass(frozen=True)
class Case:
    terms: MeteredTerms
    active_from: datetime
    active_until: datetime | None
    grants: tuple[GrantTerms, ...]
    events: tuple[tuple[datetime, Decimal], ...]

    def meter(self, before: datetime | None = None) -> Meter:
        meter = Meter()
        for when, value in self.events:
            if before is None or when < before:
                meter.add(when, value)
        return meter


units = st.one_of(st.integers(0, 60).map(Decimal), st.integers(0, 6_000_000_000).map(lambda n: Decimal(n).scaleb(-8)))


@st.composite
def grants(draw: st.DrawFn, index: int) -> GrantTerms:
    # even hours mostly: instants then often fall on period boundaries (the edges)
    effective = draw(st.integers(-5, 55)) * 2 + draw(st.sampled_from([0, 0, 0, 1]))
    expires = draw(st.one_of(st.none(), st.integers(1, 40).map(lambda n: effective + 2 * n)))
    voided = draw(st.one_of(st.none(), st.integers(0, 40).map(lambda n: effective + 2 * n)))
    low = draw(st.sampled_from([ZERO, ZERO, Decimal(3), Decimal(20)]))
    high = draw(st.sampled_from([low, low + 5, UNLIMITED]))
    return GrantTerms(
        id=f"grant_{index}",
        amount=draw(units),
        effective_at=h(effective),
        expires_at=None if expires is None else h(expires),
        voided_at=None if voided is None else h(voided),
        priority=draw(st.integers(-1, 2)),
        created_at=h(draw(st.integers(-10, 110))),
        reset_min_rollover=low,
        reset_max_rollover=high,
        recurring=draw(st.booleans()),
    )


@st.composite
def cases(draw: st.DrawFn) -> Case:
    cadence = draw(st.sampled_from([None, "PT6H", "PT10H", "P1D"]))
    active_from = draw(st.integers(0, 15)) * 2
    until = draw(st.one_of(st.none(), st.integers(1, 70).map(lambda n: active_from + 2 * n)))
    terms = MeteredTerms(
        usage_period=cadence,
        anchor=h(2 * draw(st.integers(-20, 20))),
        is_soft_limit=draw(st.booleans()),
        preserve_overage_at_reset=draw(st.booleans()),
    )
    count = draw(st.integers(0, 5))
    chosen = tuple(draw(grants(i)) for i in range(count))
    events = tuple(sorted(draw(st.lists(st.tuples(st.integers(-10, 170).map(h), units), max_size=25))))
    return Case(terms, h(active_from), None if until is None else h(until), chosen, events)


# --- the reference ------------------------------------------------------------------------------


@dataclass
class Walk:
    remaining: dict[str, Decimal] = field(default_factory=dict)
    burned: dict[str, Decimal] = field(default_factory=dict)  # from active_from
    uncovered: Decimal = ZERO  # from active_from
    debt: Decimal = ZERO
    overage: Decimal = ZERO
    snapshots: dict[datetime, tuple[dict[str, Decimal], Decimal]] = field(default_factory=dict)


def _end(g: GrantTerms) -> datetime | None:
    ends = [t for t in (g.expires_at, g.voided_at) if t is not None]
    return min(ends) if ends else None


def _live(g: GrantTerms, t: datetime) -> bool:
    end = _end(g)
    return g.effective_at <= t and (end is None or t < end)


def _is_boundary(case: Case, t: datetime) -> bool:
    cadence = case.terms.usage_period
    if cadence is None:
        return False
    return ((t - case.terms.anchor) // HOUR) % CADENCE_HOURS[cadence] == 0


def _burn(walk: Walk, order: Sequence[GrantTerms], t: datetime, units: Decimal, *, usage: bool) -> Decimal:
    for g in order:
        if units == 0:
            break
        if not _live(g, t):
            continue
        left = walk.remaining.setdefault(g.id, g.amount)
        take = min(left, units)
        walk.remaining[g.id] = left - take
        units -= take
        if usage and take:
            walk.burned[g.id] = walk.burned.get(g.id, ZERO) + take
    return units


def _order(grants: Sequence[GrantTerms]) -> list[GrantTerms]:
    """The burn order, spelled out again: priority, earliest expiry (never last), creation, id."""
    never = datetime.max.replace(tzinfo=UTC)
    return sorted(grants, key=lambda g: (g.priority, g.expires_at or never, g.expires_at is None, g.created_at, g.id))


def reference(case: Case, at: datetime) -> tuple[Walk, datetime]:
    """The walk up to ``at`` (or active_until), and the instant the state is taken at."""
    walk = Walk()
    order = _order(case.grants)
    until = at if case.active_until is None else min(at, case.active_until)
    t = case.active_from
    while t <= until:
        if t > case.active_from and _is_boundary(case, t) and (case.active_until is None or t < case.active_until):
            carried = walk.debt + walk.overage
            for g in order:
                end = _end(g)
                if g.effective_at < t and (end is None or t < end):
                    kept = max(g.reset_min_rollover, min(walk.remaining.get(g.id, g.amount), g.reset_max_rollover))
                    walk.remaining[g.id] = kept + (g.amount if g.recurring else ZERO)
            walk.overage = ZERO
            walk.debt = _burn(walk, order, t, carried, usage=False) if case.terms.preserve_overage_at_reset else ZERO
        walk.snapshots[t] = (dict(walk.burned), walk.uncovered)
        if t == until:
            break
        for when, value in case.events:
            if when == t:
                left = _burn(walk, order, t, value, usage=True)
                walk.overage += left
                walk.uncovered += left
        t += HOUR
    return walk, until


def _period(case: Case, at: datetime) -> tuple[datetime | None, datetime | None]:
    if at < case.active_from:
        return None, None
    cadence = case.terms.usage_period
    if cadence is None:
        return case.active_from, None
    ended = case.active_until is not None and at >= case.active_until
    last = case.active_until - HOUR if ended and case.active_until is not None else at
    size = CADENCE_HOURS[cadence] * HOUR
    k = (last - case.terms.anchor) // size
    start, end = case.terms.anchor + k * size, case.terms.anchor + (k + 1) * size
    return max(start, case.active_from), end if case.active_until is None else min(end, case.active_until)


def _evaluate(case: Case, at: datetime, meter: Meter, *, open_ended: bool = False) -> Evaluation:
    windows = usage_windows(case.terms, case.active_from, case.active_until, case.grants, at, open_ended=open_ended)
    assert windows == sorted(set(windows))
    result = evaluate(case.terms, case.active_from, case.active_until, case.grants, at, meter.read(windows), open_ended=open_ended)
    # the checks' path (use_cases.evaluate): the same cut made once answers the same
    cut = prepare(case.terms, case.active_from, case.active_until, case.grants, at, open_ended=open_ended)
    assert cut.windows == windows
    assert cut.evaluate(meter.read(windows)) == result
    return result


def _diff(later: dict[str, Decimal], earlier: dict[str, Decimal]) -> dict[str, Decimal]:
    out = {k: v - earlier.get(k, ZERO) for k, v in later.items()}
    return {k: v for k, v in out.items() if v != 0}


# --- properties -------------------------------------------------------------------------------------


@PROPERTY
@given(case=cases(), at_hour=st.one_of(st.integers(-3, 88).map(lambda n: 2 * n), st.integers(-5, 175)))
def test_evaluation_matches_the_hourly_reference(case: Case, at_hour: int) -> None:
    at = h(at_hour)
    result = _evaluate(case, at, case.meter())
    walk, until = reference(case, at)

    assert burn_order(case.grants) == _order(case.grants)
    live = [g for g in _order(case.grants) if _live(g, until)]
    assert result.remaining == {g.id: walk.remaining.get(g.id, g.amount) for g in live}
    assert result.balance == sum(result.remaining.values(), ZERO)
    assert all(left >= 0 for left in result.remaining.values())
    assert (result.period_start, result.period_end) == _period(case, at)
    assert result.active == (case.active_from <= at and (case.active_until is None or at < case.active_until))
    if result.period_start is None:
        assert (result.usage_in_period, result.overage, result.burned, result.uncovered) == (ZERO, ZERO, {}, ZERO)
        return
    assert result.usage_in_period == case.meter().reading(result.period_start, until)
    assert result.overage == walk.debt + walk.overage
    # burned and uncovered count from counted_from (the reference from active_from)
    assert result.counted_from is not None
    burned_then, uncovered_then = walk.snapshots[result.counted_from]
    assert result.burned == _diff(walk.burned, burned_then)
    assert result.uncovered == walk.uncovered - uncovered_then
    # conservation: every unit of usage counted is either burned or uncovered
    assert case.meter().reading(result.counted_from, until) == sum(result.burned.values(), ZERO) + result.uncovered
    if case.terms.usage_period is None:
        # no resets: what the live grants lack is what they burned
        assert sum((g.amount for g in live), ZERO) - result.balance == sum((result.burned.get(g.id, ZERO) for g in live), ZERO)


@PROPERTY
@given(case=cases(), at_hour=st.integers(-5, 175), earlier=st.lists(st.integers(-5, 175), max_size=4))
def test_evaluation_has_no_hidden_state_and_open_ended_agrees_when_nothing_lies_beyond(
    case: Case, at_hour: int, earlier: list[int]
) -> None:
    at = h(at_hour)
    fresh = _evaluate(case, at, case.meter())
    for other in earlier:
        _evaluate(case, h(other), case.meter())
        _evaluate(case, h(other), case.meter(), open_ended=True)
    assert _evaluate(case, at, case.meter()) == fresh

    now_meter = case.meter(before=at)  # "now": no usage after it exists yet
    closed = _evaluate(case, at, now_meter)
    open_ = _evaluate(case, at, now_meter, open_ended=True)
    assert open_ == closed
    windows = usage_windows(case.terms, case.active_from, case.active_until, case.grants, at, open_ended=True)
    assert all(w.end <= at or w.end == (closed.valid_until or w.end) for w in windows)


@PROPERTY
@given(case=cases(), start_hour=st.integers(-5, 175), length=st.integers(0, 80).map(lambda n: 2 * n))
def test_coverage_is_the_reference_burns_between_its_ends(case: Case, start_hour: int, length: int) -> None:
    start, end = h(start_hour), h(start_hour + length)
    meter = case.meter()
    windows = coverage_windows(case.terms, case.active_from, case.active_until, case.grants, start, end)
    result = coverage(case.terms, case.active_from, case.active_until, case.grants, start, end, meter.read(windows))

    before, _ = reference(case, start)
    after, _ = reference(case, end)
    expected = _diff(after.burned, before.burned)
    order = [g.id for g in _order(case.grants)]
    assert list(result.grants) == sorted(expected.items(), key=lambda item: order.index(item[0]))
    assert result.covered == sum(expected.values(), ZERO)
    assert result.usage == meter.reading(start, end)
    active_end = end if case.active_until is None else max(start, min(end, case.active_until))
    inside = meter.reading(max(start, case.active_from), active_end) if max(start, case.active_from) < active_end else ZERO
    assert result.usage - result.covered == (after.uncovered - before.uncovered) + (result.usage - inside)
