"""Invoice calculation: charges, windows, usage and history in; lines, totals and provenance out.

Pure (no I/O, no clock): the invoicing service gathers the inputs (the pinned plan
version's price slots, the invoice's windows from the subscription timeline, usage from
metering, what earlier invoices billed, the customer's tax settings and rounding carry)
and calls :func:`calculate_invoice` once, when the invoice is issued or estimated. The
rules are DESIGN.md sections 3 and 7:

* A line's amount is exact, then rounded once, half up, to the currency's minor unit
  (:func:`libs.core.money.round_half_up`). Tax is per line, rounded once, half up.
* Fees bill ``quantity x price``: in_advance fees over the advance windows, in_arrears
  fees over the arrears windows, each prorated exactly by window seconds / period
  seconds; one-time fees (``P0D``) once, unprorated, only when the composition says so.
* Metered charges price the usage of each arrears window with their model (standard,
  volume, graduated, package: :mod:`libs.core.pricing`); usage is never prorated.
* Included quantities: a metered price carrying a metered feature prices only what the
  grants of the subscription's entitlement did not cover (its reading's ``coverage``,
  the entitlement service's answer): usage - covered with a soft limit, nothing with a
  hard one. The line's quantity is that billed quantity; its provenance says which
  grants covered what (``coverage``, an ``allow`` step). Corrections re-rate the same way.
* Termination credits: for each credit window, a negative line of the in_advance fees'
  billed amounts (as they were billed, not at today's price), prorated by the share of
  the billed window the credit window covers.
* Late usage: per price and earlier window, the window re-rated with all of its usage now
  minus the exact amounts billed for it so far; no line when the difference is zero.
  Exact amounts are compared, so tiers come out right.
* Rounding carry: per customer and currency the exact cumulative total E and the billed
  cumulative total B of priced amounts (the net when tax-exclusive, the gross when
  tax-inclusive); after this invoice B' = round_half_up(E'), settled by an explicit untaxed
  line "Rounding carried from earlier invoices" whenever the lines' own rounding differs.

Exactness: prices, quantities and tax rates are exact decimals; proration fractions are
rationals (15/31 of a month does not terminate). A value that terminates is kept exactly;
one that does not is kept to :data:`EXACT_ATOMIC_PLACES` places of an atomic unit
(1e-18 of the major unit), half up, and the provenance says so. That value is the line's
exact amount: the line's rounding starts from it, and the carry sums it, so what the
provenance shows is what a hand replay gets. Tax of a tax-inclusive amount is rounded from
the exact rational.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal, localcontext
from fractions import Fraction
from typing import Any, Final, Literal

from libs.core.money import (
    ATOMIC_PLACES,
    ROUNDING_MODE,
    currency_exponent,
    exact_context,
    minor_unit_atomic,
    round_half_up,
)
from libs.core.pricing import (
    GraduatedPrice,
    PackagePrice,
    Price,
    PriceCalculation,
    StandardPrice,
    Tier,
    VolumePrice,
    calculate,
)

PROVENANCE_VERSION: Final = 1
ROUNDING_LINE_NAME: Final = "Rounding carried from earlier invoices"
# Places of an atomic unit kept for an exact amount that does not terminate (a proration
# by 15/31, a tax-inclusive net): 1e-18 of the major unit, far below anything billed.
EXACT_ATOMIC_PLACES: Final = 9
ONE_TIME: Final = "P0D"

_MICROSECOND: Final = timedelta(microseconds=1)
_HUNDRED: Final = Decimal(100)


class CalculationInputError(ValueError):
    """The inputs contradict each other: a bug upstream, not the customer's doing, so not
    a DomainError (callers see it as INTERNAL, like any other bug)."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(f"{reason}: {message}")
        self.reason = reason
        self.message = message


# ---------------------------------------------------------------------------------------
# Contract (services/invoicing calls this; see notes/issue9_context.md)
# ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Charge:
    """One price slot of the pinned plan version."""

    price_id: str
    key: str
    kind: Literal["fee", "metered"]
    source_id: str  # fee id or billable metric id
    display_name: str
    payment_term: Literal["in_advance", "in_arrears"]
    price: Price
    cadence: str | None  # "P0D" one-time; None (or any other) = the plan's cadence
    quantity: int  # fees: quantity x unit price; unused for metered charges
    metric_name: str = ""
    metric_unit: str = ""
    metric_description: str = ""
    # Accrue: False for a price whose tax supplyScope is OUTSIDE_SCOPE (never taxed).
    taxable: bool = True
    # Accrue: a metered price carrying a metered feature: its usage may be covered by the
    # grants of the subscription's entitlement (the reading's ``coverage``)
    entitled: bool = False


@dataclass(frozen=True)
class Window:
    """A billed stretch [start, end) of the period [period_start, period_end)."""

    start: datetime
    end: datetime
    period_start: datetime
    period_end: datetime
    period_index: int


@dataclass(frozen=True)
class GrantCovered:
    grant_id: str
    covered: Decimal


