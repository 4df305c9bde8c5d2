"""Merchant tokens in tests: one key pair for the test session.

``pytest_configure`` (libs/testing/fixtures.py) puts the pair in the environment
(ACCRUE_TOKEN_SIGNING_KEY / ACCRUE_TOKEN_VERIFY_KEYS, unless already set), so every
settings object a test builds, every in-process host and every mesh process it starts
sign and verify with it; ``merchant_metadata`` is what a test that plays the gateway
sends to a service.
"""

from __future__ import annotations

import os

from libs.infra.tokens import SIGNING_KEY_ENV, VERIFY_KEYS_ENV, KeyPair, Token, TokenSigner, generate_keypair

SESSION_KEYS: KeyPair = generate_keypair()


def install_session_keys() -> None:
    for key, value in SESSION_KEYS.env().items():
        os.environ.setdefault(key, value)


def session_signer() -> TokenSigner:
    return TokenSigner.from_text(os.environ.get(SIGNING_KEY_ENV) or SESSION_KEYS.signing_key)


def merchant_token(merchant_id: str, ttl_seconds: float = 3600.0) -> Token:
    """A token for ``merchant_id`` signed with the session key (an hour: a module-level one outlives its tests)."""
    return session_signer().mint(merchant_id, ttl_seconds=ttl_seconds)


def merchant_metadata(merchant_id: str) -> tuple[str, str]:
    """``("authorization", "Bearer <token>")`` for ``merchant_id``, signed with the session key."""
    return merchant_token(merchant_id).metadata()


__all__ = ["SESSION_KEYS", "VERIFY_KEYS_ENV", "install_session_keys", "merchant_metadata", "merchant_token", "session_signer"]
