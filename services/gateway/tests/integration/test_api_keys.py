"""API keys against the real PostgreSQL: the store's list/create/revoke, and ``ApiKeys``,
the per-process cache whose revocations travel by LISTEN/NOTIFY.

Two ``ApiKeys`` on one database stand for two gateway processes. Their clocks are frozen
(``monotonic`` never advances) wherever a test means to prove that a revocation arrived
by notification and not by the cache entry expiring.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine

from libs.core.errors import FailedPrecondition, InvalidArgument, NotFound
from libs.infra import migrations
from libs.infra.db import create_engine
from libs.testing.fixtures import Infra
from services.gateway import store
from services.gateway.auth import LISTENER_APPLICATION_NAME, ApiKeys
from services.gateway.settings import GatewaySettings

pytestmark = pytest.mark.integration
MIGRATIONS = Path(store.__file__).parent / "migrations"


class FrozenClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
async def engine(infra: Infra) -> AsyncIterator[AsyncEngine]:
    url = infra.new_database_url("gateway_keys")
    await asyncio.to_thread(migrations.upgrade, url, MIGRATIONS, store.metadata)
    engine = create_engine(url, pool_size=4)
    yield engine
    await engine.dispose()


def settings(cache_seconds: float = 1.0) -> GatewaySettings:
    return GatewaySettings(api_key_cache_seconds=cache_seconds)


async def started(engine: AsyncEngine, clock: Callable[[], float] | None = None, **kwargs: float) -> ApiKeys:
    keys = ApiKeys(settings(), engine, monotonic=clock or FrozenClock(), **kwargs)
    await keys.start()
    assert keys.listening
    return keys


async def within(seconds: float, check: Callable[[], Awaitable[bool]]) -> bool:
    """Poll ``check`` until it holds or ``seconds`` pass (no longer)."""
    deadline = time.monotonic() + seconds
    while True:
        if await check():
            return True
        if time.monotonic() >= deadline:
            return False
        await asyncio.sleep(0.01)


class CountingLookups:
    """Counts the database lookups ApiKeys makes (and may act while one is in flight)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, during: Callable[[store.ResolvedKey | None], None] | None = None) -> None:
        self.calls = 0
        real = store.resolve_key

        async def counted(engine: AsyncEngine, key_hash: str) -> store.ResolvedKey | None:
            self.calls += 1
            resolved = await real(engine, key_hash)
            if during is not None:
                during(resolved)
            return resolved

        monkeypatch.setattr(store, "resolve_key", counted)


async def revoke_silently(engine: AsyncEngine, key_id: str) -> None:
    """Revoke without NOTIFY: what a gateway sees if the notification is lost."""
    async with engine.begin() as conn:
        await conn.execute(store.api_keys.update().where(store.api_keys.c.id == key_id).values(revoked_at=datetime.now(UTC)))


# -- migrations and the store -------------------------------------------------------


async def test_migrations_reach_head_and_match_the_tables(engine: AsyncEngine) -> None:
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext
    from alembic.script import ScriptDirectory

    async with engine.connect() as conn:
        diff = await conn.run_sync(lambda sync: compare_metadata(MigrationContext.configure(sync), store.metadata))
        version = (await conn.execute(sa.text("SELECT version_num FROM alembic_version"))).scalar()
    config = migrations.alembic_config(engine.url.render_as_string(hide_password=False), MIGRATIONS, store.metadata)
    assert version == ScriptDirectory.from_config(config).get_current_head()
    assert diff == []


async def test_keys_are_listed_created_and_revoked_without_ever_showing_a_secret(engine: AsyncEngine) -> None:
    merchant = await store.create_merchant(engine, "Acme")
    other = await store.create_merchant(engine, "Other")
    second = await store.create_api_key(engine, merchant.merchant_id)
    assert second.secret.startswith("sk_test_") and second.secret != merchant.api_key
    assert second.key.prefix == second.secret[: store.KEY_PREFIX_LENGTH]

    keys = await store.list_api_keys(engine, merchant.merchant_id)
    assert [k.prefix for k in keys] == [merchant.api_key[:12], second.secret[:12]]
    assert {k.merchant_id for k in keys} == {merchant.merchant_id}
    assert all(k.revoked_at is None and k.key_id.startswith("key_") for k in keys)
    for key in keys:  # nothing listed holds the secret or its hash
        assert merchant.api_key not in repr(key) and second.secret not in repr(key)
        assert store.hash_key(second.secret) not in repr(key)

    revoked = await store.revoke_api_key(engine, keys[0].key_id)
    assert revoked.key_id == keys[0].key_id and revoked.revoked_at is not None
    after = {k.key_id: k for k in await store.list_api_keys(engine, merchant.merchant_id)}
    assert after[keys[0].key_id].revoked_at == revoked.revoked_at
    assert after[second.key.key_id].revoked_at is None
    assert await store.merchant_for_key(engine, merchant.api_key) is None
    assert await store.merchant_for_key(engine, second.secret) == merchant.merchant_id

    # a retried revocation changes nothing
    again = await store.revoke_api_key(engine, keys[0].key_id)
    assert again.revoked_at == revoked.revoked_at

    # by prefix, as `accrue key list` shows it
    by_prefix = await store.revoke_api_key(engine, second.key.prefix)
    assert by_prefix.key_id == second.key.key_id and by_prefix.revoked_at is not None
    assert await store.merchant_for_key(engine, second.secret) is None

    merchants = {m.merchant_id: m for m in await store.list_merchants(engine)}
    assert merchants[merchant.merchant_id].active_keys == 0 and merchants[merchant.merchant_id].name == "Acme"
    assert merchants[other.merchant_id].active_keys == 1


