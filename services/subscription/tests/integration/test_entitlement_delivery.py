"""The subscription service delivers activations and terminations to the entitlement
service after their commit and before the call that caused them answers
(services/subscription/entitlements.py, a libs/infra/db.py commit listener).

The real catalog, invoicing and subscription service (with its billing engine) run in
this process on real PostgreSQL and NATS; the entitlement service is a small fake gRPC
servicer on a free port that records each ApplySubscriptionChange and the merchant of the
token it came with. Every path that activates or terminates is covered: creation with
nothing due, Invoice 0 paid (RecordInvoicePaid, called back by invoicing), a PATCH of the
status, TerminateSubscription, the scheduled end in a test clock's advance and in the
real-time scheduler (outside any request: a minted token); and an entitlement service
that fails changes no answer."""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import grpc
import pytest
from accrue.catalog.v1 import catalog_service_pb2_grpc
from accrue.entitlement.v1 import entitlement_service_pb2 as ent
from accrue.entitlement.v1 import entitlement_service_pb2_grpc
from accrue.invoicing.v1 import invoicing_service_pb2 as inv
from accrue.invoicing.v1 import invoicing_service_pb2_grpc
from accrue.subscription.v1 import subscription_events_pb2 as ev
from accrue.subscription.v1 import subscription_service_pb2 as svc
from accrue.subscription.v1 import subscription_service_pb2_grpc

from libs.infra.db import OutboxMessage
from libs.infra.proto_time import from_timestamp, to_timestamp
from libs.infra.tokens import VERIFY_KEYS_ENV, TokenVerifier
from libs.testing.fixtures import StartHost
from libs.testing.waiting import eventually_async
from services.catalog import app as catalog_app
from services.invoicing import app as invoicing_app
from services.subscription import app as subscription_app
from services.subscription.domain.model import SubscriptionChangeKind
from services.subscription.entitlements import EntitlementDelivery
from services.subscription.events import subscription_subject
from services.subscription.tests.integration.test_invoice_zero import Mesh, _free_port

pytestmark = pytest.mark.integration


@dataclass(frozen=True)
class Delivered:
    kind: str
    subscription_id: str
    status: str
    merchant_id: str  # of the call's token
    effective_time: datetime


@dataclass
class FakeEntitlements(entitlement_service_pb2_grpc.EntitlementServiceServicer):
    """Records every ApplySubscriptionChange; answers ``fail_with`` when set."""

    received: list[Delivered] = field(default_factory=list)
    fail_with: grpc.StatusCode | None = None

    def __post_init__(self) -> None:
        self._verifier = TokenVerifier.from_text(os.environ[VERIFY_KEYS_ENV])

    async def ApplySubscriptionChange(
        self, request: ent.ApplySubscriptionChangeRequest, context: grpc.aio.ServicerContext[object, object]
    ) -> ent.ApplySubscriptionChangeResponse:
        token = dict(context.invocation_metadata() or ()).get("authorization")
        change = request.change
        self.received.append(
            Delivered(
                ev.SubscriptionChangeKind.Name(change.kind),
                change.subscription.id,
                change.subscription.status,
                self._verifier.merchant_of_metadata(str(token) if token else None),
                from_timestamp(change.effective_time),
            )
        )
        if self.fail_with is not None:
            await context.abort(self.fail_with, "the fake is failing")
        return ent.ApplySubscriptionChangeResponse()

    def of(self, subscription_id: str) -> list[tuple[str, str]]:
        return [(d.kind, d.status) for d in self.received if d.subscription_id == subscription_id]


@dataclass
class World:
    mesh: Mesh
    entitlements: FakeEntitlements


async def _paid(mesh: Mesh, sub: svc.Subscription) -> None:
    """Invoice 0 paid: the subscription becomes active."""
    await mesh.invoicing.RecordInvoicePayment(
        inv.RecordInvoicePaymentRequest(id=sub.payment.invoice_id, method="out_of_band"), metadata=mesh.md
    )


ACTIVATED = ("SUBSCRIPTION_CHANGE_KIND_ACTIVATED", "active")
TERMINATED = ("SUBSCRIPTION_CHANGE_KIND_TERMINATED", "terminated")


@dataclass
class FakeServer:
    servicer: FakeEntitlements
    address: str


