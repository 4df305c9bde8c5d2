"""Included quantities and ad-hoc invoices on fakes.

A metered price carrying a metered feature (``Charge.entitled``) bills the entitlement
service's billable quantity where the subscription has a metered entitlement on the
metric (soft: usage - covered; hard: nothing beyond the grants) and reads the coverage's
usage (one source); its provenance records the coverage. Not found, not entitled, or no
entitlement service: the usage as before, to the byte. Issued invoices, live estimates,
final invoices, corrections and batches all go through it. Ad-hoc invoices (grant
purchases) are idempotent by (merchant, purpose, reference), numbered with the timeline's
invoices, payable out of band, and paying one tells the entitlement service.
"""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
from paygentic_sdk import models

from libs.core.errors import InvalidArgument, Unavailable
from services.gateway.restjson import message_to_json
from services.invoicing import mapping, provenance
from services.invoicing.domain import batches, calculation, use_cases
from services.invoicing.domain.calculation import (
    CalculationInputError,
    Carry,
    Composition,
    Coverage,
    GrantCovered,
    TaxSettings,
    Usage,
    Window,
)
from services.invoicing.domain.commands import AdHocItem, IssueAdHocInvoice, IssueInvoice, RecordPayment
from services.invoicing.domain.model import ChangeKind, Invoice, InvoiceChanged, Layout, Status
from services.invoicing.domain.use_cases import Sources
from services.invoicing.tests.fakes import FakeEntitlements
from services.invoicing.tests.unit.world import FEE, GRACE, METERED, METRIC, MONTHS, World, period, terms

USD = 1_000_000_000
CENT = 10_000_000
ENTITLED = dataclasses.replace(METERED, entitled=True)
NO_TAX = TaxSettings(behavior="exclusive", default_rate=Decimal(0), customer_rates={}, exempt=False, plan_id="plan_1")
SOFT = Coverage(
    entitlement_id="ent_1",
    is_soft_limit=True,
    usage=Decimal(1500),
    covered=Decimal(1000),
    billable=Decimal(500),
    grants=(GrantCovered("grant_a", Decimal(600)), GrantCovered("grant_b", Decimal(400))),
)
HARD = dataclasses.replace(SOFT, is_soft_limit=False, billable=Decimal(0))


class EntitledWorld(World):
    def __init__(self, *, configured: bool = True) -> None:
        super().__init__()
        self.catalog.default = [FEE, ENTITLED]
        self.entitlements = FakeEntitlements()
        self.configured = configured

    @property
    def sources(self) -> Sources:
        return Sources(self.catalog, self.meter, self.subscriptions, self.entitlements if self.configured else None, self.payments)


def _usage_line(found: Invoice, world: World) -> calculation.Line:
    (line,) = [stored.line for stored in world.store.lines[found.id] if stored.line.event_type == "usage"]
    return line


def _events(world: World) -> list[tuple[ChangeKind, str]]:
    return [(e.kind, e.invoice_id) for e in world.store.outbox if isinstance(e, InvoiceChanged)]


# --- the pure calculation ------------------------------------------------------------------


def _calculate(charge: calculation.Charge, usage: Usage) -> calculation.Line:
    result = calculation.calculate_invoice(
        currency="USD",
        charges=[charge],
        composition=Composition(arrears=[usage.window], advance=[], credits=[], one_time_fees=False),
        usage=[usage],
        billed_before=[],
        late_usage=[],
        tax=NO_TAX,
        carry=Carry(Decimal(0), 0),
    )
    (line,) = result.lines
    return line


