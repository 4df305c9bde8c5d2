"""A line's provenance on the wire, in the shape of Paygentic's ``LineProvenance``.

The calculation (domain/calculation.py) records each line's provenance as Accrue writes
it: the inputs, the usage query, the price function, every step of the pricing library
and the rounding. The official SDK parses ``provenance`` strictly (``LineProvenance``:
``inputs.quantity`` is ``{value, source}``, a source's ``ref`` and ``asUsed`` are objects,
a step's ``in``/``out`` a plain decimal string or a price function, ``trace`` a list), and
an answer that does not fit makes it drop the invoice's ``lineItems`` altogether. So the
wire form is built here from the recorded one, field by field, and the recorded document
travels whole beside it under ``recorded`` (ignored by the SDK, read by people and by
Accrue's own tests).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

NOT_RECORDED: dict[str, Any] = {"status": "notRecorded"}


def _text(value: Any) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    if isinstance(value, (int, float, bool)) or value is None:
        return json.dumps(value)
    return json.dumps(value, sort_keys=True, default=str)


def _int(value: Any, default: int) -> int:
    try:
        return int(value)
    except (TypeError, ValueError):
        return default


def _object(value: Any) -> dict[str, Any] | None:
    if value is None:
        return None
    if isinstance(value, Mapping):
        return dict(value)
    return {"value": value}


def _given(value: Any, source: str) -> dict[str, str] | None:
    """``{value, source}``: a recorded input as the SDK's LineCalculationGiven."""
    if value is None:
        return None
    if isinstance(value, Mapping) and "value" in value and "source" in value:
        return {"value": _text(value["value"]), "source": _text(value["source"])}
    return {"value": _text(value), "source": source}


def _price_fn(fn: Any) -> dict[str, Any]:
    fn = dict(fn) if isinstance(fn, Mapping) else {"model": _text(fn)}
    out: dict[str, Any] = {key: value for key, value in fn.items() if key not in ("model", "rate", "bands", "min", "max", "amount")}
    out["model"] = _text(fn.get("model", "unit"))
    for key in ("rate", "amount"):
        if fn.get(key) is not None:
            out[key] = _text(fn[key])
    for key in ("min", "max"):
        if key in fn:
            out[key] = None if fn[key] is None else _text(fn[key])
    if isinstance(fn.get("bands"), list):
        out["bands"] = [
            {"upTo": None if band.get("upTo") is None else _text(band["upTo"]), "rate": _text(band.get("rate", band.get("unitPrice", "0")))}
            for band in fn["bands"]
            if isinstance(band, Mapping)
        ]
    return out


def _value(value: Any, on: str) -> Any:
    """A step's ``in``/``out``: the value the step acts on as a decimal string (or a price
    function); None when the recorded step has no single such value."""
    if value is None:
        return None
    if isinstance(value, Mapping):
        if "model" in value:
            return _price_fn(value)
        if on in value:
            return _text(value[on])
        if len(value) == 1:
            return _text(next(iter(value.values())))
        return None
    return _text(value)


def _step(step: Mapping[str, Any]) -> dict[str, Any]:
    on = _text(step.get("on", "amount"))
    params = dict(step.get("params") or {}) if isinstance(step.get("params"), Mapping) else {}
    recorded_in, recorded_out = step.get("in"), step.get("out")
    # what does not fit a single value stays in params, so nothing is lost
    if isinstance(recorded_in, Mapping) and (len(recorded_in) > 1 or _value(recorded_in, on) is None):
        params.setdefault("inputs", dict(recorded_in))
    if isinstance(recorded_out, Mapping) and len(recorded_out) > 1:
        params.setdefault("outputs", dict(recorded_out))
    out_value = _value(recorded_out, on)
    shaped: dict[str, Any] = {
        "op": _text(step.get("op", "evaluate")),
        "on": on,
        "in": _value(recorded_in, on),
        "out": out_value if out_value is not None else _text(recorded_out),
        "params": params,
        "source": _text(step.get("source", "")),
    }
    trace = step.get("trace")
    if isinstance(trace, Mapping):
        shaped["trace"] = [dict(trace)]
    elif isinstance(trace, list):
        shaped["trace"] = [dict(t) if isinstance(t, Mapping) else {"value": t} for t in trace]
    inputs_from = step.get("inputsFrom")
    if isinstance(inputs_from, list):
        shaped["inputsFrom"] = [
            {
                "lineItemId": _text(c.get("lineItemId", "")),
                "value": _text(c.get("value", "")),
                "share": None if c.get("share") is None else _text(c["share"]),
            }
            for c in inputs_from
            if isinstance(c, Mapping)
        ]
    return shaped


