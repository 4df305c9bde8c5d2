"""The entitlement service's event contract: its stream, the subjects it publishes on and
the builders of its events (protos/accrue/entitlement/v1/entitlement_events.proto).

* ``EntitlementChanged`` on ``accrue.entitlement.v1.entitlement.<issued|canceled>``;
* ``GrantChanged`` on ``accrue.entitlement.v1.grant.<created|voided>``.

The aggregates record domain events (domain/model.py); views.py renders them at commit and
these builders make what the outbox sends. It consumes the subscription service's
``SubscriptionChanged`` (activated / terminated), invoicing's ``invoice.paid`` and
metering's core-NATS ``UsageStored`` hint (consumers.py); their names are the producers'.
"""

from __future__ import annotations

from accrue.entitlement.v1 import entitlement_events_pb2 as ev
from accrue.entitlement.v1 import entitlement_service_pb2 as svc

from libs.infra.db import OutboxMessage
from services.entitlement.domain.model import EntitlementChangeKind, GrantChangeKind

STREAM = "ACCRUE_ENTITLEMENT"
SUBJECT_PREFIX = "accrue.entitlement.v1"
STREAM_SUBJECTS = (f"{SUBJECT_PREFIX}.>",)

ENTITLEMENT_SUBJECTS = f"{SUBJECT_PREFIX}.entitlement.>"
GRANT_SUBJECTS = f"{SUBJECT_PREFIX}.grant.>"

_ENTITLEMENT_KINDS = {
    EntitlementChangeKind.ISSUED: ev.ENTITLEMENT_CHANGE_KIND_ISSUED,
    EntitlementChangeKind.CANCELED: ev.ENTITLEMENT_CHANGE_KIND_CANCELED,
}
_GRANT_KINDS = {
    GrantChangeKind.CREATED: ev.GRANT_CHANGE_KIND_CREATED,
    GrantChangeKind.VOIDED: ev.GRANT_CHANGE_KIND_VOIDED,
}


def entitlement_subject(kind: EntitlementChangeKind) -> str:
    return f"{SUBJECT_PREFIX}.entitlement.{kind.value}"


def grant_subject(kind: GrantChangeKind) -> str:
    return f"{SUBJECT_PREFIX}.grant.{kind.value}"


def entitlement_changed(kind: EntitlementChangeKind, merchant_id: str, entitlement: svc.Entitlement) -> OutboxMessage:
    message = ev.EntitlementChanged(kind=_ENTITLEMENT_KINDS[kind], merchant_id=merchant_id)
    message.entitlement.CopyFrom(entitlement)
    return OutboxMessage(entitlement_subject(kind), message, merchant_id)


def grant_changed(kind: GrantChangeKind, merchant_id: str, grant: svc.Grant) -> OutboxMessage:
    message = ev.GrantChanged(kind=_GRANT_KINDS[kind], merchant_id=merchant_id)
    message.grant.CopyFrom(grant)
    return OutboxMessage(grant_subject(kind), message, merchant_id)
