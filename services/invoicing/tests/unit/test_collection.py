"""Collecting invoices through the payment service, on fakes (domain/payments.py): checkout
sessions at issue (one OpenSessions call per step or batch, before the commit), hosted_link,
retryPayment's outcomes and their REST shapes, RecordChargeOutcome (idempotent by attempt
key, never un-pays), refunds and their credit notes against the rounding carry."""

from __future__ import annotations

from datetime import timedelta
from decimal import Decimal
from typing import Any

import pytest
from paygentic_sdk import errors as sdk_errors
from paygentic_sdk import models

from libs.core.errors import DomainError, FailedPrecondition, NotFound, Unavailable, Unprocessable, http_status
from libs.core.money import round_half_up
from services.gateway.restjson import message_to_json
from services.invoicing import mapping
from services.invoicing.domain import batches, payments, use_cases
from services.invoicing.domain.calculation import Carry
from services.invoicing.domain.commands import AdHocItem, IssueAdHocInvoice, IssueInvoice, RecordChargeOutcome, RecordPayment
from services.invoicing.domain.model import ChangeKind, Invoice, InvoiceChanged, Status
from services.invoicing.domain.ports import ChargeResult
from services.invoicing.domain.use_cases import Sources
from services.invoicing.tests.fakes import FakeEntitlements
from services.invoicing.tests.unit.world import METRIC, MONTHS, World, terms

USD = 1_000_000_000
CENT = 10_000_000


def _events(world: World, invoice_id: str) -> list[ChangeKind]:
    return [e.kind for e in world.store.outbox if isinstance(e, InvoiceChanged) and e.invoice_id == invoice_id]


def _carry(world: World, customer_id: str = "cus_1") -> Carry:
    return world.store.carry.get(("org_a", customer_id, "USD"), Carry(Decimal(0), 0))


async def _outcome(world: World, invoice_id: str, status: str, key: str, **values: Any) -> Invoice:
    command = RecordChargeOutcome(invoice_id=invoice_id, status=status, attempt_key=key, **values)
    return await payments.record_charge_outcome(world.uow, world.sources, world.clock, "org_a", command)


async def _retry(world: World, invoice_id: str) -> payments.RetryResult:
    return await payments.retry_payment(world.uow, world.sources, world.clock, "org_a", invoice_id)


async def _refund(world: World, invoice_id: str, reason: str | None = None) -> Any:
    async with world.uow() as uow:
        return await payments.create_refund(uow, world.sources, "org_a", world.clock.now(), invoice_id, reason)


async def _void(world: World, invoice_id: str, refund_id: str) -> Any:
    async with world.uow() as uow:
        return await payments.void_refund(uow, "org_a", world.clock.now(), invoice_id, refund_id, "issued by mistake")


async def _pay_out_of_band(world: World, invoice_id: str) -> Invoice:
    async with world.uow() as uow:
        return await use_cases.record_payment(uow, world.sources, "org_a", world.clock.now(), RecordPayment(invoice_id, "out_of_band"))


# --- sessions at issue ---------------------------------------------------------------------


async def test_invoice_zero_gets_its_checkout_at_issue_with_the_subscriptions_terms() -> None:
    world = World()
    t = terms(
        auto_charge=True,
        success_redirect_url="https://shop.example/ok",
        failure_redirect_url="https://shop.example/ko",
        session_expiry_minutes=30,
        default_tax_rate="10",
    )
    issued = await world.run(0, t)
    ((asked,),) = world.payments.calls  # one call, one session
    assert (asked.entity_type, asked.entity_id, asked.customer_id, asked.subscription_id) == ("subscription", issued.id, "cus_1", "sub_1")
    assert (asked.amount, asked.currency) == (issued.grand_total, "USD") and issued.grand_total == 5390 * CENT
    assert asked.label == f"Invoice {issued.invoice_number}"
    assert [(line.description, line.amount) for line in asked.lines] == [("Base fee", 49 * USD), ("Tax", 490 * CENT)]
    assert (asked.success_redirect_url, asked.failure_redirect_url) == ("https://shop.example/ok", "https://shop.example/ko")
    assert asked.expires_at == world.clock.now() + timedelta(minutes=30)  # wall time
    assert asked.save_payment_method is True and asked.replace is False
    session = world.payments.sessions[("subscription", issued.id)]
    stored = world.store.invoices[issued.id]
    assert (stored.payment_session_id, stored.payment_url) == (session.id, session.url)
    rendered = message_to_json(mapping.invoice(stored))
    assert (rendered["paymentUrl"], rendered["paymentSessionId"]) == (session.url, session.id)
    models.Invoice.model_validate(rendered)
    # a repeat of the step answers the issued invoice and opens nothing
    assert (await world.issue(0, t)).id == issued.id and len(world.payments.calls) == 1


