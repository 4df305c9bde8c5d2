"""The catalog's validation rules, pure: plain values in, normalized values out.

Every rule raises InvalidArgument naming the field in its REST spelling, so the merchant
sees exactly what to fix and nothing is written. Nothing here does I/O.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from typing import Any

from libs.core import jsonpath as jsonpath_grammar
from libs.core import money, paging
from libs.core.errors import InvalidArgument
from libs.core.pricing import GraduatedPrice, PackagePrice, StandardPrice, Tier, VolumePrice, validate_tiers

# Paygentic's seven, then Accrue's: nearest-rank percentiles (P50, P95, P99) and
# TIME_WEIGHTED_SUM (value-hours, e.g. GB-hours); see services/metering/aggregations.py.
AGGREGATIONS = ("SUM", "COUNT", "AVG", "MIN", "MAX", "UNIQUE_COUNT", "LATEST", "P50", "P95", "P99", "TIME_WEIGHTED_SUM")
AGGREGATIONS_NEEDING_VALUE = ("SUM", "AVG", "MIN", "MAX", "LATEST", "P50", "P95", "P99", "TIME_WEIGHTED_SUM")
FEATURE_TYPES = ("boolean", "static", "metered")
PAYMENT_TERMS = ("in_advance", "in_arrears")
PRICE_MODELS = ("standard", "volume", "graduated", "package")
RATE_TYPES = ("amount", "proportion")
SUPPLY_SCOPES = ("IN_SCOPE", "OUTSIDE_SCOPE")
PLAN_CADENCES = ("P1M", "P3M", "P1Y")
INTERVAL_TO_CADENCE = {"monthly": "P1M", "quarterly": "P3M", "yearly": "P1Y", "annual": "P1Y"}
CADENCE_TO_INTERVAL = {"P1M": "monthly", "P3M": "quarterly", "P1Y": "yearly"}
TAX_BEHAVIORS = ("exclusive", "inclusive")
EFFECTIVE_DATES = ("end_of_current_period", "immediate")
ENTITLEMENT_TEMPLATE_KEYS = (
    "type",
    "config",
    "usagePeriod",
    "issueAfterResetPriority",
    "issueAfterReset",
    "isSoftLimit",
    "resetMaxRollover",
    "resetMinRollover",
    "preserveOverageAtReset",
)
# Tier bounds and band prices: at most 6 decimal places (Paygentic's rule).
TIER_PLACES = 6


@dataclass(frozen=True)
class Limits:
    """How large a catalog request may be, in one place: the rules below enforce these,
    the README's limits table and the OpenAPI document cite them. Lengths count
    characters (Unicode code points). The numbers follow Stripe's where Stripe has one
    (metadata: 50 keys, 40-character keys, 500-character values).
    """

    tiers: int = 100  # properties.tiers of a volume or graduated price
    metadata_keys: int = 50  # metadata of products and features
    metadata_key_length: int = 40
    metadata_value_length: int = 500
    name: int = 255  # name and every other one-line text: unit, eventType, itemId, invoiceDisplayName, ...
    description: int = 5000
    plan_prices: int = 100  # prices of a plan (version)
    group_by_dimensions: int = 20  # groupBy of a billable metric
    group_by_name_length: int = 40
    jsonpath_length: int = 255  # valueProperty and groupBy paths
    page_size: int = 100  # limit of every list; offset must be 0 or more


LIMITS = Limits()

_FEATURE_KEY = re.compile(r"[a-z0-9][a-z0-9-]{0,63}")
_LINE_KEY = re.compile(r"[a-z0-9][a-z0-9_-]{0,63}")
_DURATION = re.compile(r"P(?:(\d+)Y)?(?:(\d+)M)?(?:(\d+)W)?(?:(\d+)D)?")


def one_of(value: str, allowed: tuple[str, ...], field_name: str) -> str:
    if value not in allowed:
        raise InvalidArgument(field_name, f"{field_name} must be one of {', '.join(allowed)}; got {value!r}", reason="INVALID_ENUM_VALUE")
    return value


def required_text(value: str, field_name: str, *, max_length: int = LIMITS.name) -> str:
    text = value.strip()
    if not text:
        raise InvalidArgument(field_name, f"{field_name} is required", reason="REQUIRED")
    if len(text) > max_length:
        raise InvalidArgument(field_name, f"{field_name} is longer than {max_length} characters", reason="TOO_LONG")
    return text


def optional_text(value: str, field_name: str, *, max_length: int = LIMITS.description) -> str:
    if len(value) > max_length:
        raise InvalidArgument(field_name, f"{field_name} is longer than {max_length} characters", reason="TOO_LONG")
    return value


def nullable_text(value: str | None, field_name: str, *, max_length: int = LIMITS.name) -> str | None:
    """An optional field that may be absent (None): checked only when present."""
    return None if value is None else optional_text(value, field_name, max_length=max_length)


def _shown(key: str) -> str:
    # a refused key may be huge; the message quotes only its start
    return repr(key if len(key) <= 60 else key[:60] + "...")


def metadata(values: Mapping[str, str], field_name: str = "metadata") -> dict[str, str]:
    """A free-form string map: at most 50 keys of at most 40 characters, values of at most 500.

    A key that is too long is reported on the map itself (``metadata``), since the key
    cannot name a field; a value that is too long on its key (``metadata.plan``).
    """
    if len(values) > LIMITS.metadata_keys:
        raise InvalidArgument(
            field_name,
            f"{field_name} has {len(values)} keys; at most {LIMITS.metadata_keys} are allowed",
            reason="TOO_MANY_METADATA_KEYS",
        )
    for key, value in values.items():
        if len(key) > LIMITS.metadata_key_length:
            raise InvalidArgument(
                field_name,
                f"{field_name} key {_shown(key)} is longer than {LIMITS.metadata_key_length} characters",
                reason="KEY_TOO_LONG",
            )
        if len(value) > LIMITS.metadata_value_length:
            here = f"{field_name}.{key}"
            raise InvalidArgument(here, f"{here} is longer than {LIMITS.metadata_value_length} characters", reason="TOO_LONG")
    return dict(values)


def jsonpath(value: str, field_name: str) -> str:
    if len(value) > LIMITS.jsonpath_length:
        raise InvalidArgument(field_name, f"{field_name} is longer than {LIMITS.jsonpath_length} characters", reason="TOO_LONG")
    if not jsonpath_grammar.is_jsonpath(value):
        raise InvalidArgument(
            field_name,
            f"{field_name} must be a JSONPath starting with '$.' such as '$.tokens'; got {value!r}",
            reason="INVALID_JSONPATH",
        )
    return value


def metric_value_property(aggregation: str, value_property: str | None) -> str | None:
    if value_property is not None and value_property != "":
        return jsonpath(value_property, "valueProperty")
    if aggregation in AGGREGATIONS_NEEDING_VALUE:
        raise InvalidArgument("valueProperty", f"valueProperty is required for {aggregation} aggregation", reason="REQUIRED")
    return None


def group_by(mapping: dict[str, str]) -> dict[str, str]:
    if len(mapping) > LIMITS.group_by_dimensions:
        raise InvalidArgument(
            "groupBy",
            f"groupBy has {len(mapping)} dimensions; at most {LIMITS.group_by_dimensions} are allowed",
            reason="TOO_MANY_DIMENSIONS",
        )
    for name, path in mapping.items():
        if not name.strip():
            raise InvalidArgument("groupBy", "groupBy dimension names must not be empty", reason="REQUIRED")
        if len(name) > LIMITS.group_by_name_length:
            raise InvalidArgument(
                "groupBy",
                f"groupBy dimension name {_shown(name)} is longer than {LIMITS.group_by_name_length} characters",
                reason="KEY_TOO_LONG",
            )
        jsonpath(path, f"groupBy.{name}")
    return dict(mapping)


def feature_key(value: str) -> str:
    if not _FEATURE_KEY.fullmatch(value):
        raise InvalidArgument(
            "key",
            f"key must be 1-64 lowercase letters, digits and hyphens, starting with a letter or digit; got {value!r}",
            reason="INVALID_KEY",
        )
    return value


def line_key(value: str, field_name: str) -> str:
    if not _LINE_KEY.fullmatch(value):
        raise InvalidArgument(
            field_name,
            f"{field_name} must start with [a-z0-9], then [a-z0-9_-], at most 64 characters; got {value!r}",
            reason="INVALID_KEY",
        )
    return value


def duration(value: str, field_name: str) -> str:
    """ISO-8601 calendar durations of whole days, weeks, months and years (P0D = one-time)."""
    match = _DURATION.fullmatch(value)
    if not match or not any(group is not None for group in match.groups()):
        raise InvalidArgument(
            field_name,
            f"{field_name} must be an ISO-8601 duration such as P1M, P1Y or P0D; got {value!r}",
            reason="INVALID_DURATION",
        )
    return value


def currency(value: str) -> str:
    if not money.is_known_currency(value):
        raise InvalidArgument("currency", f"currency must be an ISO 4217 code such as USD; got {value!r}", reason="UNKNOWN_CURRENCY")
    return value


def page(limit: int | None, offset: int | None) -> tuple[int, int]:
    """A catalog list's (limit, offset): the one paging rule of libs/core/paging.py."""
    found = paging.page(limit, offset, maximum=LIMITS.page_size)
    return found.limit, found.offset


