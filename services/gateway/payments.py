"""The gateway's calls to the payment service for the routes it serves itself: the hosted
checkout pages (GetCheckout, CompleteCheckout) and the processor webhooks
(HandleProcessorWebhook). These RPCs have no REST mapping; the gateway makes them for the
merchant named in the path, with a merchant token it mints as for any API call.

Every failure comes out as a DomainError whose message may be shown: the one the service
raised, or, for a status that is not one of ours (the service down, a deadline), a plain
sentence; gRPC's own text names addresses and library internals, so it goes to the log.
"""

from __future__ import annotations

from typing import Protocol

import grpc
from accrue.payment.v1 import payment_service_pb2 as pb
from google.protobuf.message import Message

from libs.core.errors import DomainError, ErrorCode
from libs.infra.grpc_errors import carried_error, decode_rpc_error
from libs.infra.logging import get_logger
from libs.infra.tokens import TokenSigner

log = get_logger(__name__)

SERVICE = "/accrue.payment.v1.PaymentService/"

_PLAIN: dict[ErrorCode, str] = {
    ErrorCode.DEADLINE_EXCEEDED: "the payment service did not answer in time; try again",
    ErrorCode.UNAVAILABLE: "the payment service is unavailable; try again in a moment",
    ErrorCode.RESOURCE_EXHAUSTED: "the payment service is out of capacity; try again in a moment",
    ErrorCode.UNIMPLEMENTED: "payments are not available yet",
    ErrorCode.CANCELLED: "the request was cancelled",
}


class PaymentBackend(Protocol):
    """What the hosted routes ask of the payment service, acting for ``merchant_id``."""

    async def get_checkout(self, merchant_id: str, session_id: str) -> pb.Checkout: ...

    async def complete_checkout(self, merchant_id: str, session_id: str, card_token: str, submit_nonce: str) -> pb.Checkout: ...

    async def handle_webhook(self, merchant_id: str, processor: str, body: bytes, headers: dict[str, str]) -> str: ...


def _shown(exc: grpc.aio.AioRpcError, method: str) -> DomainError:
    carried = carried_error(exc)
    if carried is not None:
        return carried
    plain = decode_rpc_error(exc)
    log.warning("backend_error", backend="payment", method=method, code=plain.reason, detail=plain.message)
    err = DomainError(plain.reason, _PLAIN.get(plain.code, "internal error in the payment service"))
    err.code = plain.code
    err.retryable = plain.retryable
    return err


class GrpcPayment:
    """The calls over the gateway's channel to the payment service."""

    def __init__(self, channel: grpc.aio.Channel, tokens: TokenSigner, *, timeout: float) -> None:
        self._tokens = tokens
        self._timeout = timeout

        def call(name: str, response: type[Message]) -> grpc.aio.UnaryUnaryMultiCallable[Message, Message]:
            return channel.unary_unary(
                SERVICE + name, request_serializer=lambda m: m.SerializeToString(), response_deserializer=response.FromString
            )

        self._get = call("GetCheckout", pb.Checkout)
        self._complete = call("CompleteCheckout", pb.Checkout)
        self._webhook = call("HandleProcessorWebhook", pb.HandleProcessorWebhookResponse)

    async def _unary(
        self, call: grpc.aio.UnaryUnaryMultiCallable[Message, Message], method: str, merchant_id: str, request: Message
    ) -> Message:
        metadata = [self._tokens.token_for(merchant_id).metadata()]
        try:
            response: Message = await call(request, metadata=metadata, timeout=self._timeout)
        except grpc.aio.AioRpcError as exc:
            raise _shown(exc, method) from exc
        return response

    async def get_checkout(self, merchant_id: str, session_id: str) -> pb.Checkout:
        found = await self._unary(self._get, "GetCheckout", merchant_id, pb.GetCheckoutRequest(session_id=session_id))
        assert isinstance(found, pb.Checkout)
        return found

    async def complete_checkout(self, merchant_id: str, session_id: str, card_token: str, submit_nonce: str) -> pb.Checkout:
        request = pb.CompleteCheckoutRequest(session_id=session_id, card_token=card_token, submit_nonce=submit_nonce)
        done = await self._unary(self._complete, "CompleteCheckout", merchant_id, request)
        assert isinstance(done, pb.Checkout)
        return done

    async def handle_webhook(self, merchant_id: str, processor: str, body: bytes, headers: dict[str, str]) -> str:
        request = pb.HandleProcessorWebhookRequest(processor=processor, body=body, headers=headers)
        handled = await self._unary(self._webhook, "HandleProcessorWebhook", merchant_id, request)
        assert isinstance(handled, pb.HandleProcessorWebhookResponse)
        return handled.result
