"""The OpenAPI document carries what the protos declare, so a client generator can
validate and a fuzzer can build valid requests."""

from __future__ import annotations

import re
from typing import Any

from services.gateway.openapi import build_openapi
from services.gateway.transcoding import build_routes

DOC = build_openapi(build_routes())
SCHEMAS = DOC["components"]["schemas"]


def _param(path: str, method: str, name: str) -> dict[str, Any]:
    (found,) = [p for p in DOC["paths"][path][method]["parameters"] if p["name"] == name]
    assert isinstance(found, dict)
    return found


def test_request_bodies_list_required_fields_enums_and_lengths() -> None:
    metric = SCHEMAS["catalog_v1_CreateBillableMetricRequest"]
    assert set(metric["required"]) == {"productId", "name", "unit", "aggregation", "eventType"}
    assert "SUM" in metric["properties"]["aggregation"]["enum"]
    name = metric["properties"]["name"]
    assert (name["type"], name["minLength"], name["maxLength"]) == ("string", 1, 255)
    assert re.search(name["pattern"], " x ") and not re.search(name["pattern"], " \u3000\x1f")  # not blank
    assert metric["additionalProperties"] is False
    product = SCHEMAS["catalog_v1_CreateProductRequest"]["properties"]["metadata"]["anyOf"][0]  # null: absent
    assert product["maxProperties"] == 50 and product["propertyNames"] == {"maxLength": 40}
    assert product["additionalProperties"]["maxLength"] == 500
    feature_key = SCHEMAS["catalog_v1_CreateFeatureRequest"]["properties"]["key"]
    assert feature_key["pattern"] == "^(?:[a-z0-9][a-z0-9-]{0,63})$"


def test_list_parameters_carry_ranges() -> None:
    limit = _param("/v0/products", "get", "limit")["schema"]
    assert (limit["minimum"], limit["maximum"]) == (1, 100)
    assert _param("/v0/features", "get", "productId")["required"] is True


def test_a_patch_body_does_not_require_what_the_path_carries() -> None:
    body = DOC["paths"]["/v0/products/{id}"]["patch"]["requestBody"]["content"]["application/json"]["schema"]
    assert "id" not in body["properties"] and "required" not in body


def test_responses_require_every_field_the_gateway_always_prints() -> None:
    product = SCHEMAS["catalog_v1_Product"]
    assert {"id", "name", "createdAt", "metadata"} <= set(product["required"])
    assert "additionalProperties" not in product


def test_batch_events_have_their_bounds() -> None:
    batch = SCHEMAS["metering_v1_BatchIngestEventsRequest"]["properties"]["events"]
    assert (batch["minItems"], batch["maxItems"]) == (1, 1000)


def test_an_update_field_is_nullable_only_where_null_clears_it() -> None:
    fee = DOC["paths"]["/v0/fees/{id}"]["patch"]["requestBody"]["content"]["application/json"]["schema"]["properties"]
    assert {"type": "null"} in fee["itemId"]["anyOf"]  # clearable
    assert "anyOf" not in fee["description"]  # null is FIELD_NOT_CLEARABLE


def test_creates_link_to_what_takes_their_id() -> None:
    links = DOC["paths"]["/v0/products"]["post"]["responses"]["201"]["links"]
    assert links["GetProduct"]["parameters"] == {"path.id": "$response.body#/id"}
    assert links["CreateFee"]["requestBody"] == {"productId": "$response.body#/id"}
    price_links = DOC["paths"]["/v0/prices"]["post"]["responses"]["201"]["links"]
    assert price_links["CreatePlan"]["requestBody"] == {"prices": ["$response.body#/id"]}
    assert SCHEMAS["catalog_v1_CreateProductRequest"]["properties"]["merchantId"]["readOnly"] is True