# --- prices -------------------------------------------------------------------------


@dataclass(frozen=True)
class PriceProperties:
    """A price's properties as stored: atomic integers for money, exact strings for
    quantities. ``stored`` is the JSONB document; ``model`` the price-maths object."""

    stored: dict[str, Any]
    model: StandardPrice | VolumePrice | GraduatedPrice | PackagePrice


def _only_keys(props: dict[str, Any], allowed: tuple[str, ...], model: str) -> None:
    for key in props:
        if key not in allowed:
            raise InvalidArgument(
                f"properties.{key}",
                f"properties.{key} is not a property of the {model} model (allowed: {', '.join(allowed)})",
                reason="UNKNOWN_PROPERTY",
            )


def _money(props: dict[str, Any], key: str, field_name: str, *, allow_negative: bool, max_places: int | None = 9) -> int:
    if key not in props:
        raise InvalidArgument(field_name, f"{field_name} is required", reason="REQUIRED")
    value = money.parse_decimal(props[key], field_name, max_places=max_places, allow_negative=allow_negative)
    return money.major_to_atomic(value, field_name)


def _tiers(props: dict[str, Any], model: str) -> tuple[Tier, ...]:
    raw = props.get("tiers")
    if not isinstance(raw, list) or not raw:
        raise InvalidArgument("properties.tiers", f"properties.tiers is required for the {model} model", reason="REQUIRED")
    if len(raw) > LIMITS.tiers:
        raise InvalidArgument(
            "properties.tiers",
            f"properties.tiers has {len(raw)} tiers; at most {LIMITS.tiers} are allowed",
            reason="TOO_MANY_TIERS",
        )
    tiers = []
    for index, item in enumerate(raw):
        here = f"properties.tiers[{index}]"
        if not isinstance(item, dict):
            raise InvalidArgument(here, f"{here} must be an object {{upTo, unitPrice}}", reason="INVALID_TIER")
        allowed = ("upTo", "unitPrice", "flatFee") if model == "graduated" or model == "volume" else ("upTo", "unitPrice")
        for key in item:
            if key not in allowed:
                raise InvalidArgument(f"{here}.{key}", f"{here}.{key} is not a tier field", reason="UNKNOWN_PROPERTY")
        if "upTo" not in item:
            raise InvalidArgument(f"{here}.upTo", f"{here}.upTo is required (null on the last band)", reason="REQUIRED")
        up_to = None
        if item["upTo"] is not None:
            up_to = money.parse_decimal(item["upTo"], f"{here}.upTo", max_places=TIER_PLACES, allow_negative=False)
        unit_price = _money(item, "unitPrice", f"{here}.unitPrice", allow_negative=False, max_places=TIER_PLACES)
        flat_fee = 0
        if item.get("flatFee") is not None:
            flat_fee = _money(item, "flatFee", f"{here}.flatFee", allow_negative=False)
        tiers.append(Tier(up_to=up_to, unit_price_atomic=unit_price, flat_fee_atomic=flat_fee))
    validate_tiers(tiers, "properties.tiers")
    return tuple(tiers)


