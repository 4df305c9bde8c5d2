"""The payment service's own settings (prefix ACCRUE_)."""

from __future__ import annotations

from pydantic import Field

from libs.infra.settings import ServiceSettings

DEFAULT_PUBLIC_URL = "http://localhost:8000"


class PaymentServiceSettings(ServiceSettings):
    """What every service reads, plus the payment service's own."""

    # the gRPC addresses (host:port) of the services it calls: customers from the
    # subscription service, invoices (GetInvoice, RecordChargeOutcome) from invoicing; the
    # runner and the manifests set them from the definition's talks_to
    subscription_addr: str | None = None
    invoicing_addr: str | None = None
    # the public base URL of the gateway (ACCRUE_PUBLIC_URL, as invoicing's and the
    # subscription service's): hosted pages {public_url}/checkout/{merchant}/{session} and
    # the processor's webhook URL {public_url}/webhooks/processors/{processor}/{merchant}
    public_url: str = DEFAULT_PUBLIC_URL
    # which adapter (services/payment/processors) charges cards (ACCRUE_PAYMENT_PROCESSOR);
    # an adapter reads its own settings (the sandbox's: ACCRUE_SANDBOX_*)
    payment_processor: str = "sandbox"
    # the janitor (janitor.py): how often it runs (ACCRUE_PAYMENT_JANITOR_SECONDS), how old
    # an attempt left sending/processing must be before it asks the processor by key, and
    # how long an attempt the processor never received stays sending before it is failed
    # `not_sent` (well past the adapter's timeout: the sender is surely gone)
    payment_janitor_seconds: float = Field(default=2.0, gt=0, le=3600)
    payment_reconcile_after_seconds: float = Field(default=3.0, ge=0, le=3600)
    payment_not_sent_after_seconds: float = Field(default=60.0, ge=0, le=86400)
    # how long a second submit of one page render waits for the first one's outcome
    payment_checkout_wait_seconds: float = Field(default=8.0, ge=0, le=120)
    # fault injection for the SIGKILL test (ACCRUE_PAYMENT_FAULT=kill_after_charge_sent):
    # the process kills itself right after the processor answered a charge, before the
    # outcome is recorded
    payment_fault: str | None = None

    @property
    def base_url(self) -> str:
        """ACCRUE_PUBLIC_URL without a trailing slash."""
        return self.public_url.rstrip("/") or DEFAULT_PUBLIC_URL
