"""Composition root of the metering service: ingestion, the aggregator, the metric projection."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import grpc
from accrue.metering.v1 import metering_service_pb2, metering_service_pb2_grpc

from libs.infra.messaging import EventConsumer
from libs.infra.service import Runtime, ServiceDefinition, Worker, main
from services.metering.aggregator import METER_STREAM, METER_SUBJECTS, Aggregator
from services.metering.metrics import CatalogClient, MetricIndex
from services.metering.server import MeteringServicer
from services.metering.settings import MeteringSettings
from services.metering.store import metadata
from services.metering.subjects import CUSTOMER_DURABLE, CUSTOMER_STREAM, CUSTOMER_STREAM_SUBJECTS, CUSTOMER_SUBJECTS, on_customer_event

SERVICE_NAME = metering_service_pb2.DESCRIPTOR.services_by_name["MeteringService"].full_name
CATALOG_STREAM = "ACCRUE_CATALOG"


def _index(runtime: Runtime) -> MetricIndex:
    if "metrics" not in runtime.extras:
        address = MeteringSettings().catalog_addr
        runtime.extras["metrics"] = MetricIndex(runtime.db, CatalogClient(address) if address else None)
    index: MetricIndex = runtime.extras["metrics"]
    return index


def register(server: grpc.aio.Server, runtime: Runtime) -> None:
    settings = MeteringSettings()
    servicer = MeteringServicer(
        runtime.db,
        runtime.js,
        runtime.clock,
        _index(runtime),
        partitions=settings.meter_partitions,
        max_payload=runtime.nats.max_payload,
        max_event_age_days=settings.metering_max_event_age_days,
    )
    metering_service_pb2_grpc.add_MeteringServiceServicer_to_server(servicer, server)


def workers(runtime: Runtime) -> Sequence[Worker]:
    settings = MeteringSettings()
    out: list[Worker] = [
        EventConsumer(
            runtime.db,
            runtime.js,
            stream=CATALOG_STREAM,
            durable="metering-metrics",
            filter_subject="accrue.catalog.v1.billable_metric.>",
            handler=_index(runtime).on_catalog_event,
        )
    ]
    out.append(
        EventConsumer(
            runtime.db,
            runtime.js,
            stream=CUSTOMER_STREAM,
            durable=CUSTOMER_DURABLE,
            filter_subject=CUSTOMER_SUBJECTS,
            handler=on_customer_event,
        )
    )
    if settings.aggregator_enabled:
        out.append(Aggregator(runtime.db, runtime.js, batch_size=settings.aggregator_batch_size))
    return out


DEFINITION = ServiceDefinition(
    name="metering",
    grpc_services=[SERVICE_NAME],
    metadata=metadata,
    migrations_dir=Path(__file__).parent / "migrations",
    register=register,
    # the meter stream is metering's; the catalog's and subscription's streams are ensured
    # so that a metering started before them can still subscribe
    streams={METER_STREAM: [METER_SUBJECTS], CATALOG_STREAM: ["accrue.catalog.v1.>"], CUSTOMER_STREAM: [CUSTOMER_STREAM_SUBJECTS]},
    workers=workers,
)

if __name__ == "__main__":
    main(DEFINITION)
