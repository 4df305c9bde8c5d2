"""Each aggregation of a billable metric as one SQL aggregate over exact numerics.

Values are read from the stored event payload with the metric's JSONPath; numbers and
decimal strings count, anything else is ignored. No float is involved: PostgreSQL
numeric in, numeric out.
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql as pg

from libs.core.errors import InvalidArgument
from services.metering import store
from services.metering.domain.usage import jsonpath_segments
from services.metering.metrics import Metric


def aggregate_expression(metric: Metric) -> Any:
    """The metric's aggregation as one SQL aggregate over exact numerics."""
    e = store.meter_events
    if metric.aggregation == "COUNT":
        return sa.func.count()
    if metric.value_property is None:
        if metric.aggregation == "UNIQUE_COUNT":
            return sa.func.count(sa.distinct(e.c.idempotency_key))
        raise InvalidArgument("id", f"metric {metric.id} has no valueProperty to {metric.aggregation}", reason="NO_VALUE_PROPERTY")
    path = sa.literal(jsonpath_segments(metric.value_property), pg.ARRAY(sa.Text))
    text = e.c.data.op("#>>")(path)
    if metric.aggregation == "UNIQUE_COUNT":
        return sa.func.count(sa.distinct(text))
    # numbers, and strings that spell a decimal, count; anything else is ignored
    numeric = sa.case(
        (sa.func.jsonb_typeof(e.c.data.op("#>")(path)) == "number", sa.cast(text, sa.Numeric)),
        (text.op("~")(r"^-?[0-9]+(\.[0-9]+)?$"), sa.cast(text, sa.Numeric)),
        else_=None,
    )
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
    raise InvalidArgument("id", f"unsupported aggregation {metric.aggregation}", reason="UNSUPPORTED_AGGREGATION")
