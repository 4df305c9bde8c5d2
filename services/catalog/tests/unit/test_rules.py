"""The catalog's pure rules, without I/O."""

from __future__ import annotations

from typing import Any

import pytest

from libs.core.errors import InvalidArgument
from services.catalog.domain import rules
from services.catalog.tests.unit.drafts import price_draft


def test_standard_metered_price_is_stored_in_atomic_units() -> None:
    valid = rules.validate_price(price_draft())
    assert valid.properties.stored == {"unitPriceAtomic": 20_000}
    assert rules.render_properties("standard", valid.properties.stored) == {"unitPrice": "0.00002"}


@pytest.mark.parametrize(
    ("changes", "field", "reason"),
    [
        ({"fee_id": "fee_1"}, "billableMetricId", "METRIC_XOR_FEE"),
        ({"billable_metric_id": None}, "billableMetricId", "METRIC_XOR_FEE"),
        ({"model": None}, "model", "REQUIRED"),
        ({"payment_term": "in_advance"}, "paymentTerm", "METERED_IN_ADVANCE"),
        ({"is_obligation": True}, "isObligation", "NOT_ALLOWED"),
        ({"properties": {"unitPrice": 0.1}}, "properties.unitPrice", "INVALID_DECIMAL"),
        ({"properties": {"unitPrice": "1", "extra": "x"}}, "properties.extra", "UNKNOWN_PROPERTY"),
        ({"model": "volume", "properties": {"tiers": [{"upTo": "10", "unitPrice": "1"}, {"upTo": "5", "unitPrice": "1"}, {"upTo": None, "unitPrice": "1"}]}}, "properties.tiers[1].upTo", "TIERS_NOT_ASCENDING"),
        ({"model": "volume", "properties": {"tiers": [{"upTo": None, "unitPrice": "1"}, {"upTo": None, "unitPrice": "1"}]}}, "properties.tiers[1].upTo", "MULTIPLE_OPEN_ENDED_TIERS"),
        ({"quantity": 3}, "quantity", "NOT_ALLOWED"),
        ({"pricing_unit_id": "pu_1"}, "pricingUnitId", "NOT_SUPPORTED"),
        ({"supply_scope": "OUTSIDE_SCOPE"}, "tax.outsideScopeLabel", "REQUIRED"),
        ({"feature_id": "feat_1", "entitlement_template": {"usagePeriod": {"interval": "monthly"}}}, "feature.entitlementTemplate.usagePeriod.interval", "INVALID_DURATION"),
        ({"feature_id": "feat_1", "entitlement_template": {"usagePeriod": {"interval": "P0D"}}}, "feature.entitlementTemplate.usagePeriod.interval", "OUT_OF_RANGE"),
        ({"feature_id": "feat_1", "entitlement_template": {"type": "seats"}}, "feature.entitlementTemplate.type", "INVALID_ENUM_VALUE"),
        ({"feature_id": "feat_1", "entitlement_template": {"config": "x"}}, "feature.entitlementTemplate.config", "INVALID_TYPE"),
        ({"feature_id": "feat_1", "entitlement_template": {"issueAfterResetPriority": 1.5}}, "feature.entitlementTemplate.issueAfterResetPriority", "INVALID_TYPE"),
    ],
)  # fmt: skip
def test_bad_metered_prices_name_their_field(changes: dict[str, Any], field: str, reason: str | None) -> None:
    with pytest.raises(InvalidArgument) as error:
        rules.validate_price(price_draft(**changes))
    assert error.value.field == field
    if reason is not None:
        assert error.value.reason == reason


def test_fee_prices_need_a_cadence_and_the_standard_model_and_no_rebate() -> None:
    fee = dict(billable_metric_id=None, fee_id="fee_1", payment_term="in_advance", properties={"unitPrice": "49.00"})
    with pytest.raises(InvalidArgument) as no_cadence:
        rules.validate_price(price_draft(**fee))
    assert no_cadence.value.field == "billingCadence"
    with pytest.raises(InvalidArgument) as volume:
        rules.validate_price(price_draft(**fee, billing_cadence="P1M", model="volume"))
    assert volume.value.field == "model"
    with pytest.raises(InvalidArgument) as negative:
        rules.validate_price(price_draft(**{**fee, "properties": {"unitPrice": "-1.00"}}, billing_cadence="P1M"))
    assert negative.value.field == "properties.unitPrice"
    assert rules.validate_price(price_draft(**fee, billing_cadence="P0D", quantity=3)).quantity == 3


