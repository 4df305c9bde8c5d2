"""Metering checks each event of a batch itself (one receipt each); the bounds it checks
are the ones IngestEventRequest declares for the document and the single-event call."""

from __future__ import annotations

from accrue.metering.v1 import metering_service_pb2 as svc

from libs.infra.declared import rules_of
from services.metering import server
from services.metering.domain import meter_events


def test_event_bounds_agree_with_the_proto() -> None:
    fields = svc.IngestEventRequest.DESCRIPTOR.fields_by_name
    for name in ("type", "source", "subject", "external_subject"):
        declared = rules_of(fields[name])
        assert declared is not None and declared.max_length == meter_events.MAX_TEXT_LENGTH, name
    key = rules_of(fields["idempotency_key"])
    assert key is not None and key.max_length == meter_events.MAX_KEY_LENGTH
    external = rules_of(fields["external_id"])
    assert external is not None and external.pattern == meter_events._EXTERNAL_ID.pattern
    batch = rules_of(svc.BatchIngestEventsRequest.DESCRIPTOR.fields_by_name["events"])
    assert batch is not None and batch.max_items == server.MAX_BATCH and batch.items_checked_by_handler
