"""Aggregates and evaluations -> protos. The RPCs answer through these, and the unit of work
renders a recorded event through them too (the entitlement as stored: no balance).

One Entitlement message serves list items and details: both ``id`` and
``entitlementId``, ``object`` "entitlement". A field that does not apply to the
entitlement's type is left unset, which the gateway renders as null (``config`` of a
boolean or metered one, every metered field of the others). Units are exact in the
``*_decimal`` fields; the doubles are Paygentic's numbers.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from decimal import Decimal, InvalidOperation
from typing import Any

from accrue.entitlement.v1 import entitlement_service_pb2 as svc

from libs.core.domain import DomainEvent
from libs.infra.db import OutboxMessage
from libs.infra.proto_struct import dict_to_struct
from libs.infra.proto_time import to_timestamp
from services.entitlement import events, store
from services.entitlement.domain.model import Entitlement, EntitlementChanged, Grant, GrantChanged, text
from services.entitlement.domain.use_cases import CoverageResult, Evaluated


def _number(value: Any) -> float | None:
    try:
        return float(Decimal(str(value)))
    except (InvalidOperation, ValueError):
        return None


def _time(value: Any) -> datetime | None:
    if isinstance(value, datetime):
        return value
    if isinstance(value, str) and value:
        try:
            return datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            return None
    return None


def template(stored: Mapping[str, Any]) -> svc.EntitlementTemplate:
    """The normalized template (templates.Template.to_json()) as the API shows it."""
    out = svc.EntitlementTemplate()
    if isinstance(stored.get("type"), str):
        out.type = stored["type"]
    config = stored.get("config")
    if isinstance(config, dict):
        out.config.CopyFrom(dict_to_struct(config))
    period = stored.get("usagePeriod")
    if isinstance(period, dict) and isinstance(period.get("interval"), str):
        out.usage_period.interval = period["interval"]
        anchor = _time(period.get("anchor"))
        if anchor is not None:
            out.usage_period.anchor.CopyFrom(to_timestamp(anchor))
    for key, name in (("isSoftLimit", "is_soft_limit"), ("preserveOverageAtReset", "preserve_overage_at_reset")):
        if isinstance(stored.get(key), bool):
            setattr(out, name, stored[key])
    for key, name in (
        ("issueAfterReset", "issue_after_reset"),
        ("resetMaxRollover", "reset_max_rollover"),
        ("resetMinRollover", "reset_min_rollover"),
    ):
        number = _number(stored[key]) if key in stored and stored[key] is not None else None
        if number is not None:
            setattr(out, name, number)
    if isinstance(stored.get("issueAfterResetPriority"), int):
        out.issue_after_reset_priority = stored["issueAfterResetPriority"]
    if isinstance(stored.get("billableMetricId"), str):
        out.billable_metric_id = stored["billableMetricId"]
    return out


def _base(found: Entitlement) -> svc.Entitlement:
    out = svc.Entitlement(
        id=found.id,
        entitlement_id=found.id,
        object="entitlement",
        customer_id=found.customer_id,
        feature_id=found.feature_id,
        feature_key=found.feature_key,
        product_id=found.product_id,
        feature_type=found.feature_type,
        metadata=dict(found.metadata),
        active_from=to_timestamp(found.active_from),
        create_time=to_timestamp(found.create_time),
        update_time=to_timestamp(found.update_time),
    )
    out.template.CopyFrom(template(found.template))
    if found.subscription_id is not None:
        out.subscription_id = found.subscription_id
    if found.active_to is not None:
        out.active_to.CopyFrom(to_timestamp(found.active_to))
    if found.canceled_at is not None:
        out.canceled_at.CopyFrom(to_timestamp(found.canceled_at))
    if found.test_clock_id is not None:
        out.test_clock_id = found.test_clock_id
    config = found.config
    if config is not None:
        out.config.CopyFrom(dict_to_struct(config))
    if found.metered:
        out.is_soft_limit = found.is_soft_limit
        if found.billable_metric_id is not None:
            out.billable_metric_id = found.billable_metric_id
    return out


def stored_entitlement(found: Entitlement) -> svc.Entitlement:
    """As stored (events): active or canceled, no balance."""
    out = _base(found)
    out.status = "canceled" if found.canceled_at is not None else "active"
    out.has_access = found.canceled_at is None
    return out


def entitlement(found: Evaluated) -> svc.Entitlement:
    out = _base(found.entitlement)
    out.status = found.status
    out.has_access = found.has_access
    out.evaluated_at.CopyFrom(to_timestamp(found.at))
    evaluation = found.evaluation
    if evaluation is not None:
        out.balance, out.balance_decimal = float(evaluation.balance), text(evaluation.balance)
        out.usage_in_period, out.usage_in_period_decimal = float(evaluation.usage_in_period), text(evaluation.usage_in_period)
        out.overage, out.overage_decimal = float(evaluation.overage), text(evaluation.overage)
        if evaluation.period_start is not None:
            out.current_period_start.CopyFrom(to_timestamp(evaluation.period_start))
        if evaluation.period_end is not None:
            out.current_period_end.CopyFrom(to_timestamp(evaluation.period_end))
    if found.usage_counted_until is not None:
        out.usage_counted_until.CopyFrom(to_timestamp(found.usage_counted_until))
    if found.cached_since is not None:
        out.stale.computed_at.CopyFrom(to_timestamp(found.cached_since))
    return out


def grant(found: Grant) -> svc.Grant:
    out = svc.Grant(
        id=found.id,
        object="grant",
        entitlement_id=found.entitlement_id,
        amount=float(found.amount),
        amount_decimal=text(found.amount),
        effective_at=to_timestamp(found.effective_at),
        created_at=to_timestamp(found.created_at),
        reset_max_rollover=float(found.reset_max_rollover),
        reset_min_rollover=float(found.reset_min_rollover),
        priority=found.priority,
        source=found.source,
    )
    if found.recurrence_period is not None:
        out.recurrence_period = found.recurrence_period
    if found.idempotency_key is not None:
        out.idempotency_key = found.idempotency_key
    if found.expires_at is not None:
        out.expires_at.CopyFrom(to_timestamp(found.expires_at))
    if found.voided_at is not None:
        out.voided_at.CopyFrom(to_timestamp(found.voided_at))
    if found.invoice_id is not None:
        out.invoice_id = found.invoice_id
    return out


def coverage(found: CoverageResult) -> svc.Coverage:
    if not found.found:
        return svc.Coverage(found=False)
    return svc.Coverage(
        found=True,
        entitlement_id=found.entitlement_id,
        is_soft_limit=found.is_soft_limit,
        usage_decimal=text(found.usage),
        covered_decimal=text(found.covered),
        billable_decimal=text(found.billable),
        grants=[svc.GrantCoverage(grant_id=grant_id, covered_decimal=text(units)) for grant_id, units in found.grants],
    )


async def outbox_message(uow: store.SqlEntitlementUnitOfWork, event: DomainEvent) -> OutboxMessage:
    """The unit of work's translator: a recorded change rendered as it is at commit."""
    if isinstance(event, EntitlementChanged):
        found = await store.read_entitlement(uow.conn, event.entitlement_id)
        assert found is not None, f"entitlement {event.entitlement_id} recorded a change and is gone"
        return events.entitlement_changed(event.kind, event.merchant_id, stored_entitlement(found))
    if isinstance(event, GrantChanged):
        granted = await store.read_grant(uow.conn, event.grant_id)
        assert granted is not None, f"grant {event.grant_id} recorded a change and is gone"
        return events.grant_changed(event.kind, event.merchant_id, grant(granted))
    raise TypeError(f"the entitlement service records no {type(event).__name__}")