def test_a_soft_limit_bills_usage_minus_covered_and_the_provenance_says_which_grants_covered_what() -> None:
    query = {"meter": "entitlement.GetCoverages", "value": "1500"}
    line = _calculate(ENTITLED, Usage(ENTITLED.price_id, period(0), Decimal(1500), query, coverage=SOFT))
    assert line.quantity == Decimal(500)
    assert line.amount == 500 * CENT  # 500 x 0.01
    assert line.provenance["coverage"] == {
        "entitlementId": "ent_1",
        "usage": "1500",
        "covered": "1000",
        "billable": "500",
        "isSoftLimit": True,
        "grants": [{"grantId": "grant_a", "covered": "600"}, {"grantId": "grant_b", "covered": "400"}],
    }
    allow = line.provenance["steps"][0]
    assert (allow["op"], allow["on"], allow["in"], allow["out"]) == ("allow", "quantity", {"quantity": "1500"}, {"quantity": "500"})
    assert line.provenance["sources"]["entitlement"]["ref"] == {"entitlementId": "ent_1"}
    assert line.provenance["sources"]["usage"]["asUsed"] == "1500"  # the usage read; 500 of it billed
    assert line.provenance["inputs"]["quantity"] == "500" and line.provenance["inputs"]["selector"] == query
    assert line.provenance["result"]["quantity"] == "500"


def test_a_hard_limit_bills_nothing_beyond_the_grants() -> None:
    line = _calculate(ENTITLED, Usage(ENTITLED.price_id, period(0), Decimal(1500), {}, coverage=HARD))
    assert (line.quantity, line.amount, line.total) == (Decimal(0), 0, 0)
    assert line.provenance["coverage"]["isSoftLimit"] is False and line.provenance["coverage"]["billable"] == "0"


def test_without_coverage_an_entitled_price_bills_exactly_as_a_plain_one() -> None:
    usage = Usage(METERED.price_id, period(0), Decimal("1234.5"), {"value": "1234.5"})
    assert _calculate(ENTITLED, usage) == dataclasses.replace(_calculate(METERED, usage))
    assert "coverage" not in _calculate(ENTITLED, usage).provenance


@pytest.mark.parametrize(
    "coverage",
    [
        dataclasses.replace(SOFT, billable=Decimal(1501)),  # more than the usage
        dataclasses.replace(SOFT, billable=Decimal(-1)),
        dataclasses.replace(SOFT, usage=Decimal(1400)),  # not the reading's usage
    ],
)
def test_a_coverage_that_contradicts_its_reading_is_refused(coverage: Coverage) -> None:
    with pytest.raises(CalculationInputError) as caught:
        _calculate(ENTITLED, Usage(ENTITLED.price_id, period(0), Decimal(1500), {}, coverage=coverage))
    assert caught.value.reason == "COVERAGE_INCONSISTENT"


def test_the_coverage_provenance_parses_in_the_sdk_and_travels_whole_under_recorded() -> None:
    line = _calculate(ENTITLED, Usage(ENTITLED.price_id, period(0), Decimal(1500), {"value": "1500"}, coverage=SOFT))
    shaped = provenance.wire(line.provenance, subscription_id="sub_1")
    assert shaped["recorded"]["coverage"] == line.provenance["coverage"]
    parsed = models.LineProvenance.model_validate(shaped)
    assert parsed.steps is not None and parsed.steps[0].op == "allow"
    assert parsed.sources is not None and parsed.sources["entitlement"].type == "entitlement"


# --- the steps -----------------------------------------------------------------------------


async def test_an_issued_invoice_bills_the_billable_quantity_and_reads_the_coverages_usage() -> None:
    world = EntitledWorld()
    world.meter.set(METRIC, "cus_1", MONTHS[0], MONTHS[1], "1490")  # metering's own reading: not the line's source
    world.entitlements.set("sub_1", METRIC, MONTHS[0], MONTHS[1], SOFT)
    await world.run(0)
    calls_before = len(world.entitlements.calls)
    issued = await world.run(1)
    line = _usage_line(issued, world)
    assert (line.quantity, line.amount) == (Decimal(500), 500 * CENT)
    assert line.provenance["inputs"]["selector"]["value"] == "1500"  # the coverage's usage, one source
    assert line.provenance["inputs"]["selector"]["entitlementId"] == "ent_1"
    assert issued.grand_total == 49 * USD + 500 * CENT
    assert len(world.entitlements.calls) == calls_before + 1  # one call for the invoice
    (query,) = world.entitlements.calls[-1]
    assert (query.subscription_id, query.metric_id, query.start, query.end) == ("sub_1", METRIC, MONTHS[0], MONTHS[1])


