"""The entitlement service's own settings (prefix ACCRUE_)."""

from __future__ import annotations

from pydantic import Field

from libs.infra.settings import ServiceSettings


class EntitlementSettings(ServiceSettings):
    """What every service reads, plus the entitlement service's own."""

    # gRPC addresses (host:port) of the services it calls: plan versions and features
    # from the catalog, customers, subscriptions and test clocks from the subscription
    # service, usage from metering, grant-purchase invoices from invoicing (the runner and
    # the manifests set them from the definition's talks_to)
    catalog_addr: str | None = None
    subscription_addr: str | None = None
    metering_addr: str | None = None
    invoicing_addr: str | None = None
    # how old a cached usage reading may be before it is read again, whether or not
    # metering's UsageStored hint said it changed (ACCRUE_ENTITLEMENT_USAGE_CACHE_SECONDS)
    entitlement_usage_cache_seconds: float = Field(default=5.0, ge=0, le=3600)
