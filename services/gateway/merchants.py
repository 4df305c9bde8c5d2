"""Merchant and API key provisioning for operators (the `accrue` CLI and the local runner).

Synchronous wrappers over ``services.gateway.store``: each call migrates the gateway's
database to head (so the CLI works against a fresh one), opens a one-connection engine,
does its work and closes it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TypeVar

from sqlalchemy.ext.asyncio import AsyncEngine

from libs.infra import migrations
from libs.infra.db import create_engine
from services.gateway import store

T = TypeVar("T")


def _run(database_url: str, work: Callable[[AsyncEngine], Awaitable[T]]) -> T:
    async def run() -> T:
        engine = create_engine(database_url, pool_size=1)
        try:
            return await work(engine)
        finally:
            await engine.dispose()

    migrations.upgrade(database_url, Path(__file__).parent / "migrations", store.metadata)
    return asyncio.run(run())


def create_merchant_sync(database_url: str, name: str) -> tuple[str, str]:
    """A new merchant and its first key: (merchant id, the key's secret)."""
    created = _run(database_url, lambda engine: store.create_merchant(engine, name))
    return created.merchant_id, created.api_key


def list_merchants_sync(database_url: str) -> list[store.Merchant]:
    return _run(database_url, store.list_merchants)


def list_api_keys_sync(database_url: str, merchant_id: str) -> list[store.ApiKey]:
    return _run(database_url, lambda engine: store.list_api_keys(engine, merchant_id))


def create_api_key_sync(database_url: str, merchant_id: str) -> store.NewApiKey:
    return _run(database_url, lambda engine: store.create_api_key(engine, merchant_id))


def revoke_api_key_sync(database_url: str, key_ref: str) -> store.ApiKey:
    """Revoke by key id or prefix; every running gateway stops accepting the key at once."""
    return _run(database_url, lambda engine: store.revoke_api_key(engine, key_ref))
