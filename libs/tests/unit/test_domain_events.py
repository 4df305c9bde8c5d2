"""Aggregates record events; the collector hands them over once, oldest first, across aggregates."""

from __future__ import annotations

from dataclasses import dataclass

from libs.core.domain import Aggregate, DomainEvent, EventCollector


@dataclass(frozen=True)
class Renamed(DomainEvent):
    name: str


@dataclass(kw_only=True)
class Thing(Aggregate):
    name: str

    def rename(self, name: str) -> None:
        self.name = name
        self.record(Renamed(name))


def test_events_leave_in_the_order_they_were_recorded_across_aggregates_and_only_once() -> None:
    seen = EventCollector()
    first, second = seen.track(Thing(id="a", name="a")), seen.track(Thing(id="b", name="b"))
    first.rename("a1")
    second.rename("b1")
    first.rename("a2")
    assert list(seen.collect_new_events()) == [Renamed("a1"), Renamed("b1"), Renamed("a2")]
    assert list(seen.collect_new_events()) == []
    assert first.events == [] and first.name == "a2"


def test_tracking_twice_keeps_one_and_withdraw_moves_an_announcement_to_the_end() -> None:
    seen = EventCollector()
    thing = seen.track(Thing(id="a", name="a"))
    assert seen.track(thing) is thing and seen.seen == [thing]
    thing.rename("x")
    thing.record(Renamed("y"))
    thing.withdraw(Renamed("x"))
    thing.record(Renamed("x"))
    assert list(seen.collect_new_events()) == [Renamed("y"), Renamed("x")]