async def test_a_later_invoice_links_for_30_days_without_redirects_and_a_paid_one_shows_no_url() -> None:
    world = World()
    await world.run(0)
    world.meter.set(METRIC, "cus_1", MONTHS[0], MONTHS[1], "250")
    first = await world.run(1, terms(success_redirect_url="https://shop.example/ok"))
    asked = world.payments.calls[-1][0]
    assert (asked.entity_type, asked.expires_at) == ("invoice", world.clock.now() + timedelta(days=30))
    assert asked.success_redirect_url is None and asked.save_payment_method is False  # Invoice 0's checkout only
    assert [(line.description, line.amount, line.quantity) for line in asked.lines] == [
        ("Base fee", 49 * USD, Decimal(1)),
        ("Tokens", 250 * CENT, Decimal(250)),
    ]
    paid = await _pay_out_of_band(world, first.id)
    rendered = message_to_json(mapping.invoice(paid))
    assert rendered["paymentUrl"] is None and rendered["paymentSessionId"] == paid.payment_session_id


async def test_nothing_owed_opens_no_session() -> None:
    world = World()
    world.catalog.default = []
    issued = await world.run(0)
    assert issued.status == Status.PAID and world.payments.calls == [] and issued.payment_url is None


async def test_a_payment_service_down_fails_the_step_retryably_and_takes_no_number() -> None:
    world = World()
    await world.open(0)
    world.payments.fail = True
    with pytest.raises(Unavailable) as caught:
        await world.issue(0)
    assert caught.value.retryable
    (zero,) = world.store.invoices.values()
    assert zero.status == Status.ACTIVE and world.store.counters == {} and world.store.lines == {}
    world.payments.fail = False
    issued = await world.issue(0)  # the engine's retry
    assert issued.invoice_number == "INV-2026-000001" and issued.payment_session_id is not None


async def test_a_refusal_of_the_payment_service_is_unavailable_too() -> None:
    world = World()
    await world.open(0)

    async def refuse(merchant_id: str, requests: Any) -> Any:
        raise FailedPrecondition("CUSTOMER_UNKNOWN", "no such customer")

    world.payments.open_sessions = refuse  # type: ignore[method-assign]
    with pytest.raises(Unavailable) as caught:
        await world.issue(0)
    assert caught.value.reason == "PAYMENT_SESSIONS_FAILED" and caught.value.metadata["payment_reason"] == "CUSTOMER_UNKNOWN"


async def test_a_batch_opens_every_session_in_one_call_and_fails_whole_when_it_cannot() -> None:
    world = World()
    subs = [f"sub_{i}" for i in range(3)]
    for s in subs:
        await world.open(0, terms(subscription_id=s))
    commands = [IssueInvoice(terms(subscription_id=s), 0, MONTHS[0]) for s in subs]
    world.payments.fail = True
    failed = await batches.issue_invoices(world.uow, world.sources, world.policy, world.clock, "org_a", commands)
    assert all(r.error is not None and r.error.retryable for r in failed)
    assert {i.status for i in world.store.invoices.values()} == {Status.ACTIVE} and world.store.counters == {}
    world.payments.fail = False
    results = await batches.issue_invoices(world.uow, world.sources, world.policy, world.clock, "org_a", commands)
    assert [r.invoice.status for r in results if r.invoice is not None] == [Status.ISSUED] * 3
    (call,) = world.payments.calls
    assert sorted(r.entity_id for r in call) == sorted(r.invoice.id for r in results if r.invoice is not None)
    assert all(world.store.invoices[r.entity_id].payment_url for r in call)


