"""The gateway's own small database: merchants and their API keys (stored hashed).

A revocation sets ``revoked_at`` and, in the same transaction, sends a PostgreSQL
``NOTIFY`` on ``KEY_REVOKED_CHANNEL`` with the key's id; PostgreSQL delivers it only if
the transaction commits, so every gateway process (``services.gateway.auth.ApiKeys``
LISTENs) drops the key from its cache the moment the revocation is visible.
"""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from libs.core.errors import FailedPrecondition, InvalidArgument, NotFound
from libs.core.ids import new_id

# NOTIFY channel of revocations; the payload is the revoked key's id (never the secret)
KEY_REVOKED_CHANNEL = "accrue_api_key_revoked"
# what `key_prefix` keeps of a secret: enough to recognise a key, far too little to use it
KEY_PREFIX_LENGTH = 12

metadata = sa.MetaData()

merchants = sa.Table(
    "merchants",
    metadata,
    sa.Column("id", sa.Text, primary_key=True),
    sa.Column("name", sa.Text, nullable=False),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
)

api_keys = sa.Table(
    "api_keys",
    metadata,
    sa.Column("id", sa.Text, primary_key=True),
    sa.Column("merchant_id", sa.Text, sa.ForeignKey("merchants.id"), nullable=False),
    # sha256 of the secret; the secret itself is shown once and never stored
    sa.Column("key_hash", sa.Text, nullable=False, unique=True),
    sa.Column("key_prefix", sa.Text, nullable=False),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("revoked_at", sa.DateTime(timezone=True)),
    sa.Index("ix_api_keys_merchant_id", "merchant_id"),
)


