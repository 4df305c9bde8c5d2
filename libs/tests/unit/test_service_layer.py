"""The servicer plumbing that needs no server: masks, pages, presence, the merchant check."""

from __future__ import annotations

import pytest
from accrue.catalog.v1 import catalog_service_pb2 as svc
from google.protobuf import field_mask_pb2

from libs.core.errors import InvalidArgument, NotFound
from libs.core.paging import DEFAULT_PAGE_SIZE
from libs.infra.service_layer import FieldMask, check_merchant, opt, page_of, pagination


def test_without_a_mask_every_set_updatable_field_changes() -> None:
    mask = FieldMask(svc.UpdateFeeRequest(id="fee_1", name="New", item_id="x"), ("name", "description", "item_id"))
    assert mask.paths == {"name", "item_id"} and "description" not in mask
    assert mask.changes() == {"name": "New", "item_id": "x"}


def test_a_masked_field_that_is_unset_is_cleared_only_where_clearable() -> None:
    request = svc.UpdateFeeRequest(id="fee_1", update_mask=field_mask_pb2.FieldMask(paths=["item_id", "name"]))
    mask = FieldMask(request, ("name", "item_id"))
    assert mask.value("item_id", clearable=True) is None
    with pytest.raises(InvalidArgument) as refused:
        mask.changes(clearable=("item_id",))
    assert (refused.value.reason, refused.value.field) == ("FIELD_NOT_CLEARABLE", "name")


def test_a_field_outside_the_allowed_set_is_not_updatable_and_named_in_rest_spelling() -> None:
    request = svc.UpdateFeeRequest(id="fee_1", update_mask=field_mask_pb2.FieldMask(paths=["item_id"]))
    with pytest.raises(InvalidArgument) as refused:
        FieldMask(request, ("name",))
    assert (refused.value.reason, refused.value.field) == ("FIELD_NOT_UPDATABLE", "itemId")


def test_maps_and_repeated_fields_come_back_as_plain_values_and_convert_applies() -> None:
    request = svc.UpdateFeatureRequest(id="feat_1", metadata={"a": "1"})
    assert FieldMask(request, ("metadata",)).changes(convert={"metadata": lambda m: sorted(m)}) == {"metadata": ["a"]}
    plan = svc.UpdatePlanRequest(id="plan_1", update_mask=field_mask_pb2.FieldMask(paths=["credit_allocations"]))
    assert FieldMask(plan, ("credit_allocations",)).changes() == {"credit_allocations": []}


def test_pages_default_to_the_one_page_size_unless_the_contract_says_otherwise() -> None:
    listed = svc.ListFeesRequest()
    assert (page_of(listed).limit, page_of(listed).offset) == (DEFAULT_PAGE_SIZE, 0) == (10, 0)
    assert page_of(listed, default=20).limit == 20
    assert pagination(page_of(svc.ListFeesRequest(limit=5, offset=10)), 42).total == 42
    with pytest.raises(InvalidArgument) as refused:
        page_of(svc.ListFeesRequest(limit=101))
    assert refused.value.field == "limit"


def test_presence_and_the_merchant_check() -> None:
    assert opt(svc.ListFeesRequest(), "product_id") is None
    assert opt(svc.ListFeesRequest(product_id=""), "product_id") == ""
    check_merchant("", "org_a")
    check_merchant("org_a", "org_a")
    with pytest.raises(NotFound) as other:
        check_merchant("org_b", "org_a")
    assert other.value.field == "merchantId"
