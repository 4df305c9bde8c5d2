"""Metered balances: grants burned by usage, resets with rollover, coverage for invoices.

Pure: no I/O, no clock. The caller asks ``usage_windows`` which cumulative usage readings
an evaluation needs, reads them all at once (metering's GetUsages: deduplicated, exact),
and passes them to ``evaluate`` or ``coverage``. The answer is a function of the
entitlement, its grants, the instant and the readings only: it never depends on where a
calculation started or on what was computed before (no snapshots to go stale).

The model (README "Entitlements"):

* Usage periods. With ``usage_period`` P, period k is ``[anchor ⊕ k·P, anchor ⊕ (k+1)·P)``
  (libs/core/grid, every boundary from the anchor; k may be negative when the anchor is
  after ``active_from``). The entitlement's first period is the one holding
  ``active_from``, counted from ``active_from``. Without a usage period there is one
  period, ``[active_from, active_until)``: a one-time allowance that never resets.
* Usage of a period is the metric's aggregate over ``[period start, t)``; a stretch of
  time burns the increase of that cumulative value (exact for every aggregation, not only
  sums). Usage before ``active_from`` or from ``active_until`` on burns nothing.
* Burn order: inside a period, time is cut at every grant's effective, expiry and void
  instant; each piece's usage burns the grants live in it (effective <= start, not
  expired or voided by its end) in order priority ascending, then earliest expiry
  (never-expiring last), then creation, then id. What no grant covers is overage.
* A grant is live from ``effective_at`` until ``expires_at`` / ``voided_at`` (the first
  of them): from that instant it stops counting, with whatever it had left.
* A reset at a period boundary r, for each grant live across r (effective before r and
  still live at r; one effective at r itself starts with its whole amount):
  non-recurring grants keep ``clamp(remaining, reset_min_rollover, reset_max_rollover)``;
  the recurring grant (the template's ``issue_after_reset`` units) gets
  ``amount + clamp(remaining, min, max)``. The overage of the ended period is forgotten,
  unless ``preserve_overage_at_reset``: then it is carried as a debt that burns the
  grants at r (same order) and what they cannot cover stays overage of the new period.
* Billable overage is usage that no grant covered, when it happened; a carried debt is
  never billed again.

How it is computed, and the edges:

* Outside the active range. Before ``active_from`` nothing has burned: the balance is the
  amounts of the grants live at ``at``, no period. From ``active_until`` on the answer is
  the one at ``active_until`` (the last period's usage up to it), ``active`` False.
* Where it starts. A reset whose outcome does not depend on the past (no debt carried, and
  every grant rolled over has ``reset_min_rollover == reset_max_rollover``, as the
  template's reset units do by default: they refill to exactly ``amount``) is a clean
  start: the evaluation begins at the latest such reset at or before ``at``
  (``Evaluation.counted_from``) and costs the periods since, not the whole history.
  ``burned`` and ``uncovered`` count from there; ``coverage`` starts both of its
  evaluations at the same reset, so their differences are exact.
* Aggregations that go down (LATEST, MIN, AVG: the cumulative value of a period may
  decrease) give units back when it does: first this period's overage, then what the
  grants covered in this period, the last in burn order first. A negative cumulative
  value counts as 0. For SUM, COUNT, MAX and UNIQUE_COUNT this never happens.
"""

from __future__ import annotations

import functools
import itertools
from bisect import bisect_left, bisect_right
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal, localcontext
from typing import Final

from libs.core.errors import InvalidArgument
from libs.core.grid import Duration, boundary, index_at, parse_duration
from libs.core.money import exact_context

# The end of a window that is open to the future: "all usage from its start". When the
# evaluation is of now (``open_ended``), usage after now does not exist yet, so windows
# ending at now are asked with the next instant the result could change at instead (or
# FAR_FUTURE): the same readings serve every check until then, and can be cached.
FAR_FUTURE = datetime(9999, 12, 31, tzinfo=UTC)
UNLIMITED = Decimal("999999999999")
# The most usage periods one evaluation walks (each costs a reading): 13 years of daily
# periods whose every reset carries state. Beyond it an answer is refused rather than
# computed for seconds on the request path.
MAX_PERIODS = 5000

