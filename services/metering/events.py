"""Metering's event contract: the meter stream accepted usage is published on.

Ingestion publishes ``MeterEventBatch`` messages on ``accrue.meter.v1.events.<partition>``
(the partition keeps one subject's events in order); the aggregator is its consumer.

After each commit the aggregator publishes a ``UsageStored`` hint on core NATS (not
JetStream: lossy by design, nothing is stored or redelivered) at ``USAGE_STORED_SUBJECT``:
whose usage just changed, for caches of usage readings (the entitlement service's).

Edge ingestion (README "Edge ingestion"): an edge metering process publishes the same
batches on ``accrue.meter.v1.edge.events.<partition>`` into ``EDGE_STREAM`` of its leaf
node's JetStream domain, and the central meter stream *sources* every edge's stream
(``edge_source``), mapping the subjects back to ``accrue.meter.v1.events.<partition>``, so
the aggregator sees one stream. The edge subjects differ on purpose: a leaf node and its
hub share subject interest, so a leaf stream on the central subjects would also capture
central publishes (and the hub stream the edge's), storing events twice.
"""

from __future__ import annotations

from nats.js.api import ExternalStream, StreamSource, SubjectTransform

STREAM = "ACCRUE_METER"
SUBJECT_PREFIX = "accrue.meter.v1.events"
STREAM_SUBJECTS = (f"{SUBJECT_PREFIX}.>",)
# core NATS, metering_resources.proto UsageStored
USAGE_STORED_SUBJECT = "accrue.metering.v1.usage_stored"


def partition_subject(partition: int) -> str:
    return f"{SUBJECT_PREFIX}.{partition}"


# edge ingestion: the stream of an edge's leaf-node JetStream domain, sourced centrally
EDGE_STREAM = "ACCRUE_METER_EDGE"
EDGE_SUBJECT_PREFIX = "accrue.meter.v1.edge.events"
EDGE_STREAM_SUBJECTS = (f"{EDGE_SUBJECT_PREFIX}.>",)


def edge_subject(subject: str) -> str:
    """The edge's subject for a central meter subject (accrue.meter.v1.events.3 -> ...edge.events.3)."""
    if not subject.startswith(f"{SUBJECT_PREFIX}."):
        raise ValueError(f"{subject!r} is not a meter stream subject")
    return f"{EDGE_SUBJECT_PREFIX}{subject[len(SUBJECT_PREFIX) :]}"


def edge_api(domain: str) -> str:
    """The JetStream API prefix of an edge's domain, as the hub reaches it over the leaf link."""
    return f"$JS.{domain}.API"


def edge_source(domain: str) -> StreamSource:
    """The central meter stream's source for one edge domain: its EDGE_STREAM, subjects
    mapped back onto the central ones. JetStream keeps the position of each source and
    resumes after a link outage."""
    return StreamSource(
        name=EDGE_STREAM,
        external=ExternalStream(api=edge_api(domain)),
        subject_transforms=[SubjectTransform(src=f"{EDGE_SUBJECT_PREFIX}.>", dest=f"{SUBJECT_PREFIX}.>")],
    )
