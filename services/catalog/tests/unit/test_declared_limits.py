"""The limits the catalog's rules enforce and the ones its protos declare (which the
OpenAPI document and the services' up-front check use) are the same numbers."""

from __future__ import annotations

from accrue.catalog.v1 import catalog_service_pb2 as svc
from google.protobuf.message import Message

from libs.infra.declared import rules_of
from services.catalog.domain import rules
from services.catalog.domain.rules import LIMITS


def _rules(message: type, field: str):  # type: ignore[no-untyped-def]
    found = rules_of(message.DESCRIPTOR.fields_by_name[field])  # type: ignore[attr-defined]
    assert found is not None, f"{message.__name__}.{field} declares no rules"
    return found


def test_text_and_metadata_limits_agree() -> None:
    message: type[Message]
    for message in (svc.CreateProductRequest, svc.CreateFeatureRequest, svc.UpdateFeatureRequest):
        declared = _rules(message, "metadata")
        assert (declared.max_items, declared.max_key_length, declared.max_length) == (
            LIMITS.metadata_keys,
            LIMITS.metadata_key_length,
            LIMITS.metadata_value_length,
        )
    for message in (svc.CreateProductRequest, svc.CreateBillableMetricRequest, svc.CreateFeeRequest, svc.CreatePlanRequest):
        assert _rules(message, "name").max_length == LIMITS.name
        assert _rules(message, "description").max_length == LIMITS.description
    for message in (svc.CreateBillableMetricRequest, svc.UpdateBillableMetricRequest):
        declared = _rules(message, "group_by")
        assert (declared.max_items, declared.max_key_length) == (LIMITS.group_by_dimensions, LIMITS.group_by_name_length)
    for message in (svc.CreatePlanRequest, svc.UpdatePlanRequest, svc.MintPlanVersionRequest):
        assert _rules(message, "prices").max_items == LIMITS.plan_prices


def test_page_sizes_agree_on_every_list() -> None:
    lists = [svc.ListProductsRequest, svc.ListBillableMetricsRequest, svc.ListFeaturesRequest, svc.ListFeesRequest,
             svc.ListPricesRequest, svc.ListPlansRequest, svc.ListPlanVersionsRequest]  # fmt: skip
    for message in lists:
        limit, offset = _rules(message, "limit"), _rules(message, "offset")
        assert (limit.minimum, limit.maximum, offset.minimum) == (1, LIMITS.page_size, 0), message.__name__


def test_enum_values_agree() -> None:
    assert tuple(_rules(svc.CreateBillableMetricRequest, "aggregation").one_of) == rules.AGGREGATIONS
    assert tuple(_rules(svc.CreateFeatureRequest, "type").one_of) == rules.FEATURE_TYPES
    assert tuple(_rules(svc.CreatePriceRequest, "payment_term").one_of) == rules.PAYMENT_TERMS
    assert tuple(_rules(svc.CreatePriceRequest, "model").one_of) == rules.PRICE_MODELS
    assert tuple(_rules(svc.CreatePriceRequest, "rate_type").one_of) == rules.RATE_TYPES
    assert tuple(_rules(svc.CreatePlanRequest, "billing_cadence").one_of) == rules.PLAN_CADENCES
    assert set(_rules(svc.CreatePlanRequest, "billing_interval").one_of) == set(rules.INTERVAL_TO_CADENCE)
    assert tuple(_rules(svc.CreatePlanRequest, "tax_behavior").one_of) == rules.TAX_BEHAVIORS