@dataclass(frozen=True)
class Coverage:
    """How much of a window's usage the grants of the subscription's metered entitlement
    covered (the entitlement service's answer): ``billable`` is what the line bills,
    usage - covered with a soft limit, 0 with a hard one."""

    entitlement_id: str
    is_soft_limit: bool
    usage: Decimal
    covered: Decimal
    billable: Decimal
    grants: Sequence[GrantCovered] = ()

    def record(self) -> dict[str, Any]:
        """The provenance's ``coverage``."""
        return {
            "entitlementId": self.entitlement_id,
            "usage": _plain(self.usage),
            "covered": _plain(self.covered),
            "billable": _plain(self.billable),
            "isSoftLimit": self.is_soft_limit,
            "grants": [{"grantId": g.grant_id, "covered": _plain(g.covered)} for g in self.grants],
        }


@dataclass(frozen=True)
class Usage:
    price_id: str
    window: Window
    quantity: Decimal  # the usage of the window (the coverage's, when there is one)
    query: Mapping[str, Any]  # provenance of the reading (meter, subject, from, to, watermark)
    # Accrue: the grants' coverage of this usage (an entitled price), None = bill it all
    coverage: Coverage | None = None

    @property
    def billable(self) -> Decimal:
        """The quantity the line prices."""
        return self.quantity if self.coverage is None else self.coverage.billable


@dataclass(frozen=True)
class Billed:
    """What an issued invoice billed, per price and window (for credits and corrections).

    ``exact_amount`` is the exact priced amount in atomic units, unrounded: the basis that
    credits prorate and corrections subtract (for tax-inclusive prices, the gross).
    """

    price_id: str
    window: Window
    quantity: Decimal
    exact_amount: Decimal
    invoice_id: str
    # Accrue: the line's tax rate (fraction); a credit is taxed at it when given.
    tax_rate: Decimal | None = None


@dataclass(frozen=True)
class TaxSettings:
    behavior: Literal["exclusive", "inclusive"]
    default_rate: Decimal  # percent (13 = 13 %), the plan's defaultTaxRate
    customer_rates: Mapping[str, Decimal]  # percent, keyed by metric id, plan id or "default"
    exempt: bool
    plan_id: str


@dataclass(frozen=True)
class Carry:
    """Per customer and currency: exact cumulative total E and billed cumulative total B."""

    exact_total: Decimal  # atomic units, unrounded
    billed_total: int  # atomic units


@dataclass(frozen=True)
class Composition:
    arrears: Sequence[Window]
    advance: Sequence[Window]
    credits: Sequence[Window]
    one_time_fees: bool


@dataclass(frozen=True)
class Line:
    kind: Literal["charge", "correction", "credit", "rounding"]
    price_id: str | None
    source_id: str | None
    event_type: Literal["usage", "fee", "discount"]
    display_name: str
    payment_term: str | None
    window: Window | None
    quantity: Decimal
    unit_price: Decimal  # atomic units per unit (may be fractional)
    exact_amount: Decimal  # atomic, unrounded (pre-tax, net)
    amount: int  # atomic, rounded once half up to the minor unit (net)
    tax_rate: Decimal  # fraction (0.13)
    tax: int  # atomic, rounded once half up
    total: int  # amount + tax
    corrects: Window | None  # a correction's period
    provenance: dict[str, Any]  # JSON-able
    # Accrue: the exact amount the price gives before any tax split (equal to
    # exact_amount for tax-exclusive lines, the gross for tax-inclusive ones).
    priced_exact_amount: Decimal = Decimal(0)
    # Accrue: the rounded priced amount (net when exclusive, gross when inclusive).
    priced_amount: int = 0


@dataclass(frozen=True)
class InvoiceCalculation:
    lines: list[Line]
    subtotal: int
    total_tax: int
    grand_total: int
    carry_after: Carry
    billed: list[Billed] = field(default_factory=list)  # what this invoice billed, to store


# ---------------------------------------------------------------------------------------
# Exact numbers
# ---------------------------------------------------------------------------------------


def _terminating_places(denominator: int) -> int | None:
    """Decimal places a fraction with this (reduced) denominator needs, None if infinite."""
    twos = fives = 0
    while denominator % 2 == 0:
        denominator //= 2
        twos += 1
    while denominator % 5 == 0:
        denominator //= 5
        fives += 1
    return max(twos, fives) if denominator == 1 else None


def _half_up_int(value: Fraction) -> int:
    """The nearest integer; a half goes away from zero."""
    whole, rest = divmod(abs(value.numerator), value.denominator)
    if 2 * rest >= value.denominator:
        whole += 1
    return whole if value.numerator >= 0 else -whole


def exact_decimal(value: Fraction) -> tuple[Decimal, bool]:
    """The value as a Decimal: exactly if it terminates, else to EXACT_ATOMIC_PLACES, half up.

    Returns the Decimal and whether it is exact.
    """
    ctx = exact_context()
    places = _terminating_places(value.denominator)
    if places is not None:
        digits = value.numerator * 10**places // value.denominator
        return Decimal(digits).scaleb(-places, context=ctx), True
    scaled = _half_up_int(value * 10**EXACT_ATOMIC_PLACES)
    return Decimal(scaled).scaleb(-EXACT_ATOMIC_PLACES, context=ctx), False


