"""The subscription service's own settings (prefix ACCRUE_)."""

from __future__ import annotations

from pydantic import Field

from libs.infra.settings import ServiceSettings

DEFAULT_PUBLIC_URL = "http://localhost:8000"


class SubscriptionSettings(ServiceSettings):
    """What every service reads, plus the subscription service's own."""

    # gRPC addresses (host:port) of the services it calls: plans from the catalog,
    # invoices through the billing engine, test-clock time to metering, activations and
    # terminations to the entitlement service (none: not delivered, see entitlements.py),
    # automatic collection (autoCharge and its dunning retries) to the payment service
    catalog_addr: str | None = None
    invoicing_addr: str | None = None
    metering_addr: str | None = None
    entitlement_addr: str | None = None
    payment_addr: str | None = None
    # the public base URL of the gateway (ACCRUE_PUBLIC_URL); Invoice 0's checkout URL is
    # the one invoicing answers (the payment service's session page)
    public_url: str = DEFAULT_PUBLIC_URL
    # how long a closing invoice waits for late usage before it is issued
    # (ACCRUE_SUBSCRIPTION_GRACE_PERIOD_SECONDS; 0 issues at the boundary)
    subscription_grace_period_seconds: int = Field(default=3600, ge=0)
    # how long one automatic charge may take (the payment service waits for its
    # processor, and looks an unknown outcome up by key)
    subscription_charge_timeout_seconds: float = Field(default=60.0, gt=0)
