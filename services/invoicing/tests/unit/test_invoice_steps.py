"""The engine's steps on fakes: the state machine, idempotency of every step, gapless
numbering, the completeness wait, late usage, credit notes, and the payment rules."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest

from libs.core.errors import FailedPrecondition, InvalidArgument, NotFound, Unavailable, Unprocessable
from services.invoicing.domain import use_cases
from services.invoicing.domain.calculation import Composition, Window
from services.invoicing.domain.commands import RecordPayment
from services.invoicing.domain.model import ChangeKind, Invoice, InvoiceChanged, Layout, Status, due_at, invoice_number
from services.invoicing.tests.unit.world import FEE, GRACE, METERED, METRIC, MONTHS, OTHER_MERCHANT, World, layout, period, terms

USD = 1_000_000_000


def _events(world: World) -> list[tuple[ChangeKind, str]]:
    return [(e.kind, e.invoice_id) for e in world.store.outbox if isinstance(e, InvoiceChanged)]


async def _pay(world: World, invoice_id: str, merchant: str = "org_a", method: str = "out_of_band") -> Invoice:
    async with world.uow() as uow:
        return await use_cases.record_payment(uow, world.sources, merchant, world.clock.now(), RecordPayment(invoice_id, method, "wire"))


# --- open / close ------------------------------------------------------------------------


async def test_open_is_idempotent_by_subscription_and_sequence_number() -> None:
    world = World()
    first = await world.open(1)
    again = await world.open(1, lay=layout(2))  # a repeat with other values answers the one that exists
    assert again.id == first.id
    assert again.layout == layout(1)
    assert first.status == Status.ACTIVE
    assert (first.period_start, first.period_end) == (MONTHS[0], MONTHS[2])
    assert len(world.store.invoices) == 1
    other = await world.open(1, terms(subscription_id="sub_2"))
    assert other.id != first.id and len(world.store.invoices) == 2


async def test_close_moves_to_closing_once_and_keeps_late_usage_until_the_grace_end() -> None:
    world = World()
    await world.open(1)
    closed = await world.close(1)
    assert closed.status == Status.CLOSING and closed.grace_period_end == MONTHS[1] + GRACE
    updated = closed.updated_at
    world.clock.advance(timedelta(seconds=5))
    again = await world.close(1)
    assert again.status == Status.CLOSING and again.updated_at == updated  # nothing changed


async def test_a_final_close_replaces_the_composition() -> None:
    world = World()
    await world.open(2)
    t = MONTHS[1] + timedelta(days=10)
    final = Layout(
        Composition(
            arrears=[Window(MONTHS[1], t, MONTHS[1], MONTHS[2], 1)],
            advance=[],
            credits=[Window(t, MONTHS[2], MONTHS[1], MONTHS[2], 1)],
            one_time_fees=False,
        ),
        final=True,
    )
    closed = await world.close(2, lay=final)
    assert closed.layout == final and (closed.period_start, closed.period_end) == (MONTHS[1], MONTHS[2])


async def test_closing_an_invoice_never_opened_or_issued_with_another_composition_is_refused() -> None:
    world = World()
    with pytest.raises(FailedPrecondition) as caught:
        await world.close(3)
    assert caught.value.reason == "INVOICE_NOT_OPEN"
    await world.run(0)
    with pytest.raises(FailedPrecondition) as caught:
        await world.close(0, lay=layout(1))
    assert caught.value.reason == "INVOICE_ALREADY_ISSUED"
    assert (await world.close(0)).status == Status.ISSUED  # a plain repeat is harmless


async def test_bad_terms_are_refused_naming_the_field() -> None:
    world = World()
    with pytest.raises(InvalidArgument) as caught:
        await world.open(0, terms(customer_id=""))
    assert caught.value.field == "terms.customerId"
    with pytest.raises(InvalidArgument) as caught:
        await world.open(0, terms(default_tax_rate="ten"))
    assert caught.value.field == "terms.defaultTaxRate"


# --- issue ---------------------------------------------------------------------------------


async def test_invoice_zero_is_issued_at_once_numbered_and_due_by_the_payment_terms() -> None:
    world = World()
    t = terms(payment_term_days=30)
    await world.open(0, t)
    issued = await world.issue(0, t)
    assert issued.status == Status.ISSUED
    assert issued.grand_total == 49 * USD and issued.unpaid_amount == 49 * USD
    assert issued.invoice_number == "INV-2026-000001"
    assert issued.issued_at == MONTHS[0] and issued.grace_period_end == MONTHS[0]
    assert issued.due_at == datetime(2026, 1, 31, tzinfo=UTC)
    assert _events(world) == [(ChangeKind.ISSUED, issued.id)]
    assert METRIC not in {key[0] for key in world.meter.asked}  # nothing in arrears: no usage read


async def test_issue_is_idempotent_and_numbers_once() -> None:
    world = World()
    first = await world.run(0)
    again = await world.issue(0)
    assert again.id == first.id and again.invoice_number == first.invoice_number
    assert world.store.counters == {"org_a": 1}
    assert len(world.store.lines[first.id]) == len(first.layout.composition.advance)
    assert len(_events(world)) == 1


async def test_a_zero_invoice_is_paid_at_once() -> None:
    world = World()
    world.catalog.default = [METERED]  # nothing in advance
    paid = await world.run(0)
    assert paid.status == Status.PAID and paid.grand_total == 0 and paid.paid_at == MONTHS[0]
    assert _events(world) == [(ChangeKind.ISSUED, paid.id), (ChangeKind.PAID, paid.id)]


async def test_numbers_are_gapless_per_merchant_across_subscriptions() -> None:
    world = World()
    numbers = []
    for subscription in ("sub_1", "sub_2", "sub_3"):
        numbers.append((await world.run(0, terms(subscription_id=subscription))).invoice_number)
    numbers.append((await world.run(1)).invoice_number)
    other = await world.run(0, terms(subscription_id="sub_b"), merchant=OTHER_MERCHANT)
    assert numbers == ["INV-2026-000001", "INV-2026-000002", "INV-2026-000003", "INV-2026-000004"]
    assert other.invoice_number == "INV-2026-000001"


async def test_a_failed_issue_gives_its_number_back() -> None:
    world = World()
    await world.open(1)
    await world.close(1)
    world.meter.down = True
    with pytest.raises(Unavailable):
        await world.issue(1)
    assert (await _get(world, 1)).status == Status.CLOSING
    world.meter.down = False
    issued = await world.issue(1)
    assert issued.invoice_number == "INV-2026-000001"


async def _get(world: World, k: int, subscription: str = "sub_1") -> Invoice:
    async with world.uow() as uow:
        found = await uow.invoices.by_sequence("org_a", subscription, k)
        assert found is not None
        return found


async def test_issue_waits_for_metering_to_be_complete_up_to_the_moment_of_calculation() -> None:
    world = World()
    world.meter.set(METRIC, "cus_1", MONTHS[0], MONTHS[1], "250")
    world.meter.lagging = 2  # two answers not yet complete
    world.meter.lag_until = world.clock.now() - timedelta(seconds=1)
    await world.open(1)
    await world.close(1)
    issued = await world.issue(1)
    assert issued.status == Status.ISSUED
    assert len(world.slept) == 2
    assert issued.grand_total == 49 * USD + 250 * 10_000_000


async def test_usage_is_read_only_after_the_watermark_passed() -> None:
    world = World()
    window = (METRIC, "cus_1", MONTHS[0], MONTHS[1])
    world.meter.set(*window, "100")
    # the first answer says "complete" but its usage was aggregated just before 30 more
    # units were stored: only a reading asked after the watermark passed counts them
    world.meter.after_next_answer = lambda: world.meter.set(*window, "130")
    await world.open(1)
    await world.close(1)
    issued = await world.issue(1)
    assert issued.grand_total == 49 * USD + 130 * 10_000_000


async def test_issue_fails_unavailable_when_metering_never_catches_up() -> None:
    world = World()
    world.meter.complete_until = world.clock.now() - timedelta(seconds=1)
    await world.open(1)
    await world.close(1)
    with pytest.raises(Unavailable) as caught:
        await world.issue(1)
    assert caught.value.reason == "USAGE_NOT_COMPLETE" and caught.value.retryable
    assert sum(world.slept) >= world.policy.usage_wait_seconds
    assert world.store.counters == {}


async def test_usage_of_the_arrears_window_is_billed_for_the_customer() -> None:
    world = World()
    world.meter.set(METRIC, "cus_1", MONTHS[0], MONTHS[1], "1000")
    world.meter.set(METRIC, "cus_other", MONTHS[0], MONTHS[1], "5")
    issued = await world.run(1)
    lines = world.store.lines[issued.id]
    usage = [line.line for line in lines if line.line.price_id == METERED.price_id]
    assert [(u.quantity, u.amount, u.window) for u in usage] == [(Decimal(1000), 10 * USD, period(0))]
    assert lines[[line.line.price_id for line in lines].index(METERED.price_id)].metric_unit == "token"


async def test_late_usage_of_an_issued_period_is_corrected_on_the_next_invoice() -> None:
    world = World()
    world.meter.set(METRIC, "cus_1", MONTHS[0], MONTHS[1], "100")
    first = await world.run(1)
    assert first.grand_total == 49 * USD + 1 * USD
    world.meter.set(METRIC, "cus_1", MONTHS[0], MONTHS[1], "130")  # 30 late units stamped in January
    second = await world.run(2)
    corrections = [line.line for line in world.store.lines[second.id] if line.line.kind == "correction"]
    assert [(c.corrects, c.amount) for c in corrections] == [(period(0), 30 * 10_000_000)]
    assert (METRIC, "cus_1", MONTHS[0], MONTHS[1]) in world.meter.asked


async def test_periods_beyond_the_backdating_window_are_not_read_again() -> None:
    world = World()
    for k in range(1, 5):
        await world.run(k)
    world.meter.asked.clear()
    await world.run(5)
    reread = {(start, end) for _, _, start, end in world.meter.asked}
    # invoice 5 bills May; the last issue was May 1 + 1 h, 35 days before it is Mar 27:
    # April and March can still get late events, February cannot
    assert reread == {(MONTHS[4], MONTHS[5]), (MONTHS[3], MONTHS[4]), (MONTHS[2], MONTHS[3])}


async def test_a_final_invoice_below_zero_is_issued_at_zero_with_a_credit_note() -> None:
    world = World()
    world.catalog.default = [FEE]
    await world.run(0)
    t = MONTHS[0] + timedelta(days=1)
    final = Layout(
        Composition(
            arrears=[Window(MONTHS[0], t, MONTHS[0], MONTHS[1], 0)],
            advance=[],
            credits=[Window(t, MONTHS[1], MONTHS[0], MONTHS[1], 0)],
            one_time_fees=False,
        ),
        final=True,
    )
    await world.open(1)
    await world.close(1, lay=final)
    issued = await world.issue(1)
    assert issued.grand_total == 0 and issued.status == Status.PAID
    (note,) = world.store.credit_notes
    credit = [line.line for line in world.store.lines[issued.id] if line.line.kind == "credit"]
    assert note.amount == -sum(c.total for c in credit) and note.amount > 0
    assert sum(line.line.total for line in world.store.lines[issued.id]) == 0


async def test_the_rounding_carry_is_kept_per_customer_and_currency() -> None:
    world = World()
    world.catalog.default = [METERED]
    world.meter.set(METRIC, "cus_1", MONTHS[0], MONTHS[1], "0.4")  # 0.004 USD: rounds to 0.00
    await world.run(1)
    carry = world.store.carry[("org_a", "cus_1", "USD")]
    assert carry.exact_total == Decimal(4_000_000) and carry.billed_total == 0


# --- payments ------------------------------------------------------------------------------


async def test_out_of_band_payment_pays_an_issued_invoice_once() -> None:
    world = World()
    issued = await world.run(1)
    paid = await _pay(world, issued.id)
    assert paid.status == Status.PAID and paid.paid_amount == issued.grand_total and paid.paid_at == world.clock.now()
    assert paid.unpaid_amount == 0
    with pytest.raises(FailedPrecondition) as caught:
        await _pay(world, issued.id)
    assert caught.value.reason == "INVOICE_ALREADY_PAID"
    assert _events(world)[-1] == (ChangeKind.PAID, issued.id)
    assert world.subscriptions.paid == []  # only Invoice 0 activates


async def test_paying_invoice_zero_tells_the_subscription_service_before_committing() -> None:
    world = World()
    issued = await world.run(0)
    world.subscriptions.fail = True
    with pytest.raises(Unavailable):
        await _pay(world, issued.id)
    assert world.store.invoices[issued.id].status == Status.ISSUED  # nothing recorded: the caller retries
    world.subscriptions.fail = False
    await _pay(world, issued.id)
    assert world.subscriptions.paid == [("sub_1", issued.id, 0)]
    assert world.store.invoices[issued.id].status == Status.PAID


async def test_only_issued_or_failed_invoices_can_be_paid() -> None:
    world = World()
    active = await world.open(1)
    with pytest.raises(Unprocessable) as caught:
        await _pay(world, active.id)
    assert caught.value.reason == "INVOICE_NOT_LINKABLE_STATUS"
    failed = await world.run(0)
    world.store.invoices[failed.id].status = Status.PAYMENT_FAILED.value
    assert (await _pay(world, failed.id)).status == Status.PAID


async def test_payment_methods() -> None:
    world = World()
    issued = await world.run(0)
    linked = await _pay(world, issued.id, method="hosted_link")  # a fresh checkout; still unpaid
    assert linked.status == Status.ISSUED and linked.payment_session_id != issued.payment_session_id
    with pytest.raises(InvalidArgument) as caught:
        await _pay(world, issued.id, method="cash")
    assert caught.value.field == "method"


async def test_another_merchants_invoice_is_not_found() -> None:
    world = World()
    issued = await world.run(0)
    with pytest.raises(NotFound):
        await _pay(world, issued.id, merchant=OTHER_MERCHANT)
    with pytest.raises(FailedPrecondition):  # its steps do not see it either
        await world.issue(0, merchant=OTHER_MERCHANT)


# --- pure rules ----------------------------------------------------------------------------


def test_numbers_and_due_dates() -> None:
    assert invoice_number(2026, 7) == "INV-2026-000007"
    assert invoice_number(2027, 1_234_567) == "INV-2027-1234567"
    assert due_at(datetime(2026, 1, 31, 23, 30, tzinfo=UTC), 1) == datetime(2026, 2, 1, tzinfo=UTC)
    assert due_at(datetime(2026, 2, 1, 1, 0, tzinfo=UTC), 0) == datetime(2026, 2, 1, tzinfo=UTC)
