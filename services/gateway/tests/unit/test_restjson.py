"""Protobuf <-> Paygentic JSON: the two descriptor-driven adjustments to json_format."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from accrue.catalog.v1 import catalog_resources_pb2 as res
from accrue.catalog.v1 import catalog_service_pb2 as svc
from google.protobuf import timestamp_pb2

from libs.core.errors import InvalidArgument
from services.gateway import restjson


def _ts(year: int = 2026) -> timestamp_pb2.Timestamp:

    out = timestamp_pb2.Timestamp()
    out.FromDatetime(datetime(year, 1, 2, 3, 4, 5, tzinfo=UTC))
    return out


def test_unset_optional_fields_render_as_null_and_defaults_are_printed() -> None:
    metric = res.BillableMetric(id="bm_1", object="billableMetric", aggregation="COUNT", create_time=_ts(), update_time=_ts())
    out = restjson.message_to_json(metric)
    assert out["itemId"] is None  # req·null in the contract: the key must be there
    assert out["valueProperty"] is None
    assert out["eventFrom"] is None
    assert out["groupBy"] == {}
    assert out["description"] == ""
    assert out["createdAt"] == "2026-01-02T03:04:05Z"


def test_nested_messages_and_repeated_messages_get_nulls_too() -> None:
    price = res.Price(id="price_1", tax=res.PriceTax(supply_scope="IN_SCOPE"), features=[res.PriceFeature(id="pf_1", feature_id="feat_1")])
    out = restjson.message_to_json(price)
    assert out["tax"] == {"supplyScope": "IN_SCOPE", "outsideScopeLabel": None}
    assert out["features"][0]["feature"] is None
    assert out["billableMetricId"] is None and out["feeId"] is None
    assert out["quantity"] == 0 and isinstance(out["quantity"], int)


def test_set_optional_fields_keep_their_values() -> None:
    fee = res.Fee(id="fee_1", item_id="item_9")
    assert restjson.message_to_json(fee)["itemId"] == "item_9"


def test_offsetless_datetimes_are_read_as_utc() -> None:
    request = svc.CreateBillableMetricRequest()
    restjson.parse_into(request, {"eventFrom": "2026-02-01T00:00:00", "name": "x"})
    assert request.event_from_time.ToDatetime(tzinfo=UTC) == datetime(2026, 2, 1, tzinfo=UTC)
    with_offset = svc.CreateBillableMetricRequest()
    restjson.parse_into(with_offset, {"eventFrom": "2026-02-01T02:00:00+02:00"})
    assert with_offset.event_from_time.ToDatetime(tzinfo=UTC) == datetime(2026, 2, 1, tzinfo=UTC)


def test_parse_errors_name_the_field() -> None:
    with pytest.raises(InvalidArgument) as unknown:
        restjson.parse_into(svc.CreateProductRequest(), {"name": "x", "colour": "red"})
    assert (unknown.value.field, unknown.value.reason) == ("colour", "UNKNOWN_FIELD")
    with pytest.raises(InvalidArgument) as wrong_type:
        restjson.parse_into(svc.CreatePriceRequest(), {"quantity": "many"})
    assert wrong_type.value.field == "quantity"
    assert wrong_type.value.reason == "INVALID_FIELD"


def test_null_in_a_body_clears_and_is_still_in_the_mask() -> None:
    body = {"itemId": None, "name": "n"}
    request = svc.UpdateFeeRequest()
    restjson.parse_into(request, dict(body))
    assert not request.HasField("item_id")
    assert restjson.mask_paths(request.DESCRIPTOR, body) == ["item_id", "name"]


def test_query_parameters_map_by_json_name_and_reject_unknowns() -> None:
    descriptor = svc.ListPricesRequest.DESCRIPTOR
    assert restjson.query_to_json(descriptor, [("billableMetricId", "bm_1"), ("limit", "5")]) == {
        "billableMetricId": "bm_1",
        "limit": "5",
    }
    request = svc.ListPricesRequest()
    restjson.parse_into(request, restjson.query_to_json(descriptor, [("limit", "5"), ("offset", "10")]))
    assert (request.limit, request.offset) == (5, 10)
    with pytest.raises(InvalidArgument) as bad:
        restjson.query_to_json(descriptor, [("limt", "5")])
    assert bad.value.field == "limt"


def test_an_offset_past_23_59_is_refused() -> None:
    with pytest.raises(InvalidArgument) as bad:
        restjson.parse_into(svc.CreateBillableMetricRequest(), {"eventFrom": "2026-12-01T11:00:00+25:00"})
    assert bad.value.field == "eventFrom"
    request = svc.CreateBillableMetricRequest()
    restjson.parse_into(request, {"eventFrom": "2026-12-01T11:00:00+23:59"})
    assert request.HasField("event_from_time")


def test_true_is_no_number_at_any_level() -> None:
    from accrue.entitlement.v1 import entitlement_service_pb2 as ent

    with pytest.raises(InvalidArgument) as top:
        restjson.parse_into(ent.CreateGrantRequest(), {"amount": True, "idempotencyKey": "k"})
    assert (top.value.field, top.value.reason) == ("amount", "INVALID_FIELD")
    with pytest.raises(InvalidArgument) as nested:
        restjson.parse_into(ent.IssueEntitlementRequest(), {"customerId": "c", "featureId": "f", "template": {"issueAfterReset": False}})
    assert nested.value.field == "template.issueAfterReset"
    parsed = ent.CreateGrantRequest()
    restjson.parse_into(parsed, {"amount": 2.5, "idempotencyKey": "k"})
    assert parsed.amount == 2.5


def test_a_query_boolean_is_true_false_1_or_0() -> None:
    from accrue.entitlement.v1 import entitlement_service_pb2 as ent

    descriptor = ent.ListGrantsRequest.DESCRIPTOR
    assert restjson.query_to_json(descriptor, [("includeVoided", "true")]) == {"includeVoided": True}
    assert restjson.query_to_json(descriptor, [("includeVoided", "0")]) == {"includeVoided": False}
    with pytest.raises(InvalidArgument) as refused:
        restjson.query_to_json(descriptor, [("includeVoided", "maybe")])
    assert (refused.value.field, refused.value.reason) == ("includeVoided", "INVALID_FIELD")