async def test_without_a_payment_service_invoices_are_issued_without_a_checkout() -> None:
    world = World()
    sources = Sources(world.catalog, world.meter, world.subscriptions)
    await world.open(0)
    issued = await use_cases.issue_invoice(world.uow, sources, world.policy, world.clock, "org_a", IssueInvoice(terms(), 0, MONTHS[0]))
    assert issued.status == Status.ISSUED and issued.payment_url is None
    with pytest.raises(Unavailable) as caught:
        await payments.retry_payment(world.uow, sources, world.clock, "org_a", issued.id)
    assert caught.value.reason == "PAYMENT_NOT_CONFIGURED"


async def test_a_grant_purchase_opens_a_topup_session_until_its_expiry() -> None:
    world = World()
    expires = MONTHS[3]
    command = IssueAdHocInvoice(
        customer_id="cus_1",
        currency="USD",
        lines=[AdHocItem("Tokens: 5000 units", "5000", "12.00")],
        purpose="grant_purchase",
        reference="gpur_1",
        subscription_id=None,
        effective_time=MONTHS[2],
        success_url="https://shop.example/ok",
        cancel_url="https://shop.example/cancel",
        payment_expires_at=expires,
    )
    async with world.uow() as uow:
        issued = await use_cases.issue_ad_hoc(uow, world.sources, "org_a", world.clock.now(), command)
    ((asked,),) = world.payments.calls
    assert (asked.entity_type, asked.subscription_id, asked.amount, asked.expires_at) == ("topup", None, 12 * USD, expires)
    assert (asked.success_redirect_url, asked.failure_redirect_url) == ("https://shop.example/ok", "https://shop.example/cancel")
    assert world.store.invoices[issued.id].payment_session_id == world.payments.sessions[("topup", issued.id)].id


# --- hosted_link -------------------------------------------------------------------------


async def test_hosted_link_replaces_the_session_and_only_for_a_payable_invoice() -> None:
    world = World()
    issued = await world.run(0)
    async with world.uow() as uow:
        linked, session = await payments.hosted_link(uow, world.sources, "org_a", world.clock.now(), issued.id)
    asked = world.payments.calls[-1][0]
    assert asked.replace is True and asked.expires_at == world.clock.now() + timedelta(days=30)
    assert session.id != issued.payment_session_id and linked.status == Status.ISSUED
    assert (world.store.invoices[issued.id].payment_session_id, world.store.invoices[issued.id].payment_url) == (session.id, session.url)
    await _pay_out_of_band(world, issued.id)
    with pytest.raises(FailedPrecondition) as paid:
        async with world.uow() as uow:
            await payments.hosted_link(uow, world.sources, "org_a", world.clock.now(), issued.id)
    assert paid.value.reason == "INVOICE_ALREADY_PAID" and http_status(paid.value.code, paid.value.reason) == 409
    active = await world.open(1)
    with pytest.raises(Unprocessable) as not_linkable:
        async with world.uow() as uow:
            await payments.hosted_link(uow, world.sources, "org_a", world.clock.now(), active.id)
    assert not_linkable.value.reason == "INVOICE_NOT_LINKABLE_STATUS"


# --- RecordChargeOutcome -------------------------------------------------------------------


async def test_a_succeeded_outcome_pays_once_and_activates_invoice_zero() -> None:
    world = World()
    issued = await world.run(0)
    at = MONTHS[0] + timedelta(minutes=3)
    paid = await _outcome(world, issued.id, "succeeded", f"{issued.id}:auto:0", amount="49.00", effective_time=at)
    assert (paid.status, paid.paid_amount, paid.paid_at, paid.unpaid_amount) == (Status.PAID, 49 * USD, at, 0)
    assert world.subscriptions.paid == [("sub_1", issued.id, 0)]
    again = await _outcome(world, issued.id, "succeeded", f"{issued.id}:auto:0", amount="49.00", effective_time=at)
    assert again.status == Status.PAID and world.subscriptions.paid == [("sub_1", issued.id, 0)]  # told once
    # another attempt's success (a second tab) and a late failure change nothing
    await _outcome(world, issued.id, "succeeded", "ps_x:1", amount="49.00")
    late = await _outcome(world, issued.id, "failed", f"{issued.id}:retry:1", failure_code="card_declined")
    assert (late.status, late.failure_reason, late.paid_at) == (Status.PAID, None, at)
    assert _events(world, issued.id) == [ChangeKind.ISSUED, ChangeKind.PAID]
    assert {key for key, _ in world.store.outcomes} == {f"{issued.id}:auto:0", "ps_x:1", f"{issued.id}:retry:1"}


