"""A fake payment service for the gateway's hosted-route tests: a real gRPC server (the
services' own GrpcServer, so merchant tokens are verified and domain errors travel as
they do in the mesh) answering GetCheckout, CompleteCheckout and HandleProcessorWebhook
from sessions a test sets up, scoped by the merchant the token proves."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from accrue.payment.v1 import payment_service_pb2 as pb
from accrue.payment.v1 import payment_service_pb2_grpc as pb_grpc
from google.protobuf.timestamp_pb2 import Timestamp

from libs.core.errors import InvalidArgument, NotFound
from libs.infra.context import merchant_id_var
from libs.infra.grpc_server import GrpcServer

MERCHANT = "org_merchantA00000001"
OTHER_MERCHANT = "org_merchantB00000002"
GOOD_SIGNATURE = "v1,good"
# CompleteCheckout answers by the token: these two decline / stay processing, any other pays
DECLINED_TOKEN = "tok_declined"
SLOW_TOKEN = "tok_slowcard"


def checkout(
    session_id: str,
    *,
    merchant_id: str = MERCHANT,
    status: str = "pending",
    mode: str = "payment",
    amount: str = "49.00",
    currency: str = "USD",
    label: str = "Invoice INV-2026-000001",
    lines: list[tuple[str, str, str]] | None = None,
    success_url: str | None = "https://merchant.example/thanks",
    failure_url: str | None = "https://merchant.example/sorry",
    tokenize_url: str = "http://127.0.0.1:9/v1/tokens",
    expires_in: timedelta = timedelta(hours=4),
) -> pb.Checkout:
    expires = Timestamp()
    expires.FromDatetime(datetime.now(UTC) + expires_in)
    session = pb.PaymentSession(
        object="payment_session", id=session_id, entity_type="subscription", entity_id="inv_1", amount=amount if mode == "payment" else "",
        currency=currency, status=status, entity_label=label, mode=mode, expires_at=expires,
    )  # fmt: skip
    found = pb.Checkout(
        session=session, mode=mode, merchant_id=merchant_id, processor="sandbox", tokenize_url=tokenize_url,
        publishable_key="pk_test_sandbox",
        lines=[pb.CheckoutLine(description=d, amount=a, quantity=q) for d, a, q in (lines if lines is not None else [("Pro plan", "49.00", "1")])],
    )  # fmt: skip
    if success_url is not None:
        found.success_redirect_url = success_url
    if failure_url is not None:
        found.failure_redirect_url = failure_url
    return found


@dataclass
class Completion:
    merchant_id: str | None
    session_id: str
    card_token: str
    submit_nonce: str


@dataclass
class Webhook:
    merchant_id: str | None
    processor: str
    body: bytes
    headers: dict[str, str]


@dataclass
class FakePayment(pb_grpc.PaymentServiceServicer):
    sessions: dict[tuple[str, str], pb.Checkout] = field(default_factory=dict)
    gets: list[tuple[str | None, str]] = field(default_factory=list)
    completions: list[Completion] = field(default_factory=list)
    webhooks: list[Webhook] = field(default_factory=list)
    # how long CompleteCheckout takes (a charge in flight), so a second click can land meanwhile
    complete_delay: float = 0.0

    def add(self, found: pb.Checkout) -> pb.Checkout:
        self.sessions[(found.merchant_id, found.session.id)] = found
        return found

    def _session(self, session_id: str) -> pb.Checkout:
        found = self.sessions.get((merchant_id_var.get() or "", session_id))
        if found is None:
            raise NotFound("payment_session", session_id, field="sessionId")
        return found

    async def GetCheckout(self, request: pb.GetCheckoutRequest, context: Any) -> pb.Checkout:
        self.gets.append((merchant_id_var.get(), request.session_id))
        return self._session(request.session_id)

    async def CompleteCheckout(self, request: pb.CompleteCheckoutRequest, context: Any) -> pb.Checkout:
        found = self._session(request.session_id)
        self.completions.append(Completion(merchant_id_var.get(), request.session_id, request.card_token, request.submit_nonce))
        if self.complete_delay:
            await asyncio.sleep(self.complete_delay)
        if found.session.status in ("completed", "processing", "expired", "cancelled"):
            return found
        if request.card_token == DECLINED_TOKEN:
            found.failure_code, found.failure_message = "card_declined", "Your card was declined."
        elif request.card_token == SLOW_TOKEN:
            found.session.status = "processing"
        else:
            found.session.status = "completed"
            found.ClearField("failure_code")
            found.ClearField("failure_message")
        return found

    async def HandleProcessorWebhook(self, request: pb.HandleProcessorWebhookRequest, context: Any) -> pb.HandleProcessorWebhookResponse:
        if request.headers.get("webhook-signature") != GOOD_SIGNATURE:
            raise InvalidArgument("webhook-signature", "the webhook's signature does not verify", reason="INVALID_WEBHOOK_SIGNATURE")
        self.webhooks.append(Webhook(merchant_id_var.get(), request.processor, request.body, dict(request.headers)))
        return pb.HandleProcessorWebhookResponse(result="applied")


async def serve(fake: FakePayment) -> tuple[GrpcServer, str]:
    """The fake on a free loopback port (started); its address."""
    server = GrpcServer([pb.DESCRIPTOR.services_by_name["PaymentService"].full_name], "127.0.0.1", 0)
    pb_grpc.add_PaymentServiceServicer_to_server(fake, server.server)
    await server.start()
    return server, f"127.0.0.1:{server.port}"


class FakeMerchants:
    def __init__(self, names: dict[str, str]) -> None:
        self.names = names
        self.asked: list[str] = []

    async def name_of(self, merchant_id: str) -> str | None:
        self.asked.append(merchant_id)
        return self.names.get(merchant_id)


def dead_address() -> str:
    """An address nothing listens on (a real channel there answers UNAVAILABLE)."""
    from libs.infra.embedded import free_port

    return f"127.0.0.1:{free_port()}"


__all__ = ["GOOD_SIGNATURE", "MERCHANT", "OTHER_MERCHANT", "FakeMerchants", "FakePayment", "checkout", "dead_address", "serve"]
