"""Processor webhooks: ``POST /webhooks/processors/{processor}/{merchant_id}``.

A processor (the sandbox, Stripe, Adyen ...) reports a charge's or a refund's outcome to
the URL the payment service gave it. The gateway takes no API key here: the processor
signs the body and the payment service's adapter verifies the signature. The gateway
checks the merchant exists, reads the raw body (at most 1 MiB, byte for byte: the
signature covers it) and hands it with the lower-cased headers to
payment.HandleProcessorWebhook; 200 ``{"received": true, "result": ...}``. A bad
signature (INVALID_ARGUMENT) is 400 with the usual JSON error body, an unknown merchant
404. Anything else non-2xx makes the processor deliver it again later.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from libs.core.errors import DomainError, http_status
from services.gateway.directory import MerchantDirectory
from services.gateway.payments import PaymentBackend
from services.gateway.replies import CATEGORY, MAX_BODY_BYTES, Receive, Reply, error_body, error_reply, read_body, to_json

PREFIX = "/webhooks/processors/"
TEMPLATE = "/webhooks/processors/{processor}/{merchant_id}"
_PATH = re.compile(r"/webhooks/processors/(?P<processor>[a-z0-9][a-z0-9_-]{0,39})/(?P<merchant>[A-Za-z0-9_-]{1,128})")
_NO_STORE = [(b"cache-control", b"no-store")]


@dataclass(frozen=True)
class WebhookRoute:
    processor: str
    merchant_id: str


def match(path: str) -> WebhookRoute | None:
    found = _PATH.fullmatch(path)
    return None if found is None else WebhookRoute(found["processor"], found["merchant"])


def forwarded_headers(raw_headers: list[tuple[bytes, bytes]]) -> dict[str, str]:
    """Every header, its name lower-cased; a repeated one joined with ", " (RFC 9110)."""
    headers: dict[str, str] = {}
    for key, value in raw_headers:
        name = key.decode("latin-1").lower()
        text = value.decode("latin-1")
        headers[name] = f"{headers[name]}, {text}" if name in headers else text
    return headers


def _error(err: DomainError) -> Reply:
    status = http_status(err.code, err.reason)
    return Reply(status, to_json(error_body(status, err.message, CATEGORY.get(status, "error"), err.reason, err.metadata)), _NO_STORE)


class ProcessorWebhooks:
    def __init__(self, payment: PaymentBackend, merchants: MerchantDirectory) -> None:
        self._payment = payment
        self._merchants = merchants

    async def handle(
        self, method: str, path: str, raw_headers: list[tuple[bytes, bytes]], headers: dict[str, str], receive: Receive
    ) -> Reply:
        route = match(path)
        if route is None:
            return error_reply(404, "ROUTE_NOT_FOUND", f"no route for {method} {path}")
        if method != "POST":
            return error_reply(405, "METHOD_NOT_ALLOWED", f"{method} is not allowed on {TEMPLATE}", headers=[(b"allow", b"POST")])
        if await self._merchants.name_of(route.merchant_id) is None:
            return error_reply(404, "MERCHANT_NOT_FOUND", f"merchant {route.merchant_id!r} was not found", "merchantId")
        body = await read_body(receive, headers, MAX_BODY_BYTES)
        try:
            result = await self._payment.handle_webhook(route.merchant_id, route.processor, body, forwarded_headers(raw_headers))
        except DomainError as err:
            return _error(err)
        return Reply(200, to_json({"received": True, "result": result}), _NO_STORE)
