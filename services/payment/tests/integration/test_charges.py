"""ChargeInvoice against real PostgreSQL: one charge per key and per invoice, whatever
runs concurrently; unknown outcomes (a timeout, a lost answer, a charge never sent)
settled by the janitor through the processor's look-up by key; every decided outcome
told to invoicing once it can hear it; the dunning schedule in the answer."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
from accrue.payment.v1 import payment_service_pb2 as pay

from libs.core.errors import FailedPrecondition, NotFound, Unavailable
from libs.infra.proto_time import from_timestamp, to_timestamp
from libs.testing.waiting import eventually_async
from services.payment import store
from services.payment.domain.model import ChargeAttempt, PayableType, Trigger
from services.payment.processors.base import ChargeStatus
from services.payment.tests.fakes import DECLINE, INSUFFICIENT, LOST, SLOW, UNREACHABLE
from services.payment.tests.integration.conftest import World

ISSUED_AT = datetime(2026, 3, 1, 12, tzinfo=UTC)


async def test_the_same_key_twice_is_one_charge(world: World) -> None:
    customer = await world.customer()
    await world.save_card(customer)
    invoice = world.invoice()
    first = await world.payments.ChargeInvoice(world.charge(invoice, customer, f"{invoice}:retry:1"), metadata=world.md())
    again = await world.payments.ChargeInvoice(world.charge(invoice, customer, f"{invoice}:retry:1"), metadata=world.md())
    assert first.status == again.status == "succeeded"
    assert first.provider_payment_ref and first.provider_payment_ref == again.provider_payment_ref
    assert len(world.processor.succeeded(world.merchant)) == 1
    # paid: another key charges nothing and answers the charge that paid it
    other = await world.payments.ChargeInvoice(world.charge(invoice, customer, f"{invoice}:retry:2"), metadata=world.md())
    assert (other.status, other.provider_payment_ref) == ("succeeded", first.provider_payment_ref)
    assert world.processor.charge_calls == [f"{invoice}:retry:1"]
    (attempt,) = await world.attempts(invoice)
    assert attempt.status == "succeeded" and attempt.reported_at is not None
    assert world.invoicing.reported(invoice) == [(f"{invoice}:retry:1", "succeeded")]


async def test_concurrent_charges_of_one_invoice_charge_it_once(world: World) -> None:
    customer = await world.customer()
    await world.save_card(customer)
    invoice = world.invoice()
    world.processor.gate = asyncio.Event()
    calls = [
        asyncio.ensure_future(world.payments.ChargeInvoice(world.charge(invoice, customer, f"{invoice}:retry:{n}"), metadata=world.md()))
        for n in range(1, 7)
    ]
    await asyncio.wait_for(world.processor.arrived.wait(), 10)
    await asyncio.sleep(0.3)  # every other call has met the one in flight by now
    world.processor.gate.set()
    answers = await asyncio.gather(*calls, return_exceptions=True)
    succeeded = [a for a in answers if isinstance(a, pay.ChargeOutcome) and a.status == "succeeded"]
    refused = [a for a in answers if isinstance(a, FailedPrecondition)]
    assert len(succeeded) + len(refused) == 6, answers
    assert len(succeeded) >= 1 and {r.reason for r in refused} <= {"CONCURRENT_ATTEMPT"}
    assert len({a.provider_payment_ref for a in succeeded}) == 1
    assert len(world.processor.succeeded(world.merchant)) == 1
    assert len(set(world.processor.charge_calls)) == 1
    assert [row.status for row in await world.attempts(invoice)] == ["succeeded"]


async def test_concurrent_calls_of_one_key_send_one_charge(world: World) -> None:
    customer = await world.customer()
    await world.save_card(customer)
    invoice = world.invoice()
    world.processor.gate = asyncio.Event()
    key = f"{invoice}:auto:0"
    calls = [
        asyncio.ensure_future(world.payments.ChargeInvoice(world.charge(invoice, customer, key, trigger="automatic"), metadata=world.md()))
        for _ in range(5)
    ]
    await asyncio.wait_for(world.processor.arrived.wait(), 10)
    await asyncio.sleep(0.2)
    world.processor.gate.set()
    answers = await asyncio.gather(*calls)
    assert {a.status for a in answers} <= {"succeeded", "processing"} and "succeeded" in {a.status for a in answers}
    assert world.processor.charge_calls == [key]
    assert len(world.processor.succeeded(world.merchant)) == 1


async def test_a_customer_without_a_saved_method_is_not_charged(world: World) -> None:
    customer = await world.customer()
    invoice = world.invoice()
    answer = await world.payments.ChargeInvoice(
        world.charge(invoice, customer, f"{invoice}:auto:0", trigger="automatic"), metadata=world.md()
    )
    assert answer.status == "no_payment_method"
    assert world.processor.charge_calls == [] and await world.attempts(invoice) == []


async def test_the_newest_saved_method_is_charged(world: World) -> None:
    customer = await world.customer()
    await world.save_card(customer)
    await world.save_card(customer, DECLINE)
    invoice = world.invoice()
    answer = await world.payments.ChargeInvoice(world.charge(invoice, customer, f"{invoice}:retry:1"), metadata=world.md())
    assert (answer.status, answer.failure_code, answer.decline_code) == ("failed", "card_declined", "generic_decline")


async def test_automatic_failures_carry_the_dunning_schedule_and_are_reported(world: World) -> None:
    customer = await world.customer()
    await world.save_card(customer, INSUFFICIENT)
    invoice = world.invoice()

    async def attempt(n: int) -> pay.ChargeOutcome:
        request = world.charge(invoice, customer, f"{invoice}:auto:{n}", trigger="automatic", attempt_number=n)
        request.first_attempt_at.CopyFrom(to_timestamp(ISSUED_AT))
        request.effective_time.CopyFrom(to_timestamp(ISSUED_AT + timedelta(days=[0, 3, 5, 7][n])))
        outcome: pay.ChargeOutcome = await world.payments.ChargeInvoice(request, metadata=world.md())
        return outcome

    answers = [await attempt(n) for n in range(4)]
    assert [a.status for a in answers] == ["failed"] * 4
    assert {a.failure_code for a in answers} == {"insufficient_funds"}
    assert [from_timestamp(a.next_attempt_at) for a in answers[:3]] == [ISSUED_AT + timedelta(days=d) for d in (3, 5, 7)]
    assert not answers[3].HasField("next_attempt_at") and answers[3].after_final_failure == "keep_active"
    assert world.invoicing.reported(invoice) == [(f"{invoice}:auto:{n}", "failed") for n in range(4)]
    assert {r.failure_code for r in world.invoicing.reports} == {"insufficient_funds"}
    # a repeat answers the same, from the attempt
    again = await attempt(1)
    assert from_timestamp(again.next_attempt_at) == ISSUED_AT + timedelta(days=5)
    assert len(world.processor.charge_calls) == 4

    # the merchant's own schedule and policy
    await world.payments.UpdatePaymentSettings(
        pay.UpdatePaymentSettingsRequest(merchant_id=world.merchant, retry_schedule_days=[1], after_final_failure="terminate"),
        metadata=world.md(),
    )
    other = world.invoice()
    request = world.charge(other, customer, f"{other}:auto:0", trigger="automatic", attempt_number=0)
    request.effective_time.CopyFrom(to_timestamp(ISSUED_AT))
    first = await world.payments.ChargeInvoice(request, metadata=world.md())
    assert from_timestamp(first.next_attempt_at) == ISSUED_AT + timedelta(days=1)
    request = world.charge(other, customer, f"{other}:auto:1", trigger="automatic", attempt_number=1)
    request.effective_time.CopyFrom(to_timestamp(ISSUED_AT + timedelta(days=1)))
    last = await world.payments.ChargeInvoice(request, metadata=world.md())  # first_attempt_at from the first attempt
    assert not last.HasField("next_attempt_at") and last.after_final_failure == "terminate"


async def test_a_timeout_is_processing_until_the_janitor_finds_the_charge(world: World) -> None:
    customer = await world.customer()
    await world.save_card(customer, SLOW)
    invoice = world.invoice()
    key = f"{invoice}:auto:0"
    answer = await world.payments.ChargeInvoice(world.charge(invoice, customer, key, trigger="automatic"), metadata=world.md())
    assert answer.status == "processing"
    (row,) = await world.attempts(invoice)
    assert row.status == "processing" and row.reported_at is None
    assert world.invoicing.reported(invoice) == []
    # still processing at the processor: the janitor asks and leaves it
    await asyncio.sleep(1.0)
    assert [r.status for r in await world.attempts(invoice)] == ["processing"]
    world.processor.finish(world.merchant, key)

    async def status() -> tuple[str, bool]:
        (found,) = await world.attempts(invoice)
        return found.status, found.reported_at is not None

    assert await eventually_async(status, ("succeeded", True)) == ("succeeded", True)
    assert world.invoicing.reported(invoice) == [(key, "succeeded")]
    again = await world.payments.ChargeInvoice(world.charge(invoice, customer, key, trigger="automatic"), metadata=world.md())
    assert again.status == "succeeded"
    assert world.processor.charge_calls == [key]


async def test_a_lost_answer_is_found_by_its_key(world: World) -> None:
    customer = await world.customer()
    await world.save_card(customer, LOST)
    invoice = world.invoice()
    key = f"{invoice}:retry:1"
    answer = await world.payments.ChargeInvoice(world.charge(invoice, customer, key), metadata=world.md())
    assert answer.status == "processing"
    # the caller asks again (the timeline 1 h later): the look-up by key answers
    again = await world.payments.ChargeInvoice(world.charge(invoice, customer, key), metadata=world.md())
    assert again.status == "succeeded"
    assert world.processor.charge_calls == [key] and len(world.processor.succeeded(world.merchant)) == 1
    assert world.invoicing.reported(invoice) == [(key, "succeeded")]


async def _write_sending(world: World, invoice: str, customer: str, key: str, *, age: timedelta) -> None:
    """An attempt committed as sending by a process that died before calling the processor."""
    assert world.host.runtime is not None
    method = (await world.rows(store.payment_methods, customer_id=customer))[0]
    sent = datetime.now(UTC) - age
    attempt = ChargeAttempt.begin(
        merchant_id=world.merchant, attempt_key=key, payable_type=PayableType.INVOICE, payable_id=invoice, session_id=None,
        customer_id=customer, subscription_id=None, amount=Decimal("49.00"), currency="USD",
        source_kind="method", source_ref=method.processor_ref, payment_method_id=method.id, trigger=Trigger.AUTOMATIC,
        attempt_number=0, first_attempt_at=None, effective_time=None, submit_nonce=None, now=sent,
    )  # fmt: skip
    values = {column.name: getattr(attempt, column.name) for column in store.charge_attempts.c}
    async with world.host.runtime.db.engine.begin() as conn:
        await conn.execute(store.charge_attempts.insert().values(**values))


async def test_an_attempt_never_sent_fails_not_sent_and_frees_the_invoice(world: World) -> None:
    customer = await world.customer()
    await world.save_card(customer)
    invoice = world.invoice()
    await _write_sending(world, invoice, customer, f"{invoice}:auto:0", age=timedelta(seconds=1))
    # in flight: another attempt of the invoice is refused meanwhile
    with pytest.raises(FailedPrecondition) as refused:
        await world.payments.ChargeInvoice(world.charge(invoice, customer, f"{invoice}:retry:1"), metadata=world.md())
    assert refused.value.reason == "CONCURRENT_ATTEMPT"

    async def statuses() -> list[tuple[str, str | None]]:
        return [(r.status, r.failure_code) for r in await world.attempts(invoice)]

    expected: list[tuple[str, str | None]] = [("failed", "not_sent")]
    assert await eventually_async(statuses, expected) == expected

    async def reported() -> list[tuple[str, str]]:
        return world.invoicing.reported(invoice)

    assert await eventually_async(reported, [(f"{invoice}:auto:0", "failed")]) == [(f"{invoice}:auto:0", "failed")]
    assert world.processor.charge_calls == []
    retried = await world.payments.ChargeInvoice(world.charge(invoice, customer, f"{invoice}:retry:1"), metadata=world.md())
    assert retried.status == "succeeded"


async def test_a_repeat_sends_an_attempt_the_processor_never_received(world: World) -> None:
    customer = await world.customer()
    await world.save_card(customer)
    invoice = world.invoice()
    key = f"{invoice}:auto:0"
    await _write_sending(world, invoice, customer, key, age=timedelta(seconds=1))
    answer = await world.payments.ChargeInvoice(world.charge(invoice, customer, key, trigger="automatic"), metadata=world.md())
    assert answer.status == "succeeded"
    assert world.processor.charge_calls == [key]


async def test_an_unreachable_processor_charges_nothing_and_keeps_nothing(world: World) -> None:
    customer = await world.customer()
    await world.save_card(customer, UNREACHABLE)
    invoice = world.invoice()
    with pytest.raises(Unavailable) as down:
        await world.payments.ChargeInvoice(world.charge(invoice, customer, f"{invoice}:retry:1"), metadata=world.md())
    assert down.value.reason == "PROVIDER_UNAVAILABLE"
    assert await world.attempts(invoice) == []


async def test_outcomes_invoicing_could_not_hear_are_told_by_the_janitor(world: World) -> None:
    customer = await world.customer()
    await world.save_card(customer)
    invoice = world.invoice()
    world.invoicing.fail_reports = True
    answer = await world.payments.ChargeInvoice(world.charge(invoice, customer, f"{invoice}:retry:1"), metadata=world.md())
    assert answer.status == "succeeded"
    (row,) = await world.attempts(invoice)
    assert row.reported_at is None
    world.invoicing.fail_reports = False

    async def reported() -> bool:
        (found,) = await world.attempts(invoice)
        return found.reported_at is not None

    assert await eventually_async(reported, True) is True
    assert world.invoicing.reported(invoice) == [(f"{invoice}:retry:1", "succeeded")]


async def test_another_merchant_sees_none_of_it(world: World) -> None:
    customer = await world.customer()
    await world.save_card(customer)
    invoice = world.invoice()
    await world.payments.ChargeInvoice(world.charge(invoice, customer, f"{invoice}:retry:1"), metadata=world.md())
    other = "org_" + "x" * 12
    answer = await world.payments.ChargeInvoice(world.charge(invoice, customer, f"{invoice}:retry:1"), metadata=world.md(other))
    assert answer.status == "no_payment_method"  # the customer's methods are the first merchant's
    with pytest.raises(NotFound) as raised:
        await world.payments.ListCustomerPaymentMethods(pay.ListCustomerPaymentMethodsRequest(id=customer), metadata=world.md(other))
    assert raised.value.reason == "CUSTOMER_NOT_FOUND" and raised.value.field == "id"


async def test_a_slow_charge_that_ends_declined_is_recorded_and_told_as_failed(world: World) -> None:
    customer = await world.customer()
    await world.save_card(customer, SLOW)
    invoice = world.invoice()
    key = f"{invoice}:retry:1"
    answer = await world.payments.ChargeInvoice(world.charge(invoice, customer, key), metadata=world.md())
    assert answer.status == "processing"
    world.processor.finish(world.merchant, key, ChargeStatus.FAILED)

    async def status() -> str:
        (found,) = await world.attempts(invoice)
        return str(found.status)

    assert await eventually_async(status, "failed") == "failed"

    async def reported() -> list[tuple[str, str]]:
        return world.invoicing.reported(invoice)

    assert await eventually_async(reported, [(key, "failed")]) == [(key, "failed")]
