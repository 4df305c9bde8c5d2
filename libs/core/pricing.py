"""Price maths: a quantity and a price model in, one rounded line amount out.

Invoicing stores the steps returned here as the line's calculation provenance, so a
customer (or support) can replay the bill by hand. Arithmetic is exact on Decimal
quantities and integer atomic prices; the only rounding is the last step, half up (a half
away from zero) to the currency's minor unit, once per line (DESIGN.md section 3). The sub-minor
remainder is returned, not dropped, so the caller can carry it to the next invoice.

Models:

* standard (Paygentic): quantity x unit price; the unit price may be negative (a
  usage rebate). Whether a rebate may take an invoice below zero is an invoice-level
  rule, not this module's.
* volume (Paygentic): the band containing the total quantity prices every unit, plus
  that band's flat fee once.
* graduated (Accrue extension): units fill bands in order, each at its band's price,
  plus the flat fee of every band that received units.
* package (Accrue extension): a price per started (``up``) or completed (``down``)
  package of ``package_size`` units.

Volume and graduated deliberately differ at zero usage: zero lies in the first volume
band (its floor 0 is inclusive), so its flat fee is charged, whereas a graduated band
is only "touched" by units it actually holds, so zero usage costs nothing.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from decimal import Decimal, DecimalException, localcontext
from functools import partial
from typing import Literal

from libs.core.errors import InvalidArgument
from libs.core.money import (
    ATOMIC_PLACES,
    MAX_ABS_DECIMAL,
    currency_exponent,
    exact_context,
    round_to_minor,
)
from libs.core.money import ROUNDING_MODE as ROUNDING_MODE

# ---------------------------------------------------------------------------------------
# Models
# ---------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class StandardPrice:
    unit_price_atomic: int

    def __post_init__(self) -> None:
        _require_int(self.unit_price_atomic, "unit_price_atomic")


@dataclass(frozen=True, slots=True)
class Tier:
    """One band of a ladder; ``up_to`` is the inclusive upper bound, None = no bound.

    The lower bound is implicit (the previous band's ``up_to``, exclusive) so a ladder
    cannot have gaps or overlaps by construction.
    """

    up_to: Decimal | None
    unit_price_atomic: int
    flat_fee_atomic: int = 0

    def __post_init__(self) -> None:
        _require_int(self.unit_price_atomic, "unit_price_atomic")
        _require_int(self.flat_fee_atomic, "flat_fee_atomic")


def _coerce_tiers(owner: object, tiers: Sequence[Tier]) -> None:
    # Frozen dataclasses hash and compare their fields; a list would make the price
    # unhashable and leave it mutable from outside, so lists are frozen into tuples.
    object.__setattr__(owner, "tiers", tuple(tiers))
    validate_tiers(tiers)


@dataclass(frozen=True, slots=True)
class VolumePrice:
    tiers: tuple[Tier, ...]

    def __post_init__(self) -> None:
        _coerce_tiers(self, self.tiers)


@dataclass(frozen=True, slots=True)
class GraduatedPrice:
    tiers: tuple[Tier, ...]

    def __post_init__(self) -> None:
        _coerce_tiers(self, self.tiers)


@dataclass(frozen=True, slots=True)
class PackagePrice:
    package_size: Decimal
    package_price_atomic: int
    rounding: Literal["up", "down"] = "up"

    def __post_init__(self) -> None:
        _require_int(self.package_price_atomic, "package_price_atomic")
        size = self.package_size
        if not isinstance(size, Decimal) or not size.is_finite() or size <= 0:
            raise InvalidArgument(
                "properties.packageSize",
                f"properties.packageSize must be a decimal greater than 0, got {size!r}",
                reason="PACKAGE_SIZE_NOT_POSITIVE",
            )
        if self.package_price_atomic < 0:
            raise InvalidArgument(
                "properties.packagePrice",
                "properties.packagePrice must not be negative",
                reason="NEGATIVE_PACKAGE_PRICE",
            )
        if self.rounding not in ("up", "down"):
            raise InvalidArgument(
                "properties.rounding",
                f"properties.rounding must be 'up' or 'down', got {self.rounding!r}",
                reason="INVALID_PACKAGE_ROUNDING",
            )


Price = StandardPrice | VolumePrice | GraduatedPrice | PackagePrice


def _require_int(value: object, name: str) -> None:
    # Prices are atomic integers by the time they reach a model; a Decimal or float
    # here means a conversion was skipped upstream, which is a bug, not bad input.
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int of atomic units, got {type(value).__name__}")


def validate_tiers(tiers: Sequence[Tier], field_prefix: str = "properties.tiers") -> None:
    """Reject a ladder that could price some quantity ambiguously or not at all.

    Errors name the exact element (``properties.tiers[2].upTo``) because a ladder is
    edited by hand and "tiers are invalid" leaves the merchant hunting. The first
    problem in ladder order is reported.
    """
    if len(tiers) == 0:
        raise InvalidArgument(
            field_prefix,
            f"{field_prefix} must contain at least one tier",
            reason="EMPTY_TIERS",
        )
    last = len(tiers) - 1
    previous: Decimal | None = None
    for index, tier in enumerate(tiers):
        here = f"{field_prefix}[{index}]"
        bound = f"{here}.upTo"
        if not isinstance(tier, Tier):
            raise InvalidArgument(here, f"{here} must be a tier", reason="INVALID_TIER")
        up_to = tier.up_to
        if up_to is None:
            if index != last:
                later = next(
                    (j for j in range(index + 1, len(tiers)) if getattr(tiers[j], "up_to", 0) is None),
                    None,
                )
                if later is not None:
                    raise InvalidArgument(
                        f"{field_prefix}[{later}].upTo",
                        f"{field_prefix}[{later}].upTo: only one tier may be open-ended (upTo null); {bound} already is",
                        reason="MULTIPLE_OPEN_ENDED_TIERS",
                    )
                raise InvalidArgument(
                    bound,
                    f"{bound} is null, but only the last tier may be open-ended",
                    reason="OPEN_ENDED_TIER_NOT_LAST",
                )
        else:
            if not isinstance(up_to, Decimal) or not up_to.is_finite():
                raise InvalidArgument(
                    bound,
                    f"{bound} must be a finite decimal, got {up_to!r}",
                    reason="INVALID_DECIMAL",
                )
            if up_to <= 0:
                raise InvalidArgument(
                    bound,
                    f"{bound} must be greater than 0, got {up_to}",
                    reason="TIER_BOUND_NOT_POSITIVE",
                )
            if up_to >= MAX_ABS_DECIMAL:
                raise InvalidArgument(
                    bound,
                    f"{bound} must be less than 1e65",
                    reason="DECIMAL_OUT_OF_RANGE",
                )
            if previous is not None and up_to <= previous:
                raise InvalidArgument(
                    bound,
                    f"{bound} ({up_to}) must be greater than the previous tier's upTo ({previous}); tiers must be strictly ascending",
                    reason="TIERS_NOT_ASCENDING",
                )
            if index == last:
                raise InvalidArgument(
                    bound,
                    f"{bound} must be null: the last tier has no upper bound, so every quantity has a price",
                    reason="MISSING_OPEN_ENDED_TIER",
                )
            previous = up_to
        if tier.unit_price_atomic < 0:
            raise InvalidArgument(
                f"{here}.unitPrice",
                f"{here}.unitPrice must not be negative",
                reason="NEGATIVE_TIER_PRICE",
            )
        if tier.flat_fee_atomic < 0:
            raise InvalidArgument(
                f"{here}.flatFee",
                f"{here}.flatFee must not be negative",
                reason="NEGATIVE_FLAT_FEE",
            )


# ---------------------------------------------------------------------------------------
# Provenance
# ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CalculationStep:
    """One replayable step. Values are exact decimal strings, never exponent notation.

    Money values are in major units (what an invoice shows); quantities are as given.
    """

    kind: str
    description: str
    inputs: dict[str, str] = field(default_factory=dict)
    outputs: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class PriceCalculation:
    quantity: Decimal
    exact_amount_atomic: Decimal
    amount_atomic: int
    currency: str
    steps: tuple[CalculationStep, ...]

    @property
    def remainder_atomic(self) -> Decimal:
        """What rounding took away (positive) or added (negative); carry it forward."""
        return exact_context().subtract(self.exact_amount_atomic, self.amount_atomic)


def _plain(value: Decimal | int) -> str:
    """Exact decimal text without exponent notation (format "f" never rounds)."""
    if isinstance(value, int):
        return str(value)
    text = format(value.normalize(exact_context()), "f")
    return "0" if text in ("-0", "0") else text


def _major(atomic: Decimal | int, places: int) -> str:
    """Atomic amount as exact major units, padded to the currency's minor places.

    Padding makes provenance read like the invoice ("2.47", "100" for JPY), while
    anything finer than the minor unit (a unit price of 0.00002) is still shown in full.
    """
    value = Decimal(atomic).scaleb(-ATOMIC_PLACES, context=exact_context())
    whole, _, fraction = _plain(value).partition(".")
    fraction = fraction.ljust(places, "0")
    return f"{whole}.{fraction}" if fraction else whole


_Formatter = Callable[[Decimal | int], str]


def _bound(value: Decimal | None) -> str:
    return "null" if value is None else _plain(value)


# ---------------------------------------------------------------------------------------
# Calculation
# ---------------------------------------------------------------------------------------


def calculate(price: Price, quantity: Decimal, currency: str) -> PriceCalculation:
    """Price ``quantity`` exactly, then round once to the currency's minor unit."""
    exponent = currency_exponent(currency)
    quantity = _check_quantity(quantity)
    fmt: _Formatter = partial(_major, places=exponent)
    try:
        with localcontext(exact_context()):
            if isinstance(price, StandardPrice):
                exact, steps = _standard(price, quantity, fmt)
            elif isinstance(price, VolumePrice):
                exact, steps = _volume(price, quantity, fmt)
            elif isinstance(price, GraduatedPrice):
                exact, steps = _graduated(price, quantity, fmt)
            elif isinstance(price, PackagePrice):
                exact, steps = _package(price, quantity, fmt)
            else:
                raise TypeError(f"unsupported price model {type(price).__name__}")
            rounded = round_to_minor(exact, currency)
            remainder = exact - rounded
    except DecimalException as exc:
        # Only reachable with inputs hundreds of digits long; say so rather than round.
        raise InvalidArgument(
            "quantity",
            "quantity and price need more digits than can be computed exactly",
            reason="PRECISION_EXCEEDED",
        ) from exc
    steps.append(
        CalculationStep(
            kind="round",
            description=(
                f"round once, half up, to {exponent} decimal places (the {currency} minor unit); the remainder is carried forward"
            ),
            inputs={
                "amount": fmt(exact),
                "scale": str(exponent),
                "mode": ROUNDING_MODE,
            },
            outputs={"amount": fmt(rounded), "remainder": fmt(remainder)},
        )
    )
    return PriceCalculation(
        quantity=quantity,
        exact_amount_atomic=exact,
        amount_atomic=rounded,
        currency=currency,
        steps=tuple(steps),
    )


def _check_quantity(quantity: object) -> Decimal:
    if isinstance(quantity, bool) or not isinstance(quantity, (Decimal, int)):
        # A float quantity is a bug upstream (metering aggregates to Decimal).
        raise TypeError(f"quantity must be a Decimal, got {type(quantity).__name__}")
    value = Decimal(quantity)
    if not value.is_finite():
        raise InvalidArgument(
            "quantity",
            f"quantity must be a finite number, got {value}",
            reason="INVALID_DECIMAL",
        )
    if value < 0:
        raise InvalidArgument(
            "quantity",
            f"quantity must not be negative, got {_plain(value)}",
            reason="NEGATIVE_QUANTITY",
        )
    if value >= MAX_ABS_DECIMAL:
        raise InvalidArgument("quantity", "quantity must be less than 1e65", reason="DECIMAL_OUT_OF_RANGE")
    # -0 would otherwise print as "-0" in provenance.
    return value.copy_abs()


Steps = list[CalculationStep]


def _multiply(units: Decimal, unit_price: int, what: str, fmt: _Formatter) -> tuple[Decimal, CalculationStep]:
    amount = units * unit_price
    return amount, CalculationStep(
        kind="multiply",
        description=f"{what}: {_plain(units)} x {fmt(unit_price)}",
        inputs={"quantity": _plain(units), "unitPrice": fmt(unit_price)},
        outputs={"amount": fmt(amount)},
    )


def _standard(price: StandardPrice, quantity: Decimal, fmt: _Formatter) -> tuple[Decimal, Steps]:
    amount, step = _multiply(quantity, price.unit_price_atomic, "quantity x unit price", fmt)
    return amount, [step]


def _select_band(tiers: Sequence[Tier], quantity: Decimal) -> tuple[int, Decimal]:
    """Index of the first band with quantity <= upTo, and that band's exclusive floor."""
    floor = Decimal(0)
    for index, tier in enumerate(tiers):
        if tier.up_to is None or quantity <= tier.up_to:
            return index, floor
        floor = tier.up_to
    # validate_tiers guarantees an open-ended last band, so this is a broken invariant.
    raise AssertionError("tier ladder has no open-ended band")


def _volume(price: VolumePrice, quantity: Decimal, fmt: _Formatter) -> tuple[Decimal, Steps]:
    index, floor = _select_band(price.tiers, quantity)
    tier = price.tiers[index]
    upper = "no upper bound" if tier.up_to is None else f"up to {_plain(tier.up_to)}"
    lower = "from 0" if index == 0 else f"above {_plain(floor)}"
    steps: Steps = [
        CalculationStep(
            kind="select_band",
            description=(f"quantity {_plain(quantity)} falls in band {index} ({lower}, {upper}); its unit price applies to every unit"),
            inputs={"quantity": _plain(quantity)},
            outputs={
                "band": str(index),
                "from": _plain(floor),
                "upTo": _bound(tier.up_to),
                "unitPrice": fmt(tier.unit_price_atomic),
                "flatFee": fmt(tier.flat_fee_atomic),
            },
        )
    ]
    amount, step = _multiply(quantity, tier.unit_price_atomic, f"all units at band {index}", fmt)
    steps.append(step)
    if tier.flat_fee_atomic:
        total = amount + tier.flat_fee_atomic
        steps.append(
            CalculationStep(
                kind="flat_fee",
                description=f"add band {index}'s flat fee once",
                inputs={
                    "amount": fmt(amount),
                    "flatFee": fmt(tier.flat_fee_atomic),
                },
                outputs={"amount": fmt(total)},
            )
        )
        amount = total
    return amount, steps


def _graduated(price: GraduatedPrice, quantity: Decimal, fmt: _Formatter) -> tuple[Decimal, Steps]:
    steps: Steps = []
    band_amounts: dict[str, str] = {}
    total = Decimal(0)
    floor = Decimal(0)
    for index, tier in enumerate(price.tiers):
        if quantity <= floor:
            break
        ceiling = quantity if tier.up_to is None else min(quantity, tier.up_to)
        units = ceiling - floor
        usage = units * tier.unit_price_atomic
        band_total = usage + tier.flat_fee_atomic
        steps.append(
            CalculationStep(
                kind="band",
                description=(
                    f"band {index}: {_plain(units)} units above {_plain(floor)} "
                    f"at {fmt(tier.unit_price_atomic)}" + (f" plus flat fee {fmt(tier.flat_fee_atomic)}" if tier.flat_fee_atomic else "")
                ),
                inputs={
                    "from": _plain(floor),
                    "upTo": _bound(tier.up_to),
                    "units": _plain(units),
                    "unitPrice": fmt(tier.unit_price_atomic),
                    "flatFee": fmt(tier.flat_fee_atomic),
                },
                outputs={"amount": fmt(band_total)},
            )
        )
        band_amounts[f"band{index}"] = fmt(band_total)
        total += band_total
        if tier.up_to is None:
            break
        floor = tier.up_to
    steps.append(
        CalculationStep(
            kind="sum",
            description="sum of the bands that received units",
            inputs=band_amounts,
            outputs={"amount": fmt(total)},
        )
    )
    return total, steps


def _package(price: PackagePrice, quantity: Decimal, fmt: _Formatter) -> tuple[Decimal, Steps]:
    # Decimal // and % are exact here (the context traps Inexact) and, with both
    # operands non-negative, // is the floor.
    whole, leftover = divmod(quantity, price.package_size)
    packages = whole + 1 if price.rounding == "up" and leftover else whole
    steps: Steps = [
        CalculationStep(
            kind="package",
            description=(
                f"{_plain(quantity)} units in packages of {_plain(price.package_size)}, "
                + ("every started package counts" if price.rounding == "up" else "only completed packages count")
            ),
            inputs={
                "quantity": _plain(quantity),
                "packageSize": _plain(price.package_size),
                "rounding": price.rounding,
            },
            outputs={"packages": _plain(packages)},
        )
    ]
    amount = packages * price.package_price_atomic
    steps.append(
        CalculationStep(
            kind="multiply",
            description=f"{_plain(packages)} packages x {fmt(price.package_price_atomic)}",
            inputs={
                "packages": _plain(packages),
                "packagePrice": fmt(price.package_price_atomic),
            },
            outputs={"amount": fmt(amount)},
        )
    )
    return amount, steps
