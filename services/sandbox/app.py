"""The sandbox card processor's definition: a stand-in for a real processor (Stripe, Adyen,
Airwallex), run as its own process with its own database, the way a real one is a system
of its own: the HTTP API of http.py on uvicorn, and a worker that delivers its webhooks
and completes slow charges (delivery.py). It serves no gRPC and uses no NATS.

``EXTERNAL`` is how the mesh runs it (libs/infra/runner.py): before the services, with
keys made fresh per mesh and handed to every process (the payment service's adapter,
services/payment/processors/sandbox.py, reads the same ACCRUE_SANDBOX_* variables).
"""

from __future__ import annotations

import base64
import secrets
from collections.abc import Mapping, Sequence
from pathlib import Path

import uvicorn

from libs.infra.metrics import HttpMetrics
from libs.infra.runner import External
from libs.infra.service import Runtime, ServiceDefinition, Worker, main
from services.sandbox import store
from services.sandbox.delivery import Deliveries
from services.sandbox.http import SandboxApp
from services.sandbox.processor import Sandbox
from services.sandbox.settings import SandboxSettings


def _sandbox(runtime: Runtime) -> Sandbox:
    """The one Sandbox of the process, shared by the HTTP app and the worker."""
    found = runtime.extras.get("sandbox")
    if not isinstance(found, Sandbox):
        found = runtime.extras["sandbox"] = Sandbox(runtime.db.engine, runtime.settings_as(SandboxSettings), runtime.clock)
    return found


def _http(runtime: Runtime) -> uvicorn.Config:
    return uvicorn.Config(
        HttpMetrics(SandboxApp(_sandbox(runtime))),
        log_config=None,
        access_log=False,  # never a request line: nothing about a card reaches a log
        lifespan="on",
        # a slow charge's request is cut off after this on a stop; the worker completes
        # the charge when the process is back
        timeout_graceful_shutdown=2,
        loop="none",
        proxy_headers=False,
        server_header=False,
        date_header=False,
    )


def _workers(runtime: Runtime) -> Sequence[Worker]:
    return [Deliveries(_sandbox(runtime))]


DEFINITION = ServiceDefinition(
    name="sandbox",
    settings=SandboxSettings,
    metadata=store.metadata,
    migrations_dir=Path(__file__).parent / "migrations",
    http=_http,
    workers=_workers,
    messaging=False,
)


def shared_env(environ: Mapping[str, str]) -> dict[str, str]:
    """The sandbox's keys for one mesh: the environment's where it sets them, else new."""
    made = {
        "ACCRUE_SANDBOX_SECRET_KEY": f"sk_test_{secrets.token_urlsafe(24)}",
        "ACCRUE_SANDBOX_PUBLISHABLE_KEY": f"pk_test_{secrets.token_urlsafe(18)}",
        "ACCRUE_SANDBOX_WEBHOOK_SECRET": f"whsec_{base64.b64encode(secrets.token_bytes(24)).decode()}",
    }
    return {name: environ.get(name) or value for name, value in made.items()}


def url_env(url: str, environ: Mapping[str, str]) -> dict[str, str]:
    """Where the payment service calls it, and where browsers do (the same on one machine,
    unless ACCRUE_SANDBOX_PUBLIC_URL says otherwise)."""
    return {"ACCRUE_SANDBOX_URL": url, "ACCRUE_SANDBOX_PUBLIC_URL": environ.get("ACCRUE_SANDBOX_PUBLIC_URL") or url}


EXTERNAL = External(definition=DEFINITION, shared_env=shared_env, url_env=url_env)

if __name__ == "__main__":
    main(DEFINITION)