def price_properties(model: str, props: dict[str, Any], *, metered: bool) -> PriceProperties:
    """Parse REST properties for a model into stored form, or name what is wrong."""
    if model == "standard":
        _only_keys(props, ("unitPrice",), model)
        unit = _money(props, "unitPrice", "properties.unitPrice", allow_negative=metered)
        return PriceProperties({"unitPriceAtomic": unit}, StandardPrice(unit))
    if model in ("volume", "graduated"):
        _only_keys(props, ("tiers",), model)
        tiers = _tiers(props, model)
        stored: dict[str, Any] = {
            "tiers": [
                {
                    "upTo": None if t.up_to is None else str(t.up_to),
                    "unitPriceAtomic": t.unit_price_atomic,
                    "flatFeeAtomic": t.flat_fee_atomic,
                }
                for t in tiers
            ]
        }
        return PriceProperties(stored, VolumePrice(tiers) if model == "volume" else GraduatedPrice(tiers))
    if model == "package":
        _only_keys(props, ("unitPrice", "packageSize", "rounding"), model)
        unit = _money(props, "unitPrice", "properties.unitPrice", allow_negative=False)
        if "packageSize" not in props:
            raise InvalidArgument("properties.packageSize", "properties.packageSize is required", reason="REQUIRED")
        size = money.parse_decimal(props["packageSize"], "properties.packageSize", max_places=TIER_PLACES, positive=True)
        rounding = props.get("rounding", "up")
        if rounding not in ("up", "down"):
            raise InvalidArgument(
                "properties.rounding", f"properties.rounding must be up or down; got {rounding!r}", reason="INVALID_ENUM_VALUE"
            )
        stored = {"unitPriceAtomic": unit, "packageSize": str(size), "rounding": rounding}
        return PriceProperties(stored, PackagePrice(size, unit, rounding))
    raise InvalidArgument("model", f"model must be one of {', '.join(PRICE_MODELS)}; got {model!r}", reason="INVALID_ENUM_VALUE")


