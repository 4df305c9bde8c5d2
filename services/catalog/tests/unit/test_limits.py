"""Size limits of catalog requests (rules.LIMITS): the limit itself passes, one more is refused
with a reason and the field in its REST spelling."""

from __future__ import annotations

from typing import Any

import pytest

from libs.core.errors import InvalidArgument
from services.catalog.domain import rules
from services.catalog.domain.rules import LIMITS
from services.catalog.tests.unit.drafts import price_draft


def _ladder(count: int) -> list[dict[str, Any]]:
    """``count`` ascending tiers, the last one open-ended."""
    return [{"upTo": str(i + 1) if i < count - 1 else None, "unitPrice": "1"} for i in range(count)]


def _refused(call: Any, *args: Any, **kwargs: Any) -> InvalidArgument:
    with pytest.raises(InvalidArgument) as error:
        call(*args, **kwargs)
    return error.value


def test_the_limits_are_the_documented_numbers() -> None:
    # README's limits table and the OpenAPI document quote these; changing one is an API change
    assert (LIMITS.tiers, LIMITS.metadata_keys, LIMITS.metadata_key_length, LIMITS.metadata_value_length) == (100, 50, 40, 500)
    assert (LIMITS.name, LIMITS.description, LIMITS.plan_prices, LIMITS.page_size) == (255, 5000, 100, 100)
    assert (LIMITS.group_by_dimensions, LIMITS.group_by_name_length, LIMITS.jsonpath_length) == (20, 40, 255)


@pytest.mark.parametrize("model", ["volume", "graduated"])
def test_a_ladder_may_have_100_tiers_not_101(model: str) -> None:
    valid = rules.validate_price(price_draft(model=model, properties={"tiers": _ladder(LIMITS.tiers)}))
    assert len(valid.properties.stored["tiers"]) == LIMITS.tiers
    error = _refused(rules.validate_price, price_draft(model=model, properties={"tiers": _ladder(LIMITS.tiers + 1)}))
    assert (error.reason, error.field) == ("TOO_MANY_TIERS", "properties.tiers")


def test_the_tier_count_is_refused_before_any_tier_is_parsed() -> None:
    # 10,000 broken tiers: the answer is the count, not the first broken tier
    junk = [{"upTo": "x", "unitPrice": 0.1}] * 10_000
    error = _refused(rules.validate_price, price_draft(model="volume", properties={"tiers": junk}))
    assert (error.reason, error.field) == ("TOO_MANY_TIERS", "properties.tiers")


def test_metadata_at_the_limits_is_kept() -> None:
    values = {f"k{i:02d}".ljust(LIMITS.metadata_key_length, "x"): "v" * LIMITS.metadata_value_length for i in range(LIMITS.metadata_keys)}
    assert rules.metadata(values) == values
    assert rules.metadata({}) == {}


@pytest.mark.parametrize(
    ("values", "reason", "field"),
    [
        ({f"k{i}": "v" for i in range(51)}, "TOO_MANY_METADATA_KEYS", "metadata"),
        ({f"k{i}": "v" for i in range(10_000)}, "TOO_MANY_METADATA_KEYS", "metadata"),
        ({"k" * 41: "v"}, "KEY_TOO_LONG", "metadata"),
        ({"plan": "v" * 501}, "TOO_LONG", "metadata.plan"),
    ],
    ids=["51 keys", "10000 keys", "41-character key", "501-character value"],
)
def test_metadata_past_the_limits_is_refused(values: dict[str, str], reason: str, field: str) -> None:
    error = _refused(rules.metadata, values)
    assert (error.reason, error.field) == (reason, field)


def test_a_huge_metadata_key_is_not_echoed_whole() -> None:
    error = _refused(rules.metadata, {"k" * 100_000: "v"})
    assert len(error.message) < 200


def test_group_by_limits() -> None:
    at_limit = {f"d{i}": f"$.d{i}" for i in range(LIMITS.group_by_dimensions)}
    assert rules.group_by(at_limit) == at_limit
    too_many = _refused(rules.group_by, {f"d{i}": f"$.d{i}" for i in range(LIMITS.group_by_dimensions + 1)})
    assert (too_many.reason, too_many.field) == ("TOO_MANY_DIMENSIONS", "groupBy")
    long_name = _refused(rules.group_by, {"d" * 41: "$.d"})
    assert (long_name.reason, long_name.field) == ("KEY_TOO_LONG", "groupBy")
    long_path = _refused(rules.group_by, {"region": "$." + "a" * 254})
    assert (long_path.reason, long_path.field) == ("TOO_LONG", "groupBy.region")
    assert rules.jsonpath("$." + "a" * 253, "valueProperty")  # 255 characters
    assert _refused(rules.metric_value_property, "SUM", "$." + "a" * 254).field == "valueProperty"


def test_a_plan_may_list_100_prices_not_101() -> None:
    assert len(rules.plan_lines([f"price_{i}" for i in range(LIMITS.plan_prices)])) == LIMITS.plan_prices
    error = _refused(rules.plan_lines, [f"price_{i}" for i in range(LIMITS.plan_prices + 1)])
    assert (error.reason, error.field) == ("TOO_MANY_PRICES", "prices")


def test_one_line_texts_are_capped_at_255() -> None:
    assert rules.nullable_text(None, "itemId") is None
    assert rules.nullable_text("i" * 255, "itemId") == "i" * 255
    error = _refused(rules.nullable_text, "i" * 256, "itemId")
    assert (error.reason, error.field) == ("TOO_LONG", "itemId")
    assert rules.nullable_text("d" * 5000, "description", max_length=LIMITS.description) == "d" * 5000
    assert _refused(rules.optional_text, "d" * 5001, "description").reason == "TOO_LONG"
    group = _refused(rules.validate_price, price_draft(invoice_display_group="g" * 256))
    assert (group.reason, group.field) == ("TOO_LONG", "invoiceDisplayGroup")
    name = _refused(rules.validate_price, price_draft(invoice_display_name="n" * 256))
    assert (name.reason, name.field) == ("TOO_LONG", "invoiceDisplayName")


def test_page_size_is_1_to_100_and_offset_not_negative() -> None:
    assert rules.page(100, 0) == (100, 0)
    assert rules.page(1, 2_000_000_000) == (1, 2_000_000_000)
    assert _refused(rules.page, 101, 0).field == "limit"
    assert _refused(rules.page, 0, 0).field == "limit"
    assert _refused(rules.page, 10, -1).field == "offset"


def test_usage_period_carries_only_interval_and_anchor() -> None:
    template = {"usagePeriod": {"interval": "P1M", "anchor": "2025-01-01T00:00:00Z"}}
    assert rules.entitlement_template(template) == template
    extra = _refused(rules.entitlement_template, {"usagePeriod": {"interval": "P1M", "blob": "x" * 100_000}})
    assert (extra.reason, extra.field) == ("UNKNOWN_PROPERTY", "feature.entitlementTemplate.usagePeriod.blob")
    anchor = _refused(rules.entitlement_template, {"usagePeriod": {"interval": "P1M", "anchor": "x" * 65}})
    assert anchor.field == "feature.entitlementTemplate.usagePeriod.anchor"
