"""One-off payments (POST /v0/payments: its bounds, its idempotency key, its page), the
session lists and the merchant's collection settings."""

from __future__ import annotations

import uuid

import pytest
from accrue.payment.v1 import payment_service_pb2 as pay

from libs.core.errors import AlreadyExists, InvalidArgument, NotFound
from libs.infra.proto_time import from_timestamp
from services.payment.tests.fakes import token
from services.payment.tests.integration.conftest import PUBLIC_URL, World


def create(amount: str = "10.00", currency: str = "USD", **extra: object) -> pay.CreatePaymentRequest:
    return pay.CreatePaymentRequest(amount=amount, currency=currency, **extra)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("request_fields", "field", "reason"),
    [
        ({"amount": "0.99"}, "amount", "AMOUNT_OUT_OF_RANGE"),
        ({"amount": "5000.01"}, "amount", "AMOUNT_OUT_OF_RANGE"),
        ({"amount": "10.001"}, "amount", "TOO_MANY_DECIMAL_PLACES"),
        ({"amount": "ten"}, "amount", "INVALID_DECIMAL"),
        ({"expires_in": "P32D"}, "expiresIn", "OUT_OF_RANGE"),
        ({"expires_in": "P2M"}, "expiresIn", "OUT_OF_RANGE"),
        ({"expires_in": "P0D"}, "expiresIn", "OUT_OF_RANGE"),
        ({"expires_in": "soon"}, "expiresIn", "INVALID_DURATION"),
        ({"save_payment_method": True}, "customerId", "CUSTOMER_REQUIRED"),
        ({"success_redirect_url": "javascript:alert(1)"}, "successRedirectUrl", "INVALID_URL"),
        ({"line_items": [pay.CreatePaymentLineItem(description="x", amount="1")] * 101}, "lineItems", "TOO_MANY_ITEMS"),
        ({"line_items": [pay.CreatePaymentLineItem(description="x", amount="1.x")]}, "lineItems[0].amount", "INVALID_DECIMAL"),
    ],
)
async def test_bad_payments_are_refused_naming_the_field(world: World, request_fields: dict[str, object], field: str, reason: str) -> None:
    values: dict[str, object] = {"amount": "10.00", "currency": "USD", **request_fields}
    with pytest.raises(InvalidArgument) as bad:
        await world.payments.CreatePayment(pay.CreatePaymentRequest(**values), metadata=world.md())  # type: ignore[arg-type]
    assert (bad.value.field, bad.value.reason) == (field, reason)


async def test_a_payment_link_is_idempotent_by_its_key_and_paid_on_its_page(world: World) -> None:
    customer = await world.customer()
    key = f"pay-{uuid.uuid4().hex[:8]}"
    request = create(
        "25.50", "EUR", customer_id=customer, idempotency_key=key, reference="onboarding", metadata={"order": "42"},
        line_items=[pay.CreatePaymentLineItem(description="Setup", amount="25.50")], expires_in="P7D",
    )  # fmt: skip
    first = await world.payments.CreatePayment(request, metadata=world.md())
    assert first.created and first.id.startswith("pay_") and first.status == "pending"
    assert (first.amount, first.currency, first.reference, dict(first.metadata)) == ("25.50", "EUR", "onboarding", {"order": "42"})
    assert first.payment_url == f"{PUBLIC_URL}/checkout/{world.merchant}/{first.payment_session_id}"
    assert (from_timestamp(first.expires_at) - from_timestamp(first.create_time)).days == 7
    again = await world.payments.CreatePayment(request, metadata=world.md())
    assert (again.id, again.created) == (first.id, False)
    header = await world.payments.CreatePayment(create("25.50", "EUR"), metadata=(*world.md(), ("idempotency-key", f"h-{key}")))
    header_again = await world.payments.CreatePayment(create("25.50", "EUR"), metadata=(*world.md(), ("idempotency-key", f"h-{key}")))
    assert (header_again.id, header_again.created) == (header.id, False) and header.id != first.id
    with pytest.raises(AlreadyExists) as reused:
        await world.payments.CreatePayment(create("30.00", "EUR", idempotency_key=key), metadata=world.md())
    assert (reused.value.reason, reused.value.field) == ("IDEMPOTENCY_KEY_REUSED", "idempotencyKey")

    paid = await world.payments.CompleteCheckout(
        pay.CompleteCheckoutRequest(session_id=first.payment_session_id, card_token=token(), submit_nonce="nonce-001"), metadata=world.md()
    )
    assert paid.session.status == "completed" and paid.session.entity_type == "payment"
    got = await world.payments.GetPayment(pay.GetPaymentRequest(id=first.id), metadata=world.md())
    assert got.status == "completed" and got.HasField("completed_at")
    assert world.processor.charge_calls == [f"{first.payment_session_id}:1"]
    assert world.invoicing.reports == []  # a payment is nobody's invoice

    listed = await world.payments.ListPayments(pay.ListPaymentsRequest(status="completed"), metadata=world.md())
    assert [p.id for p in listed.data] == [first.id]
    everything = await world.payments.ListPayments(pay.ListPaymentsRequest(limit=1), metadata=world.md())
    assert [p.id for p in everything.data] == [header.id] and everything.pagination.total == 2
    mine = await world.payments.ListPayments(pay.ListPaymentsRequest(customer_id=customer), metadata=world.md())
    assert [p.id for p in mine.data] == [first.id]
    with pytest.raises(NotFound):
        await world.payments.GetPayment(pay.GetPaymentRequest(id=first.id), metadata=world.md(f"org_{uuid.uuid4().hex[:12]}"))
    with pytest.raises(NotFound) as unknown:
        await world.payments.CreatePayment(create(customer_id="cus_nope"), metadata=world.md())
    assert unknown.value.field == "customerId"