def render_properties(model: str, stored: dict[str, Any]) -> dict[str, Any]:
    """Stored properties back to the REST shape (decimal strings in major units)."""
    if model in ("volume", "graduated"):
        tiers = []
        for t in stored["tiers"]:
            tier: dict[str, Any] = {"upTo": t["upTo"], "unitPrice": money.format_major(int(t["unitPriceAtomic"]))}
            if model == "graduated" or int(t.get("flatFeeAtomic", 0)):
                tier["flatFee"] = money.format_major(int(t.get("flatFeeAtomic", 0)))
            tiers.append(tier)
        return {"tiers": tiers}
    rendered: dict[str, Any] = {"unitPrice": money.format_major(int(stored["unitPriceAtomic"]))}
    if model == "package":
        rendered["packageSize"] = stored["packageSize"]
        rendered["rounding"] = stored["rounding"]
    return rendered


@dataclass
class PriceDraft:
    """A price's settable fields, validated as a whole by ``validate_price``."""

    billable_metric_id: str | None
    fee_id: str | None
    invoice_display_name: str
    invoice_display_group: str | None
    payment_term: str
    model: str | None
    properties: dict[str, Any]
    billing_cadence: str | None
    grant_discount_enabled: bool
    is_obligation: bool
    rate_type: str | None
    supply_scope: str
    outside_scope_label: str | None
    quantity: int | None
    pricing_unit_id: str | None
    feature_id: str | None
    entitlement_template: dict[str, Any] | None = field(default=None)


@dataclass(frozen=True)
class ValidPrice:
    model: str
    quantity: int
    properties: PriceProperties


