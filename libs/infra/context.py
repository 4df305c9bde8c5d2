"""Per-request context carried in gRPC metadata and contextvars.

A call proves its merchant with a signed token in ``authorization: Bearer <token>``
metadata (libs/infra/tokens.py); the server interceptor verifies it and sets the
merchant here, and a service calling another forwards the same token
(libs/infra/grpc_client.py). Services never trust a merchant id from a request body,
nor from ``x-accrue-merchant-id`` metadata: that header is no longer read.
"""

from __future__ import annotations

from contextvars import ContextVar

from libs.core.errors import Unauthenticated
from libs.infra.tokens import TOKEN_METADATA_KEY

# ignored by services since merchant tokens (kept so old callers still import it)
MERCHANT_METADATA_KEY = "x-accrue-merchant-id"
IDEMPOTENCY_METADATA_KEY = "idempotency-key"
MERCHANT_TOKEN_METADATA_KEY = TOKEN_METADATA_KEY

merchant_id_var: ContextVar[str | None] = ContextVar("merchant_id", default=None)
# the verified ``Bearer <token>`` the call came with, forwarded on the calls it makes
merchant_token_var: ContextVar[str | None] = ContextVar("merchant_token", default=None)
idempotency_key_var: ContextVar[str | None] = ContextVar("idempotency_key", default=None)


def current_merchant_id() -> str:
    merchant_id = merchant_id_var.get()
    if not merchant_id:
        raise Unauthenticated("MERCHANT_REQUIRED", "the call carries no authenticated merchant")
    return merchant_id


def current_idempotency_key() -> str | None:
    return idempotency_key_var.get()
