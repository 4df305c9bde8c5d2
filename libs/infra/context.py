"""Per-request context carried in gRPC metadata and contextvars.

The gateway authenticates the API key and forwards the merchant in
``x-accrue-merchant-id``; services never trust a merchant id from a request body.
"""

from __future__ import annotations

from contextvars import ContextVar

from libs.core.errors import Unauthenticated

MERCHANT_METADATA_KEY = "x-accrue-merchant-id"
IDEMPOTENCY_METADATA_KEY = "idempotency-key"

merchant_id_var: ContextVar[str | None] = ContextVar("merchant_id", default=None)
idempotency_key_var: ContextVar[str | None] = ContextVar("idempotency_key", default=None)


def current_merchant_id() -> str:
    merchant_id = merchant_id_var.get()
    if not merchant_id:
        raise Unauthenticated("MERCHANT_REQUIRED", "the call carries no authenticated merchant")
    return merchant_id


def current_idempotency_key() -> str | None:
    return idempotency_key_var.get()
