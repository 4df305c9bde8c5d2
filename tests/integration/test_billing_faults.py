"""Billing under faults: SIGKILL the subscription and invoicing services in the middle of a
test-clock advance, and pay one invoice twice at the same instant.

Each test runs its own small mesh (catalog, metering with its aggregator, subscription,
invoicing; its own NATS, its own databases on the session's PostgreSQL) so that killing
processes and counting rows cannot be disturbed by the shared mesh. Grace is 0 so that a
P1M advance closes and issues invoice 1 of every subscription at boundary 1.

The plan: a fee of 20.00 in advance (P1M) and a metered price of 0.25 per token (SUM of
$.tokens, in arrears), no tax. Customer i sends ``_tokens(i)`` tokens in period 0, so an
undisturbed run bills, per subscription: Invoice 0 = 20.00 (the fee of period 0) and
invoice 1 = 20.00 (the fee of period 1) + 0.25 x _tokens(i) (the usage of period 0).
"""

from __future__ import annotations

import calendar
import re
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any, TypeVar

import grpc
import psycopg
import pytest
from accrue.catalog.v1 import catalog_service_pb2 as catalog
from accrue.catalog.v1 import catalog_service_pb2_grpc
from accrue.invoicing.v1 import invoicing_events_pb2 as invoicing_events
from accrue.invoicing.v1 import invoicing_service_pb2 as invoicing
from accrue.invoicing.v1 import invoicing_service_pb2_grpc
from accrue.metering.v1 import metering_service_pb2 as metering
from accrue.metering.v1 import metering_service_pb2_grpc
from accrue.subscription.v1 import subscription_service_pb2 as subscription
from accrue.subscription.v1 import subscription_service_pb2_grpc
from google.protobuf import struct_pb2
from google.protobuf.timestamp_pb2 import Timestamp
from sqlalchemy.engine import make_url

from libs.core.ids import new_id
from libs.infra.embedded import free_port
from libs.infra.runner import Mesh
from libs.testing.meshes import own_mesh
from libs.testing.tokens import merchant_metadata
from services.invoicing.events import INVOICE_ISSUED, INVOICE_PAID

pytestmark = pytest.mark.integration

SUBSCRIPTIONS = 200
# the kill waits until this many invoices 1 are issued (of SUBSCRIPTIONS)
KILL_AT = SUBSCRIPTIONS // 2
FEE = Decimal("20.00")
UNIT_PRICE = Decimal("0.25")
RPC_TIMEOUT = 60.0
ADVANCE_TIMEOUT = 600.0
T = TypeVar("T")


def _tokens(i: int) -> int:
    """Customer i's usage in period 0 (1 to 7 tokens, sent as two events)."""
    return i % 7 + 1


def _invoice_1_total(i: int) -> Decimal:
    return FEE + UNIT_PRICE * _tokens(i)


def _plus_one_month(t: datetime) -> datetime:
    """P1M by hand: the same day next month, clamped to that month's last day."""
    carry, month = divmod(t.month, 12)
    year = t.year + carry
    return t.replace(year=year, month=month + 1, day=min(t.day, calendar.monthrange(year, month + 1)[1]))


# --- the mesh ------------------------------------------------------------------------


@pytest.fixture
def billing_mesh(infra_mesh: Mesh, tmp_path: Path) -> Iterator[Mesh]:
    mesh = own_mesh(infra_mesh, tmp_path, "bfaults")
    # subscription and invoicing call each other: both ports are fixed before either
    # starts (each learns the other's address whatever the start order), and a restart
    # binds the same port again
    # (payment too: invoicing opens each issued invoice's checkout session there)
    for name in ("subscription", "invoicing", "payment"):
        mesh.grpc_ports[name] = free_port()
        mesh.extra_env[f"ACCRUE_{name.upper()}_ADDR"] = f"127.0.0.1:{mesh.grpc_ports[name]}"
    mesh.extra_env["ACCRUE_SUBSCRIPTION_GRACE_PERIOD_SECONDS"] = "0"
    mesh.extra_env["ACCRUE_AGGREGATOR_ENABLED"] = "false"  # the aggregator runs as its own process
    try:
        for name in ("catalog", "metering", "payment"):
            mesh.start_service(name)
        for name in ("catalog", "metering", "payment"):
            mesh.wait_healthy(name)
        for name in ("invoicing", "subscription"):
            mesh.start_service(name)
        for name in ("invoicing", "subscription"):
            mesh.wait_healthy(name)
        mesh.start_worker("metering-aggregator")
        yield mesh
    finally:
        mesh.stop()