def round_rational_half_up(value: Fraction, currency: str) -> int:
    """Round an exact rational atomic amount once, half up, to the minor unit.

    A value that terminates goes through money's own rule; one that does not cannot be a
    tie, so its nearest minor unit is unambiguous.
    """
    exact, is_exact = exact_decimal(value)
    if is_exact:
        return round_half_up(exact, currency)
    unit = minor_unit_atomic(currency)
    return _half_up_int(value / unit) * unit


def _micros(delta: timedelta) -> int:
    return delta // _MICROSECOND


def _seconds_text(micros: int) -> str:
    whole, rest = divmod(micros, 1_000_000)
    return str(whole) if rest == 0 else _plain(Decimal(micros).scaleb(-6, context=exact_context()))


def _plain(value: Decimal | int) -> str:
    if isinstance(value, int):
        return str(value)
    text = format(value.normalize(exact_context()), "f")
    return "0" if text in ("-0", "0") else text


def _iso(moment: datetime) -> str:
    if moment.tzinfo is not None:
        moment = moment.astimezone(UTC)
    return moment.isoformat().replace("+00:00", "Z")


# ---------------------------------------------------------------------------------------
# Calculation
# ---------------------------------------------------------------------------------------


@dataclass
class _Priced:
    """A line priced exactly, before rounding and tax."""

    quantity: Decimal
    exact: Decimal  # priced amount (gross when tax-inclusive)
    unit_price: Decimal
    inputs: dict[str, Any]
    sources: dict[str, Any]
    steps: list[dict[str, Any]]


@dataclass(frozen=True)
class _Rate:
    percent: Decimal
    source: dict[str, str]

    @property
    def fraction(self) -> Decimal:
        return self.percent.scaleb(-2, context=exact_context())


