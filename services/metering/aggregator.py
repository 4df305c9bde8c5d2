"""The aggregator: meter stream -> metering's PostgreSQL, in batches, exactly once.

Each fetched batch is inserted in one transaction with ON CONFLICT DO NOTHING on
(merchant, idempotency key), then acked. A crash before the commit redelivers the batch;
a crash after it redelivers rows that already exist and are skipped. Usage is computed
from the stored events, so an event counts once however often it is delivered. An event
that cannot be stored is dead-lettered alone, in the shared ``dead_letters`` table, and
``accrue dead-letters replay --service metering`` stores it once fixed.

Tracing: each stored message gets a CONSUMER span continuing the trace of its publish
(metering's ``<subject> publish`` span, carried in the message headers) and, under it, an
``INSERT meter_events`` span that ends when the batch's transaction has committed: one
trace from the REST call to the stored rows, though rows of many traces share a commit.

Usage hint: after each commit, one core-NATS message (``events.USAGE_STORED_SUBJECT``,
``UsageStored``; split only past HINT_SUBJECTS_PER_MESSAGE subjects) names the
(merchant, subject) pairs and event types of the rows that commit inserted (a
redelivered duplicate inserts nothing and says nothing; rows with no subject yet are left
out). Fire and forget: a failed publish is logged and the store path goes on; consumers
of the hint (the entitlement service's usage cache) also age their readings out, so a
lost hint only delays a change. Events attributed later (subjects.on_customer_event's
backfill of externalSubject-only events) send no hint: the ageing covers them.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from typing import Any

import orjson
import sqlalchemy as sa
from accrue.metering.v1 import metering_resources_pb2 as resources
from google.protobuf.message import DecodeError
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from opentelemetry import trace
from opentelemetry.trace import SpanKind, Status, StatusCode
from sqlalchemy.dialects import postgresql as pg
from sqlalchemy.exc import DataError, IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection

from libs.infra.db import Database
from libs.infra.logging import get_logger
from libs.infra.messaging import BatchConsumer, PullSpec, ReceivedEvent
from libs.infra.proto_struct import struct_to_dict
from libs.infra.proto_time import to_timestamp
from libs.infra.telemetry import extract_context, tracer
from services.metering import events, store
from services.metering.subjects import resolve_subjects

log = get_logger(__name__)
_tracer = tracer("accrue.metering.aggregator")
DURABLE = "metering-aggregator"
# A pull returns a partial batch only when this expires: it bounds the 202-to-visible
# delay at low load (an idle aggregator polls this often; under load batches fill first).
FETCH_WAIT_SECONDS = 0.02
# A stream message packs up to 1,000 events: fetch few messages, insert in bounded chunks.
MESSAGES_PER_FETCH = 16
# How often an idle worker advances the completeness watermark.
WATERMARK_EVERY_SECONDS = 0.2
# Unacked messages of a crashed worker come back after this long.
ACK_WAIT_SECONDS = 15.0
ROWS_PER_STATEMENT = 5000
# a commit's usage hint names this many subjects per message at most (a few hundred
# kilobytes: far under NATS's max payload, which would refuse the whole hint)
HINT_SUBJECTS_PER_MESSAGE = 2000


def row_of(event: resources.MeterEvent, times: dict[tuple[int, int], datetime] | None = None, data_json: bytes = b"") -> dict[str, Any]:
    """One event as the insert's JSON row; its data from ``data_json`` when the stream
    message carried it so (embedded as is), else from the event's Struct. ``times`` caches
    Timestamp -> datetime over a batch: the events of one publish share their ingest time
    (and mostly their time)."""
    cache = times if times is not None else {}
    time_ts, ingest_ts = event.time, event.ingest_time
    time_key, ingest_key = (time_ts.seconds, time_ts.nanos), (ingest_ts.seconds, ingest_ts.nanos)
    when = cache.get(time_key)
    if when is None:
        when = cache[time_key] = time_ts.ToDatetime(tzinfo=UTC)
    ingested = cache.get(ingest_key)
    if ingested is None:
        ingested = cache[ingest_key] = ingest_ts.ToDatetime(tzinfo=UTC)
    return {
        "merchant_id": event.merchant_id,
        "idempotency_key": event.idempotency_key,
        "id": event.id,
        "type": event.type,
        "source": event.source,
        "subject": event.subject,
        "external_subject": event.external_subject if event.HasField("external_subject") else None,
        "external_id": event.external_id if event.HasField("external_id") else None,
        "time": when,
        "data": orjson.Fragment(data_json) if data_json else struct_to_dict(event.data),
        "ingested_at": ingested,
    }


# One statement per chunk, one JSON parameter: orjson writes it in C and PostgreSQL
# reads it in C, so no Python runs per value (binding arrays of values cost more than
# the rest of the aggregator). The primary key drops events already stored. It answers
# the distinct (merchant, subject, type) of the rows it inserted (the usage hint), which
# PostgreSQL computes: no row comes back to Python.
_INSERT = sa.text(
    "WITH inserted AS ("
    "INSERT INTO meter_events (merchant_id, idempotency_key, id, type, source, subject, external_subject, external_id, "
    "time, data, ingested_at) "
    "SELECT merchant_id, idempotency_key, id, type, source, subject, external_subject, external_id, time, data, ingested_at "
    "FROM jsonb_to_recordset(CAST(:rows AS jsonb)) AS x(merchant_id text, idempotency_key text, id text, type text, "
    "source text, subject text, external_subject text, external_id text, time timestamptz, data jsonb, ingested_at timestamptz) "
    "ON CONFLICT (merchant_id, idempotency_key) DO NOTHING "
    "RETURNING merchant_id, subject, type) "
    "SELECT DISTINCT merchant_id, subject, type FROM inserted WHERE subject <> ''"
)

# (merchant_id, subject, event type) of stored rows
StoredKey = tuple[str, str, str]


async def insert_events(conn: AsyncConnection, rows: list[dict[str, Any]]) -> set[StoredKey]:
    """Insert the rows (a stored one is skipped); answers the distinct (merchant, subject,
    type) of the rows inserted that have a subject."""
    if not rows:
        return set()
    result = await conn.execute(_INSERT, {"rows": orjson.dumps(rows).decode()})
    return {(str(r[0]), str(r[1]), str(r[2])) for r in result}


def usage_stored(stored: Iterable[StoredKey], at: datetime) -> list[resources.UsageStored]:
    """The hint of one commit: one StoredSubject per (merchant, subject), its types sorted,
    in one message (more only past HINT_SUBJECTS_PER_MESSAGE subjects)."""
    types: dict[tuple[str, str], set[str]] = {}
    for merchant_id, subject, event_type in stored:
        types.setdefault((merchant_id, subject), set()).add(event_type)
    ordered = sorted(types.items())
    messages = []
    for start in range(0, len(ordered), HINT_SUBJECTS_PER_MESSAGE):
        message = resources.UsageStored(stored_at=to_timestamp(at))
        for (merchant_id, subject), names in ordered[start : start + HINT_SUBJECTS_PER_MESSAGE]:
            message.subjects.add(merchant_id=merchant_id, subject=subject, event_types=sorted(names))
        messages.append(message)
    return messages


# Errors a retry cannot fix: the data itself is refused, so the batch is taken apart at
# once (no waiting for the delivery limit). Anything else (connection lost, deadlock) is
# retried with the batch whole, and taken apart only on its last delivery.
PERMANENT_ERRORS = (DataError, IntegrityError, DecodeError, ValueError)
BATCH_TYPE = resources.MeterEventBatch.DESCRIPTOR.full_name


def events_of(payload: bytes) -> list[tuple[resources.MeterEvent, bytes]]:
    """A stream message's events, each with its data JSON (b"" when in the event)."""
    batch = resources.MeterEventBatch.FromString(payload)
    data = list(batch.data_json)
    return [(event, data[index] if index < len(data) else b"") for index, event in enumerate(batch.events)]