def validate_price(draft: PriceDraft) -> ValidPrice:
    metered = draft.billable_metric_id is not None
    if (draft.billable_metric_id is None) == (draft.fee_id is None):
        raise InvalidArgument("billableMetricId", "exactly one of billableMetricId or feeId is required", reason="METRIC_XOR_FEE")
    required_text(draft.invoice_display_name, "invoiceDisplayName")
    nullable_text(draft.invoice_display_group, "invoiceDisplayGroup")
    one_of(draft.payment_term, PAYMENT_TERMS, "paymentTerm")
    if metered and draft.payment_term != "in_arrears":
        raise InvalidArgument(
            "paymentTerm",
            "metered prices are billed in_arrears: usage is known only when the period closes",
            reason="METERED_IN_ADVANCE",
        )
    if draft.model is None:
        if metered:
            raise InvalidArgument("model", "model is required for metric prices", reason="REQUIRED")
        model = "standard"
    else:
        model = one_of(draft.model, PRICE_MODELS, "model")
    if not metered and model != "standard":
        raise InvalidArgument("model", "fee prices use the standard model", reason="FEE_MODEL_NOT_STANDARD")
    if draft.pricing_unit_id is not None:
        raise InvalidArgument("pricingUnitId", "pricing units (credit pools) are not supported yet", reason="NOT_SUPPORTED")
    properties = price_properties(model, draft.properties, metered=metered)
    negative = model == "standard" and int(properties.stored["unitPriceAtomic"]) < 0
    if draft.billing_cadence is not None:
        duration(draft.billing_cadence, "billingCadence")
        if metered and draft.billing_cadence == "P0D":
            raise InvalidArgument("billingCadence", "P0D (one-time) is for fee prices; usage is billed per period", reason="NOT_ALLOWED")
    elif not metered:
        raise InvalidArgument("billingCadence", "billingCadence is required for fee prices (P0D = one-time)", reason="REQUIRED")
    if draft.invoice_display_group is not None and model != "standard":
        raise InvalidArgument("invoiceDisplayGroup", "invoiceDisplayGroup is only for the standard model", reason="NOT_ALLOWED")
    if draft.is_obligation and metered:
        raise InvalidArgument("isObligation", "isObligation is not allowed on metered prices", reason="NOT_ALLOWED")
    if draft.grant_discount_enabled and (not metered or model != "standard" or negative):
        raise InvalidArgument(
            "grantDiscountEnabled",
            "grantDiscountEnabled needs a standard metered price with a non-negative unitPrice",
            reason="NOT_ALLOWED",
        )
    if draft.rate_type is not None:
        one_of(draft.rate_type, RATE_TYPES, "rateType")
    one_of(draft.supply_scope, SUPPLY_SCOPES, "tax.supplyScope")
    if draft.supply_scope == "OUTSIDE_SCOPE":
        if draft.outside_scope_label != "CASHBACK":
            raise InvalidArgument(
                "tax.outsideScopeLabel",
                "tax.outsideScopeLabel must be CASHBACK when supplyScope is OUTSIDE_SCOPE",
                reason="REQUIRED",
            )
        if model != "standard" or int(properties.stored["unitPriceAtomic"]) > 0:
            raise InvalidArgument("tax.outsideScopeLabel", "CASHBACK needs the standard model with unitPrice <= 0", reason="NOT_ALLOWED")
    elif draft.outside_scope_label is not None:
        raise InvalidArgument("tax.outsideScopeLabel", "tax.outsideScopeLabel is only allowed with OUTSIDE_SCOPE", reason="NOT_ALLOWED")
    quantity = 1
    if draft.quantity is not None:
        if metered and draft.quantity != 1:
            raise InvalidArgument("quantity", "quantity is for fee prices only", reason="NOT_ALLOWED")
        if draft.quantity < 1:
            raise InvalidArgument("quantity", f"quantity must be 1 or more; got {draft.quantity}", reason="OUT_OF_RANGE")
        quantity = draft.quantity
    if draft.entitlement_template is not None:
        entitlement_template(draft.entitlement_template)
        if negative and draft.entitlement_template.get("isSoftLimit") is False:
            raise InvalidArgument(
                "feature.entitlementTemplate.isSoftLimit",
                "a usage rebate (negative unitPrice) cannot be combined with a hard-limit feature (isSoftLimit: false)",
                reason="NOT_ALLOWED",
            )
    return ValidPrice(model=model, quantity=quantity, properties=properties)


def _non_negative_number(value: Any) -> bool:
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        return False
    try:
        return Decimal(str(value)) >= 0
    except ArithmeticError:  # InvalidOperation: not a number at all
        return False