async def test_not_found_not_entitled_or_no_entitlement_service_bill_the_usage_as_before() -> None:
    plain = World()
    plain.meter.set(METRIC, "cus_1", MONTHS[0], MONTHS[1], "1490")
    await plain.run(0)
    expected = _usage_line(await plain.run(1), plain)
    not_found, unconfigured = EntitledWorld(), EntitledWorld(configured=False)
    for world in (not_found, unconfigured):
        world.meter.set(METRIC, "cus_1", MONTHS[0], MONTHS[1], "1490")
        await world.run(0)
        line = _usage_line(await world.run(1), world)
        assert line == expected
        assert line.quantity == Decimal(1490) and "coverage" not in line.provenance
    assert not_found.entitlements.calls and not unconfigured.entitlements.calls  # asked, answered found=false / never asked


async def test_the_coverage_must_be_counted_until_the_moment_of_calculation() -> None:
    world = EntitledWorld()
    world.entitlements.set("sub_1", METRIC, MONTHS[0], MONTHS[1], SOFT)
    await world.run(0)
    world.entitlements.usage_counted_until = world.clock.now() - timedelta(seconds=1)
    await world.open(1)
    await world.close(1)
    with pytest.raises(Unavailable) as caught:
        await world.issue(1)
    assert caught.value.reason == "USAGE_NOT_COMPLETE"
    world.entitlements.usage_counted_until = world.clock.now()
    assert (await world.issue(1)).status == Status.ISSUED


async def test_a_lagging_watermark_does_not_hold_an_invoice_when_no_coverage_is_found() -> None:
    world = EntitledWorld()  # nothing set: every answer found=false
    world.entitlements.usage_counted_until = datetime(2000, 1, 1, tzinfo=UTC)
    world.meter.set(METRIC, "cus_1", MONTHS[0], MONTHS[1], "7")
    await world.run(0)
    issued = await world.run(1)
    assert issued.status == Status.ISSUED and _usage_line(issued, world).quantity == Decimal(7)
    assert world.slept == []  # not asked again


async def test_the_live_estimate_and_the_final_invoice_use_the_coverage() -> None:
    world = EntitledWorld()
    world.entitlements.set("sub_1", METRIC, MONTHS[0], MONTHS[1], SOFT)
    await world.run(0)
    opened = await world.open(1)
    async with world.uow() as uow:
        basis = await use_cases.estimate_basis(uow, opened, world.policy)
    estimate, _ = await use_cases.estimate(world.sources, world.policy, opened, basis)
    (line,) = [line for line in estimate.lines if line.event_type == "usage"]
    assert line.quantity == Decimal(500) and line.provenance["coverage"]["entitlementId"] == "ent_1"

    # terminated 10 days into period 0: the final invoice's usage window [s, t) is covered too
    t = MONTHS[0] + timedelta(days=10)
    final = Layout(
        Composition(arrears=[Window(MONTHS[0], t, MONTHS[0], MONTHS[1], 0)], advance=[], credits=[], one_time_fees=False), final=True
    )
    world.entitlements.set("sub_1", METRIC, MONTHS[0], t, HARD)
    await world.close(1, lay=final)
    issued = await world.issue(1)
    line = _usage_line(issued, world)
    assert (line.quantity, line.amount, line.provenance["coverage"]["isSoftLimit"]) == (Decimal(0), 0, False)