class _Calculator:
    def __init__(self, currency: str, tax: TaxSettings) -> None:
        self.currency = currency
        self.exponent = currency_exponent(currency)
        self.tax = tax
        if tax.behavior not in ("exclusive", "inclusive"):
            raise CalculationInputError("INVALID_TAX_BEHAVIOR", f"tax behavior must be exclusive or inclusive, got {tax.behavior!r}")
        for key, rate in [("defaultTaxRate", tax.default_rate), *tax.customer_rates.items()]:
            _check_rate(key, rate)

    # -- formatting ----------------------------------------------------------------------

    def major(self, atomic: Decimal | int) -> str:
        """Exact major units, padded to the currency's minor places ("2.47", "100", "0.00002")."""
        value = Decimal(atomic).scaleb(-ATOMIC_PLACES, context=exact_context())
        whole, _, fraction = _plain(value).partition(".")
        fraction = fraction.ljust(self.exponent, "0")
        return f"{whole}.{fraction}" if fraction else whole

    # -- provenance pieces ---------------------------------------------------------------

    def price_fn(self, price: Price) -> dict[str, Any]:
        if isinstance(price, StandardPrice):
            return {"model": "unit", "accrueModel": "standard", "rate": self.major(price.unit_price_atomic)}
        if isinstance(price, VolumePrice):
            return {"model": "volume", "accrueModel": "volume", "bands": self.bands(price.tiers)}
        if isinstance(price, GraduatedPrice):
            return {"model": "graduated", "accrueModel": "graduated", "bands": self.bands(price.tiers)}
        if isinstance(price, PackagePrice):
            return {
                "model": "package",
                "accrueModel": "package",
                "packageSize": _plain(price.package_size),
                "amount": self.major(price.package_price_atomic),
                "rounding": price.rounding,
            }
        raise TypeError(f"unsupported price model {type(price).__name__}")

    def bands(self, tiers: Sequence[Tier]) -> list[dict[str, str | None]]:
        return [
            {
                "upTo": None if tier.up_to is None else _plain(tier.up_to),
                "rate": self.major(tier.unit_price_atomic),
                "flatFee": self.major(tier.flat_fee_atomic),
            }
            for tier in tiers
        ]

    def pricing_steps(self, calc: PriceCalculation, price_id: str) -> list[dict[str, Any]]:
        # The pricing library's own final "round" step is left out: the line is rounded
        # after proration and under the invoice's rule, and that step is recorded below.
        return [
            {
                "op": "evaluate",
                "on": "amount",
                "in": dict(step.inputs),
                "out": dict(step.outputs),
                "params": {"kind": step.kind, "description": step.description},
                "source": "price",
                "trace": {"price": price_id},
            }
            for step in calc.steps
            if step.kind != "round"
        ]

    def prorate(self, amount: Fraction, covered: int, length: int, on: Window, basis: str) -> tuple[Fraction, dict[str, Any]]:
        share = Fraction(covered, length)
        result = amount * share
        shown, is_exact = exact_decimal(result)
        full, _ = exact_decimal(amount)
        step = {
            "op": "prorate",
            "on": "amount",
            "in": {"amount": self.major(full)},
            "out": {"amount": self.major(shown), "exact": "true" if is_exact else "false"},
            "params": {
                "coveredSeconds": _seconds_text(covered),
                f"{basis}Seconds": _seconds_text(length),
                "fraction": f"{share.numerator}/{share.denominator}",
                "from": _iso(on.start),
                "to": _iso(on.end),
                "keptPlaces": str(ATOMIC_PLACES + EXACT_ATOMIC_PLACES),
            },
            "source": basis,
        }
        return result, step

    # -- tax -----------------------------------------------------------------------------

    def rate_for(self, charge: Charge | None) -> _Rate:
        tax = self.tax
        if tax.exempt:
            return _Rate(Decimal(0), {"type": "exempt", "reason": "customer is tax exempt"})
        if charge is not None and not charge.taxable:
            return _Rate(Decimal(0), {"type": "outsideScope", "ref": charge.price_id, "reason": "price is outside tax scope"})
        keys: list[tuple[str, str]] = []
        if charge is not None and charge.kind == "metered":
            keys.append((charge.source_id, "customer.taxRates[metric]"))
        keys += [(tax.plan_id, "customer.taxRates[plan]"), ("default", "customer.taxRates[default]")]
        for key, where in keys:
            if key and key in tax.customer_rates:
                rate = tax.customer_rates[key]
                return _Rate(rate, {"type": "customerTaxRate", "ref": key, "asUsed": _plain(rate), "reason": where})
        return _Rate(tax.default_rate, {"type": "planDefaultTaxRate", "ref": tax.plan_id, "asUsed": _plain(tax.default_rate)})

    # -- one line ------------------------------------------------------------------------

    def finish(
        self,
        *,
        kind: Literal["charge", "correction", "credit"],
        charge: Charge,
        event_type: Literal["usage", "fee", "discount"],
        display_name: str,
        window: Window | None,
        priced: _Priced,
        rate: _Rate,
        corrects: Window | None = None,
    ) -> Line:
        steps = priced.steps
        rounded = round_half_up(priced.exact, self.currency)
        steps.append(self.round_step("amount", priced.exact, rounded))
        rate_fraction = rate.fraction
        fraction = Fraction(rate_fraction)
        if self.tax.behavior == "exclusive":
            exact_net = priced.exact
            net = rounded
            tax_exact = Fraction(rounded) * fraction
            tax = round_rational_half_up(tax_exact, self.currency)
            tax_step_in = {"amount": self.major(rounded)}
        else:
            gross = rounded
            share = fraction / (1 + fraction)
            tax_exact = Fraction(gross) * share
            tax = round_rational_half_up(tax_exact, self.currency)
            net = gross - tax
            exact_net, _ = exact_decimal(Fraction(priced.exact) / (1 + fraction))
            tax_step_in = {"gross": self.major(gross)}
        shown_tax, tax_is_exact = exact_decimal(tax_exact)
        steps.append(
            {
                "op": "scale",
                "on": "tax",
                "in": tax_step_in,
                "out": {"tax": self.major(shown_tax), "exact": "true" if tax_is_exact else "false"},
                "params": {
                    "behavior": self.tax.behavior,
                    "rate": _plain(rate_fraction),
                    "formula": "amount x rate" if self.tax.behavior == "exclusive" else "gross x rate / (1 + rate)",
                },
                "source": "taxRate",
            }
        )
        steps.append(self.round_step("tax", shown_tax, tax))
        if self.tax.behavior == "inclusive":
            steps.append(
                {
                    "op": "subtract",
                    "on": "amount",
                    "in": {"gross": self.major(rounded), "tax": self.major(tax)},
                    "out": {"amount": self.major(net)},
                    "params": {"description": "the price includes tax: net = gross - tax"},
                    "source": "taxRate",
                }
            )
        sources = dict(priced.sources)
        sources["taxRate"] = rate.source
        provenance: dict[str, Any] = {
            "status": "recorded",
            "version": PROVENANCE_VERSION,
            "currency": self.currency,
            "precision": self.precision(),
            **({"period": {"start": _iso(window.start), "end": _iso(window.end)}} if window is not None else {}),
            "inputs": priced.inputs,
            "sources": sources,
            "steps": steps,
            "result": {
                "amount": self.major(net),
                "quantity": _plain(priced.quantity),
                "unitPrice": self.major(priced.unit_price),
                "exactAmount": self.major(exact_net),
                "taxRate": _plain(rate_fraction),
                "tax": self.major(tax),
                "total": self.major(net + tax),
            },
        }
        if corrects is not None:
            provenance["corrects"] = {"start": _iso(corrects.start), "end": _iso(corrects.end), "periodIndex": corrects.period_index}
        return Line(
            kind=kind,
            price_id=charge.price_id,
            source_id=charge.source_id,
            event_type=event_type,
            display_name=display_name,
            payment_term=None if kind == "correction" else charge.payment_term,  # a correction re-rates a period, it has no term
            window=window,
            quantity=priced.quantity,
            unit_price=priced.unit_price,
            exact_amount=exact_net,
            amount=net,
            tax_rate=rate_fraction,
            tax=tax,
            total=net + tax,
            corrects=corrects,
            provenance=provenance,
            priced_exact_amount=priced.exact,
            priced_amount=rounded,
        )

    def precision(self) -> dict[str, Any]:
        return {"significantDigits": self.exponent, "scale": self.exponent, "rounding": ROUNDING_MODE}

    def round_step(self, on: str, exact: Decimal, rounded: int) -> dict[str, Any]:
        return {
            "op": "round",
            "on": on,
            "in": {on: self.major(exact)},
            "out": {on: self.major(rounded), "remainder": self.major(exact - rounded)},
            "params": {"mode": ROUNDING_MODE, "scale": self.exponent, "unit": f"{self.currency} minor unit"},
            "source": "currency",
        }

    def unit_price(self, price: Price, exact: Fraction, quantity: Decimal, share: Fraction) -> Decimal:
        """Atomic price per unit such that quantity x unit price is the exact amount."""
        if quantity != 0:
            value, _ = exact_decimal(exact / Fraction(quantity))
            return value
        if isinstance(price, StandardPrice):
            value, _ = exact_decimal(price.unit_price_atomic * share)
            return value
        return Decimal(0)


