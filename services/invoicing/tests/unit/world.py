"""A small billing world for the invoicing use cases: one plan (a 49.00 monthly fee in
advance and a metered price of 0.01 per unit in arrears), a monthly grid from
2026-01-01, and the engine's step commands for invoice k."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from libs.core.clock import FakeClock
from libs.core.pricing import StandardPrice
from services.invoicing.domain import use_cases
from services.invoicing.domain.calculation import Charge, Composition, Window
from services.invoicing.domain.commands import CloseInvoice, IssueInvoice, OpenInvoice
from services.invoicing.domain.model import Invoice, Layout, Terms
from services.invoicing.domain.use_cases import Policy, Sources
from services.invoicing.tests.fakes import FakeCatalog, FakeMeter, FakePayments, FakeStore, FakeSubscriptions, FakeUnitOfWork

MERCHANT = "org_a"
OTHER_MERCHANT = "org_b"
METRIC = "bm_tokens"
GRACE = timedelta(hours=1)
MONTHS = [datetime(2026, m, 1, tzinfo=UTC) for m in range(1, 13)]

FEE = Charge(
    price_id="price_fee",
    key="base",
    kind="fee",
    source_id="fee_base",
    display_name="Base fee",
    payment_term="in_advance",
    price=StandardPrice(49_000_000_000),
    cadence=None,
    quantity=1,
)
METERED = Charge(
    price_id="price_tokens",
    key="tokens",
    kind="metered",
    source_id=METRIC,
    display_name="Tokens",
    payment_term="in_arrears",
    price=StandardPrice(10_000_000),
    cadence=None,
    quantity=1,
    metric_name="Tokens",
    metric_unit="token",
)


def period(k: int) -> Window:
    return Window(MONTHS[k], MONTHS[k + 1], MONTHS[k], MONTHS[k + 1], k)


def terms(subscription_id: str = "sub_1", customer_id: str = "cus_1", **overrides: object) -> Terms:
    values: dict[str, object] = {
        "subscription_id": subscription_id,
        "customer_id": customer_id,
        "plan_id": "plan_1",
        "plan_version_id": "pv_1",
        "plan_version_number": 1,
        "currency": "USD",
        "billing_anchor": MONTHS[0],
        "billing_cadence": "P1M",
    }
    values.update(overrides)
    return Terms(**values)  # type: ignore[arg-type]


def layout(k: int) -> Layout:
    """Invoice k of the grid: Invoice 0 the advance of period 0 (and one-time fees), invoice k
    the arrears of period k-1 and the advance of period k."""
    if k == 0:
        return Layout(Composition(arrears=[], advance=[period(0)], credits=[], one_time_fees=True))
    return Layout(Composition(arrears=[period(k - 1)], advance=[period(k)], credits=[], one_time_fees=False))


@dataclass
class World:
    store: FakeStore = field(default_factory=FakeStore)
    catalog: FakeCatalog = field(default_factory=lambda: FakeCatalog([FEE, METERED]))
    meter: FakeMeter = field(default_factory=FakeMeter)
    subscriptions: FakeSubscriptions = field(default_factory=FakeSubscriptions)
    payments: FakePayments = field(default_factory=FakePayments)
    clock: FakeClock = field(default_factory=lambda: FakeClock(datetime(2026, 6, 1, tzinfo=UTC)))
    slept: list[float] = field(default_factory=list)

    def uow(self) -> FakeUnitOfWork:
        return FakeUnitOfWork(self.store)

    @property
    def sources(self) -> Sources:
        return Sources(self.catalog, self.meter, self.subscriptions, payments=self.payments)

    @property
    def policy(self) -> Policy:
        async def sleep(seconds: float) -> None:
            self.slept.append(seconds)

        return Policy(usage_wait_seconds=1.0, sleep=sleep)

    async def open(self, k: int, t: Terms | None = None, merchant: str = MERCHANT, lay: Layout | None = None) -> Invoice:
        at = MONTHS[0] if k == 0 else MONTHS[k - 1]
        async with self.uow() as uow:
            return await use_cases.open_invoice(uow, merchant, self.clock.now(), OpenInvoice(t or terms(), k, lay or layout(k), at))

    async def close(self, k: int, t: Terms | None = None, merchant: str = MERCHANT, lay: Layout | None = None) -> Invoice:
        command = CloseInvoice(t or terms(), k, MONTHS[k] + GRACE, lay, MONTHS[k])
        async with self.uow() as uow:
            return await use_cases.close_invoice(uow, merchant, self.clock.now(), command)

    async def issue(self, k: int, t: Terms | None = None, merchant: str = MERCHANT) -> Invoice:
        at = MONTHS[0] if k == 0 else MONTHS[k] + GRACE
        command = IssueInvoice(t or terms(), k, at)
        return await use_cases.issue_invoice(self.uow, self.sources, self.policy, self.clock, merchant, command)

    async def run(self, k: int, t: Terms | None = None, merchant: str = MERCHANT) -> Invoice:
        """Invoice k through every step, as the engine drives it."""
        await self.open(k, t, merchant)
        if k > 0:
            await self.close(k, t, merchant)
        return await self.issue(k, t, merchant)
