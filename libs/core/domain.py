"""Aggregates that record domain events, and the collection of those events.

After cosmicpython (``src/allocation/domain/model.py`` and ``collect_new_events`` in
``service_layer/unit_of_work.py``): an aggregate's method changes its state and records
the event that says so; it never publishes. Repositories register every aggregate they
load or add with an ``EventCollector`` (the unit of work's ``seen``); when the unit of
work commits, it takes every recorded event and writes it to the outbox in the same
transaction. A handler therefore cannot forget an event, and a rolled-back change
publishes nothing.

Pure: no SQLAlchemy, gRPC or NATS here.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TypeVar

__all__ = ["Aggregate", "DomainEvent", "EventCollector"]


@dataclass(frozen=True)
class DomainEvent:
    """Base of every domain event: a small frozen value naming what happened."""


# One counter for the process: events leave in the order they were recorded, across
# aggregates (a minted plan version is announced before the plan that now points at it).
_sequence = itertools.count()

A = TypeVar("A", bound="Aggregate")


@dataclass(kw_only=True)
class Aggregate:
    """A consistency boundary with an identity; subclasses are keyword-only dataclasses.

    ``record`` keeps an event until the unit of work collects it; ``events`` shows what
    is pending (tests read it).
    """

    id: str
    _pending: list[tuple[int, DomainEvent]] = field(default_factory=list, init=False, repr=False, compare=False)

    def record(self, event: DomainEvent) -> None:
        self._pending.append((next(_sequence), event))

    def withdraw(self, event: DomainEvent) -> None:
        """Drop pending events equal to this one (an aggregate that announces its state
        once, after its last change, withdraws the earlier announcement)."""
        self._pending = [(seq, pending) for seq, pending in self._pending if pending != event]

    @property
    def events(self) -> list[DomainEvent]:
        return [event for _, event in self._pending]

    def take_events(self) -> list[tuple[int, DomainEvent]]:
        taken, self._pending = self._pending, []
        return taken


class EventCollector:
    """The aggregates a unit of work has seen, and the events they recorded.

    Registering the same aggregate object twice is harmless; two objects with the same
    identity are both kept (each may have recorded something).
    """

    def __init__(self) -> None:
        self._seen: dict[int, Aggregate] = {}

    def track(self, aggregate: A) -> A:
        self._seen.setdefault(id(aggregate), aggregate)
        return aggregate

    @property
    def seen(self) -> list[Aggregate]:
        return list(self._seen.values())

    def collect_new_events(self) -> Iterator[DomainEvent]:
        """Every event recorded since the last collection, oldest first, once."""
        pending = [item for aggregate in self._seen.values() for item in aggregate.take_events()]
        for _, event in sorted(pending, key=lambda item: item[0]):
            yield event
