"""The billing timeline (pure): due work and what every invoice bills (DESIGN section 7)."""

from __future__ import annotations

import itertools
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from services.subscription.domain.timeline import (
    COLLECT_RECHECK,
    END_SEQUENCE,
    AfterCharge,
    Charge,
    Composition,
    Due,
    Kind,
    Schedule,
    Window,
    after_charge,
    collection,
)

GRACE = timedelta(hours=1)


def utc(year: int, month: int, day: int, hour: int = 0, minute: int = 0, second: int = 0) -> datetime:
    return datetime(year, month, day, hour, minute, second, tzinfo=UTC)


@dataclass
class Sub:
    """The attributes the timeline reads (services/subscription/domain/model.py has them)."""

    started_at: datetime
    billing_anchor: datetime | None = None
    billing_cadence: str = "P1M"
    billing_starts_at: datetime | None = None
    elapsed_period_billing: str | None = "none"
    ending_at: datetime | None = None
    terminated_at: datetime | None = None
    id: str = "sub_1"
    merchant_id: str = "org_m"
    customer_id: str = "cus_1"
    plan_id: str = "plan_1"
    plan_version_id: str = "plv_1"
    currency: str = "USD"
    status: str = "pending_payment"
    test_clock_id: str | None = None
    payment_term_days: int = 0
    tax_exempt: bool = False
    tax_behavior: str = "exclusive"
    default_tax_rate: str = "0"
    customer_tax_rates: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.billing_anchor is None:
            self.billing_anchor = self.started_at


def schedule(**kwargs: object) -> Schedule:
    return Schedule.of(Sub(**kwargs))  # type: ignore[arg-type]


def win(start: datetime, end: datetime, period_start: datetime, period_end: datetime, index: int) -> Window:
    return Window(start, end, period_start, period_end, index)


def whole(start: datetime, end: datetime, index: int) -> Window:
    return Window(start, end, start, end, index)


# --- a start without a plan anchor ------------------------------------------------------


def test_a_plain_monthly_start_lays_invoice_zero_and_the_first_renewal() -> None:
    s = schedule(started_at=utc(2026, 1, 31, 9))
    created = utc(2026, 1, 31, 9, 0, 5)
    assert s.initial(created, None) == [
        Due(Kind.OPEN, 0, created),
        Due(Kind.ISSUE, 0, created),
        Due(Kind.OPEN, 1, created),
        Due(Kind.CLOSE, 1, utc(2026, 2, 28, 9)),
    ]
    assert s.invoice_zero(created) == Composition(advance=(whole(utc(2026, 1, 31, 9), utc(2026, 2, 28, 9), 0),), one_time_fees=True)
    assert s.regular(1) == Composition(
        arrears=(whole(utc(2026, 1, 31, 9), utc(2026, 2, 28, 9), 0),),
        advance=(whole(utc(2026, 2, 28, 9), utc(2026, 3, 31, 9), 1),),
    )


def test_closing_invoice_k_lays_its_issue_and_the_next_invoice() -> None:
    s = schedule(started_at=utc(2026, 1, 31))
    assert s.after_close(1, utc(2026, 2, 28), GRACE) == [
        Due(Kind.ISSUE, 1, utc(2026, 2, 28, 1)),
        Due(Kind.OPEN, 2, utc(2026, 2, 28)),
        Due(Kind.CLOSE, 2, utc(2026, 3, 31)),
    ]
    assert s.after_close(3, utc(2026, 4, 30), timedelta(0))[0] == Due(Kind.ISSUE, 3, utc(2026, 4, 30))
    assert [s.boundary(k) for k in range(1, 5)] == [utc(2026, 2, 28), utc(2026, 3, 31), utc(2026, 4, 30), utc(2026, 5, 31)]


def test_a_leap_february_on_a_month_end_grid() -> None:
    s = schedule(started_at=utc(2028, 1, 31))
    assert s.regular(2).arrears == (whole(utc(2028, 2, 29), utc(2028, 3, 31), 1),)


def test_a_weekly_cadence() -> None:
    s = schedule(started_at=utc(2026, 3, 2, 8), billing_cadence="P1W")
    assert s.boundary(3) == utc(2026, 3, 23, 8)


def test_a_scheduled_end_is_laid_at_creation() -> None:
    s = schedule(started_at=utc(2026, 1, 1))
    due = s.initial(utc(2026, 1, 1), utc(2026, 2, 15))
    assert due[-1] == Due(Kind.END, END_SEQUENCE, utc(2026, 2, 15))


