"""NATS JetStream: streams, the outbox relay, and idempotent pull consumers with a
delivery limit and dead letters (replayed by libs/infra/dead_letters.py)."""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Generic, TypeVar

import nats
import sqlalchemy as sa
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg
from nats.errors import TimeoutError as NatsTimeoutError
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, ConsumerInfo, StreamConfig
from nats.js.errors import NotFoundError
from opentelemetry.trace import SpanKind

from libs.infra import metrics
from libs.infra.db import Database, UnitOfWork
from libs.infra.logging import get_logger
from libs.infra.telemetry import extract_context, inject_headers, tracer

log = get_logger(__name__)
_tracer = tracer("accrue.messaging")

EVENT_TYPE_HEADER = "Accrue-Event-Type"
MERCHANT_HEADER = "Accrue-Merchant-Id"
MSG_ID_HEADER = "Nats-Msg-Id"
# how often the relay counts its backlog and a consumer reads its consumer_info (metrics)
METRICS_SAMPLE_SECONDS = 5.0


async def connect(url: str, name: str) -> NatsClient:
    return await nats.connect(url, name=name, max_reconnect_attempts=-1, reconnect_time_wait=0.5)


class StreamReplicasError(RuntimeError):
    """A stream has fewer replicas than ACCRUE_REQUIRE_STREAM_REPLICAS: the process refuses to start."""


def _env_int(name: str, default: int) -> int:
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    value = int(raw)
    if value < 1:
        raise ValueError(f"{name} must be at least 1, not {value}")
    return value


async def ensure_stream(
    js: JetStreamContext, name: str, subjects: Sequence[str], *, replicas: int | None = None, require_replicas: int | None = None
) -> None:
    """Create the stream if missing, or give an existing one these subjects if it has
    others (only the producer calls this: its declaration is the truth). Everything else
    of an existing stream (storage, limits) is kept as the operator set it.
    Single-node default for a new stream: R1, file storage, 2 min dedupe window.

    Replicas: `replicas` (default ACCRUE_STREAM_REPLICAS, 1) is what a missing stream is
    created with and what an existing stream with fewer is raised to (never lowered);
    a cluster that cannot place them leaves the stream as it was, with a warning.
    `require_replicas` (default ACCRUE_REQUIRE_STREAM_REPLICAS, 1) is the floor: a stream
    that ends up with fewer raises StreamReplicasError, so production never runs on R1."""
    wanted = list(subjects)
    want_replicas = replicas if replicas is not None else _env_int("ACCRUE_STREAM_REPLICAS", 1)
    floor = require_replicas if require_replicas is not None else _env_int("ACCRUE_REQUIRE_STREAM_REPLICAS", 1)
    try:
        info = await js.stream_info(name)
    except NotFoundError:
        config = StreamConfig(name=name, subjects=wanted, duplicate_window=120.0, num_replicas=want_replicas)
        try:
            info = await js.add_stream(config)
        except Exception as exc:
            try:  # a concurrent starter created it first: check it as found
                info = await js.stream_info(name)
            except NotFoundError:
                if want_replicas == 1:
                    raise
                # the cluster cannot place that many replicas: create it as it can, and
                # let the floor below decide whether that is acceptable
                log.warning("stream_replicas_not_applied", stream=name, replicas=want_replicas, error=str(exc))
                info = await js.add_stream(config.evolve(num_replicas=1))
    if sorted(info.config.subjects or []) != sorted(wanted):
        log.info("stream_subjects_updated", stream=name, subjects=wanted, previous=info.config.subjects)
        info = await js.update_stream(info.config.evolve(subjects=wanted))
    have = info.config.num_replicas or 1
    if have < want_replicas:
        try:
            info = await js.update_stream(info.config.evolve(num_replicas=want_replicas))
            log.info("stream_replicas_updated", stream=name, replicas=want_replicas, previous=have)
        except Exception as exc:
            log.warning("stream_replicas_not_applied", stream=name, replicas=want_replicas, have=have, error=str(exc))
        have = info.config.num_replicas or 1
    if have < floor:
        raise StreamReplicasError(
            f"stream {name} has {have} replica(s) but ACCRUE_REQUIRE_STREAM_REPLICAS is {floor}: create it on a JetStream "
            f"cluster with `nats stream edit {name} --replicas {floor}` (or the streams Job of deploy/k8s) before starting"
        )


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

    def __init__(self, db: Database, js: JetStreamContext, *, batch_size: int = 100, poll_seconds: float = 1.0, service: str = "") -> None:
        self._db = db
        self._js = js
        self._outbox = db.metadata.tables["outbox"]
        self._batch_size = batch_size
        self._poll_seconds = poll_seconds
        self._stopping = asyncio.Event()
        self._backlog = metrics.OUTBOX_BACKLOG.labels(service)
        self._published = metrics.OUTBOX_PUBLISHED.labels(service)
        self._sampled_at = -METRICS_SAMPLE_SECONDS

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
            await self._sample_backlog()
            if published == 0:
                self._db.events_committed.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._db.events_committed.wait(), self._poll_seconds)

    async def _sample_backlog(self) -> None:
        """The unpublished rows (a partial index), every METRICS_SAMPLE_SECONDS at most."""
        now = asyncio.get_running_loop().time()
        if now - self._sampled_at < METRICS_SAMPLE_SECONDS:
            return
        self._sampled_at = now
        o = self._outbox
        try:
            async with self._db.engine.connect() as conn:
                backlog = await conn.scalar(sa.select(sa.func.count()).select_from(o).where(o.c.published_at.is_(None)))
        except Exception as exc:  # the relay's own error handling reports PostgreSQL trouble
            log.debug("outbox_backlog_sample_failed", error=repr(exc))
            return
        self._backlog.set(backlog or 0)

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
        self._published.inc(len(rows))
        return len(rows)


