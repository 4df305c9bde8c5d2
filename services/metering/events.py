"""Metering's event contract: the meter stream accepted usage is published on.

Ingestion publishes ``MeterEventBatch`` messages on ``accrue.meter.v1.events.<partition>``
(the partition keeps one subject's events in order); the aggregator is its consumer.

After each commit the aggregator publishes a ``UsageStored`` hint on core NATS (not
JetStream: lossy by design, nothing is stored or redelivered) at ``USAGE_STORED_SUBJECT``:
whose usage just changed, for caches of usage readings (the entitlement service's).
"""

from __future__ import annotations

STREAM = "ACCRUE_METER"
SUBJECT_PREFIX = "accrue.meter.v1.events"
STREAM_SUBJECTS = (f"{SUBJECT_PREFIX}.>",)
# core NATS, metering_resources.proto UsageStored
USAGE_STORED_SUBJECT = "accrue.metering.v1.usage_stored"


def partition_subject(partition: int) -> str:
    return f"{SUBJECT_PREFIX}.{partition}"
