"""Composition root of the payment service.

Not built yet: it starts, migrates its own database, reports healthy and exposes
accrue.payment.v1.PaymentService, whose RPCs answer UNIMPLEMENTED (the generated base servicer).
"""

from __future__ import annotations

from pathlib import Path

import grpc
from accrue.payment.v1 import payment_service_pb2, payment_service_pb2_grpc

from libs.infra.service import Runtime, ServiceDefinition, main, unimplemented_servicer
from services.payment.store import metadata

SERVICE_NAME = payment_service_pb2.DESCRIPTOR.services_by_name["PaymentService"].full_name


def register(server: grpc.aio.Server, runtime: Runtime) -> None:
    payment_service_pb2_grpc.add_PaymentServiceServicer_to_server(
        unimplemented_servicer(payment_service_pb2_grpc.PaymentServiceServicer), server
    )


DEFINITION = ServiceDefinition(
    name="payment",
    grpc_services=[SERVICE_NAME],
    metadata=metadata,
    migrations_dir=Path(__file__).parent / "migrations",
    register=register,
)

if __name__ == "__main__":
    main(DEFINITION)
