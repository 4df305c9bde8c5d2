"""A service's dead letters: listing them, and replaying them through the consumer that
failed on them.

A consumer (libs/infra/messaging.py) writes an event to ``dead_letters`` when its handler
still fails on the last delivery. Once the cause is fixed (a deploy, a repaired row),
``replay`` runs each pending letter through the same consumer's ``replay``: the same
handler behind the same deduplication (an ``EventConsumer``'s inbox claim, a batch
handler's idempotent store), so replaying an event that meanwhile got through, or
replaying twice, changes nothing. A replayed letter gets ``replayed_at``; one that fails
again stays pending with the new error. ``accrue dead-letters`` (libs/cli/dead_letters.py)
is the command line over these functions.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Protocol

import sqlalchemy as sa

from libs.infra.db import Database
from libs.infra.logging import get_logger
from libs.infra.messaging import ReceivedEvent

log = get_logger(__name__)


class Replayable(Protocol):
    """A consumer that can run one of its dead letters again (EventConsumer, BatchConsumer)."""

    durable: str

    async def replay(self, event: ReceivedEvent) -> None: ...


@dataclass(frozen=True)
class DeadLetter:
    id: int
    consumer: str
    event: ReceivedEvent
    error: str
    failed_at: datetime
    replayed_at: datetime | None


@dataclass(frozen=True)
class ReplayOutcome:
    id: int
    consumer: str
    # "replayed", "failed" (still pending, error updated), "no_consumer" (none of that name here)
    status: str
    error: str | None = None


def _letter(row: sa.Row[tuple[object, ...]]) -> DeadLetter:
    m = row._mapping
    event = ReceivedEvent(
        event_id=m["event_id"],
        subject=m["subject"],
        event_type=m["event_type"],
        merchant_id=m["merchant_id"],
        payload=bytes(m["payload"]),
        headers=dict(m["headers"] or {}),
    )
    return DeadLetter(
        id=m["id"], consumer=m["consumer"], event=event, error=m["error"], failed_at=m["failed_at"], replayed_at=m["replayed_at"]
    )


async def list_dead_letters(
    db: Database, *, ids: Sequence[int] | None = None, consumer: str | None = None, include_replayed: bool = False
) -> list[DeadLetter]:
    """Dead letters, oldest first: pending ones unless include_replayed."""
    t = db.metadata.tables["dead_letters"]
    query = sa.select(t).order_by(t.c.id)
    if ids is not None:
        query = query.where(t.c.id.in_(list(ids)))
    if consumer is not None:
        query = query.where(t.c.consumer == consumer)
    if not include_replayed:
        query = query.where(t.c.replayed_at.is_(None))
    async with db.engine.connect() as conn:
        return [_letter(row) for row in (await conn.execute(query)).all()]


async def replay(db: Database, consumers: Iterable[Replayable], *, ids: Sequence[int] | None = None) -> list[ReplayOutcome]:
    """Replay the pending dead letters (these ids, or all), oldest first.

    Each letter's row stays locked (``FOR UPDATE SKIP LOCKED``) while its consumer runs
    it, so two concurrent replays never run one letter at once."""
    by_name: Mapping[str, Replayable] = {c.durable: c for c in consumers}
    t = db.metadata.tables["dead_letters"]
    outcomes: list[ReplayOutcome] = []
    for pending in await list_dead_letters(db, ids=ids):
        consumer = by_name.get(pending.consumer)
        if consumer is None:
            outcomes.append(ReplayOutcome(pending.id, pending.consumer, "no_consumer"))
            continue
        async with db.engine.begin() as conn:
            locked = (
                await conn.execute(
                    sa.select(t.c.id).where(t.c.id == pending.id, t.c.replayed_at.is_(None)).with_for_update(skip_locked=True)
                )
            ).first()
            if locked is None:  # replayed meanwhile, or being replayed
                continue
            try:
                await consumer.replay(pending.event)
            except Exception as exc:
                error = repr(exc)[:2000]
                await conn.execute(t.update().where(t.c.id == pending.id).values(error=error))
                log.warning("dead_letter_replay_failed", id=pending.id, consumer=pending.consumer, error=error)
                outcomes.append(ReplayOutcome(pending.id, pending.consumer, "failed", error))
                continue
            await conn.execute(t.update().where(t.c.id == pending.id).values(replayed_at=datetime.now(UTC)))
            log.info("dead_letter_replayed", id=pending.id, consumer=pending.consumer, event_id=pending.event.event_id)
            outcomes.append(ReplayOutcome(pending.id, pending.consumer, "replayed"))
    return outcomes