def split_events(message: ReceivedEvent) -> list[ReceivedEvent]:
    """A stream message's events, each as a one-event MeterEventBatch with its data in the
    event: what fails alone is dead-lettered alone (``event_id`` = its idempotency key),
    self-contained, and replays through the same handler. Raises DecodeError for bytes
    that are no batch (kept whole then)."""
    split = []
    for event, data_json in events_of(message.payload):
        if data_json:
            event.data.update(orjson.loads(data_json))
        split.append(
            ReceivedEvent(
                event_id=event.idempotency_key,
                subject=message.subject,
                event_type=BATCH_TYPE,
                merchant_id=event.merchant_id,
                payload=resources.MeterEventBatch(events=[event]).SerializeToString(),
                headers=message.headers,
            )
        )
    return split


class Aggregator(BatchConsumer):
    """The meter stream's consumer: every fetched batch of messages in one transaction
    (libs/infra/messaging.BatchConsumer: delivery limit, dead letters, replay)."""

    def __init__(self, db: Database, js: JetStreamContext, *, batch_size: int = MESSAGES_PER_FETCH, nats: NatsClient | None = None) -> None:
        super().__init__(
            db,
            js,
            PullSpec(
                stream=events.STREAM,
                durable=DURABLE,
                filter_subject=events.STREAM_SUBJECTS[0],
                batch_size=batch_size,
                fetch_wait=FETCH_WAIT_SECONDS,
                # an idle worker still advances the watermark this often (_after_fetch)
                idle_wait=WATERMARK_EVERY_SECONDS,
                ack_wait=ACK_WAIT_SECONDS,
            ),
            handler=self._store_messages,
            split=split_events,
            permanent_errors=PERMANENT_ERRORS,
        )
        self.stored = 0
        self._last_mark = datetime.min.replace(tzinfo=UTC)
        # core NATS for the usage hint: by default the connection the JetStream context
        # runs on (nats-py keeps it as ``_nc``); None: no hint is published
        self._nats: NatsClient | None = nats if nats is not None else getattr(js, "_nc", None)

    async def _store_messages(self, messages: Sequence[ReceivedEvent]) -> None:
        spans: list[trace.Span] = []
        for message in messages:
            consumed = _tracer.start_span(
                f"{message.subject} process",
                context=extract_context(message.headers),
                kind=SpanKind.CONSUMER,
                attributes={"messaging.system": "nats", "messaging.message.id": message.event_id, "messaging.consumer": DURABLE},
            )
            store_span = _tracer.start_span(
                "INSERT meter_events", context=trace.set_span_in_context(consumed), attributes={"db.system": "postgresql"}
            )
            spans += [store_span, consumed]  # ended children first
        try:
            await self._store([pair for m in messages for pair in events_of(m.payload)])
        except Exception as exc:
            for span in spans:
                span.record_exception(exc)
                span.set_status(Status(StatusCode.ERROR, type(exc).__name__))
            raise
        finally:
            for span in spans:
                span.end()

    async def _after_fetch(self, msgs: list[Msg], fetch_started: datetime) -> None:
        if not msgs or msgs[-1].metadata.num_pending == 0:
            await self._mark_drained_if_idle(fetch_started)

    async def _mark_drained_if_idle(self, fetch_started: datetime) -> None:
        """Advance the watermark only when nothing is pending or unacked on the consumer,
        for any worker: then every event accepted before fetch_started is stored.
        At most every WATERMARK_EVERY_SECONDS: an idle worker polls fifty times a second."""
        if (fetch_started - self._last_mark).total_seconds() < WATERMARK_EVERY_SECONDS:
            return
        self._last_mark = fetch_started
        try:
            info = await self.consumer_info()
        except Exception:
            return
        if info.num_pending == 0 and info.num_ack_pending == 0:
            await self._mark_drained(fetch_started)

    async def _store(self, batch: Sequence[tuple[resources.MeterEvent, bytes]]) -> None:
        """Store events, each with its data JSON (b"": its data is in the event), as events_of gives them."""
        times: dict[tuple[int, int], datetime] = {}
        rows = [row_of(event, times, data_json) for event, data_json in batch]
        stored: set[StoredKey] = set()
        async with self._db.engine.begin() as conn:
            # externalSubject-only events: attributed at once if their customer is known
            # (same transaction, before the insert: see subjects.resolve_subjects)
            await resolve_subjects(conn, rows)
            for start in range(0, len(rows), ROWS_PER_STATEMENT):
                stored |= await insert_events(conn, rows[start : start + ROWS_PER_STATEMENT])
        self.stored += len(rows)
        if stored:
            await self._hint(stored)

    async def _hint(self, stored: set[StoredKey]) -> None:
        """Publish the commit's UsageStored on core NATS; never fails the store path."""
        if self._nats is None:
            return
        try:
            for message in usage_stored(stored, datetime.now(UTC)):
                await self._nats.publish(events.USAGE_STORED_SUBJECT, message.SerializeToString())
        except Exception as exc:  # a hint: its consumers' caches age out anyway
            log.warning("usage_stored_hint_failed", subjects=len(stored), error=repr(exc))

    async def _mark_drained(self, at: datetime) -> None:
        t = store.aggregator_state
        with contextlib.suppress(Exception):
            async with self._db.engine.begin() as conn:
                stmt = pg.insert(t).values(consumer=DURABLE, drained_at=at)
                await conn.execute(stmt.on_conflict_do_update(index_elements=[t.c.consumer], set_={"drained_at": at}))