def _restart(mesh: Mesh, *names: str) -> None:
    """Start killed services again as they ran (same environment, same port: the other
    holds its address)."""
    for name in names:
        mesh.respawn(name)
    for name in names:
        mesh.wait_healthy(name, timeout=60)


@dataclass
class Client:
    """gRPC stubs of the mesh's services, acting for one merchant."""

    mesh: Mesh
    merchant_id: str

    def __post_init__(self) -> None:
        self._channels: list[grpc.Channel] = []
        self.connect()

    def connect(self) -> None:
        """(Re)open the channels: after a restart, fresh ones do not wait out a backoff."""
        self.close()
        self.catalog = catalog_service_pb2_grpc.CatalogServiceStub(self._channel("catalog"))
        self.metering = metering_service_pb2_grpc.MeteringServiceStub(self._channel("metering"))
        self.subscription = subscription_service_pb2_grpc.SubscriptionServiceStub(self._channel("subscription"))
        self.invoicing = invoicing_service_pb2_grpc.InvoicingServiceStub(self._channel("invoicing"))

    def _channel(self, name: str) -> grpc.Channel:
        channel = grpc.insecure_channel(f"127.0.0.1:{self.mesh.processes[name].port}")
        self._channels.append(channel)
        return channel

    def close(self) -> None:
        for channel in self._channels:
            channel.close()
        self._channels = []

    @property
    def metadata(self) -> list[tuple[str, str]]:
        return [merchant_metadata(self.merchant_id)]


@pytest.fixture
def client(billing_mesh: Mesh) -> Iterator[Client]:
    made = Client(billing_mesh, new_id("org"))
    yield made
    made.close()


def _pg_url(mesh: Mesh, service: str) -> str:
    return make_url(mesh.database_url(service)).set(drivername="postgresql").render_as_string(hide_password=False)


def _timestamp(when: datetime) -> Timestamp:
    stamp = Timestamp()
    stamp.FromDatetime(when)
    return stamp


def _struct(values: dict[str, Any]) -> struct_pb2.Struct:
    out = struct_pb2.Struct()
    out.update(values)
    return out


def _parallel(work: Callable[[int], T], count: int, threads: int = 6) -> list[T]:
    with ThreadPoolExecutor(max_workers=threads) as pool:
        return list(pool.map(work, range(count)))


# --- the billing setup -----------------------------------------------------------------


@dataclass(frozen=True)
class Setup:
    plan_id: str
    metric_event_type: str
    clock_id: str
    clock_start: datetime
    customer_ids: list[str]
    subscription_ids: list[str]
    invoice_0_ids: list[str]