def test_a_future_start_bills_its_first_period_in_advance() -> None:
    s = schedule(started_at=utc(2026, 2, 1))
    created = utc(2026, 1, 20)
    assert s.first_regular(created) == 1
    assert s.invoice_zero(created).advance == (whole(utc(2026, 2, 1), utc(2026, 3, 1), 0),)
    assert s.initial(created, None)[2:] == [Due(Kind.OPEN, 1, created), Due(Kind.CLOSE, 1, utc(2026, 3, 1))]


def test_a_once_cadence_has_invoice_zero_only() -> None:
    s = schedule(started_at=utc(2026, 1, 1), billing_cadence="P0D")
    created = utc(2026, 1, 1)
    assert s.initial(created, None) == [Due(Kind.OPEN, 0, created), Due(Kind.ISSUE, 0, created)]
    assert s.invoice_zero(created) == Composition(one_time_fees=True)


# --- a plan billing anchor ------------------------------------------------------------------


@pytest.mark.parametrize("anchor", [utc(2026, 1, 1), utc(2026, 6, 1), utc(2020, 11, 1)])
def test_a_plan_anchor_makes_a_prorated_stub_up_to_its_next_recurrence(anchor: datetime) -> None:
    s = schedule(started_at=utc(2026, 3, 15, 12), billing_anchor=anchor)
    created = utc(2026, 3, 15, 12)
    stub = s.invoice_zero(created).advance
    assert stub == (win(utc(2026, 3, 15, 12), utc(2026, 4, 1), utc(2026, 3, 1), utc(2026, 4, 1), 0),)
    assert not stub[0].is_whole
    assert s.initial(created, None)[3] == Due(Kind.CLOSE, 1, utc(2026, 4, 1))
    assert s.regular(1).arrears == stub
    assert s.regular(1).advance == (whole(utc(2026, 4, 1), utc(2026, 5, 1), 1),)


def test_a_start_on_the_anchor_recurrence_has_no_stub() -> None:
    s = schedule(started_at=utc(2026, 4, 1), billing_anchor=utc(2026, 1, 1))
    assert s.invoice_zero(utc(2026, 4, 1)).advance == (whole(utc(2026, 4, 1), utc(2026, 5, 1), 0),)


# --- backdated starts -----------------------------------------------------------------------


def test_a_backdated_start_billed_from_creation_prorates_the_current_period() -> None:
    created = utc(2026, 3, 20)
    s = schedule(started_at=utc(2026, 1, 10), billing_starts_at=created, elapsed_period_billing="none")
    assert s.last_zero_period(created) == 2
    assert s.invoice_zero(created) == Composition(
        advance=(win(created, utc(2026, 4, 10), utc(2026, 3, 10), utc(2026, 4, 10), 2),), one_time_fees=True
    )
    assert s.first_regular(created) == 3
    assert s.initial(created, None)[2:] == [Due(Kind.OPEN, 3, created), Due(Kind.CLOSE, 3, utc(2026, 4, 10))]
    # the next invoice bills usage from creation only
    assert s.regular(3) == Composition(
        arrears=(win(created, utc(2026, 4, 10), utc(2026, 3, 10), utc(2026, 4, 10), 2),),
        advance=(whole(utc(2026, 4, 10), utc(2026, 5, 10), 3),),
    )


def test_a_backdated_start_per_period_bills_every_elapsed_period_on_invoice_zero() -> None:
    created = utc(2026, 3, 20)
    s = schedule(started_at=utc(2026, 1, 10), billing_starts_at=utc(2026, 1, 10), elapsed_period_billing="per_period")
    zero = s.invoice_zero(created)
    periods = [whole(utc(2026, 1, 10), utc(2026, 2, 10), 0), whole(utc(2026, 2, 10), utc(2026, 3, 10), 1)]
    assert zero.advance == (*periods, whole(utc(2026, 3, 10), utc(2026, 4, 10), 2))
    assert zero.arrears == tuple(periods)
    assert zero.one_time_fees
    assert s.first_regular(created) == 3
    assert s.regular(3).arrears == (whole(utc(2026, 3, 10), utc(2026, 4, 10), 2),)


# --- termination ----------------------------------------------------------------------------