async def test_the_invoice_names_the_attempt_that_paid_it_and_a_duplicate_success_sees_another() -> None:
    """paid_by_attempt_key: the payment service refunds a charge that succeeds for an
    invoice some other attempt (or an out-of-band payment) paid."""
    world = World()
    issued = await world.run(1)
    assert message_to_json(mapping.invoice(issued)).get("paidByAttemptKey") is None  # unpaid
    key = f"{issued.id}:auto:0"
    paid = await _outcome(world, issued.id, "succeeded", key, amount=mapping.money(issued.grand_total, "USD"))
    assert paid.paid_by_attempt_key == key == world.store.invoices[issued.id].paid_by_attempt_key
    assert mapping.invoice(paid).paid_by_attempt_key == key
    assert (await _outcome(world, issued.id, "succeeded", key)).paid_by_attempt_key == key  # a repeat: the same
    duplicate = await _outcome(world, issued.id, "succeeded", f"{issued.id}:retry:1")  # a second charge succeeded
    assert duplicate.paid_by_attempt_key == key and mapping.invoice(duplicate).paid_by_attempt_key == key


async def test_an_out_of_band_payment_names_no_attempt_so_a_late_charge_is_seen_as_a_duplicate() -> None:
    """The double-money race: the invoice is paid out of band while a charge attempt is in
    flight; that charge's success, reported after, answers the invoice with no
    paid_by_attempt_key (the payment service refunds it)."""
    world = World()
    issued = await world.run(1)
    paid = await _pay_out_of_band(world, issued.id)
    assert paid.paid_by_attempt_key is None
    assert not mapping.invoice(paid).HasField("paid_by_attempt_key")
    late = await _outcome(world, issued.id, "succeeded", f"{issued.id}:auto:0")
    assert (late.status, late.paid_by_attempt_key) == (Status.PAID, None)
    assert not mapping.invoice(late).HasField("paid_by_attempt_key")
    assert _events(world, issued.id) == [ChangeKind.ISSUED, ChangeKind.PAID]  # paid once


async def test_payment_in_flight_is_not_claimed_false() -> None:
    """Invoicing keeps no charge attempts: whether one is in flight is unknown, so
    paymentInFlight is omitted rather than false."""
    world = World()
    issued = await world.run(1)
    assert not mapping.invoice(issued).HasField("payment_in_flight")
    failed = await _outcome(world, issued.id, "failed", f"{issued.id}:auto:0", failure_code="card_declined")
    assert not mapping.invoice(failed).HasField("payment_in_flight")
    assert message_to_json(mapping.invoice(failed)).get("paymentInFlight") is None


async def test_a_failed_outcome_marks_payment_failed_and_a_later_success_pays() -> None:
    world = World()
    issued = await world.run(1)
    failed = await _outcome(world, issued.id, "failed", f"{issued.id}:auto:0", failure_code="insufficient_funds")
    assert (failed.status, failed.failure_reason) == (Status.PAYMENT_FAILED, "insufficient_funds")
    assert message_to_json(mapping.invoice(failed))["failureReason"] == "insufficient_funds"
    paid = await _outcome(world, issued.id, "succeeded", f"{issued.id}:auto:1")
    assert (paid.status, paid.paid_amount, paid.paid_at, paid.failure_reason) == (Status.PAID, issued.grand_total, world.clock.now(), None)
    assert _events(world, issued.id) == [ChangeKind.ISSUED, ChangeKind.PAYMENT_FAILED, ChangeKind.PAID]
    assert world.subscriptions.paid == []  # only Invoice 0 activates


async def test_a_failed_tell_records_nothing_so_the_report_can_come_again() -> None:
    world = World()
    issued = await world.run(0)
    world.subscriptions.fail = True
    with pytest.raises(Unavailable):
        await _outcome(world, issued.id, "succeeded", "k1")
    assert world.store.invoices[issued.id].status == Status.ISSUED and world.store.outcomes == {}
    world.subscriptions.fail = False
    assert (await _outcome(world, issued.id, "succeeded", "k1")).status == Status.PAID


