"""What the invoicing API answers parses in the official SDK's models: an invoice with its
lines and each line's provenance (``expand=lineProvenance``: the SDK drops every line when
one provenance does not fit its ``LineProvenance``), for every kind of line the
calculation makes: fees, each price model, a correction, a credit, rounding."""

from __future__ import annotations

from datetime import timedelta
from decimal import Decimal
from typing import Any

from paygentic_sdk import models

from libs.core.pricing import GraduatedPrice, PackagePrice, Tier, VolumePrice
from services.gateway.restjson import message_to_json
from services.invoicing import mapping, provenance
from services.invoicing.domain.calculation import Charge, Composition, Window
from services.invoicing.domain.model import Invoice, Layout
from services.invoicing.tests.unit.world import FEE, METERED, METRIC, MONTHS, World

USD = 1_000_000_000


def _charge(price_id: str, price: Any) -> Charge:
    return Charge(
        price_id=price_id, key=price_id, kind="metered", source_id=METRIC, display_name=price_id, payment_term="in_arrears",
        price=price, cadence=None, quantity=1, metric_name="Tokens", metric_unit="token",
    )  # fmt: skip


CHARGES = [
    FEE,
    METERED,
    _charge("volume", VolumePrice((Tier(Decimal(100), 5 * USD), Tier(None, 3 * USD, flat_fee_atomic=USD)))),
    _charge("graduated", GraduatedPrice((Tier(Decimal(100), 2 * USD, flat_fee_atomic=USD), Tier(None, USD)))),
    _charge("package", PackagePrice(Decimal(1000), 7 * USD, "up")),
]


def _json(message: Any) -> dict[str, Any]:
    """As the gateway renders it (defaults included, nulls where the SDK wants them)."""
    return message_to_json(message)


async def _invoices(world: World) -> list[Invoice]:
    world.catalog.default = CHARGES
    world.meter.set(METRIC, "cus_1", MONTHS[0], MONTHS[1], "150.5")
    first = await world.run(1)
    world.meter.set(METRIC, "cus_1", MONTHS[0], MONTHS[1], "151.55")  # late: corrections on the next one
    t = MONTHS[1] + timedelta(days=3, seconds=7)
    final = Layout(
        Composition(arrears=[Window(MONTHS[1], t, MONTHS[1], MONTHS[2], 1)], advance=[], credits=[Window(t, MONTHS[2], MONTHS[1], MONTHS[2], 1)], one_time_fees=False),
        final=True,
    )  # fmt: skip
    await world.open(2)
    await world.close(2, lay=final)
    return [first, await world.issue(2)]


async def test_every_line_and_its_provenance_parse_in_the_sdk() -> None:
    world = World()
    issued = await _invoices(world)
    kinds = set()
    for found in issued:
        lines = world.store.lines[found.id]
        kinds |= {line.line.kind for line in lines}
        rendered = _json(mapping.invoice(found, lines=lines, provenance=True))
        parsed = models.Invoice.model_validate(rendered)
        assert isinstance(parsed.line_items, models.InvoiceLineItems)
        assert len(parsed.line_items.line_items) == len(lines) == rendered["itemCount"]
        for line in parsed.line_items.line_items:
            assert isinstance(line.provenance, models.LineProvenance) and line.provenance.status == "recorded"
        engine = [_json(mapping.engine_line_item(found, line, provenance=True)) for line in lines]
        for item in engine:
            models.LineItem.model_validate(item)
    assert kinds >= {"charge", "correction", "credit"}
    opened = await world.open(5)
    parsed = models.Invoice.model_validate(_json(mapping.invoice(opened)))
    assert (parsed.status, parsed.grand_total, parsed.invoice_number, parsed.issued_at) == ("ACTIVE", "0.00", None, None)


async def test_the_recorded_provenance_travels_whole_beside_the_sdk_shape() -> None:
    world = World()
    found = (await _invoices(world))[0]
    line = next(line for line in world.store.lines[found.id] if line.line.price_id == "graduated")
    shaped = provenance.wire(line.line.provenance, subscription_id="sub_1")
    assert shaped["recorded"] == line.line.provenance
    assert shaped["subscriptionId"] == "sub_1" and shaped["result"]["amount"] == mapping.exact_money(Decimal(line.line.amount), "USD")
    assert provenance.wire(None) == {"status": "notRecorded"}
    assert provenance.wire({"status": "pending"}) == {"status": "pending"}


def test_money_on_the_wire() -> None:
    assert mapping.money(49 * USD, "USD") == "49.00"
    assert mapping.money(-1_792_799 * 10_000_000, "USD") == "-17927.99"
    assert mapping.money(100 * USD, "JPY") == "100"
    assert mapping.exact_money(Decimal(20_000), "USD") == "0.00002"
    assert mapping.exact_money(Decimal("0.5"), "USD") == "0.0000000005"
    assert mapping.exact_money(Decimal(0), "USD") == "0.00"
