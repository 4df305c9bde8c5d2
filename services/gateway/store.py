"""The gateway's own small database: merchants and their API keys (stored hashed)."""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine

from libs.core.ids import new_id

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
)


def hash_key(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


@dataclass(frozen=True)
class NewMerchant:
    merchant_id: str
    api_key: str


async def create_merchant(engine: AsyncEngine, name: str, *, live: bool = False) -> NewMerchant:
    if not name.strip():
        raise ValueError("merchant name is required")
    now = datetime.now(UTC)
    merchant_id = new_id("org")
    secret = f"sk_{'live' if live else 'test'}_{secrets.token_urlsafe(32)}"
    async with engine.begin() as conn:
        await conn.execute(merchants.insert().values(id=merchant_id, name=name.strip(), created_at=now))
        await conn.execute(
            api_keys.insert().values(
                id=new_id("key"), merchant_id=merchant_id, key_hash=hash_key(secret), key_prefix=secret[:12], created_at=now
            )
        )
    return NewMerchant(merchant_id=merchant_id, api_key=secret)


async def merchant_for_key(engine: AsyncEngine, secret: str) -> str | None:
    async with engine.connect() as conn:
        row = (
            await conn.execute(
                sa.select(api_keys.c.merchant_id).where(api_keys.c.key_hash == hash_key(secret), api_keys.c.revoked_at.is_(None))
            )
        ).first()
    return None if row is None else str(row.merchant_id)