async def test_a_paid_grant_purchase_mints_its_grant_now_in_the_customers_time() -> None:
    world = World()
    entitlements = FakeEntitlements()
    world_sources = Sources(world.catalog, world.meter, world.subscriptions, entitlements, world.payments)
    command = IssueAdHocInvoice("cus_1", "USD", [AdHocItem("Tokens", "10", "5.00")], "grant_purchase", "gpur_2", None, MONTHS[2])
    async with world.uow() as uow:
        issued = await use_cases.issue_ad_hoc(uow, world_sources, "org_a", world.clock.now(), command)
    at = MONTHS[2] + timedelta(hours=1)
    outcome = RecordChargeOutcome(issued.id, "succeeded", "ps_y:0", "5.00", effective_time=at)
    paid = await payments.record_charge_outcome(world.uow, world_sources, world.clock, "org_a", outcome)
    assert paid.paid_at == at
    # the report's time may be wall time: the entitlement service tells the customer's "now"
    assert entitlements.paid == [(issued.id, None)]


async def test_an_outcome_names_what_is_wrong() -> None:
    world = World()
    issued = await world.run(0)
    with pytest.raises(NotFound) as missing:
        await _outcome(world, "inv_nope", "succeeded", "k")
    assert missing.value.field == "invoiceId"
    with pytest.raises(DomainError) as bad_amount:
        await _outcome(world, issued.id, "succeeded", "k", amount="-1")
    assert bad_amount.value.field == "amount"
    with pytest.raises(DomainError) as bad_status:
        await _outcome(world, issued.id, "refunded", "k")
    assert bad_status.value.field == "status"


# --- retryPayment ----------------------------------------------------------------------------


async def test_a_retry_that_succeeds_pays_under_a_fresh_key_each_time() -> None:
    world = World()
    issued = await world.run(1)
    world.payments.charge = lambda r: ChargeResult(
        "failed", r.attempt_key, "ch_1", "card_declined", "Your card was declined.", "generic_decline"
    )
    with pytest.raises(FailedPrecondition) as declined:
        await _retry(world, issued.id)
    err = declined.value
    assert (err.reason, http_status(err.code, err.reason)) == ("PAYMENT_DECLINED", 402)
    assert world.store.invoices[issued.id].status == Status.PAYMENT_FAILED
    assert world.store.invoices[issued.id].failure_reason == "card_declined"
    world.payments.charge = lambda r: ChargeResult("succeeded", r.attempt_key, "ch_2")
    result = await _retry(world, issued.id)
    assert (result.processing, result.payment_intent_id) == (False, "ch_2")
    assert [c.attempt_key for c in world.payments.charges] == [f"{issued.id}:retry:1", f"{issued.id}:retry:2"]
    first = world.payments.charges[0]
    assert (first.amount, first.currency, first.customer_id, first.trigger) == (issued.grand_total, "USD", "cus_1", "manual")
    assert world.store.invoices[issued.id].status == Status.PAID
    # a retry of the paid invoice answers the charge that paid it, and charges nothing
    again = await _retry(world, issued.id)
    assert (again.processing, again.payment_intent_id) == (False, "ch_2")
    assert len(world.payments.charges) == 2  # never charged again


def _parses_as_the_sdks_retry_error(body: dict[str, Any]) -> sdk_errors.RetryPaymentResponseErrorData:
    return sdk_errors.RetryPaymentResponseErrorData.model_validate(body)