async def test_session_lists_filter_and_page_newest_first(world: World) -> None:
    customer = await world.customer()
    first = await world.open_session(world.invoice(), customer, subscription_id="sub_1")
    second = await world.open_session(world.invoice(), customer, subscription_id="sub_2")
    link = await world.payments.CreatePayment(create(customer_id=customer), metadata=world.md())
    await world.save_card(customer)  # a setup session is not a payment session

    async def ids(**filters: object) -> list[str]:
        found = await world.payments.ListPaymentSessions(pay.ListPaymentSessionsRequest(**filters), metadata=world.md())  # type: ignore[arg-type]
        return [s.id for s in found.data]

    assert await ids() == [link.payment_session_id, second.id, first.id]
    assert await ids(subscription_id="sub_1") == [first.id]
    assert await ids(entity_type="payment") == [link.payment_session_id]
    assert await ids(customer_id=customer, limit=1, offset=1) == [second.id]
    assert await ids(status="completed") == []
    other = await world.payments.ListPaymentSessions(pay.ListPaymentSessionsRequest(), metadata=world.md(f"org_{uuid.uuid4().hex[:12]}"))
    assert list(other.data) == []


async def test_collection_settings_default_change_and_refuse_bad_schedules(world: World) -> None:
    got = await world.payments.GetPaymentSettings(pay.GetPaymentSettingsRequest(merchant_id=world.merchant), metadata=world.md())
    assert (list(got.retry_schedule_days), got.after_final_failure, got.HasField("update_time")) == ([3, 5, 7], "keep_active", False)
    changed = await world.payments.UpdatePaymentSettings(
        pay.UpdatePaymentSettingsRequest(merchant_id=world.merchant, retry_schedule_days=[1, 2, 60]), metadata=world.md()
    )
    assert (list(changed.retry_schedule_days), changed.after_final_failure) == ([1, 2, 60], "keep_active")
    policy = await world.payments.UpdatePaymentSettings(
        pay.UpdatePaymentSettingsRequest(merchant_id=world.merchant, after_final_failure="terminate"), metadata=world.md()
    )
    assert (list(policy.retry_schedule_days), policy.after_final_failure) == ([1, 2, 60], "terminate")
    cleared = await world.payments.UpdatePaymentSettings(
        pay.UpdatePaymentSettingsRequest(merchant_id=world.merchant, clear_retry_schedule=True), metadata=world.md()
    )
    assert list(cleared.retry_schedule_days) == []
    for days, field in (([3, 3], "retryScheduleDays[1]"), ([0], "retryScheduleDays[0]"), ([61], "retryScheduleDays[0]"),
                        (list(range(1, 12)), "retryScheduleDays")):  # fmt: skip
        with pytest.raises(InvalidArgument) as bad:
            await world.payments.UpdatePaymentSettings(
                pay.UpdatePaymentSettingsRequest(merchant_id=world.merchant, retry_schedule_days=days), metadata=world.md()
            )
        assert bad.value.field == field
    with pytest.raises(NotFound):
        await world.payments.GetPaymentSettings(pay.GetPaymentSettingsRequest(merchant_id="org_other"), metadata=world.md())
