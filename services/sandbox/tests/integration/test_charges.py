"""The sandbox processor through the payment service's adapter and its raw HTTP API: the
browser's tokenize call (CORS, the publishable key, card errors), saved methods, one
charge per idempotency key (also under concurrency), find by key, the test cards'
outcomes, refunds that never exceed the charge, and the adapter's error mapping."""

from __future__ import annotations

import asyncio

import httpx
import pytest

from libs.infra.embedded import free_port
from services.payment.processors.base import (
    Charge,
    ChargeSource,
    ChargeStatus,
    ProcessorRejected,
    ProcessorTimeout,
    ProcessorUnavailable,
)
from services.payment.processors.sandbox import SandboxProcessor
from services.sandbox.tests.integration.conftest import PUBLISHABLE, Sandbox

pytestmark = pytest.mark.integration

MERCHANT = "org_sandbox_test"


async def _charge(adapter: SandboxProcessor, key: str, source: ChargeSource, amount: int = 4900, **metadata: str) -> Charge:
    return await adapter.charge(
        merchant_id=MERCHANT,
        idempotency_key=key,
        amount_minor=amount,
        currency="USD",
        source=source,
        off_session=source.method_ref is not None,
        metadata=metadata,
        webhook_url=None,
    )


async def test_tokenize_answers_cors_preflight_and_refuses_bad_cards_naming_the_code(sandbox: Sandbox) -> None:
    async with httpx.AsyncClient(base_url=sandbox.url) as browser:  # no secret key: what a page has
        preflight = await browser.options(
            "/v1/tokens", headers={"origin": "http://127.0.0.1:8000", "access-control-request-method": "POST"}
        )
        assert preflight.status_code == 204
        assert preflight.headers["access-control-allow-origin"] == "*"
        assert "POST" in preflight.headers["access-control-allow-methods"]
        assert "content-type" in preflight.headers["access-control-allow-headers"]

        card = {"publishableKey": PUBLISHABLE, "number": "4242 4242 4242 4242", "expMonth": 12, "expYear": 2034, "cvc": "123"}
        made = await browser.post("/v1/tokens", json=card)
        assert made.status_code == 200 and made.headers["access-control-allow-origin"] == "*"
        body = made.json()
        assert body["id"].startswith("tok_")
        assert body["card"] == {"brand": "visa", "last4": "4242", "expMonth": 12, "expYear": 2034}
        assert "4242424242424242" not in made.text

        changes: list[tuple[dict[str, object], str]] = [
            ({"number": "4242 4242 4242 4241"}, "incorrect_number"),
            ({"expYear": 2020}, "invalid_expiry"),
            ({"expMonth": 13}, "invalid_expiry"),
            ({"cvc": "12"}, "invalid_cvc"),
        ]
        for change, code in changes:
            refused = await browser.post("/v1/tokens", json={**card, **change})
            assert refused.status_code == 400, change
            assert refused.json()["error"]["code"] == code
            assert refused.headers["access-control-allow-origin"] == "*"  # the page can read why
        wrong_key = await browser.post("/v1/tokens", json={**card, "publishableKey": "pk_test_nope"})
        assert wrong_key.status_code == 401 and wrong_key.json()["error"]["code"] == "invalid_api_key"
        # the server API is not the browser's: no secret key, no charge
        assert (await browser.post("/v1/charges", json={})).status_code == 401


async def test_the_same_key_answers_the_same_charge_and_a_token_is_used_once(sandbox: Sandbox) -> None:
    adapter = sandbox.adapter()
    token = await sandbox.token()
    assert await adapter.find_charge(merchant_id=MERCHANT, idempotency_key="inv_1:auto:0") is None
    first = await _charge(adapter, "inv_1:auto:0", ChargeSource(token=token), invoice="inv_1")
    again = await _charge(adapter, "inv_1:auto:0", ChargeSource(token=token), invoice="other")  # other metadata: the same charge
    assert first == again
    found = await adapter.find_charge(merchant_id=MERCHANT, idempotency_key="inv_1:auto:0")
    assert found == first
    assert found is not None and found.status is ChargeStatus.SUCCEEDED and found.amount_minor == 4900 and found.currency == "USD"
    assert found.card is not None and (found.card.brand, found.card.last4) == ("visa", "4242")
    # the token made one charge; another key cannot use it again
    with pytest.raises(ProcessorRejected) as used:
        await _charge(adapter, "inv_1:auto:1", ChargeSource(token=token))
    assert used.value.code == "token_already_used"
    # idempotency keys are an account's: another merchant's same key is its own charge
    assert await adapter.find_charge(merchant_id="org_other", idempotency_key="inv_1:auto:0") is None
    assert [c["id"] for c in await sandbox.records("charges", metadataKey="invoice", metadataValue="inv_1")] == [first.ref]
    await adapter.aclose()


