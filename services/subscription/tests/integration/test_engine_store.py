"""The due-work table against real PostgreSQL: rows are unique by (subscription, sequence,
kind, attempt), claims come in time order, one head per customer, and concurrent claimers
never hold one row (FOR UPDATE SKIP LOCKED); a collect's attempts are rows of their own,
and a postponed row runs again as itself."""

from __future__ import annotations

import asyncio
import random
from collections import Counter, defaultdict
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine

from libs.infra.db import create_engine
from libs.testing.fixtures import Infra
from services.subscription import engine_store
from services.subscription.domain.timeline import Due, Kind
from services.subscription.engine_store import Lane, Owner, due_work

pytestmark = pytest.mark.integration

T0 = datetime(2026, 1, 1, tzinfo=UTC)
NOW = datetime(2026, 12, 1, tzinfo=UTC)
FAR = datetime(2100, 1, 1, tzinfo=UTC)


@pytest.fixture
async def engine(infra: Infra) -> AsyncIterator[AsyncEngine]:
    """A fresh database with the due_work table (the migration's twin: test_migrations)."""
    eng = create_engine(infra.new_database_url("due_work"), pool_size=8)
    async with eng.begin() as conn:
        await conn.run_sync(lambda sync: due_work.create(sync))
    yield eng
    await eng.dispose()


def owner(sub: str, customer: str | None = None, clock: str | None = "clk_1") -> Owner:
    return Owner(sub, "org_m", customer or f"cus_{sub}", clock)


async def lay(engine: AsyncEngine, rows: list[tuple[Owner, Due]]) -> int:
    async with engine.begin() as conn:
        return await engine_store.lay(conn, rows, now=NOW)


async def test_a_row_is_laid_once_whatever_the_retries(engine: AsyncEngine) -> None:
    rows = [(owner("sub_a"), Due(Kind.OPEN, 1, T0)), (owner("sub_a"), Due(Kind.CLOSE, 1, T0 + timedelta(days=31)))]
    assert await lay(engine, rows) == 2
    assert await lay(engine, rows) == 0
    # a later attempt with another due time does not move the stored row
    assert await lay(engine, [(owner("sub_a"), Due(Kind.OPEN, 1, T0 + timedelta(days=3)))]) == 0
    async with engine.connect() as conn:
        stored = await engine_store.rows_of(conn, "sub_a")
    assert [(r.kind, r.sequence_number, r.due_at, r.done) for r in stored] == [
        (Kind.OPEN, 1, T0, False),
        (Kind.CLOSE, 1, T0 + timedelta(days=31), False),
    ]


async def test_the_primary_key_refuses_a_duplicate(engine: AsyncEngine) -> None:
    await lay(engine, [(owner("sub_a"), Due(Kind.OPEN, 1, T0))])
    with pytest.raises(sa.exc.IntegrityError):
        async with engine.begin() as conn:
            await conn.execute(
                due_work.insert().values(
                    subscription_id="sub_a",
                    sequence_number=1,
                    kind="open",
                    attempt=0,
                    merchant_id="org_m",
                    customer_id="cus_x",
                    due_at=T0,
                    kind_order=1,
                    final=False,
                    attempts=0,
                    created_at=NOW,
                )
            )


async def test_a_collects_attempts_are_rows_of_their_own_with_their_invoice_and_first_attempt(engine: AsyncEngine) -> None:
    o = owner("sub_a")
    first = Due(Kind.COLLECT, 1, T0, attempt=0, invoice_id="inv_1", first_attempt_at=T0)
    retry = Due(Kind.COLLECT, 1, T0 + timedelta(days=3), attempt=1, invoice_id="inv_1", first_attempt_at=T0)
    assert await lay(engine, [(o, Due(Kind.ISSUE, 1, T0)), (o, first), (o, retry)]) == 3
    assert await lay(engine, [(o, retry)]) == 0
    async with engine.connect() as conn:
        stored = await engine_store.rows_of(conn, "sub_a")
    assert [r.due for r in stored] == [Due(Kind.ISSUE, 1, T0), first, retry]
    assert [r.key for r in stored] == [("sub_a", 1, "issue", 0), ("sub_a", 1, "collect", 0), ("sub_a", 1, "collect", 1)]
    assert retry.attempt_key == "inv_1:auto:1"
    # a collect names its invoice (the database says so too)
    with pytest.raises(sa.exc.IntegrityError):
        await lay(engine, [(o, Due(Kind.COLLECT, 2, T0))])