def _check_rate(key: str, rate: object) -> None:
    if isinstance(rate, bool) or not isinstance(rate, Decimal) or not rate.is_finite() or rate < 0:
        raise CalculationInputError("INVALID_TAX_RATE", f"tax rate {key!r} must be a finite Decimal percent >= 0, got {rate!r}")


def _check_window(window: Window, what: str) -> tuple[int, int]:
    """(covered, period) in microseconds; a window must lie inside its period."""
    covered = _micros(window.end - window.start)
    length = _micros(window.period_end - window.period_start)
    if length <= 0:
        raise CalculationInputError("EMPTY_PERIOD", f"{what} window's period [{window.period_start}, {window.period_end}) is empty")
    if covered < 0 or window.start < window.period_start or window.end > window.period_end:
        raise CalculationInputError(
            "WINDOW_OUTSIDE_PERIOD",
            f"{what} window [{window.start}, {window.end}) must lie inside its period [{window.period_start}, {window.period_end})",
        )
    return covered, length


def _same_span(a: Window, b: Window) -> bool:
    return a.start == b.start and a.end == b.end


def _date_span(window: Window) -> str:
    return f"{_iso(window.start)} - {_iso(window.end)}"


def calculate_invoice(
    *,
    currency: str,
    charges: Sequence[Charge],
    composition: Composition,
    usage: Sequence[Usage],
    billed_before: Sequence[Billed],
    late_usage: Sequence[Usage],
    tax: TaxSettings,
    carry: Carry,
    invoice_id: str = "",
) -> InvoiceCalculation:
    """Calculate one invoice (see the module docstring for the rules).

    ``usage``: one reading per (metered price, arrears window). ``late_usage``: fresh
    readings of earlier issued windows, each with all of its usage now. ``billed_before``:
    the Billed rows of earlier issued invoices. ``invoice_id`` (Accrue, optional) is
    stamped on the returned Billed rows.
    """
    # Every Decimal operation below runs in money's exact context (Inexact trapped), so
    # nothing is rounded by the process-wide 28-digit default.
    with localcontext(exact_context()):
        return _calculate(currency, charges, composition, usage, billed_before, late_usage, tax, carry, invoice_id)


