"""A subscription's billing timeline: which work falls due when, and what each invoice
bills (DESIGN.md section 7). Pure: the engine (services/subscription/engine.py) stores
the due work and executes it; this module only computes.

Periods. The grid is the subscription's ``billing_anchor`` ⊕ k·``billing_cadence``
(libs/core/grid.py). The subscription's own period p is grid period ``k0 + p``, where k0
is the grid period holding ``started_at``: without a plan anchor the anchor is the start
and k0 = 0; with one, period 0 is the stub from the start to the anchor's next
recurrence, prorated against the whole grid period it lies in. ``B(p)`` is the start of
period p on the grid, so period p is ``[B(p), B(p+1))``; what is billed of it (its
window) starts at ``max(B(p), billing_starts_at)``: a backdated start with
elapsedPeriodBilling none bills nothing before creation. ``period_index`` of a window is
p, counted like sequence numbers.

Invoices. Invoice 0 is made at creation C: the in-advance charges of periods 0..m and
the in-arrears charges of periods 0..m-1, and the one-time fees, where m is the period
holding C (per_period) or ``billing_starts_at`` (none; 0 for a start that is not
backdated). Invoice k > m bills the in-arrears charges of period k-1 and the in-advance
charges of period k; the grid continues at m+1. Invoice k is opened at the start of
period k-1 (at C for m+1), closed at B(k) and issued at B(k) + grace.

Collection (autoCharge). An issue that answers an invoice ISSUED with something unpaid,
for a subscription with ``auto_charge``, lays a ``collect`` of that invoice at the same
instant (attempt 0: its instant is the first attempt's, from which the dunning schedule
counts). A collect charges the customer's saved method (the payment service's
ChargeInvoice, attempt key ``<invoice>:auto:<n>``); what it answers decides what follows
(``after_charge``): paid or nothing to charge with ends it; a failure with a next attempt
lays attempt n+1 then; an exhausted schedule with the merchant's ``terminate`` policy ends
the subscription at the attempt's instant; an outcome not known yet runs the same attempt
(same key) again an hour later.

Termination at t. The final invoice g is the first not yet closed one (normally the one
accruing period j, ``B(j) < t <= B(j+1)``: g = j+1): it bills the in-arrears charges of
period g-1 up to t and credits ``[t, end)`` of every period whose in-advance charges were
billed (j..g-1), closes at t and issues at t + grace; no later invoices.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal, InvalidOperation
from enum import StrEnum
from functools import cached_property, lru_cache
from typing import Final, Protocol

from libs.core import grid
from libs.core.grid import Duration


class BilledSubscription(Protocol):
    """What the timeline and the engine read of services/subscription/domain/model.py:
    Subscription (the last three: collection, and Invoice 0's checkout in BillingTerms)."""

    @property
    def id(self) -> str: ...
    @property
    def merchant_id(self) -> str: ...
    @property
    def customer_id(self) -> str: ...
    @property
    def plan_id(self) -> str: ...
    @property
    def plan_version_id(self) -> str: ...
    @property
    def currency(self) -> str: ...
    @property
    def status(self) -> str: ...
    @property
    def billing_anchor(self) -> datetime: ...
    @property
    def billing_cadence(self) -> str: ...
    @property
    def started_at(self) -> datetime: ...
    @property
    def billing_starts_at(self) -> datetime | None: ...
    @property
    def elapsed_period_billing(self) -> str | None: ...
    @property
    def ending_at(self) -> datetime | None: ...
    @property
    def terminated_at(self) -> datetime | None: ...
    @property
    def test_clock_id(self) -> str | None: ...
    @property
    def payment_term_days(self) -> int: ...
    @property
    def tax_exempt(self) -> bool: ...
    @property
    def tax_behavior(self) -> str: ...
    @property
    def default_tax_rate(self) -> str: ...
    @property
    def customer_tax_rates(self) -> Mapping[str, str]: ...
    @property
    def auto_charge(self) -> bool: ...
    @property
    def redirect_urls(self) -> Mapping[str, str]: ...
    @property
    def session_expiry_minutes(self) -> float: ...


class Kind(StrEnum):
    """What a due row does. At one instant they run in this order: a scheduled end first
    (it re-lays the final invoice before a regular close at the same boundary), an
    invoice is opened before it is closed, closed before it is issued, issued before it
    is collected (charged on the saved method)."""

    END = "end"
    OPEN = "open"
    CLOSE = "close"
    ISSUE = "issue"
    COLLECT = "collect"


KIND_ORDER: Final[Mapping[Kind, int]] = {Kind.END: 0, Kind.OPEN: 1, Kind.CLOSE: 2, Kind.ISSUE: 3, Kind.COLLECT: 4}

# an outcome not known yet (the processor still deciding, another attempt in flight):
# the same attempt runs again this much later in the subscription's time
COLLECT_RECHECK: Final = timedelta(hours=1)
# the payment service's ChargeOutcome.status values
CHARGE_STATUSES: Final = frozenset({"succeeded", "failed", "processing", "no_payment_method"})

# the `end` row has no invoice of its own; one per subscription
END_SEQUENCE: Final = 0


@dataclass(frozen=True, slots=True)
class Window:
    """A billed window ``[start, end)`` of period ``period_index`` (``[period_start, period_end)``)."""

    start: datetime
    end: datetime
    period_start: datetime
    period_end: datetime
    period_index: int

    @property
    def is_whole(self) -> bool:
        return self.start == self.period_start and self.end == self.period_end


@dataclass(frozen=True, slots=True)
class Composition:
    """What one invoice bills (invoicing's InvoiceComposition)."""

    arrears: tuple[Window, ...] = ()
    advance: tuple[Window, ...] = ()
    credits: tuple[Window, ...] = ()
    one_time_fees: bool = False
    final: bool = False


@dataclass(frozen=True, slots=True)
class Due:
    """A piece of due work: (subscription, sequence_number, kind, attempt) is its identity.

    ``attempt`` counts a collect's charge attempts of one invoice (0 at issue, then the
    dunning retries); every other kind has attempt 0. A collect names its ``invoice_id``
    and the instant of the invoice's first automatic attempt (``first_attempt_at``)."""

    kind: Kind
    sequence_number: int
    due_at: datetime
    final: bool = False
    attempt: int = 0
    invoice_id: str | None = None
    first_attempt_at: datetime | None = None

    @property
    def order(self) -> int:
        return KIND_ORDER[self.kind]

    @property
    def attempt_key(self) -> str:
        """A collect's charge attempt key (the processor's idempotency key too)."""
        if self.kind is not Kind.COLLECT or not self.invoice_id:
            raise ValueError("only a collect of an invoice has an attempt key")
        return f"{self.invoice_id}:auto:{self.attempt}"


@dataclass(frozen=True, slots=True)
class Charge:
    """What a collect's charge answered (the payment service's ChargeOutcome)."""

    status: str
    next_attempt_at: datetime | None = None
    after_final_failure: str | None = None


@dataclass(frozen=True, slots=True)
class AfterCharge:
    """What a collect's charge leads to: rows to lay, the same row again at
    ``again_at`` (its outcome is not known yet), or the subscription's end at
    ``terminate_at`` (the schedule is exhausted and the merchant's policy is terminate)."""

    follow_ups: tuple[Due, ...] = ()
    again_at: datetime | None = None
    terminate_at: datetime | None = None


def _positive(amount: str) -> bool:
    try:
        return Decimal(amount or "0") > 0
    except InvalidOperation:
        return False


def recheck_at(collect: Due, ran_at: datetime | None = None) -> datetime:
    """When an attempt whose outcome is not known yet is asked again."""
    return max(collect.due_at, ran_at or collect.due_at) + COLLECT_RECHECK


def collection(issue: Due, *, auto_charge: bool, invoice_id: str, status: str, unpaid_amount: str) -> list[Due]:
    """What an issue lays for automatic collection: attempt 0 of a collect at the issue's
    instant, when the subscription charges automatically and the invoice was issued with
    something unpaid (a zero total is PAID at issue; nothing to charge)."""
    if not auto_charge or not invoice_id or status != "ISSUED" or not _positive(unpaid_amount):
        return []
    return [
        Due(
            Kind.COLLECT,
            issue.sequence_number,
            issue.due_at,
            final=issue.final,
            attempt=0,
            invoice_id=invoice_id,
            first_attempt_at=issue.due_at,
        )
    ]


def after_charge(collect: Due, charge: Charge, *, ran_at: datetime | None = None) -> AfterCharge:
    """What follows a collect's charge attempt n (DESIGN section 7, automatic collection).

    * succeeded (the invoice is paid, by this attempt or earlier) or no_payment_method
      (nothing to charge off-session): done;
    * failed with ``next_attempt_at``: attempt n+1 then (never before this one);
    * failed without it (the merchant's schedule is exhausted): with ``terminate`` the
      subscription ends at this attempt's instant, with ``keep_active`` nothing more;
    * processing (the outcome is not known yet): the same attempt, same key, again
      COLLECT_RECHECK after it ran (``ran_at``, in the subscription's time: its due time
      on a test clock, which runs rows at their instants; a real-time row may run late)."""
    if charge.status == "processing":
        return AfterCharge(again_at=recheck_at(collect, ran_at))
    if charge.status != "failed":
        return AfterCharge()
    if charge.next_attempt_at is not None:
        at = max(charge.next_attempt_at, collect.due_at)
        nxt = Due(
            Kind.COLLECT,
            collect.sequence_number,
            at,
            final=collect.final,
            attempt=collect.attempt + 1,
            invoice_id=collect.invoice_id,
            first_attempt_at=collect.first_attempt_at or collect.due_at,
        )
        return AfterCharge(follow_ups=(nxt,))
    if charge.after_final_failure == "terminate":
        return AfterCharge(terminate_at=collect.due_at)
    return AfterCharge()


@dataclass(frozen=True)
class Schedule:
    """The grid of one subscription and the invoice rules over it."""

    anchor: datetime
    cadence: Duration
    started_at: datetime
    billing_starts_at: datetime
    per_period: bool

    @classmethod
    def of(cls, subscription: BilledSubscription) -> Schedule:
        starts = subscription.billing_starts_at or subscription.started_at
        return _schedule(
            subscription.billing_anchor,
            subscription.billing_cadence or "P0D",
            subscription.started_at,
            max(starts, subscription.started_at),
            subscription.elapsed_period_billing == "per_period",
        )

    @property
    def once(self) -> bool:
        """A P0D cadence: Invoice 0 only, no periods."""
        return self.cadence.is_zero

    @cached_property
    def k0(self) -> int:
        """The grid period holding the start."""
        return grid.index_at(self.anchor, self.cadence, self.started_at)

    def boundary(self, p: int) -> datetime:
        """B(p): the start of the subscription's period p on the grid (B(0) <= started_at)."""
        return grid.boundary(self.anchor, self.cadence, self.k0 + p)

    def period_at(self, t: datetime) -> int:
        """The period p with B(p) <= t < B(p+1) (negative before the start's grid period)."""
        return grid.index_at(self.anchor, self.cadence, t) - self.k0

    def period_ending(self, t: datetime) -> int:
        """The period a termination at t ends: B(p) < t <= B(p+1) (so a termination at a
        boundary ends the period before it, whose charges are then whole), at least 0."""
        p = self.period_at(t)
        if self.boundary(p) == t:
            p -= 1
        return max(p, 0)

    def window(self, p: int) -> Window | None:
        """What is billed of period p: from max(B(p), billing start) to B(p+1); None if nothing."""
        if p < 0:
            return None
        period_start, period_end = self.boundary(p), self.boundary(p + 1)
        start = max(period_start, self.billing_starts_at)
        if start >= period_end:
            return None
        return Window(start, period_end, period_start, period_end, p)

    # --- Invoice 0 and the grid after it ---------------------------------------------

    def last_zero_period(self, created: datetime) -> int:
        """m: the last period Invoice 0 bills in advance (periods 0..m)."""
        if self.once:
            return 0
        reference = created if self.per_period else self.billing_starts_at
        return max(self.period_at(reference), 0)

    def first_regular(self, created: datetime) -> int:
        """The sequence number of the invoice after Invoice 0 (m + 1)."""
        return self.last_zero_period(created) + 1

    def invoice_zero(self, created: datetime) -> Composition:
        if self.once:
            return Composition(one_time_fees=True)
        m = self.last_zero_period(created)
        advance = tuple(w for p in range(m + 1) if (w := self.window(p)) is not None)
        arrears = tuple(w for p in range(m) if (w := self.window(p)) is not None)
        return Composition(arrears=arrears, advance=advance, one_time_fees=True)

    def regular(self, k: int) -> Composition:
        """Invoice k >= 1: in-arrears charges of period k-1, in-advance charges of period k."""
        if k < 1:
            raise ValueError("a regular invoice has sequence number >= 1")
        arrears = self.window(k - 1)
        advance = self.window(k)
        return Composition(arrears=(arrears,) if arrears else (), advance=(advance,) if advance else ())

    # --- termination --------------------------------------------------------------------

    def final_sequence(self, t: datetime, *, first_regular: int, last_closed: int | None) -> int:
        """g: the invoice that becomes the final one when the subscription ends at t (the
        first not yet closed one, and never before the one accruing t's period)."""
        return max(self.period_ending(t) + 1, first_regular, (last_closed or 0) + 1)

    def final(self, g: int, t: datetime) -> Composition:
        """The final invoice g of a termination at t: arrears of period g-1 up to t,
        credits of [t, end) of every period whose in-advance charges were billed."""
        if self.once:
            return Composition(final=True)
        arrears: tuple[Window, ...] = ()
        last = self.window(g - 1)
        if last is not None and t > last.start:
            arrears = (Window(last.start, min(t, last.end), last.period_start, last.period_end, last.period_index),)
        credits = []
        for p in range(self.period_ending(t), g):
            w = self.window(p)
            if w is None or t >= w.end:
                continue
            credits.append(Window(max(t, w.start), w.end, w.period_start, w.period_end, p))
        return Composition(arrears=arrears, credits=tuple(credits), final=True)

    # --- the due work -----------------------------------------------------------------

    def initial(self, created: datetime, ending_at: datetime | None) -> list[Due]:
        """What creation lays: Invoice 0 (opened and issued at once), the next invoice (open
        now, closing at its boundary) and a scheduled end."""
        out = [Due(Kind.OPEN, 0, created), Due(Kind.ISSUE, 0, created)]
        if not self.once:
            k = self.first_regular(created)
            # a boundary already behind creation (a start up to a day back, a short cadence)
            # closes at creation: nothing is due before Invoice 0
            out += [Due(Kind.OPEN, k, created), Due(Kind.CLOSE, k, max(self.boundary(k), created))]
        if ending_at is not None:
            out.append(Due(Kind.END, END_SEQUENCE, ending_at))
        return out

    def after_close(self, k: int, closed_at: datetime, grace: timedelta) -> list[Due]:
        """What closing regular invoice k (at B(k), or later when B(k) was behind creation)
        lays: its issue after the grace, and the next invoice."""
        return [
            Due(Kind.ISSUE, k, closed_at + grace),
            Due(Kind.OPEN, k + 1, closed_at),
            Due(Kind.CLOSE, k + 1, max(self.boundary(k + 1), closed_at)),
        ]

    def termination(self, g: int, t: datetime, grace: timedelta) -> list[Due]:
        """The final invoice g of an end at t: opened by then, closed at t, issued at t + grace."""
        return [Due(Kind.OPEN, g, t, final=True), Due(Kind.CLOSE, g, t, final=True), Due(Kind.ISSUE, g, t + grace, final=True)]

    def composition(self, due: Due, *, created: datetime | None = None, terminated_at: datetime | None = None) -> Composition:
        """The composition an OPEN (or a final CLOSE) row sends. ``created`` is the due time
        of ``open 0`` (Invoice 0 depends on when it was made); a final row's is the
        termination's at ``terminated_at`` (else its own due time)."""
        if due.final:
            return self.final(due.sequence_number, terminated_at or due.due_at)
        if due.sequence_number == 0:
            return self.invoice_zero(created or due.due_at)
        return self.regular(due.sequence_number)


@lru_cache(maxsize=4096)
def _schedule(anchor: datetime, cadence: str, started_at: datetime, billing_starts_at: datetime, per_period: bool) -> Schedule:
    """Schedules are immutable and a batch bills many subscriptions of one grid: build each once."""
    return Schedule(anchor, grid.parse_duration(cadence, "billingCadence"), started_at, billing_starts_at, per_period)