def test_a_termination_mid_period_bills_arrears_to_t_and_credits_the_rest() -> None:
    s = schedule(started_at=utc(2026, 1, 1))
    t = utc(2026, 2, 15, 12)
    g = s.final_sequence(t, first_regular=1, last_closed=1)
    assert g == 2
    assert s.final(g, t) == Composition(
        arrears=(win(utc(2026, 2, 1), t, utc(2026, 2, 1), utc(2026, 3, 1), 1),),
        credits=(win(t, utc(2026, 3, 1), utc(2026, 2, 1), utc(2026, 3, 1), 1),),
        final=True,
    )
    assert s.termination(g, t, GRACE) == [
        Due(Kind.OPEN, 2, t, final=True),
        Due(Kind.CLOSE, 2, t, final=True),
        Due(Kind.ISSUE, 2, t + GRACE, final=True),
    ]
    assert s.composition(Due(Kind.CLOSE, 2, t, final=True)) == s.final(2, t)
    # the open row of the final invoice sends the final composition too
    assert s.composition(Due(Kind.OPEN, 2, utc(2026, 2, 1), final=True), terminated_at=t) == s.final(2, t)


def test_a_termination_in_period_zero_credits_what_invoice_zero_billed() -> None:
    s = schedule(started_at=utc(2026, 1, 1))
    t = utc(2026, 1, 20)
    g = s.final_sequence(t, first_regular=1, last_closed=None)
    assert g == 1
    assert s.final(g, t).arrears == (win(utc(2026, 1, 1), t, utc(2026, 1, 1), utc(2026, 2, 1), 0),)
    assert s.final(g, t).credits == (win(t, utc(2026, 2, 1), utc(2026, 1, 1), utc(2026, 2, 1), 0),)


def test_a_termination_at_a_boundary_ends_the_period_before_it_whole() -> None:
    s = schedule(started_at=utc(2026, 1, 1))
    t = utc(2026, 3, 1)
    g = s.final_sequence(t, first_regular=1, last_closed=1)
    assert g == 2
    assert s.final(g, t) == Composition(arrears=(whole(utc(2026, 2, 1), t, 1),), credits=(), final=True)


def test_a_termination_dated_before_issued_invoices_credits_every_billed_period() -> None:
    s = schedule(started_at=utc(2026, 1, 1))
    t = utc(2026, 2, 15)
    g = s.final_sequence(t, first_regular=1, last_closed=3)
    assert g == 4
    final = s.final(g, t)
    assert final.arrears == ()
    assert final.credits == (
        win(t, utc(2026, 3, 1), utc(2026, 2, 1), utc(2026, 3, 1), 1),
        whole(utc(2026, 3, 1), utc(2026, 4, 1), 2),
        whole(utc(2026, 4, 1), utc(2026, 5, 1), 3),
    )


def test_a_termination_of_a_backdated_start_never_credits_what_was_not_billed() -> None:
    created = utc(2026, 3, 20)
    s = schedule(started_at=utc(2026, 1, 10), billing_starts_at=created)
    t = utc(2026, 3, 25)
    g = s.final_sequence(t, first_regular=s.first_regular(created), last_closed=None)
    assert g == 3
    assert s.final(g, t) == Composition(
        arrears=(win(created, t, utc(2026, 3, 10), utc(2026, 4, 10), 2),),
        credits=(win(t, utc(2026, 4, 10), utc(2026, 3, 10), utc(2026, 4, 10), 2),),
        final=True,
    )


def test_kinds_run_end_open_close_issue_collect_at_one_instant() -> None:
    at = utc(2026, 1, 1)
    rows = [
        Due(Kind.COLLECT, 1, at, invoice_id="inv_1"),
        Due(Kind.ISSUE, 1, at),
        Due(Kind.CLOSE, 1, at),
        Due(Kind.OPEN, 2, at),
        Due(Kind.END, 0, at),
    ]
    assert [d.kind for d in sorted(rows, key=lambda d: d.order)] == [Kind.END, Kind.OPEN, Kind.CLOSE, Kind.ISSUE, Kind.COLLECT]


# --- automatic collection ------------------------------------------------------------------

ISSUED_AT = utc(2026, 2, 28, 10)


@pytest.mark.parametrize("sequence", [0, 1, 7])
def test_an_issued_invoice_with_something_unpaid_is_collected_at_its_issue(sequence: int) -> None:
    issue = Due(Kind.ISSUE, sequence, ISSUED_AT)
    laid = collection(issue, auto_charge=True, invoice_id="inv_1", status="ISSUED", unpaid_amount="49.00")
    assert laid == [Due(Kind.COLLECT, sequence, ISSUED_AT, attempt=0, invoice_id="inv_1", first_attempt_at=ISSUED_AT)]
    assert laid[0].attempt_key == "inv_1:auto:0"
    final = collection(
        Due(Kind.ISSUE, 3, ISSUED_AT, final=True), auto_charge=True, invoice_id="inv_3", status="ISSUED", unpaid_amount="0.01"
    )
    assert [d.final for d in final] == [True]


