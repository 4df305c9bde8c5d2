"""Shapes of request values that more than one place checks: the gateway at the edge and
the service that owns the value. Each caller raises its own error (naming its field);
the shapes are said once, here.

- An idempotency key: 1-255 printable ASCII characters (what gRPC metadata carries;
  Stripe's limit of 255).
- A processor's card token (``tok_...``) and a hosted page's nonce: never card data, so
  neither admits a run of 12 or more digits (the shortest card number), and a number pasted
  in their place is refused before it is stored, sent on or logged.
"""

from __future__ import annotations

import re
from typing import Final

_IDEMPOTENCY_KEY: Final = re.compile(r"[\x20-\x7e]{1,255}", re.ASCII)
_CARD_TOKEN: Final = re.compile(r"[a-z]+_[A-Za-z0-9]{8,64}", re.ASCII)
_PAGE_NONCE: Final = re.compile(r"[A-Za-z0-9_-]{8,128}", re.ASCII)
_DIGIT_RUN: Final = re.compile(r"[0-9]{12,}", re.ASCII)


def is_idempotency_key(value: str) -> bool:
    return _IDEMPOTENCY_KEY.fullmatch(value) is not None


def is_card_token(value: str) -> bool:
    """A lowercase prefix, ``_``, then 8-64 letters or digits, and no card number in it."""
    return _CARD_TOKEN.fullmatch(value) is not None and _DIGIT_RUN.search(value) is None


def is_page_nonce(value: str) -> bool:
    """8-128 URL-safe characters, and no card number in it."""
    return _PAGE_NONCE.fullmatch(value) is not None and _DIGIT_RUN.search(value) is None