@pytest.mark.parametrize(
    ("answer", "error", "reason", "status", "code"),
    [
        (ChargeResult("failed", "k", "ch_9", "insufficient_funds", "Insufficient funds.", "insufficient_funds"), None, "PAYMENT_DECLINED", 402, "insufficient_funds"),
        (ChargeResult("no_payment_method", "k"), None, "NO_PAYMENT_METHOD", 422, "no_payment_method"),
        (None, FailedPrecondition("CONCURRENT_ATTEMPT", "in flight"), "CONCURRENT_ATTEMPT", 409, "concurrent_attempt"),
        (None, Unavailable("PROVIDER_UNAVAILABLE", "sandbox refused the connection"), "PROVIDER_UNAVAILABLE", 502, "provider_unavailable"),
        (ChargeResult("failed", "k", None, "provider_unavailable"), None, "PROVIDER_UNAVAILABLE", 502, "provider_unavailable"),
    ],
)  # fmt: skip
async def test_retry_failures_answer_the_references_statuses_in_the_sdks_shape(
    answer: ChargeResult | None, error: Exception | None, reason: str, status: int, code: str
) -> None:
    world = World()
    issued = await world.run(1)
    world.payments.charge_error = error
    if answer is not None:
        world.payments.charge = lambda r: answer
    with pytest.raises(DomainError) as caught:
        await _retry(world, issued.id)
    err = caught.value
    assert (err.reason, http_status(err.code, err.reason)) == (reason, status)
    parsed = _parses_as_the_sdks_retry_error(mapping.retry_failure_body(err, issued.id))
    assert (parsed.object, parsed.success, parsed.invoice_id) == ("retry_payment_result", False, issued.id)
    assert parsed.error is not None and parsed.error.code == code
    if reason == "PAYMENT_DECLINED":
        assert (parsed.payment_intent_id, parsed.error.decline_code, parsed.error.message) == (
            "ch_9",
            "insufficient_funds",
            "Insufficient funds.",
        )
        assert world.store.invoices[issued.id].status == Status.PAYMENT_FAILED
    else:
        assert world.store.invoices[issued.id].status == Status.ISSUED  # nothing was charged


async def test_a_processing_retry_answers_202_and_leaves_the_invoice_unpaid() -> None:
    world = World()
    issued = await world.run(1)
    world.payments.charge = lambda r: ChargeResult("processing", r.attempt_key, "ch_slow")
    result = await _retry(world, issued.id)
    assert result.processing and world.store.invoices[issued.id].status == Status.ISSUED
    rendered = message_to_json(mapping.retry_response(result))
    assert rendered["processing"] is True and rendered["error"]["code"] == "processing"
    parsed = models.RetryPaymentResponse.model_validate(rendered)
    assert parsed.success is False and parsed.payment_intent_id == "ch_slow"
    # the outcome arrives later, reported by the payment service under the same key
    await _outcome(world, issued.id, "succeeded", f"{issued.id}:retry:1")
    assert world.store.invoices[issued.id].status == Status.PAID
    ok = models.RetryPaymentResponse.model_validate(message_to_json(mapping.retry_response(payments.RetryResult(issued.id, False, "ch_1"))))
    assert ok.success is True and ok.error is None


async def test_only_an_issued_or_failed_invoice_is_retried() -> None:
    world = World()
    active = await world.open(1)
    with pytest.raises(Unprocessable) as caught:
        await _retry(world, active.id)
    assert caught.value.reason == "INVOICE_NOT_LINKABLE_STATUS" and world.payments.charges == []
    assert mapping.retry_failure_body(caught.value, active.id)["error"]["code"] == "INVOICE_NOT_LINKABLE_STATUS"


async def test_the_payment_services_own_refusals_pass_through() -> None:
    world = World()
    issued = await world.run(1)
    world.payments.charge_error = NotFound("customer", "cus_1")
    with pytest.raises(NotFound):
        await _retry(world, issued.id)
    assert world.store.invoices[issued.id].status == Status.ISSUED


# --- refunds -----------------------------------------------------------------------------


async def _paid_invoice(world: World) -> Invoice:
    world.meter.set(METRIC, "cus_1", MONTHS[0], MONTHS[1], "0.4")  # 0.004 USD of usage: a rounding carry
    t = terms(default_tax_rate="10")
    await world.run(0, t)
    issued = await world.run(1, t)
    return await _outcome(world, issued.id, "succeeded", f"{issued.id}:auto:0")


async def test_a_paid_invoice_is_refunded_once_and_a_second_refund_is_refused() -> None:
    world = World()
    paid = await _paid_invoice(world)
    before = _carry(world)
    note = await _refund(world, paid.id, "customer asked")
    assert (note.amount, note.tax_amount, note.total) == (paid.subtotal, paid.total_tax, paid.grand_total)
    assert (note.kind, note.status, note.refunded, note.id[:4]) == ("refund", "ISSUED", True, "crn_")
    assert world.payments.refunds == [(paid.id, note.id, paid.paid_amount)]
    assert world.store.invoices[paid.id].status == Status.PAID  # stays PAID
    after = _carry(world)
    # tax exclusive: the carry counts the net (priced amounts); E and B move alike
    assert (after.exact_total, after.billed_total) == (before.exact_total - paid.subtotal, before.billed_total - paid.subtotal)
    assert after.billed_total == round_half_up(after.exact_total, "USD")
    with pytest.raises(FailedPrecondition) as twice:
        await _refund(world, paid.id)
    assert (twice.value.reason, http_status(twice.value.code, twice.value.reason)) == ("INVOICE_ALREADY_REFUNDED", 409)
    assert len(world.payments.refunds) == 1
    rendered = message_to_json(mapping.refund(note))
    parsed = models.InvoiceRefund.model_validate(rendered)
    assert (parsed.amount, parsed.tax_amount, parsed.total, parsed.status, parsed.reason) == (
        "49.00",
        "4.90",
        "53.90",
        "ISSUED",
        "customer asked",
    )
    assert rendered["providerRefundRef"] == "re_" + note.id.removeprefix("crn_")
    assert _events(world, paid.id)[-1] == ChangeKind.REFUNDED


