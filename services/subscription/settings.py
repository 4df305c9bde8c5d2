"""The subscription service's own settings (prefix ACCRUE_)."""

from __future__ import annotations

import functools

from pydantic import Field

from libs.infra.settings import ServiceSettings

DEFAULT_PUBLIC_URL = "http://localhost:8000"


class SubscriptionSettings(ServiceSettings):
    """What every service reads, plus the subscription service's own."""

    # gRPC addresses (host:port) of the services it calls: plans from the catalog,
    # invoices through the billing engine, test-clock time to metering, activations and
    # terminations to the entitlement service (none: not delivered, see entitlements.py)
    catalog_addr: str | None = None
    invoicing_addr: str | None = None
    metering_addr: str | None = None
    entitlement_addr: str | None = None
    # the public base URL of the gateway: checkout links of Invoice 0 (ACCRUE_PUBLIC_URL)
    public_url: str = DEFAULT_PUBLIC_URL
    # how long a closing invoice waits for late usage before it is issued
    # (ACCRUE_SUBSCRIPTION_GRACE_PERIOD_SECONDS; 0 issues at the boundary)
    subscription_grace_period_seconds: int = Field(default=3600, ge=0)


@functools.cache
def public_url() -> str:
    """ACCRUE_PUBLIC_URL, without a trailing slash (events render links too, outside any request)."""
    return SubscriptionSettings().public_url.rstrip("/") or DEFAULT_PUBLIC_URL
