"""Merchant provisioning for operators (the `accrue` CLI and the local runner)."""

from __future__ import annotations

import asyncio
from pathlib import Path

from libs.infra import migrations
from libs.infra.db import create_engine
from services.gateway import store


def create_merchant_sync(database_url: str, name: str) -> tuple[str, str]:
    async def run() -> tuple[str, str]:
        engine = create_engine(database_url, pool_size=1)
        try:
            created = await store.create_merchant(engine, name)
        finally:
            await engine.dispose()
        return created.merchant_id, created.api_key

    migrations.upgrade(database_url, Path(__file__).parent / "migrations", store.metadata)
    return asyncio.run(run())