def test_graduated_and_package_round_trip_through_storage() -> None:
    tiers = {"tiers": [{"upTo": "100", "unitPrice": "0.5", "flatFee": "1"}, {"upTo": None, "unitPrice": "0.25"}]}
    graduated = rules.validate_price(price_draft(model="graduated", properties=tiers))
    assert rules.render_properties("graduated", graduated.properties.stored) == {
        "tiers": [{"upTo": "100", "unitPrice": "0.50", "flatFee": "1.00"}, {"upTo": None, "unitPrice": "0.25", "flatFee": "0.00"}]
    }
    package = rules.validate_price(price_draft(model="package", properties={"unitPrice": "2", "packageSize": "1000"}))
    assert rules.render_properties("package", package.properties.stored) == {
        "unitPrice": "2.00",
        "packageSize": "1000",
        "rounding": "up",
    }


def test_plan_lines_default_keys_and_reject_duplicates() -> None:
    lines = rules.plan_lines(["price_AbC", {"priceId": "price_x", "key": "base-fee"}])
    assert [(ln.price_id, ln.key) for ln in lines] == [("price_AbC", "price_abc"), ("price_x", "base-fee")]
    with pytest.raises(InvalidArgument) as duplicate:
        rules.plan_lines([{"priceId": "p1", "key": "a"}, {"priceId": "p2", "key": "a"}])
    assert duplicate.value.field == "prices[1].key"
    with pytest.raises(InvalidArgument) as bad_key:
        rules.plan_lines([{"priceId": "p1", "key": "Upper"}])
    assert bad_key.value.field == "prices[0].key"


@pytest.mark.parametrize("value", ["P1M", "P1Y", "P0D", "P2W", "P1Y2M"])
def test_durations_accepted(value: str) -> None:
    assert rules.duration(value, "billingCadence") == value


@pytest.mark.parametrize("value", ["", "P", "1M", "PT1H", "monthly", "P1.5M"])
def test_durations_refused(value: str) -> None:
    with pytest.raises(InvalidArgument):
        rules.duration(value, "billingCadence")


def test_plan_cadence_and_paging_rules() -> None:
    assert rules.plan_cadence(None, "annual") == "P1Y"
    assert rules.plan_cadence("P3M", "yearly") == "P3M"
    assert rules.plan_cadence(None, None) == "P1M"
    with pytest.raises(InvalidArgument) as bad:
        rules.plan_cadence("P2M", None)
    assert bad.value.field == "billingCadence"
    assert rules.page(None, None) == (10, 0)
    for limit in (0, 101):
        with pytest.raises(InvalidArgument):
            rules.page(limit, 0)
    with pytest.raises(InvalidArgument):
        rules.currency("XYZ")
    assert rules.currency("JPY") == "JPY"


@pytest.mark.parametrize(
    ("template", "feature_type", "field", "reason"),
    [
        ({"type": "boolean"}, "metered", "feature.entitlementTemplate.type", "FEATURE_TYPE_MISMATCH"),
        ({"usagePeriod": {"interval": "P1M"}}, "boolean", "feature.entitlementTemplate.usagePeriod", "NOT_ALLOWED"),
        ({"config": {"limit": 25}}, "metered", "feature.entitlementTemplate.config", "NOT_ALLOWED"),
        ({}, "static", "feature.entitlementTemplate.config", "REQUIRED"),
    ],
)
def test_a_template_must_fit_its_feature(template: dict[str, Any], feature_type: str, field: str, reason: str) -> None:
    # what the entitlement service could not provision is refused when the price is made
    with pytest.raises(InvalidArgument) as error:
        rules.template_fits_feature(template, feature_type)
    assert (error.value.field, error.value.reason) == (field, reason)


def test_templates_that_fit_their_feature_pass() -> None:
    rules.template_fits_feature({}, "boolean")
    rules.template_fits_feature({"type": "static", "config": {"limit": 25}}, "static")
    rules.template_fits_feature({"usagePeriod": {"interval": "P1M"}, "issueAfterReset": 10, "isSoftLimit": True}, "metered")