@pytest.mark.parametrize(
    ("auto_charge", "status", "unpaid"),
    [
        (False, "ISSUED", "49.00"),  # the merchant collects some other way
        (True, "PAID", "0.00"),  # a zero total is paid at issue
        (True, "ISSUED", "0.00"),
        (True, "ISSUED", "0"),
        (True, "ISSUED", ""),
        (True, "CALCULATION_FAILED", "49.00"),  # not issued: nothing owed yet
    ],
)
def test_nothing_is_collected_without_auto_charge_or_an_issued_debt(auto_charge: bool, status: str, unpaid: str) -> None:
    issue = Due(Kind.ISSUE, 1, ISSUED_AT)
    assert collection(issue, auto_charge=auto_charge, invoice_id="inv_1", status=status, unpaid_amount=unpaid) == []


def collect(attempt: int = 0, at: datetime = ISSUED_AT) -> Due:
    return Due(Kind.COLLECT, 1, at, attempt=attempt, invoice_id="inv_1", first_attempt_at=ISSUED_AT)


@pytest.mark.parametrize("status", ["succeeded", "no_payment_method"])
def test_a_paid_invoice_or_no_saved_method_ends_the_collection(status: str) -> None:
    assert after_charge(collect(2), Charge(status)) == AfterCharge()


def test_a_failure_lays_the_next_attempt_when_the_payment_service_says() -> None:
    retry_at = ISSUED_AT + timedelta(days=3)
    out = after_charge(collect(0), Charge("failed", next_attempt_at=retry_at))
    assert out == AfterCharge(follow_ups=(collect(1, retry_at),))
    assert out.follow_ups[0].attempt_key == "inv_1:auto:1"
    # the schedule counts from the first attempt: every retry carries its instant on
    later = after_charge(out.follow_ups[0], Charge("failed", next_attempt_at=ISSUED_AT + timedelta(days=5)))
    assert later.follow_ups == (collect(2, ISSUED_AT + timedelta(days=5)),)
    # a next instant before this attempt is not in the past of the timeline
    assert after_charge(collect(1, retry_at), Charge("failed", next_attempt_at=ISSUED_AT)).follow_ups == (collect(2, retry_at),)


def test_after_the_last_failure_the_merchants_policy_applies() -> None:
    last = collect(3, ISSUED_AT + timedelta(days=7))
    assert after_charge(last, Charge("failed", after_final_failure="terminate")) == AfterCharge(terminate_at=last.due_at)
    assert after_charge(last, Charge("failed", after_final_failure="keep_active")) == AfterCharge()
    assert after_charge(last, Charge("failed")) == AfterCharge()


def test_an_unknown_outcome_runs_the_same_attempt_an_hour_later_in_the_subscriptions_time() -> None:
    out = after_charge(collect(1, ISSUED_AT + timedelta(days=3)), Charge("processing"))
    assert out == AfterCharge(again_at=ISSUED_AT + timedelta(days=3) + COLLECT_RECHECK)
    assert timedelta(hours=1) == COLLECT_RECHECK
    # a real-time row that ran late is asked again an hour after it ran
    late = ISSUED_AT + timedelta(days=3, hours=5)
    assert after_charge(collect(1, ISSUED_AT + timedelta(days=3)), Charge("processing"), ran_at=late).again_at == late + COLLECT_RECHECK


def test_only_a_collect_has_an_attempt_key() -> None:
    with pytest.raises(ValueError):
        _ = Due(Kind.ISSUE, 1, ISSUED_AT).attempt_key
    with pytest.raises(ValueError):
        _ = Due(Kind.COLLECT, 1, ISSUED_AT).attempt_key


# --- property: the timeline run to a horizon bills every second exactly once ----------------


@dataclass
class Billed:
    advance: list[Window] = field(default_factory=list)
    arrears: list[Window] = field(default_factory=list)
    credits: list[Window] = field(default_factory=list)
    sequences: list[int] = field(default_factory=list)