def _plan(c: Client) -> tuple[str, str]:
    """The plan: a fee of 20.00 in advance, 0.25 per token in arrears, monthly, no tax."""
    md = c.metadata
    event_type = f"billing.faults.{new_id('x')[2:10].lower()}"
    product = c.catalog.CreateProduct(catalog.CreateProductRequest(name="Billing faults", description="d"), metadata=md)
    metric = c.catalog.CreateBillableMetric(
        catalog.CreateBillableMetricRequest(
            product_id=product.id,
            name="Tokens",
            description="d",
            unit="token",
            aggregation="SUM",
            event_type=event_type,
            value_property="$.tokens",
        ),
        metadata=md,
    )
    fee = c.catalog.CreateFee(catalog.CreateFeeRequest(product_id=product.id, name="Platform fee", description="d"), metadata=md)
    fee_price = c.catalog.CreatePrice(
        catalog.CreatePriceRequest(
            invoice_display_name="Platform fee",
            payment_term="in_advance",
            model="standard",
            fee_id=fee.id,
            billing_cadence="P1M",
            quantity=1,
            properties=_struct({"unitPrice": str(FEE)}),
        ),
        metadata=md,
    )
    usage_price = c.catalog.CreatePrice(
        catalog.CreatePriceRequest(
            invoice_display_name="Token usage",
            payment_term="in_arrears",
            model="standard",
            billable_metric_id=metric.id,
            properties=_struct({"unitPrice": str(UNIT_PRICE)}),
        ),
        metadata=md,
    )
    request = catalog.CreatePlanRequest(product_id=product.id, name="Pro", currency="USD", billing_cadence="P1M")
    for price_id in (fee_price.id, usage_price.id):
        request.prices.add(string_value=price_id)
    plan = c.catalog.CreatePlan(request, metadata=md)
    return plan.id, event_type


def _subscribe(c: Client, count: int, *, pay_invoice_0: bool) -> Setup:
    """``count`` customers, each with a subscription to the plan on one test clock started
    10 minutes ago (so the usage of period 0 is in the past in real time too)."""
    plan_id, event_type = _plan(c)
    md = c.metadata
    start = datetime.now(UTC).replace(microsecond=0) - timedelta(minutes=10)
    clock = c.subscription.CreateTestClock(
        subscription.CreateTestClockRequest(current_time=_timestamp(start), name="billing faults"), metadata=md, timeout=RPC_TIMEOUT
    )
    assert clock.current_time.ToDatetime(tzinfo=UTC) == start

    def one(i: int) -> tuple[str, str, str]:
        customer = c.subscription.CreateCustomer(
            subscription.CreateCustomerRequest(
                consumer=subscription.CreateCustomerConsumer(
                    name=f"Customer {i}",
                    email=f"billing+{i}.{c.merchant_id.lower()}@faults.test",
                    address=subscription.Address(line1="1 Market St", city="San Francisco", zip_code="94105", country="US"),
                ),
                external_id=f"faults-{i}",
            ),
            metadata=md,
            timeout=RPC_TIMEOUT,
        )
        created = c.subscription.CreateSubscription(
            subscription.CreateSubscriptionRequest(
                name=f"Customer {i} - Pro",
                plan_id=plan_id,
                customer_id=customer.customer_id,
                started_at=_timestamp(start),
                test_clock_id=clock.id,
            ),
            metadata=md,
            timeout=RPC_TIMEOUT,
        )
        assert created.status == "pending_payment", created
        assert created.payment.status == "pending" and Decimal(created.payment.amount) == FEE, created.payment
        assert created.payment.invoice_id
        return customer.customer_id, created.id, created.payment.invoice_id

    made = _parallel(one, count)
    setup = Setup(
        plan_id=plan_id,
        metric_event_type=event_type,
        clock_id=clock.id,
        clock_start=start,
        customer_ids=[m[0] for m in made],
        subscription_ids=[m[1] for m in made],
        invoice_0_ids=[m[2] for m in made],
    )
    if pay_invoice_0:

        def pay(i: int) -> None:
            paid = c.invoicing.RecordInvoicePayment(
                invoicing.RecordInvoicePaymentRequest(id=setup.invoice_0_ids[i], method="out_of_band", reason="setup"),
                metadata=md,
                timeout=RPC_TIMEOUT,
            )
            assert paid.invoice.status == "PAID", paid

        _parallel(pay, count)
    return setup


