"""Metered balances (services/entitlement/domain/balance.py): scenarios with exact numbers.

Each scenario reads usage the way the service does: ``usage_windows`` says which
cumulative readings it needs, a fake meter answers them, ``evaluate`` computes.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest

from libs.core.errors import InvalidArgument
from services.entitlement.domain.balance import (
    FAR_FUTURE,
    MAX_PERIODS,
    UNLIMITED,
    Covered,
    Evaluation,
    GrantTerms,
    MeteredTerms,
    Window,
    burn_order,
    coverage,
    coverage_windows,
    evaluate,
    usage_windows,
)
from services.entitlement.tests.unit.meter import Meter, at, grant, reset_grant, terms

D = Decimal


def check(
    t: MeteredTerms,
    active_from: datetime,
    active_until: datetime | None,
    grants: Sequence[GrantTerms],
    when: datetime,
    meter: Meter,
    *,
    open_ended: bool = False,
) -> Evaluation:
    windows = usage_windows(t, active_from, active_until, grants, when, open_ended=open_ended)
    assert windows == sorted(set(windows)), "sorted, no duplicates"
    return evaluate(t, active_from, active_until, grants, when, meter.read(windows), open_ended=open_ended)


def covered(
    t: MeteredTerms,
    active_from: datetime,
    active_until: datetime | None,
    grants: Sequence[GrantTerms],
    start: datetime,
    end: datetime,
    meter: Meter,
) -> Covered:
    windows = coverage_windows(t, active_from, active_until, grants, start, end)
    return coverage(t, active_from, active_until, grants, start, end, meter.read(windows))


# --- burn order ----------------------------------------------------------------------------


def test_burn_order_is_priority_then_earliest_expiry_then_creation_then_id() -> None:
    grants = [
        grant("never_p0", 1, effective_at=at(1, 1), priority=0),
        grant("late_p0", 1, effective_at=at(1, 1), expires_at=at(6, 1), priority=0),
        grant("early_p0_b", 1, effective_at=at(1, 1), expires_at=at(3, 1), priority=0, created_at=at(1, 2)),
        grant("early_p0_a2", 1, effective_at=at(1, 1), expires_at=at(3, 1), priority=0, created_at=at(1, 2)),
        grant("early_p0_old", 1, effective_at=at(1, 1), expires_at=at(3, 1), priority=0, created_at=at(1, 1)),
        grant("neg", 1, effective_at=at(1, 1), priority=-5),
        grant("p1_soon", 1, effective_at=at(1, 1), expires_at=at(1, 2), priority=1),
    ]
    assert [g.id for g in burn_order(grants)] == ["neg", "early_p0_old", "early_p0_a2", "early_p0_b", "late_p0", "never_p0", "p1_soon"]


def test_three_grants_burn_by_priority_then_expiry() -> None:
    t = terms(None)
    grants = [
        grant("a_p1", 100, effective_at=at(1, 1), priority=1),
        grant("b_p0_mar", 50, effective_at=at(1, 1), expires_at=at(3, 1)),
        grant("c_p0_feb", 30, effective_at=at(1, 1), expires_at=at(2, 1)),
    ]
    meter = Meter().add(at(1, 10), 60)
    first = check(t, at(1, 1), None, grants, at(1, 20), meter)
    assert first.remaining == {"a_p1": D(100), "b_p0_mar": D(20), "c_p0_feb": D(0)}
    assert first.burned == {"c_p0_feb": D(30), "b_p0_mar": D(30)}
    assert (first.balance, first.usage_in_period, first.overage, first.uncovered) == (D(120), D(60), D(0), D(0))

    meter.add(at(1, 25), 40)
    second = check(t, at(1, 1), None, grants, at(1, 26), meter)
    assert second.remaining == {"a_p1": D(80), "b_p0_mar": D(0), "c_p0_feb": D(0)}
    assert second.burned == {"c_p0_feb": D(30), "b_p0_mar": D(50), "a_p1": D(20)}
    assert second.balance == D(80)

    # c expires on Feb 1 with nothing left, b on Mar 1: more usage then falls to a alone
    meter.add(at(3, 5), "0.00000001")
    third = check(t, at(1, 1), None, grants, at(3, 6), meter)
    assert third.remaining == {"a_p1": D("79.99999999")}
    assert third.balance == D("79.99999999")
    assert third.usage_in_period == D("100.00000001")


# --- grant lifetimes inside a period -----------------------------------------------------------


def test_grant_effective_mid_period_does_not_burn_earlier_usage() -> None:
    t = terms("P1M", soft=True)
    grants = [grant("g", 100, effective_at=at(1, 15))]
    meter = Meter().add(at(1, 5), 40).add(at(1, 20), 25)
    result = check(t, at(1, 1), None, grants, at(1, 31), meter)
    assert meter.asked == [Window(at(1, 1), at(1, 15)), Window(at(1, 1), at(1, 31))]
    assert result.remaining == {"g": D(75)}
    assert result.burned == {"g": D(25)}
    assert (result.balance, result.usage_in_period, result.overage, result.uncovered) == (D(75), D(65), D(40), D(40))
    assert (result.period_start, result.period_end) == (at(1, 1), at(2, 1))

    before = check(t, at(1, 1), None, grants, at(1, 10), Meter().add(at(1, 5), 40))
    assert (before.balance, before.overage, before.remaining, before.valid_until) == (D(0), D(40), {}, at(1, 15))


def test_expired_grant_stops_counting_at_its_expiry_with_its_leftover() -> None:
    t = terms("P1M")
    grants = [grant("short", 100, effective_at=at(1, 1), expires_at=at(1, 15)), grant("long", 100, effective_at=at(1, 1), priority=1)]
    meter = Meter().add(at(1, 5), 30).add(at(1, 20), 50)
    just_before = check(t, at(1, 1), None, grants, datetime(2026, 1, 14, 23, 59, 59, tzinfo=at(1, 1).tzinfo), meter)
    assert (just_before.balance, just_before.valid_until) == (D(170), at(1, 15))
    at_expiry = check(t, at(1, 1), None, grants, at(1, 15), meter)
    assert (at_expiry.balance, at_expiry.remaining) == (D(100), {"long": D(100)})
    after = check(t, at(1, 1), None, grants, at(1, 25), meter)
    assert after.remaining == {"long": D(50)}
    assert after.burned == {"short": D(30), "long": D(50)}
    assert (after.balance, after.usage_in_period, after.overage) == (D(50), D(80), D(0))


def test_voided_grant_stops_counting_at_its_void() -> None:
    t = terms("P1M")
    grants = [
        grant("voided", 100, effective_at=at(1, 1), voided_at=at(1, 10)),
        grant("other", 20, effective_at=at(1, 1), priority=1),
    ]
    meter = Meter().add(at(1, 5), 30).add(at(1, 12), 50)
    result = check(t, at(1, 1), None, grants, at(1, 20), meter)
    assert result.remaining == {"other": D(0)}
    assert result.burned == {"voided": D(30), "other": D(20)}
    assert (result.balance, result.overage, result.uncovered) == (D(0), D(30), D(30))
    # an expiry later than the void changes nothing: the first of them ends the grant
    late_expiry = [grant("voided", 100, effective_at=at(1, 1), voided_at=at(1, 10), expires_at=at(1, 28)), grants[1]]
    assert check(t, at(1, 1), None, late_expiry, at(1, 20), meter).burned == result.burned


# --- resets and rollover -----------------------------------------------------------------------------


def test_reset_grant_refills_with_its_leftover_clamped_by_min_and_max() -> None:
    t = terms("P1M")
    grants = [reset_grant(100, at(1, 1), min_rollover=10, max_rollover=30)]
    meter = Meter().add(at(1, 10), 95)
    assert check(t, at(1, 1), None, grants, at(1, 31), meter).balance == D(5)
    feb = check(t, at(1, 1), None, grants, at(2, 1), meter)  # 5 left, floored to 10
    assert (feb.balance, feb.usage_in_period, feb.period_start, feb.period_end) == (D(110), D(0), at(2, 1), at(3, 1))
    meter.add(at(2, 10), 50)
    assert check(t, at(1, 1), None, grants, at(2, 15), meter).balance == D(60)
    mar = check(t, at(1, 1), None, grants, at(3, 1), meter)  # 60 left, capped at 30
    assert mar.balance == D(130)
    assert mar.burned == {"grant_reset": D(145)}


def test_reset_grant_defaults_refill_exactly_to_its_amount() -> None:
    t = terms("P1M")
    grants = [reset_grant(100, at(1, 1))]  # template defaults: min 0, max 0
    meter = Meter().add(at(1, 10), 40).add(at(2, 3), 130)
    feb = check(t, at(1, 1), None, grants, at(2, 1), meter)
    assert feb.balance == D(100)
    later = check(t, at(1, 1), None, grants, at(2, 5), meter)
    assert (later.balance, later.overage, later.usage_in_period) == (D(0), D(30), D(130))


def test_non_recurring_grant_rolls_over_whole_by_default_and_drops_with_max_zero() -> None:
    t = terms("P1M")
    meter = Meter().add(at(1, 10), 150)
    kept = [reset_grant(100, at(1, 1)), grant("bonus", 500, effective_at=at(1, 1), priority=1)]
    feb = check(t, at(1, 1), None, kept, at(2, 1), meter)
    assert feb.remaining == {"grant_reset": D(100), "bonus": D(450)}
    assert feb.balance == D(550)

    dropped = [reset_grant(100, at(1, 1)), grant("bonus", 500, effective_at=at(1, 1), priority=1, max_rollover=0)]
    feb = check(t, at(1, 1), None, dropped, at(2, 1), meter)
    assert feb.remaining == {"grant_reset": D(100), "bonus": D(0)}
    assert feb.balance == D(100)

    floored = [grant("bonus", 500, effective_at=at(1, 1), min_rollover=600, max_rollover=700)]
    assert check(t, at(1, 1), None, floored, at(2, 1), meter).balance == D(600)


def test_grant_effective_at_a_reset_starts_with_its_whole_amount() -> None:
    t = terms("P1M")
    grants = [grant("feb", 80, effective_at=at(2, 1), max_rollover=0)]
    assert check(t, at(1, 1), None, grants, at(2, 1), Meter()).remaining == {"feb": D(80)}


def test_preserved_overage_is_a_debt_that_burns_the_new_period_and_is_never_billed_twice() -> None:
    t = terms("P1M", preserve=True)
    grants = [reset_grant(100, at(1, 1))]
    meter = Meter().add(at(1, 10), 130)
    jan = check(t, at(1, 1), None, grants, at(1, 31), meter)
    assert (jan.balance, jan.overage, jan.uncovered) == (D(0), D(30), D(30))

    feb = check(t, at(1, 1), None, grants, at(2, 1), meter)
    assert (feb.balance, feb.overage, feb.usage_in_period, feb.uncovered) == (D(70), D(0), D(0), D(30))
    assert feb.burned == {"grant_reset": D(100)}  # the debt is not usage

    meter.add(at(2, 10), 90)
    feb20 = check(t, at(1, 1), None, grants, at(2, 20), meter)
    assert (feb20.balance, feb20.overage, feb20.usage_in_period, feb20.uncovered) == (D(0), D(20), D(90), D(50))
    assert feb20.burned == {"grant_reset": D(170)}

    # invoices: each period bills what was uncovered when it happened, nothing more
    jan_line = covered(t, at(1, 1), None, grants, at(1, 1), at(2, 1), meter)
    feb_line = covered(t, at(1, 1), None, grants, at(2, 1), at(3, 1), meter)
    assert (jan_line.usage, jan_line.covered, tuple(jan_line.grants)) == (D(130), D(100), (("grant_reset", D(100)),))
    assert (feb_line.usage, feb_line.covered, tuple(feb_line.grants)) == (D(90), D(70), (("grant_reset", D(70)),))
    billed = (jan_line.usage - jan_line.covered) + (feb_line.usage - feb_line.covered)
    assert billed == D(50) == check(t, at(1, 1), None, grants, at(3, 1), meter).uncovered


def test_a_debt_larger_than_the_new_grants_stays_overage_and_carries_again() -> None:
    t = terms("P1M", preserve=True)
    grants = [reset_grant(100, at(1, 1))]
    meter = Meter().add(at(1, 10), 250)
    feb = check(t, at(1, 1), None, grants, at(2, 1), meter)
    assert (feb.balance, feb.overage, feb.uncovered, feb.usage_in_period) == (D(0), D(50), D(150), D(0))
    mar = check(t, at(1, 1), None, grants, at(3, 1), meter)
    assert (mar.balance, mar.overage, mar.uncovered) == (D(50), D(0), D(150))


def test_without_preserve_the_overage_is_forgotten_at_the_reset() -> None:
    t = terms("P1M", preserve=False)
    grants = [reset_grant(100, at(1, 1))]
    meter = Meter().add(at(1, 10), 250)
    feb = check(t, at(1, 1), None, grants, at(2, 1), meter)
    assert (feb.balance, feb.overage, feb.uncovered) == (D(100), D(0), D(0))  # counted from Feb 1: see counted_from
    assert feb.counted_from == at(2, 1)


# --- one-time allowances, instants, open-ended evaluations ----------------------------------------


def test_one_time_allowance_never_refills() -> None:
    t = terms(None)
    grants = [reset_grant(100, at(1, 1))]  # recurring or not: without a usage period there is no reset
    meter = Meter().add(at(1, 10), 60).add(at(3, 10), 60)
    result = check(t, at(1, 1), None, grants, at(6, 1), meter)
    assert meter.asked == [Window(at(1, 1), at(6, 1))]
    assert (result.balance, result.usage_in_period, result.overage, result.uncovered) == (D(0), D(120), D(20), D(20))
    assert (result.period_start, result.period_end, result.valid_until) == (at(1, 1), None, None)
    year_later = check(t, at(1, 1), None, grants, at(1, 1, year=2027), meter)
    assert year_later.balance == D(0)


def test_an_instant_in_the_past_ignores_later_usage() -> None:
    t = terms("P1M")
    grants = [reset_grant(100, at(1, 1))]
    meter = Meter().add(at(1, 5), 30).add(at(1, 20), 50)
    past = check(t, at(1, 1), None, grants, at(1, 10), meter)
    assert meter.asked == [Window(at(1, 1), at(1, 10))]
    assert (past.balance, past.usage_in_period, past.valid_until) == (D(70), D(30), at(2, 1))


def test_open_ended_evaluation_reads_until_the_next_change_and_agrees_with_the_closed_one() -> None:
    t = terms("P1M")
    grants = [reset_grant(100, at(1, 1)), grant("promo", 50, effective_at=at(1, 1), expires_at=at(2, 20), priority=1)]
    meter = Meter().add(at(1, 5), 120).add(at(2, 3), 110)
    windows = usage_windows(t, at(1, 1), None, grants, at(2, 10), open_ended=True)
    # January is closed; February's reading runs to the promo's expiry, the next change
    assert windows == [Window(at(1, 1), at(2, 1)), Window(at(2, 1), at(2, 20))]
    open_ = evaluate(t, at(1, 1), None, grants, at(2, 10), meter.read(windows), open_ended=True)
    closed = check(t, at(1, 1), None, grants, at(2, 10), meter)
    assert open_ == closed
    assert (open_.balance, open_.valid_until) == (D(20), at(2, 20))

    after_promo = usage_windows(t, at(1, 1), None, grants, at(2, 25), open_ended=True)
    assert after_promo[-1] == Window(at(2, 1), at(3, 1))  # then the period end

    one_time = usage_windows(terms(None), at(1, 1), None, [grant("g", 10, effective_at=at(1, 1))], at(2, 10), open_ended=True)
    assert one_time == [Window(at(1, 1), FAR_FUTURE)]
    ending = usage_windows(terms(None), at(1, 1), at(4, 1), [grant("g", 10, effective_at=at(1, 1))], at(2, 10), open_ended=True)
    assert ending == [Window(at(1, 1), at(4, 1))]


def test_an_open_ended_evaluation_at_the_instant_of_activation_counts_usage_stamped_just_after() -> None:
    # the quickstart: a subscription activated at its test clock's "now", an event stamped
    # 5 minutes later (ahead of the clock), the balance read without moving the clock
    t = terms("P1M", at(1, 1))
    grants = [reset_grant(100000, at(1, 1))]
    meter = Meter().add(datetime(2026, 1, 1, 0, 5, tzinfo=UTC), 1500)
    windows = usage_windows(t, at(1, 1), None, grants, at(1, 1), open_ended=True)
    assert windows == [Window(at(1, 1), at(2, 1))]
    now = evaluate(t, at(1, 1), None, grants, at(1, 1), meter.read(windows), open_ended=True)
    assert (now.balance, now.usage_in_period, now.period_start, now.period_end) == (D(98500), D(1500), at(1, 1), at(2, 1))
    # a closed evaluation of that instant counts nothing yet: the event is after it
    assert check(t, at(1, 1), None, grants, at(1, 1), meter).balance == D(100000)
    # and at a period boundary the new period's reading is opened the same way
    later = usage_windows(t, at(1, 1), None, grants, at(2, 1), open_ended=True)
    assert later[-1] == Window(at(2, 1), at(3, 1))


def test_valid_until_is_the_next_instant_the_answer_changes_without_usage() -> None:
    t = terms("P1M")
    grants = [grant("later", 10, effective_at=at(1, 20)), grant("voids", 10, effective_at=at(1, 1), voided_at=at(1, 25))]
    assert check(t, at(1, 1), None, grants, at(1, 5), Meter()).valid_until == at(1, 20)
    assert check(t, at(1, 1), None, grants, at(1, 20), Meter()).valid_until == at(1, 25)
    assert check(t, at(1, 1), None, grants, at(1, 26), Meter()).valid_until == at(2, 1)
    assert check(t, at(1, 1), at(1, 28), grants, at(1, 26), Meter()).valid_until == at(1, 28)
    assert check(t, at(1, 1), at(1, 28), grants, at(1, 28), Meter()).valid_until is None


def test_a_missing_reading_is_a_caller_bug() -> None:
    t = terms("P1M")
    with pytest.raises(KeyError):
        evaluate(t, at(1, 1), None, [reset_grant(100, at(1, 1))], at(1, 10), {})


# --- the grid --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("year", "when", "start", "end"),
    [
        (2026, (2, 10), (1, 31), (2, 28)),
        (2026, (2, 28), (2, 28), (3, 31)),
        (2026, (4, 15), (3, 31), (4, 30)),
        (2026, (5, 30), (4, 30), (5, 31)),
        (2028, (2, 10), (1, 31), (2, 29)),
        (2028, (3, 1), (2, 29), (3, 31)),
    ],
)
def test_month_end_anchor_clamps_without_sticking(year: int, when: tuple[int, int], start: tuple[int, int], end: tuple[int, int]) -> None:
    anchor = at(1, 31, year=year)
    t = terms("P1M", anchor)
    result = check(t, anchor, None, [reset_grant(100, anchor)], at(*when, year=year), Meter())
    assert (result.period_start, result.period_end) == (at(*start, year=year), at(*end, year=year))
    assert result.balance == D(100)


def test_anchor_after_active_from_extends_the_grid_backwards() -> None:
    t = terms("P1M", at(3, 15))
    grants = [reset_grant(100, at(1, 20))]
    meter = Meter().add(at(1, 25), 70).add(at(2, 16), 20)
    first = check(t, at(1, 20), None, grants, at(2, 1), meter)
    assert (first.period_start, first.period_end, first.balance) == (at(1, 20), at(2, 15), D(30))  # counted from active_from
    second = check(t, at(1, 20), None, grants, at(2, 20), meter)
    assert (second.period_start, second.period_end, second.balance) == (at(2, 15), at(3, 15), D(80))


def test_entitlement_ending_on_a_boundary_counts_nothing_after_it() -> None:
    t = terms("P1M")
    grants = [reset_grant(100, at(1, 1))]
    meter = Meter().add(at(1, 10), 40).add(at(2, 5), 500)
    over = check(t, at(1, 1), at(2, 1), grants, at(3, 15), meter)
    assert meter.asked == [Window(at(1, 1), at(2, 1))]
    assert (over.active, over.period_start, over.period_end, over.balance, over.usage_in_period) == (
        False,
        at(1, 1),
        at(2, 1),
        D(60),
        D(40),
    )
    assert over.valid_until is None


def test_before_active_from_nothing_burns() -> None:
    t = terms("P1M")
    grants = [grant("early", 25, effective_at=at(1, 1)), reset_grant(100, at(2, 1))]
    meter = Meter().add(at(1, 10), 40)
    result = check(t, at(2, 1), None, grants, at(1, 20), meter)
    assert meter.asked == []
    assert (result.active, result.period_start, result.period_end) == (False, None, None)
    assert (result.balance, result.usage_in_period, result.overage, result.burned, result.uncovered) == (D(25), D(0), D(0), {}, D(0))
    assert result.valid_until == at(2, 1)
    started = check(t, at(2, 1), None, grants, at(2, 1), meter)
    assert (started.active, started.balance, started.period_start) == (True, D(125), at(2, 1))


def test_a_long_history_is_read_from_the_last_reset_that_forgets_it() -> None:
    t = terms("P1D")
    grants = [reset_grant(10, at(1, 1))]
    meter = Meter().add(at(4, 10, 5), 3)
    result = check(t, at(1, 1), None, grants, at(4, 10, 12), meter)
    assert meter.asked == [Window(at(4, 10), at(4, 10, 12))]
    assert (result.balance, result.counted_from, result.burned) == (D(7), at(4, 10), {"grant_reset": D(3)})

    # a grant that carries its leftover over the resets makes the past matter again
    carried = [*grants, grant("bonus", 50, effective_at=at(4, 8, 6), priority=1)]
    meter = Meter().add(at(4, 8, 8), 30).add(at(4, 10, 5), 3)
    result = check(t, at(1, 1), None, carried, at(4, 10, 12), meter)
    assert meter.asked[0] == Window(at(4, 8), at(4, 8, 6))
    assert result.counted_from == at(4, 8)
    assert result.remaining == {"grant_reset": D(7), "bonus": D(30)}


# --- aggregations that do not add up --------------------------------------------------------------


def test_max_aggregation_burns_the_growth_of_the_period_maximum() -> None:
    t = terms("P1M")
    grants = [grant("a", 100, effective_at=at(1, 1), expires_at=at(1, 15)), grant("b", 100, effective_at=at(1, 1), priority=1)]
    meter = Meter("MAX").add(at(1, 5), 30).add(at(1, 10), 12).add(at(1, 20), 50)
    result = check(t, at(1, 1), None, grants, at(1, 25), meter)
    assert result.burned == {"a": D(30), "b": D(20)}
    assert (result.balance, result.usage_in_period) == (D(80), D(50))


def test_latest_aggregation_going_down_gives_units_back() -> None:
    t = terms("P1M")
    grants = [grant("a", 100, effective_at=at(1, 1)), grant("b", 5, effective_at=at(1, 10), priority=-1)]
    meter = Meter("LATEST").add(at(1, 5), 40).add(at(1, 12), 10).add(at(1, 22), 30)
    # pieces: [Jan 1, Jan 10) reads 40 -> a; [Jan 10, Jan 31) reads 30 (the latest) -> -10
    result = check(t, at(1, 1), None, grants, at(1, 31), meter)
    assert result.burned == {"a": D(30)}
    assert result.remaining == {"a": D(70), "b": D(5)}
    assert result.usage_in_period == D(30)


def test_giving_back_returns_overage_first() -> None:
    t = terms("P1M")
    grants = [grant("a", 10, effective_at=at(1, 1)), grant("cut", 1, effective_at=at(1, 10), expires_at=at(1, 11), priority=5)]
    meter = Meter("LATEST").add(at(1, 5), 40).add(at(1, 10, 12), 25).add(at(1, 20), 4)
    mid = check(t, at(1, 1), None, grants, at(1, 11), meter)
    assert (mid.overage, mid.uncovered, mid.burned) == (D(15), D(15), {"a": D(10)})
    end = check(t, at(1, 1), None, grants, at(1, 31), meter)
    assert (end.overage, end.uncovered, end.burned, end.balance) == (D(0), D(0), {"a": D(4)}, D(6))


# --- coverage ----------------------------------------------------------------------------------


def test_coverage_is_the_burns_between_its_ends_in_burn_order() -> None:
    t = terms("P1M")
    grants = [reset_grant(100, at(1, 1)), grant("promo", 20, effective_at=at(1, 1), priority=-1)]
    meter = Meter().add(at(1, 5), 20).add(at(1, 15), 80).add(at(1, 25), 50).add(at(2, 5), 30).add(at(2, 25), 40)
    af, au = at(1, 10), at(2, 20)
    whole = covered(t, af, au, grants, at(1, 1), at(3, 1), meter)
    # Jan: 130 inside the active range -> promo 20, reset 100, 10 uncovered; Feb: 30 -> reset
    assert (whole.usage, whole.covered) == (D(220), D(150))
    assert tuple(whole.grants) == (("promo", D(20)), ("grant_reset", D(130)))
    outside = D(20) + D(40)
    growth = check(t, af, au, grants, at(3, 1), meter).uncovered - check(t, af, au, grants, at(1, 1), meter).uncovered
    assert whole.usage == whole.covered + growth + outside

    mid = covered(t, af, au, grants, at(1, 20), at(2, 10), meter)
    assert (mid.usage, mid.covered, tuple(mid.grants)) == (D(80), D(70), (("grant_reset", D(70)),))


def test_coverage_of_an_empty_window_is_zero_and_reads_nothing_for_it() -> None:
    t = terms("P1M")
    grants = [reset_grant(100, at(1, 1))]
    windows = coverage_windows(t, at(1, 1), None, grants, at(1, 10), at(1, 10))
    assert Window(at(1, 10), at(1, 10)) not in windows
    assert covered(t, at(1, 1), None, grants, at(1, 10), at(1, 10), Meter().add(at(1, 5), 3)) == Covered(D(0), D(0), ())
    with pytest.raises(ValueError):
        coverage_windows(t, at(1, 1), None, grants, at(1, 10), at(1, 9))


def test_coverage_of_a_max_metric_never_exceeds_its_reading() -> None:
    t = terms("P1M")
    grants = [grant("a", 100, effective_at=at(1, 1)), grant("b", 100, effective_at=at(1, 1), priority=1)]
    meter = Meter("MAX").add(at(1, 10), 60).add(at(2, 10), 50)
    result = covered(t, at(1, 1), None, grants, at(1, 1), at(3, 1), meter)
    # January burns 60, February 50 (max per period), the window's own maximum is 60
    assert (result.usage, result.covered, tuple(result.grants)) == (D(60), D(60), (("a", D(60)),))


def test_coverage_counts_both_ends_from_the_same_reset() -> None:
    t = terms("P1D")
    grants = [reset_grant(10, at(1, 1))]
    meter = Meter().add(at(1, 1, 5), 4).add(at(1, 2, 5), 12).add(at(1, 3, 5), 6)
    result = covered(t, at(1, 1), None, grants, at(1, 1, 12), at(1, 3, 12), meter)
    assert (result.usage, result.covered, tuple(result.grants)) == (D(18), D(16), (("grant_reset", D(16)),))


def test_unlimited_is_the_default_rollover_of_a_grant() -> None:
    assert grant("g", 1, effective_at=at(1, 1)).reset_max_rollover == UNLIMITED
    assert GrantTerms("g", D(1), at(1, 1), None, None, 0, at(1, 1)).reset_max_rollover == UNLIMITED


def test_a_balance_that_depends_on_more_than_max_periods_is_refused_not_computed() -> None:
    # daily periods whose grants roll everything over: each reset depends on the one before
    t = terms("P1D", at(1, 1))
    grants = [grant("carry", 10, effective_at=at(1, 1))]
    ok = usage_windows(t, at(1, 1), None, grants, at(1, 1) + timedelta(days=MAX_PERIODS - 1, hours=12))
    assert len(ok) == MAX_PERIODS
    with pytest.raises(InvalidArgument) as refused:
        usage_windows(t, at(1, 1), None, grants, at(1, 1) + timedelta(days=MAX_PERIODS, hours=12))
    assert (refused.value.field, refused.value.reason) == ("at", "TOO_MANY_PERIODS")
