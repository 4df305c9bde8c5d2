"""Merchant tokens (libs/infra/tokens.py): what a service accepts and what it refuses."""

from __future__ import annotations

import base64

import pytest
from cryptography.hazmat.primitives import serialization

from libs.core.errors import Unauthenticated
from libs.infra.grpc_server import GrpcServer
from libs.infra.settings import ServiceSettings
from libs.infra.tokens import LEEWAY_SECONDS, TokenSigner, TokenVerifier, generate_keypair, load_private_key, load_public_keys

PAIR = generate_keypair()


class Clock:
    def __init__(self, now: float = 1_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def _verifier(clock: Clock | None = None, keys: str = PAIR.verify_key) -> TokenVerifier:
    return TokenVerifier(load_public_keys(keys), clock=clock or Clock())


def _signer(clock: Clock | None = None, pair_key: str = PAIR.signing_key) -> TokenSigner:
    return TokenSigner(load_private_key(pair_key), clock=clock or Clock())


def _reason(verifier: TokenVerifier, value: str | None) -> str:
    with pytest.raises(Unauthenticated) as caught:
        verifier.merchant_of_metadata(value)
    return caught.value.reason


def test_a_signed_token_answers_its_merchant_and_again_from_the_cache() -> None:
    verifier = _verifier()
    token = _signer().mint("org_a")
    assert verifier.merchant_of_metadata(f"Bearer {token.value}") == "org_a"
    assert verifier.merchant_of_metadata(f"bearer {token.value}") == "org_a"


def test_no_token_a_malformed_one_and_an_api_key_are_refused() -> None:
    verifier = _verifier()
    assert _reason(verifier, None) == "MERCHANT_TOKEN_REQUIRED"
    assert _reason(verifier, "") == "MERCHANT_TOKEN_REQUIRED"
    assert _reason(verifier, "Basic abc") == "MERCHANT_TOKEN_INVALID"
    assert _reason(verifier, "Bearer sk_live_notatoken") == "MERCHANT_TOKEN_INVALID"
    assert _reason(verifier, "Bearer mt1.!!!.???") == "MERCHANT_TOKEN_INVALID"


def test_a_forged_payload_fails_its_signature() -> None:
    verifier = _verifier()
    genuine = _signer().mint("org_a").value
    other = _signer().mint("org_b").value
    # org_b's payload under org_a's signature
    forged = other.rsplit(".", 1)[0] + "." + genuine.rsplit(".", 1)[1]
    assert _reason(verifier, f"Bearer {forged}") == "MERCHANT_TOKEN_INVALID"


def test_a_token_signed_by_another_key_is_refused_even_when_it_names_a_trusted_key() -> None:
    verifier = _verifier()
    stranger = generate_keypair()
    assert _reason(verifier, f"Bearer {_signer(pair_key=stranger.signing_key).mint('org_a').value}") == "MERCHANT_TOKEN_INVALID"
    # a stranger's signature over a payload that names our key id
    ours = _signer().mint("org_a").value
    signed = ours.rsplit(".", 1)[0]
    theirs = load_private_key(stranger.signing_key).sign(signed.encode())
    fake = signed + "." + base64.urlsafe_b64encode(theirs).rstrip(b"=").decode()
    assert _reason(verifier, f"Bearer {fake}") == "MERCHANT_TOKEN_INVALID"


def test_an_expired_token_is_refused_also_once_cached() -> None:
    clock = Clock()
    verifier = _verifier(clock)
    token = _signer(clock).mint("org_a", ttl_seconds=60)
    assert verifier.merchant_of(token.value) == "org_a"
    clock.now += 60 + LEEWAY_SECONDS + 1
    assert _reason(verifier, f"Bearer {token.value}") == "MERCHANT_TOKEN_EXPIRED"
    fresh = _verifier(clock)  # never seen it
    assert _reason(fresh, f"Bearer {token.value}") == "MERCHANT_TOKEN_EXPIRED"


def test_rotation_two_verify_keys_accept_both_signers() -> None:
    new = generate_keypair()
    verifier = _verifier(keys=f"{PAIR.verify_key}, {new.verify_key}")
    assert verifier.merchant_of(_signer().mint("org_a").value) == "org_a"
    assert verifier.merchant_of(_signer(pair_key=new.signing_key).mint("org_b").value) == "org_b"


def test_pem_keys_load_too() -> None:
    private = load_private_key(PAIR.signing_key)
    pem_private = private.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    pem_public = private.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    token = TokenSigner.from_text(pem_private.decode()).mint("org_a")
    assert TokenVerifier.from_text(pem_public.decode()).merchant_of(token.value) == "org_a"


def test_the_gateway_reuses_a_merchants_token_until_half_its_lifetime() -> None:
    clock = Clock()
    signer = TokenSigner(load_private_key(PAIR.signing_key), ttl_seconds=300, clock=clock)
    first = signer.token_for("org_a")
    clock.now += 149
    assert signer.token_for("org_a") is first
    assert signer.token_for("org_b").merchant_id == "org_b"
    clock.now += 2
    renewed = signer.token_for("org_a")
    assert renewed.value != first.value and renewed.expires_at > first.expires_at


def test_a_service_without_verify_keys_does_not_start() -> None:
    with pytest.raises(RuntimeError, match="ACCRUE_TOKEN_VERIFY_KEYS"):
        GrpcServer(["x.Y"], "127.0.0.1", 0, settings=ServiceSettings(token_verify_keys=""))


def test_acting_for_mints_a_token_of_that_merchant_and_clears_the_callers_idempotency_key(monkeypatch: pytest.MonkeyPatch) -> None:
    from libs.infra import context, tokens

    monkeypatch.setenv(tokens.SIGNING_KEY_ENV, PAIR.signing_key)
    monkeypatch.setattr(tokens, "_process_signer", None)
    request_key = context.idempotency_key_var.set("the-callers-key")
    try:
        with context.acting_for("org_one"):
            bearer = context.merchant_token_var.get()
            assert bearer is not None and bearer.startswith(tokens.BEARER)
            assert _verifier().merchant_of(bearer.removeprefix(tokens.BEARER)) == "org_one"
            assert context.current_merchant_id() == "org_one"
            assert context.current_idempotency_key() is None
        with context.acting_for("org_one", idempotency_key="step-1"):
            assert context.current_idempotency_key() == "step-1"
        assert context.current_idempotency_key() == "the-callers-key"
        assert context.merchant_id_var.get() is None
    finally:
        context.idempotency_key_var.reset(request_key)


def test_acting_for_keeps_the_requests_token_for_the_same_merchant_and_needs_the_key_otherwise(monkeypatch: pytest.MonkeyPatch) -> None:
    from libs.infra import context, tokens

    monkeypatch.delenv(tokens.SIGNING_KEY_ENV, raising=False)
    monkeypatch.setattr(tokens, "_process_signer", None)
    merchant = context.merchant_id_var.set("org_one")
    bearer = context.merchant_token_var.set("Bearer from-the-request")
    try:
        with context.acting_for("org_one"):
            assert context.merchant_token_var.get() == "Bearer from-the-request"
        with pytest.raises(RuntimeError, match="ACCRUE_TOKEN_SIGNING_KEY"), context.acting_for("org_two"):
            pass
    finally:
        context.merchant_token_var.reset(bearer)
        context.merchant_id_var.reset(merchant)