_ZERO: Final = Decimal(0)
_EARLIEST: Final = datetime.min.replace(tzinfo=UTC)  # sorts an expiry-less key; never compared as an expiry


@dataclass(frozen=True, slots=True)
class MeteredTerms:
    """A metered entitlement's settings (its normalized template), anchor resolved."""

    usage_period: str | None  # ISO 8601 duration, None: a one-time allowance
    anchor: datetime  # resolved: the template's anchor, else the subscription's billing anchor, else active_from
    is_soft_limit: bool
    preserve_overage_at_reset: bool


@dataclass(frozen=True, slots=True)
class GrantTerms:
    """One grant, as the balance needs it."""

    id: str
    amount: Decimal
    effective_at: datetime
    expires_at: datetime | None
    voided_at: datetime | None
    priority: int
    created_at: datetime
    reset_min_rollover: Decimal = Decimal(0)
    reset_max_rollover: Decimal = UNLIMITED
    recurring: bool = False  # refilled with ``amount`` at every reset (the template's units)


@dataclass(frozen=True, slots=True, order=True)
class Window:
    """Cumulative usage over [start, end)."""

    start: datetime
    end: datetime


@dataclass(frozen=True, slots=True)
class Evaluation:
    """The balance at one instant."""

    at: datetime
    active: bool  # active_from <= at < active_until
    period_start: datetime | None  # None before active_from
    period_end: datetime | None  # None for a one-time allowance (or before active_from)
    balance: Decimal  # sum of what the grants live at `at` have left
    usage_in_period: Decimal  # usage in [period_start, at)
    overage: Decimal  # usage in the period (and carried debt) no grant covered
    remaining: Mapping[str, Decimal]  # grant id -> what it has left at `at` (live grants only, zeros included)
    # cumulative from ``counted_from`` to `at`, for coverage:
    burned: Mapping[str, Decimal]  # grant id -> usage it covered (carried debt excluded; non-zero entries only)
    uncovered: Decimal  # usage no grant covered when it happened (billable overage)
    # the first instant after `at` at which the answer changes without new usage
    # (period end, a grant's effective/expiry instant, active_until); None: never
    valid_until: datetime | None = None
    # where ``burned`` and ``uncovered`` count from: active_from, or the latest reset whose
    # outcome does not depend on earlier usage (the evaluation starts there); None before
    # active_from
    counted_from: datetime | None = None


@dataclass(frozen=True, slots=True)
class Covered:
    """What the grants covered of the usage in a window (for an invoice line)."""

    usage: Decimal  # usage in [start, end), the whole reading
    covered: Decimal  # of which grants covered this much
    grants: Sequence[tuple[str, Decimal]] = field(default_factory=tuple)  # (grant id, units), burn order, > 0 only


def burn_order(grants: Sequence[GrantTerms]) -> list[GrantTerms]:
    """Priority ascending, then earliest expiry (never last), then creation, then id."""
    return sorted(grants, key=_burn_key)


def usage_windows(
    terms: MeteredTerms,
    active_from: datetime,
    active_until: datetime | None,
    grants: Sequence[GrantTerms],
    at: datetime,
    *,
    open_ended: bool = False,
) -> list[Window]:
    """The readings ``evaluate`` needs for the balance at ``at``, sorted, no duplicates.

    One ``Window(period start, c)`` per cut instant c of each period evaluated (grant
    instants inside it, its end, and ``at`` in the current one). ``open_ended``: the
    current period's last reading ends at ``valid_until`` (or FAR_FUTURE) instead of
    ``at``, for an evaluation of now (no usage lies beyond it yet)."""
    return prepare(terms, active_from, active_until, grants, at, open_ended=open_ended).windows