def entitlement_template(template: dict[str, Any]) -> dict[str, Any]:
    for key, value in template.items():
        name = f"feature.entitlementTemplate.{key}"
        if key not in ENTITLEMENT_TEMPLATE_KEYS:
            raise InvalidArgument(
                name,
                f"{name} is not a template field (allowed: {', '.join(ENTITLEMENT_TEMPLATE_KEYS)})",
                reason="UNKNOWN_PROPERTY",
            )
        if key == "type" and value not in ("boolean", "static", "metered"):
            raise InvalidArgument(name, f"{name} must be boolean, static or metered", reason="INVALID_ENUM_VALUE")
        if key == "config" and not isinstance(value, dict):
            raise InvalidArgument(name, f"{name} must be an object (a static feature's configuration values)", reason="INVALID_TYPE")
        if key == "issueAfterResetPriority" and (isinstance(value, bool) or not isinstance(value, (int, float)) or int(value) != value):
            raise InvalidArgument(name, f"{name} must be an integer", reason="INVALID_TYPE")
        if key in ("isSoftLimit", "preserveOverageAtReset") and not isinstance(value, bool):
            raise InvalidArgument(name, f"{name} must be true or false", reason="INVALID_TYPE")
        if key in ("issueAfterReset", "resetMaxRollover", "resetMinRollover") and not _non_negative_number(value):
            raise InvalidArgument(name, f"{name} must be a number of 0 or more", reason="INVALID_TYPE")
        if key == "usagePeriod":
            if not isinstance(value, dict) or not isinstance(value.get("interval"), str):
                raise InvalidArgument(name, f"{name} must be an object with an ISO-8601 interval", reason="INVALID_TYPE")
            duration(value["interval"], f"{name}.interval")
            if not any(ch in "123456789" for ch in value["interval"]):
                raise InvalidArgument(
                    f"{name}.interval",
                    f"{name}.interval must be a positive duration; omit usagePeriod for a one-time allowance",
                    reason="OUT_OF_RANGE",
                )
            # the template is stored as sent: nothing unknown (and so unbounded) rides along
            for extra in value:
                if extra not in ("interval", "anchor"):
                    raise InvalidArgument(f"{name}.{extra}", f"{name}.{extra} is not a usagePeriod field", reason="UNKNOWN_PROPERTY")
            anchor = value.get("anchor")
            if anchor is not None and (not isinstance(anchor, str) or len(anchor) > 64):
                raise InvalidArgument(f"{name}.anchor", f"{name}.anchor must be a date-time string", reason="INVALID_TYPE")
    return template


_METERED_TEMPLATE_KEYS = (
    "usagePeriod",
    "issueAfterReset",
    "issueAfterResetPriority",
    "isSoftLimit",
    "resetMaxRollover",
    "resetMinRollover",
    "preserveOverageAtReset",
)


def template_fits_feature(template: dict[str, Any], feature_type: str) -> None:
    """What the entitlement service will provision from this template, checked now rather
    than skipped at subscribe time: its type is the feature's, metered settings only on a
    metered feature, config only on (and required by) a static one."""
    name = "feature.entitlementTemplate"
    kind = template.get("type", feature_type)
    if kind != feature_type:
        raise InvalidArgument(f"{name}.type", f"{name}.type is {kind!r} but the feature is {feature_type}", reason="FEATURE_TYPE_MISMATCH")
    if feature_type != "metered":
        for key in _METERED_TEMPLATE_KEYS:
            if key in template:
                raise InvalidArgument(
                    f"{name}.{key}", f"{name}.{key} is for metered features; this one is {feature_type}", reason="NOT_ALLOWED"
                )
    if feature_type != "static" and "config" in template:
        raise InvalidArgument(f"{name}.config", f"{name}.config is for static features; this one is {feature_type}", reason="NOT_ALLOWED")
    if feature_type == "static" and "config" not in template:
        raise InvalidArgument(f"{name}.config", f"{name}.config is required for a static feature", reason="REQUIRED")


# --- plans ----------------------------------------------------------------------------


def plan_cadence(billing_cadence: str | None, billing_interval: str | None) -> str:
    if billing_cadence is not None:
        return one_of(billing_cadence, PLAN_CADENCES, "billingCadence")
    if billing_interval is not None:
        return INTERVAL_TO_CADENCE[one_of(billing_interval, tuple(INTERVAL_TO_CADENCE), "billingInterval")]
    return "P1M"


def renewal_reminder_days(days: int) -> int:
    if not 1 <= days <= 30:
        raise InvalidArgument("renewalReminderDays", f"renewalReminderDays must be 1-30; got {days}", reason="OUT_OF_RANGE")
    return days


