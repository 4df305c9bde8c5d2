"""The subscription service's definition: customers, subscriptions, billing schedules and test clocks.

Not built yet: it starts, migrates its own database, creates its stream, reports healthy
and serves accrue.subscription.v1.SubscriptionService, whose RPCs answer UNIMPLEMENTED (server.py).
"""

from __future__ import annotations

from pathlib import Path

from accrue.subscription.v1 import subscription_service_pb2, subscription_service_pb2_grpc

from libs.infra.service import ServiceDefinition, main, servicer
from services.subscription import events, store
from services.subscription.server import SubscriptionServicer

DEFINITION = ServiceDefinition(
    name="subscription",
    grpc_services=[subscription_service_pb2.DESCRIPTOR.services_by_name["SubscriptionService"].full_name],
    register=servicer(subscription_service_pb2_grpc.add_SubscriptionServiceServicer_to_server, SubscriptionServicer.of),
    metadata=store.metadata,
    migrations_dir=Path(__file__).parent / "migrations",
    streams={events.STREAM: list(events.STREAM_SUBJECTS)},
)

if __name__ == "__main__":
    main(DEFINITION)
