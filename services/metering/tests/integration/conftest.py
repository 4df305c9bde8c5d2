"""Fixtures of metering's integration tests."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from libs.infra.db import Database, create_engine
from libs.testing.fixtures import Infra
from services.metering import store


@pytest.fixture
async def db(infra: Infra) -> AsyncIterator[Database]:
    """A fresh database with metering's tables (created from store.metadata, not migrated)."""
    engine = create_engine(infra.new_database_url("metering"), pool_size=4)
    async with engine.begin() as conn:
        await conn.run_sync(store.metadata.create_all)
    database = Database(engine, store.metadata)
    yield database
    await database.dispose()