Handler = Callable[[ReceivedEvent, UnitOfWork], Awaitable[None]]
# stores a whole batch in one transaction, or nothing; storing again what it stored is a no-op
BatchHandler = Callable[[Sequence[ReceivedEvent]], Awaitable[None]]
# the parts of one message that may fail alone (one event each), in the same payload shape
Splitter = Callable[[ReceivedEvent], Sequence[ReceivedEvent]]
H = TypeVar("H", Handler, BatchHandler)

# Deliveries of a message before a failing handler's event is dead-lettered.
DEFAULT_MAX_DELIVER = 5
# The first retry waits this long, each later one twice as long, up to MAX_RETRY_DELAY.
DEFAULT_RETRY_DELAY = 0.5
MAX_RETRY_DELAY = 30.0
# A consumer started before its producer's stream exists looks again this often (doubling up to 2 s).
STREAM_WAIT_SECONDS = 0.1


@dataclass(frozen=True)
class PullSpec:
    """What a durable pull consumer reads (``stream``, its ``durable`` name, the
    ``filter_subject``) and how: up to ``batch_size`` messages per fetch, a partial fetch
    returning after ``fetch_wait`` seconds, an unacked message coming back after
    ``ack_wait``, a failing event dead-lettered on its ``max_deliver``-th delivery, the
    first retry after ``retry_delay`` (doubling up to MAX_RETRY_DELAY). Once a fetch
    found nothing, the consumer waits with one pull of one message that the server
    answers the moment one is published, and asks again after ``idle_wait`` seconds
    (an idle consumer makes one request per ``idle_wait``, not one per ``fetch_wait``).
    The defaults suit one event per message (EventConsumer)."""

    stream: str
    durable: str
    filter_subject: str
    batch_size: int = 50
    fetch_wait: float = 0.05
    idle_wait: float = 1.0
    ack_wait: float = 30.0
    max_deliver: int = DEFAULT_MAX_DELIVER
    retry_delay: float = DEFAULT_RETRY_DELAY

    def __post_init__(self) -> None:
        if self.max_deliver < 1:
            raise ValueError("max_deliver must be at least 1")


