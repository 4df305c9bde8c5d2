"""NATS JetStream: streams, the outbox relay, and idempotent pull consumers."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime

import nats
import sqlalchemy as sa
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg
from nats.errors import TimeoutError as NatsTimeoutError
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, StreamConfig
from nats.js.errors import NotFoundError
from opentelemetry.trace import SpanKind

from libs.infra.db import Database, UnitOfWork
from libs.infra.logging import get_logger
from libs.infra.telemetry import extract_context, inject_headers, tracer

log = get_logger(__name__)
_tracer = tracer("accrue.messaging")

EVENT_TYPE_HEADER = "Accrue-Event-Type"
MERCHANT_HEADER = "Accrue-Merchant-Id"
MSG_ID_HEADER = "Nats-Msg-Id"


async def connect(url: str, name: str) -> NatsClient:
    return await nats.connect(url, name=name, max_reconnect_attempts=-1, reconnect_time_wait=0.5)


async def ensure_stream(js: JetStreamContext, name: str, subjects: list[str]) -> None:
    """Create the stream if missing. Single-node default: R1, file storage, 2 min dedupe
    window; production runs R3 on a cluster (see deploy/)."""
    config = StreamConfig(name=name, subjects=subjects, duplicate_window=120.0)
    try:
        await js.stream_info(name)
    except NotFoundError:
        with contextlib.suppress(Exception):
            await js.add_stream(config)
            return
        await js.stream_info(name)


@dataclass(frozen=True)
class ReceivedEvent:
    """A domain event as a consumer sees it."""

    event_id: str
    subject: str
    event_type: str
    merchant_id: str
    payload: bytes
    headers: Mapping[str, str]

    @classmethod
    def of(cls, msg: Msg) -> ReceivedEvent:
        headers = dict(msg.headers or {})
        return cls(
            event_id=headers.get(MSG_ID_HEADER, ""),
            subject=msg.subject,
            event_type=headers.get(EVENT_TYPE_HEADER, ""),
            merchant_id=headers.get(MERCHANT_HEADER, ""),
            payload=msg.data,
            headers=headers,
        )


class OutboxRelay:
    """Publishes committed outbox rows to JetStream with ``Nats-Msg-Id`` = event id.

    Rows are claimed with ``FOR UPDATE SKIP LOCKED`` so replicas share the work. A crash
    after publishing and before marking re-publishes the same id: JetStream drops it
    inside its duplicate window, and consumers' inboxes drop it after.
    """

    def __init__(self, db: Database, js: JetStreamContext, *, batch_size: int = 100, poll_seconds: float = 1.0) -> None:
        self._db = db
        self._js = js
        self._outbox = db.metadata.tables["outbox"]
        self._batch_size = batch_size
        self._poll_seconds = poll_seconds
        self._stopping = asyncio.Event()

    def stop(self) -> None:
        self._stopping.set()
        self._db.events_committed.set()

    async def run(self) -> None:
        while not self._stopping.is_set():
            try:
                published = await self.publish_pending()
            except Exception as exc:  # keep relaying through transient NATS/PG trouble
                log.warning("outbox_relay_error", error=str(exc))
                published = 0
                await asyncio.sleep(0.5)
            if published == 0:
                self._db.events_committed.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._db.events_committed.wait(), self._poll_seconds)

    async def publish_pending(self) -> int:
        o = self._outbox
        async with self._db.engine.begin() as conn:
            rows = (
                await conn.execute(
                    sa.select(o.c.seq, o.c.event_id, o.c.subject, o.c.event_type, o.c.merchant_id, o.c.payload, o.c.headers)
                    .where(o.c.published_at.is_(None))
                    .order_by(o.c.seq)
                    .limit(self._batch_size)
                    .with_for_update(skip_locked=True)
                )
            ).all()
            if not rows:
                return 0
            for row in rows:
                with _tracer.start_as_current_span(
                    f"{row.subject} publish",
                    context=extract_context(row.headers),
                    kind=SpanKind.PRODUCER,
                    attributes={"messaging.system": "nats", "messaging.message.id": row.event_id},
                ):
                    headers = inject_headers(
                        {MSG_ID_HEADER: row.event_id, EVENT_TYPE_HEADER: row.event_type, MERCHANT_HEADER: row.merchant_id}
                    )
                    await self._js.publish(row.subject, row.payload, headers=headers)
            await conn.execute(o.update().where(o.c.seq.in_([r.seq for r in rows])).values(published_at=datetime.now(UTC)))
            return len(rows)


Handler = Callable[[ReceivedEvent, UnitOfWork], Awaitable[None]]


class EventConsumer:
    """A durable pull consumer whose handler runs in a unit of work with an inbox claim.

    Ack happens after commit, so a crash before commit redelivers, and a redelivery after
    commit is recognised by the inbox and only acked.
    """

    def __init__(
        self,
        db: Database,
        js: JetStreamContext,
        *,
        stream: str,
        durable: str,
        filter_subject: str,
        handler: Handler,
        batch_size: int = 50,
    ) -> None:
        self._db = db
        self._js = js
        self._stream = stream
        self._durable = durable
        self._filter_subject = filter_subject
        self._handler = handler
        self._batch_size = batch_size
        self._stopping = asyncio.Event()

    def stop(self) -> None:
        self._stopping.set()

    async def run(self) -> None:
        sub = await self._js.pull_subscribe(
            self._filter_subject,
            durable=self._durable,
            stream=self._stream,
            config=ConsumerConfig(ack_policy=AckPolicy.EXPLICIT, ack_wait=30.0, max_ack_pending=1000),
        )
        while not self._stopping.is_set():
            try:
                # a partial batch returns only when the pull expires: keep it short, it bounds
                # the delay of every event at low load
                msgs = await sub.fetch(self._batch_size, timeout=0.05)
            except (NatsTimeoutError, TimeoutError):
                continue
            for msg in msgs:
                await self._handle(msg)

    async def _handle(self, msg: Msg) -> None:
        event = ReceivedEvent.of(msg)
        headers = event.headers
        with _tracer.start_as_current_span(
            f"{msg.subject} process",
            context=extract_context(headers),
            kind=SpanKind.CONSUMER,
            attributes={"messaging.system": "nats", "messaging.message.id": event.event_id, "messaging.consumer": self._durable},
        ):
            try:
                async with self._db.uow() as uow:
                    if await uow.claim_inbox(self._durable, event.event_id):
                        await self._handler(event, uow)
            except Exception as exc:
                log.error("event_handler_failed", subject=msg.subject, event_id=event.event_id, error=str(exc))
                await msg.nak(delay=1.0)
                return
            await msg.ack()