async def test_late_usage_is_corrected_on_the_coverage_of_the_period_now() -> None:
    world = EntitledWorld()
    world.entitlements.set("sub_1", METRIC, MONTHS[0], MONTHS[1], SOFT)
    await world.run(0)
    await world.run(1)  # billed 500 of 1500
    late = dataclasses.replace(SOFT, usage=Decimal(1800), billable=Decimal(800))  # 300 late units, none covered
    world.entitlements.set("sub_1", METRIC, MONTHS[0], MONTHS[1], late)
    second = await world.run(2)
    (correction,) = [stored.line for stored in world.store.lines[second.id] if stored.line.kind == "correction"]
    assert (correction.quantity, correction.amount) == (Decimal(300), 300 * CENT)
    assert correction.provenance["coverage"]["billable"] == "800" and correction.provenance["steps"][0]["op"] == "allow"


async def test_a_batch_asks_the_entitlement_service_once() -> None:
    world = EntitledWorld()
    subscriptions = [f"sub_{i}" for i in range(3)]
    for s in subscriptions:
        world.entitlements.set(s, METRIC, MONTHS[0], MONTHS[1], SOFT)
        await world.run(0, terms(s))
        await world.open(1, terms(s))
        await world.close(1, terms(s))
    before = len(world.entitlements.calls)
    commands = [IssueInvoice(terms(s), 1, MONTHS[1] + GRACE) for s in subscriptions]
    results = await batches.issue_invoices(world.uow, world.sources, world.policy, world.clock, "org_a", commands)
    assert len(world.entitlements.calls) == before + 1 and len(world.entitlements.calls[-1]) == 3
    for result in results:
        assert result.invoice is not None
        assert _usage_line(result.invoice, world).quantity == Decimal(500)


# --- ad-hoc invoices -----------------------------------------------------------------------

AT = datetime(2026, 3, 14, 15, 9, 26, tzinfo=UTC)


def _ad_hoc(reference: str = "gpur_1", amount: str = "10.005", **overrides: object) -> IssueAdHocInvoice:
    values: dict[str, object] = {
        "customer_id": "cus_1",
        "currency": "USD",
        "lines": [AdHocItem("Tokens: 5000 units", "5000", amount)],
        "purpose": "grant_purchase",
        "reference": reference,
        "subscription_id": "sub_1",
        "effective_time": AT,
        "success_url": "https://shop.example/ok",
        "metadata": {"purchase": reference},
    }
    values.update(overrides)
    return IssueAdHocInvoice(**values)  # type: ignore[arg-type]


async def _issue_ad_hoc(world: World, command: IssueAdHocInvoice) -> Invoice:
    async with world.uow() as uow:
        return await use_cases.issue_ad_hoc(uow, world.sources, "org_a", world.clock.now(), command)


async def test_an_ad_hoc_invoice_is_issued_numbered_and_idempotent_by_reference() -> None:
    world = EntitledWorld()
    zero = await world.run(0)  # a timeline invoice first: one counter for both
    first = await _issue_ad_hoc(world, _ad_hoc())
    again = await _issue_ad_hoc(world, _ad_hoc(amount="99.00"))  # the same reference: the same invoice
    assert again.id == first.id and again.grand_total == first.grand_total
    assert (first.status, first.purpose, first.reference, first.subscription_id) == ("ISSUED", "grant_purchase", "gpur_1", "sub_1")
    assert zero.invoice_number == "INV-2026-000001" and first.invoice_number == "INV-2026-000002"
    assert first.grand_total == first.subtotal == 1001 * CENT and first.total_tax == 0  # 10.005 half up once
    assert (first.issued_at, first.due_at) == (AT, datetime(2026, 3, 14, tzinfo=UTC))
    (line,) = world.store.lines[first.id]
    assert (line.line.display_name, line.line.quantity, line.line.amount) == ("Tokens: 5000 units", Decimal(5000), 1001 * CENT)
    assert first.terms["checkout"] == {"successUrl": "https://shop.example/ok"} and first.metadata == {"purchase": "gpur_1"}
    other = await _issue_ad_hoc(world, _ad_hoc("gpur_2", subscription_id=None))
    assert other.invoice_number == "INV-2026-000003" and other.subscription_id == ""
    assert [e for e in _events(world) if e[1] in (first.id, other.id)] == [(ChangeKind.ISSUED, first.id), (ChangeKind.ISSUED, other.id)]
    # the timeline never sees it
    async with world.uow() as uow:
        assert [i.id for i in await uow.invoices.of_subscription("org_a", "sub_1")] == [zero.id]
        found = await uow.invoices.by_sequence("org_a", "sub_1", 0)
        assert found is not None and found.id == zero.id


