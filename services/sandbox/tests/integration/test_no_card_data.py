"""No card number and no security code anywhere the sandbox keeps or says anything: after
every test card has been tokenized, saved, charged, refunded and sent as webhooks, a scan
of every row of every table, of the API's answers and webhooks, and of the log output
finds none of them."""

from __future__ import annotations

import pytest
import sqlalchemy as sa

from services.payment.processors.base import ChargeSource, ProcessorRejected
from services.sandbox.domain.cards import TEST_CARDS
from services.sandbox.store import metadata
from services.sandbox.tests.integration.conftest import PUBLISHABLE, Receiver, Sandbox, eventually

pytestmark = pytest.mark.integration

OTHER_CARDS = ["5555555555554444", "378282246310005"]
CVC = "987"
AMEX_CVC = "6543"


async def test_no_table_answer_webhook_or_log_line_holds_a_card_number_or_cvc(
    sandbox: Sandbox, receiver: Receiver, capfd: pytest.CaptureFixture[str]
) -> None:
    adapter = sandbox.adapter()
    said: list[str] = []
    numbers = [*TEST_CARDS, *OTHER_CARDS]
    for n, number in enumerate(numbers):
        spaced = " ".join(number[i : i + 4] for i in range(0, len(number), 4))
        cvc = AMEX_CVC if number.startswith("37") else CVC
        for_save = await sandbox.client.post(
            "/v1/tokens", json={"publishableKey": PUBLISHABLE, "number": spaced, "expMonth": 3, "expYear": 2031, "cvc": cvc}
        )
        for_charge = await sandbox.client.post(
            "/v1/tokens", json={"publishableKey": PUBLISHABLE, "number": number, "expMonth": 3, "expYear": 2031, "cvc": cvc}
        )
        refused = await sandbox.client.post(  # a refusal does not echo what was sent either
            "/v1/tokens", json={"publishableKey": PUBLISHABLE, "number": number, "expMonth": 3, "expYear": 2031, "cvc": "1"}
        )
        assert refused.status_code == 400
        said += [for_save.text, for_charge.text, refused.text]
        sources = [(f"scan-{n}-tok", ChargeSource(token=for_charge.json()["id"]))]
        try:
            saved = await adapter.save_payment_method(merchant_id="org_scan", customer_ref=f"cus_{n}", token=for_save.json()["id"])
        except ProcessorRejected as refusal:  # a card that declines is refused when saved (0002, 9995)
            said.append(refusal.message)
        else:
            sources.append((f"scan-{n}-pm", ChargeSource(method_ref=saved.ref)))
        for key, source in sources:
            response = await sandbox.client.post(
                "/v1/charges",
                json={
                    "amount": 700,
                    "currency": "GBP",
                    "webhookUrl": receiver.url,
                    **({"token": source.token} if source.token else {"paymentMethod": source.method_ref}),
                },
                headers={"idempotency-key": key, "sandbox-account": "org_scan"},
            )
            said.append(response.text)
            if response.json()["status"] == "succeeded":
                refund = await adapter.refund(
                    merchant_id="org_scan", idempotency_key=f"crn-{key}", charge_ref=response.json()["id"], amount_minor=700
                )
                assert refund.status == "succeeded"

    async def slow_done() -> bool:
        return all(c["status"] != "processing" for c in await sandbox.records("charges"))

    await eventually(slow_done, what="the slow card's charges completing")
    await receiver.wait_for(len(numbers) * 2)
    said += [body.decode() for _, body in receiver.received]
    for what in ("charges", "refunds", "webhooks"):
        said.append((await sandbox.client.get(f"/v1/_sandbox/{what}")).text)

    engine = sa.create_engine(sandbox.database_url, poolclass=sa.pool.NullPool)
    with engine.connect() as conn:
        columns = {column.name for table in metadata.tables.values() for column in table.columns}
        assert not {c for c in columns if "number" in c or "cvc" in c or c in ("pan", "card")}
        stored = [
            text for table in metadata.tables for text in conn.execute(sa.text(f'SELECT row_to_json(t)::text FROM "{table}" t')).scalars()
        ]
    engine.dispose()
    assert len(stored) > 4 * len(numbers)
    out, err = capfd.readouterr()
    haystacks = {"tables": "\n".join(stored), "answers and webhooks": "\n".join(said), "logs": out + err}
    for where, haystack in haystacks.items():
        for number in numbers:
            assert number not in haystack, where
            assert " ".join(number[i : i + 4] for i in range(0, len(number), 4)) not in haystack, where
            assert number[:12] not in haystack, where  # not even most of it
        for cvc in (CVC, AMEX_CVC):  # as a value, JSON's or a log's (the digits alone occur in timestamps)
            assert f'"{cvc}"' not in haystack and f"'{cvc}'" not in haystack, where
    assert "4242" in haystacks["tables"]  # the scan does read the rows: last four digits are there
    await adapter.aclose()