def _send_usage(c: Client, setup: Setup) -> None:
    """Two events per customer (1 token, then the rest), inside period 0; then wait until
    metering has stored all of them."""
    request = metering.BatchIngestEventsRequest()
    for i, customer_id in enumerate(setup.customer_ids):
        for n, tokens in enumerate((1, _tokens(i) - 1)):
            event = request.events.add(
                type=setup.metric_event_type,
                source="billing-faults",
                subject=customer_id,
                idempotency_key=f"use-{i}-{n}",
                timestamp=_timestamp(setup.clock_start + timedelta(seconds=60 + n)),
            )
            event.data.update({"tokens": tokens})
    response = c.metering.BatchIngestEvents(request, metadata=c.metadata, timeout=RPC_TIMEOUT)
    assert response.accepted == 2 * len(setup.customer_ids), response
    expected = 2 * len(setup.customer_ids)
    deadline = time.monotonic() + 60
    stored = -1
    with psycopg.connect(_pg_url(c.mesh, "metering"), autocommit=True) as conn:
        while time.monotonic() < deadline:
            row = conn.execute("SELECT count(*) FROM meter_events WHERE merchant_id = %s", (c.merchant_id,)).fetchone()
            assert row is not None
            stored = int(row[0])
            if stored >= expected:
                break
            time.sleep(0.1)
    assert stored == expected, f"metering stored {stored} of {expected} events"


# --- the invoicing database ------------------------------------------------------------
# services/invoicing/store.py: table "invoices" (merchant_id, subscription_id,
# sequence_number, status, invoice_number)


@dataclass(frozen=True)
class InvoiceRow:
    id: str
    subscription_id: str
    sequence_number: int
    status: str
    invoice_number: str | None


def _invoice_rows(mesh: Mesh, merchant_id: str) -> list[InvoiceRow]:
    with psycopg.connect(_pg_url(mesh, "invoicing"), autocommit=True) as conn:
        rows = conn.execute(
            "SELECT id, subscription_id, sequence_number, status, invoice_number FROM invoices WHERE merchant_id = %s",
            (merchant_id,),
        ).fetchall()
    return [InvoiceRow(str(r[0]), str(r[1]), int(r[2]), str(r[3]).upper(), None if r[4] is None else str(r[4])) for r in rows]


def _issued_count(conn: psycopg.Connection[Any], merchant_id: str, sequence_number: int) -> int:
    row = conn.execute(
        "SELECT count(*) FROM invoices WHERE merchant_id = %s AND sequence_number = %s AND upper(status) IN ('ISSUED', 'PAID')",
        (merchant_id, sequence_number),
    ).fetchone()
    assert row is not None
    return int(row[0])


def _outbox_events(mesh: Mesh, merchant_id: str, subject: str) -> Counter[str]:
    """Invoice id -> how many InvoiceChanged on ``subject`` invoicing's outbox holds for it."""
    with psycopg.connect(_pg_url(mesh, "invoicing"), autocommit=True) as conn:
        payloads = conn.execute("SELECT payload FROM outbox WHERE merchant_id = %s AND subject = %s", (merchant_id, subject)).fetchall()
    return Counter(invoicing_events.InvoiceChanged.FromString(bytes(p[0])).invoice.id for p in payloads)


def _number(invoice_number: str) -> int:
    """The counter in an invoice number (INV-000042 -> 42)."""
    found = re.search(r"(\d+)$", invoice_number)
    assert found is not None, f"invoice number {invoice_number!r} ends in no counter"
    return int(found.group(1))


def _assert_gapless(numbers: Sequence[str], expected_count: int) -> None:
    counters = sorted(_number(n) for n in numbers)
    assert len(numbers) == expected_count, f"{len(numbers)} numbered invoices, expected {expected_count}"
    assert len(set(numbers)) == len(numbers), "an invoice number was given twice"
    assert counters == list(range(1, expected_count + 1)), (
        f"invoice numbers are not 1..{expected_count} without gaps: missing "
        f"{sorted(set(range(1, expected_count + 1)) - set(counters))[:20]}, extra {sorted(set(counters) - set(range(1, expected_count + 1)))[:20]}"
    )


