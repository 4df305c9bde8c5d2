"""Merchant tokens: how a gRPC call proves which merchant it acts for.

The gateway resolves an API key to its merchant (services/gateway/auth.py) and signs a
short-lived token for that merchant with its private Ed25519 key
(``ACCRUE_TOKEN_SIGNING_KEY``); every call to a service carries it as
``authorization: Bearer <token>`` metadata, and the service verifies it with the public
key(s) it is given (``ACCRUE_TOKEN_VERIFY_KEYS``, comma separated: more than one while a
key is rotated). A service can verify but not mint, and the gateway only signs for a
merchant its database knows, so neither a forged nor an unknown merchant gets through.
Internal callers exchange an API key for a token at the gateway
(``POST /v0/internal/tokens``).

A token is ``mt1.<payload>.<signature>``, both parts base64url without padding; the
payload is compact JSON ``{"sub": merchant id, "exp": unix seconds, "kid": key id}`` and
the signature covers ``mt1.<payload>``.

The hot path is a dict look-up on both sides: the gateway reuses one token per merchant
until half its lifetime has passed (TokenSigner.token_for), and a service remembers the
tokens it verified, until they expire, in a bounded cache (TokenVerifier.merchant_of).
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from libs.core.errors import Unauthenticated

# the metadata a call carries its token in: ``authorization: Bearer <token>``
TOKEN_METADATA_KEY = "authorization"
BEARER = "Bearer "
_PREFIX = "mt1."
DEFAULT_TTL_SECONDS = 300.0
# clocks of the gateway and the services may differ by this much
LEEWAY_SECONDS = 5.0
# verified tokens a service remembers (one per merchant and gateway, renewed every ttl/2)
VERIFIED_CACHE_SIZE = 50_000
SIGNING_KEY_ENV = "ACCRUE_TOKEN_SIGNING_KEY"
VERIFY_KEYS_ENV = "ACCRUE_TOKEN_VERIFY_KEYS"


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def key_id(public_key: Ed25519PublicKey) -> str:
    """A short name of a public key (the token names the key that signed it)."""
    raw = public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return _b64(hashlib.sha256(raw).digest()[:6])


@dataclass(frozen=True)
class KeyPair:
    """A signing key and its public half, as the settings spell them (raw base64)."""

    signing_key: str
    verify_key: str

    def env(self) -> dict[str, str]:
        """The two settings, for a process environment."""
        return {SIGNING_KEY_ENV: self.signing_key, VERIFY_KEYS_ENV: self.verify_key}


def generate_keypair() -> KeyPair:
    """A new Ed25519 key pair (what the local runner makes for each mesh)."""
    private = Ed25519PrivateKey.generate()
    raw_private = private.private_bytes(serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption())
    raw_public = private.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return KeyPair(base64.b64encode(raw_private).decode(), base64.b64encode(raw_public).decode())


def mesh_token_env(environ: Mapping[str, str]) -> dict[str, str]:
    """What a mesh's processes need to sign and verify tokens: nothing when the
    environment already sets both keys, else a key pair of the mesh's own."""
    if environ.get(SIGNING_KEY_ENV) and environ.get(VERIFY_KEYS_ENV):
        return {}
    return generate_keypair().env()


def load_private_key(text: str) -> Ed25519PrivateKey:
    """An Ed25519 private key from PEM (PKCS#8) or raw base64 (32 bytes)."""
    text = text.strip()
    if text.startswith("-----BEGIN"):
        key = serialization.load_pem_private_key(text.encode(), password=None)
        if not isinstance(key, Ed25519PrivateKey):
            raise ValueError(f"{SIGNING_KEY_ENV} must be an Ed25519 key")
        return key
    return Ed25519PrivateKey.from_private_bytes(base64.b64decode(text, validate=True))


def load_public_keys(text: str) -> list[Ed25519PublicKey]:
    """Ed25519 public keys from a comma-separated list of PEM (SubjectPublicKeyInfo) or raw base64."""
    keys: list[Ed25519PublicKey] = []
    for item in (part.strip() for part in text.split(",")):
        if not item:
            continue
        if item.startswith("-----BEGIN"):
            key = serialization.load_pem_public_key(item.encode())
            if not isinstance(key, Ed25519PublicKey):
                raise ValueError(f"{VERIFY_KEYS_ENV} must hold Ed25519 keys")
            keys.append(key)
        else:
            keys.append(Ed25519PublicKey.from_public_bytes(base64.b64decode(item, validate=True)))
    return keys


@dataclass(frozen=True)
class Token:
    value: str
    merchant_id: str
    expires_at: float
    renew_at: float

    def metadata(self) -> tuple[str, str]:
        return (TOKEN_METADATA_KEY, BEARER + self.value)


