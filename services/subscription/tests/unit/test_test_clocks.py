"""Test clocks on the fakes: created at the service's now or any given time, moved
forward only by an absolute time or an ISO 8601 duration, deleted softly unless a live
subscription uses them; an advance tells metering, then runs the engine."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from libs.core.errors import FailedPrecondition, InvalidArgument, NotFound
from services.subscription.domain import commands, use_cases
from services.subscription.domain.model import TestClockChanged, TestClockChangeKind
from services.subscription.tests.fakes import FakeMetering, FakeTimeline
from services.subscription.tests.unit.world import LATER, MERCHANT, NOW, OTHER, World

PAST = datetime(2024, 1, 31, tzinfo=UTC)


async def _clock(w: World, at: datetime | None = PAST, merchant: str = MERCHANT) -> str:
    clock = await use_cases.create_test_clock(w.uow, merchant, NOW, commands.CreateTestClock(at, name="Jan"))
    w.uow.commit()
    return clock.id


async def test_a_clock_starts_at_now_unless_told_and_may_start_in_the_past() -> None:
    w = World()
    now_clock = await use_cases.create_test_clock(w.uow, MERCHANT, NOW, commands.CreateTestClock())
    past_clock = await use_cases.create_test_clock(w.uow, MERCHANT, NOW, commands.CreateTestClock(PAST))
    assert (now_clock.current_time, past_clock.current_time) == (NOW, PAST)
    assert now_clock.id.startswith("tc_") and len(now_clock.id) == 3 + 16
    assert w.uow.commit() == [
        TestClockChanged(TestClockChangeKind.CREATED, now_clock.id, MERCHANT),
        TestClockChanged(TestClockChangeKind.CREATED, past_clock.id, MERCHANT),
    ]


@pytest.mark.parametrize(
    ("advance_by", "expected"),
    [
        ("P1M", datetime(2024, 2, 29, tzinfo=UTC)),  # Jan 31 + 1 month clamps to the leap day
        ("P7D", datetime(2024, 2, 7, tzinfo=UTC)),
        ("PT2H", datetime(2024, 1, 31, 2, tzinfo=UTC)),
        ("P1Y2M3DT4H5M6S", datetime(2025, 4, 3, 4, 5, 6, tzinfo=UTC)),
    ],
)
async def test_advance_by_adds_an_iso_duration_on_the_calendar(advance_by: str, expected: datetime) -> None:
    w = World()
    clock_id = await _clock(w)
    clock = await use_cases.advance_test_clock(w.uow, MERCHANT, LATER, commands.AdvanceTestClock(clock_id, advance_by=advance_by))
    assert clock.current_time == expected
    assert clock.update_time == LATER
    assert w.uow.commit() == [TestClockChanged(TestClockChangeKind.ADVANCED, clock_id, MERCHANT)]


@pytest.mark.parametrize(
    ("command", "field"),
    [
        (commands.AdvanceTestClock("", current_time=PAST), "currentTime"),
        (commands.AdvanceTestClock("", current_time=PAST - timedelta(seconds=1)), "currentTime"),
        (commands.AdvanceTestClock("", advance_by="P0D"), "advanceBy"),
        (commands.AdvanceTestClock("", advance_by="-P1D"), "advanceBy"),
        (commands.AdvanceTestClock("", advance_by="one month"), "advanceBy"),
        (commands.AdvanceTestClock(""), "currentTime"),
        (commands.AdvanceTestClock("", current_time=NOW, advance_by="P1D"), "currentTime"),
    ],
)
async def test_a_clock_only_moves_forward_by_exactly_one_of_the_fields(command: commands.AdvanceTestClock, field: str) -> None:
    w = World()
    clock_id = await _clock(w)
    with pytest.raises(InvalidArgument) as err:
        await use_cases.advance_test_clock(
            w.uow, MERCHANT, LATER, commands.AdvanceTestClock(clock_id, command.current_time, command.advance_by)
        )
    assert err.value.field == field
    assert (await w.uow.test_clocks.get(MERCHANT, clock_id)).current_time == PAST
    assert w.uow.commit() == []


async def test_after_an_advance_metering_hears_of_the_clock_before_the_engine_runs() -> None:
    w = World()
    clock_id = await _clock(w)
    customer = await w.customer()
    await use_cases.create_subscription(
        w.uow, MERCHANT, NOW, w.subscribe(customer.id, started_at=PAST, test_clock_id=clock_id), catalog=w.catalog, timeline=w.timeline
    )
    clock = await use_cases.advance_test_clock(w.uow, MERCHANT, LATER, commands.AdvanceTestClock(clock_id, advance_by="P1M"))
    metering, timeline = FakeMetering(), FakeTimeline()
    metering.journal = timeline.journal
    await use_cases.after_advance(clock, await w.uow.subscriptions.customers_on_clock(clock_id), metering=metering, timeline=timeline)
    assert timeline.journal == ["metering", "engine"]
    assert metering.told == [(clock_id, datetime(2024, 2, 29, tzinfo=UTC), [customer.id], False)]
    assert timeline.calls == [("advance_clock", clock_id, datetime(2024, 2, 29, tzinfo=UTC))]


async def test_a_clock_in_use_cannot_be_deleted_and_a_deleted_one_is_gone() -> None:
    w = World()
    clock_id = await _clock(w)
    customer = await w.customer()
    subscription = await use_cases.create_subscription(
        w.uow, MERCHANT, NOW, w.subscribe(customer.id, started_at=PAST, test_clock_id=clock_id), catalog=w.catalog, timeline=None
    )
    w.uow.commit()
    with pytest.raises(FailedPrecondition) as err:
        await use_cases.delete_test_clock(w.uow, MERCHANT, LATER, commands.Delete(clock_id))
    assert err.value.reason == "TEST_CLOCK_IN_USE"
    subscription.terminate(PAST + timedelta(days=1), by=MERCHANT, reason="done", change_reason=None, now=LATER)
    deleted = await use_cases.delete_test_clock(w.uow, MERCHANT, LATER, commands.Delete(clock_id))
    assert deleted.delete_time == LATER
    assert TestClockChanged(TestClockChangeKind.DELETED, clock_id, MERCHANT) in w.uow.commit()
    with pytest.raises(NotFound):
        await use_cases.advance_test_clock(w.uow, MERCHANT, LATER, commands.AdvanceTestClock(clock_id, advance_by="P1D"))
    other = await w.customer("new@example.com")
    with pytest.raises(NotFound) as not_found:
        await use_cases.create_subscription(
            w.uow, MERCHANT, NOW, w.subscribe(other.id, test_clock_id=clock_id), catalog=w.catalog, timeline=None
        )
    assert not_found.value.field == "testClockId"


async def test_another_merchants_clock_is_not_found() -> None:
    w = World()
    clock_id = await _clock(w, merchant=OTHER)
    with pytest.raises(NotFound):
        await use_cases.advance_test_clock(w.uow, MERCHANT, LATER, commands.AdvanceTestClock(clock_id, advance_by="P1D"))
    with pytest.raises(NotFound):
        await use_cases.delete_test_clock(w.uow, MERCHANT, LATER, commands.Delete(clock_id))