def _list_invoices(c: Client) -> list[invoicing.Invoice]:
    out: list[invoicing.Invoice] = []
    while True:
        page = c.invoicing.ListInvoices(invoicing.ListInvoicesRequest(limit=100, offset=len(out)), metadata=c.metadata, timeout=RPC_TIMEOUT)
        out.extend(page.data)
        if len(page.data) < 100:
            return out


# --- the tests -------------------------------------------------------------------------


def test_sigkill_of_subscription_and_invoicing_mid_advance_bills_every_period_once(billing_mesh: Mesh, client: Client) -> None:
    mesh, c = billing_mesh, client
    setup = _subscribe(c, SUBSCRIPTIONS, pay_invoice_0=True)
    _send_usage(c, setup)
    before = _invoice_rows(mesh, c.merchant_id)
    assert sum(1 for r in before if r.sequence_number == 1 and r.status in ("ISSUED", "PAID")) == 0

    # the advance runs in a thread; once some (not all) invoices 1 are issued, both
    # services die by SIGKILL with the rest of the boundary's work in flight
    outcome: dict[str, Any] = {}

    def advance() -> None:
        try:
            outcome["answer"] = c.subscription.AdvanceTestClock(
                subscription.AdvanceTestClockRequest(id=setup.clock_id, advance_by="P1M"), metadata=c.metadata, timeout=ADVANCE_TIMEOUT
            )
        except grpc.RpcError as exc:
            outcome["error"] = exc

    runner = threading.Thread(target=advance, daemon=True)
    runner.start()
    with psycopg.connect(_pg_url(mesh, "invoicing"), autocommit=True) as conn:
        deadline = time.monotonic() + ADVANCE_TIMEOUT
        while runner.is_alive() and time.monotonic() < deadline and _issued_count(conn, c.merchant_id, 1) < KILL_AT:
            time.sleep(0.005)
        mesh.kill("subscription")
        mesh.kill("invoicing")
    runner.join(60)
    assert not runner.is_alive(), "the advance call did not end when its service died"
    time.sleep(0.5)  # the killed connections' transactions are rolled back by now
    with psycopg.connect(_pg_url(mesh, "invoicing"), autocommit=True) as conn:
        issued_at_kill = _issued_count(conn, c.merchant_id, 1)
    assert 0 < issued_at_kill < SUBSCRIPTIONS, (
        f"the kill must land in the middle of the boundary's work: {issued_at_kill} of {SUBSCRIPTIONS} invoices 1 were issued "
        f"(advance outcome: {outcome})"
    )
    assert "error" in outcome, f"the advance answered although only {issued_at_kill} of {SUBSCRIPTIONS} invoices were issued"

    # restart both; a further second of clock time makes the engine resume the due work
    _restart(mesh, "invoicing", "subscription")
    c.connect()
    clock = c.subscription.GetTestClock(subscription.GetTestClockRequest(id=setup.clock_id), metadata=c.metadata, timeout=RPC_TIMEOUT)
    month_later = _plus_one_month(setup.clock_start)
    assert clock.current_time.ToDatetime(tzinfo=UTC) == month_later, "the killed advance had moved the clock before its work ran"
    resumed = c.subscription.AdvanceTestClock(
        subscription.AdvanceTestClockRequest(id=setup.clock_id, advance_by="PT1S"), metadata=c.metadata, timeout=ADVANCE_TIMEOUT
    )
    assert resumed.current_time.ToDatetime(tzinfo=UTC) == month_later + timedelta(seconds=1)

    # the database: one invoice per (subscription, sequence number), the whole grid up to
    # boundary 1 (0 paid, 1 issued, 2 open), numbers 1..400 without a gap
    rows = _invoice_rows(mesh, c.merchant_id)
    keys = [(r.subscription_id, r.sequence_number) for r in rows]
    duplicated = sorted(k for k, n in Counter(keys).items() if n > 1)
    assert not duplicated, f"more than one invoice for {duplicated[:10]}"
    subs = set(setup.subscription_ids)
    assert set(keys) == {(s, k) for s in subs for k in (0, 1, 2)}, (
        f"missing {sorted({(s, k) for s in subs for k in (0, 1, 2)} - set(keys))[:10]}, extra {sorted(set(keys) - {(s, k) for s in subs for k in (0, 1, 2)})[:10]}"
    )
    by_key = {(r.subscription_id, r.sequence_number): r for r in rows}
    statuses = {k: sorted({by_key[(s, k)].status for s in subs}) for k in (0, 1, 2)}
    assert statuses == {0: ["PAID"], 1: ["ISSUED"], 2: ["ACTIVE"]}, statuses
    assert all(by_key[(s, 2)].invoice_number is None for s in subs), "an open invoice has a number"
    _assert_gapless([r.invoice_number for r in rows if r.invoice_number is not None], 2 * SUBSCRIPTIONS)
    # every effect told once: one "issued" per invoice 0 and 1, one "paid" per invoice 0
    issued_events, paid_events = _outbox_events(mesh, c.merchant_id, INVOICE_ISSUED), _outbox_events(mesh, c.merchant_id, INVOICE_PAID)
    told = {r.id: (issued_events.get(r.id, 0), paid_events.get(r.id, 0)) for r in rows}
    expected_told = {r.id: {0: (1, 1), 1: (1, 0), 2: (0, 0)}[r.sequence_number] for r in rows}
    assert told == expected_told, f"events told other than once: {[(i, told[i]) for i in told if told[i] != expected_told[i]][:10]}"
    assert set(issued_events) | set(paid_events) <= set(told), "events of invoices that do not exist"

    # the API: the same invoices, with the totals of an undisturbed run
    listed = _list_invoices(c)
    assert sorted(i.id for i in listed) == sorted(r.id for r in rows)
    api = {(i.subscription_id, i.sequence_number): i for i in listed}
    wrong: list[str] = []
    for n, sub_id in enumerate(setup.subscription_ids):
        zero, one = api[(sub_id, 0)], api[(sub_id, 1)]
        assert zero.id == setup.invoice_0_ids[n]
        if (zero.status, Decimal(zero.grand_total), Decimal(zero.paid_amount)) != ("PAID", FEE, FEE):
            wrong.append(f"{sub_id} #0: {zero.status} total {zero.grand_total} paid {zero.paid_amount}")
        if (one.status, Decimal(one.grand_total), Decimal(one.total_tax)) != ("ISSUED", _invoice_1_total(n), Decimal(0)):
            wrong.append(f"{sub_id} #1: {one.status} total {one.grand_total} tax {one.total_tax}, expected {_invoice_1_total(n)}")
        if one.invoice_number != by_key[(sub_id, 1)].invoice_number:
            wrong.append(f"{sub_id} #1: number {one.invoice_number!r} != stored {by_key[(sub_id, 1)].invoice_number!r}")
    assert not wrong, f"{len(wrong)} wrong invoices, first: {wrong[:10]}"

    # and line by line (a step that ran twice would show as a repeated line)
    def lines(n: int) -> list[tuple[str, Decimal, Decimal]]:
        got = c.invoicing.GetInvoice(
            invoicing.GetInvoiceRequest(id=api[(setup.subscription_ids[n], 1)].id, expand="lineItems"),
            metadata=c.metadata,
            timeout=RPC_TIMEOUT,
        )
        return sorted((li.event_type, Decimal(li.quantity_decimal or "0"), Decimal(li.total_amount)) for li in got.line_items.line_items)

    found = _parallel(lines, SUBSCRIPTIONS)
    expected = [sorted([("fee", Decimal(1), FEE), ("usage", Decimal(_tokens(n)), UNIT_PRICE * _tokens(n))]) for n in range(SUBSCRIPTIONS)]
    mismatched = [(setup.subscription_ids[n], found[n], expected[n]) for n in range(SUBSCRIPTIONS) if found[n] != expected[n]]
    assert not mismatched, f"{len(mismatched)} invoices 1 with other lines, first: {mismatched[:5]}"