async def test_a_postponed_row_runs_again_as_itself_later(engine: AsyncEngine) -> None:
    o = owner("sub_a")
    await lay(engine, [(o, Due(Kind.COLLECT, 1, T0, invoice_id="inv_1", first_attempt_at=T0))])
    async with engine.begin() as conn:
        row = (await engine_store.claim(conn, Lane.clock("clk_1"), until=T0, limit=10))[0]
        assert await engine_store.postpone(conn, row.key, due_at=T0 + timedelta(hours=1)) == 1
    async with engine.begin() as conn:
        assert await engine_store.claim(conn, Lane.clock("clk_1"), until=T0, limit=10) == []
        again = await engine_store.claim(conn, Lane.clock("clk_1"), until=T0 + timedelta(hours=1), limit=10)
        assert [(r.key, r.due_at, r.first_attempt_at) for r in again] == [(row.key, T0 + timedelta(hours=1), T0)]
        await engine_store.mark_done(conn, [row.key], now=NOW)
        assert await engine_store.postpone(conn, row.key, due_at=FAR) == 0  # done rows stay done


async def test_claims_come_in_time_and_kind_order_one_head_per_customer(engine: AsyncEngine) -> None:
    await lay(
        engine,
        [
            (owner("sub_b"), Due(Kind.ISSUE, 1, T0 + timedelta(hours=1))),
            (owner("sub_a"), Due(Kind.CLOSE, 1, T0)),
            (owner("sub_c"), Due(Kind.OPEN, 2, T0)),
            (owner("sub_a"), Due(Kind.ISSUE, 1, T0 + timedelta(hours=1))),  # behind sub_a's close
            (owner("sub_d"), Due(Kind.END, 0, T0)),
            (owner("sub_e"), Due(Kind.OPEN, 1, T0 + timedelta(days=40))),  # not due yet
            (owner("sub_f", clock="clk_2"), Due(Kind.OPEN, 1, T0)),  # another lane
        ],
    )
    async with engine.begin() as conn:
        got = await engine_store.claim(conn, Lane.clock("clk_1"), until=T0 + timedelta(days=1), limit=10)
    assert [(r.subscription_id, r.kind) for r in got] == [
        ("sub_d", Kind.END),
        ("sub_c", Kind.OPEN),
        ("sub_a", Kind.CLOSE),
        ("sub_b", Kind.ISSUE),
    ]
    async with engine.begin() as conn:
        strict = await engine_store.claim(conn, Lane.clock("clk_1"), until=T0 + timedelta(days=1), limit=10, same_instant=True)
    assert [r.subscription_id for r in strict] == ["sub_d", "sub_c", "sub_a"]  # only the earliest instant


async def test_a_customers_rows_across_subscriptions_run_one_at_a_time(engine: AsyncEngine) -> None:
    shared = "cus_shared"
    await lay(
        engine,
        [
            (owner("sub_a", shared), Due(Kind.CLOSE, 1, T0)),
            (owner("sub_b", shared), Due(Kind.CLOSE, 1, T0 + timedelta(minutes=1))),
        ],
    )
    async with engine.begin() as conn:
        first = await engine_store.claim(conn, Lane.clock("clk_1"), until=FAR, limit=10)
        assert [r.subscription_id for r in first] == ["sub_a"]
        await engine_store.mark_done(conn, [first[0].key], now=NOW)
    async with engine.begin() as conn:
        second = await engine_store.claim(conn, Lane.clock("clk_1"), until=FAR, limit=10)
    assert [r.subscription_id for r in second] == ["sub_b"]