@pytest.mark.parametrize("source_kind", ["token", "saved method"])
async def test_concurrent_requests_with_one_key_make_one_charge(sandbox: Sandbox, source_kind: str) -> None:
    adapter = sandbox.adapter()
    if source_kind == "token":
        source = ChargeSource(token=await sandbox.token())
    else:
        saved = await adapter.save_payment_method(merchant_id=MERCHANT, customer_ref="cus_1", token=await sandbox.token())
        source = ChargeSource(method_ref=saved.ref)
    key = f"ps_concurrent_{source_kind.replace(' ', '_')}:0"
    answers = await asyncio.gather(*(_charge(adapter, key, source, concurrency=key) for _ in range(24)))
    assert len({answer.ref for answer in answers}) == 1
    charges = await sandbox.records("charges", metadataKey="concurrency", metadataValue=key)
    assert len(charges) == 1 and charges[0]["status"] == "succeeded"
    await adapter.aclose()


async def test_the_test_cards_decline_as_documented(sandbox: Sandbox) -> None:
    adapter = sandbox.adapter()
    declined = await _charge(adapter, "k-0002", ChargeSource(token=await sandbox.token("4000 0000 0000 0002")))
    assert (declined.status, declined.failure_code, declined.decline_code) == (ChargeStatus.FAILED, "card_declined", "generic_decline")
    broke = await _charge(adapter, "k-9995", ChargeSource(token=await sandbox.token("4000000000009995")))
    assert (broke.status, broke.failure_code, broke.decline_code) == (ChargeStatus.FAILED, "insufficient_funds", "insufficient_funds")
    # 0341: saving works, every later charge fails
    saved = await adapter.save_payment_method(merchant_id=MERCHANT, customer_ref="cus_0341", token=await sandbox.token("4000000000000341"))
    assert saved.ref.startswith("pm_") and saved.card.last4 == "0341"
    later = await _charge(adapter, "k-0341", ChargeSource(method_ref=saved.ref))
    assert (later.status, later.failure_code) == (ChargeStatus.FAILED, "card_declined")
    # 0002 and 9995 are refused when saved (verified as a real setup is), and the token is left unused
    for number, code in (("4000000000000002", "card_declined"), ("4000000000009995", "insufficient_funds")):
        with pytest.raises(ProcessorRejected) as refused:
            await adapter.save_payment_method(merchant_id=MERCHANT, customer_ref="cus_bad", token=await sandbox.token(number))
        assert refused.value.code == code
    good = await adapter.save_payment_method(merchant_id=MERCHANT, customer_ref="cus_ok", token=await sandbox.token("5555555555554444"))
    assert good.card.brand == "mastercard"
    assert (await _charge(adapter, "k-5555", ChargeSource(method_ref=good.ref))).status is ChargeStatus.SUCCEEDED
    await adapter.aclose()


async def test_saving_a_token_again_answers_the_same_method_and_another_customer_is_refused(sandbox: Sandbox) -> None:
    adapter = sandbox.adapter()
    token = await sandbox.token()
    first = await adapter.save_payment_method(merchant_id=MERCHANT, customer_ref="cus_a", token=token)
    assert await adapter.save_payment_method(merchant_id=MERCHANT, customer_ref="cus_a", token=token) == first
    with pytest.raises(ProcessorRejected) as refused:
        await adapter.save_payment_method(merchant_id=MERCHANT, customer_ref="cus_b", token=token)
    assert refused.value.code == "token_already_used"
    with pytest.raises(ProcessorRejected) as missing:
        await adapter.save_payment_method(merchant_id=MERCHANT, customer_ref="cus_a", token="tok_nothing")
    assert missing.value.code == "resource_missing"
    await adapter.aclose()