async def test_unknown_merchants_keys_and_ambiguous_prefixes_are_refused(engine: AsyncEngine) -> None:
    with pytest.raises(NotFound) as missing_merchant:
        await store.list_api_keys(engine, "org_missing")
    assert missing_merchant.value.reason == "MERCHANT_NOT_FOUND" and missing_merchant.value.field == "merchant"
    with pytest.raises(NotFound):
        await store.create_api_key(engine, "org_missing")
    with pytest.raises(NotFound) as missing_key:
        await store.revoke_api_key(engine, "key_missing")
    assert missing_key.value.reason == "API_KEY_NOT_FOUND" and missing_key.value.field == "key"
    with pytest.raises(InvalidArgument):
        await store.revoke_api_key(engine, "  ")

    merchant = await store.create_merchant(engine, "Acme")
    twin = await store.create_api_key(engine, merchant.merchant_id)
    async with engine.begin() as conn:  # force a prefix collision (24 random bits make one rare, not impossible)
        await conn.execute(store.api_keys.update().where(store.api_keys.c.id == twin.key.key_id).values(key_prefix=merchant.api_key[:12]))
    with pytest.raises(FailedPrecondition) as ambiguous:
        await store.revoke_api_key(engine, merchant.api_key[:12])
    assert ambiguous.value.reason == "KEY_PREFIX_AMBIGUOUS"
    assert twin.key.key_id in ambiguous.value.message
    # nothing was revoked
    assert all(k.revoked_at is None for k in await store.list_api_keys(engine, merchant.merchant_id))


# -- ApiKeys ---------------------------------------------------------------------


async def test_only_a_bearer_header_with_a_live_key_resolves(engine: AsyncEngine) -> None:
    merchant = await store.create_merchant(engine, "Acme")
    keys = await started(engine)
    try:
        assert await keys.merchant_for(f"Bearer {merchant.api_key}") == merchant.merchant_id
        assert await keys.merchant_for(f"bearer  {merchant.api_key} ") == merchant.merchant_id
        for header in [None, "", "Bearer", "Bearer ", merchant.api_key, f"Basic {merchant.api_key}", "Bearer sk_test_unknown"]:
            assert await keys.merchant_for(header) is None, header
    finally:
        await keys.close()


async def test_a_revocation_reaches_every_gateway_process_at_once(engine: AsyncEngine) -> None:
    merchant = await store.create_merchant(engine, "Acme")
    spare = await store.create_api_key(engine, merchant.merchant_id)
    # frozen clocks: a cached entry never expires here, so only the notification can evict it
    first, second = await started(engine), await started(engine)
    try:
        for keys in (first, second):
            assert await keys.merchant_for(f"Bearer {merchant.api_key}") == merchant.merchant_id
            assert await keys.merchant_for(f"Bearer {spare.secret}") == merchant.merchant_id
        await store.revoke_api_key(engine, (await store.list_api_keys(engine, merchant.merchant_id))[0].key_id)
        assert await within(1.0, refused([first, second], merchant.api_key)), "the revoked key still works after 1 s"
        for keys in (first, second):
            assert await keys.merchant_for(f"Bearer {spare.secret}") == merchant.merchant_id
    finally:
        await first.close()
        await second.close()


def refused(processes: list[ApiKeys], secret: str) -> Callable[[], Awaitable[bool]]:
    async def check() -> bool:
        return all([await keys.merchant_for(f"Bearer {secret}") is None for keys in processes])

    return check


async def test_resolved_keys_are_cached_and_unknown_ones_are_not(engine: AsyncEngine, monkeypatch: pytest.MonkeyPatch) -> None:
    lookups = CountingLookups(monkeypatch)
    merchant = await store.create_merchant(engine, "Acme")
    keys = await started(engine)
    try:
        for _ in range(3):
            assert await keys.merchant_for(f"Bearer {merchant.api_key}") == merchant.merchant_id
        assert lookups.calls == 1
        # an unknown key is asked about each time, so a key made a moment later works at once
        assert await keys.merchant_for("Bearer sk_test_not_yet") is None
        assert await keys.merchant_for("Bearer sk_test_not_yet") is None
        assert lookups.calls == 3
        fresh = await store.create_api_key(engine, merchant.merchant_id)
        assert await keys.merchant_for(f"Bearer {fresh.secret}") == merchant.merchant_id
    finally:
        await keys.close()


