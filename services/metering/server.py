"""MeteringService: ingestion onto the meter stream, usage and event queries."""

from __future__ import annotations

import asyncio
import hashlib
import json
from collections import defaultdict
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any

import grpc
import orjson
import sqlalchemy as sa
from accrue.metering.v1 import metering_resources_pb2 as resources
from accrue.metering.v1 import metering_service_pb2 as svc
from accrue.metering.v1 import metering_service_pb2_grpc
from google.protobuf import json_format, timestamp_pb2
from nats.aio.client import Client as NatsClient
from nats.js import JetStreamContext
from opentelemetry.trace import SpanKind

from libs.core.clock import Clock
from libs.core.errors import DomainError, InvalidArgument, Unavailable, Unprocessable
from libs.core.json_limits import check_no_nul
from libs.infra.context import current_merchant_id
from libs.infra.db import Database
from libs.infra.messaging import MSG_ID_HEADER
from libs.infra.proto_struct import struct_to_dict
from libs.infra.proto_time import from_timestamp, to_timestamp
from libs.infra.service_layer import check_batch_size, check_merchant, page_of, pagination, reject
from libs.infra.telemetry import inject_headers, tracer
from services.metering import store, test_clocks
from services.metering.domain import meter_events as rules
from services.metering.domain.usage import window_unit
from services.metering.events import partition_subject
from services.metering.metrics import MetricIndex, TypeCheck
from services.metering.test_clocks import ClockChange, ClockIndex, ClockState, MerchantClocks
from services.metering.usage_query import Reading, UsageQuery, complete_until, query_totals, query_usage
from services.metering.usage_query import conditions as usage_conditions

_tracer = tracer("accrue.metering")
METER_EVENTS_PAGE_SIZE = 20
MAX_BATCH = 1000
MAX_USAGE_READINGS = 10000
# one array parameter, so the statement is the same whatever the batch size
_KNOWN_KEYS = sa.text(
    "SELECT idempotency_key FROM meter_events WHERE merchant_id = :merchant_id AND idempotency_key = ANY(CAST(:keys AS text[]))"
)


@dataclass(frozen=True, slots=True)
class Valid:
    """An accepted event (its data left out) and its data as compact JSON."""

    event: resources.MeterEvent
    data_json: bytes
    # the caller gave the idempotency key (a generated one cannot name a stored event)
    key_supplied: bool = True


@dataclass(frozen=True, slots=True)
class _Shape:
    """What a call's events of one namespace, type, source and subjects share, checked."""

    fields: resources.MeterEvent
    clock: ClockState | None


# one call's shapes, by (namespace, type, source, subject, external subject)
_Shapes = dict[tuple[str, str, str, str, str | None], _Shape]


def _decimal_text(value: Decimal | int | None) -> str:
    """Exact, without exponent or trailing zeros (not Decimal.normalize: it rounds to 28 digits)."""
    if value is None:
        return "0"
    text = format(Decimal(value), "f")
    if "." in text:
        text = text.rstrip("0").rstrip(".")
    return "0" if text in ("-0", "") else text


