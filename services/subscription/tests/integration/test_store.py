"""The subscription service in-process against real PostgreSQL and NATS (its own database,
migrated by its Alembic history), called over gRPC with merchant tokens: what only the
database can prove — concurrent creates find one consumer and one external-id holder, and
the CustomerChanged events in the outbox carry the producer contract metering relies on
(strictly increasing sequences, previous_external_id on updates, the external id of a
deleted customer), plus idempotent replays and TestClockChanged."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import grpc
import pytest
import sqlalchemy as sa
from accrue.subscription.v1 import subscription_events_pb2 as ev
from accrue.subscription.v1 import subscription_service_pb2 as svc
from accrue.subscription.v1 import subscription_service_pb2_grpc

from libs.core.clock import FakeClock
from libs.infra.service import Host
from libs.testing.fixtures import StartHost
from libs.testing.tokens import merchant_metadata
from services.subscription import app, store

pytestmark = pytest.mark.integration


@dataclass
class Service:
    host: Host
    stub: subscription_service_pb2_grpc.SubscriptionServiceStub
    merchant: str

    def metadata(self, merchant: str | None = None, key: str | None = None) -> tuple[tuple[str, str], ...]:
        pairs = [merchant_metadata(merchant or self.merchant)]
        if key is not None:
            pairs.append(("idempotency-key", key))
        return tuple(pairs)

    async def outbox(self, event_type: type[Any]) -> list[Any]:
        assert self.host.runtime is not None
        o = store.metadata.tables["outbox"]
        async with self.host.runtime.db.engine.connect() as conn:
            rows = await conn.execute(
                sa.select(o.c.subject, o.c.payload).where(o.c.event_type == event_type.DESCRIPTOR.full_name).order_by(o.c.seq)
            )
            return [(row.subject, event_type.FromString(row.payload)) for row in rows]


@pytest.fixture
async def service(start_host: StartHost) -> AsyncIterator[Service]:
    host = await start_host(app.DEFINITION, clock=FakeClock(), outbox_relay_enabled=False)
    async with grpc.aio.insecure_channel(f"127.0.0.1:{host.grpc_port}") as channel:
        yield Service(host, subscription_service_pb2_grpc.SubscriptionServiceStub(channel), f"org_{uuid.uuid4().hex[:12]}")


def _consumer(email: str) -> svc.CreateCustomerConsumer:
    return svc.CreateCustomerConsumer(name="Ada", email=email, address=svc.Address(country="DE", zip_code="10115"))


async def test_concurrent_creates_for_one_email_make_one_customer(service: Service) -> None:
    emails = [f"ada{'@EXAMPLE.com' if i % 2 else '@example.com'}" for i in range(8)]
    answers = await asyncio.gather(
        *(service.stub.CreateCustomer(svc.CreateCustomerRequest(consumer=_consumer(e)), metadata=service.metadata()) for e in emails)
    )
    assert len({a.customer_id for a in answers}) == 1
    assert sorted(a.created for a in answers) == [False] * 7 + [True]
    assert len(await service.outbox(ev.CustomerChanged)) == 1


async def test_concurrent_claims_of_one_external_id_leave_one_holder(service: Service) -> None:
    async def create(i: int) -> str:
        request = svc.CreateCustomerRequest(consumer=_consumer(f"c{i}@example.com"), external_id="acct-1")
        try:
            return str((await service.stub.CreateCustomer(request, metadata=service.metadata())).customer_id)
        except grpc.aio.AioRpcError as err:
            assert err.code() == grpc.StatusCode.ALREADY_EXISTS, err
            return ""

    created = [c for c in await asyncio.gather(*(create(i) for i in range(6))) if c]
    assert len(created) == 1
    listed = await service.stub.ListCustomers(svc.ListCustomersRequest(external_id="acct-1"), metadata=service.metadata())
    assert [c.id for c in listed.data] == created


async def test_customer_changes_carry_the_producer_contract(service: Service) -> None:
    md = service.metadata()
    first = (
        await service.stub.CreateCustomer(svc.CreateCustomerRequest(consumer=_consumer("a@x.dev"), external_id="k1"), metadata=md)
    ).customer_id
    second = (await service.stub.CreateCustomer(svc.CreateCustomerRequest(consumer=_consumer("b@x.dev")), metadata=md)).customer_id
    # first frees k1, second takes it, first is deleted with the key it then has
    await service.stub.UpdateCustomer(svc.UpdateCustomerRequest(id=first, external_id="k2"), metadata=md)
    await service.stub.UpdateCustomer(svc.UpdateCustomerRequest(id=second, external_id="k1"), metadata=md)
    await service.stub.UpdateCustomer(svc.UpdateCustomerRequest(id=second, tax_id="DE1"), metadata=md)
    await service.stub.DeleteCustomer(svc.DeleteCustomerRequest(id=first), metadata=md)

    changes = await service.outbox(ev.CustomerChanged)
    seen = [
        (
            subject.rsplit(".", 1)[1],
            c.customer.id,
            c.customer.external_id if c.customer.HasField("external_id") else None,
            c.previous_external_id if c.HasField("previous_external_id") else None,
        )
        for subject, c in changes
    ]
    assert seen == [
        ("created", first, "k1", None),
        ("created", second, None, None),
        ("updated", first, "k2", "k1"),
        ("updated", second, "k1", ""),  # it had none: the field's presence says the key changed
        ("updated", second, "k1", None),  # the key did not change
        ("deleted", first, "k2", None),
    ]
    sequences = [c.sequence for _, c in changes]
    assert sequences == sorted(sequences) and len(set(sequences)) == len(sequences) and sequences[0] > 0
    assert all(c.merchant_id == service.merchant and c.customer.merchant_id == service.merchant for _, c in changes)


async def test_a_replayed_create_answers_the_first_result_and_changes_nothing(service: Service) -> None:
    request = svc.CreateCustomerRequest(consumer=_consumer("replay@example.com"), tax_rates={"default": 13})
    first = await service.stub.CreateCustomer(request, metadata=service.metadata(key="k-1"))
    again = await service.stub.CreateCustomer(request, metadata=service.metadata(key="k-1"))
    assert again == first and first.created
    assert len(await service.outbox(ev.CustomerChanged)) == 1


async def test_an_existing_customer_answers_with_the_rest_status_200_in_trailing_metadata(service: Service) -> None:
    request = svc.CreateCustomerRequest(consumer=_consumer("twice@example.com"))
    call = service.stub.CreateCustomer(request, metadata=service.metadata())
    await call
    assert ("accrue-http-status", "200") not in tuple(await call.trailing_metadata() or ())
    call = service.stub.CreateCustomer(request, metadata=service.metadata())
    assert not (await call).created
    assert ("accrue-http-status", "200") in tuple(await call.trailing_metadata() or ())


async def test_clock_changes_are_announced_and_tenancy_holds_over_grpc(service: Service) -> None:
    md = service.metadata()
    clock = await service.stub.CreateTestClock(svc.CreateTestClockRequest(name="c"), metadata=md)
    await service.stub.AdvanceTestClock(svc.AdvanceTestClockRequest(id=clock.id, advance_by="P1D"), metadata=md)
    await service.stub.DeleteTestClock(svc.DeleteTestClockRequest(id=clock.id), metadata=md)
    kinds = [subject.rsplit(".", 1)[1] for subject, _ in await service.outbox(ev.TestClockChanged)]
    assert kinds == ["created", "advanced", "deleted"]
    other = service.metadata(merchant=f"org_{uuid.uuid4().hex[:12]}")
    live = await service.stub.CreateTestClock(svc.CreateTestClockRequest(), metadata=md)
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await service.stub.GetTestClock(svc.GetTestClockRequest(id=live.id), metadata=other)
    assert err.value.code() == grpc.StatusCode.NOT_FOUND


async def test_concurrent_creates_for_one_consumer_id_make_one_customer(service: Service) -> None:
    md = service.metadata()
    first = await service.stub.CreateCustomer(svc.CreateCustomerRequest(consumer=_consumer("same@example.com")), metadata=md)
    customer = await service.stub.GetCustomer(svc.GetCustomerRequest(id=first.customer_id), metadata=md)
    await service.stub.DeleteCustomer(svc.DeleteCustomerRequest(id=first.customer_id), metadata=md)
    # the consumer stays; a new customer for it may be made once
    answers = await asyncio.gather(
        *(service.stub.CreateCustomer(svc.CreateCustomerRequest(consumer_id=customer.consumer_id), metadata=md) for _ in range(6))
    )
    assert len({a.customer_id for a in answers}) == 1 and sum(a.created for a in answers) == 1
    assert answers[0].customer_id != first.customer_id
