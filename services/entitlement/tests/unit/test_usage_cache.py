"""The usage cache's fetches (services/entitlement/usage.py): concurrent misses of the same
readings share one GetUsages call, except across a usage hint and for fresh reads."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from datetime import UTC, datetime
from decimal import Decimal

from libs.core.clock import SystemClock
from services.entitlement.domain.balance import Window
from services.entitlement.domain.ports import UsageKey
from services.entitlement.usage import UsageCache

MERCHANT = "org_cache"
WINDOW = Window(datetime(2027, 1, 1, tzinfo=UTC), datetime(2027, 2, 1, tzinfo=UTC))
KEY = UsageKey("cus_1", "bm_1", WINDOW)
OTHER = UsageKey("cus_2", "bm_1", WINDOW)


class GatedMeter:
    """metering's GetUsages: each call waits for ``release`` and answers its call number."""

    def __init__(self) -> None:
        self.calls: list[list[UsageKey]] = []
        self.release = asyncio.Event()

    async def usages(self, wanted: Sequence[UsageKey]) -> tuple[list[Decimal], datetime | None]:
        self.calls.append(list(wanted))
        number = len(self.calls)
        await self.release.wait()
        return [Decimal(number)] * len(wanted), None


async def _settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


async def test_concurrent_misses_of_the_same_readings_share_one_fetch() -> None:
    meter = GatedMeter()
    cache = UsageCache(meter, SystemClock())
    waiting = [asyncio.ensure_future(cache.readings(MERCHANT, [KEY])) for _ in range(20)]
    other = asyncio.ensure_future(cache.readings(MERCHANT, [OTHER]))
    await _settle()
    assert len(meter.calls) == 2  # one for KEY's twenty checks, one for OTHER
    meter.release.set()
    answers = await asyncio.gather(*waiting)
    assert {a.values[KEY] for a in answers} == {Decimal(1)}
    assert (await other).values[OTHER] == Decimal(2)
    # and the reading is kept: the next check asks nothing
    assert (await cache.readings(MERCHANT, [KEY])).values[KEY] == Decimal(1)
    assert len(meter.calls) == 2


async def test_a_check_after_a_hint_does_not_join_a_fetch_that_started_before_it() -> None:
    meter = GatedMeter()
    cache = UsageCache(meter, SystemClock())
    before = asyncio.ensure_future(cache.readings(MERCHANT, [KEY]))
    await _settle()
    cache.invalidate(MERCHANT, KEY.subject)  # usage stored while the first fetch is out
    after = asyncio.ensure_future(cache.readings(MERCHANT, [KEY]))
    await _settle()
    assert len(meter.calls) == 2
    meter.release.set()
    assert ((await before).values[KEY], (await after).values[KEY]) == (Decimal(1), Decimal(2))


async def test_fresh_reads_never_share_and_a_cancelled_waiter_leaves_the_fetch_to_the_others() -> None:
    meter = GatedMeter()
    cache = UsageCache(meter, SystemClock())
    fresh = [asyncio.ensure_future(cache.readings(MERCHANT, [KEY], fresh=True)) for _ in range(3)]
    shared = [asyncio.ensure_future(cache.readings(MERCHANT, [KEY])) for _ in range(3)]
    await _settle()
    assert len(meter.calls) == 4
    shared[0].cancel()
    await _settle()
    meter.release.set()
    assert all(a.values[KEY] >= 1 for a in await asyncio.gather(*fresh))
    assert len({a.values[KEY] for a in await asyncio.gather(*shared[1:])}) == 1
