"""A fake meter for the balance tests: usage events in memory, read the way metering's
GetUsages answers a window (the aggregate of the events in [start, end))."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal

from services.entitlement.domain.balance import GrantTerms, MeteredTerms, Window


def at(month: int, day: int, hour: int = 0, *, year: int = 2026) -> datetime:
    return datetime(year, month, day, hour, tzinfo=UTC)


def grant(
    grant_id: str,
    amount: int | str,
    *,
    effective_at: datetime,
    expires_at: datetime | None = None,
    voided_at: datetime | None = None,
    priority: int = 0,
    created_at: datetime | None = None,
    min_rollover: int | str = 0,
    max_rollover: int | str | Decimal = Decimal("999999999999"),
    recurring: bool = False,
) -> GrantTerms:
    return GrantTerms(
        id=grant_id,
        amount=Decimal(amount),
        effective_at=effective_at,
        expires_at=expires_at,
        voided_at=voided_at,
        priority=priority,
        created_at=created_at or effective_at,
        reset_min_rollover=Decimal(min_rollover),
        reset_max_rollover=Decimal(max_rollover),
        recurring=recurring,
    )


def reset_grant(
    amount: int | str, effective_at: datetime, *, min_rollover: int | str = 0, max_rollover: int | str = 0, priority: int = 0
) -> GrantTerms:
    """The template's reset units, as provisioning issues them."""
    return grant(
        "grant_reset",
        amount,
        effective_at=effective_at,
        priority=priority,
        min_rollover=min_rollover,
        max_rollover=max_rollover,
        recurring=True,
    )


def terms(usage_period: str | None = "P1M", anchor: datetime | None = None, *, soft: bool = True, preserve: bool = False) -> MeteredTerms:
    return MeteredTerms(usage_period=usage_period, anchor=anchor or at(1, 1), is_soft_limit=soft, preserve_overage_at_reset=preserve)


def _sum(values: Sequence[Decimal]) -> Decimal:
    return sum(values, Decimal(0))


def _max(values: Sequence[Decimal]) -> Decimal:
    return max(values, default=Decimal(0))


def _latest(values: Sequence[Decimal]) -> Decimal:
    return values[-1] if values else Decimal(0)


AGGREGATIONS: dict[str, Callable[[Sequence[Decimal]], Decimal]] = {"SUM": _sum, "MAX": _max, "LATEST": _latest}


@dataclass
class Meter:
    """Events (time, value) of one metric and subject; ``aggregation`` SUM, MAX or LATEST."""

    aggregation: str = "SUM"
    events: list[tuple[datetime, Decimal]] = field(default_factory=list)
    asked: list[Window] = field(default_factory=list)

    def add(self, when: datetime, value: int | str | Decimal) -> Meter:
        self.events.append((when, Decimal(value)))
        self.events.sort(key=lambda event: event[0])
        return self

    def reading(self, start: datetime, end: datetime) -> Decimal:
        return AGGREGATIONS[self.aggregation]([v for t, v in self.events if start <= t < end])

    def read(self, windows: Iterable[Window]) -> dict[Window, Decimal]:
        """What the service does: one GetUsages call for every window asked."""
        windows = list(windows)
        self.asked.extend(windows)
        return {w: self.reading(w.start, w.end) for w in windows}