def _calculate(
    currency: str,
    charges: Sequence[Charge],
    composition: Composition,
    usage: Sequence[Usage],
    billed_before: Sequence[Billed],
    late_usage: Sequence[Usage],
    tax: TaxSettings,
    carry: Carry,
    invoice_id: str,
) -> InvoiceCalculation:
    calc = _Calculator(currency, tax)
    by_price = {charge.price_id: charge for charge in charges}
    readings: dict[tuple[str, datetime, datetime], Usage] = {}
    for reading in usage:
        key = (reading.price_id, reading.window.start, reading.window.end)
        if key in readings:
            raise CalculationInputError("DUPLICATE_USAGE_READING", f"two usage readings for price {reading.price_id} and one window")
        readings[key] = reading

    lines: list[Line] = []
    billed: list[Billed] = []

    def keep(line: Line) -> None:
        lines.append(line)
        if line.window is not None and line.price_id is not None:
            billed.append(
                Billed(
                    price_id=line.price_id,
                    window=line.window,
                    quantity=line.quantity,
                    exact_amount=line.priced_exact_amount,
                    invoice_id=invoice_id,
                    tax_rate=line.tax_rate,
                )
            )

    first_window = next(iter([*composition.advance, *composition.arrears]), None)
    for charge in charges:
        rate = calc.rate_for(charge)
        if charge.kind == "fee":
            if charge.cadence == ONE_TIME:
                if composition.one_time_fees:
                    keep(_one_time_fee(calc, charge, rate, first_window))
                continue
            windows = composition.advance if charge.payment_term == "in_advance" else composition.arrears
            for window in windows:
                line = _fee(calc, charge, rate, window)
                if line is not None:
                    keep(line)
        elif charge.kind == "metered":
            for window in composition.arrears:
                covered, _ = _check_window(window, "arrears")
                if covered == 0:
                    continue
                found = readings.get((charge.price_id, window.start, window.end))
                if found is None:
                    raise CalculationInputError(
                        "USAGE_READING_MISSING", f"no usage reading for metered price {charge.price_id} over {_date_span(window)}"
                    )
                keep(_metered(calc, charge, rate, found))
        else:
            raise CalculationInputError("UNKNOWN_CHARGE_KIND", f"charge {charge.price_id} has kind {charge.kind!r}")

    for credit_window in composition.credits:
        _check_window(credit_window, "credit")
        for charge in charges:
            if charge.kind != "fee" or charge.payment_term != "in_advance" or charge.cadence == ONE_TIME:
                continue
            for row in billed_before:
                if row.price_id == charge.price_id:
                    line = _credit(calc, charge, row, credit_window)
                    if line is not None:
                        keep(line)

    for reading in late_usage:
        metered = by_price.get(reading.price_id)
        if metered is None or metered.kind != "metered":
            raise CalculationInputError(
                "LATE_USAGE_NOT_METERED", f"late usage for {reading.price_id}, which is not a metered price of the plan"
            )
        _check_window(reading.window, "corrected")
        prior = [row for row in billed_before if row.price_id == reading.price_id and _same_span(row.window, reading.window)]
        line = _correction(calc, metered, calc.rate_for(metered), reading, prior)
        if line is not None:
            keep(line)

    # The carry counts priced amounts: the exact amount each price gives and what its line
    # rounded it to. Tax-exclusive, that is the net (E and B of DESIGN section 7 exactly).
    # Tax-inclusive it is the gross the customer pays: counting the net there would add an
    # untaxed cent whenever the tax's own rounding moved the net, charging more than the
    # tax-inclusive price.
    ctx = exact_context()
    exact_after = ctx.add(carry.exact_total, sum((line.priced_exact_amount for line in lines), Decimal(0)))
    lines_sum = sum(line.priced_amount for line in lines)
    target = round_half_up(exact_after, currency)
    settle = target - (carry.billed_total + lines_sum)
    if settle != 0:
        lines.append(_rounding_line(calc, carry, exact_after, lines_sum, target, settle))
    subtotal = sum(line.amount for line in lines)
    total_tax = sum(line.tax for line in lines)
    return InvoiceCalculation(
        lines=lines,
        subtotal=subtotal,
        total_tax=total_tax,
        grand_total=subtotal + total_tax,
        carry_after=Carry(exact_total=exact_after, billed_total=target),
        billed=billed,
    )


def _fee_inputs(calc: _Calculator, charge: Charge) -> tuple[dict[str, Any], dict[str, Any]]:
    inputs = {
        "kind": "priced",
        "quantity": str(charge.quantity),
        "price": {"fn": calc.price_fn(charge.price), "source": charge.price_id},
    }
    sources = {
        "price": {"type": "price", "ref": charge.price_id},
        "fee": {"type": "fee", "ref": charge.source_id, "asUsed": str(charge.quantity), "reason": "plan price quantity"},
    }
    return inputs, sources


def _one_time_fee(calc: _Calculator, charge: Charge, rate: _Rate, near: Window | None) -> Line:
    quantity = Decimal(charge.quantity)
    priced_calc = calculate(charge.price, quantity, calc.currency)
    inputs, sources = _fee_inputs(calc, charge)
    exact = Fraction(priced_calc.exact_amount_atomic)
    # A one-off line's period is the instant it is billed at (periodEnd = periodStart).
    window = None if near is None else Window(near.start, near.start, near.period_start, near.period_end, near.period_index)
    priced = _Priced(
        quantity=quantity,
        exact=priced_calc.exact_amount_atomic,
        unit_price=calc.unit_price(charge.price, exact, quantity, Fraction(1)),
        inputs=inputs,
        sources=sources,
        steps=calc.pricing_steps(priced_calc, charge.price_id),
    )
    return calc.finish(
        kind="charge", charge=charge, event_type="fee", display_name=charge.display_name, window=window, priced=priced, rate=rate
    )


def _fee(calc: _Calculator, charge: Charge, rate: _Rate, window: Window) -> Line | None:
    covered, length = _check_window(window, charge.payment_term)
    if covered == 0:
        return None
    quantity = Decimal(charge.quantity)
    priced_calc = calculate(charge.price, quantity, calc.currency)
    steps = calc.pricing_steps(priced_calc, charge.price_id)
    full = Fraction(priced_calc.exact_amount_atomic)
    exact, step = calc.prorate(full, covered, length, window, "period")
    steps.append(step)
    value, _ = exact_decimal(exact)
    inputs, sources = _fee_inputs(calc, charge)
    inputs["proration"] = step["params"]["fraction"]
    priced = _Priced(
        quantity=quantity,
        exact=value,
        unit_price=calc.unit_price(charge.price, Fraction(value), quantity, Fraction(covered, length)),
        inputs=inputs,
        sources=sources,
        steps=steps,
    )
    return calc.finish(
        kind="charge", charge=charge, event_type="fee", display_name=charge.display_name, window=window, priced=priced, rate=rate
    )