def evaluate(
    terms: MeteredTerms,
    active_from: datetime,
    active_until: datetime | None,
    grants: Sequence[GrantTerms],
    at: datetime,
    usage: Mapping[Window, Decimal],
    *,
    open_ended: bool = False,
) -> Evaluation:
    """The balance at ``at`` from the readings ``usage_windows`` asked for (same arguments).
    A missing reading is a KeyError: a caller bug, never a zero."""
    return prepare(terms, active_from, active_until, grants, at, open_ended=open_ended).evaluate(usage)


@dataclass(frozen=True, slots=True)
class Prepared:
    """One evaluation's cut of time (what ``usage_windows`` and ``evaluate`` both work
    out from the same arguments), made once: the readings it needs, and then its balance."""

    terms: MeteredTerms
    active_from: datetime
    active_until: datetime | None
    grants: Sequence[GrantTerms]
    at: datetime
    plan: _Plan

    @property
    def windows(self) -> list[Window]:
        """As ``usage_windows``."""
        return sorted({piece.reading for period in self.plan.periods for piece in period.pieces})

    def evaluate(self, usage: Mapping[Window, Decimal]) -> Evaluation:
        """As ``evaluate``."""
        return _run(self.plan, self.terms, self.grants, self.at, self.active_from, self.active_until, usage)


def prepare(
    terms: MeteredTerms,
    active_from: datetime,
    active_until: datetime | None,
    grants: Sequence[GrantTerms],
    at: datetime,
    *,
    open_ended: bool = False,
) -> Prepared:
    """``usage_windows`` and ``evaluate`` of these arguments, with their plan made once."""
    plan = _plan(terms, active_from, active_until, grants, at, open_ended=open_ended)
    return Prepared(terms, active_from, active_until, grants, at, plan)


def _burn_key(grant: GrantTerms) -> tuple[int, bool, datetime, datetime, str]:
    return (grant.priority, grant.expires_at is None, grant.expires_at or _EARLIEST, grant.created_at, grant.id)


def _life_end(grant: GrantTerms) -> datetime | None:
    """The instant a grant stops counting: its expiry or its void, whichever is first."""
    if grant.expires_at is None:
        return grant.voided_at
    if grant.voided_at is None:
        return grant.expires_at
    return min(grant.expires_at, grant.voided_at)


def _live_at(grant: GrantTerms, t: datetime) -> bool:
    end = _life_end(grant)
    return grant.effective_at <= t and (end is None or t < end)


def _spans(grant: GrantTerms, r: datetime) -> bool:
    """Live before ``r`` and still live at ``r``: the grants a reset at ``r`` rolls over
    (one effective at ``r`` itself starts fresh with its amount)."""
    end = _life_end(grant)
    return grant.effective_at < r and (end is None or r < end)


def _clamp(value: Decimal, low: Decimal, high: Decimal) -> Decimal:
    return max(low, min(value, high))


# ---------------------------------------------------------------------------------------
# The plan: which stretches of time burn, and which readings they need
# ---------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Piece:
    """A stretch [start, end) of a period in which the same grants are live. It burns
    ``usage[reading] - usage[previous piece's reading]`` (the first piece: from 0)."""

    start: datetime
    end: datetime
    reading: Window


@dataclass(frozen=True, slots=True)
class _PeriodPlan:
    start: datetime  # max(grid boundary, active_from)
    end: datetime | None  # the period's end as shown (grid boundary, capped by active_until); None: one-time
    reset: bool  # a reset happens at ``start`` (every period but the entitlement's first)
    fresh: bool  # the evaluation starts here, at a reset whose outcome does not depend on the past
    pieces: tuple[_Piece, ...]


@dataclass(frozen=True, slots=True)
class _Plan:
    periods: tuple[_PeriodPlan, ...]  # in time order; empty before active_from
    evaluated_at: datetime  # ``at``, or active_until once the entitlement is over
    counted_from: datetime  # burned/uncovered count from here
    valid_until: datetime | None


def _grid(terms: MeteredTerms) -> Duration | None:
    return None if terms.usage_period is None else _cadence(terms.usage_period)


@functools.lru_cache(maxsize=64)
def _cadence(text: str) -> Duration | None:
    """The usage period's grid (parsed once per distinct text: this is the check path)."""
    duration = parse_duration(text, "template.usagePeriod.interval")
    return None if duration.is_zero else duration


