"""How the sandbox delivers its events, as real processors do: late, sometimes twice, and
sometimes out of order. Pure: the randomness comes in as a ``random.Random``.

Every event is delivered once after a small random delay; with ``duplicate_rate`` it is
delivered a second time a little later (the same event id: a true duplicate). When a
charge that was ``processing`` reaches its final state, the older ``charge.processing``
event is, with ``reorder_rate``, delivered once more after the final event's first
delivery, so a receiver sees the older state last and must order by ``sequence``.

A delivery that gets no 2xx answer is tried again after ``retry_delay``.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from enum import StrEnum


class DeliveryKind(StrEnum):
    FIRST = "first"  # the event's own delivery
    DUPLICATE = "duplicate"  # the same event once more
    LATE = "late"  # an older event once more, after a newer one (out of order)
    MANUAL = "manual"  # asked for through the test-only redeliver endpoint


@dataclass(frozen=True, slots=True)
class DeliveryPolicy:
    min_delay: float = 0.01
    max_delay: float = 0.3
    duplicate_rate: float = 0.25
    reorder_rate: float = 0.5
    max_attempts: int = 6
    # the first retry's delay; each next one doubles, up to max_retry_delay
    first_retry_delay: float = 0.5
    max_retry_delay: float = 30.0


@dataclass(frozen=True, slots=True)
class PlannedDelivery:
    delay: float  # seconds from now
    kind: DeliveryKind


def plan(
    policy: DeliveryPolicy, rng: random.Random, *, older_event_pending_reorder: bool = False
) -> tuple[list[PlannedDelivery], float | None]:
    """The deliveries of a new event, and when (seconds from now, None: not at all) the
    older event of the same object is delivered again out of order (only asked when the
    event ends a ``processing`` state)."""
    first = rng.uniform(policy.min_delay, policy.max_delay)
    deliveries = [PlannedDelivery(first, DeliveryKind.FIRST)]
    if rng.random() < policy.duplicate_rate:
        deliveries.append(PlannedDelivery(first + rng.uniform(policy.min_delay, policy.max_delay), DeliveryKind.DUPLICATE))
    late: float | None = None
    if older_event_pending_reorder and rng.random() < policy.reorder_rate:
        late = first + rng.uniform(policy.min_delay, policy.max_delay) + 0.05
    return deliveries, late


def retry_delay(policy: DeliveryPolicy, attempts: int) -> float | None:
    """Seconds until the next attempt after ``attempts`` failed ones (None: give up)."""
    if attempts >= policy.max_attempts:
        return None
    return float(min(policy.first_retry_delay * 2 ** (attempts - 1), policy.max_retry_delay))
