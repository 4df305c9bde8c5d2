"""Prefixed, opaque, URL-safe identifiers (``prod_3xKq...``), as Stripe and Paygentic use.

16 base62 characters after the prefix: 95 bits of randomness from ``secrets``.
"""

from __future__ import annotations

import secrets
import uuid
from typing import Final

_ALPHABET: Final = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
ID_BODY_LENGTH: Final = 16

PREFIXES: Final = {
    "merchant": "org",
    "api_key": "key",
    "product": "prod",
    "billable_metric": "bm",
    "feature": "feat",
    "fee": "fee",
    "price": "price",
    "price_feature": "pf",
    "plan": "plan",
    "plan_version": "pv",
    "customer": "cus",
    "subscription": "sub",
    "invoice": "inv",
    "line_item": "li",
    "entitlement": "ent",
    "grant": "grt",
    "test_clock": "tc",
    "payment_session": "ps",
    "payment": "pay",
    "credit_note": "crn",
    "payment_method": "pm",
    "charge_attempt": "att",
    "refund": "rfd",
    "event": "evt",
}


def new_id(prefix: str) -> str:
    body = "".join(secrets.choice(_ALPHABET) for _ in range(ID_BODY_LENGTH))
    return f"{prefix}_{body}"


def new_event_id() -> str:
    """Domain-event ids: UUIDs, since they travel as ``Nats-Msg-Id`` and inbox keys."""
    return str(uuid.uuid4())