def _memoryless(terms: MeteredTerms, grants: Sequence[GrantTerms], r: datetime) -> bool:
    """Whether the state right after a reset at ``r`` is the same whatever happened
    before: no debt carried, and every grant rolled over carries a fixed amount
    (min == max rollover, e.g. the template's default 0/0)."""
    if terms.preserve_overage_at_reset:
        return False
    return all(g.reset_min_rollover == g.reset_max_rollover for g in grants if _spans(g, r))


def _plan(
    terms: MeteredTerms,
    active_from: datetime,
    active_until: datetime | None,
    grants: Sequence[GrantTerms],
    at: datetime,
    *,
    open_ended: bool,
    restart_before: datetime | None = None,
) -> _Plan:
    """Cut ``[active_from, at)`` into periods and pieces. The evaluation starts at the
    latest reset whose outcome does not depend on the past (no later than
    ``restart_before`` when given), so a long-lived entitlement costs the periods since
    then, not its whole history."""
    ended = active_until is not None and at >= active_until
    until = active_until if ended and active_until is not None else at  # counting stops here
    grid = _grid(terms)
    instants = sorted({t for g in grants for t in (g.effective_at, g.expires_at, g.voided_at) if t is not None})

    periods: list[_PeriodPlan] = []
    counted_from = active_from
    next_boundary: datetime | None = None
    if active_from <= at and (not ended or active_from < until):
        bounds: list[tuple[datetime, datetime, datetime | None, bool]] = []  # start, counted end, shown end, reset
        if grid is None:
            bounds.append((active_from, until, None, False))
        else:
            first = index_at(terms.anchor, grid, active_from)
            last = index_at(terms.anchor, grid, until)
            if ended and last > first and boundary(terms.anchor, grid, last) == until:
                last -= 1  # active_until on a boundary: the period it opens counts nothing
            start_k = first
            for k in range(last, first, -1):
                r = boundary(terms.anchor, grid, k)
                if (restart_before is None or r <= restart_before) and _memoryless(terms, grants, r):
                    start_k = k
                    break
            if last - start_k + 1 > MAX_PERIODS:
                raise InvalidArgument(
                    "at",
                    f"this balance depends on {last - start_k + 1} usage periods (more than {MAX_PERIODS}): "
                    "its grants roll over or its overage carries, period after period, since "
                    f"{boundary(terms.anchor, grid, start_k).isoformat()}",
                    reason="TOO_MANY_PERIODS",
                )
            lower = boundary(terms.anchor, grid, start_k)
            for k in range(start_k, last + 1):
                upper = boundary(terms.anchor, grid, k + 1)
                bounds.append(
                    (max(lower, active_from), min(upper, until), upper if active_until is None else min(upper, active_until), k > first)
                )
                lower = upper
            next_boundary = lower  # the end of the last period
            counted_from = bounds[0][0]
        fresh_start = bounds[0][3]
        for i, (start, end, period_end, reset) in enumerate(bounds):
            cuts = instants[bisect_right(instants, start) : bisect_left(instants, end)]
            points = [start, *cuts, end] if start < end else [start]
            pieces = [_Piece(a, b, Window(start, b)) for a, b in itertools.pairwise(points)]
            periods.append(_PeriodPlan(start, period_end, reset, fresh_start and i == 0, tuple(pieces)))

    valid_until: datetime | None = None
    if not ended:
        i = bisect_right(instants, at)
        later = instants[i : i + 1]  # the next grant instant
        if at < active_from:
            later.append(active_from)
        elif next_boundary is not None:
            later.append(next_boundary)
        if active_until is not None:
            later.append(active_until)
        valid_until = min(later) if later else None
        if open_ended and periods:
            # usage stamped ahead of now (a client's clock, a test clock's "now" at
            # activation) counts at once: the last reading runs to the next change
            last_period = periods[-1]
            open_end = valid_until or FAR_FUTURE
            if last_period.pieces:
                tail = last_period.pieces[-1]
                open_pieces = (*last_period.pieces[:-1], _Piece(tail.start, tail.end, Window(tail.reading.start, open_end)))
            else:  # evaluated at the very instant the period starts
                open_pieces = (_Piece(last_period.start, last_period.start, Window(last_period.start, open_end)),)
            periods[-1] = _PeriodPlan(last_period.start, last_period.end, last_period.reset, last_period.fresh, open_pieces)
    return _Plan(tuple(periods), until, counted_from, valid_until)


