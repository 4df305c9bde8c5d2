"""Composition root of the metering service: ingestion, the aggregator, the metric projection,
and the edge ingest process (``EDGE``: README "Edge ingestion")."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import grpc
from accrue.metering.v1 import metering_service_pb2, metering_service_pb2_grpc
from nats.aio.client import Client as NatsClient
from nats.js import JetStreamContext
from nats.js.api import PubAck, StreamSource

from libs.infra.logging import get_logger
from libs.infra.messaging import EventConsumer, PullSpec
from libs.infra.service import Runtime, ServiceDefinition, Worker, main
from services.catalog import events as catalog_events
from services.metering import events
from services.metering.aggregator import Aggregator
from services.metering.metrics import CatalogClient, MetricIndex
from services.metering.server import MeteringServicer
from services.metering.settings import MeteringSettings
from services.metering.store import metadata
from services.metering.subjects import CUSTOMER_DURABLE, on_customer_event
from services.metering.test_clocks import TEST_CLOCK_DURABLE, TEST_CLOCK_SUBJECTS, ClockIndex, ClockListener, on_test_clock_event
from services.subscription import events as subscription_events

log = get_logger(__name__)

SERVICE_NAME = metering_service_pb2.DESCRIPTOR.services_by_name["MeteringService"].full_name
METRICS_DURABLE = "metering-metrics"


def _index(runtime: Runtime) -> MetricIndex:
    if "metrics" not in runtime.extras:
        address = runtime.settings_as(MeteringSettings).catalog_addr
        runtime.extras["metrics"] = MetricIndex(runtime.db, CatalogClient(address) if address else None)
    index: MetricIndex = runtime.extras["metrics"]
    return index


def _clocks(runtime: Runtime) -> ClockIndex:
    if "clocks" not in runtime.extras:
        runtime.extras["clocks"] = ClockIndex(runtime.db)
    index: ClockIndex = runtime.extras["clocks"]
    return index


def _servicer(runtime: Runtime, js: JetStreamContext) -> MeteringServicer:
    settings = runtime.settings_as(MeteringSettings)
    return MeteringServicer(
        runtime.db,
        js,
        runtime.clock,
        _index(runtime),
        partitions=settings.meter_partitions,
        max_payload=runtime.nats.max_payload,
        max_event_age_days=settings.metering_max_event_age_days,
        clocks=_clocks(runtime),
        nats=runtime.nats,
    )


def register(server: grpc.aio.Server, runtime: Runtime) -> None:
    metering_service_pb2_grpc.add_MeteringServiceServicer_to_server(_servicer(runtime, runtime.js), server)


def workers(runtime: Runtime) -> Sequence[Worker]:
    settings = runtime.settings_as(MeteringSettings)
    out: list[Worker] = [
        EventConsumer(
            runtime.db,
            runtime.js,
            PullSpec(
                stream=catalog_events.STREAM,
                durable=METRICS_DURABLE,
                filter_subject=catalog_events.subjects_of(catalog_events.BILLABLE_METRIC),
            ),
            handler=_index(runtime).on_catalog_event,
        )
    ]
    out.append(
        EventConsumer(
            runtime.db,
            runtime.js,
            PullSpec(stream=subscription_events.STREAM, durable=CUSTOMER_DURABLE, filter_subject=subscription_events.CUSTOMER_SUBJECTS),
            handler=on_customer_event,
        )
    )
    # test clocks: the durable consumer keeps the tables, the listener this process's cache
    out.append(
        EventConsumer(
            runtime.db,
            runtime.js,
            PullSpec(stream=subscription_events.STREAM, durable=TEST_CLOCK_DURABLE, filter_subject=TEST_CLOCK_SUBJECTS),
            handler=on_test_clock_event,
        )
    )
    out.append(ClockListener(runtime.nats, _clocks(runtime)))
    if settings.edge_domains:
        out.append(EdgeSources(runtime.nats, settings.edge_domains))
    if settings.aggregator_enabled:
        out.extend(aggregator_workers(runtime))
    return out


def aggregator_workers(runtime: Runtime) -> Sequence[Worker]:
    return [Aggregator(runtime.db, runtime.js, batch_size=runtime.settings_as(MeteringSettings).aggregator_batch_size)]


DEFINITION = ServiceDefinition(
    name="metering",
    grpc_services=[SERVICE_NAME],
    metadata=metadata,
    migrations_dir=Path(__file__).parent / "migrations",
    settings=MeteringSettings,
    register=register,
    # only its own stream: the catalog's and the subscription service's are theirs, and
    # metering's consumers of them wait until they exist
    streams={events.STREAM: list(events.STREAM_SUBJECTS)},
    workers=workers,
    # it asks the catalog about event types it has not heard of; in the mesh its
    # aggregation runs in AGGREGATOR's processes, scaled on their own
    talks_to=("catalog",),
    env={"ACCRUE_AGGREGATOR_ENABLED": "false"},
)

# metering's aggregation as its own process (several share one durable consumer):
# metering's database and meter stream, no migrations of its own, no servicers (gRPC
# health only, for the runner's and the kubelet's probes)
AGGREGATOR = ServiceDefinition(
    name="metering-aggregator",
    metadata=metadata,
    settings=MeteringSettings,
    database="metering",
    streams={events.STREAM: list(events.STREAM_SUBJECTS)},
    workers=aggregator_workers,
    relay_outbox=False,
)


# --- edge ingestion -------------------------------------------------------------------


async def ensure_edge_sources(nc: NatsClient, domains: Sequence[str]) -> set[str]:
    """Make the central meter stream source these edge domains' EDGE_STREAMs (its other
    sources, if an operator added any, are kept; edge sources of other domains are
    dropped). A source already there is left as it is: JetStream keeps its position, so
    nothing is sourced twice or skipped, and after a link outage it resumes by itself.
    A domain is added only once its edge stream answers over the leaf link: a source
    declared before its stream exists is retried by the server with a growing backoff
    (tens of seconds), one declared after it starts at once. Returns the domains still
    to add."""
    js = nc.jetstream()
    info = await js.stream_info(events.STREAM)
    current = list(info.config.sources or [])

    def edge_api_of(source: StreamSource) -> str | None:
        if source.name != events.EDGE_STREAM or source.external is None:
            return None
        return source.external.api

    wanted_apis = {events.edge_api(domain): domain for domain in domains}
    kept = [s for s in current if edge_api_of(s) is None or edge_api_of(s) in wanted_apis]
    have = {edge_api_of(s) for s in kept}
    added: list[StreamSource] = []
    pending: set[str] = set()
    for api, domain in wanted_apis.items():
        if api in have:
            continue
        try:
            await nc.jetstream(domain=domain, timeout=2).stream_info(events.EDGE_STREAM)
        except Exception:  # the edge is not up yet, or its link is down: next round
            pending.add(domain)
            continue
        added.append(events.edge_source(domain))
    if added or len(kept) != len(current):
        await js.update_stream(info.config.evolve(sources=kept + added))
        log.info("meter_edge_sources_updated", stream=events.STREAM, domains=list(domains), added=[edge_api_of(s) for s in added])
    return pending


class EdgeSources:
    """A worker of the central metering process when ACCRUE_METER_EDGE_DOMAINS is set: it
    declares the meter stream's edge sources (the producer's declaration is the truth, as
    for its subjects), each as soon as its edge stream is reachable, and then ends."""

    RETRY_SECONDS = 1.0

    def __init__(self, nc: NatsClient, domains: Sequence[str]) -> None:
        self._nc = nc
        self._domains = tuple(domains)
        self._stopped = asyncio.Event()

    async def run(self) -> None:
        waiting_for: set[str] | None = None
        while not self._stopped.is_set():
            try:
                pending = await ensure_edge_sources(self._nc, self._domains)
                if not pending:
                    return
                if pending != waiting_for:
                    log.info("meter_edge_sources_waiting", domains=sorted(pending))
                    waiting_for = pending
            except Exception as exc:
                log.warning("meter_edge_sources_not_applied", domains=list(self._domains), error=str(exc))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopped.wait(), self.RETRY_SECONDS)

    def stop(self) -> None:
        self._stopped.set()


class EdgeJetStream(JetStreamContext):
    """The JetStream of an edge metering process: what the ingest path publishes on a meter
    subject goes to the edge stream's subject instead (events.edge_subject), in the leaf
    node's own domain, acknowledged there."""

    def __init__(self, nc: NatsClient) -> None:
        super().__init__(nc)

    async def publish(
        self,
        subject: str,
        payload: bytes = b"",
        timeout: float | None = None,
        stream: str | None = None,
        headers: dict[str, Any] | None = None,
        msg_ttl: float | None = None,
    ) -> PubAck:
        return await super().publish(events.edge_subject(subject), payload, timeout, stream, headers, msg_ttl)


