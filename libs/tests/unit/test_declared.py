"""Rules declared in the protos (google.api.field_behavior, accrue.api.v1.field), checked
by libs.infra.declared before any handler runs; real request messages, no I/O."""

from __future__ import annotations

import pytest
from accrue.catalog.v1 import catalog_resources_pb2 as res
from accrue.catalog.v1 import catalog_service_pb2 as catalog
from accrue.metering.v1 import metering_service_pb2 as metering
from google.protobuf import field_mask_pb2, struct_pb2

from libs.core.errors import InvalidArgument
from libs.infra.declared import check_declared


def _refused(message: object) -> tuple[str | None, str]:
    with pytest.raises(InvalidArgument) as caught:
        check_declared(message)  # type: ignore[arg-type]
    return caught.value.field, caught.value.reason


def test_a_valid_request_passes() -> None:
    check_declared(catalog.CreateProductRequest(name="LLM API", metadata={"tier": "gold"}))
    check_declared(catalog.ListProductsRequest(limit=100, offset=0))
    check_declared(catalog.CreateFeatureRequest(product_id="prod_1", key="api-calls", name="Calls", type="metered"))


@pytest.mark.parametrize(
    ("message", "field", "reason"),
    [
        (catalog.CreateProductRequest(), "name", "REQUIRED"),
        (catalog.CreateProductRequest(name="x" * 256), "name", "TOO_LONG"),
        (catalog.CreateProductRequest(name="n", metadata={f"k{i}": "v" for i in range(51)}), "metadata", "TOO_MANY_METADATA_KEYS"),
        (catalog.CreateProductRequest(name="n", metadata={"k" * 41: "v"}), "metadata", "KEY_TOO_LONG"),
        (catalog.CreateProductRequest(name="n", metadata={"plan": "v" * 501}), "metadata.plan", "TOO_LONG"),
        (catalog.ListProductsRequest(limit=0), "limit", "OUT_OF_RANGE"),
        (catalog.ListProductsRequest(limit=101), "limit", "OUT_OF_RANGE"),
        (catalog.ListProductsRequest(offset=-1), "offset", "OUT_OF_RANGE"),
        (catalog.CreateFeatureRequest(product_id="p", key="Upper", name="n"), "key", "INVALID_KEY"),
        (catalog.CreateFeatureRequest(product_id="p", key="ok", name="n", type="counter"), "type", "INVALID_ENUM_VALUE"),
        (catalog.UpdateProductRequest(id="prod_1", name=""), "name", "REQUIRED"),
        (catalog.CreatePlanRequest(product_id="p", name="n", currency="USD", billing_version=0), "billingVersion", "NOT_SUPPORTED"),
        (catalog.MintPlanVersionRequest(id="plan_1"), "prices", "REQUIRED"),
        (metering.IngestEventRequest(type="t" * 256, source="s", data=struct_pb2.Struct()), "type", "INVALID_TYPE"),
        (
            metering.IngestEventRequest(type="t", source="s", data=struct_pb2.Struct(), external_id="a b"),
            "externalId",
            "INVALID_EXTERNAL_ID",
        ),
        (metering.BatchIngestEventsRequest(), "events", "REQUIRED"),
        (catalog.CreateProductRequest(name=" \u3000"), "name", "REQUIRED"),
        (catalog.UpdatePriceRequest(id="price_1", tax=res.PriceTax(outside_scope_label="x")), "tax.supplyScope", "REQUIRED"),
        (
            catalog.UpdatePlanRequest(id="plan_1", version_transition=res.VersionTransition(effective_date="later")),
            "versionTransition.effectiveDate",
            "INVALID_ENUM_VALUE",
        ),
        (
            catalog.UpdateFeeRequest(id="fee_1", update_mask=field_mask_pb2.FieldMask(paths=["description"])),
            "description",
            "FIELD_NOT_CLEARABLE",
        ),
    ],
)
def test_each_declared_rule_names_the_rest_field(message: object, field: str, reason: str) -> None:
    assert _refused(message) == (field, reason)


def test_batch_items_are_left_to_the_handler_one_by_one() -> None:
    bad = metering.IngestEventRequest(type="", source="")  # refused on its own ...
    assert _refused(bad)[1] == "REQUIRED"
    check_declared(metering.BatchIngestEventsRequest(events=[bad]))  # ... but gets its own receipt in a batch
    assert _refused(metering.BatchIngestEventsRequest(events=[bad] * 1001)) == ("events", "BATCH_SIZE")


def test_nested_messages_are_checked_with_their_path() -> None:
    request = catalog.CreatePriceRequest(invoice_display_name="Base", payment_term="in_advance", model="flat")
    assert _refused(request) == ("model", "INVALID_ENUM_VALUE")


def test_a_clearable_field_may_be_cleared() -> None:
    check_declared(catalog.UpdateFeeRequest(id="fee_1", update_mask=field_mask_pb2.FieldMask(paths=["item_id"])))