async def test_paying_a_grant_purchase_tells_the_entitlement_service_not_the_subscription_service() -> None:
    world = EntitledWorld()
    issued = await _issue_ad_hoc(world, _ad_hoc())
    world.entitlements.fail = True
    with pytest.raises(Unavailable):  # a failed call records no payment: the caller retries
        async with world.uow() as uow:
            await use_cases.record_payment(uow, world.sources, "org_a", world.clock.now(), RecordPayment(issued.id, "out_of_band"))
    assert world.store.invoices[issued.id].status == Status.ISSUED
    world.entitlements.fail = False
    async with world.uow() as uow:
        paid = await use_cases.record_payment(uow, world.sources, "org_a", world.clock.now(), RecordPayment(issued.id, "out_of_band"))
    assert paid.status == Status.PAID and paid.paid_amount == 1001 * CENT
    assert world.entitlements.paid == [(issued.id, None)]  # now, in the customer's time: the entitlement service's to tell
    assert world.subscriptions.paid == []
    assert (ChangeKind.PAID, issued.id) in _events(world)


async def test_a_free_ad_hoc_invoice_is_paid_at_issue_and_told() -> None:
    world = EntitledWorld()
    free = await _issue_ad_hoc(world, _ad_hoc(amount="0.004"))  # rounds to 0.00
    assert free.status == Status.PAID and free.invoice_number is not None and free.paid_at == AT
    assert world.entitlements.paid == [(free.id, AT)]


@pytest.mark.parametrize(
    ("overrides", "field", "reason"),
    [
        ({"purpose": "subscription"}, "purpose", "INVALID_ENUM_VALUE"),
        ({"currency": "XXQ"}, "currency", "UNKNOWN_CURRENCY"),
        ({"lines": []}, "lines", "REQUIRED"),
        ({"lines": [AdHocItem("x", "1", "-1.00")]}, "lines[0].amountDecimal", "MUST_NOT_BE_NEGATIVE"),
        ({"lines": [AdHocItem("x", "1e3", "1.00")]}, "lines[0].quantityDecimal", "INVALID_DECIMAL"),
        ({"lines": [AdHocItem("", "1", "1.00")]}, "lines[0].description", "REQUIRED"),
    ],
)
async def test_an_ad_hoc_invoice_names_what_is_wrong(overrides: dict[str, object], field: str, reason: str) -> None:
    world = EntitledWorld()
    with pytest.raises(InvalidArgument) as caught:
        await _issue_ad_hoc(world, dataclasses.replace(_ad_hoc(), **overrides))  # type: ignore[arg-type]
    assert (caught.value.field, caught.value.reason) == (field, reason)
    assert world.store.invoices == {} and world.store.counters == {}  # nothing written, no number taken


async def test_an_ad_hoc_invoice_renders_its_purpose_and_checkout_and_parses_in_the_sdk() -> None:
    world = EntitledWorld()
    issued = await _issue_ad_hoc(world, _ad_hoc())
    rendered = message_to_json(mapping.invoice(issued, lines=world.store.lines[issued.id], provenance=True))
    assert rendered["purpose"] == "grant_purchase"
    (session,) = world.payments.sessions.values()  # opened at issue: its page is the invoice's paymentUrl
    assert (rendered["paymentUrl"], rendered["paymentSessionId"]) == (session.url, session.id)
    parsed = models.Invoice.model_validate(rendered)
    assert isinstance(parsed.line_items, models.InvoiceLineItems) and len(parsed.line_items.line_items) == 1
    zero = await world.run(0)
    assert message_to_json(mapping.invoice(zero))["purpose"] == "subscription"
