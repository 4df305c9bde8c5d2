"""Composition root of the metering service: ingestion, the aggregator, the metric projection."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import grpc
from accrue.metering.v1 import metering_service_pb2, metering_service_pb2_grpc

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


def register(server: grpc.aio.Server, runtime: Runtime) -> None:
    settings = runtime.settings_as(MeteringSettings)
    servicer = MeteringServicer(
        runtime.db,
        runtime.js,
        runtime.clock,
        _index(runtime),
        partitions=settings.meter_partitions,
        max_payload=runtime.nats.max_payload,
        max_event_age_days=settings.metering_max_event_age_days,
        clocks=_clocks(runtime),
        nats=runtime.nats,
    )
    metering_service_pb2_grpc.add_MeteringServiceServicer_to_server(servicer, server)


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

if __name__ == "__main__":
    main(DEFINITION)
