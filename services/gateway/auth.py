"""API key -> merchant, cached per gateway process, with revocation that takes effect at once.

Every request carries ``Authorization: Bearer <key>``; looking the key up in the
gateway's database on each one would put a query on the hot path, so a resolved key is
remembered for ``api_key_cache_seconds`` (default 1 s). Revocation must not wait for
that: ``store.revoke_api_key`` sends ``NOTIFY accrue_api_key_revoked, '<key id>'`` in the
transaction that sets ``revoked_at``, and every gateway process keeps one connection
that ``LISTEN``s and drops the key from its cache as soon as the revocation commits.

The guarantees, in order of strength:

- While the listener is connected, a revoked key stops working as soon as its
  notification arrives (milliseconds after the revoking transaction commits).
- While the listener is known to be down (it could not connect, or its heartbeat
  failed), nothing is cached: every request looks its key up, so revocation is immediate
  then too. On reconnect the cache starts empty, since notifications sent meanwhile are
  lost.
- If notifications are lost without the listener noticing (a half-open connection
  between two heartbeats), an entry still expires after ``api_key_cache_seconds``: that
  is the documented worst case.

Only keys that resolved are cached; an unknown or revoked key is looked up every time
(one indexed query), so a key created a moment ago works at once too. The cache holds
sha256 hashes of keys, not the keys themselves.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass

import psycopg
from sqlalchemy.ext.asyncio import AsyncEngine

from libs.infra.logging import get_logger
from services.gateway import store
from services.gateway.settings import GatewaySettings

log = get_logger(__name__)

# how the listener's connection shows in pg_stat_activity
LISTENER_APPLICATION_NAME = "accrue-gateway-key-revocations"
_MAX_RECONNECT_SECONDS = 10.0
# a cache past this many entries sheds its expired ones (live keys bound its size anyway)
_PRUNE_ABOVE = 10_000


@dataclass(frozen=True)
class _Entry:
    key_id: str
    merchant_id: str
    expires_at: float


class ApiKeys:
    """Resolves ``Authorization`` header values to merchant ids for one gateway process."""

    def __init__(
        self,
        settings: GatewaySettings,
        engine: AsyncEngine,
        *,
        monotonic: Callable[[], float] = time.monotonic,
        heartbeat_seconds: float = 5.0,
        reconnect_seconds: float = 1.0,
    ) -> None:
        self._engine = engine
        self._ttl = settings.api_key_cache_seconds
        self._monotonic = monotonic
        self._heartbeat_seconds = heartbeat_seconds
        self._reconnect_seconds = reconnect_seconds
        self._conninfo = engine.url.set(drivername="postgresql").render_as_string(hide_password=False)
        self._by_hash: dict[str, _Entry] = {}
        self._hash_of_key: dict[str, str] = {}
        # bumped by every invalidation: a lookup that raced with one must not cache its answer
        self._generation = 0
        self._listening = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._resolving: dict[tuple[str, int], asyncio.Future[str | None]] = {}

    @property
    def listening(self) -> bool:
        """True while revocation notifications are being received (the cache is in use)."""
        return self._listening.is_set()

    async def start(self, *, wait_seconds: float = 5.0) -> None:
        """Start the listener and wait (a bounded time) until it listens.

        If the database cannot be reached in time the gateway starts anyway, uncached,
        and the listener keeps trying in the background.
        """
        if self._task is None:
            self._task = asyncio.create_task(self._listen_forever(), name="api-key-revocations")
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._listening.wait(), wait_seconds)

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        self._set_listening(False)

    async def merchant_for(self, authorization: str | None) -> str | None:
        """The merchant of a ``Bearer <key>`` header value, or None for anything else."""
        if not authorization or authorization[:7].lower() != "bearer ":
            return None
        secret = authorization[7:].strip()
        if not secret:
            return None
        key_hash = store.hash_key(secret)
        entry = self._by_hash.get(key_hash)
        now = self._monotonic()
        if entry is not None:
            if entry.expires_at > now:
                return entry.merchant_id
            self._forget_hash(key_hash)
        # one look-up per key at a time: when an entry expires under load, the requests
        # that find it gone wait for the same query instead of each sending one
        # (a revocation bumps the generation: a request after it never joins a query sent before it)
        flight = (key_hash, self._generation)
        pending = self._resolving.get(flight)
        if pending is None:
            pending = asyncio.ensure_future(self._resolve(key_hash, now))
            self._resolving[flight] = pending
            pending.add_done_callback(lambda _: self._resolving.pop(flight, None))
        return await asyncio.shield(pending)

    async def _resolve(self, key_hash: str, now: float) -> str | None:
        generation = self._generation
        resolved = await store.resolve_key(self._engine, key_hash)
        if resolved is None:
            return None
        # a revocation heard while we were asking may be about this very key: answer, don't remember
        if self._listening.is_set() and generation == self._generation and self._ttl > 0:
            self._remember(key_hash, resolved, now + self._ttl)
        return resolved.merchant_id

    def forget(self, key_id: str) -> None:
        """Drop one key from the cache (what a revocation notification does)."""
        self._generation += 1
        key_hash = self._hash_of_key.get(key_id)
        if key_hash is not None:
            self._forget_hash(key_hash)

    def clear(self) -> None:
        self._generation += 1
        self._by_hash.clear()
        self._hash_of_key.clear()

    def _remember(self, key_hash: str, resolved: store.ResolvedKey, expires_at: float) -> None:
        if len(self._by_hash) >= _PRUNE_ABOVE:
            now = self._monotonic()
            for stale in [h for h, e in self._by_hash.items() if e.expires_at <= now]:
                self._forget_hash(stale)
        self._by_hash[key_hash] = _Entry(resolved.key_id, resolved.merchant_id, expires_at)
        self._hash_of_key[resolved.key_id] = key_hash

    def _forget_hash(self, key_hash: str) -> None:
        entry = self._by_hash.pop(key_hash, None)
        if entry is not None:
            self._hash_of_key.pop(entry.key_id, None)

    def _set_listening(self, listening: bool) -> None:
        # both ways the cache starts over: notifications were (or are about to be) missed
        self.clear()
        if listening:
            self._listening.set()
        else:
            self._listening.clear()

    async def _listen_forever(self) -> None:
        failures = 0
        delay = self._reconnect_seconds
        while True:
            try:
                await self._listen_once()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                lost = self.listening
                if lost:
                    failures = 0
                # uncached meanwhile (every request asks the database): come back soon, but
                # back off from a database that stays down
                delay = min(self._reconnect_seconds * 2**failures, _MAX_RECONNECT_SECONDS)
                failures += 1
                event = "api_key_listener_lost" if lost else "api_key_listener_unavailable"
                log.warning(event, error=type(exc).__name__, detail=str(exc)[:200], retry_in_seconds=delay)
            finally:
                self._set_listening(False)
            await asyncio.sleep(delay)

    async def _listen_once(self) -> None:
        conn = await psycopg.AsyncConnection.connect(
            self._conninfo, autocommit=True, connect_timeout=5, application_name=LISTENER_APPLICATION_NAME
        )
        try:
            await conn.execute(f"LISTEN {store.KEY_REVOKED_CHANNEL}")
            self._set_listening(True)
            log.info("api_key_listener_started", channel=store.KEY_REVOKED_CHANNEL)
            while True:
                async for notify in conn.notifies(timeout=self._heartbeat_seconds):
                    self.forget(notify.payload)
                # a connection that died silently raises (or hangs) here instead of
                # leaving the cache trusted for longer than one heartbeat
                await asyncio.wait_for(conn.execute("SELECT 1"), self._heartbeat_seconds)
        finally:
            with contextlib.suppress(Exception):
                await conn.close()
