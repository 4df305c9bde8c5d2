"""The catalog's event contract: its JetStream stream, the subjects it publishes on, and
the builders of its events. Consumers (metering, later invoicing and entitlement) import
these names; only the catalog creates or changes its stream.

Every catalog change is one ``CatalogResourceChanged`` on
``accrue.catalog.v1.<resource>.<created|updated|deleted>``.
"""

from __future__ import annotations

from accrue.catalog.v1 import catalog_events_pb2 as ev

STREAM = "ACCRUE_CATALOG"
SUBJECT_PREFIX = "accrue.catalog.v1"
STREAM_SUBJECTS = (f"{SUBJECT_PREFIX}.>",)

# resources, as named in CatalogResourceChanged's oneof and in subjects
PRODUCT = "product"
BILLABLE_METRIC = "billable_metric"
FEATURE = "feature"
FEE = "fee"
PRICE = "price"
PLAN = "plan"
PLAN_VERSION = "plan_version"

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