# ---------------------------------------------------------------------------------------
# The run: burning the pieces in order
# ---------------------------------------------------------------------------------------


def _run(
    plan: _Plan,
    terms: MeteredTerms,
    grants: Sequence[GrantTerms],
    at: datetime,
    active_from: datetime,
    active_until: datetime | None,
    usage: Mapping[Window, Decimal],
) -> Evaluation:
    order = burn_order(grants)
    remaining: dict[str, Decimal] = {}  # grants seen so far; a grant not in it has its whole amount
    burned: dict[str, Decimal] = {}
    uncovered = _ZERO  # usage no grant covered when it happened, since counted_from
    debt = _ZERO  # carried overage not covered at the reset (this period)
    overage = _ZERO  # this period's usage no grant covered
    usage_in_period = _ZERO
    with localcontext(exact_context()):
        for period in plan.periods:
            r = period.start
            if period.fresh:
                for g in order:
                    if _spans(g, r):
                        remaining[g.id] = g.reset_min_rollover + (g.amount if g.recurring else _ZERO)
            elif period.reset:
                carried = debt + overage
                for g in order:
                    if _spans(g, r):
                        kept = _clamp(remaining.get(g.id, g.amount), g.reset_min_rollover, g.reset_max_rollover)
                        remaining[g.id] = kept + g.amount if g.recurring else kept
                debt = _ZERO
                if terms.preserve_overage_at_reset and carried > 0:
                    # the debt burns the grants live at r, in burn order, but is not usage:
                    # nothing is added to ``burned`` and nothing to ``uncovered`` (billed when it happened)
                    debt = _burn(carried, [g for g in order if _live_at(g, r)], remaining, None, None)
            overage = _ZERO
            in_period: dict[str, Decimal] = {}  # what each grant covered of this period's usage
            counted = _ZERO  # the period's cumulative usage so far
            for piece in period.pieces:
                value = max(_ZERO, usage[piece.reading])
                delta, counted = value - counted, value
                if delta > 0:
                    live = [g for g in order if _live_at(g, piece.start)]
                    left = _burn(delta, live, remaining, burned, in_period)
                    overage += left
                    uncovered += left
                elif delta < 0:
                    # a non-monotone aggregate (LATEST, MIN, AVG...) went down: give the units
                    # back, the overage first, then the grants that covered this period, the
                    # last in burn order first
                    back = min(-delta, overage)
                    overage -= back
                    uncovered -= back
                    _give_back(-delta - back, order, remaining, burned, in_period)
            usage_in_period = counted

    current = plan.periods[-1] if plan.periods else None
    live_now = [g for g in order if _live_at(g, plan.evaluated_at)]
    left_now = {g.id: remaining.get(g.id, g.amount) for g in live_now}
    return Evaluation(
        at=at,
        active=active_from <= at and (active_until is None or at < active_until),
        period_start=current.start if current is not None else None,
        period_end=current.end if current is not None else None,
        balance=sum(left_now.values(), _ZERO),
        usage_in_period=usage_in_period,
        overage=debt + overage,
        remaining=left_now,
        burned={k: v for k, v in burned.items() if v != 0},
        uncovered=uncovered,
        valid_until=plan.valid_until,
        counted_from=plan.counted_from if plan.periods else None,
    )