class _PullConsumer(Generic[H]):
    """What every durable pull consumer shares: subscribing (once the producer's stream
    exists), the fetch loop, the delivery limit and the dead letters.

    The limit is counted here, from each message's ``num_delivered``, not by JetStream's
    ``max_deliver``: on the last delivery a failing event is written to the service's
    ``dead_letters`` table and terminated, so one poison event neither blocks nor loops.
    If even that write fails (the database is down) the message is redelivered, which
    JetStream would no longer do past its own ``max_deliver``: nothing is lost silently.
    """

    def __init__(self, db: Database, js: JetStreamContext, spec: PullSpec, *, handler: H) -> None:
        self._db = db
        self._js = js
        self._spec = spec
        self.durable = spec.durable
        self.max_deliver = spec.max_deliver
        self._handler: H = handler
        self._dead_letters = db.metadata.tables["dead_letters"]
        self._stopping = asyncio.Event()
        self._sub: JetStreamContext.PullSubscription | None = None
        self._handled = metrics.CONSUMER_EVENTS.labels(spec.durable)
        self._dead_lettered = metrics.DEAD_LETTERS.labels(spec.durable)

    def stop(self) -> None:
        self._stopping.set()

    async def run(self) -> None:
        sub = await self._subscribe()
        if sub is None:
            return
        sampler = asyncio.create_task(self._sample_info(), name=f"{self.durable}-consumer-info")
        try:
            await self._fetch_loop(sub)
        finally:
            sampler.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await sampler

    async def _sample_info(self) -> None:
        """The consumer's lag (num_pending), unacked and redelivered messages as gauges, every
        METRICS_SAMPLE_SECONDS (one consumer_info round trip; every replica reports the same
        durable's numbers, so aggregate with max, not sum)."""
        stream, durable = self._spec.stream, self.durable
        pending = metrics.CONSUMER_PENDING.labels(stream, durable)
        ack_pending = metrics.CONSUMER_ACK_PENDING.labels(stream, durable)
        redelivered = metrics.CONSUMER_REDELIVERED.labels(stream, durable)
        while not self._stopping.is_set():
            try:
                info = await self.consumer_info()
            except Exception as exc:  # NATS reconnecting: the next sample reports it
                log.debug("consumer_info_failed", consumer=durable, error=repr(exc))
            else:
                pending.set(info.num_pending or 0)
                ack_pending.set(info.num_ack_pending or 0)
                redelivered.set(info.num_redelivered or 0)
            await self._sleep(METRICS_SAMPLE_SECONDS)

    async def _fetch_loop(self, sub: JetStreamContext.PullSubscription) -> None:
        idle = False
        while not self._stopping.is_set():
            fetch_started = datetime.now(UTC)
            try:
                try:
                    if idle:
                        msgs = await self._wait_for_one(sub)
                        if not msgs:  # nothing came while it waited: nothing was pending when it ended
                            fetch_started = datetime.now(UTC)
                    else:
                        # a partial batch returns only when the pull expires: keep it short,
                        # it bounds the delay of every event at low load
                        msgs = await sub.fetch(self._spec.batch_size, timeout=self._spec.fetch_wait)
                except (NatsTimeoutError, TimeoutError):
                    msgs = []
                idle = not msgs
                if msgs:
                    await self._process(msgs)
                await self._after_fetch(msgs, fetch_started)
            except Exception as exc:  # never die silently: what was not acked comes back
                log.error("consumer_step_failed", consumer=self.durable, error=repr(exc))
                await self._sleep(0.5)

    async def _wait_for_one(self, sub: JetStreamContext.PullSubscription) -> list[Msg]:
        """After an empty fetch: one pull of one message, which the server answers as soon
        as one is published (a pull of a batch waits for the batch or its expiry), for at
        most ``idle_wait`` seconds; cut short when the consumer stops. The next fetch takes
        whatever followed it, in a batch."""
        fetch = asyncio.ensure_future(sub.fetch(1, timeout=self._spec.idle_wait))
        stopping = asyncio.ensure_future(self._stopping.wait())
        try:
            await asyncio.wait({fetch, stopping}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stopping.cancel()
            if not fetch.done():
                fetch.cancel()
        if fetch.cancelled():
            # stopping: withdraw the interest at once, so that the server's pending pull
            # hands nothing to this process (another worker of the durable takes it)
            with contextlib.suppress(Exception):
                await sub.unsubscribe()
            return []
        return fetch.result()

    async def consumer_info(self) -> ConsumerInfo:
        if self._sub is None:
            raise RuntimeError("the consumer has not subscribed yet")
        return await self._sub.consumer_info()

    async def _subscribe(self) -> JetStreamContext.PullSubscription | None:
        """Subscribe once the stream exists (its producer creates it, maybe after this
        consumer started): wait with a short backoff, logging once. None if stopped first."""
        config = ConsumerConfig(ack_policy=AckPolicy.EXPLICIT, ack_wait=self._spec.ack_wait, max_ack_pending=1000)
        wait, logged = STREAM_WAIT_SECONDS, False
        while not self._stopping.is_set():
            try:
                self._sub = await self._js.pull_subscribe(
                    self._spec.filter_subject, durable=self.durable, stream=self._spec.stream, config=config
                )
            except NotFoundError:
                if not logged:
                    log.warning("consumer_waiting_for_stream", consumer=self.durable, stream=self._spec.stream)
                    logged = True
            except Exception as exc:  # NATS not ready (restarting, no JetStream yet): the same wait
                log.warning("consumer_subscribe_failed", consumer=self.durable, stream=self._spec.stream, error=repr(exc))
            else:
                if logged:
                    log.info("consumer_stream_found", consumer=self.durable, stream=self._spec.stream)
                return self._sub
            await self._sleep(wait)
            wait = min(wait * 2, 2.0)
        return None

    async def _sleep(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stopping.wait(), seconds)

    async def _process(self, msgs: list[Msg]) -> None:
        raise NotImplementedError

    async def _after_fetch(self, msgs: list[Msg], fetch_started: datetime) -> None:
        """After each fetch (empty or not) and its acks: for a subclass's bookkeeping."""

    def _is_last_delivery(self, msg: Msg) -> bool:
        return msg.metadata.num_delivered >= self.max_deliver

    async def _retry_later(self, msg: Msg) -> None:
        delay = min(self._spec.retry_delay * 2 ** max(msg.metadata.num_delivered - 1, 0), MAX_RETRY_DELAY)
        await msg.nak(delay=delay)

    async def _dead_letter(self, event: ReceivedEvent, error: BaseException) -> None:
        """Keep the event, whole, with why it failed (libs/infra/dead_letters.py replays it)."""
        log.error("event_dead_lettered", consumer=self.durable, subject=event.subject, event_id=event.event_id, error=repr(error))
        async with self._db.engine.begin() as conn:
            await conn.execute(
                self._dead_letters.insert().values(
                    consumer=self.durable,
                    event_id=event.event_id,
                    subject=event.subject,
                    event_type=event.event_type,
                    merchant_id=event.merchant_id,
                    payload=event.payload,
                    headers=dict(event.headers),
                    error=repr(error)[:2000],
                    failed_at=datetime.now(UTC),
                )
            )
        self._dead_lettered.inc()

    async def _dead_letter_and_term(self, msg: Msg, events: Sequence[tuple[ReceivedEvent, BaseException]]) -> None:
        """Dead-letter the failed parts of a message, then take it off the consumer; if the
        write fails, the message comes back (its stored parts are no-ops again)."""
        try:
            for event, error in events:
                await self._dead_letter(event, error)
        except Exception as exc:
            log.error("dead_letter_failed", consumer=self.durable, subject=msg.subject, error=repr(exc))
            await self._retry_later(msg)
            return
        await msg.term()


class EventConsumer(_PullConsumer[Handler]):
    """A durable pull consumer whose handler runs in a unit of work with an inbox claim.

    Ack happens after commit, so a crash before commit redelivers, and a redelivery after
    commit is recognised by the inbox and only acked. A handler failing on a message's
    ``max_deliver``-th delivery dead-letters it (see ``_PullConsumer``); a replay runs it
    through the same claim and handler (``replay``).
    """

    async def _process(self, msgs: list[Msg]) -> None:
        for msg in msgs:
            await self._handle(msg)

    async def _handle(self, msg: Msg) -> None:
        event = ReceivedEvent.of(msg)
        with _tracer.start_as_current_span(
            f"{msg.subject} process",
            context=extract_context(event.headers),
            kind=SpanKind.CONSUMER,
            attributes={"messaging.system": "nats", "messaging.message.id": event.event_id, "messaging.consumer": self.durable},
        ):
            try:
                await self.replay(event)
            except Exception as exc:
                log.error("event_handler_failed", subject=msg.subject, event_id=event.event_id, error=str(exc))
                if self._is_last_delivery(msg):
                    await self._dead_letter_and_term(msg, [(event, exc)])
                else:
                    await self._retry_later(msg)
                return
            await msg.ack()
            self._handled.inc()

    async def replay(self, event: ReceivedEvent) -> None:
        """Run the handler on the event once: a no-op if this consumer's inbox has it."""
        async with self._db.uow() as uow:
            if await uow.claim_inbox(self.durable, event.event_id):
                await self._handler(event, uow)


class BatchConsumer(_PullConsumer[BatchHandler]):
    """A durable pull consumer handing each fetched batch to one handler call (one
    transaction for thousands of events), with the delivery limit and dead letters of
    ``EventConsumer`` per event.

    A batch that fails is handed back whole (the handler must make storing again a
    no-op), unless the error is permanent (``permanent_errors``: the data is refused, a
    retry cannot help) or a message is on its last delivery. Then messages are handled
    one by one, and a message that fails for good is split into its parts (``split``,
    one event each); the parts that still fail are dead-lettered and the message is
    terminated. A dead letter is one part, in the payload shape the handler reads, so
    ``replay`` runs it through the same handler.
    """

    def __init__(
        self,
        db: Database,
        js: JetStreamContext,
        spec: PullSpec,
        *,
        handler: BatchHandler,
        split: Splitter | None = None,
        permanent_errors: tuple[type[Exception], ...] = (),
    ) -> None:
        super().__init__(db, js, spec, handler=handler)
        self._split = split
        self._permanent = permanent_errors

    async def _process(self, msgs: list[Msg]) -> None:
        events = [ReceivedEvent.of(m) for m in msgs]
        try:
            await self._handler(events)
        except Exception as exc:
            if not isinstance(exc, self._permanent) and not any(self._is_last_delivery(m) for m in msgs):
                # transient (PostgreSQL down, a deadlock): nothing committed, hand the
                # batch back now rather than after the ack wait; run() logs and pauses
                await asyncio.gather(*(self._retry_later(m) for m in msgs), return_exceptions=True)
                raise
            log.warning("batch_failed_handling_one_by_one", consumer=self.durable, error=repr(exc), messages=len(msgs))
            for msg, event in zip(msgs, events, strict=True):
                await self._handle_alone(msg, event)
            return
        await asyncio.gather(*(m.ack() for m in msgs))
        self._handled.inc(len(msgs))

    async def _handle_alone(self, msg: Msg, event: ReceivedEvent) -> None:
        try:
            await self._handler([event])
        except Exception as exc:
            if not isinstance(exc, self._permanent) and not self._is_last_delivery(msg):
                await self._retry_later(msg)
                return
            await self._dead_letter_and_term(msg, await self._failing_parts(event, exc))
            return
        await msg.ack()
        self._handled.inc()

    async def _failing_parts(self, event: ReceivedEvent, error: Exception) -> list[tuple[ReceivedEvent, BaseException]]:
        """Store the message's parts one by one; the ones that fail, with their errors."""
        if self._split is None:
            return [(event, error)]
        try:
            parts = self._split(event)
        except Exception as exc:  # not even readable: keep the message's bytes
            return [(event, exc)]
        failed: list[tuple[ReceivedEvent, BaseException]] = []
        for part in parts:
            try:
                await self._handler([part])
            except Exception as exc:
                failed.append((part, exc))
        return failed

    async def replay(self, event: ReceivedEvent) -> None:
        """Run the handler on one dead-lettered part; storing what is stored is a no-op."""
        await self._handler([event])
