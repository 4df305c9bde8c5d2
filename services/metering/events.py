"""Metering's event contract: the meter stream accepted usage is published on.

Ingestion publishes ``MeterEventBatch`` messages on ``accrue.meter.v1.events.<partition>``
(the partition keeps one subject's events in order); the aggregator is its consumer.
"""

from __future__ import annotations

STREAM = "ACCRUE_METER"
SUBJECT_PREFIX = "accrue.meter.v1.events"
STREAM_SUBJECTS = (f"{SUBJECT_PREFIX}.>",)


def partition_subject(partition: int) -> str:
    return f"{SUBJECT_PREFIX}.{partition}"