def _burn(
    units: Decimal,
    live: Sequence[GrantTerms],
    remaining: dict[str, Decimal],
    burned: dict[str, Decimal] | None,
    in_period: dict[str, Decimal] | None,
) -> Decimal:
    """Burn ``units`` over ``live`` (in burn order); what they cannot cover is returned."""
    for g in live:
        if units <= 0:
            break
        left = remaining.get(g.id, g.amount)
        if left <= 0:
            continue
        take = min(left, units)
        remaining[g.id] = left - take
        units -= take
        if burned is not None and in_period is not None:
            burned[g.id] = burned.get(g.id, _ZERO) + take
            in_period[g.id] = in_period.get(g.id, _ZERO) + take
    return units


def _give_back(
    units: Decimal,
    order: Sequence[GrantTerms],
    remaining: dict[str, Decimal],
    burned: dict[str, Decimal],
    in_period: dict[str, Decimal],
) -> None:
    for g in reversed(order):
        if units <= 0:
            return
        took = in_period.get(g.id, _ZERO)
        if took <= 0:
            continue
        back = min(took, units)
        in_period[g.id] = took - back
        burned[g.id] -= back
        remaining[g.id] = remaining.get(g.id, g.amount) + back
        units -= back


# ---------------------------------------------------------------------------------------
# Coverage (invoice lines)
# ---------------------------------------------------------------------------------------


def coverage_windows(
    terms: MeteredTerms,
    active_from: datetime,
    active_until: datetime | None,
    grants: Sequence[GrantTerms],
    start: datetime,
    end: datetime,
) -> list[Window]:
    """The readings ``coverage`` needs for the window [start, end): the evaluations at
    both ends and the window's own usage ``Window(start, end)`` (none when it is empty:
    its usage is 0)."""
    if end < start:
        raise ValueError(f"a coverage window must not end before it starts: [{start.isoformat()}, {end.isoformat()})")
    windows: set[Window] = set()
    for t in (start, end):
        plan = _plan(terms, active_from, active_until, grants, t, open_ended=False, restart_before=start)
        windows.update(piece.reading for period in plan.periods for piece in period.pieces)
    if start < end:
        windows.add(Window(start, end))
    return sorted(windows)


def coverage(
    terms: MeteredTerms,
    active_from: datetime,
    active_until: datetime | None,
    grants: Sequence[GrantTerms],
    start: datetime,
    end: datetime,
    usage: Mapping[Window, Decimal],
) -> Covered:
    """How much of the usage in [start, end) the grants covered: the burns between the
    evaluations at ``start`` and ``end`` (carried debt excluded). ``usage - covered`` is
    what a soft limit bills; it equals the growth of ``uncovered`` plus the usage outside
    [active_from, active_until).

    Both evaluations start from the same instant (the latest reset at or before ``start``
    whose outcome does not depend on the past), so their difference is exact. For an
    aggregation that does not add up over time (MAX over several usage periods, LATEST)
    the burns may exceed the window's own reading: ``covered`` is capped at the reading
    (and at 0 from below), the last grants in burn order giving up the excess."""
    if end < start:
        raise ValueError(f"a coverage window must not end before it starts: [{start.isoformat()}, {end.isoformat()})")
    before_plan = _plan(terms, active_from, active_until, grants, start, open_ended=False, restart_before=start)
    after_plan = _plan(terms, active_from, active_until, grants, end, open_ended=False, restart_before=start)
    if before_plan.counted_from != after_plan.counted_from:  # pragma: no cover - both plans pick the same reset
        raise AssertionError("coverage evaluations must count from the same instant")
    before = _run(before_plan, terms, grants, start, active_from, active_until, usage)
    after = _run(after_plan, terms, grants, end, active_from, active_until, usage)
    whole = usage[Window(start, end)] if start < end else _ZERO
    with localcontext(exact_context()):
        diffs = [(g.id, after.burned.get(g.id, _ZERO) - before.burned.get(g.id, _ZERO)) for g in burn_order(grants)]
        budget = max(_ZERO, min(sum((d for _, d in diffs), _ZERO), whole))
        covered = budget
        shares: list[tuple[str, Decimal]] = []
        for grant_id, units in diffs:
            if budget <= 0:
                break
            if units > 0:
                share = min(units, budget)
                shares.append((grant_id, share))
                budget -= share
    return Covered(usage=whole, covered=covered, grants=tuple(shares))
