"""Entitlement templates (services/entitlement/domain/templates.py): defaults, refusals, JSON."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import pytest

from libs.core.errors import InvalidArgument
from services.entitlement.domain.templates import Template, parse_template


def refused(raw: Any, feature_type: str = "metered", field: str = "template") -> InvalidArgument:
    with pytest.raises(InvalidArgument) as error:
        parse_template(raw, feature_type=feature_type, field=field)
    return error.value


def test_defaults_of_each_type() -> None:
    assert parse_template({}, feature_type="metered") == Template(type="metered")
    assert parse_template(None, feature_type="metered") == Template(type="metered")
    metered = parse_template({}, feature_type="metered")
    assert (metered.usage_period, metered.anchor, metered.is_soft_limit, metered.preserve_overage_at_reset) == (None, None, False, False)
    assert (metered.issue_after_reset, metered.issue_after_reset_priority) == (Decimal(0), 0)
    assert (metered.reset_max_rollover, metered.reset_min_rollover, metered.billable_metric_id) == (Decimal(0), Decimal(0), None)
    assert parse_template({}, feature_type="boolean") == Template(type="boolean")
    assert parse_template({"type": "static", "config": {"limit": 25}}, feature_type="static") == Template(
        type="static", config={"limit": 25}
    )


def test_a_full_metered_template_is_normalized() -> None:
    template = parse_template(
        {
            "type": "metered",
            "usagePeriod": {"interval": "P1M", "anchor": "2026-01-31T02:00:00+02:00"},
            "isSoftLimit": True,
            "issueAfterReset": 100000,
            "issueAfterResetPriority": -2,
            "preserveOverageAtReset": True,
            "resetMaxRollover": "500.5",
            "resetMinRollover": 0.25,
            "billableMetricId": "bm_tokens",
        },
        feature_type="metered",
    )
    assert template == Template(
        type="metered",
        usage_period="P1M",
        anchor=datetime(2026, 1, 31, tzinfo=UTC),
        is_soft_limit=True,
        issue_after_reset=Decimal(100000),
        issue_after_reset_priority=-2,
        preserve_overage_at_reset=True,
        reset_max_rollover=Decimal("500.5"),
        reset_min_rollover=Decimal("0.25"),
        billable_metric_id="bm_tokens",
    )
    assert template.to_json() == {
        "type": "metered",
        "usagePeriod": {"interval": "P1M", "anchor": "2026-01-31T00:00:00Z"},
        "isSoftLimit": True,
        "issueAfterReset": "100000",
        "issueAfterResetPriority": -2,
        "preserveOverageAtReset": True,
        "resetMaxRollover": "500.5",
        "resetMinRollover": "0.25",
        "billableMetricId": "bm_tokens",
    }


@pytest.mark.parametrize(
    "raw",
    [
        {"type": "boolean"},
        {"type": "static", "config": {"limit": 25, "tier": "gold", "nested": {"a": [1, 2]}}},
        {},
        {"usagePeriod": {"interval": "P1Y2M3D"}, "issueAfterReset": "0.00000001"},
        {"usagePeriod": {"interval": "P2W", "anchor": "2028-02-29T12:30:00Z"}, "resetMaxRollover": 3, "resetMinRollover": 3},
        {"issueAfterReset": 1e-8, "isSoftLimit": True, "billableMetricId": "bm_1"},
    ],
)
def test_to_json_round_trips(raw: dict[str, Any]) -> None:
    feature_type = raw.get("type", "metered")
    template = parse_template(raw, feature_type=feature_type)
    stored = template.to_json()
    assert parse_template(stored, feature_type=feature_type) == template
    assert parse_template(stored, feature_type=feature_type).to_json() == stored


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (100000, Decimal(100000)),
        (100000.0, Decimal(100000)),
        ("100000", Decimal(100000)),
        ("100000.000", Decimal(100000)),
        (0.1, Decimal("0.1")),
        ("0.1", Decimal("0.1")),
        (1e-8, Decimal("0.00000001")),
        ("999999999999", Decimal("999999999999")),
        (0, Decimal(0)),
    ],
)
def test_numbers_are_json_numbers_or_decimal_strings(value: Any, expected: Decimal) -> None:
    template = parse_template({"issueAfterReset": value}, feature_type="metered")
    assert template.issue_after_reset == expected
    assert str(template.issue_after_reset) == str(expected)  # one canonical form: no exponent, no trailing zeros


@pytest.mark.parametrize(
    ("raw", "field", "reason"),
    [
        ({"issueAfterReset": "0.000000001"}, "template.issueAfterReset", "TOO_MANY_DECIMAL_PLACES"),
        ({"issueAfterReset": 1e-9}, "template.issueAfterReset", "TOO_MANY_DECIMAL_PLACES"),
        ({"issueAfterReset": -1}, "template.issueAfterReset", "MUST_NOT_BE_NEGATIVE"),
        ({"resetMaxRollover": "-0.5"}, "template.resetMaxRollover", "MUST_NOT_BE_NEGATIVE"),
        ({"issueAfterReset": "1000000000000"}, "template.issueAfterReset", "OUT_OF_RANGE"),
        ({"issueAfterReset": float("nan")}, "template.issueAfterReset", "OUT_OF_RANGE"),
        ({"issueAfterReset": float("inf")}, "template.issueAfterReset", "OUT_OF_RANGE"),
        ({"issueAfterReset": True}, "template.issueAfterReset", "INVALID_TYPE"),
        ({"issueAfterReset": [1]}, "template.issueAfterReset", "INVALID_TYPE"),
        ({"issueAfterReset": "1e3"}, "template.issueAfterReset", "INVALID_DECIMAL"),
        ({"issueAfterReset": "ten"}, "template.issueAfterReset", "INVALID_DECIMAL"),
        ({"resetMinRollover": 5}, "template.resetMinRollover", "OUT_OF_RANGE"),
        ({"resetMinRollover": "10.5", "resetMaxRollover": 10}, "template.resetMinRollover", "OUT_OF_RANGE"),
        ({"issueAfterResetPriority": 1.5}, "template.issueAfterResetPriority", "INVALID_TYPE"),
        ({"issueAfterResetPriority": True}, "template.issueAfterResetPriority", "INVALID_TYPE"),
        ({"issueAfterResetPriority": 2**31}, "template.issueAfterResetPriority", "OUT_OF_RANGE"),
        ({"isSoftLimit": "true"}, "template.isSoftLimit", "INVALID_TYPE"),
        ({"preserveOverageAtReset": 1}, "template.preserveOverageAtReset", "INVALID_TYPE"),
        ({"usagePeriod": "P1M"}, "template.usagePeriod", "INVALID_TYPE"),
        ({"usagePeriod": {}}, "template.usagePeriod.interval", "REQUIRED"),
        ({"usagePeriod": {"interval": "monthly"}}, "template.usagePeriod.interval", "INVALID_DURATION"),
        ({"usagePeriod": {"interval": "-P1M"}}, "template.usagePeriod.interval", "INVALID_DURATION"),
        ({"usagePeriod": {"interval": "PT1H"}}, "template.usagePeriod.interval", "INVALID_DURATION"),
        ({"usagePeriod": {"interval": "P1DT1S"}}, "template.usagePeriod.interval", "INVALID_DURATION"),
        ({"usagePeriod": {"interval": 30}}, "template.usagePeriod.interval", "INVALID_DURATION"),
        ({"usagePeriod": {"interval": "P0D"}}, "template.usagePeriod.interval", "OUT_OF_RANGE"),
        ({"usagePeriod": {"interval": "P1M", "every": 2}}, "template.usagePeriod.every", "UNKNOWN_FIELD"),
        ({"usagePeriod": {"interval": "P1M", "anchor": "2026-01-31"}}, "template.usagePeriod.anchor", "INVALID_FORMAT"),
        ({"usagePeriod": {"interval": "P1M", "anchor": "2026-01-31T00:00:00"}}, "template.usagePeriod.anchor", "INVALID_FORMAT"),
        ({"usagePeriod": {"interval": "P1M", "anchor": "2026-02-30T00:00:00Z"}}, "template.usagePeriod.anchor", "INVALID_FORMAT"),
        ({"usagePeriod": {"interval": "P1M", "anchor": 1767225600}}, "template.usagePeriod.anchor", "INVALID_FORMAT"),
        ({"billableMetricId": ""}, "template.billableMetricId", "OUT_OF_RANGE"),
        ({"billableMetricId": 7}, "template.billableMetricId", "INVALID_TYPE"),
        ({"resetMaxRolover": 10}, "template.resetMaxRolover", "UNKNOWN_FIELD"),
        ({"config": {"limit": 1}}, "template.config", "UNKNOWN_FIELD"),
        ({"type": "seats"}, "template.type", "INVALID_ENUM_VALUE"),
        ({"type": "boolean"}, "template.type", "FEATURE_TYPE_MISMATCH"),
    ],
)  # fmt: skip
def test_bad_metered_templates_name_their_field(raw: dict[str, Any], field: str, reason: str) -> None:
    error = refused(raw)
    assert (error.field, error.reason) == (field, reason)
    assert field in error.message


@pytest.mark.parametrize(
    ("raw", "feature_type", "field", "reason"),
    [
        ({"type": "metered"}, "boolean", "template.type", "FEATURE_TYPE_MISMATCH"),
        ({"usagePeriod": {"interval": "P1M"}}, "boolean", "template.usagePeriod", "UNKNOWN_FIELD"),
        ({"issueAfterReset": 10}, "static", "template.issueAfterReset", "UNKNOWN_FIELD"),
        ({"config": {"a": 1}}, "boolean", "template.config", "UNKNOWN_FIELD"),
        ({}, "static", "template.config", "REQUIRED"),
        ({"type": "static"}, "static", "template.config", "REQUIRED"),
        ({"config": [1, 2]}, "static", "template.config", "INVALID_TYPE"),
        ({"config": "limit=25"}, "static", "template.config", "INVALID_TYPE"),
    ],
)  # fmt: skip
def test_bad_boolean_and_static_templates_name_their_field(raw: dict[str, Any], feature_type: str, field: str, reason: str) -> None:
    error = refused(raw, feature_type)
    assert (error.field, error.reason) == (field, reason)


def test_the_field_prefix_names_where_the_template_came_from() -> None:
    error = refused({"usagePeriod": {"interval": "P1X"}}, field="feature.entitlementTemplate")
    assert (error.field, error.reason) == ("feature.entitlementTemplate.usagePeriod.interval", "INVALID_DURATION")
    error = refused(["not", "an", "object"], field="feature.entitlementTemplate")
    assert (error.field, error.reason) == ("feature.entitlementTemplate", "INVALID_TYPE")


def test_metered_keys_on_a_boolean_template_are_named_as_such() -> None:
    error = refused({"isSoftLimit": True}, "boolean")
    assert "metered template field" in error.message


def test_null_means_not_given() -> None:
    template = parse_template(
        {"type": None, "usagePeriod": None, "isSoftLimit": None, "issueAfterReset": None, "billableMetricId": None}, feature_type="metered"
    )
    assert template == Template(type="metered")
    assert parse_template({"config": None}, feature_type="boolean") == Template(type="boolean")
    assert parse_template({"usagePeriod": {"interval": "P1D", "anchor": None}}, feature_type="metered").anchor is None


def test_integers_may_arrive_as_integral_doubles_or_strings() -> None:
    for value in (3, 3.0, "3"):
        assert parse_template({"issueAfterResetPriority": value}, feature_type="metered").issue_after_reset_priority == 3
    assert parse_template({"issueAfterResetPriority": "-2147483648"}, feature_type="metered").issue_after_reset_priority == -(2**31)


def test_interval_is_stored_in_canonical_form() -> None:
    assert parse_template({"usagePeriod": {"interval": "P01M"}}, feature_type="metered").usage_period == "P1M"
    assert parse_template({"usagePeriod": {"interval": "P7D"}}, feature_type="metered").usage_period == "P7D"


def test_unknown_feature_type_is_a_caller_bug() -> None:
    with pytest.raises(ValueError):
        parse_template({}, feature_type="seats")
