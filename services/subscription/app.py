"""Composition root of the subscription service.

Not built yet: it starts, migrates its own database, reports healthy and exposes
accrue.subscription.v1.SubscriptionService, whose RPCs answer UNIMPLEMENTED (the generated base servicer).
"""

from __future__ import annotations

from pathlib import Path

import grpc
from accrue.subscription.v1 import subscription_service_pb2, subscription_service_pb2_grpc

from libs.infra.service import Runtime, ServiceDefinition, main, unimplemented_servicer
from services.subscription.store import metadata

SERVICE_NAME = subscription_service_pb2.DESCRIPTOR.services_by_name["SubscriptionService"].full_name


def register(server: grpc.aio.Server, runtime: Runtime) -> None:
    subscription_service_pb2_grpc.add_SubscriptionServiceServicer_to_server(
        unimplemented_servicer(subscription_service_pb2_grpc.SubscriptionServiceServicer), server
    )


DEFINITION = ServiceDefinition(
    name="subscription",
    grpc_services=[SERVICE_NAME],
    metadata=metadata,
    migrations_dir=Path(__file__).parent / "migrations",
    register=register,
)

if __name__ == "__main__":
    main(DEFINITION)
