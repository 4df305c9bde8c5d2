"""The catalog's event contract: its JetStream stream, the subjects it publishes on, and
the builders of its events. Consumers (metering, later invoicing and entitlement) import
these names; only the catalog creates or changes its stream.

Every catalog change is one ``CatalogResourceChanged`` on
``accrue.catalog.v1.<resource>.<created|updated|deleted>``. The aggregates record a
``ResourceChanged`` (domain/model.py); ``resource_changed`` builds what the outbox sends.
"""

from __future__ import annotations

from accrue.catalog.v1 import catalog_events_pb2 as ev
from google.protobuf.message import Message

from libs.infra.db import OutboxMessage
from services.catalog.domain.model import ChangeKind, Resource, ResourceChanged

STREAM = "ACCRUE_CATALOG"
SUBJECT_PREFIX = "accrue.catalog.v1"
STREAM_SUBJECTS = (f"{SUBJECT_PREFIX}.>",)

# resources, as named in CatalogResourceChanged's oneof and in subjects
PRODUCT = Resource.PRODUCT.value
BILLABLE_METRIC = Resource.BILLABLE_METRIC.value
FEATURE = Resource.FEATURE.value
FEE = Resource.FEE.value
PRICE = Resource.PRICE.value
PLAN = Resource.PLAN.value
PLAN_VERSION = Resource.PLAN_VERSION.value

KIND_NAMES: dict[int, str] = {
    ev.CHANGE_KIND_CREATED: "created",
    ev.CHANGE_KIND_UPDATED: "updated",
    ev.CHANGE_KIND_DELETED: "deleted",
}


def subject(resource: str, kind: int) -> str:
    """``accrue.catalog.v1.<resource>.<kind>``."""
    return f"{SUBJECT_PREFIX}.{resource}.{KIND_NAMES[kind]}"


def subjects_of(resource: str) -> str:
    """The filter subject for every change of one resource (``accrue.catalog.v1.<resource>.>``)."""
    return f"{SUBJECT_PREFIX}.{resource}.>"


_KINDS: dict[ChangeKind, int] = {
    ChangeKind.CREATED: ev.CHANGE_KIND_CREATED,
    ChangeKind.UPDATED: ev.CHANGE_KIND_UPDATED,
    ChangeKind.DELETED: ev.CHANGE_KIND_DELETED,
}


def resource_changed(event: ResourceChanged, resource: Message) -> OutboxMessage:
    """The outbox message of a recorded change, given the resource rendered as a proto."""
    kind = _KINDS[event.kind]
    message = ev.CatalogResourceChanged(kind=kind, merchant_id=event.merchant_id)  # type: ignore[arg-type]
    getattr(message, event.resource.value).CopyFrom(resource)
    return OutboxMessage(subject(event.resource.value, kind), message, event.merchant_id)
