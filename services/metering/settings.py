"""Metering's own settings (prefix ACCRUE_)."""

from __future__ import annotations

from pydantic import Field

from libs.infra.settings import ServiceSettings
from services.metering.domain.meter_events import DEFAULT_MAX_AGE_DAYS


class MeteringSettings(ServiceSettings):
    """What every service reads, plus metering's own."""

    # subject partitions of the meter stream (accrue.meter.v1.events.<n>)
    meter_partitions: int = 8
    # run the aggregator inside this process (off when aggregators run as their own processes)
    aggregator_enabled: bool = True
    # stream messages per fetch (each packs up to 1,000 events)
    aggregator_batch_size: int = 16
    # the catalog's gRPC address (host:port): event types metering has not heard of yet
    # are asked of it, so a metric is usable the moment it is created. Unset: only the
    # catalog's events teach metering its metrics.
    catalog_addr: str | None = None
    # the backdating window: events whose timestamp is older than this many days are
    # refused (400 TIMESTAMP_TOO_OLD); ACCRUE_METERING_MAX_EVENT_AGE_DAYS
    metering_max_event_age_days: int = Field(default=DEFAULT_MAX_AGE_DAYS, ge=1, le=3660)
    # edge ingestion (README "Edge ingestion"): the JetStream domains of the edge leaf nodes
    # whose ACCRUE_METER_EDGE streams the central meter stream sources, comma-separated
    # (ACCRUE_METER_EDGE_DOMAINS=edge,eu-edge). Unset: the stream's sources are left alone.
    meter_edge_domains: str = ""

    @property
    def edge_domains(self) -> tuple[str, ...]:
        return tuple(domain.strip() for domain in self.meter_edge_domains.split(",") if domain.strip())
