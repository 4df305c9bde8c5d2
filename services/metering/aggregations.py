"""Each aggregation of a billable metric over exact numerics.

Values are read from the stored event payload with the metric's JSONPath; numbers and
decimal strings count, anything else is ignored. No float is involved: PostgreSQL
numeric in, numeric out.

Beyond Paygentic's SUM, COUNT, AVG, MIN, MAX, UNIQUE_COUNT and LATEST:

* ``P50``, ``P95``, ``P99``: PostgreSQL's ``percentile_disc``, i.e. the nearest-rank
  percentile. With the N numeric values sorted ascending, the result is the value at
  1-based position ``max(1, ceil(p * N))``: always an actual sample, exact, never
  interpolated (``percentile_cont`` would interpolate, and only in float8). PostgreSQL
  computes ``p * N`` in float8; for p = 0.5, 0.95, 0.99 that ceiling equals the exact
  rational one for every N below a million (checked), so the rank is exact in practice.
  No numeric value in the range: 0, like the other value aggregations.
* ``TIME_WEIGHTED_SUM`` (GB-hours and the like): see ``services.metering.usage_query``;
  it is not one aggregate over the events in range but an integral over time, so it has
  its own query shape there. This module gives it the value expression and the exact
  seconds-to-hours conversion (``value_hours``).
"""

from __future__ import annotations

from decimal import Decimal
from fractions import Fraction
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql as pg

from libs.core.errors import InvalidArgument
from services.metering import store
from services.metering.domain.usage import jsonpath_segments
from services.metering.metrics import Metric

# aggregation -> the fraction handed to percentile_disc
PERCENTILES = {"P50": 0.5, "P95": 0.95, "P99": 0.99}
TIME_WEIGHTED_SUM = "TIME_WEIGHTED_SUM"
# value-hours are the exact integral rounded once, half-even, to this many decimal places
VALUE_HOURS_PLACES = 20


def _value_path(metric: Metric) -> Any:
    if metric.value_property is None:
        raise InvalidArgument("id", f"metric {metric.id} has no valueProperty to {metric.aggregation}", reason="NO_VALUE_PROPERTY")
    return sa.literal(jsonpath_segments(metric.value_property), pg.ARRAY(sa.Text))


def numeric_value(metric: Metric) -> Any:
    """The event's value as SQL numeric, or NULL when it is not a number.

    Numbers, and strings that spell a decimal, count; anything else is ignored.
    """
    e = store.meter_events
    path = _value_path(metric)
    text = e.c.data.op("#>>")(path)
    return sa.case(
        (sa.func.jsonb_typeof(e.c.data.op("#>")(path)) == "number", sa.cast(text, sa.Numeric)),
        (text.op("~")(r"^-?[0-9]+(\.[0-9]+)?$"), sa.cast(text, sa.Numeric)),
        else_=None,
    )


def is_time_weighted(metric: Metric) -> bool:
    return metric.aggregation == TIME_WEIGHTED_SUM


def value_hours(value_seconds: Decimal) -> Decimal:
    """sum(value x seconds held) -> value-hours: the exact quotient by 3600, rounded once.

    The division by 3600 (= 2^4 * 3^2 * 5^2) does not terminate in general (1 GB for one
    second is 0.000277...), so the exact rational is rounded half-even to
    ``VALUE_HOURS_PLACES`` (20) decimal places, exactly once: |error| <= 5e-21. Whenever
    the exact quotient has at most 20 decimal places (e.g. whole seconds of values with at
    most 16 decimals, divisible by 9) the result is exact. Fractions, never floats.
    """
    units = round(Fraction(value_seconds) * 10**VALUE_HOURS_PLACES / 3600)  # nearest integer, ties to even
    # built from text: Decimal arithmetic would round to the context's 28 digits
    digits = str(abs(units)).rjust(VALUE_HOURS_PLACES + 1, "0")
    whole, fraction = digits[:-VALUE_HOURS_PLACES], digits[-VALUE_HOURS_PLACES:].rstrip("0")
    return Decimal(f"{'-' if units < 0 else ''}{whole}{'.' if fraction else ''}{fraction}")


def aggregate_expression(metric: Metric) -> Any:
    """The metric's aggregation as one SQL aggregate over exact numerics."""
    e = store.meter_events
    if metric.aggregation == "COUNT":
        return sa.func.count()
    if metric.value_property is None and metric.aggregation == "UNIQUE_COUNT":
        return sa.func.count(sa.distinct(e.c.idempotency_key))
    if metric.aggregation == "UNIQUE_COUNT":
        return sa.func.count(sa.distinct(e.c.data.op("#>>")(_value_path(metric))))
    numeric = numeric_value(metric)
    if metric.aggregation == "SUM":
        return sa.func.coalesce(sa.func.sum(numeric), 0)
    if metric.aggregation == "AVG":
        return sa.func.avg(numeric)
    if metric.aggregation == "MIN":
        return sa.func.min(numeric)
    if metric.aggregation == "MAX":
        return sa.func.max(numeric)
    if metric.aggregation == "LATEST":
        ordered = sa.func.array_agg(pg.aggregate_order_by(numeric, e.c.time.desc(), e.c.idempotency_key.desc()))
        return sa.type_coerce(ordered, pg.ARRAY(sa.Numeric))[1]
    if metric.aggregation in PERCENTILES:
        # nearest rank over the non-NULL values (NULLs, i.e. non-numbers, are skipped)
        fraction: Any = sa.literal(PERCENTILES[metric.aggregation], sa.Double())
        return sa.func.percentile_disc(fraction).within_group(numeric)
    if is_time_weighted(metric):
        raise ValueError("TIME_WEIGHTED_SUM is an integral over time, not one aggregate: use usage_query.query_usage")
    raise InvalidArgument("id", f"unsupported aggregation {metric.aggregation}", reason="UNSUPPORTED_AGGREGATION")