def wire(recorded: Mapping[str, Any] | None, *, subscription_id: str | None = None, calculated_at: str | None = None) -> dict[str, Any]:
    """The SDK-shaped provenance of a line, with the recorded document under ``recorded``."""
    if not recorded:
        return dict(NOT_RECORDED)
    status = _text(recorded.get("status", "recorded"))
    out: dict[str, Any] = {"status": status}
    if status != "recorded":
        return out
    out["version"] = _int(recorded.get("version"), 1)
    if recorded.get("currency") is not None:
        out["currency"] = _text(recorded["currency"])
    precision = recorded.get("precision")
    if isinstance(precision, Mapping):
        digits = precision.get("significantDigits", precision.get("scale", 0))
        out["precision"] = {"significantDigits": _int(digits, 0), "rounding": _text(precision.get("rounding", "half_up"))}
    period = recorded.get("period")
    if isinstance(period, Mapping) and period.get("start") and period.get("end"):
        out["period"] = {"start": _text(period["start"]), "end": _text(period["end"])}
    if calculated_at is not None:
        out["calculatedAt"] = calculated_at
    if subscription_id is not None:
        out["subscriptionId"] = subscription_id
    sources = recorded.get("sources")
    if isinstance(sources, Mapping):
        shaped_sources: dict[str, Any] = {}
        for key, source in sources.items():
            source = source if isinstance(source, Mapping) else {"type": _text(source)}
            entry: dict[str, Any] = {"type": _text(source.get("type", key))}
            for name in ("ref", "asUsed"):
                if source.get(name) is not None:
                    entry[name] = _object(source[name])
            if source.get("reason") is not None:
                entry["reason"] = _text(source["reason"])
            shaped_sources[_text(key)] = entry
        out["sources"] = shaped_sources
    inputs = recorded.get("inputs")
    if isinstance(inputs, Mapping):
        usage_source = "usage" if isinstance(sources, Mapping) and "usage" in sources else "quantity"
        shaped_inputs: dict[str, Any] = {"kind": _text(inputs.get("kind", "given"))}
        for name, source in (("quantity", usage_source), ("selector", usage_source), ("amount", "amount")):
            given = _given(inputs.get(name), source)
            if given is not None:
                shaped_inputs[name] = given
        price = inputs.get("price")
        if isinstance(price, Mapping):
            shaped_inputs["price"] = {"fn": _price_fn(price.get("fn", {})), "source": _text(price.get("source", "price"))}
        out["inputs"] = shaped_inputs
    steps = recorded.get("steps")
    if isinstance(steps, list):
        out["steps"] = [_step(step) for step in steps if isinstance(step, Mapping)]
    not_applied = recorded.get("notApplied")
    if isinstance(not_applied, list):
        out["notApplied"] = [
            {"source": _text(n.get("source", "")), "reason": _text(n.get("reason", ""))} for n in not_applied if isinstance(n, Mapping)
        ]
    result = recorded.get("result")
    if isinstance(result, Mapping):
        out["result"] = {
            "amount": _text(result.get("amount", "")),
            "quantity": None if result.get("quantity") is None else _text(result["quantity"]),
            "unitPrice": None if result.get("unitPrice") is None else _text(result["unitPrice"]),
        }
    out["recorded"] = dict(recorded)
    return out
