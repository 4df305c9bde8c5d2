"""Entitlement templates: a price feature's ``entitlementTemplate`` (free-form JSON in the
catalog) or a hand-issued entitlement's ``template``, checked and normalized.

Pure. Bad input raises libs.core.errors.InvalidArgument naming the field by its JSON path
under ``field`` (``template.usagePeriod.interval``, ``feature.entitlementTemplate.issueAfterReset``).

Accepted keys by type (``null`` means "not given" everywhere):

* boolean: ``type``;
* static: ``type``, ``config`` (required, an object);
* metered: ``type``, ``usagePeriod`` {``interval`` (required, a positive ISO 8601 duration),
  ``anchor`` (RFC 3339 with an offset)}, ``isSoftLimit``, ``issueAfterReset``,
  ``issueAfterResetPriority``, ``preserveOverageAtReset``, ``resetMaxRollover``,
  ``resetMinRollover``, ``billableMetricId``.

Units (``issueAfterReset``, the rollovers) are JSON numbers or decimal strings, ``0`` to
``999999999999``, at most 8 decimal places. A JSON number is read through its shortest
repr (a Struct carries doubles: ``0.1`` is taken as the ``0.1`` that was typed).
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any, Final

from libs.core.errors import InvalidArgument
from libs.core.grid import parse_duration
from libs.core.money import parse_decimal

FEATURE_TYPES = ("boolean", "static", "metered")

UNIT_PLACES: Final = 8  # units are exact to 1e-8
MAX_UNITS: Final = Decimal("999999999999")  # balance.UNLIMITED: the largest amount of units
MAX_METRIC_ID: Final = 64
MAX_ANCHOR_TEXT: Final = 64
_INT32 = (-(2**31), 2**31 - 1)
_INTEGER_TEXT = re.compile(r"-?[0-9]{1,10}")

_KEYS: Final[Mapping[str, tuple[str, ...]]] = {
    "boolean": ("type",),
    "static": ("type", "config"),
    "metered": (
        "type",
        "usagePeriod",
        "isSoftLimit",
        "issueAfterReset",
        "issueAfterResetPriority",
        "preserveOverageAtReset",
        "resetMaxRollover",
        "resetMinRollover",
        "billableMetricId",
    ),
}
_USAGE_PERIOD_KEYS: Final = ("interval", "anchor")


@dataclass(frozen=True, slots=True)
class Template:
    """A normalized template: every default filled in (README "Entitlements")."""

    type: str  # boolean | static | metered
    config: Mapping[str, Any] | None = None  # static only (required there)
    usage_period: str | None = None  # metered: ISO 8601 duration (canonical text); None: one-time allowance
    anchor: datetime | None = None  # metered: usagePeriod.anchor (UTC)
    is_soft_limit: bool = False
    issue_after_reset: Decimal = Decimal(0)  # >= 0, multiple of 1e-8
    issue_after_reset_priority: int = 0
    preserve_overage_at_reset: bool = False
    reset_max_rollover: Decimal = Decimal(0)  # for the reset units; >= reset_min_rollover
    reset_min_rollover: Decimal = Decimal(0)
    billable_metric_id: str | None = None  # Accrue: the metric whose usage burns it

    def to_json(self) -> dict[str, Any]:
        """camelCase JSON (what is stored, and rendered as the entitlement's ``template``);
        ``parse_template(t.to_json(), feature_type=t.type) == t``. Decimals as strings.
        Every metered setting is present; an absent ``usagePeriod``, ``anchor`` or
        ``billableMetricId`` is left out."""
        if self.type == "boolean":
            return {"type": "boolean"}
        if self.type == "static":
            return {"type": "static", "config": dict(self.config or {})}
        out: dict[str, Any] = {"type": "metered"}
        if self.usage_period is not None:
            period: dict[str, Any] = {"interval": self.usage_period}
            if self.anchor is not None:
                period["anchor"] = _instant_text(self.anchor)
            out["usagePeriod"] = period
        out.update(
            isSoftLimit=self.is_soft_limit,
            issueAfterReset=_units_text(self.issue_after_reset),
            issueAfterResetPriority=self.issue_after_reset_priority,
            preserveOverageAtReset=self.preserve_overage_at_reset,
            resetMaxRollover=_units_text(self.reset_max_rollover),
            resetMinRollover=_units_text(self.reset_min_rollover),
        )
        if self.billable_metric_id is not None:
            out["billableMetricId"] = self.billable_metric_id
        return out


def parse_template(raw: Mapping[str, Any] | None, *, feature_type: str, field: str = "template") -> Template:
    """Check and normalize. ``type`` defaults to the feature's type and must equal it;
    metered keys on a boolean/static template are refused, as are unknown keys. Numbers
    may be JSON numbers or decimal strings. ``None`` is the empty template (all defaults;
    for a static feature it lacks the required ``config``)."""
    if feature_type not in FEATURE_TYPES:
        raise ValueError(f"unknown feature type {feature_type!r}")  # the catalog's data, not the caller's input
    if raw is None:
        raw = {}
    if not isinstance(raw, Mapping):
        raise InvalidArgument(field, f"{field} must be an object", reason="INVALID_TYPE")
    given = {key: value for key, value in raw.items() if value is not None}

    kind = given.get("type", feature_type)
    if not isinstance(kind, str) or kind not in FEATURE_TYPES:
        raise InvalidArgument(
            f"{field}.type", f"{field}.type must be one of {', '.join(FEATURE_TYPES)}; got {kind!r}", reason="INVALID_ENUM_VALUE"
        )
    if kind != feature_type:
        raise InvalidArgument(
            f"{field}.type",
            f"{field}.type is {kind!r} but the feature is {feature_type!r}: a template provisions its own feature's type",
            reason="FEATURE_TYPE_MISMATCH",
        )
    allowed = _KEYS[kind]
    for key in given:
        if key not in allowed:
            what = "a metered template field" if key in _KEYS["metered"] else "not a template field"
            raise InvalidArgument(
                f"{field}.{key}",
                f"{field}.{key} is {what}; a {kind} template has {', '.join(allowed)}",
                reason="UNKNOWN_FIELD",
            )

    if kind == "boolean":
        return Template(type="boolean")
    if kind == "static":
        config = given.get("config")
        if config is None:
            raise InvalidArgument(f"{field}.config", f"{field}.config is required for a static feature", reason="REQUIRED")
        if not isinstance(config, Mapping) or not all(isinstance(k, str) for k in config):
            raise InvalidArgument(f"{field}.config", f"{field}.config must be an object", reason="INVALID_TYPE")
        return Template(type="static", config=dict(config))

    usage_period, anchor = _usage_period(given.get("usagePeriod"), f"{field}.usagePeriod")
    template = Template(
        type="metered",
        usage_period=usage_period,
        anchor=anchor,
        is_soft_limit=_flag(given, "isSoftLimit", field),
        issue_after_reset=_units(given, "issueAfterReset", field),
        issue_after_reset_priority=_integer(given, "issueAfterResetPriority", field),
        preserve_overage_at_reset=_flag(given, "preserveOverageAtReset", field),
        reset_max_rollover=_units(given, "resetMaxRollover", field),
        reset_min_rollover=_units(given, "resetMinRollover", field),
        billable_metric_id=_metric_id(given.get("billableMetricId"), f"{field}.billableMetricId"),
    )
    if template.reset_min_rollover > template.reset_max_rollover:
        raise InvalidArgument(
            f"{field}.resetMinRollover",
            f"{field}.resetMinRollover ({_units_text(template.reset_min_rollover)}) must not exceed "
            f"{field}.resetMaxRollover ({_units_text(template.reset_max_rollover)}; default 0)",
            reason="OUT_OF_RANGE",
        )
    return template


# --- fields ------------------------------------------------------------------------------


def _usage_period(value: Any, name: str) -> tuple[str | None, datetime | None]:
    if value is None:
        return None, None
    if not isinstance(value, Mapping):
        raise InvalidArgument(name, f'{name} must be an object such as {{"interval": "P1M"}}', reason="INVALID_TYPE")
    for key in value:
        if key not in _USAGE_PERIOD_KEYS:
            raise InvalidArgument(f"{name}.{key}", f"{name}.{key} is not a usagePeriod field (interval, anchor)", reason="UNKNOWN_FIELD")
    interval = value.get("interval")
    if interval is None:
        raise InvalidArgument(f"{name}.interval", f"{name}.interval is required", reason="REQUIRED")
    duration = parse_duration(interval, f"{name}.interval")
    if duration.hours or duration.minutes or duration.seconds:
        # as the catalog's price templates: a period of hours would make every balance
        # walk thousands of periods (and one of seconds, millions)
        raise InvalidArgument(
            f"{name}.interval",
            f"{name}.interval must be whole days, weeks, months or years (P1D, P1W, P1M, P1Y); got {interval!r}",
            reason="INVALID_DURATION",
        )
    if duration.is_zero:
        raise InvalidArgument(
            f"{name}.interval",
            f"{name}.interval must be a positive duration; omit usagePeriod for a one-time allowance",
            reason="OUT_OF_RANGE",
        )
    return str(duration), _anchor(value.get("anchor"), f"{name}.anchor")


def _anchor(value: Any, name: str) -> datetime | None:
    if value is None:
        return None
    if isinstance(value, datetime):
        when = value
    elif isinstance(value, str) and len(value) <= MAX_ANCHOR_TEXT and "T" in value.upper():
        try:
            when = datetime.fromisoformat(value)
        except ValueError:
            raise InvalidArgument(name, f"{name} must be an RFC 3339 date-time, got {value!r}", reason="INVALID_FORMAT") from None
    else:
        raise InvalidArgument(name, f"{name} must be an RFC 3339 date-time string, got {value!r:.80}", reason="INVALID_FORMAT")
    if when.tzinfo is None or when.utcoffset() is None:
        raise InvalidArgument(name, f"{name} must carry a UTC offset (2026-01-31T00:00:00Z)", reason="INVALID_FORMAT")
    return when.astimezone(UTC)


def _flag(given: Mapping[str, Any], key: str, field: str) -> bool:
    value = given.get(key, False)
    if not isinstance(value, bool):
        raise InvalidArgument(f"{field}.{key}", f"{field}.{key} must be true or false, got {value!r:.80}", reason="INVALID_TYPE")
    return value


def _units(given: Mapping[str, Any], key: str, field: str) -> Decimal:
    """A number of units: a JSON number or a decimal string, 0..MAX_UNITS, <= 8 places."""
    name = f"{field}.{key}"
    value = given.get(key, 0)
    if isinstance(value, bool):
        raise InvalidArgument(name, f"{name} must be a number, got {value!r}", reason="INVALID_TYPE")
    if isinstance(value, int):
        units = Decimal(value)
    elif isinstance(value, float):
        if not math.isfinite(value):
            raise InvalidArgument(name, f"{name} must be a finite number", reason="OUT_OF_RANGE")
        units = Decimal(repr(value))  # the shortest repr: what was typed
    elif isinstance(value, str):
        units = parse_decimal(value, name)
    else:
        raise InvalidArgument(name, f"{name} must be a number or a decimal string, got {type(value).__name__}", reason="INVALID_TYPE")
    if units < 0:
        raise InvalidArgument(name, f"{name} must not be negative, got {_units_text(units)}", reason="MUST_NOT_BE_NEGATIVE")
    if units > MAX_UNITS:
        raise InvalidArgument(name, f"{name} must be at most {MAX_UNITS}, got {value!r:.80}", reason="OUT_OF_RANGE")
    places = -int(units.normalize().as_tuple().exponent)
    if places > UNIT_PLACES:
        raise InvalidArgument(
            name, f"{name} has {places} decimal places; at most {UNIT_PLACES} are allowed", reason="TOO_MANY_DECIMAL_PLACES"
        )
    return _canonical(units)


def _integer(given: Mapping[str, Any], key: str, field: str) -> int:
    """An int32: a JSON integer (a Struct's integral double) or an integer string."""
    name = f"{field}.{key}"
    value = given.get(key, 0)
    number: int
    if isinstance(value, bool):
        raise InvalidArgument(name, f"{name} must be an integer, got {value!r}", reason="INVALID_TYPE")
    if isinstance(value, int):
        number = value
    elif (isinstance(value, float) and value.is_integer()) or (isinstance(value, str) and _INTEGER_TEXT.fullmatch(value)):
        number = int(value)
    else:
        raise InvalidArgument(name, f"{name} must be an integer, got {value!r:.80}", reason="INVALID_TYPE")
    if not _INT32[0] <= number <= _INT32[1]:
        raise InvalidArgument(name, f"{name} must be a 32-bit integer, got {number}", reason="OUT_OF_RANGE")
    return number


def _metric_id(value: Any, name: str) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise InvalidArgument(name, f"{name} must be a string", reason="INVALID_TYPE")
    if not value or len(value) > MAX_METRIC_ID:
        raise InvalidArgument(name, f"{name} must be 1-{MAX_METRIC_ID} characters", reason="OUT_OF_RANGE")
    return value


def _canonical(units: Decimal) -> Decimal:
    """Plain form, no exponent and no trailing zeros: 1E+5 and 100000.0 are both 100000."""
    return Decimal(format(units.normalize(), "f"))


def _units_text(units: Decimal) -> str:
    return format(units.normalize(), "f") if units else "0"


def _instant_text(when: datetime) -> str:
    return when.astimezone(UTC).isoformat().replace("+00:00", "Z")
