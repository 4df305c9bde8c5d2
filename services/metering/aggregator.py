"""The aggregator: meter stream -> metering's PostgreSQL, in batches, exactly once.

Each fetched batch is inserted in one transaction with ON CONFLICT DO NOTHING on
(merchant, idempotency key), then acked. A crash before the commit redelivers the batch;
a crash after it redelivers rows that already exist and are skipped. Usage is computed
from the stored events, so an event counts once however often it is delivered.
"""

from __future__ import annotations

import asyncio
import contextlib
from datetime import UTC, datetime
from typing import Any

import orjson
import sqlalchemy as sa
from accrue.metering.v1 import metering_resources_pb2 as resources
from google.protobuf.message import DecodeError
from nats.errors import TimeoutError as NatsTimeoutError
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig
from sqlalchemy.dialects import postgresql as pg
from sqlalchemy.exc import DataError, IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection

from libs.infra.db import Database
from libs.infra.logging import get_logger
from libs.infra.proto_struct import to_python
from services.metering import store
from services.metering.subjects import resolve_subjects

log = get_logger(__name__)
METER_STREAM = "ACCRUE_METER"
METER_SUBJECTS = "accrue.meter.v1.events.>"
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


def row_of(event: resources.MeterEvent) -> dict[str, Any]:
    return {
        "merchant_id": event.merchant_id,
        "idempotency_key": event.idempotency_key,
        "id": event.id,
        "type": event.type,
        "source": event.source,
        "subject": event.subject,
        "external_subject": event.external_subject if event.HasField("external_subject") else None,
        "external_id": event.external_id if event.HasField("external_id") else None,
        "time": event.time.ToDatetime(tzinfo=UTC),
        "data": {k: to_python(v) for k, v in event.data.fields.items()},
        "ingested_at": event.ingest_time.ToDatetime(tzinfo=UTC),
    }


# One statement per chunk, one JSON parameter: orjson writes it in C and PostgreSQL
# reads it in C, so no Python runs per value (binding arrays of values cost more than
# the rest of the aggregator). The primary key drops events already stored.
_INSERT = sa.text(
    "INSERT INTO meter_events (merchant_id, idempotency_key, id, type, source, subject, external_subject, external_id, "
    "time, data, ingested_at) "
    "SELECT merchant_id, idempotency_key, id, type, source, subject, external_subject, external_id, time, data, ingested_at "
    "FROM jsonb_to_recordset(CAST(:rows AS jsonb)) AS x(merchant_id text, idempotency_key text, id text, type text, "
    "source text, subject text, external_subject text, external_id text, time timestamptz, data jsonb, ingested_at timestamptz) "
    "ON CONFLICT (merchant_id, idempotency_key) DO NOTHING"
)


async def insert_events(conn: AsyncConnection, rows: list[dict[str, Any]]) -> None:
    if rows:
        await conn.execute(_INSERT, {"rows": orjson.dumps(rows).decode()})


# Errors a retry cannot fix: the data itself is refused. Anything else (connection lost,
# deadlock) is retried with the batch whole, never dead-lettered.
PERMANENT_ERRORS = (DataError, IntegrityError, DecodeError, ValueError)


