"""Invoicing's own settings (prefix ACCRUE_)."""

from __future__ import annotations

from pydantic import Field

from libs.infra.settings import ServiceSettings


class InvoicingSettings(ServiceSettings):
    """What every service reads, plus invoicing's own."""

    # the gRPC addresses (host:port) of the services it calls: the catalog (the pinned
    # plan version's prices, metric names), metering (usage and its completeness
    # watermark) and the subscription service (Invoice 0 paid -> active); the runner and
    # the manifests set them from the definition's talks_to
    catalog_addr: str | None = None
    metering_addr: str | None = None
    subscription_addr: str | None = None
    # the entitlement service: included quantities of metered prices with a metered
    # feature (GetCoverages) and paid grant purchases (RecordPurchasePaid); unset, usage
    # is billed as it is
    entitlement_addr: str | None = None
    # the payment service: the checkout session of every invoice issued with something
    # owed (OpenSessions), hosted_link, retryPayment (ChargeInvoice) and refunds
    # (RefundInvoice); unset, invoices are issued without a checkout (paymentUrl) and
    # collecting them answers UNAVAILABLE
    payment_addr: str | None = None
    # metering's backdating window, the same variable metering reads
    # (ACCRUE_METERING_MAX_EVENT_AGE_DAYS): how far back late usage can land, so which
    # issued periods an invoice reads again for correction lines
    metering_max_event_age_days: int = Field(default=35, ge=1, le=3660)
    # how long IssueInvoice waits for metering's usage to be complete up to the moment of
    # calculation before it fails the step with UNAVAILABLE (the engine retries it)
    invoicing_usage_wait_seconds: float = Field(default=3.0, ge=0, le=60)