class TokenSigner:
    """Mints tokens for merchants (the gateway)."""

    def __init__(
        self, private_key: Ed25519PrivateKey, *, ttl_seconds: float = DEFAULT_TTL_SECONDS, clock: Callable[[], float] = time.time
    ) -> None:
        if ttl_seconds <= 0:
            raise ValueError("a token's lifetime must be positive")
        self._key = private_key
        self._kid = key_id(private_key.public_key())
        self._ttl = ttl_seconds
        self._clock = clock
        self._current: dict[str, Token] = {}

    @classmethod
    def from_text(cls, text: str, *, ttl_seconds: float = DEFAULT_TTL_SECONDS) -> TokenSigner:
        return cls(load_private_key(text), ttl_seconds=ttl_seconds)

    def mint(self, merchant_id: str, *, ttl_seconds: float | None = None) -> Token:
        """A new token for ``merchant_id``, valid ``ttl_seconds`` (default: the signer's)."""
        ttl = self._ttl if ttl_seconds is None else ttl_seconds
        now = self._clock()
        expires_at = int(now + ttl)
        payload = _b64(json.dumps({"sub": merchant_id, "exp": expires_at, "kid": self._kid}, separators=(",", ":")).encode())
        signed = _PREFIX + payload
        value = f"{signed}.{_b64(self._key.sign(signed.encode('ascii')))}"
        return Token(value, merchant_id, float(expires_at), now + ttl / 2)

    def token_for(self, merchant_id: str) -> Token:
        """The merchant's current token: the same one until half its lifetime has passed."""
        token = self._current.get(merchant_id)
        if token is None or self._clock() >= token.renew_at:
            if len(self._current) >= VERIFIED_CACHE_SIZE:
                self._current.clear()  # a new one per merchant is one signature each
            token = self._current[merchant_id] = self.mint(merchant_id)
        return token


_process_signer: TokenSigner | None = None


def process_signer() -> TokenSigner:
    """This process's signer, from ``ACCRUE_TOKEN_SIGNING_KEY`` (read once). Only processes
    whose definition declares ``mints_tokens`` are given the key."""
    global _process_signer
    if _process_signer is None:
        text = os.environ.get(SIGNING_KEY_ENV)
        if not text:
            raise RuntimeError(f"{SIGNING_KEY_ENV} is not set: this process cannot act for a merchant outside a request")
        _process_signer = TokenSigner.from_text(text)
    return _process_signer


def _invalid(message: str) -> Unauthenticated:
    return Unauthenticated("MERCHANT_TOKEN_INVALID", message)


class TokenVerifier:
    """Checks tokens and answers their merchant (every service), remembering verified ones."""

    def __init__(
        self,
        public_keys: Iterable[Ed25519PublicKey],
        *,
        clock: Callable[[], float] = time.time,
        cache_size: int = VERIFIED_CACHE_SIZE,
    ) -> None:
        self._keys = {key_id(key): key for key in public_keys}
        if not self._keys:
            raise ValueError(f"no verify key: set {VERIFY_KEYS_ENV}")
        self._clock = clock
        self._cache_size = cache_size
        # token -> (merchant, expiry); insertion-ordered, the oldest go first when full
        self._verified: dict[str, tuple[str, float]] = {}

    @classmethod
    def from_text(cls, text: str) -> TokenVerifier:
        return cls(load_public_keys(text))

    def merchant_of_metadata(self, value: str | None) -> str:
        """The merchant of an ``authorization`` metadata value; Unauthenticated if there is none
        or it is not a valid, unexpired token signed by one of our keys."""
        if not value:
            raise Unauthenticated(
                "MERCHANT_TOKEN_REQUIRED",
                "the call carries no merchant token: send `authorization: Bearer <token>` "
                "(the gateway's POST /v0/internal/tokens exchanges an API key for one)",
            )
        if value[:7].lower() != "bearer ":
            raise _invalid("the authorization metadata must be `Bearer <token>`")
        return self.merchant_of(value[7:].strip())

    def merchant_of(self, token: str) -> str:
        now = self._clock()
        hit = self._verified.get(token)
        if hit is not None:
            if hit[1] + LEEWAY_SECONDS > now:
                return hit[0]
            del self._verified[token]
            raise Unauthenticated("MERCHANT_TOKEN_EXPIRED", "the merchant token has expired; get a new one")
        merchant_id, expires_at = self._check(token, now)
        if len(self._verified) >= self._cache_size:
            del self._verified[next(iter(self._verified))]
        self._verified[token] = (merchant_id, expires_at)
        return merchant_id

    def _check(self, token: str, now: float) -> tuple[str, float]:
        if not token.startswith(_PREFIX):
            raise _invalid("the merchant token is malformed (an API key is not a token: exchange it at POST /v0/internal/tokens)")
        signed, _, signature = token.rpartition(".")
        try:
            payload = json.loads(_unb64(signed[len(_PREFIX) :]))
            raw_signature = _unb64(signature)
        except (ValueError, UnicodeDecodeError) as exc:
            raise _invalid("the merchant token is malformed") from exc
        if not isinstance(payload, dict):
            raise _invalid("the merchant token is malformed")
        key = self._keys.get(str(payload.get("kid")))
        if key is None:
            raise _invalid("the merchant token is signed by a key this service does not trust")
        try:
            key.verify(raw_signature, signed.encode("ascii"))
        except InvalidSignature as exc:
            raise _invalid("the merchant token's signature is not valid") from exc
        merchant_id, expires_at = payload.get("sub"), payload.get("exp")
        if not isinstance(merchant_id, str) or not merchant_id or not isinstance(expires_at, int | float):
            raise _invalid("the merchant token is malformed")
        if expires_at + LEEWAY_SECONDS <= now:
            raise Unauthenticated("MERCHANT_TOKEN_EXPIRED", "the merchant token has expired; get a new one")
        return merchant_id, float(expires_at)
