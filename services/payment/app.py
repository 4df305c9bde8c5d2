"""The payment service's definition: payment methods, sessions, payments, refunds and attempts.

Not built yet: it starts, migrates its own database, creates its stream, reports healthy
and serves accrue.payment.v1.PaymentService, whose RPCs answer UNIMPLEMENTED (server.py).
"""

from __future__ import annotations

from pathlib import Path

from accrue.payment.v1 import payment_service_pb2, payment_service_pb2_grpc

from libs.infra.service import ServiceDefinition, main, servicer
from services.payment import events, store
from services.payment.server import PaymentServicer

DEFINITION = ServiceDefinition(
    name="payment",
    grpc_services=[payment_service_pb2.DESCRIPTOR.services_by_name["PaymentService"].full_name],
    register=servicer(payment_service_pb2_grpc.add_PaymentServiceServicer_to_server, PaymentServicer.of),
    metadata=store.metadata,
    migrations_dir=Path(__file__).parent / "migrations",
    streams={events.STREAM: list(events.STREAM_SUBJECTS)},
)

if __name__ == "__main__":
    main(DEFINITION)