def _check_coverage(reading: Usage) -> None:
    c = reading.coverage
    if c is None:
        return
    values = (c.usage, c.covered, c.billable, *(g.covered for g in c.grants))
    if any(not v.is_finite() or v < 0 for v in values) or c.billable > c.usage or c.usage != reading.quantity:
        raise CalculationInputError(
            "COVERAGE_INCONSISTENT",
            f"coverage of price {reading.price_id} over {_date_span(reading.window)}: usage {c.usage}, covered {c.covered}, "
            f"billable {c.billable} for a reading of {reading.quantity}",
        )


def _allow_step(coverage: Coverage) -> dict[str, Any]:
    """The grants' part of the quantity (Paygentic's ``allow``: units a grant covered)."""
    return {
        "op": "allow",
        "on": "quantity",
        "in": {"quantity": _plain(coverage.usage)},
        "out": {"quantity": _plain(coverage.billable)},
        "params": {
            "covered": _plain(coverage.covered),
            "isSoftLimit": coverage.is_soft_limit,
            "grants": [{"grantId": g.grant_id, "covered": _plain(g.covered)} for g in coverage.grants],
            "description": "usage - covered (soft limit)" if coverage.is_soft_limit else "nothing beyond the grants (hard limit)",
        },
        "source": "entitlement",
    }


def _entitlement_source(coverage: Coverage) -> dict[str, Any]:
    return {
        "type": "entitlement",
        "ref": {"entitlementId": coverage.entitlement_id},
        "asUsed": {"usage": _plain(coverage.usage), "covered": _plain(coverage.covered), "billable": _plain(coverage.billable)},
        "reason": "grants cover the included quantity",
    }


def _with_coverage(line: Line, coverage: Coverage | None) -> Line:
    if coverage is not None:
        line.provenance["coverage"] = coverage.record()
    return line


def _metered(calc: _Calculator, charge: Charge, rate: _Rate, reading: Usage) -> Line:
    _check_coverage(reading)
    coverage = reading.coverage
    priced_calc = calculate(charge.price, reading.billable, calc.currency)
    exact = priced_calc.exact_amount_atomic
    sources: dict[str, Any] = {
        "price": {"type": "price", "ref": charge.price_id},
        "usage": {
            "type": "meter",
            "ref": charge.source_id,
            "asUsed": _plain(priced_calc.quantity if coverage is None else reading.quantity),
            "reason": "usage of the window, not prorated",
        },
    }
    steps = calc.pricing_steps(priced_calc, charge.price_id)
    if coverage is not None:
        sources["entitlement"] = _entitlement_source(coverage)
        steps.insert(0, _allow_step(coverage))
    priced = _Priced(
        quantity=priced_calc.quantity,
        exact=exact,
        unit_price=calc.unit_price(charge.price, Fraction(exact), priced_calc.quantity, Fraction(1)),
        inputs={
            "kind": "priced",
            "quantity": _plain(priced_calc.quantity),
            "selector": dict(reading.query),
            "price": {"fn": calc.price_fn(charge.price), "source": charge.price_id},
        },
        sources=sources,
        steps=steps,
    )
    line = calc.finish(
        kind="charge", charge=charge, event_type="usage", display_name=charge.display_name, window=reading.window, priced=priced, rate=rate
    )
    return _with_coverage(line, coverage)


def _credit(calc: _Calculator, charge: Charge, row: Billed, credit_window: Window) -> Line | None:
    start = max(row.window.start, credit_window.start)
    end = min(row.window.end, credit_window.end)
    covered = _micros(end - start)
    length = _micros(row.window.end - row.window.start)
    if covered <= 0 or length <= 0:
        return None
    window = Window(start, end, row.window.period_start, row.window.period_end, row.window.period_index)
    negated = -Fraction(row.exact_amount)
    exact, step = calc.prorate(negated, covered, length, window, "billedWindow")
    value, _ = exact_decimal(exact)
    steps: list[dict[str, Any]] = [
        {
            "op": "scale",
            "on": "amount",
            "in": {"amount": calc.major(row.exact_amount)},
            "out": {"amount": calc.major(-row.exact_amount)},
            "params": {"factor": "-1", "description": "credit the unused part of the charge as it was billed"},
            "source": "billed",
        },
        step,
    ]
    rate = calc.rate_for(charge)
    if row.tax_rate is not None:
        # As billed: the credit returns the tax the credited line charged, at its rate.
        rate = _Rate(
            row.tax_rate.scaleb(2, context=exact_context()), {"type": "billedLine", "ref": row.invoice_id, "asUsed": _plain(row.tax_rate)}
        )
    priced = _Priced(
        quantity=row.quantity,
        exact=value,
        unit_price=Decimal(0) if row.quantity == 0 else exact_decimal(Fraction(value) / Fraction(row.quantity))[0],
        inputs={
            "kind": "fromLine",
            "quantity": _plain(row.quantity),
            "amount": calc.major(row.exact_amount),
            "price": {"fn": calc.price_fn(charge.price), "source": charge.price_id},
            "billedWindow": {"start": _iso(row.window.start), "end": _iso(row.window.end)},
        },
        sources={
            "billed": {
                "type": "invoiceLine",
                "ref": row.invoice_id,
                "asUsed": calc.major(row.exact_amount),
                "reason": "in_advance charge billed for the period",
            },
            "price": {"type": "price", "ref": charge.price_id},
        },
        steps=steps,
    )
    return calc.finish(
        kind="credit",
        charge=charge,
        event_type="fee",
        display_name=f"{charge.display_name} (unused time {_date_span(window)})",
        window=window,
        priced=priced,
        rate=rate,
    )