class Aggregator:
    def __init__(self, db: Database, js: JetStreamContext, *, batch_size: int = MESSAGES_PER_FETCH) -> None:
        self._db = db
        self._js = js
        self._batch_size = batch_size
        self._stopping = asyncio.Event()
        self.stored = 0
        self._last_mark = datetime.min.replace(tzinfo=UTC)

    def stop(self) -> None:
        self._stopping.set()

    async def run(self) -> None:
        sub = await self._js.pull_subscribe(
            METER_SUBJECTS,
            durable=DURABLE,
            stream=METER_STREAM,
            config=ConsumerConfig(ack_policy=AckPolicy.EXPLICIT, ack_wait=ACK_WAIT_SECONDS, max_ack_pending=1_000),
        )
        while not self._stopping.is_set():
            try:
                await self._step(sub)
            except Exception as exc:  # never die silently: the next fetch redelivers what was not acked
                log.error("aggregator_step_failed", error=repr(exc))
                await asyncio.sleep(0.5)

    async def _step(self, sub: Any) -> None:
        fetch_started = datetime.now(UTC)
        try:
            msgs = await sub.fetch(self._batch_size, timeout=FETCH_WAIT_SECONDS)
        except (NatsTimeoutError, TimeoutError):
            msgs = []
        if msgs:
            try:
                await self._store([event for m in msgs for event in resources.MeterEventBatch.FromString(m.data).events])
            except PERMANENT_ERRORS as exc:
                log.warning("aggregator_batch_failed_storing_one_by_one", error=repr(exc), messages=len(msgs))
                await self._store_each(msgs)
            except Exception:
                # transient (PostgreSQL down, a deadlock): nothing committed, hand the batch
                # back now rather than after the ack wait, and let run() log and pause
                await asyncio.gather(*(m.nak(delay=0.5) for m in msgs), return_exceptions=True)
                raise
            await asyncio.gather(*(m.ack() for m in msgs))
        if not msgs or msgs[-1].metadata.num_pending == 0:
            await self._mark_drained_if_idle(sub, fetch_started)

    async def _store_each(self, msgs: list[Any]) -> None:
        """A batch that failed: store message by message, event by event, so one poisoned
        event can never hold up the stream; what still fails goes to the dead letters."""
        for msg in msgs:
            try:
                events = list(resources.MeterEventBatch.FromString(msg.data).events)
            except DecodeError as exc:  # undecodable: keep the bytes
                await self._dead_letter("", "", msg.data, repr(exc))
                continue
            try:
                await self._store(events)
                continue
            except PERMANENT_ERRORS:
                pass
            for event in events:
                try:
                    await self._store([event])
                except PERMANENT_ERRORS as exc:
                    await self._dead_letter(event.merchant_id, event.idempotency_key, event.SerializeToString(), repr(exc))

    async def _dead_letter(self, merchant_id: str, key: str, payload: bytes, error: str) -> None:
        log.error("meter_event_dead_lettered", merchant_id=merchant_id, idempotency_key=key, error=error)
        async with self._db.engine.begin() as conn:
            await conn.execute(
                store.dead_letters.insert().values(
                    merchant_id=merchant_id, idempotency_key=key, event=payload, error=error[:2000], created_at=datetime.now(UTC)
                )
            )

    async def _mark_drained_if_idle(self, sub: Any, fetch_started: datetime) -> None:
        """Advance the watermark only when nothing is pending or unacked on the consumer,
        for any worker: then every event accepted before fetch_started is stored.
        At most every WATERMARK_EVERY_SECONDS: an idle worker polls fifty times a second."""
        if (fetch_started - self._last_mark).total_seconds() < WATERMARK_EVERY_SECONDS:
            return
        self._last_mark = fetch_started
        try:
            info = await sub.consumer_info()
        except Exception:
            return
        if info.num_pending == 0 and info.num_ack_pending == 0:
            await self._mark_drained(fetch_started)

    async def _store(self, events: list[resources.MeterEvent]) -> None:
        rows = [row_of(e) for e in events]
        async with self._db.engine.begin() as conn:
            # externalSubject-only events: attributed at once if their customer is known
            # (same transaction, before the insert: see subjects.resolve_subjects)
            await resolve_subjects(conn, rows)
            for start in range(0, len(rows), ROWS_PER_STATEMENT):
                await insert_events(conn, rows[start : start + ROWS_PER_STATEMENT])
        self.stored += len(rows)

    async def _mark_drained(self, at: datetime) -> None:
        t = store.aggregator_state
        with contextlib.suppress(Exception):
            async with self._db.engine.begin() as conn:
                stmt = pg.insert(t).values(consumer=DURABLE, drained_at=at)
                await conn.execute(stmt.on_conflict_do_update(index_elements=[t.c.consumer], set_={"drained_at": at}))


async def _run_standalone(settings: Any) -> None:
    import signal

    from libs.infra.db import create_engine
    from libs.infra.messaging import connect, ensure_stream

    db = Database(create_engine(settings.database_url, pool_size=4), store.metadata)
    nc = await connect(settings.nats_url, name="accrue-metering-aggregator")
    js = nc.jetstream()
    await ensure_stream(js, METER_STREAM, [METER_SUBJECTS])
    aggregator = Aggregator(db, js)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, aggregator.stop)
    log.info("aggregator_started")
    try:
        await aggregator.run()
    finally:
        await nc.close()
        await db.dispose()
        log.info("aggregator_stopped", stored=aggregator.stored)


def main() -> None:
    """``python -m services.metering.aggregator``: one more aggregator worker.

    Workers share the durable consumer, so JetStream spreads the meter stream's messages
    across however many run; the database's primary key keeps each event once. Run the
    metering service with ACCRUE_AGGREGATOR_ENABLED=false to keep aggregation out of it.
    """
    from libs.infra.logging import configure_logging
    from libs.infra.service import run
    from libs.infra.settings import ServiceSettings

    settings = ServiceSettings()
    configure_logging("metering-aggregator", settings.log_level)
    run(_run_standalone(settings))


if __name__ == "__main__":
    main()