def hash_key(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


@dataclass(frozen=True)
class NewMerchant:
    merchant_id: str
    api_key: str


@dataclass(frozen=True)
class Merchant:
    merchant_id: str
    name: str
    created_at: datetime
    active_keys: int


@dataclass(frozen=True)
class ApiKey:
    """What an operator may see of a key: never the secret, nor its hash."""

    key_id: str
    merchant_id: str
    prefix: str
    created_at: datetime
    revoked_at: datetime | None

    @property
    def revoked(self) -> bool:
        return self.revoked_at is not None


@dataclass(frozen=True)
class NewApiKey:
    key: ApiKey
    # shown once, to the operator who made it; only its hash is stored
    secret: str


@dataclass(frozen=True)
class ResolvedKey:
    key_id: str
    merchant_id: str


def _new_secret(live: bool) -> str:
    return f"sk_{'live' if live else 'test'}_{secrets.token_urlsafe(32)}"


async def _insert_key(conn: AsyncConnection, merchant_id: str, now: datetime, live: bool) -> NewApiKey:
    secret = _new_secret(live)
    key = ApiKey(key_id=new_id("key"), merchant_id=merchant_id, prefix=secret[:KEY_PREFIX_LENGTH], created_at=now, revoked_at=None)
    await conn.execute(
        api_keys.insert().values(id=key.key_id, merchant_id=merchant_id, key_hash=hash_key(secret), key_prefix=key.prefix, created_at=now)
    )
    return NewApiKey(key=key, secret=secret)


async def create_merchant(engine: AsyncEngine, name: str, *, live: bool = False) -> NewMerchant:
    if not name.strip():
        raise ValueError("merchant name is required")
    now = datetime.now(UTC)
    merchant_id = new_id("org")
    async with engine.begin() as conn:
        await conn.execute(merchants.insert().values(id=merchant_id, name=name.strip(), created_at=now))
        created = await _insert_key(conn, merchant_id, now, live)
    return NewMerchant(merchant_id=merchant_id, api_key=created.secret)


async def list_merchants(engine: AsyncEngine) -> list[Merchant]:
    active = sa.func.count(api_keys.c.id).filter(api_keys.c.revoked_at.is_(None))
    query = (
        sa.select(merchants.c.id, merchants.c.name, merchants.c.created_at, active.label("active_keys"))
        .select_from(merchants.outerjoin(api_keys, api_keys.c.merchant_id == merchants.c.id))
        .group_by(merchants.c.id)
        .order_by(merchants.c.created_at, merchants.c.id)
    )
    async with engine.connect() as conn:
        rows = (await conn.execute(query)).all()
    return [Merchant(merchant_id=r.id, name=r.name, created_at=r.created_at, active_keys=int(r.active_keys)) for r in rows]


async def _require_merchant(conn: AsyncConnection, merchant_id: str) -> None:
    found = (await conn.execute(sa.select(merchants.c.id).where(merchants.c.id == merchant_id))).first()
    if found is None:
        raise NotFound("merchant", merchant_id, field="merchant")


def _api_key(row: sa.Row[Any, Any, Any, Any, Any]) -> ApiKey:
    return ApiKey(key_id=row[0], merchant_id=row[1], prefix=row[2], created_at=row[3], revoked_at=row[4])


_KEY_COLUMNS = (api_keys.c.id, api_keys.c.merchant_id, api_keys.c.key_prefix, api_keys.c.created_at, api_keys.c.revoked_at)


async def list_api_keys(engine: AsyncEngine, merchant_id: str) -> list[ApiKey]:
    """Every key of the merchant, revoked ones included, oldest first."""
    async with engine.connect() as conn:
        await _require_merchant(conn, merchant_id)
        rows = (
            await conn.execute(
                sa.select(*_KEY_COLUMNS).where(api_keys.c.merchant_id == merchant_id).order_by(api_keys.c.created_at, api_keys.c.id)
            )
        ).all()
    return [_api_key(r) for r in rows]


async def create_api_key(engine: AsyncEngine, merchant_id: str, *, live: bool = False) -> NewApiKey:
    """One more key for an existing merchant (to rotate: create, deploy it, revoke the old one)."""
    async with engine.begin() as conn:
        await _require_merchant(conn, merchant_id)
        return await _insert_key(conn, merchant_id, datetime.now(UTC), live)


async def revoke_api_key(engine: AsyncEngine, key_ref: str) -> ApiKey:
    """Revoke a key named by its id (``key_...``) or by its prefix (``sk_test_AbCd``).

    A prefix must name exactly one key. Revoking a revoked key changes nothing and
    returns it as it is (so a retried revocation is safe). Every gateway process hears of
    the revocation through NOTIFY once this transaction commits.
    """
    key_ref = key_ref.strip()
    if not key_ref:
        raise InvalidArgument("key", "name the key to revoke by its id (key_...) or its prefix", reason="KEY_REQUIRED")
    by_id = key_ref.startswith("key_")
    where = api_keys.c.id == key_ref if by_id else api_keys.c.key_prefix == key_ref
    async with engine.begin() as conn:
        rows = (await conn.execute(sa.select(*_KEY_COLUMNS).where(where).with_for_update())).all()
        if not rows:
            raise NotFound("api_key", key_ref, field="key")
        if len(rows) > 1:
            ids = ", ".join(sorted(r.id for r in rows))
            raise FailedPrecondition(
                "KEY_PREFIX_AMBIGUOUS",
                f"prefix {key_ref!r} names {len(rows)} keys ({ids}): revoke by id",
                field="key",
                metadata={"key_ids": ids},
            )
        key = _api_key(rows[0])
        if key.revoked:
            return key
        revoked_at = datetime.now(UTC)
        await conn.execute(api_keys.update().where(api_keys.c.id == key.key_id).values(revoked_at=revoked_at))
        await conn.execute(sa.select(sa.func.pg_notify(KEY_REVOKED_CHANNEL, key.key_id)))
    return ApiKey(key_id=key.key_id, merchant_id=key.merchant_id, prefix=key.prefix, created_at=key.created_at, revoked_at=revoked_at)


async def resolve_key(engine: AsyncEngine, key_hash: str) -> ResolvedKey | None:
    """The live (unrevoked) key with this hash, or None."""
    async with engine.connect() as conn:
        row = (
            await conn.execute(
                sa.select(api_keys.c.id, api_keys.c.merchant_id).where(api_keys.c.key_hash == key_hash, api_keys.c.revoked_at.is_(None))
            )
        ).first()
    return None if row is None else ResolvedKey(key_id=str(row.id), merchant_id=str(row.merchant_id))


async def merchant_for_key(engine: AsyncEngine, secret: str) -> str | None:
    resolved = await resolve_key(engine, hash_key(secret))
    return None if resolved is None else resolved.merchant_id


async def merchant_name(engine: AsyncEngine, merchant_id: str) -> str | None:
    """The merchant's display name, or None when this gateway's database has no such merchant."""
    async with engine.connect() as conn:
        row = (await conn.execute(sa.select(merchants.c.name).where(merchants.c.id == merchant_id))).first()
    return None if row is None else str(row.name)
