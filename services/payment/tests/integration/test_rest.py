"""The payment service's REST surface through the real gateway (its routes come from the
protos): POST /v0/payments (201, then 200 for the same key; a 400 naming the field), get
and list, /v0/paymentSessions, a customer's payment methods and setup sessions, and the
merchant's paymentSettings."""

from __future__ import annotations

import uuid

import httpx

from libs.testing.fixtures import StartHost
from services.gateway import store as gateway_store
from services.gateway.host import DEFINITION as GATEWAY
from services.payment.tests.integration.conftest import World


async def test_payments_over_rest(world: World, start_host: StartHost) -> None:
    gateway = await start_host(
        GATEWAY,
        payment_addr=f"127.0.0.1:{world.host.grpc_port}",
        subscription_addr=world.subscriptions_addr,
    )
    assert gateway.runtime is not None
    merchant = await gateway_store.create_merchant(gateway.runtime.db.engine, "Payments REST")
    async with httpx.AsyncClient(
        base_url=f"http://127.0.0.1:{gateway.port}", headers={"Authorization": f"Bearer {merchant.api_key}"}, timeout=30
    ) as http:
        key = f"pay-{uuid.uuid4().hex[:8]}"
        body = {"amount": "10.00", "currency": "USD", "idempotencyKey": key, "lineItems": [{"description": "Setup", "amount": "10.00"}]}
        created = await http.post("/v0/payments", json=body)
        assert created.status_code == 201, created.text
        payment = created.json()
        assert (payment["object"], payment["status"], payment["amount"], payment["currency"]) == ("payment", "pending", "10.00", "USD")
        assert payment["paymentUrl"].endswith(f"/checkout/{merchant.merchant_id}/{payment['paymentSessionId']}")
        again = await http.post("/v0/payments", json=body)
        assert again.status_code == 200 and again.json()["id"] == payment["id"]
        bad = await http.post("/v0/payments", json={**body, "amount": "0.50", "idempotencyKey": None})
        assert bad.status_code == 400 and bad.json()["details"]["field"] == "amount", bad.text
        unknown = await http.post("/v0/payments", json={"amount": "10.00", "currency": "JPY"})
        assert unknown.status_code == 400 and unknown.json()["details"]["field"] == "currency", unknown.text

        got = await http.get(f"/v0/payments/{payment['id']}")
        assert got.status_code == 200 and got.json()["id"] == payment["id"]
        assert (await http.get("/v0/payments/pay_nope")).status_code == 404
        listed = await http.get("/v0/payments", params={"status": "pending"})
        assert [p["id"] for p in listed.json()["data"]] == [payment["id"]]
        sessions = await http.get("/v0/paymentSessions", params={"entityType": "payment"})
        assert sessions.status_code == 200
        (session,) = sessions.json()["data"]
        assert (session["object"], session["id"], session["entityId"], session["status"]) == (
            "payment_session", payment["paymentSessionId"], payment["id"], "pending",
        )  # fmt: skip

        customer = await world.customer(merchant.merchant_id)
        methods = await http.get(f"/v0/customers/{customer}/paymentMethods")
        assert methods.status_code == 200 and methods.json()["data"] == []
        assert (await http.get("/v0/customers/cus_nope/paymentMethods")).status_code == 404
        setup = await http.post(f"/v0/customers/{customer}/paymentMethods", json={"successRedirectUrl": "https://shop.example/ok"})
        assert setup.status_code == 201, setup.text
        assert (setup.json()["mode"], setup.json()["status"]) == ("setup", "pending")

        settings = await http.get(f"/v0/merchants/{merchant.merchant_id}/paymentSettings")
        assert settings.status_code == 200 and settings.json()["retryScheduleDays"] == [3, 5, 7]
        changed = await http.patch(
            f"/v0/merchants/{merchant.merchant_id}/paymentSettings", json={"retryScheduleDays": [2, 4], "afterFinalFailure": "terminate"}
        )
        assert changed.status_code == 200, changed.text
        assert (changed.json()["retryScheduleDays"], changed.json()["afterFinalFailure"]) == ([2, 4], "terminate")
        refused = await http.patch(f"/v0/merchants/{merchant.merchant_id}/paymentSettings", json={"retryScheduleDays": [4, 2]})
        assert refused.status_code == 400 and refused.json()["details"]["field"] == "retryScheduleDays[1]"
        assert (await http.get("/v0/merchants/org_other/paymentSettings")).status_code == 404