@pytest.fixture
async def fake_server() -> AsyncIterator[FakeServer]:
    fake = FakeEntitlements()  # type: ignore[abstract]  # only ApplySubscriptionChange is called
    server = grpc.aio.server()
    entitlement_service_pb2_grpc.add_EntitlementServiceServicer_to_server(fake, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    yield FakeServer(fake, f"127.0.0.1:{port}")
    await server.stop(None)


@pytest.fixture
async def world(start_host: StartHost, fake_server: FakeServer) -> AsyncIterator[World]:
    catalog = await start_host(catalog_app.DEFINITION)
    catalog_addr = f"127.0.0.1:{catalog.grpc_port}"
    subscription_port = _free_port()
    invoicing = await start_host(invoicing_app.DEFINITION, catalog_addr=catalog_addr, subscription_addr=f"127.0.0.1:{subscription_port}")
    subscription = await start_host(
        subscription_app.DEFINITION,
        grpc_port=subscription_port,
        catalog_addr=catalog_addr,
        invoicing_addr=f"127.0.0.1:{invoicing.grpc_port}",
        entitlement_addr=fake_server.address,
        subscription_grace_period_seconds=0,
    )
    async with (
        grpc.aio.insecure_channel(catalog_addr) as c,
        grpc.aio.insecure_channel(f"127.0.0.1:{invoicing.grpc_port}") as i,
        grpc.aio.insecure_channel(f"127.0.0.1:{subscription.grpc_port}") as s,
    ):
        mesh = Mesh(
            catalog_service_pb2_grpc.CatalogServiceStub(c),
            invoicing_service_pb2_grpc.InvoicingServiceStub(i),
            subscription_service_pb2_grpc.SubscriptionServiceStub(s),
            f"org_{uuid.uuid4().hex[:12]}",
        )
        yield World(mesh, fake_server.servicer)


async def test_a_creation_with_nothing_due_is_delivered_activated_before_it_answers(world: World) -> None:
    mesh = world.mesh
    sub = await mesh.subscribe(await mesh.plan(fee=None))
    assert sub.status == "active"
    assert world.entitlements.of(sub.id) == [ACTIVATED]
    (delivered,) = world.entitlements.received
    assert delivered.merchant_id == mesh.merchant


async def test_invoice_zero_paid_is_delivered_activated_before_the_payment_answers(world: World) -> None:
    mesh = world.mesh
    sub = await mesh.subscribe(await mesh.plan(fee="49.00"))
    assert sub.status == "pending_payment"
    assert world.entitlements.of(sub.id) == []  # created, not active: nothing to provision
    await _paid(mesh, sub)
    assert world.entitlements.of(sub.id) == [ACTIVATED]
    assert world.entitlements.received[-1].merchant_id == mesh.merchant


async def test_terminate_and_patch_of_the_status_are_delivered_before_they_answer(world: World) -> None:
    mesh = world.mesh
    plan_id = await mesh.plan(fee="10.00", metered=False)

    terminated_now = await mesh.subscribe(plan_id)
    answer = await mesh.subscriptions.TerminateSubscription(
        svc.TerminateSubscriptionRequest(id=terminated_now.id, reason="switching"), metadata=mesh.md
    )
    assert answer.status == "terminated"
    assert world.entitlements.of(terminated_now.id) == [TERMINATED]

    patched = await mesh.subscribe(plan_id)
    activated = await mesh.subscriptions.UpdateSubscription(svc.UpdateSubscriptionRequest(id=patched.id, status="active"), metadata=mesh.md)
    assert activated.status == "active"
    assert world.entitlements.of(patched.id) == [ACTIVATED]
    ended = await mesh.subscriptions.UpdateSubscription(svc.UpdateSubscriptionRequest(id=patched.id, status="terminated"), metadata=mesh.md)
    assert ended.status == "terminated"
    assert world.entitlements.of(patched.id) == [ACTIVATED, TERMINATED]
    assert {d.merchant_id for d in world.entitlements.received} == {mesh.merchant}


async def test_a_scheduled_end_in_an_advance_is_delivered_before_the_advance_answers(world: World) -> None:
    mesh = world.mesh
    start = datetime(2024, 4, 1, tzinfo=UTC)
    clock = await mesh.subscriptions.CreateTestClock(svc.CreateTestClockRequest(current_time=to_timestamp(start)), metadata=mesh.md)
    # a fee only: the final invoice needs no usage
    sub = await mesh.subscribe(await mesh.plan(fee="30.00", metered=False), started_at=start, test_clock_id=clock.id)
    await _paid(mesh, sub)
    assert world.entitlements.of(sub.id) == [ACTIVATED]
    ending_at = datetime(2024, 4, 11, tzinfo=UTC)
    await mesh.subscriptions.UpdateSubscription(
        svc.UpdateSubscriptionRequest(id=sub.id, ending_at=to_timestamp(ending_at)), metadata=mesh.md
    )
    assert world.entitlements.of(sub.id) == [ACTIVATED]  # an update is no activation nor termination

    await mesh.subscriptions.AdvanceTestClock(svc.AdvanceTestClockRequest(id=clock.id, advance_by="P15D"), metadata=mesh.md)
    assert world.entitlements.of(sub.id) == [ACTIVATED, TERMINATED]
    last = world.entitlements.received[-1]
    # in the clock's time: the end instant, not the advance's
    assert (last.merchant_id, last.effective_time) == (mesh.merchant, ending_at)


async def test_a_real_time_end_is_delivered_by_the_scheduler_for_the_merchant(world: World) -> None:
    mesh = world.mesh
    now = datetime.now(UTC)
    sub = await mesh.subscribe(await mesh.plan(fee="30.00", metered=False), started_at=now)
    await _paid(mesh, sub)
    # a few seconds ahead of the update itself (not of the start: a loaded machine takes longer than a second to pay)
    await mesh.subscriptions.UpdateSubscription(
        svc.UpdateSubscriptionRequest(id=sub.id, ending_at=to_timestamp(datetime.now(UTC) + timedelta(seconds=3))), metadata=mesh.md
    )

    async def delivered() -> list[tuple[str, str]]:
        return world.entitlements.of(sub.id)

    # no request is running when the scheduler ends it: the call carries a minted token
    assert await eventually_async(delivered, [ACTIVATED, TERMINATED], timeout=15.0) == [ACTIVATED, TERMINATED]
    assert world.entitlements.received[-1].merchant_id == mesh.merchant


async def test_a_failing_entitlement_service_changes_no_answer(world: World) -> None:
    mesh = world.mesh
    world.entitlements.fail_with = grpc.StatusCode.UNAVAILABLE
    sub = await mesh.subscribe(await mesh.plan(fee=None))
    assert sub.status == "active"
    world.entitlements.fail_with = grpc.StatusCode.INTERNAL
    answer = await mesh.subscriptions.TerminateSubscription(svc.TerminateSubscriptionRequest(id=sub.id, reason="done"), metadata=mesh.md)
    assert answer.status == "terminated"
    # both were attempted (and failed): the stream delivers them later
    assert world.entitlements.of(sub.id) == [ACTIVATED, TERMINATED]


def _changed(kind: ev.SubscriptionChangeKind.ValueType, subscription_id: str, merchant_id: str) -> OutboxMessage:
    active = kind == ev.SUBSCRIPTION_CHANGE_KIND_ACTIVATED
    change = ev.SubscriptionChanged(kind=kind, merchant_id=merchant_id, effective_time=to_timestamp(datetime.now(UTC)))
    change.subscription.CopyFrom(svc.Subscription(id=subscription_id, merchant_id=merchant_id, status="active" if active else "terminated"))
    subject = subscription_subject(SubscriptionChangeKind.ACTIVATED if active else SubscriptionChangeKind.TERMINATED)
    return OutboxMessage(subject, change, merchant_id)


async def test_one_commit_delivers_only_activations_and_terminations_for_their_merchants(fake_server: FakeServer) -> None:
    delivery = EntitlementDelivery(fake_server.address)
    created = ev.SubscriptionChanged(kind=ev.SUBSCRIPTION_CHANGE_KIND_CREATED, merchant_id="org_x")
    await delivery(
        [
            OutboxMessage(subscription_subject(SubscriptionChangeKind.CREATED), created, "org_x"),
            _changed(ev.SUBSCRIPTION_CHANGE_KIND_ACTIVATED, "sub_a", "org_x"),
            _changed(ev.SUBSCRIPTION_CHANGE_KIND_TERMINATED, "sub_b", "org_y"),
        ]
    )
    # outside any request: each call carries a token minted for its event's merchant
    assert sorted((d.subscription_id, d.kind, d.merchant_id) for d in fake_server.servicer.received) == [
        ("sub_a", ACTIVATED[0], "org_x"),
        ("sub_b", TERMINATED[0], "org_y"),
    ]


async def test_an_unreachable_entitlement_service_leaves_the_rest_of_the_commit_to_the_stream(fake_server: FakeServer) -> None:
    fake_server.servicer.fail_with = grpc.StatusCode.UNAVAILABLE
    delivery = EntitlementDelivery(fake_server.address, concurrency=1)
    await delivery([_changed(ev.SUBSCRIPTION_CHANGE_KIND_TERMINATED, f"sub_{n}", "org_x") for n in range(5)])
    assert len(fake_server.servicer.received) == 1  # the first failed UNAVAILABLE: the others were not tried
    # another error is the change's own: the next ones are still delivered
    fake_server.servicer.fail_with = grpc.StatusCode.INTERNAL
    await delivery([_changed(ev.SUBSCRIPTION_CHANGE_KIND_TERMINATED, f"sub_{n}", "org_x") for n in range(3)])
    assert len(fake_server.servicer.received) == 4