async def test_refunds_are_idempotent_and_never_exceed_the_charge(sandbox: Sandbox) -> None:
    adapter = sandbox.adapter()
    charge = await _charge(adapter, "inv_r:auto:0", ChargeSource(token=await sandbox.token()), amount=1000)
    ref = charge.ref
    part = await adapter.refund(merchant_id=MERCHANT, idempotency_key="crn_1", charge_ref=ref, amount_minor=600)
    assert (part.status, part.amount_minor, part.charge_ref) == ("succeeded", 600, ref)
    assert await adapter.refund(merchant_id=MERCHANT, idempotency_key="crn_1", charge_ref=ref, amount_minor=600) == part
    with pytest.raises(ProcessorRejected) as too_much:
        await adapter.refund(merchant_id=MERCHANT, idempotency_key="crn_2", charge_ref=ref, amount_minor=401)
    assert too_much.value.code == "amount_too_large"
    # two different refunds of what is left, at once: one gets it
    results = await asyncio.gather(
        *(adapter.refund(merchant_id=MERCHANT, idempotency_key=f"crn_race_{n}", charge_ref=ref, amount_minor=400) for n in range(6)),
        return_exceptions=True,
    )
    assert sum(1 for r in results if not isinstance(r, BaseException)) == 1
    assert {r.code for r in results if isinstance(r, ProcessorRejected)} == {"charge_already_refunded"}
    refunds = await sandbox.records("refunds", charge=ref)
    assert sum(r["amount"] for r in refunds) == 1000 and len(refunds) == 2
    (stored,) = [c for c in await sandbox.records("charges") if c["id"] == ref]
    assert stored["amountRefunded"] == 1000
    declined = await _charge(adapter, "inv_r:auto:1", ChargeSource(token=await sandbox.token("4000000000000002")))
    with pytest.raises(ProcessorRejected) as not_paid:
        await adapter.refund(merchant_id=MERCHANT, idempotency_key="crn_3", charge_ref=declined.ref, amount_minor=1)
    assert not_paid.value.code == "charge_not_refundable"
    with pytest.raises(ProcessorRejected) as elsewhere:  # another account's charge is not there
        await adapter.refund(merchant_id="org_other", idempotency_key="crn_4", charge_ref=ref, amount_minor=1)
    assert elsewhere.value.code == "resource_missing"
    await adapter.aclose()


async def test_requests_are_checked_and_name_the_field(sandbox: Sandbox) -> None:
    token = await sandbox.token()
    client = sandbox.client
    good = {"amount": 100, "currency": "USD", "token": token}
    missing_key = await client.post("/v1/charges", json=good)
    assert missing_key.status_code == 400 and missing_key.json()["error"]["param"] == "Idempotency-Key"
    changes: list[tuple[dict[str, object], str]] = [
        ({"amount": 1.5}, "amount"),
        ({"amount": "100"}, "amount"),
        ({"amount": 0}, "amount"),
        ({"amount": True}, "amount"),
        ({"currency": "dollars"}, "currency"),
        ({"paymentMethod": "pm_x"}, "token"),  # both
        ({"offSession": "yes"}, "offSession"),
        ({"metadata": {"a": 1}}, "metadata.a"),
        ({"webhookUrl": "ftp://example.com"}, "webhookUrl"),
    ]
    for change, param in changes:
        refused = await client.post("/v1/charges", json={**good, **change}, headers={"idempotency-key": "k-bad"})
        assert refused.status_code == 400, change
        assert refused.json()["error"]["param"] == param, change
    assert (await client.post("/v1/charges", content=b"{nope", headers={"idempotency-key": "k-bad"})).status_code == 400
    assert (await client.get("/v1/charges")).json()["error"]["param"] == "idempotencyKey"
    assert (await client.get("/v1/charges/ch_missing")).status_code == 404
    assert (await client.delete("/v1/charges")).status_code == 405
    assert (await client.get("/nowhere")).status_code == 404
    # nothing of the refused requests was charged, and the token is still unused
    assert await sandbox.records("charges") == []
    made = await client.post("/v1/charges", json=good, headers={"idempotency-key": "k-good"})
    assert made.status_code == 200 and made.json()["status"] == "succeeded" and "idempotent-replayed" not in made.headers
    replay = await client.post("/v1/charges", json=good, headers={"idempotency-key": "k-good"})
    assert replay.json()["id"] == made.json()["id"] and replay.headers["idempotent-replayed"] == "true"
    assert (await client.get(f"/v1/charges/{made.json()['id']}")).json() == made.json()