async def test_two_concurrent_claimers_never_hold_one_row(engine: AsyncEngine) -> None:
    await lay(engine, [(owner(f"sub_{i:03}"), Due(Kind.CLOSE, 1, T0)) for i in range(100)])
    a, b = await engine.connect(), await engine.connect()
    try:
        await a.begin()
        await b.begin()
        got_a = await engine_store.claim(a, Lane.clock("clk_1"), until=FAR, limit=60)
        got_b = await engine_store.claim(b, Lane.clock("clk_1"), until=FAR, limit=60)
        keys_a, keys_b = {r.key for r in got_a}, {r.key for r in got_b}
        assert len(keys_a) == 60
        assert len(keys_b) == 40  # the rest: a's rows were skipped, not waited for
        assert not keys_a & keys_b
        # a commits its rows done; b rolls back (a crash): b's rows are claimable again
        await engine_store.mark_done(a, list(keys_a), now=NOW)
        await a.commit()
        await b.rollback()
        await b.begin()
        again = await engine_store.claim(b, Lane.clock("clk_1"), until=FAR, limit=100)
        assert {r.key for r in again} == keys_b
        await b.rollback()
    finally:
        await a.close()
        await b.close()


async def test_a_locked_head_keeps_its_customers_later_rows_from_another_claimer(engine: AsyncEngine) -> None:
    await lay(engine, [(owner("sub_a"), Due(Kind.CLOSE, 1, T0)), (owner("sub_a"), Due(Kind.ISSUE, 1, T0 + timedelta(hours=1)))])
    a, b = await engine.connect(), await engine.connect()
    try:
        await a.begin()
        await b.begin()
        assert [r.kind for r in await engine_store.claim(a, Lane.clock("clk_1"), until=FAR, limit=10)] == [Kind.CLOSE]
        assert await engine_store.claim(b, Lane.clock("clk_1"), until=FAR, limit=10) == []
        assert await engine_store.pending(b, Lane.clock("clk_1"), until=FAR)
    finally:
        await a.close()
        await b.close()


async def test_a_waiting_claim_blocks_for_the_holder_then_sees_its_row_done(engine: AsyncEngine) -> None:
    await lay(engine, [(owner("sub_a"), Due(Kind.OPEN, 0, T0)), (owner("sub_a"), Due(Kind.ISSUE, 0, T0))])
    holder = await engine.connect()
    try:
        await holder.begin()
        held = await engine_store.claim(holder, Lane.of_subscription("sub_a"), until=T0, limit=10)
        assert [r.kind for r in held] == [Kind.OPEN]

        async def waiter() -> list[engine_store.DueRow]:
            async with engine.begin() as conn:
                return await engine_store.claim(conn, Lane.of_subscription("sub_a"), until=T0, limit=10, wait=True)

        task = asyncio.create_task(waiter())
        await asyncio.sleep(0.3)
        assert not task.done()  # blocked on the held row
        await engine_store.mark_done(holder, [held[0].key], now=NOW)
        await holder.commit()
        # the done row is skipped once its lock goes; its successor was not yet the head
        # when the waiter's statement began, so it answers nothing and a new claim gets it
        assert await asyncio.wait_for(task, 5) == []
        async with engine.begin() as conn:
            nxt = await engine_store.claim(conn, Lane.of_subscription("sub_a"), until=T0, limit=10, wait=True)
        assert [r.kind for r in nxt] == [Kind.ISSUE]
    finally:
        await holder.close()


async def test_failed_rows_wait_for_their_retry_time_in_real_time(engine: AsyncEngine) -> None:
    await lay(engine, [(owner("sub_a", clock=None), Due(Kind.ISSUE, 1, T0))])
    async with engine.begin() as conn:
        row = (await engine_store.claim(conn, Lane.system(), until=NOW, limit=10, now=NOW))[0]
        await engine_store.mark_failed(conn, row.key, error="Unavailable: usage not complete", retry_at=NOW + timedelta(seconds=30))
    async with engine.begin() as conn:
        assert await engine_store.claim(conn, Lane.system(), until=NOW, limit=10, now=NOW) == []
        later = await engine_store.claim(conn, Lane.system(), until=NOW, limit=10, now=NOW + timedelta(seconds=31))
    assert [r.attempts for r in later] == [1]
    async with engine.connect() as conn:
        error = (await conn.execute(sa.select(due_work.c.last_error))).scalar_one()
    assert error == "Unavailable: usage not complete"


