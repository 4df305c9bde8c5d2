"""The registry: every gRPC service of Accrue and every worker process, in start order,
and the stand-ins for systems outside Accrue that the mesh runs first (the sandbox card
processor).

The runner (``make run``), the gateway (its backends and their ACCRUE_<NAME>_ADDR
settings), the tests and the checks on deploy/k8s all read this list. Adding a service
is its folder (app.py with its ``DEFINITION``, server.py, domain/, store.py, events.py,
migrations/, tests/) and one line here (what it needs to be deployed, such as the
services it calls, is part of its definition); then its Kubernetes manifest (deploy/k8s/base,
tests/integration/test_registry.py says what it must hold).
"""

from __future__ import annotations

from libs.infra.runner import External
from libs.infra.service import ServiceDefinition
from services.catalog import app as catalog
from services.entitlement import app as entitlement
from services.invoicing import app as invoicing
from services.metering import app as metering
from services.payment import app as payment
from services.sandbox import app as sandbox
from services.subscription import app as subscription

# the gRPC services, which the gateway routes to (backend name = definition name)
SERVICES: tuple[ServiceDefinition, ...] = (
    catalog.DEFINITION,
    subscription.DEFINITION,
    metering.DEFINITION,
    invoicing.DEFINITION,
    payment.DEFINITION,
    entitlement.DEFINITION,
)
# processes that serve no API, started once the services are healthy
WORKERS: tuple[ServiceDefinition, ...] = (metering.AGGREGATOR,)
# outside systems' stand-ins, started before the services (HTTP processes of their own,
# with their own databases; what they share with every process: External)
EXTERNALS: tuple[External, ...] = (sandbox.EXTERNAL,)


def definition(name: str) -> ServiceDefinition:
    for found in (*(external.definition for external in EXTERNALS), *SERVICES, *WORKERS):
        if found.name == name:
            return found
    raise KeyError(name)