async def test_a_lost_notification_is_bounded_by_the_cache_lifetime(engine: AsyncEngine) -> None:
    merchant = await store.create_merchant(engine, "Acme")
    clock = FrozenClock()
    keys = await started(engine, clock)
    try:
        assert await keys.merchant_for(f"Bearer {merchant.api_key}") == merchant.merchant_id
        key_id = (await store.list_api_keys(engine, merchant.merchant_id))[0].key_id
        await revoke_silently(engine, key_id)
        clock.now += 0.5  # within the entry's lifetime the cache still answers (what the bound allows)
        assert await keys.merchant_for(f"Bearer {merchant.api_key}") == merchant.merchant_id
        clock.now += 0.5  # api_key_cache_seconds = 1.0 after it was cached: looked up again
        assert await keys.merchant_for(f"Bearer {merchant.api_key}") is None
    finally:
        await keys.close()


async def test_nothing_is_cached_while_the_listener_is_not_listening(engine: AsyncEngine) -> None:
    merchant = await store.create_merchant(engine, "Acme")
    keys = ApiKeys(settings(), engine, monotonic=FrozenClock())  # never started: no notifications can arrive
    assert await keys.merchant_for(f"Bearer {merchant.api_key}") == merchant.merchant_id
    await revoke_silently(engine, (await store.list_api_keys(engine, merchant.merchant_id))[0].key_id)
    assert await keys.merchant_for(f"Bearer {merchant.api_key}") is None


async def test_a_revocation_heard_during_a_lookup_keeps_its_answer_out_of_the_cache(
    engine: AsyncEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    merchant = await store.create_merchant(engine, "Acme")
    keys = await started(engine)
    try:
        # the notification lands between the lookup's read and its answer being cached
        lookups = CountingLookups(monkeypatch, during=lambda resolved: keys.forget(resolved.key_id) if resolved else None)
        assert await keys.merchant_for(f"Bearer {merchant.api_key}") == merchant.merchant_id
        assert await keys.merchant_for(f"Bearer {merchant.api_key}") == merchant.merchant_id
        assert lookups.calls == 2
    finally:
        await keys.close()


async def test_the_listener_reconnects_and_starts_over_with_an_empty_cache(engine: AsyncEngine, monkeypatch: pytest.MonkeyPatch) -> None:
    lookups = CountingLookups(monkeypatch)
    merchant = await store.create_merchant(engine, "Acme")
    keys = await started(engine, reconnect_seconds=0.05)
    try:
        assert await keys.merchant_for(f"Bearer {merchant.api_key}") == merchant.merchant_id
        assert lookups.calls == 1
        async with engine.begin() as conn:
            ended = (
                await conn.execute(
                    sa.text(
                        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                        " WHERE datname = current_database() AND application_name = :name"
                    ),
                    {"name": LISTENER_APPLICATION_NAME},
                )
            ).all()
        assert len(ended) == 1, "exactly one listener connection"

        # the cache was dropped with the connection: the key is looked up again ...
        assert await within(10.0, looked_up_again(keys, merchant.api_key, lookups))
        assert await within(10.0, listening(keys))
        # ... and once listening again, a revocation is heard on the new connection
        await keys.merchant_for(f"Bearer {merchant.api_key}")
        await store.revoke_api_key(engine, (await store.list_api_keys(engine, merchant.merchant_id))[0].key_id)
        assert await within(1.0, refused([keys], merchant.api_key))
    finally:
        await keys.close()


def looked_up_again(keys: ApiKeys, secret: str, lookups: CountingLookups) -> Callable[[], Awaitable[bool]]:
    async def check() -> bool:
        await keys.merchant_for(f"Bearer {secret}")
        return lookups.calls > 1

    return check


def listening(keys: ApiKeys) -> Callable[[], Awaitable[bool]]:
    async def check() -> bool:
        return keys.listening

    return check


async def test_the_gateway_starts_uncached_when_the_database_cannot_be_reached() -> None:
    # a port nothing listens on: start() gives up waiting, merchant_for still answers what it can
    engine = create_engine("postgresql+psycopg://postgres@127.0.0.1:9/nowhere", pool_size=1)
    keys = ApiKeys(settings(), engine, reconnect_seconds=0.05)
    try:
        await keys.start(wait_seconds=0.2)
        assert not keys.listening
        assert await keys.merchant_for(None) is None
    finally:
        await keys.close()
        await engine.dispose()