async def _paid_out_of_band_invoice(world: World) -> Invoice:
    world.meter.set(METRIC, "cus_1", MONTHS[0], MONTHS[1], "0.4")  # a rounding carry, as _paid_invoice
    t = terms(default_tax_rate="10")
    await world.run(0, t)
    issued = await world.run(1, t)
    world.payments.refunded = False  # no charge to refund: the payment service answers refunded false
    return await _pay_out_of_band(world, issued.id)


async def test_voiding_restores_the_carry_is_idempotent_and_allows_a_new_refund() -> None:
    world = World()
    paid = await _paid_out_of_band_invoice(world)
    before = _carry(world)
    note = await _refund(world, paid.id)
    assert (note.refunded, note.provider_refund_ref) == (False, None)  # a credit note only: voidable
    world.clock.advance(timedelta(minutes=5))
    voided = await _void(world, paid.id, note.id)
    assert (voided.status, voided.voided_at, voided.void_reason) == ("VOIDED", world.clock.now(), "issued by mistake")
    assert _carry(world) == before
    again = await _void(world, paid.id, note.id)
    assert again == voided and _carry(world) == before  # idempotent: restored once
    assert _events(world, paid.id)[-2:] == [ChangeKind.REFUNDED, ChangeKind.REFUND_VOIDED]
    second = await _refund(world, paid.id)
    async with world.uow() as uow:
        listed = await payments.list_refunds(uow, "org_a", paid.id)
    assert [(n.id, n.status) for n in listed] == [(note.id, "VOIDED"), (second.id, "ISSUED")]  # oldest first
    parsed = models.InvoiceRefundList.model_validate({"object": "list", "data": [message_to_json(mapping.refund(n)) for n in listed]})
    assert parsed.data[0].voided_at is not None
    with pytest.raises(NotFound) as unknown:
        await _void(world, paid.id, "crn_nope")
    assert unknown.value.field == "refundId"


async def test_a_refund_returned_through_the_processor_cannot_be_voided() -> None:
    """Voiding it would not bring the processor's refund back: the books would say PAID,
    unrefunded, while the money went back (REFUND_SETTLED, 409). A second refund stays
    INVOICE_ALREADY_REFUNDED."""
    world = World()
    paid = await _paid_invoice(world)
    note = await _refund(world, paid.id)
    assert note.refunded and note.provider_refund_ref
    during = _carry(world)
    with pytest.raises(FailedPrecondition) as refused:
        await _void(world, paid.id, note.id)
    err = refused.value
    assert (err.reason, http_status(err.code, err.reason), err.field) == ("REFUND_SETTLED", 409, "refundId")
    assert "returned through the processor" in err.message and "would not bring it back" in err.message
    stored = next(n for n in world.store.credit_notes if n.id == note.id)
    assert (stored.status, stored.voided_at) == ("ISSUED", None) and _carry(world) == during
    assert _events(world, paid.id)[-1] == ChangeKind.REFUNDED  # no REFUND_VOIDED
    with pytest.raises(FailedPrecondition) as twice:
        await _refund(world, paid.id)
    assert (twice.value.reason, http_status(twice.value.code, twice.value.reason)) == ("INVOICE_ALREADY_REFUNDED", 409)
    assert len(world.payments.refunds) == 1  # never refunded twice


