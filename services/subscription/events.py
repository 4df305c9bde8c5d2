"""The subscription service's event contract: its stream, the subjects it publishes on and
the builders of its events (subscription_events.proto).

* ``CustomerChanged`` on ``accrue.subscription.v1.customer.<created|updated|deleted>``
  (metering's external-subject map consumes it: services/metering/subjects.py);
* ``SubscriptionChanged`` on ``accrue.subscription.v1.subscription.<created|activated|updated|terminated>``;
* ``TestClockChanged`` on ``accrue.subscription.v1.test_clock.<created|advanced|deleted>``.

The aggregates record domain events (domain/model.py); views.py renders them at commit and
these builders make what the outbox sends. Only this service creates or changes its stream.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from accrue.subscription.v1 import subscription_events_pb2 as ev
from accrue.subscription.v1 import subscription_service_pb2 as svc

from libs.infra.db import OutboxMessage
from libs.infra.proto_time import to_timestamp
from services.subscription.domain.model import CustomerChangeKind, SubscriptionChangeKind, TestClockChangeKind

STREAM = "ACCRUE_SUBSCRIPTION"
SUBJECT_PREFIX = "accrue.subscription.v1"
STREAM_SUBJECTS = (f"{SUBJECT_PREFIX}.>",)

CUSTOMER_SUBJECTS = f"{SUBJECT_PREFIX}.customer.>"
SUBSCRIPTION_SUBJECTS = f"{SUBJECT_PREFIX}.subscription.>"
TEST_CLOCK_SUBJECTS = f"{SUBJECT_PREFIX}.test_clock.>"

_CUSTOMER_KIND_NAMES = {
    ev.CUSTOMER_CHANGE_KIND_CREATED: "created",
    ev.CUSTOMER_CHANGE_KIND_UPDATED: "updated",
    ev.CUSTOMER_CHANGE_KIND_DELETED: "deleted",
}
_CUSTOMER_KINDS = {
    CustomerChangeKind.CREATED: ev.CUSTOMER_CHANGE_KIND_CREATED,
    CustomerChangeKind.UPDATED: ev.CUSTOMER_CHANGE_KIND_UPDATED,
    CustomerChangeKind.DELETED: ev.CUSTOMER_CHANGE_KIND_DELETED,
}
_SUBSCRIPTION_KINDS = {
    SubscriptionChangeKind.CREATED: ev.SUBSCRIPTION_CHANGE_KIND_CREATED,
    SubscriptionChangeKind.ACTIVATED: ev.SUBSCRIPTION_CHANGE_KIND_ACTIVATED,
    SubscriptionChangeKind.UPDATED: ev.SUBSCRIPTION_CHANGE_KIND_UPDATED,
    SubscriptionChangeKind.TERMINATED: ev.SUBSCRIPTION_CHANGE_KIND_TERMINATED,
}


def customer_subject(kind: ev.CustomerChangeKind.ValueType) -> str:
    """The subject a CustomerChanged of this kind is published on."""
    return f"{SUBJECT_PREFIX}.customer.{_CUSTOMER_KIND_NAMES[kind]}"


def subscription_subject(kind: SubscriptionChangeKind) -> str:
    return f"{SUBJECT_PREFIX}.subscription.{kind.value}"


def test_clock_subject(kind: TestClockChangeKind) -> str:
    return f"{SUBJECT_PREFIX}.test_clock.{kind.value}"


test_clock_subject.__test__ = False  # type: ignore[attr-defined]


def customer_changed(
    kind: CustomerChangeKind,
    customer: svc.Customer,
    *,
    sequence: int,
    change_time: datetime,
    external_id_changed: bool,
    previous_external_id: str | None,
) -> OutboxMessage:
    """``previous_external_id`` is set on updates that changed or cleared the external id
    (to the one before, "" when there was none: the field's presence says it changed)."""
    wire = _CUSTOMER_KINDS[kind]
    message = ev.CustomerChanged(kind=wire, merchant_id=customer.merchant_id, sequence=sequence, change_time=to_timestamp(change_time))
    message.customer.CopyFrom(customer)
    if kind is CustomerChangeKind.UPDATED and external_id_changed:
        message.previous_external_id = previous_external_id or ""
    return OutboxMessage(customer_subject(wire), message, customer.merchant_id)


def subscription_changed(kind: SubscriptionChangeKind, subscription: svc.Subscription, effective_time: datetime) -> OutboxMessage:
    message = ev.SubscriptionChanged(kind=_SUBSCRIPTION_KINDS[kind], merchant_id=subscription.merchant_id)
    message.subscription.CopyFrom(subscription)
    message.effective_time.CopyFrom(to_timestamp(effective_time))
    return OutboxMessage(subscription_subject(kind), message, subscription.merchant_id)


def test_clock_changed(kind: TestClockChangeKind, clock: svc.TestClock, customer_ids: Sequence[str]) -> OutboxMessage:
    message = ev.TestClockChanged(merchant_id=clock.merchant_id, customer_ids=list(customer_ids))
    message.test_clock.CopyFrom(clock)
    return OutboxMessage(test_clock_subject(kind), message, clock.merchant_id)


test_clock_changed.__test__ = False  # type: ignore[attr-defined]
