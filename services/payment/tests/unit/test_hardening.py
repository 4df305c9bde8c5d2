"""What an outside test found, on the in-memory unit of work and the fake processor: no card
number is ever stored (the page's token and nonce have the processor's shapes); a charge
that paid an invoice something else had paid is given back; a signed webhook that is not
an event is a 400 of its own (never a 500); one-off payment line items and metadata are
bounded; a processor's charge that is not the attempt's pays nothing; a card saved to be
charged and then declined is not kept; a session stops taking cards after ten declines."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
from accrue.payment.v1 import payment_service_pb2 as pay
from standardwebhooks.webhooks import Webhook

from libs.core.errors import InvalidArgument
from services.payment import server
from services.payment.domain import commands
from services.payment.domain.model import MAX_DECLINES_PER_SESSION, AttemptStatus, ChargeAttempt, PaymentSession
from services.payment.domain.ports import RecordedOutcome
from services.payment.domain.use_cases import Config, Payments
from services.payment.processors.base import Charge, ChargeStatus, InvalidWebhook, InvalidWebhookBody
from services.payment.processors.sandbox import SandboxProcessor, SandboxProcessorSettings
from services.payment.tests.fakes import DECLINE, DECLINE_LATER, OK, SLOW, token
from services.payment.tests.unit.memory import MemoryUnitOfWork
from services.payment.tests.unit.test_use_cases import MERCHANT, Customers, World, _acting

WEBHOOK_SECRET = "whsec_aW50ZWdyYXRpb24tdGVzdC13ZWJob29rLXNlY3JldA=="


async def _invoice_page(world: World, invoice: str = "inv_1", *, save: bool = False) -> PaymentSession:
    item = commands.OpenSession(
        entity_type="invoice", entity_id=invoice, customer_id="cus_1", amount=Decimal("49.00"), currency="USD", save_payment_method=save
    )
    [session] = await world.payments.open_sessions(MERCHANT, [item])
    return session


def _attempts(world: World) -> list[ChargeAttempt]:
    return sorted(world.memory.attempts.values(), key=lambda a: a.create_time)


# --- 1. no card number is stored -----------------------------------------------------------


@pytest.mark.parametrize(
    "card_token",
    [
        "4242424242424242",  # a card number in place of the token
        "tok_4242424242424242",  # a token-shaped card number
        "tok_abc4242424242424242xyz",  # one hidden in a token
        "tok_short",  # the processor's tokens are longer
        "TOK_abcdefghij",
        "tok_abcdefghij\n",
        "tok abcdefghij",
        "tok_" + "a" * 65,
    ],
)
async def test_a_card_token_not_of_the_processors_shape_is_refused_and_nothing_is_written(card_token: str) -> None:
    world = World()
    session = await _invoice_page(world)
    with pytest.raises(InvalidArgument) as refused:
        await world.payments.complete_checkout(MERCHANT, commands.CompleteCheckout(session.id, card_token, "render-nonce-1"))
    assert (refused.value.field, refused.value.reason) == ("cardToken", "INVALID_CARD_TOKEN")
    assert card_token not in refused.value.message  # never quoted back
    assert world.memory.attempts == {} and world.processor.charge_calls == [] and world.processor.used_tokens == set()
    stored = world.memory.sessions[session.id]
    assert (stored.status, stored.submit_nonce, stored.attempt_count) == ("pending", None, 0)


@pytest.mark.parametrize(
    "nonce", ["4242424242424242", "render-4242424242424242", "n", "short", "render nonce", "x" * 129, "render\u00e9-1"]
)
async def test_a_nonce_not_of_the_renders_shape_is_refused_and_nothing_is_written(nonce: str) -> None:
    world = World()
    session = await _invoice_page(world)
    with pytest.raises(InvalidArgument) as refused:
        await world.payments.complete_checkout(MERCHANT, commands.CompleteCheckout(session.id, token(), nonce))
    assert (refused.value.field, refused.value.reason) == ("submitNonce", "INVALID_SUBMIT_NONCE")
    assert world.memory.attempts == {} and world.processor.charge_calls == []
    assert world.memory.sessions[session.id].submit_nonce is None


async def test_a_setup_page_refuses_a_card_number_too() -> None:
    world = World()
    async with MemoryUnitOfWork(world.memory) as uow:
        setup = await world.payments.create_setup_session(uow, MERCHANT, world.clock.now(), commands.CreateSetupSession("cus_1"))
    with pytest.raises(InvalidArgument) as refused:
        await world.payments.complete_checkout(MERCHANT, commands.CompleteCheckout(setup.id, "4242424242424242", "render-nonce-1"))
    assert refused.value.field == "cardToken"
    assert world.processor.used_tokens == set() and world.memory.methods == {}


async def test_tokens_and_nonces_of_the_right_shape_pay() -> None:
    world = World()
    session = await _invoice_page(world)
    paid = await world.payments.complete_checkout(MERCHANT, commands.CompleteCheckout(session.id, token(), "Zk3_-nonce-0123"))
    assert paid.session.status == "completed"


# --- 2. a charge that paid an invoice already paid is given back --------------------------------


async def test_a_success_for_an_invoice_paid_out_of_band_is_refunded_at_the_processor() -> None:
    world = World()
    session = await _invoice_page(world)
    world.invoicing.answers["inv_1"] = RecordedOutcome(status="PAID", paid_by_attempt_key=None)  # paid out of band meanwhile
    await world.payments.complete_checkout(MERCHANT, commands.CompleteCheckout(session.id, token(), "render-nonce-1"))
    [attempt] = _attempts(world)
    assert attempt.status == "succeeded" and attempt.reported_at is not None
    key = f"duplicate:{attempt.attempt_key}"
    refund = world.processor.refunds[(MERCHANT, key)]
    assert (refund.charge_ref, refund.amount_minor) == (attempt.provider_ref, 4900)
    [row] = world.memory.refunds.values()
    assert (row.credit_note_id, row.reason, row.status, row.attempt_id) == (key, "duplicate_charge", "succeeded", attempt.id)
    # told again (the janitor, a repeat): refunded once
    await world.payments._report(attempt)
    assert len(world.processor.refunds) == 1 and len(world.memory.refunds) == 1
    # a later credit note of the invoice finds nothing left to refund at the processor
    result = await world.payments.refund_invoice(
        MERCHANT, commands.RefundInvoice(invoice_id="inv_1", credit_note_id="crn_1", amount=Decimal("49.00"), currency="USD")
    )
    assert not result.refunded and len(world.processor.refunds) == 1


async def test_an_off_session_success_for_an_invoice_another_attempt_paid_is_refunded() -> None:
    world = World()
    await world.method("cus_1")
    world.invoicing.answers["inv_1"] = RecordedOutcome(status="PAID", paid_by_attempt_key="inv_1:retry:1")
    answer = await world.payments.charge_invoice(MERCHANT, world.charge("inv_1:auto:1", trigger="automatic", number=1))
    assert answer.status == "succeeded"
    assert list(world.processor.refunds) == [(MERCHANT, "duplicate:inv_1:auto:1")]


async def test_a_success_that_paid_the_invoice_itself_is_kept() -> None:
    world = World()
    await world.method("cus_1")
    world.invoicing.answers["inv_1"] = RecordedOutcome(status="PAID", paid_by_attempt_key="inv_1:retry:1")
    assert (await world.payments.charge_invoice(MERCHANT, world.charge("inv_1:retry:1"))).status == "succeeded"
    world.invoicing.answers["inv_2"] = RecordedOutcome(status="ISSUED")
    assert (await world.payments.charge_invoice(MERCHANT, world.charge("inv_2:retry:1", invoice="inv_2"))).status == "succeeded"
    assert world.processor.refunds == {} and world.memory.refunds == {}


async def test_a_slow_page_charge_that_lands_after_an_out_of_band_payment_is_refunded_via_the_janitor() -> None:
    world = World()
    session = await _invoice_page(world)
    await world.payments.complete_checkout(MERCHANT, commands.CompleteCheckout(session.id, token(SLOW), "render-nonce-1"))
    world.invoicing.answers["inv_1"] = RecordedOutcome(status="PAID")  # the merchant recorded a bank transfer meanwhile
    world.processor.finish(MERCHANT, f"{session.id}:1")
    world.clock.advance(timedelta(seconds=5))
    await world.payments.janitor_pass(_acting)
    assert list(world.processor.refunds) == [(MERCHANT, f"duplicate:{session.id}:1")]


# --- 3. a signed webhook that is not an event ------------------------------------------------


def _sandbox() -> SandboxProcessor:
    return SandboxProcessor(SandboxProcessorSettings(url="http://127.0.0.1:9", webhook_secret=WEBHOOK_SECRET))


def _signed(body: bytes) -> dict[str, str]:
    signer = Webhook(WEBHOOK_SECRET)
    now = datetime.now(UTC)
    return {
        "webhook-id": "msg_1",
        "webhook-timestamp": str(int(now.timestamp())),
        "webhook-signature": signer.sign("msg_1", now, body.decode()),
    }


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (b"[" * 100_000 + b"]" * 100_000, "nested too deeply"),
        (b'{"type": "charge.succeeded", "id": "evt_1", "sequence": 1, "created": "2026-01-01T00:00:00Z", "data": null}', "data"),
        (b'{"type": "charge.succeeded", "id": "evt_1", "sequence": 1, "created": "2026-01-01T00:00:00Z"}', "data is missing"),
        (b'{"type": "charge.succeeded", "id": "evt_1", "sequence": 1, "created": "x", "data": {"object": {}}}', "ISO 8601"),
        (b"not json", "not JSON"),
        (b"[1, 2]", "not an object"),
    ],
)
async def test_the_sandbox_adapter_refuses_a_signed_malformed_body_cleanly(body: bytes, expected: str) -> None:
    adapter = _sandbox()
    with pytest.raises(InvalidWebhookBody) as refused:
        adapter.parse_webhook(_signed(body), body)
    message = str(refused.value)
    assert expected in message
    assert "NoneType" not in message and "subscriptable" not in message and "Traceback" not in message
    await adapter.aclose()


async def test_the_sandbox_adapter_tells_a_bad_signature_from_a_bad_body() -> None:
    adapter = _sandbox()
    body = b"[" * 100_000 + b"]" * 100_000
    headers = {**_signed(body), "webhook-signature": "v1,AAAA"}
    with pytest.raises(InvalidWebhook) as refused:
        adapter.parse_webhook(headers, body)
    assert not isinstance(refused.value, InvalidWebhookBody)
    await adapter.aclose()


async def test_handle_webhook_answers_distinct_reasons_naming_body() -> None:
    world = World()
    adapter = _sandbox()
    payments = Payments(
        lambda: MemoryUnitOfWork(world.memory), adapter, world.invoicing, Customers(), world.clock, Config(public_url="http://gw.test")
    )
    body = b"[" * 100_000 + b"]" * 100_000
    with pytest.raises(InvalidArgument) as malformed:
        await payments.handle_webhook(MERCHANT, "sandbox", _signed(body), body)
    assert (malformed.value.field, malformed.value.reason) == ("body", "INVALID_WEBHOOK_BODY")
    with pytest.raises(InvalidArgument) as unsigned:
        await payments.handle_webhook(MERCHANT, "sandbox", {**_signed(body), "webhook-signature": "v1,AAAA"}, body)
    assert (unsigned.value.field, unsigned.value.reason) == ("body", "INVALID_WEBHOOK_SIGNATURE")
    assert unsigned.value.message.count("does not verify") == 1
    good = json.dumps({"id": "evt_1", "type": "charge.succeeded", "sequence": 1, "created": "2026-01-01T00:00:00Z", "data": {"object": {}}})
    with pytest.raises(InvalidArgument) as missing:
        await payments.handle_webhook(MERCHANT, "sandbox", _signed(good.encode()), good.encode())
    assert missing.value.reason == "INVALID_WEBHOOK_BODY" and "is missing" in missing.value.message
    await adapter.aclose()


# --- 4. one-off payment line items, metadata and the body's idempotency key ----------------------


def _payment(amount: str, *lines: tuple[str, int], **extra: object) -> commands.CreatePayment:
    items = [commands.LineItem(description=f"line {i}", amount=Decimal(a), quantity=q) for i, (a, q) in enumerate(lines)]
    return commands.CreatePayment(amount=Decimal(amount), currency="USD", line_items=items, **extra)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("command", "field", "reason"),
    [
        (_payment("10.00", ("1.001", 1)), "lineItems[0].amount", "TOO_MANY_DECIMAL_PLACES"),
        (_payment("10.00", ("15.00", 1), ("-5.00", 1)), "lineItems[1].amount", "MUST_NOT_BE_NEGATIVE"),
        (_payment("10.00", ("5.00", 1), ("5.00", 1), ("5000.01", 1)), "lineItems[2].amount", "AMOUNT_OUT_OF_RANGE"),
        (_payment("10.00", ("5.00", 0)), "lineItems[0].quantity", "OUT_OF_RANGE"),
        (_payment("10.00", ("3.00", 3)), "lineItems", "LINE_ITEMS_MISMATCH"),
        (_payment("10.00", metadata={f"k{i}": "v" for i in range(51)}), "metadata", "TOO_MANY_METADATA_KEYS"),
        (_payment("10.00", metadata={"k" * 41: "v"}), "metadata", "KEY_TOO_LONG"),
        (_payment("10.00", metadata={"plan": "v" * 501}), "metadata.plan", "TOO_LONG"),
    ],
)
async def test_create_payment_bounds_line_items_and_metadata(command: commands.CreatePayment, field: str, reason: str) -> None:
    world = World()
    with pytest.raises(InvalidArgument) as refused:
        await world.payments.create_payment(MERCHANT, command)
    assert (refused.value.field, refused.value.reason) == (field, reason)
    assert world.memory.payments == {} and world.memory.sessions == {}


async def test_line_items_that_add_up_are_taken_and_a_mismatch_names_both_sums() -> None:
    world = World()
    made = await world.payments.create_payment(MERCHANT, _payment("10.00", ("2.50", 2), ("5.00", 1), ("0.00", 3)))
    assert made.created and len(made.payment.line_items) == 3
    with pytest.raises(InvalidArgument) as refused:
        await world.payments.create_payment(MERCHANT, _payment("10.00", ("3.00", 3)))
    assert "9.00" in refused.value.message and "10.00" in refused.value.message
    ok = await world.payments.create_payment(MERCHANT, _payment("10.00", metadata={f"k{i}": "v" * 500 for i in range(50)}))
    assert ok.created


@pytest.mark.parametrize("key", ["", "tab\there", "caf\u00e9", "k" * 256, "line\nbreak"])
def test_a_body_idempotency_key_follows_the_headers_rule(key: str) -> None:
    with pytest.raises(InvalidArgument) as refused:
        server._create_payment(pay.CreatePaymentRequest(amount="10.00", currency="USD", idempotency_key=key))
    assert (refused.value.field, refused.value.reason) == ("idempotencyKey", "INVALID_IDEMPOTENCY_KEY")


def test_a_printable_body_idempotency_key_is_taken() -> None:
    made = server._create_payment(pay.CreatePaymentRequest(amount="10.00", currency="USD", idempotency_key="order 42/~" + "k" * 245))
    assert made.idempotency_key is not None and len(made.idempotency_key) == 255


# --- 5. the processor's charge must be the attempt's ----------------------------------------------


def _foreign(key: str, *, amount_minor: int = 100, currency: str = "USD", status: ChargeStatus = ChargeStatus.SUCCEEDED) -> Charge:
    return Charge(ref="ch_someone_else", idempotency_key=key, status=status, amount_minor=amount_minor, currency=currency)


@pytest.mark.parametrize(("amount_minor", "currency"), [(100, "USD"), (4900, "EUR")])
async def test_a_charge_of_another_amount_or_currency_under_the_key_fails_processor_mismatch(amount_minor: int, currency: str) -> None:
    world = World()
    await world.method("cus_1")
    world.processor.charges[(MERCHANT, "inv_1:retry:1")] = _foreign("inv_1:retry:1", amount_minor=amount_minor, currency=currency)
    answer = await world.payments.charge_invoice(MERCHANT, world.charge("inv_1:retry:1"))
    assert (answer.status, answer.failure_code) == ("failed", "processor_mismatch")
    [attempt] = _attempts(world)
    assert (attempt.status, attempt.failure_code, attempt.provider_ref) == ("failed", "processor_mismatch", None)
    assert [(r.status, r.failure_code) for r in world.invoicing.reports] == [("failed", "processor_mismatch")]


async def test_a_mismatched_charge_found_by_the_janitor_or_a_webhook_pays_nothing() -> None:
    world = World()
    session = await _invoice_page(world)
    await world.payments.complete_checkout(MERCHANT, commands.CompleteCheckout(session.id, token(SLOW), "render-nonce-1"))
    key = f"{session.id}:1"
    foreign = _foreign(key)
    headers, body = world.processor.webhook(foreign, event_type="charge.succeeded", sequence=2)
    assert await world.payments.handle_webhook(MERCHANT, "fake", headers, body) == "applied"
    [attempt] = _attempts(world)
    assert (attempt.status, attempt.failure_code) == ("failed", "processor_mismatch")
    assert world.memory.sessions[session.id].status == "pending" and world.invoicing.reports == []
    # the janitor's look-up of another in-flight attempt
    other = World()
    await other.method("cus_1", SLOW)
    assert (await other.payments.charge_invoice(MERCHANT, other.charge("inv_1:retry:1"))).status == "processing"
    other.processor.charges[(MERCHANT, "inv_1:retry:1")] = _foreign("inv_1:retry:1")
    other.clock.advance(timedelta(seconds=5))
    await other.payments.janitor_pass(_acting)
    [looked_up] = _attempts(other)
    assert (looked_up.status, looked_up.failure_code) == ("failed", "processor_mismatch")
    assert all(r.status == "failed" for r in other.invoicing.reports)


# --- 6. a card saved to be charged, then declined, is not kept -------------------------------------


async def test_a_declined_charge_of_a_card_the_page_saved_drops_that_card() -> None:
    world = World()
    await world.method("cus_1")  # an older good card
    [older] = world.memory.methods.values()
    session = await _invoice_page(world, save=True)
    declined = await world.payments.complete_checkout(
        MERCHANT, commands.CompleteCheckout(session.id, token(DECLINE_LATER), "render-nonce-1")
    )
    assert (declined.session.status, declined.session.failure_code) == ("pending", "card_declined")
    [attempt] = _attempts(world)
    assert attempt.payment_method_id is not None and attempt.status == AttemptStatus.FAILED
    assert [m.id for m in await world.payments.customer_methods(MERCHANT, "cus_1")] == [older.id]
    # an off-session charge draws on the older card, never the declined one
    answer = await world.payments.charge_invoice(MERCHANT, world.charge("inv_2:auto:0", invoice="inv_2", trigger="automatic"))
    assert answer.status == "succeeded"
    assert _attempts(world)[-1].payment_method_id == older.id


async def test_a_declined_saved_card_leaves_no_method_and_a_paid_one_is_kept() -> None:
    world = World()
    session = await _invoice_page(world, save=True)
    await world.payments.complete_checkout(MERCHANT, commands.CompleteCheckout(session.id, token(DECLINE_LATER), "render-nonce-1"))
    assert world.memory.methods == {}
    assert (await world.payments.charge_invoice(MERCHANT, world.charge("inv_2:auto:0", invoice="inv_2"))).status == "no_payment_method"
    paid = await world.payments.complete_checkout(MERCHANT, commands.CompleteCheckout(session.id, token(OK), "render-nonce-2"))
    assert paid.session.status == "completed" and len(world.memory.methods) == 1


# --- 7. card testing: ten declines end a session ---------------------------------------------------


async def test_a_page_session_fails_after_ten_declines_and_takes_no_more_cards() -> None:
    world = World()
    session = await _invoice_page(world)
    for n in range(1, MAX_DECLINES_PER_SESSION + 1):
        view = await world.payments.complete_checkout(MERCHANT, commands.CompleteCheckout(session.id, token(DECLINE), f"render-nonce-{n}"))
        expected = "failed" if n == MAX_DECLINES_PER_SESSION else "pending"
        assert view.session.status == expected, n
    assert view.session.failure_code == "too_many_declines"
    calls = list(world.processor.charge_calls)
    again = await world.payments.complete_checkout(MERCHANT, commands.CompleteCheckout(session.id, token(OK), "render-nonce-99"))
    assert again.session.status == "failed" and world.processor.charge_calls == calls and len(calls) == MAX_DECLINES_PER_SESSION
    assert (await world.payments.get_checkout(MERCHANT, session.id)).session.status == "failed"
    assert world.invoicing.reports == []  # page declines are the customer's, not invoicing's


async def test_a_setup_session_fails_after_ten_refused_cards() -> None:
    world = World()
    async with MemoryUnitOfWork(world.memory) as uow:
        setup = await world.payments.create_setup_session(uow, MERCHANT, world.clock.now(), commands.CreateSetupSession("cus_1"))
    used = token()
    world.processor.used_tokens.add(used)  # every save of it is refused
    for n in range(1, MAX_DECLINES_PER_SESSION + 1):
        view = await world.payments.complete_checkout(MERCHANT, commands.CompleteCheckout(setup.id, used, f"render-nonce-{n}"))
        assert view.session.status == ("failed" if n == MAX_DECLINES_PER_SESSION else "pending"), n
    done = await world.payments.complete_checkout(MERCHANT, commands.CompleteCheckout(setup.id, token(), "render-nonce-99"))
    assert done.session.status == "failed" and world.memory.methods == {}