def _correction(calc: _Calculator, charge: Charge, rate: _Rate, reading: Usage, prior: Sequence[Billed]) -> Line | None:
    _check_coverage(reading)
    coverage = reading.coverage
    ctx = exact_context()
    billed_exact = sum((row.exact_amount for row in prior), Decimal(0))
    billed_quantity = sum((row.quantity for row in prior), Decimal(0))
    rerated = calculate(charge.price, reading.billable, calc.currency)
    difference = ctx.subtract(rerated.exact_amount_atomic, billed_exact)
    if difference == 0:
        return None
    quantity = ctx.subtract(rerated.quantity, billed_quantity)
    steps = calc.pricing_steps(rerated, charge.price_id)
    if coverage is not None:
        steps.insert(0, _allow_step(coverage))
    steps.append(
        {
            "op": "subtract",
            "on": "amount",
            "in": {"amount": calc.major(rerated.exact_amount_atomic), "billed": calc.major(billed_exact)},
            "out": {"amount": calc.major(difference)},
            "params": {
                "description": "the period re-rated with all its usage now, minus what was billed for it",
                "invoices": ",".join(r.invoice_id for r in prior),
            },
            "source": "billed",
        }
    )
    window = reading.window
    priced = _Priced(
        quantity=quantity,
        exact=difference,
        unit_price=Decimal(0) if quantity == 0 else exact_decimal(Fraction(difference) / Fraction(quantity))[0],
        inputs={
            "kind": "priced",
            "quantity": _plain(rerated.quantity),
            "selector": dict(reading.query),
            "price": {"fn": calc.price_fn(charge.price), "source": charge.price_id},
            "billedQuantity": _plain(billed_quantity),
            "billedAmount": calc.major(billed_exact),
        },
        sources={
            "price": {"type": "price", "ref": charge.price_id},
            "usage": {
                "type": "meter",
                "ref": charge.source_id,
                "asUsed": _plain(rerated.quantity if coverage is None else reading.quantity),
                "reason": "all usage of the corrected period now",
            },
            "billed": {"type": "invoiceLine", "ref": ",".join(r.invoice_id for r in prior), "asUsed": calc.major(billed_exact)},
            **({"entitlement": _entitlement_source(coverage)} if coverage is not None else {}),
        },
        steps=steps,
    )
    line = calc.finish(
        kind="correction",
        charge=charge,
        event_type="usage",
        display_name=f"{charge.display_name} (correction for {_date_span(window)})",
        window=window,
        priced=priced,
        rate=rate,
        corrects=window,
    )
    return _with_coverage(line, coverage)


def _rounding_line(calc: _Calculator, carry: Carry, exact_after: Decimal, lines_sum: int, target: int, settle: int) -> Line:
    provenance: dict[str, Any] = {
        "status": "recorded",
        "version": PROVENANCE_VERSION,
        "currency": calc.currency,
        "precision": calc.precision(),
        "inputs": {
            "kind": "given",
            "amount": calc.major(settle),
            "exactTotalBefore": calc.major(carry.exact_total),
            "billedTotalBefore": calc.major(carry.billed_total),
        },
        "sources": {"carry": {"type": "roundingCarry", "reason": "billed cumulative total = round_half_up(exact cumulative total)"}},
        "steps": [
            {
                "op": "round",
                "on": "exactTotal",
                "in": {"exactTotal": calc.major(exact_after)},
                "out": {"exactTotal": calc.major(target)},
                "params": {"mode": ROUNDING_MODE, "scale": calc.exponent},
                "source": "carry",
            },
            {
                "op": "subtract",
                "on": "amount",
                "in": {
                    "roundedExactTotal": calc.major(target),
                    "billedTotalBefore": calc.major(carry.billed_total),
                    "lines": calc.major(lines_sum),
                },
                "out": {"amount": calc.major(settle)},
                "params": {"description": "settle the difference left by each line's own rounding; not taxed"},
                "source": "carry",
            },
        ],
        "result": {
            "amount": calc.major(settle),
            "quantity": "1",
            "unitPrice": calc.major(settle),
            "taxRate": "0",
            "tax": calc.major(0),
            "total": calc.major(settle),
        },
    }
    return Line(
        kind="rounding",
        price_id=None,
        source_id=None,
        event_type="discount" if settle < 0 else "fee",
        display_name=ROUNDING_LINE_NAME,
        payment_term=None,
        window=None,
        quantity=Decimal(1),
        unit_price=Decimal(settle),
        exact_amount=Decimal(0),
        amount=settle,
        tax_rate=Decimal(0),
        tax=0,
        total=settle,
        corrects=None,
        provenance=provenance,
        priced_exact_amount=Decimal(0),
        priced_amount=settle,
    )
