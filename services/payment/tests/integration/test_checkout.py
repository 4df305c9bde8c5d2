"""The hosted page's calls (GetCheckout, CompleteCheckout) and the sessions behind them:
OpenSessions idempotent per entity, a page paid once however it is submitted, a decline
left for the customer to retry, an invoice paid another way closing its page, expiry,
setup sessions saving cards, tenancy."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime, timedelta

import pytest
import sqlalchemy as sa
from accrue.payment.v1 import payment_service_pb2 as pay

from libs.core.errors import InvalidArgument, NotFound
from libs.infra.proto_time import to_timestamp
from libs.testing.waiting import eventually_async
from services.payment.tests.fakes import DECLINE, OK, SLOW, render_nonce, token
from services.payment.tests.integration.conftest import PUBLIC_URL, World


def submit(session_id: str, behaviour: str = OK, nonce: str | None = None) -> pay.CompleteCheckoutRequest:
    return pay.CompleteCheckoutRequest(session_id=session_id, card_token=token(behaviour), submit_nonce=nonce or render_nonce())


async def test_a_page_pays_its_invoice_once_and_invoicing_hears_it(world: World) -> None:
    customer = await world.customer()
    invoice = world.invoice()
    session = await world.open_session(invoice, customer, entity_label="Invoice INV-2026-000001")
    assert session.status == "pending" and session.id.startswith("ps_")
    assert session.url == f"{PUBLIC_URL}/checkout/{world.merchant}/{session.id}"
    assert session.merchant_payment_account_id == f"acct_fake_{world.merchant}"
    page = await world.payments.GetCheckout(pay.GetCheckoutRequest(session_id=session.id), metadata=world.md())
    assert (page.mode, page.session.status, page.processor, page.publishable_key) == ("payment", "pending", "fake", "pk_fake")
    assert [(line.description, line.amount) for line in page.lines] == [("Invoice INV-2026-000001", "49.00")]

    paid = await world.payments.CompleteCheckout(submit(session.id), metadata=world.md())
    assert paid.session.status == "completed" and paid.session.provider_payment_ref
    assert world.invoicing.reported(invoice) == [(f"{session.id}:1", "succeeded")]
    assert world.invoicing.reports[0].payment_session_id == session.id
    assert world.invoicing.reports[0].amount == "49.00"
    # after completion: nothing more is charged, the page reads completed
    again = await world.payments.CompleteCheckout(submit(session.id), metadata=world.md())
    assert again.session.status == "completed"
    assert world.processor.charge_calls == [f"{session.id}:1"]
    # an off-session charge of the paid invoice answers the page's charge
    answer = await world.payments.ChargeInvoice(world.charge(invoice, customer, f"{invoice}:retry:1"), metadata=world.md())
    assert (answer.status, answer.provider_payment_ref) == ("succeeded", paid.session.provider_payment_ref)


async def test_a_decline_leaves_the_page_pending_and_unreported(world: World) -> None:
    customer = await world.customer()
    invoice = world.invoice()
    session = await world.open_session(invoice, customer)
    declined = await world.payments.CompleteCheckout(submit(session.id, DECLINE), metadata=world.md())
    assert (declined.session.status, declined.failure_code) == ("pending", "card_declined")
    assert world.invoicing.reported(invoice) == []
    await asyncio.sleep(1.0)  # the janitor does not tell it either
    assert world.invoicing.reported(invoice) == []
    paid = await world.payments.CompleteCheckout(submit(session.id), metadata=world.md())
    assert paid.session.status == "completed" and not paid.HasField("failure_code")
    assert world.processor.charge_calls == [f"{session.id}:1", f"{session.id}:2"]
    assert [(r.attempt_key, r.status, r.trigger) for r in await world.attempts(invoice)] == [
        (f"{session.id}:1", "failed", "page"),
        (f"{session.id}:2", "succeeded", "page"),
    ]


async def test_a_double_submit_of_one_render_is_one_attempt(world: World) -> None:
    customer = await world.customer()
    invoice = world.invoice()
    session = await world.open_session(invoice, customer)
    world.processor.gate = asyncio.Event()
    nonce = render_nonce()
    first = asyncio.ensure_future(world.payments.CompleteCheckout(submit(session.id, nonce=nonce), metadata=world.md()))
    await asyncio.wait_for(world.processor.arrived.wait(), 10)
    second = asyncio.ensure_future(world.payments.CompleteCheckout(submit(session.id, nonce=nonce), metadata=world.md()))
    other_tab = await world.payments.CompleteCheckout(submit(session.id), metadata=world.md())
    assert other_tab.session.status == "processing"  # another render while one is in flight: as it is
    await asyncio.sleep(0.3)
    world.processor.gate.set()
    answers = await asyncio.gather(first, second)
    assert [a.session.status for a in answers] == ["completed", "completed"]
    assert world.processor.charge_calls == [f"{session.id}:1"]
    # the same render again after the decline of its attempt charges nothing either
    declined_session = await world.open_session(world.invoice(), customer)
    nonce = render_nonce()
    await world.payments.CompleteCheckout(submit(declined_session.id, DECLINE, nonce), metadata=world.md())
    late = await world.payments.CompleteCheckout(submit(declined_session.id, OK, nonce), metadata=world.md())
    assert (late.session.status, late.failure_code) == ("pending", "card_declined")
    assert world.processor.charge_calls == [f"{session.id}:1", f"{declined_session.id}:1"]


async def test_a_page_and_an_off_session_charge_of_one_invoice_charge_once(world: World) -> None:
    customer = await world.customer()
    await world.save_card(customer)
    invoice = world.invoice()
    session = await world.open_session(invoice, customer)
    world.processor.gate = asyncio.Event()
    page = asyncio.ensure_future(world.payments.CompleteCheckout(submit(session.id), metadata=world.md()))
    await asyncio.wait_for(world.processor.arrived.wait(), 10)
    with pytest.raises(Exception) as refused:
        await world.payments.ChargeInvoice(world.charge(invoice, customer, f"{invoice}:retry:1"), metadata=world.md())
    assert getattr(refused.value, "reason", None) == "CONCURRENT_ATTEMPT"
    world.processor.gate.set()
    assert (await page).session.status == "completed"
    assert len(world.processor.succeeded(world.merchant)) == 1


async def test_an_invoice_paid_another_way_closes_its_page_without_a_charge(world: World) -> None:
    customer = await world.customer()
    invoice = world.invoice()
    session = await world.open_session(invoice, customer)
    world.invoicing.invoices[invoice].status = "PAID"
    world.invoicing.invoices[invoice].unpaid_amount = "0.00"
    answer = await world.payments.CompleteCheckout(submit(session.id), metadata=world.md())
    assert answer.session.status == "cancelled"
    assert world.processor.charge_calls == []


async def test_open_sessions_is_idempotent_per_entity_and_replace_opens_a_fresh_one(world: World) -> None:
    customer = await world.customer()
    invoice = world.invoice()
    first = await world.open_session(invoice, customer)
    again = await world.open_session(invoice, customer)
    assert again.id == first.id
    fresh = await world.open_session(invoice, customer, replace=True)
    assert fresh.id != first.id and fresh.status == "pending"
    old = await world.payments.GetCheckout(pay.GetCheckoutRequest(session_id=first.id), metadata=world.md())
    assert old.session.status == "cancelled"
    many = await world.payments.OpenSessions(
        pay.OpenSessionsRequest(
            items=[
                pay.OpenSessionRequest(entity_type="invoice", entity_id=invoice, customer_id=customer, amount="49.00", currency="USD"),
                pay.OpenSessionRequest(
                    entity_type="subscription", entity_id=world.invoice(), customer_id=customer, amount="9.99", currency="EUR"
                ),
            ]
        ),
        metadata=world.md(),
    )
    assert many.sessions[0].id == fresh.id
    assert (many.sessions[1].entity_type, many.sessions[1].amount, many.sessions[1].currency) == ("subscription", "9.99", "EUR")
    with pytest.raises(InvalidArgument) as bad:
        await world.payments.OpenSessions(
            pay.OpenSessionsRequest(
                items=[pay.OpenSessionRequest(entity_type="invoice", entity_id=invoice, customer_id=customer, amount="0", currency="USD")]
            ),
            metadata=world.md(),
        )
    assert bad.value.field == "items[0].amount"


async def test_concurrent_opens_of_one_entity_open_one_session(world: World) -> None:
    customer = await world.customer()
    invoice = world.invoice()
    opened = await asyncio.gather(*(world.open_session(invoice, customer) for _ in range(6)))
    assert len({s.id for s in opened}) == 1


async def test_a_session_expires_unpaid(world: World) -> None:
    customer = await world.customer()
    invoice = world.invoice()
    ends = datetime.now(UTC) + timedelta(seconds=1)
    session = await world.open_session(invoice, customer, expires_at=to_timestamp(ends))

    async def status() -> str:
        found = await world.payments.ListPaymentSessions(pay.ListPaymentSessionsRequest(customer_id=customer), metadata=world.md())
        return str(found.data[0].status)

    assert await eventually_async(status, "expired") == "expired"
    late = await world.payments.CompleteCheckout(submit(session.id), metadata=world.md())
    assert late.session.status == "expired"
    assert world.processor.charge_calls == []
    # a fresh session for the entity is a new one
    assert (await world.open_session(invoice, customer)).id != session.id


async def test_another_merchants_session_is_not_found(world: World) -> None:
    customer = await world.customer()
    session = await world.open_session(world.invoice(), customer)
    other = f"org_{uuid.uuid4().hex[:12]}"
    with pytest.raises(NotFound):
        await world.payments.GetCheckout(pay.GetCheckoutRequest(session_id=session.id), metadata=world.md(other))
    with pytest.raises(NotFound):
        await world.payments.CompleteCheckout(submit(session.id), metadata=world.md(other))
    assert world.processor.charge_calls == []


async def test_a_setup_session_saves_the_card_and_lists_it_newest_first(world: World) -> None:
    customer = await world.customer()
    setup = await world.payments.CreateCustomerPaymentMethod(
        pay.CreateCustomerPaymentMethodRequest(id=customer, success_redirect_url="https://shop.example/saved"), metadata=world.md()
    )
    assert (setup.object, setup.mode, setup.status) == ("paymentSession", "setup", "pending")
    assert setup.url == f"{PUBLIC_URL}/checkout/{world.merchant}/{setup.id}"
    nonce = render_nonce()
    saved = await world.payments.CompleteCheckout(submit(setup.id, nonce=nonce), metadata=world.md())
    assert saved.session.status == "completed" and saved.mode == "setup"
    assert (saved.saved_method.brand, saved.saved_method.last4, saved.saved_method.exp_month) == ("visa", "4242", 12)
    assert saved.success_redirect_url == "https://shop.example/saved"
    again = await world.payments.CompleteCheckout(submit(setup.id, nonce=nonce), metadata=world.md())
    assert again.saved_method.id == saved.saved_method.id
    second = await world.save_card(customer)
    listed = await world.payments.ListCustomerPaymentMethods(pay.ListCustomerPaymentMethodsRequest(id=customer), metadata=world.md())
    assert [m.id for m in listed.data] == [second.saved_method.id, saved.saved_method.id]
    assert world.processor.charge_calls == []
    with pytest.raises(NotFound) as missing:
        await world.payments.CreateCustomerPaymentMethod(pay.CreateCustomerPaymentMethodRequest(id="cus_nope"), metadata=world.md())
    assert missing.value.field == "id"
    with pytest.raises(InvalidArgument) as bad:
        await world.payments.CreateCustomerPaymentMethod(
            pay.CreateCustomerPaymentMethodRequest(id=customer, failure_redirect_url="javascript:alert(1)"), metadata=world.md()
        )
    assert bad.value.field == "failureRedirectUrl"
    with pytest.raises(InvalidArgument) as far:
        request = pay.CreateCustomerPaymentMethodRequest(id=customer)
        request.expires_at.CopyFrom(to_timestamp(datetime.now(UTC) + timedelta(days=31)))
        await world.payments.CreateCustomerPaymentMethod(request, metadata=world.md())
    assert far.value.field == "expiresAt"


async def test_a_page_that_keeps_the_card_saves_it_then_charges_it(world: World) -> None:
    customer = await world.customer()
    invoice = world.invoice()
    session = await world.open_session(invoice, customer, save_payment_method=True)
    paid = await world.payments.CompleteCheckout(submit(session.id), metadata=world.md())
    assert paid.session.status == "completed"
    (method,) = (
        await world.payments.ListCustomerPaymentMethods(pay.ListCustomerPaymentMethodsRequest(id=customer), metadata=world.md())
    ).data
    (attempt,) = await world.attempts(invoice)
    assert (attempt.source_kind, attempt.payment_method_id) == ("method", method.id)
    # later invoices are charged off-session on it
    later = world.invoice()
    answer = await world.payments.ChargeInvoice(world.charge(later, customer, f"{later}:auto:0", trigger="automatic"), metadata=world.md())
    assert answer.status == "succeeded"


async def test_a_slow_page_charge_reads_processing_then_completed(world: World) -> None:
    customer = await world.customer()
    invoice = world.invoice()
    session = await world.open_session(invoice, customer)
    answer = await world.payments.CompleteCheckout(submit(session.id, SLOW), metadata=world.md())
    assert answer.session.status == "processing"
    world.processor.finish(world.merchant, f"{session.id}:1")

    async def status() -> str:
        page = await world.payments.GetCheckout(pay.GetCheckoutRequest(session_id=session.id), metadata=world.md())
        return str(page.session.status)

    assert await eventually_async(status, "completed") == "completed"

    async def reported() -> list[tuple[str, str]]:
        return world.invoicing.reported(invoice)

    assert await eventually_async(reported, [(f"{session.id}:1", "succeeded")]) == [(f"{session.id}:1", "succeeded")]


async def test_the_service_publishes_its_events(world: World) -> None:
    customer = await world.customer()
    await world.save_card(customer)
    invoice = world.invoice()
    session = await world.open_session(invoice, customer)
    await world.payments.CompleteCheckout(submit(session.id), metadata=world.md())
    other = world.invoice()
    await world.payments.ChargeInvoice(world.charge(other, customer, f"{other}:retry:1"), metadata=world.md())
    assert world.host.runtime is not None
    outbox = world.host.runtime.db.metadata.tables["outbox"]
    async with world.host.runtime.db.engine.connect() as conn:
        subjects = [row.subject for row in (await conn.execute(sa.select(outbox.c.subject).order_by(outbox.c.seq))).all()]
    prefix = "accrue.payment.v1"
    assert subjects.count(f"{prefix}.payment_method.saved") == 1
    assert subjects.count(f"{prefix}.session.opened") == 2  # the setup page and the invoice's
    assert subjects.count(f"{prefix}.session.completed") == 2
    assert subjects.count(f"{prefix}.charge.succeeded") == 2
