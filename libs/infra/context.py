"""Per-request context carried in gRPC metadata and contextvars.

A call proves its merchant with a signed token in ``authorization: Bearer <token>``
metadata (libs/infra/tokens.py); the server interceptor verifies it and sets the
merchant here, and a service calling another forwards the same token
(libs/infra/grpc_client.py). Services never trust a merchant id from a request body,
nor from ``x-accrue-merchant-id`` metadata: that header is no longer read.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar

from libs.core.errors import Unauthenticated
from libs.infra.tokens import BEARER, TOKEN_METADATA_KEY, process_signer

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


@contextmanager
def acting_for(merchant_id: str, *, idempotency_key: str | None = None) -> Iterator[None]:
    """Work done for ``merchant_id`` outside any request (a scheduler, a consumer): the
    calls made inside carry a token this process mints for that merchant (its definition
    declares ``mints_tokens``) and, when given, ``idempotency_key``. Inside a request that
    already acts for the same merchant, the request's token is kept."""
    if merchant_id_var.get() == merchant_id and merchant_token_var.get():
        token = merchant_token_var.get()
    else:
        token = BEARER + process_signer().token_for(merchant_id).value
    merchant = merchant_id_var.set(merchant_id)
    bearer = merchant_token_var.set(token)
    key = idempotency_key_var.set(idempotency_key)
    try:
        yield
    finally:
        idempotency_key_var.reset(key)
        merchant_token_var.reset(bearer)
        merchant_id_var.reset(merchant)