async def test_lanes_do_not_mix(engine: AsyncEngine) -> None:
    await lay(
        engine,
        [
            (owner("sub_rt", clock=None), Due(Kind.OPEN, 1, T0)),
            (owner("sub_c1"), Due(Kind.OPEN, 1, T0)),
            (owner("sub_c2", clock="clk_2"), Due(Kind.OPEN, 1, T0)),
        ],
    )
    async with engine.begin() as conn:
        assert [r.subscription_id for r in await engine_store.claim(conn, Lane.system(), until=FAR, limit=10)] == ["sub_rt"]
        assert [r.subscription_id for r in await engine_store.claim(conn, Lane.clock("clk_2"), until=FAR, limit=10)] == ["sub_c2"]
        assert await engine_store.next_due(conn, Lane.clock("clk_1")) == T0
        assert await engine_store.next_due(conn, Lane.clock("clk_none")) is None


async def test_drop_pending_keeps_done_rows_earlier_invoices_and_the_running_row(engine: AsyncEngine) -> None:
    o = owner("sub_a")
    await lay(
        engine,
        [
            (o, Due(Kind.CLOSE, 1, T0)),
            (o, Due(Kind.ISSUE, 1, T0 + timedelta(hours=1))),
            (o, Due(Kind.OPEN, 2, T0)),
            (o, Due(Kind.CLOSE, 2, T0 + timedelta(days=28))),
            (o, Due(Kind.END, 0, T0 + timedelta(days=10))),
        ],
    )
    async with engine.begin() as conn:
        await engine_store.mark_done(conn, [("sub_a", 2, "open", 0)], now=NOW)
        dropped = await engine_store.drop_pending(conn, "sub_a", from_sequence=2, ends=True, keep=("sub_a", 0, "end", 0))
        assert dropped == 1  # close 2 (open 2 is done, the end row is the one running)
        left = {(r.kind, r.sequence_number, r.done) for r in await engine_store.rows_of(conn, "sub_a", lock=True)}
    assert left == {(Kind.CLOSE, 1, False), (Kind.ISSUE, 1, False), (Kind.OPEN, 2, True), (Kind.END, 0, False)}


async def test_many_concurrent_claimers_run_every_row_once_and_each_customer_in_order(engine: AsyncEngine) -> None:
    # 4 claimers drain 1,200 rows of 120 customers (2 subscriptions each, 5 rows each):
    # every row is executed exactly once and a customer's rows in their (time, kind) order
    rng = random.Random(7)
    laid: list[tuple[Owner, Due]] = []
    for c in range(120):
        for s in range(2):
            o = owner(f"sub_{c:03}_{s}", f"cus_{c:03}")
            for k in range(5):
                kind = rng.choice(list(Kind))
                invoice = f"inv_{o.subscription_id}_{k}" if kind is Kind.COLLECT else None
                laid.append((o, Due(kind, k, T0 + timedelta(minutes=rng.randrange(0, 50)), invoice_id=invoice)))
    await lay(engine, laid)
    async with engine.connect() as conn:
        rows = (
            await conn.execute(
                sa.select(
                    due_work.c.customer_id, due_work.c.due_at, due_work.c.kind_order, due_work.c.subscription_id, due_work.c.sequence_number
                )
            )
        ).all()
    expected_order: dict[str, list[tuple[str, int]]] = defaultdict(list)
    for r in sorted(rows, key=lambda r: (r.due_at, r.kind_order, r.subscription_id, r.sequence_number)):
        expected_order[r.customer_id].append((r.subscription_id, r.sequence_number))
    executed: Counter[engine_store.Key] = Counter()
    order: dict[str, list[tuple[str, int]]] = defaultdict(list)

    async def claimer() -> None:
        while True:
            async with engine.begin() as conn:
                got = await engine_store.claim(conn, Lane.clock("clk_1"), until=FAR, limit=25)
                if not got:
                    if not await engine_store.pending(conn, Lane.clock("clk_1"), until=FAR):
                        return
                    await asyncio.sleep(0.005)
                    continue
                await asyncio.sleep(0.001)  # "the RPCs"
                for row in got:
                    executed[row.key] += 1
                    order[row.customer_id].append((row.subscription_id, row.sequence_number))
                await engine_store.mark_done(conn, [r.key for r in got], now=NOW)

    await asyncio.wait_for(asyncio.gather(*(claimer() for _ in range(4))), 120)
    assert len(executed) == len(rows)
    assert set(executed.values()) == {1}
    assert order == expected_order
