"""The sandbox processor's settings (prefix ACCRUE_).

Its keys: the secret key authenticates server calls (``Authorization: Bearer``), the
publishable key the browser's tokenize calls, the webhook secret signs its webhooks (the
Standard Webhooks format: ``whsec_`` + base64). ``make run`` makes a fresh set per mesh
(services/sandbox/app.py, ``EXTERNAL``) and hands the same values to the payment
service; by hand, both sides default to the dev values below.
"""

from __future__ import annotations

from pydantic import Field

from libs.infra.settings import ServiceSettings

# the dev defaults, the same as the payment service's adapter's
# (services/payment/processors/sandbox.py; a unit test checks that they agree)
DEV_SECRET_KEY = "sk_test_accrue_sandbox_dev"
DEV_PUBLISHABLE_KEY = "pk_test_accrue_sandbox_dev"
DEV_WEBHOOK_SECRET = "whsec_YWNjcnVlLXNhbmRib3gtZGV2LXdlYmhvb2stc2VjcmV0"  # base64("accrue-sandbox-dev-webhook-secret")
DEFAULT_HTTP_PORT = 8100


class SandboxSettings(ServiceSettings):
    database_url: str = "postgresql+psycopg://postgres@127.0.0.1:5432/accrue_sandbox"
    db_pool_size: int = 5
    # not the gateway's 8000: both run on one machine under `make run`
    http_port: int = DEFAULT_HTTP_PORT
    sandbox_secret_key: str = Field(default=DEV_SECRET_KEY, min_length=8)
    sandbox_publishable_key: str = Field(default=DEV_PUBLISHABLE_KEY, min_length=8)
    sandbox_webhook_secret: str = Field(default=DEV_WEBHOOK_SECRET, min_length=8)
    # how long a charge on the slow card (4000 0000 0000 6975) stays `processing` before
    # it answers and succeeds: longer than the adapter's 5 s timeout
    sandbox_slow_seconds: float = Field(default=10.0, ge=0, le=600)
    # webhook deliveries: a random delay in [min, max] ms, the share delivered twice, the
    # share of `charge.processing` events delivered again after the final one, attempts
    sandbox_webhook_min_delay_ms: int = Field(default=10, ge=0)
    sandbox_webhook_max_delay_ms: int = Field(default=300, ge=0)
    sandbox_webhook_duplicate_rate: float = Field(default=0.25, ge=0, le=1)
    sandbox_webhook_reorder_rate: float = Field(default=0.5, ge=0, le=1)
    sandbox_webhook_max_attempts: int = Field(default=6, ge=1, le=50)
    sandbox_webhook_first_retry_seconds: float = Field(default=0.5, ge=0)
    sandbox_webhook_timeout_seconds: float = Field(default=5.0, gt=0)
