"""CreateSubscription when Invoice 0's step fails after the subscription committed: the
subscription service in-process on real PostgreSQL with a billing engine stand-in whose
run fails with an unexpected error. The created subscription is answered (pending_payment,
its due work left to the scheduler), never a 500 that would tell the caller nothing was
written (a retry without an Idempotency-Key would then create a second one)."""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import grpc
import pytest
from accrue.subscription.v1 import subscription_service_pb2 as svc
from accrue.subscription.v1 import subscription_service_pb2_grpc

from libs.infra import grpc_client
from libs.infra.proto_time import to_timestamp
from libs.infra.service import Runtime
from libs.testing.fixtures import StartHost
from libs.testing.tokens import merchant_metadata
from services.subscription import app
from services.subscription.server import SubscriptionServicer
from services.subscription.tests.fakes import PLAN, FakeCatalog, FakeTimeline

pytestmark = pytest.mark.integration

MERCHANT = "org_after_commit"


class FailingTimeline(FakeTimeline):
    """Schedules as the engine does; running Invoice 0 fails with a non-domain error (as
    an out-of-range value once did while building the invoicing request)."""

    async def run_subscription(self, merchant_id: str, subscription_id: str, until: datetime) -> list[Any]:
        self.calls.append(("run_subscription", subscription_id, until))
        raise ValueError("Value out of range: 1000000000000000")


@pytest.fixture
async def stub(start_host: StartHost) -> AsyncIterator[subscription_service_pb2_grpc.SubscriptionServiceStub]:
    def register(server: grpc.aio.Server, runtime: Runtime) -> None:
        servicer = SubscriptionServicer(runtime.db, runtime.clock, catalog=FakeCatalog(), timeline=FailingTimeline())
        subscription_service_pb2_grpc.add_SubscriptionServiceServicer_to_server(servicer, server)

    definition = dataclasses.replace(app.DEFINITION, register=register, workers=lambda runtime: [], talks_to=())
    host = await start_host(definition, outbox_relay_enabled=False)
    async with grpc_client.channel(f"127.0.0.1:{host.grpc_port}") as channel:
        yield subscription_service_pb2_grpc.SubscriptionServiceStub(channel)


async def test_a_failure_after_the_commit_answers_the_created_subscription(
    stub: subscription_service_pb2_grpc.SubscriptionServiceStub,
) -> None:
    md = [merchant_metadata(MERCHANT)]
    customer = await stub.CreateCustomer(
        svc.CreateCustomerRequest(
            consumer=svc.CreateCustomerConsumer(name="Ada", email="ada@example.com", address=svc.Address(country="DE", zip_code="10115"))
        ),
        metadata=md,
    )
    request = svc.CreateSubscriptionRequest(
        name="Pro", plan_id=PLAN.plan_id, customer_id=customer.customer_id, started_at=to_timestamp(datetime.now(UTC))
    )
    created = await stub.CreateSubscription(request, metadata=md)
    assert created.status == "pending_payment" and created.id.startswith("sub_")
    listed = await stub.ListSubscriptions(svc.ListSubscriptionsRequest(customer_id=customer.customer_id), metadata=md)
    assert [s.id for s in listed.data] == [created.id]  # written once, and answered