async def test_the_adapter_maps_unreachable_refused_and_unauthorised(sandbox: Sandbox) -> None:
    nowhere = sandbox.adapter(url=f"http://127.0.0.1:{free_port()}")
    with pytest.raises(ProcessorUnavailable):
        await _charge(nowhere, "k-nowhere", ChargeSource(token="tok_x"))
    with pytest.raises(ProcessorUnavailable):
        await nowhere.find_charge(merchant_id=MERCHANT, idempotency_key="k-nowhere")
    await nowhere.aclose()
    wrong = sandbox.adapter(secret_key="sk_test_wrong")
    with pytest.raises(ProcessorRejected) as refused:
        await _charge(wrong, "k-wrong", ChargeSource(token=await sandbox.token()))
    assert refused.value.code == "invalid_api_key"
    await wrong.aclose()
    adapter = sandbox.adapter()
    config = adapter.public_config(MERCHANT)
    assert config.tokenize_url == f"{sandbox.url}/v1/tokens" and config.publishable_key == PUBLISHABLE
    assert config.connect_origins == (sandbox.url,)
    with pytest.raises(ValueError):
        await _charge(adapter, "k-both", ChargeSource(token="tok_a", method_ref="pm_b"))
    await adapter.aclose()


async def test_an_answer_that_does_not_come_in_time_is_a_timeout_and_the_charge_is_found_by_key(sandbox: Sandbox) -> None:
    """The slow card: the adapter gives up (unknown outcome), the charge exists as
    processing meanwhile, and completes although its caller went away."""
    adapter = sandbox.adapter(timeout=0.4)
    token = await sandbox.token("4000 0000 0000 6975")
    with pytest.raises(ProcessorTimeout):
        await _charge(adapter, "inv_slow:auto:0", ChargeSource(token=token))
    pending = await adapter.find_charge(merchant_id=MERCHANT, idempotency_key="inv_slow:auto:0")
    assert pending is not None and pending.status is ChargeStatus.PROCESSING
    # a retry with the same key answers the same charge at once, still processing
    assert (await _charge(adapter, "inv_slow:auto:0", ChargeSource(token=token))).ref == pending.ref
    await asyncio.sleep(1.6)
    done = await adapter.find_charge(merchant_id=MERCHANT, idempotency_key="inv_slow:auto:0")
    assert done is not None and done.ref == pending.ref and done.status is ChargeStatus.SUCCEEDED
    assert len(await sandbox.records("charges")) == 1
    await adapter.aclose()


async def test_a_key_reused_with_another_amount_currency_or_source_is_refused_409(sandbox: Sandbox) -> None:
    adapter = sandbox.adapter()
    token = await sandbox.token()
    first = await _charge(adapter, "inv_9:auto:0", ChargeSource(token=token), invoice="inv_9")
    other_token = await sandbox.token()
    saved = await adapter.save_payment_method(merchant_id=MERCHANT, customer_ref="cus_9", token=await sandbox.token())
    reuses: list[tuple[int, str, ChargeSource]] = [
        (1, "USD", ChargeSource(token=token)),
        (4900, "EUR", ChargeSource(token=token)),
        (4900, "USD", ChargeSource(token=other_token)),
        (4900, "USD", ChargeSource(method_ref=saved.ref)),
    ]
    for amount, currency, source in reuses:
        with pytest.raises(ProcessorRejected) as refused:
            await adapter.charge(
                merchant_id=MERCHANT, idempotency_key="inv_9:auto:0", amount_minor=amount, currency=currency, source=source,
                off_session=False, metadata={}, webhook_url=None,
            )  # fmt: skip
        assert refused.value.code == "idempotency_key_in_use", (amount, currency, source)
    raw = await sandbox.client.post(
        "/v1/charges",
        json={"amount": 2, "currency": "USD", "token": token},
        headers={"idempotency-key": "inv_9:auto:0", "sandbox-account": MERCHANT},
    )
    assert raw.status_code == 409 and raw.json()["error"]["code"] == "idempotency_key_in_use"
    # nothing else was charged, the other token is still usable, the key still answers its charge
    assert [c["id"] for c in await sandbox.records("charges", metadataKey="invoice", metadataValue="inv_9")] == [first.ref]
    assert (await _charge(adapter, "inv_9:auto:1", ChargeSource(token=other_token))).status is ChargeStatus.SUCCEEDED
    assert await adapter.find_charge(merchant_id=MERCHANT, idempotency_key="inv_9:auto:0") == first
    await adapter.aclose()
