"""Subscription-service aggregates -> protobuf resources. Pure functions of already-loaded
aggregates (a customer with its consumer, a subscription with its embedded customer)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from accrue.subscription.v1 import subscription_service_pb2 as svc

from libs.infra.proto_struct import dict_to_struct
from libs.infra.proto_time import to_timestamp
from services.subscription.domain.model import Consumer, Customer, Subscription, TestClock

_ADDRESS_FIELDS = ("line1", "line2", "city", "state", "country", "zip_code")


def address(values: Mapping[str, str]) -> svc.Address:
    out = svc.Address()
    for name in _ADDRESS_FIELDS:
        if values.get(name):
            setattr(out, name, values[name])
    return out


def valid_tax_address(values: Mapping[str, str]) -> svc.ValidTaxAddress:
    """Tax calculation needs a country and a postal code (and a state in the US and Canada)."""
    missing = [name for name in ("country", "zip_code") if not values.get(name)]
    if values.get("country", "").upper() in ("US", "CA") and not values.get("state"):
        missing.append("state")
    if not missing:
        return svc.ValidTaxAddress(valid=True)
    spelled = ", ".join("zipCode" if m == "zip_code" else m for m in missing)
    return svc.ValidTaxAddress(valid=False, message=f"the address needs {spelled} for tax calculation; the plan's default rate applies")


def customer(row: Customer, consumer: Consumer | None) -> svc.Customer:
    out = svc.Customer(
        id=row.id,
        object="customer",
        merchant_id=row.merchant_id,
        consumer_id=row.consumer_id,
        tax_rates={k: float(v) for k, v in row.tax_rates.items()},
        notification_settings=svc.NotificationSettings(**row.notification_settings),
        create_time=to_timestamp(row.create_time),
        update_time=to_timestamp(row.update_time),
    )
    if row.external_id is not None:
        out.external_id = row.external_id
    if row.tax_id is not None:
        out.tax_id = row.tax_id
    if consumer is not None:
        out.valid_tax_address.CopyFrom(valid_tax_address(consumer.address))
        organization = svc.CustomerOrganization(id=consumer.id, name=consumer.name, billing_emails=[consumer.email])
        organization.address.CopyFrom(address(consumer.address))
        if consumer.phone:
            organization.phone = consumer.phone
        out.organization.CopyFrom(organization)
    else:
        out.valid_tax_address.CopyFrom(svc.ValidTaxAddress(valid=False, message="no consumer"))
    return out


def test_clock(row: TestClock) -> svc.TestClock:
    out = svc.TestClock(
        id=row.id,
        merchant_id=row.merchant_id,
        current_time=to_timestamp(row.current_time),
        create_time=to_timestamp(row.create_time),
        update_time=to_timestamp(row.update_time),
    )
    if row.name is not None:
        out.name = row.name
    if row.description is not None:
        out.description = row.description
    if row.delete_time is not None:
        out.delete_time.CopyFrom(to_timestamp(row.delete_time))
    return out


test_clock.__test__ = False  # type: ignore[attr-defined]


def payment(row: Subscription) -> svc.SubscriptionPayment | None:
    """Invoice 0, discriminated by status: pending (with the checkout session invoicing
    opened for it at issue, when there is one) or paid."""
    if row.invoice_zero_id is None:
        return None
    amount = row.invoice_zero_amount or "0.00"
    if row.invoice_zero_status == "paid":
        return svc.SubscriptionPayment(status="paid", amount=amount, invoice_id=row.invoice_zero_id)
    out = svc.SubscriptionPayment(
        status="pending",
        amount=amount,
        invoice_id=row.invoice_zero_id,
        breakdown=svc.PaymentBreakdown(upfront_charges=amount, wallet_charge="0.00"),
    )
    if row.invoice_zero_payment_url:
        out.checkout_url = row.invoice_zero_payment_url
    if row.invoice_zero_session_id:
        out.payment_session_id = row.invoice_zero_session_id
    return out


def estimated_tax_rate(row: Subscription) -> float:
    """The rate a line of the plan would get: 0 when exempt, else the customer's default
    override, else the plan's (a display value; invoices compute exactly)."""
    if row.tax_exempt:
        return 0.0
    rates = row.customer_tax_rates
    return float(rates.get(row.plan_id) or rates.get("default") or row.default_tax_rate or 0)


def embedded_customer(row: Customer, consumer: Consumer | None, merchant: Mapping[str, str] | None = None) -> svc.SubscriptionCustomer:
    """include=customer: the merchant side carries what this service knows of the merchant
    (its id; name and email when the caller's context has them)."""
    party = merchant or {}
    out = svc.SubscriptionCustomer(
        id=row.id,
        merchant_id=row.merchant_id,
        merchant=svc.SubscriptionParty(id=row.merchant_id, name=party.get("name", ""), email=party.get("email", "")),
    )
    if consumer is not None:
        out.consumer.CopyFrom(svc.SubscriptionParty(id=consumer.id, name=consumer.name, email=consumer.email))
    return out


def subscription(row: Subscription, embedded: svc.SubscriptionCustomer | None = None) -> svc.Subscription:
    out = svc.Subscription(
        id=row.id,
        object="subscription",
        merchant_id=row.merchant_id,
        customer_id=row.customer_id,
        plan_id=row.plan_id,
        status=row.status,
        name=row.name,
        version_policy=row.version_policy,
        started_at=to_timestamp(row.started_at),
        elapsed_period_billing=row.elapsed_period_billing,
        billing_starts_at=to_timestamp(row.billing_starts_at),
        billing_anchor=to_timestamp(row.billing_anchor),
        billing_cadence=row.billing_cadence,
        payment_term_days=row.payment_term_days,
        auto_charge=row.auto_charge,
        tax_exempt=row.tax_exempt,
        plan_version_id=row.plan_version_id,
        version_number=row.version_number,
        renewal_reminder_enabled=row.renewal_reminder_enabled,
        renewal_reminder_days=row.renewal_reminder_days,
        metadata=dict_to_struct(_plain(row.metadata)),
        estimated_tax_rate=estimated_tax_rate(row),
        create_time=to_timestamp(row.create_time),
        update_time=to_timestamp(row.update_time),
    )
    if row.ending_at is not None:
        out.ending_at.CopyFrom(to_timestamp(row.ending_at))
    if row.terminated_at is not None:
        out.terminated_at.CopyFrom(to_timestamp(row.terminated_at))
    for name in ("terminated_by", "termination_reason", "termination_change_reason", "test_clock_id"):
        value = getattr(row, name)
        if value is not None:
            setattr(out, name, value)
    paid = payment(row)
    if paid is not None:
        out.payment.CopyFrom(paid)
    if embedded is not None:
        out.customer.CopyFrom(embedded)
    return out


def _plain(values: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in values.items() if v is not None}