def tax_rate(rate: float) -> Decimal:
    # A JSON number on the wire (the SDK sends 0.0); its shortest repr is what was typed.
    value = Decimal(repr(rate))
    if not value.is_finite():
        raise InvalidArgument("defaultTaxRate", "defaultTaxRate must be a finite number", reason="OUT_OF_RANGE")
    if -value.as_tuple().exponent > 6:  # type: ignore[operator]
        raise InvalidArgument("defaultTaxRate", f"defaultTaxRate has more than 6 decimal places: {value}", reason="TOO_MANY_DECIMAL_PLACES")
    if not Decimal(0) <= value <= Decimal(100):
        raise InvalidArgument("defaultTaxRate", f"defaultTaxRate must be a percentage 0-100; got {value}", reason="OUT_OF_RANGE")
    return value


@dataclass(frozen=True)
class PlanLine:
    price_id: str
    key: str


def plan_lines(values: list[Any], field_name: str = "prices") -> list[PlanLine]:
    """``prices`` entries: a bare price id, or {priceId, key}. Keys default to the price id."""
    if len(values) > LIMITS.plan_prices:
        raise InvalidArgument(
            field_name,
            f"{field_name} has {len(values)} entries; a plan has at most {LIMITS.plan_prices} prices",
            reason="TOO_MANY_PRICES",
        )
    lines: list[PlanLine] = []
    seen_keys: set[str] = set()
    seen_prices: set[str] = set()
    for index, value in enumerate(values):
        here = f"{field_name}[{index}]"
        price_id: Any
        key: Any
        if isinstance(value, str):
            price_id, key = value, None
        elif isinstance(value, dict):
            for extra in value:
                if extra not in ("priceId", "key"):
                    raise InvalidArgument(f"{here}.{extra}", f"{here}.{extra} is not a plan line field", reason="UNKNOWN_PROPERTY")
            price_id, key = value.get("priceId"), value.get("key")
            if not isinstance(price_id, str):
                raise InvalidArgument(f"{here}.priceId", f"{here}.priceId is required", reason="REQUIRED")
            if key is not None and not isinstance(key, str):
                raise InvalidArgument(f"{here}.key", f"{here}.key must be a string", reason="INVALID_TYPE")
        else:
            raise InvalidArgument(here, f"{here} must be a price id or {{priceId, key}}", reason="INVALID_TYPE")
        if not price_id:
            raise InvalidArgument(here, f"{here} needs a price id", reason="REQUIRED")
        line_key_value = line_key(key, f"{here}.key") if key is not None else price_id.lower()
        if line_key_value in seen_keys:
            raise InvalidArgument(f"{here}.key", f"{here}.key {line_key_value!r} is used twice", reason="DUPLICATE_KEY")
        if price_id in seen_prices:
            raise InvalidArgument(here, f"{here}: price {price_id} is listed twice", reason="DUPLICATE_PRICE")
        seen_keys.add(line_key_value)
        seen_prices.add(price_id)
        lines.append(PlanLine(price_id=price_id, key=line_key_value))
    return lines


# Plan rules that CreatePlan and UpdatePlan share (each written once, here).

VERSION_STATUSES = ("published", "archived")


def billing_version(value: int | None) -> int:
    if value not in (None, 1):
        raise InvalidArgument(
            "billingVersion",
            "only billingVersion 1 (Standard billing) is supported; 0 is legacy wallet billing",
            reason="NOT_SUPPORTED",
        )
    return 1


def billing_anchor(anchor: datetime | None, now: datetime) -> datetime | None:
    if anchor is not None and anchor > now:
        raise InvalidArgument("billingAnchor", "billingAnchor must not be in the future", reason="OUT_OF_RANGE")
    return anchor


def credit_allocations(count: int) -> list[Any]:
    """Credit allocations (pricing units) are refused until they are built."""
    if count > 0:
        raise InvalidArgument("creditAllocations", "credit allocations (pricing units) are not supported yet", reason="NOT_SUPPORTED")
    return []


def version_transition(effective_date: str, proration: str) -> str:
    """The plan's versionTransition: its effective date (the only proration is none)."""
    value = one_of(effective_date, EFFECTIVE_DATES, "versionTransition.effectiveDate")
    one_of(proration, ("none",), "versionTransition.proration")
    return value
