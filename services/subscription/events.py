"""The subscription service's event contract: its stream and the subjects it publishes on.

Customers are owned here (DESIGN §7); ``CustomerChanged`` events go out on
``accrue.subscription.v1.customer.<created|updated|deleted>`` (subscription_events.proto).
Consumers (metering's external-subject map) import these names; only this service creates
or changes its stream.
"""

from __future__ import annotations

from accrue.subscription.v1 import subscription_events_pb2 as ev

STREAM = "ACCRUE_SUBSCRIPTION"
SUBJECT_PREFIX = "accrue.subscription.v1"
STREAM_SUBJECTS = (f"{SUBJECT_PREFIX}.>",)

CUSTOMER_SUBJECTS = f"{SUBJECT_PREFIX}.customer.>"

_CUSTOMER_KIND_NAMES = {
    ev.CUSTOMER_CHANGE_KIND_CREATED: "created",
    ev.CUSTOMER_CHANGE_KIND_UPDATED: "updated",
    ev.CUSTOMER_CHANGE_KIND_DELETED: "deleted",
}


def customer_subject(kind: ev.CustomerChangeKind.ValueType) -> str:
    """The subject a CustomerChanged of this kind is published on."""
    return f"{SUBJECT_PREFIX}.customer.{_CUSTOMER_KIND_NAMES[kind]}"
