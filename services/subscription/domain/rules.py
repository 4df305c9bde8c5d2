"""The subscription service's field rules: pure functions that return a checked value or
raise InvalidArgument naming the field in its REST spelling. The proto's declared rules
(lengths, patterns, enums) run before the handlers; these are the rules a declaration
cannot say."""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from datetime import datetime, timedelta
from decimal import Decimal, InvalidOperation
from typing import Any, Final
from urllib.parse import urlsplit

from libs.core.errors import InvalidArgument

# a start more than this before creation is backdated (paygentic-api.md §3.2)
BACKDATED_AFTER: Final = timedelta(hours=24)
# per_period billing refuses starts further back than this many months
PER_PERIOD_MAX_MONTHS: Final = 12
LIVE_STATUSES: Final = ("pending_payment", "active")
STATUSES: Final = ("pending_payment", "active", "terminated")
CHANGE_REASONS: Final = ("commercial", "correction", "migration", "unspecified")
# Invoice 0's checkout lifetime (sessionExpiryMinutes): whole minutes, at most 30 days
SESSION_EXPIRY_DEFAULT_MINUTES: Final = 240
SESSION_EXPIRY_MAX_MINUTES: Final = 43200
# the redirect keys of redirectUrls (stored) and their REST spelling
REDIRECT_FIELDS: Final = {"on_success": "redirectUrls.onSuccess", "on_failure": "redirectUrls.onFailure"}
# what the payment service takes as a redirect (an absolute http or https URL)
_HTTP_URL: Final = re.compile(r"https?://\S+")


def session_expiry_minutes(value: float | None, field: str = "sessionExpiryMinutes") -> int:
    """Invoice 0's checkout lifetime: a whole number of minutes from 1 to 43200 (30
    days); absent: 240. A JSON number arrives as a double (1.5, 1e300, NaN are refused)."""
    if value is None:
        return SESSION_EXPIRY_DEFAULT_MINUTES
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value != math.floor(value):
        raise InvalidArgument(
            field,
            f"{field} must be a whole number of minutes from 1 to {SESSION_EXPIRY_MAX_MINUTES}; got {value!r}",
            reason="INVALID_FIELD",
        )
    if not 1 <= value <= SESSION_EXPIRY_MAX_MINUTES:
        raise InvalidArgument(
            field,
            f"{field} must be from 1 to {SESSION_EXPIRY_MAX_MINUTES} minutes (30 days); got {value:g}",
            reason="OUT_OF_RANGE",
        )
    return int(value)


def redirect_url(value: str, field: str) -> str:
    """A checkout redirect: an absolute http or https URL with a host (no javascript:,
    data: or relative URL: the payment service would refuse it, and Invoice 0 would get
    no checkout)."""
    try:
        parts = urlsplit(value)
    except ValueError:
        parts = None
    if _HTTP_URL.fullmatch(value) is None or parts is None or not parts.hostname:
        raise InvalidArgument(field, f"{field} must be an absolute http or https URL; got {value!r}", reason="INVALID_URL")
    return value


def redirect_urls(values: Mapping[str, str]) -> dict[str, str]:
    """redirectUrls: onSuccess and onFailure, each an absolute http(s) URL; an empty one
    is no redirect."""
    out: dict[str, str] = {}
    for key, value in values.items():
        if key not in REDIRECT_FIELDS:
            raise InvalidArgument(f"redirectUrls.{key}", f"redirectUrls has no field {key!r}", reason="INVALID_FIELD")
        if value:
            out[key] = redirect_url(value, REDIRECT_FIELDS[key])
    return out


def percent(value: Any, field: str) -> str:
    """A tax percent (0 to 100) as a plain decimal string ("13", "8.25"). JSON numbers
    arrive as doubles; their shortest repr is the decimal the caller wrote."""
    if isinstance(value, bool) or not isinstance(value, (int, float, str, Decimal)):
        raise InvalidArgument(field, f"{field} must be a number", reason="INVALID_TAX_RATE")
    try:
        number = Decimal(repr(value) if isinstance(value, float) else str(value))
    except InvalidOperation:
        raise InvalidArgument(field, f"{field} must be a number", reason="INVALID_TAX_RATE") from None
    if not number.is_finite() or not Decimal(0) <= number <= Decimal(100):
        raise InvalidArgument(field, f"{field} must be between 0 and 100; got {value}", reason="INVALID_TAX_RATE")
    text = format(number.normalize(), "f")
    return "0" if text in ("-0", "0.0") else text


def tax_rates(values: Mapping[str, Any], field: str = "taxRates") -> dict[str, str]:
    """planId | metricId | "default" -> percent."""
    out: dict[str, str] = {}
    for key, value in values.items():
        if not key.strip():
            raise InvalidArgument(field, f"{field} keys must not be blank", reason="INVALID_TAX_RATE")
        out[key] = percent(value, f"{field}.{key}")
    return out


def tax_rates_update(value: Any, field: str = "taxRates") -> dict[str, str]:
    """UpdateCustomer's taxRates: a map replaces the rates, a number is the "default" rate."""
    if isinstance(value, Mapping):
        return tax_rates(value, field)
    if value is None:
        return {}
    return {"default": percent(value, field)}


def metadata(values: Mapping[str, Any], field: str = "metadata") -> dict[str, Any]:
    """Merchant data: string, number or boolean values."""
    for key, value in values.items():
        if value is not None and not isinstance(value, (str, int, float, bool)):
            raise InvalidArgument(f"{field}.{key}", f"{field}.{key} must be a string, a number or a boolean", reason="INVALID_METADATA")
    return dict(values)


def required_text(value: str, field: str) -> str:
    if not value or not value.strip():
        raise InvalidArgument(field, f"{field} is required", reason="REQUIRED")
    return value


def normalized_email(email: str) -> str:
    """Consumers are the same when their emails are equal ignoring case and outer blanks."""
    return email.strip().lower()


def months_before(moment: datetime, months: int) -> datetime:
    """``moment`` minus whole calendar months, the day clamped to the month's last day."""
    month_index = moment.year * 12 + (moment.month - 1) - months
    year, month = divmod(month_index, 12)
    month += 1
    next_month = datetime(year + (month == 12), month % 12 + 1, 1, tzinfo=moment.tzinfo)
    last_day = (next_month - timedelta(days=1)).day
    return moment.replace(year=year, month=month, day=min(moment.day, last_day))


def billing_starts_at(started_at: datetime, created_at: datetime, elapsed_period_billing: str) -> datetime:
    """When billing starts (paygentic-api.md §3.2): the start, except for a backdated
    start (more than 24 h before creation) billed ``none``, which bills from creation;
    ``per_period`` refuses starts more than 12 months back."""
    backdated = created_at - started_at > BACKDATED_AFTER
    if elapsed_period_billing == "per_period":
        earliest = months_before(created_at, PER_PERIOD_MAX_MONTHS)
        if started_at < earliest:
            raise InvalidArgument(
                "startedAt",
                f"startedAt {started_at.isoformat()} is more than {PER_PERIOD_MAX_MONTHS} months back; "
                "elapsedPeriodBilling per_period bills at most 12 months of elapsed periods",
                reason="STARTED_AT_TOO_OLD",
            )
        return started_at
    return created_at if backdated else started_at