PAYMENT_ROUNDS = 10


def test_concurrent_out_of_band_payments_of_one_invoice_record_it_once(billing_mesh: Mesh, client: Client) -> None:
    """Two RecordInvoicePayment calls of one ISSUED invoice at the same instant, for ten
    invoices: one succeeds, the other is FAILED_PRECONDITION (409), the invoice is paid once."""
    c = client
    setup = _subscribe(c, PAYMENT_ROUNDS, pay_invoice_0=False)

    def pay(invoice_id: str, gate: threading.Barrier) -> str:
        gate.wait()
        try:
            c.invoicing.RecordInvoicePayment(
                invoicing.RecordInvoicePaymentRequest(id=invoice_id, method="out_of_band", reason="twice"),
                metadata=c.metadata,
                timeout=RPC_TIMEOUT,
            )
        except grpc.RpcError as exc:
            code = exc.code()
            assert isinstance(code, grpc.StatusCode)
            return str(code.name)
        return "OK"

    outcomes: list[list[str]] = []
    with ThreadPoolExecutor(max_workers=2) as pool:
        for invoice_id in setup.invoice_0_ids:
            before = c.invoicing.GetInvoice(invoicing.GetInvoiceRequest(id=invoice_id), metadata=c.metadata, timeout=RPC_TIMEOUT)
            assert before.status == "ISSUED" and Decimal(before.paid_amount or "0") == 0, before
            gate = threading.Barrier(2)
            futures = [pool.submit(pay, invoice_id, gate) for _ in range(2)]
            outcomes.append(sorted(f.result(timeout=2 * RPC_TIMEOUT) for f in futures))
    assert outcomes == [["FAILED_PRECONDITION", "OK"]] * PAYMENT_ROUNDS, outcomes

    for sub_id, invoice_id in zip(setup.subscription_ids, setup.invoice_0_ids, strict=True):
        paid = c.invoicing.GetInvoice(invoicing.GetInvoiceRequest(id=invoice_id), metadata=c.metadata, timeout=RPC_TIMEOUT)
        assert paid.status == "PAID", paid
        assert Decimal(paid.grand_total) == FEE and Decimal(paid.paid_amount) == FEE and Decimal(paid.unpaid_amount) == 0, paid
        sub = c.subscription.GetSubscription(subscription.GetSubscriptionRequest(id=sub_id), metadata=c.metadata, timeout=RPC_TIMEOUT)
        assert sub.status == "active", sub
    _assert_paid_once(billing_mesh, c.merchant_id, setup.invoice_0_ids)


def _assert_paid_once(mesh: Mesh, merchant_id: str, invoice_ids: Sequence[str]) -> None:
    """Invoicing keeps a payment on the invoice row (services/invoicing/store.py: paid_amount,
    paid_at, payment_reason; no payment table): each is paid in full, and each payment told
    once (one InvoiceChanged paid in the outbox)."""
    with psycopg.connect(_pg_url(mesh, "invoicing"), autocommit=True) as conn:
        rows = conn.execute(
            "SELECT id, status, grand_total, paid_amount, paid_at IS NOT NULL FROM invoices WHERE merchant_id = %s AND id = ANY(%s)",
            (merchant_id, list(invoice_ids)),
        ).fetchall()
    assert sorted((str(r[0]), str(r[1]), int(r[2]) == int(r[3]) > 0, bool(r[4])) for r in rows) == sorted(
        (i, "PAID", True, True) for i in invoice_ids
    ), rows
    paid_events = _outbox_events(mesh, merchant_id, INVOICE_PAID)
    assert {i: paid_events.get(i, 0) for i in invoice_ids} == dict.fromkeys(invoice_ids, 1), "a payment was told other than once"