class MeteringServicer(metering_service_pb2_grpc.MeteringServiceServicer):
    def __init__(
        self,
        db: Database,
        js: JetStreamContext,
        clock: Clock,
        metrics: MetricIndex,
        *,
        partitions: int,
        max_payload: int = 1 << 20,
        max_event_age_days: int = rules.DEFAULT_MAX_AGE_DAYS,
        clocks: ClockIndex | None = None,
        nats: NatsClient | None = None,
    ) -> None:
        self._max_payload = max_payload
        self._max_event_age_days = max_event_age_days
        self._db = db
        self._js = js
        self._clock = clock
        self._metrics = metrics
        self._partitions = partitions
        self._clocks = clocks if clocks is not None else ClockIndex(db)
        self._nats = nats

    # --- ingestion --------------------------------------------------------------------

    def _validate(
        self,
        request: svc.IngestEventRequest,
        merchant_id: str,
        now: datetime,
        types: TypeCheck,
        now_ts: timestamp_pb2.Timestamp,
        clocks: MerchantClocks | None,
        shapes: _Shapes,
    ) -> Valid:
        """The same rules for single, batched and streamed events (every path is _ingest).
        An event of a customer on a test clock (``clocks``) is stamped and bounded in the
        clock's time; ``ingest_time`` is always the server's. The event comes back without
        its data, which is published beside it as JSON (MeterEventBatch.data_json).

        ``shapes`` (one per call and ``clocks``) holds what the call's events with the same
        namespace, type, source and subjects share once they passed: those checks, the
        customer's clock and the event's fields, copied into each such event in C. A call's
        events mostly share them, so each is checked once per call, not per event; an
        event whose shape fails is checked in full, in the same order, every time."""
        external_subject = request.external_subject if request.HasField("external_subject") else None
        subject = request.subject
        shape_key = (request.namespace, request.type, request.source, subject, external_subject)
        shape = shapes.get(shape_key)
        if shape is None:
            check_merchant(request.namespace, merchant_id, field="namespace")
            rules.check_type(request.type)
            rules.check_source(request.source)
            rules.check_subjects(subject, external_subject)
        supplied = request.HasField("idempotency_key")
        if supplied:
            check_no_nul(request.idempotency_key, "idempotencyKey")
        rules.check_data_size(request.data)
        data = struct_to_dict(request.data)
        rules.check_data(data)
        clock = (clocks.clock_of(subject, external_subject) if clocks is not None else None) if shape is None else shape.clock
        when = None
        if request.HasField("timestamp"):
            if clock is None:
                when = rules.check_time(_event_time(request.timestamp), now, self._max_event_age_days)
            else:
                when = rules.check_time(_event_time(request.timestamp), clock.time, self._max_event_age_days, f"test clock {clock.id} time")
        key = rules.idempotency_key(request.idempotency_key if supplied else None)
        external_id = rules.external_id(request.external_id) if request.HasField("external_id") else None
        if not request.HasField("data"):
            raise InvalidArgument("data", "data is required (an object, possibly empty)", reason="REQUIRED")
        if shape is None:
            event_type = request.type
            if event_type in types.unconfirmed:
                raise Unavailable(
                    "CATALOG_UNAVAILABLE", f"the event type {event_type!r} could not be checked against the catalog just now; retry"
                )
            if event_type not in types.known:
                raise Unprocessable(
                    "UNKNOWN_EVENT_TYPE", f"no billable metric of this merchant consumes events of type {event_type!r}", field="type"
                )
            fields = resources.MeterEvent(
                object="meterEvent",
                merchant_id=merchant_id,
                type=event_type,
                source=request.source,
                subject=subject,
                time=now_ts if clock is None else clock.timestamp,  # the default timestamp
                ingest_time=now_ts,
            )
            if external_subject is not None:
                fields.external_subject = external_subject
            shape = shapes[shape_key] = _Shape(fields, clock)
        event = resources.MeterEvent()
        event.CopyFrom(shape.fields)
        event.id = rules.event_id(merchant_id, key)
        event.idempotency_key = key
        if when is not None:
            event.time.CopyFrom(to_timestamp(when))
        if external_id is not None:
            event.external_id = external_id
        return Valid(event, orjson.dumps(data), supplied)

    async def _known_keys(self, merchant_id: str, keys: list[str]) -> set[str]:
        async with self._db.engine.connect() as conn:
            rows = await conn.execute(_KNOWN_KEYS, {"merchant_id": merchant_id, "keys": keys})
            return {row.idempotency_key for row in rows}

    async def _publish(self, partition: int, events: list[Valid]) -> None:
        """One stream message per chunk that fits NATS's payload limit, with room for headers."""
        limit = max(64 * 1024, self._max_payload - 16 * 1024)
        chunk: list[Valid] = []
        size = 0
        for event in events:
            event_size = event.event.ByteSize() + len(event.data_json) + 16
            if chunk and size + event_size > limit:
                await self._publish_chunk(partition, chunk)
                chunk, size = [], 0
            chunk.append(event)
            size += event_size
        if chunk:
            await self._publish_chunk(partition, chunk)

    async def _publish_chunk(self, partition: int, valid: list[Valid]) -> None:
        events = [v.event for v in valid]
        batch = resources.MeterEventBatch(events=events, data_json=[v.data_json for v in valid])
        keys = "\n".join(rules.dedupe_id(e.merchant_id, e.idempotency_key) for e in events)
        message_id = hashlib.sha256(keys.encode()).hexdigest()  # a retried identical call is dropped by JetStream
        subject = partition_subject(partition)
        try:
            # the publish span's context rides in the headers: the aggregator's spans continue it
            with _tracer.start_as_current_span(
                f"{subject} publish",
                kind=SpanKind.PRODUCER,
                attributes={"messaging.system": "nats", "messaging.message.id": message_id, "messaging.batch.message_count": len(events)},
            ):
                await self._js.publish(subject, batch.SerializeToString(), headers=inject_headers({MSG_ID_HEADER: message_id}))
        except Exception as exc:  # not durable: the caller must retry (and dedupe keeps it once)
            raise Unavailable("METER_STREAM_UNAVAILABLE", f"the meter stream did not acknowledge: {exc}") from exc

    async def _ingest(
        self, items: Sequence[svc.IngestEventRequest], merchant_id: str, now: datetime, *, check_duplicates: bool, include_events: bool
    ) -> tuple[list[svc.EventReceipt], list[DomainError | None]]:
        """Validate every event, publish the valid ones (one JetStream message per subject
        partition), and answer once JetStream has them. Receipts and errors by position."""
        receipts: list[svc.EventReceipt] = [svc.EventReceipt(index=i) for i in range(len(items))]
        errors: list[DomainError | None] = [None] * len(items)
        # one look-up per call (none when every type is known), not per event
        types = await self._metrics.known_types(merchant_id, {item.type for item in items})
        # None (the common case) when no customer of the merchant is on a test clock
        clocks = await self._clocks.current(merchant_id)
        now_ts = to_timestamp(now)
        outcomes: list[Valid | DomainError] = []
        time_refused = False
        shapes: _Shapes = {}
        for item in items:
            try:
                outcomes.append(self._validate(item, merchant_id, now, types, now_ts, clocks, shapes))
            except DomainError as err:
                outcomes.append(err)
                time_refused = time_refused or err.reason in rules.TIME_BOUND_REASONS
        if time_refused or clocks is not None:
            await self._judge_again_on_fresh_clocks(items, outcomes, merchant_id, now, types, now_ts, clocks)
        valid: list[tuple[int, Valid]] = []
        for index, outcome in enumerate(outcomes):
            if not isinstance(outcome, DomainError):
                valid.append((index, outcome))
                continue
            errors[index] = outcome
            reject(receipts[index], outcome)
        first_of_key: dict[str, int] = {}
        fresh: list[tuple[int, Valid]] = []
        # a key metering made up (the caller sent none) cannot name a stored event
        supplied = [v.event.idempotency_key for _, v in valid if v.key_supplied] if check_duplicates else []
        known = await self._known_keys(merchant_id, supplied) if supplied else set()
        for index, accepted in valid:
            event = accepted.event
            receipt = receipts[index]
            receipt.id = event.id
            if include_events:
                receipt.event.CopyFrom(self._response(event))
            if event.idempotency_key in first_of_key or event.idempotency_key in known:
                receipt.status = "duplicate"
                continue
            first_of_key[event.idempotency_key] = index
            receipt.status = "accepted"
            fresh.append((index, accepted))
        by_partition: dict[int, list[Valid]] = defaultdict(list)
        partition_of: dict[str, int] = {}  # a call's events mostly share a few subjects
        for _, accepted in fresh:
            event = accepted.event
            key = event.subject or (event.external_subject if event.HasField("external_subject") else "")
            partition = partition_of.get(key)
            if partition is None:
                partition = partition_of[key] = rules.partition_of(merchant_id, key, self._partitions)
            by_partition[partition].append(accepted)
        await asyncio.gather(*(self._publish(partition, events) for partition, events in by_partition.items()))
        return receipts, errors

    async def _judge_again_on_fresh_clocks(
        self,
        items: Sequence[svc.IngestEventRequest],
        outcomes: list[Valid | DomainError],
        merchant_id: str,
        now: datetime,
        types: TypeCheck,
        now_ts: timestamp_pb2.Timestamp,
        clocks: MerchantClocks | None,
    ) -> None:
        """Events whose answer a stale cache could make wrong, judged again after reading
        their customers' clocks from the database (one statement, only for such calls):
        when an event is refused by a time bound (another process may have moved or made
        the clock a moment ago) or one would be stamped with a cached clock's time, every
        event of the call that is refused so or whose customer is on a clock."""
        refused = [i for i, o in enumerate(outcomes) if isinstance(o, DomainError) and o.reason in rules.TIME_BOUND_REASONS]
        clocked = [i for i, item in enumerate(items) if self._on_a_clock(item, clocks)] if clocks is not None else []
        if not refused and all(items[i].HasField("timestamp") for i in clocked):
            return
        # the clock events of the call too: their clocks are read anyway
        again = sorted({*refused, *clocked})
        customers = {items[i].subject for i in again if items[i].subject}
        externals = {items[i].external_subject for i in again if not items[i].subject and items[i].HasField("external_subject")}
        fresh = await self._clocks.reread(merchant_id, customers, externals)
        shapes: _Shapes = {}
        for index in again:
            try:
                outcomes[index] = self._validate(items[index], merchant_id, now, types, now_ts, fresh, shapes)
            except DomainError as err:
                outcomes[index] = err

    @staticmethod
    def _on_a_clock(item: svc.IngestEventRequest, clocks: MerchantClocks | None) -> bool:
        external = item.external_subject if item.HasField("external_subject") else None
        return clocks is not None and clocks.clock_of(item.subject, external) is not None

    # --- test clocks --------------------------------------------------------------------

    async def SyncTestClock(self, request: svc.SyncTestClockRequest, context: grpc.aio.ServicerContext) -> svc.SyncTestClockResponse:
        """The subscription service: a clock's time, its new customers, or its deletion.
        Idempotent; times only move forward (the answer is the time metering holds)."""
        merchant_id = current_merchant_id()
        if not request.test_clock_id:
            raise InvalidArgument("testClockId", "testClockId is required", reason="REQUIRED")
        check_no_nul(request.test_clock_id, "testClockId")
        rules.check_length(request.test_clock_id, "testClockId")
        if not request.HasField("current_time"):
            raise InvalidArgument("currentTime", "currentTime is required", reason="REQUIRED")
        try:
            when = from_timestamp(request.current_time)
        except ValueError as exc:
            raise InvalidArgument("currentTime", "currentTime is not a valid instant", reason="INVALID_TIMESTAMP") from exc
        for i, customer_id in enumerate(request.customer_ids):
            if not customer_id:
                raise InvalidArgument(f"customerIds[{i}]", "a customer id must not be empty", reason="REQUIRED")
            check_no_nul(customer_id, f"customerIds[{i}]")
            rules.check_length(customer_id, f"customerIds[{i}]")
        change = ClockChange(merchant_id, request.test_clock_id, when, tuple(request.customer_ids), request.deleted)
        async with self._db.engine.begin() as conn:
            held = await test_clocks.record(conn, change, self._clock.now())
        # after the commit: this process's cache at once, the others' by broadcast
        self._clocks.apply(held)
        await test_clocks.broadcast(self._nats, held)
        return svc.SyncTestClockResponse(current_time=to_timestamp(held.time))

    @staticmethod
    def _response(event: resources.MeterEvent) -> svc.IngestEventResponse:
        out = svc.IngestEventResponse(
            id=event.id,
            object="event",
            type=event.type,
            source=event.source,
            namespace=event.merchant_id,
            timestamp=event.time,
            idempotency_key=event.idempotency_key,
        )
        if event.subject:
            out.subject = event.subject
        if event.HasField("external_subject"):
            out.external_subject = event.external_subject
        if event.HasField("external_id"):
            out.external_id = event.external_id
        return out

    async def IngestEvent(self, request: svc.IngestEventRequest, context: grpc.aio.ServicerContext) -> svc.IngestEventResponse:
        receipts, errors = await self._ingest(
            [request], current_merchant_id(), self._clock.now(), check_duplicates=False, include_events=True
        )
        if errors[0] is not None:
            raise errors[0]
        return receipts[0].event

    async def _batch(self, request: svc.BatchIngestEventsRequest, merchant_id: str) -> svc.BatchIngestEventsResponse:
        check_batch_size(request.events, MAX_BATCH, "events")
        receipts, _ = await self._ingest(
            request.events,
            merchant_id,
            self._clock.now(),
            check_duplicates=not request.skip_duplicate_check,
            include_events=request.include_events,
        )
        counts = {status: sum(1 for r in receipts if r.status == status) for status in ("accepted", "duplicate", "rejected")}
        return svc.BatchIngestEventsResponse(
            object="list",
            receipts=receipts,
            accepted=counts["accepted"],
            duplicates=counts["duplicate"],
            rejected=counts["rejected"],
        )

    async def BatchIngestEvents(
        self, request: svc.BatchIngestEventsRequest, context: grpc.aio.ServicerContext
    ) -> svc.BatchIngestEventsResponse:
        return await self._batch(request, current_merchant_id())

    async def StreamIngestEvents(
        self, request_iterator: AsyncIterator[svc.StreamIngestEventsRequest], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[svc.StreamIngestEventsResponse]:
        merchant_id = current_merchant_id()
        async for message in request_iterator:
            yield svc.StreamIngestEventsResponse(receipts=await self._batch(message.batch, merchant_id))

    # --- queries ----------------------------------------------------------------------

    @staticmethod
    def _window(request: Any) -> tuple[datetime, datetime]:
        if not request.HasField("from_time"):
            raise InvalidArgument("from", "from is required", reason="REQUIRED")
        if not request.HasField("to_time"):
            raise InvalidArgument("to", "to is required", reason="REQUIRED")
        start, end = from_timestamp(request.from_time), from_timestamp(request.to_time)
        if end <= start:
            raise InvalidArgument("to", "to must be after from", reason="OUT_OF_RANGE")
        return start, end

    async def GetMeter(self, request: svc.GetMeterRequest, context: grpc.aio.ServicerContext) -> svc.UsageResponse:
        merchant_id = current_merchant_id()
        metric = await self._metrics.get(merchant_id, request.id)
        start, end = self._window(request)
        filters: dict[str, str] = {}
        if request.HasField("filter_group_by") and request.filter_group_by:
            try:
                parsed = json.loads(request.filter_group_by)
            except json.JSONDecodeError as exc:
                raise InvalidArgument("filterGroupBy", "filterGroupBy must be a JSON object", reason="INVALID_JSON") from exc
            if not isinstance(parsed, dict):
                raise InvalidArgument("filterGroupBy", "filterGroupBy must be a JSON object", reason="INVALID_JSON")
            filters = {str(k): str(v) for k, v in parsed.items()}
        if request.HasField("group_limit") and request.group_limit < 1:
            raise InvalidArgument("groupLimit", "groupLimit must be 1 or more", reason="OUT_OF_RANGE")
        query = UsageQuery(
            metric=metric,
            start=start,
            end=end,
            subject=request.subject if request.HasField("subject") else None,
            filters=filters,
            window_unit=window_unit(request.window_size if request.HasField("window_size") else None),
            group_by=tuple(d.strip() for d in request.group_by.split(",") if d.strip()) if request.HasField("group_by") else (),
            group_limit=request.group_limit if request.HasField("group_limit") else None,
            group_offset=request.group_offset if request.HasField("group_offset") else 0,
        )
        async with self._db.engine.connect() as conn:
            usage = await query_usage(conn, query)
        response = svc.UsageResponse(object="meter", billable_metric_id=metric.id)
        response.total_value_decimal = _decimal_text(usage.total)
        response.total_value = float(usage.total)
        for row in usage.rows:
            text = _decimal_text(row.value)
            if row.window_start is not None and query.window_unit is not None:
                response.windowed_values.append(
                    svc.WindowedValue(
                        window_start=to_timestamp(row.window_start),
                        window_end=to_timestamp(_window_end(row.window_start, query.window_unit)),
                        value=float(row.value),
                        value_decimal=text,
                    )
                )
            if query.group_by:
                response.grouped_values.append(
                    svc.GroupedValue(group_by=row.group, value=float(row.value), value_decimal=text, event_count=row.events)
                )
        if usage.group_count is not None:
            response.group_count = usage.group_count
        if usage.complete_until is not None:
            response.complete_until.CopyFrom(to_timestamp(usage.complete_until))
        return response

    async def GetUsages(self, request: svc.GetUsagesRequest, context: grpc.aio.ServicerContext) -> svc.GetUsagesResponse:
        """Internal: the totals of many readings (each as GetMeter with a subject and no
        windows or groups would answer it), and one watermark. The watermark is read
        first: every event it covers is in the totals read after it."""
        merchant_id = current_merchant_id()
        if len(request.readings) > MAX_USAGE_READINGS:
            raise InvalidArgument("readings", f"at most {MAX_USAGE_READINGS} readings per call", reason="TOO_MANY_READINGS")
        metrics = {}
        for metric_id in dict.fromkeys(r.billable_metric_id for r in request.readings):
            metrics[metric_id] = await self._metrics.get(merchant_id, metric_id)
        readings = []
        for index, r in enumerate(request.readings):
            if not r.subject:
                raise InvalidArgument(f"readings[{index}].subject", "subject is required", reason="REQUIRED")
            start, end = self._window(r)
            readings.append(Reading(metrics[r.billable_metric_id], r.subject, start, end))
        async with self._db.engine.connect() as conn:
            until = await complete_until(conn)
            totals = await query_totals(conn, readings)
        response = svc.GetUsagesResponse(total_value_decimals=[_decimal_text(t) for t in totals])
        if until is not None:
            response.complete_until.CopyFrom(to_timestamp(until))
        return response

    async def ListMeterEvents(self, request: svc.ListMeterEventsRequest, context: grpc.aio.ServicerContext) -> svc.MeterEventList:
        merchant_id = current_merchant_id()
        metric = await self._metrics.get(merchant_id, request.id)
        start, end = self._window(request)
        # the REST contract's default page of meter events is 20 (paygentic-api.md), not the house 10
        page = page_of(request, default=METER_EVENTS_PAGE_SIZE)
        e = store.meter_events
        conditions = usage_conditions(metric, start, end, request.subject if request.HasField("subject") else None)
        if request.HasField("external_id"):
            conditions.append(e.c.external_id == request.external_id)
        if request.HasField("external_subject"):
            conditions.append(e.c.external_subject == request.external_subject)
        async with self._db.engine.connect() as conn:
            total = (await conn.execute(sa.select(sa.func.count()).select_from(e).where(*conditions))).scalar_one()
            rows = (
                await conn.execute(
                    sa.select(e)
                    .where(*conditions)
                    .order_by(e.c.time.desc(), e.c.idempotency_key.desc())
                    .limit(page.limit)
                    .offset(page.offset)
                )
            ).all()
        out = svc.MeterEventList(
            object="list",
            billable_metric_id=metric.id,
            pagination=pagination(page, int(total)),
        )
        for row in rows:
            event = resources.MeterEvent(
                id=row.id,
                object="meterEvent",
                merchant_id=row.merchant_id,
                type=row.type,
                source=row.source,
                subject=row.subject,
                time=to_timestamp(row.time),
                idempotency_key=row.idempotency_key,
                ingest_time=to_timestamp(row.ingested_at),
            )
            json_format.ParseDict(row.data, event.data)
            if row.external_subject is not None:
                event.external_subject = row.external_subject
            if row.external_id is not None:
                event.external_id = row.external_id
            out.events.append(event)
        return out


def _event_time(value: timestamp_pb2.Timestamp) -> datetime:
    try:
        return from_timestamp(value)
    except ValueError as exc:  # a gRPC caller's seconds or nanos out of Timestamp's range
        raise InvalidArgument(
            "timestamp", "timestamp is not a valid instant (between 0001-01-01 and 9999-12-31, UTC)", reason="INVALID_TIMESTAMP"
        ) from exc


def _window_end(start: datetime, unit: str) -> datetime:
    from datetime import timedelta

    if unit == "minute":
        return start + timedelta(minutes=1)
    if unit == "hour":
        return start + timedelta(hours=1)
    if unit == "day":
        return start + timedelta(days=1)
    return start.replace(year=start.year + 1, month=1) if start.month == 12 else start.replace(month=start.month + 1)