def run_to(s: Schedule, created: datetime, horizon: datetime, end: datetime | None) -> Billed:
    """What the engine does with these rows, without the database: execute every row due by
    the horizon in (due_at, kind) order, laying the follow-ups; the end re-lays the final."""
    pending: dict[tuple[int, Kind], Due] = {(d.sequence_number, d.kind): d for d in s.initial(created, end)}
    opened: dict[int, Composition] = {}
    closed: set[int] = set()
    billed = Billed()
    terminated: datetime | None = None
    while True:
        ready = [d for d in pending.values() if d.due_at <= horizon]
        if not ready:
            break
        due = min(ready, key=lambda d: (d.due_at, d.order, d.sequence_number))
        del pending[(due.sequence_number, due.kind)]
        if due.kind is Kind.OPEN:
            opened.setdefault(due.sequence_number, s.composition(due, created=created, terminated_at=terminated))
        elif due.kind is Kind.CLOSE:
            closed.add(due.sequence_number)
            if due.final:
                opened[due.sequence_number] = s.composition(due, terminated_at=terminated)
            else:
                for follow in s.after_close(due.sequence_number, due.due_at, GRACE):
                    pending.setdefault((follow.sequence_number, follow.kind), follow)
        elif due.kind is Kind.ISSUE:
            comp = opened[due.sequence_number]
            billed.advance += comp.advance
            billed.arrears += comp.arrears
            billed.credits += comp.credits
            billed.sequences.append(due.sequence_number)
        else:
            terminated = due.due_at
            g = s.final_sequence(due.due_at, first_regular=s.first_regular(created), last_closed=max(closed, default=None))
            for key in [k for k in pending if k[0] >= g]:
                del pending[key]
            for follow in s.termination(g, due.due_at, GRACE):
                pending[(follow.sequence_number, follow.kind)] = follow
    return billed


def _covers(windows: list[Window]) -> list[tuple[datetime, datetime]]:
    spans = sorted((w.start, w.end) for w in windows)
    merged: list[tuple[datetime, datetime]] = []
    for start, end in spans:
        assert start < end
        if merged and merged[-1][1] == start:
            merged[-1] = (merged[-1][0], end)
        else:
            assert not merged or merged[-1][1] < start  # never an overlap
            merged.append((start, end))
    return merged


starts = st.datetimes(min_value=datetime(2024, 1, 1), max_value=datetime(2030, 1, 1), timezones=st.just(UTC)).map(
    lambda t: t.replace(microsecond=0)
)


@settings(max_examples=120, deadline=None)
@given(
    start=starts,
    cadence=st.sampled_from(["P1M", "P1W", "P3M", "P1D", "P1Y", "P2W"]),
    anchor_shift=st.one_of(st.none(), st.integers(-400 * 86_400, 400 * 86_400)),
    backdate=st.integers(0, 300 * 86_400),
    per_period=st.booleans(),
    end_after=st.one_of(st.none(), st.integers(1, 500 * 86_400)),
    horizon_after=st.integers(1, 700 * 86_400),
)
def test_a_timeline_bills_every_second_once_in_advance_and_once_in_arrears(
    start: datetime,
    cadence: str,
    anchor_shift: int | None,
    backdate: int,
    per_period: bool,
    end_after: int | None,
    horizon_after: int,
) -> None:
    created = start + timedelta(seconds=backdate)
    starts_at = start if per_period or backdate <= 86_400 else created
    anchor = start if anchor_shift is None else start + timedelta(seconds=anchor_shift)
    end = None if end_after is None else created + timedelta(seconds=end_after)
    s = schedule(
        started_at=start,
        billing_anchor=anchor,
        billing_cadence=cadence,
        billing_starts_at=starts_at,
        elapsed_period_billing="per_period" if per_period else "none",
    )
    horizon = created + timedelta(seconds=horizon_after)
    billed = run_to(s, created, horizon, end)

    # sequence numbers: 0, then m+1, m+2, ... with no gap
    m1 = s.first_regular(created)
    assert billed.sequences[0] == 0
    assert billed.sequences[1:] == list(range(m1, m1 + len(billed.sequences) - 1))

    # what was billed in arrears tiles [billing start, somewhere) with no gap or overlap
    arrears = _covers(billed.arrears)
    advance = _covers(billed.advance)
    credited = _covers(billed.credits)
    assert len(advance) == 1 and advance[0][0] == starts_at
    if end is not None and end + GRACE <= horizon:
        # ended and its final invoice issued: usage billed exactly up to the end, and the
        # in-advance charges billed minus the credits cover exactly the same span
        assert arrears == [(starts_at, end)]
        assert credited == ([(end, advance[0][1])] if advance[0][1] > end else [])
        assert billed.sequences[-1] == max(billed.sequences)
    else:
        # running: in advance runs one period ahead of in arrears, nothing credited
        assert credited == []
        assert len(arrears) <= 1
        if arrears:
            assert arrears[0][0] == starts_at and advance[0][1] > arrears[0][1]
    for w in itertools.chain(billed.advance, billed.arrears, billed.credits):
        assert w.period_start <= w.start < w.end <= w.period_end