def register_edge(server: grpc.aio.Server, runtime: Runtime) -> None:
    metering_service_pb2_grpc.add_MeteringServiceServicer_to_server(_servicer(runtime, EdgeJetStream(runtime.nats)), server)


def edge_workers(runtime: Runtime) -> Sequence[Worker]:
    # test clocks reach this process's cache over the leaf link (core NATS broadcasts),
    # and from the database (its TTL); the durable consumers that keep the tables, the
    # metric projection and the aggregator all run centrally
    return [ClockListener(runtime.nats, _clocks(runtime))]


# The edge ingest process: metering's ingest API beside a NATS leaf node (ACCRUE_NATS_URL
# is the leaf's), answering 202 once the leaf's JetStream has the batch. It opens
# metering's database for its read caches (metrics, test clocks, duplicate receipts; in
# production a read replica near the edge) and never writes it: no migrations, no outbox
# relay, no consumers. Event types it has not heard of are asked of the catalog.
EDGE = ServiceDefinition(
    name="metering-edge",
    grpc_services=[SERVICE_NAME],
    metadata=metadata,
    settings=MeteringSettings,
    register=register_edge,
    database="metering",
    streams={events.EDGE_STREAM: list(events.EDGE_STREAM_SUBJECTS)},
    workers=edge_workers,
    relay_outbox=False,
    talks_to=("catalog",),
    env={"ACCRUE_AGGREGATOR_ENABLED": "false"},
)

if __name__ == "__main__":
    main(DEFINITION)
