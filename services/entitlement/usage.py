"""The usage cache: metering's cumulative readings, kept in this process for a few seconds.

A reading is keyed (merchant, subject, metric, window) and kept with metering's
completeness watermark (``complete_until``) and when it was fetched. An evaluation asks
for every reading it needs at once (balance.usage_windows); the ones not cached, or
older than ``max_age`` seconds, are read in ONE metering GetUsages call. Windows of an
evaluation "of now" end at the next instant the answer could change (or FAR_FUTURE), so
the same readings serve every check of a customer until then.

Freshness: metering publishes ``UsageStored`` on core NATS after every aggregator commit
(consumers.UsageHints); each (merchant, subject) it names is dropped here, so the next
check reads again. Concurrent misses of the same readings share one fetch. The hint is lossy by design: a reading also ages out after
``max_age`` seconds, so a lost hint converges. A fetch that raced a hint (started before
it, answered after) is served but not kept. An answer built from cached readings says so
(``cached_since``: the oldest reading's fetch time, Paygentic's ``stale.computedAt``).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Protocol

from libs.core.clock import Clock
from services.entitlement.domain.ports import UsageAnswer, UsageKey

# beyond this many cached readings the cache starts over (a bound on memory, not a policy)
MAX_ENTRIES = 200_000
# metering's limit of readings per GetUsages call (services/metering/server.py)
MAX_READINGS_PER_CALL = 10_000
# what a fetch answers: the readings and metering's watermark
_Fetched = tuple[dict[UsageKey, Decimal], datetime | None]


class MeterReads(Protocol):
    async def usages(self, wanted: Sequence[UsageKey]) -> tuple[list[Decimal], datetime | None]:
        """Metering's GetUsages: one total per reading, in order, and the watermark."""
        ...


@dataclass(frozen=True, slots=True)
class _Cached:
    value: Decimal
    complete_until: datetime | None
    fetched_at: datetime  # the service clock's time (stale.computedAt)
    fetched_monotonic: float


class UsageCache:
    """domain/ports.Usage over metering, with the cache described above."""

    def __init__(self, meter: MeterReads | None, clock: Clock, *, max_age: float = 5.0) -> None:
        self._meter = meter
        self._clock = clock
        self._max_age = max_age
        self._entries: dict[tuple[str, str], dict[UsageKey, _Cached]] = {}
        self._generations: dict[tuple[str, str], int] = {}
        self._size = 0
        self.fetches = 0  # GetUsages calls made (tests and metrics read it)
        self._pending: dict[tuple[str, tuple[UsageKey, ...], tuple[int, ...]], asyncio.Future[_Fetched]] = {}

    def invalidate(self, merchant_id: str, subject: str) -> None:
        """The subject's usage changed (metering's hint): forget its readings."""
        pair = (merchant_id, subject)
        self._generations[pair] = self._generations.get(pair, 0) + 1
        dropped = self._entries.pop(pair, None)
        if dropped:
            self._size -= len(dropped)

    def clear(self) -> None:
        for pair in list(self._entries):
            self.invalidate(*pair)

    async def readings(self, merchant_id: str, wanted: Sequence[UsageKey], *, fresh: bool = False) -> UsageAnswer:
        keys = list(dict.fromkeys(wanted))
        values: dict[UsageKey, Decimal] = {}
        watermarks: list[datetime] = []
        cached_at: dict[UsageKey, datetime] = {}
        missing: list[UsageKey] = []
        now_monotonic = time.monotonic()
        for key in keys:
            hit = None if fresh else self._entries.get((merchant_id, key.subject), {}).get(key)
            if hit is not None and now_monotonic - hit.fetched_monotonic <= self._max_age:
                values[key] = hit.value
                if hit.complete_until is not None:
                    watermarks.append(hit.complete_until)
                cached_at[key] = hit.fetched_at
            else:
                missing.append(key)
        if missing:
            fetched, complete_until = await (self._fetch(merchant_id, missing) if fresh else self._fetch_shared(merchant_id, missing))
            values.update(fetched)
            if complete_until is not None:
                watermarks.append(complete_until)
        return UsageAnswer(values=values, complete_until=min(watermarks) if watermarks else None, cached_at=cached_at)

    async def _fetch_shared(self, merchant_id: str, missing: list[UsageKey]) -> _Fetched:
        """One fetch for concurrent misses of the same readings: when a reading ages out
        under load, every check of that customer misses at once, and each asking metering
        for itself made the slowest checks (p99) of the whole run. A fetch is shared only
        while no hint has come for its subjects since it started (the generations are
        part of its key): a check after a hint never joins a read that may predate it."""
        key = (merchant_id, tuple(missing), tuple(self._generations.get((merchant_id, k.subject), 0) for k in missing))
        pending = self._pending.get(key)
        if pending is None:
            pending = asyncio.ensure_future(self._fetch(merchant_id, missing))
            self._pending[key] = pending

            def done(task: asyncio.Future[_Fetched]) -> None:
                self._pending.pop(key, None)
                if not task.cancelled():
                    task.exception()  # retrieved: every waiter may have gone

            pending.add_done_callback(done)
        # a waiter that is cancelled leaves the fetch to the others
        return await asyncio.shield(pending)

    async def _fetch(self, merchant_id: str, missing: list[UsageKey]) -> _Fetched:
        if self._meter is None:
            from libs.core.errors import Unavailable

            raise Unavailable("METERING_NOT_CONFIGURED", "the entitlement service has no metering address (ACCRUE_METERING_ADDR)")
        generations = {key.subject: self._generations.get((merchant_id, key.subject), 0) for key in missing}
        fetched_at, fetched_monotonic = self._clock.now(), time.monotonic()
        out: dict[UsageKey, Decimal] = {}
        watermark: datetime | None = None
        for start in range(0, len(missing), MAX_READINGS_PER_CALL):
            chunk = missing[start : start + MAX_READINGS_PER_CALL]
            totals, complete_until = await self._meter.usages(chunk)
            self.fetches += 1
            out.update(zip(chunk, totals, strict=True))
            if complete_until is not None:
                watermark = complete_until if watermark is None else min(watermark, complete_until)
        if self._size + len(out) > MAX_ENTRIES:
            self.clear()
        for key, value in out.items():
            pair = (merchant_id, key.subject)
            if self._generations.get(pair, 0) != generations[key.subject]:
                continue  # a hint arrived while reading: this value may predate it
            bucket = self._entries.setdefault(pair, {})
            if key not in bucket:
                self._size += 1
            bucket[key] = _Cached(value, watermark, fetched_at, fetched_monotonic)
        return out, watermark