async def test_a_payment_service_refusal_of_a_refund_names_the_invoice() -> None:
    world = World()
    paid = await _paid_invoice(world)
    world.payments.refund_error = FailedPrecondition("REFUND_REJECTED", "the processor refused the refund: charge already refunded")
    with pytest.raises(FailedPrecondition) as refused:
        await _refund(world, paid.id)
    err = refused.value
    assert (err.reason, err.field, err.metadata["field"], err.metadata["invoice_id"]) == ("REFUND_REJECTED", "id", "id", paid.id)
    assert paid.id in err.message and "charge already refunded" in err.message
    assert world.store.credit_notes == []  # nothing kept


async def test_later_invoices_round_the_same_after_a_refund() -> None:
    """The carry's rounding of later invoices does not move: a refund's share is whole
    minor units, taken off E and B alike."""

    async def third_invoice(refund: bool) -> Invoice:
        world = World()
        paid = await _paid_invoice(world)
        if refund:
            await _refund(world, paid.id)
        world.meter.set(METRIC, "cus_1", MONTHS[1], MONTHS[2], "0.7")
        return await world.run(2, terms(default_tax_rate="10"))

    plain, refunded = await third_invoice(False), await third_invoice(True)
    assert (plain.subtotal, plain.grand_total) == (refunded.subtotal, refunded.grand_total)


async def test_refunding_needs_a_paid_invoice_with_something_paid() -> None:
    world = World()
    issued = await world.run(1)
    with pytest.raises(FailedPrecondition) as unpaid:
        await _refund(world, issued.id)
    assert unpaid.value.reason == "INVOICE_NOT_PAID" and "ISSUED" in unpaid.value.message
    world.catalog.default = []
    free = await world.run(0, terms(subscription_id="sub_free"))
    with pytest.raises(FailedPrecondition) as nothing:
        await _refund(world, free.id)
    assert nothing.value.reason == "INVOICE_NOTHING_TO_REFUND" and world.payments.refunds == []


async def test_an_out_of_band_payment_is_refunded_as_a_credit_note_only() -> None:
    world = World()
    issued = await world.run(1, terms(tax_behavior="inclusive", default_tax_rate="10"))
    paid = await _pay_out_of_band(world, issued.id)
    before = _carry(world)
    world.payments.refunded = False
    note = await _refund(world, paid.id)
    assert (note.refunded, note.provider_refund_ref) == (False, None)
    # tax inclusive: the carry counts the gross
    assert _carry(world).billed_total == before.billed_total - paid.grand_total
    assert message_to_json(mapping.refund(note))["providerRefundRef"] is None


async def test_a_failed_processor_refund_leaves_nothing() -> None:
    world = World()
    paid = await _paid_invoice(world)
    before = _carry(world)
    world.payments.fail = True
    with pytest.raises(Unavailable):
        await _refund(world, paid.id)
    assert world.store.credit_notes == [] and _carry(world) == before


async def test_a_refunded_grant_purchase_leaves_the_carry_alone() -> None:
    world = World()
    entitlements = FakeEntitlements()
    sources = Sources(world.catalog, world.meter, world.subscriptions, entitlements, world.payments)
    command = IssueAdHocInvoice("cus_1", "USD", [AdHocItem("Tokens", "10", "5.00")], "grant_purchase", "gpur_3", None, MONTHS[2])
    async with world.uow() as uow:
        issued = await use_cases.issue_ad_hoc(uow, sources, "org_a", world.clock.now(), command)
    await payments.record_charge_outcome(world.uow, sources, world.clock, "org_a", RecordChargeOutcome(issued.id, "succeeded", "ps_z:0"))
    async with world.uow() as uow:
        note = await payments.create_refund(uow, sources, "org_a", world.clock.now(), issued.id, None)
    assert note.total == 5 * USD and note.carry_amount == 0 and world.store.carry == {}


async def test_a_retry_of_an_invoice_paid_out_of_band_is_409_and_charges_nothing() -> None:
    world = World()
    issued = await world.run(1)
    await _pay_out_of_band(world, issued.id)
    with pytest.raises(FailedPrecondition) as paid:
        await _retry(world, issued.id)
    assert (paid.value.reason, http_status(paid.value.code, paid.value.reason)) == ("INVOICE_ALREADY_PAID", 409)
    body = mapping.retry_failure_body(paid.value, issued.id)
    assert (body["error"]["code"], body["success"]) == ("INVOICE_ALREADY_PAID", False)
    assert world.payments.charges == []
