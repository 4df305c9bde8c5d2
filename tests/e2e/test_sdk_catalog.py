"""The catalog through the official paygentic-sdk (pinned 0.6.3), against the real mesh.

Every catalog call of the quickstart plus the update/delete/version calls; each response
must parse in the SDK's models (it validates required fields, enums and status codes)
and read back equal to what was written.
"""

from __future__ import annotations

import uuid

import httpx
import pytest
from paygentic_sdk import errors, models

from libs.testing.fixtures import MerchantClient

pytestmark = pytest.mark.e2e


def _product(client: MerchantClient, name: str = "LLM Inference API") -> models.Product:
    product: models.Product = client.sdk.products.create(merchant_id=client.merchant_id, name=name, description="Token-metered inference")
    return product


def test_products_create_get_list_update_round_trip(merchant_a: MerchantClient) -> None:
    sdk = merchant_a.sdk
    created = _product(merchant_a, "Products round trip")
    assert created.id.startswith("prod_")
    assert created.merchant_id == merchant_a.merchant_id
    assert created.metadata == {}

    fetched = sdk.products.get(id=created.id)
    assert fetched == created

    listed = sdk.products.list(request={"merchant_id": merchant_a.merchant_id, "limit": 100, "offset": 0})
    assert created.id in [p.id for p in listed.data]
    assert listed.pagination.total >= 1

    updated = sdk.products.update(id=created.id, name="Renamed")
    assert updated.name == "Renamed"
    assert updated.description == created.description
    assert updated.updated_at >= created.updated_at
    assert sdk.products.get(id=created.id).name == "Renamed"


def test_quickstart_catalog_flow_round_trips(merchant_a: MerchantClient) -> None:
    sdk, merchant_id = merchant_a.sdk, merchant_a.merchant_id
    suffix = uuid.uuid4().hex[:8]
    product = _product(merchant_a)
    metric = sdk.billable_metrics.create(
        merchant_id=merchant_id,
        product_id=product.id,
        name="Tokens",
        description="Tokens processed",
        unit="tokens",
        aggregation="SUM",
        event_type="ai.inference",
        value_property="$.tokens",
    )
    assert metric.id.startswith("bm_")
    assert (metric.aggregation, metric.event_type, metric.value_property, metric.item_id) == (
        "SUM",
        "ai.inference",
        "$.tokens",
        None,
    )
    assert sdk.billable_metrics.get(id=metric.id) == metric
    metrics = sdk.billable_metrics.list(merchant_id=merchant_id, product_id=product.id)
    assert [m.id for m in metrics.data] == [metric.id]

    feature = sdk.features.create(
        merchant_id=merchant_id, product_id=product.id, key=f"ai-tokens-{suffix}", name="AI tokens", type_="metered"
    )
    assert feature.type == "metered"
    features = sdk.features.list(product_id=product.id)
    assert [f.id for f in features.data] == [feature.id]

    template = {
        "usagePeriod": {"interval": "P1M"},
        "issueAfterReset": 100000,
        "isSoftLimit": True,
        "resetMaxRollover": 0,
        "resetMinRollover": 0,
        "preserveOverageAtReset": False,
    }
    usage_price = sdk.prices.create(
        invoice_display_name="Token usage",
        payment_term="in_arrears",
        model="standard",
        billable_metric_id=metric.id,
        properties=models.StandardPriceProperties(unit_price="0.00002"),
        feature=models.PriceFeatureInput(feature_id=feature.id, entitlement_template=template),
    )
    assert usage_price.properties.unit_price == "0.00002"
    assert usage_price.billable_metric_id == metric.id
    assert usage_price.quantity == 1
    assert usage_price.tax.supply_scope == "IN_SCOPE"
    assert len(usage_price.features) == 1
    assert usage_price.features[0].feature_id == feature.id
    assert usage_price.features[0].entitlement_template == template
    assert usage_price.features[0].feature.key == feature.key

    fee = sdk.fees.create(merchant_id=merchant_id, product_id=product.id, name="Platform fee", description="Monthly platform access")
    assert fee.item_id is None
    assert sdk.fees.get(id=fee.id) == fee
    fee_price = sdk.prices.create(
        invoice_display_name="Platform fee",
        payment_term="in_advance",
        model="standard",
        fee_id=fee.id,
        billing_cadence="P1M",
        quantity=1,
        properties=models.StandardPriceProperties(unit_price="49.00"),
    )
    assert fee_price.properties.unit_price == "49.00"
    assert sdk.prices.get(id=fee_price.id) == fee_price
    prices = sdk.prices.list(request={"billable_metric_id": metric.id, "merchant_id": merchant_id})
    assert [p.id for p in prices.data] == [usage_price.id]

    plan = sdk.plans.create(
        merchant_id=merchant_id,
        product_id=product.id,
        name="Pro",
        currency="USD",
        billing_cadence="P1M",
        prices=[usage_price.id, fee_price.id],
    )
    assert plan.id.startswith("plan_")
    assert (plan.currency, plan.billing_cadence, plan.billing_interval, plan.billing_version) == ("USD", "P1M", "monthly", 1)
    assert plan.version_transition.effective_date == "end_of_current_period"
    assert sorted(p.id for p in plan.prices) == sorted([usage_price.id, fee_price.id])
    assert sdk.plans.get(id=plan.id) == plan
    plans = sdk.plans.list(request={"merchant_id": merchant_id, "product_id": product.id})
    assert [p.id for p in plans.data] == [plan.id]


def test_volume_and_graduated_prices_round_trip(merchant_a: MerchantClient) -> None:
    sdk = merchant_a.sdk
    product = _product(merchant_a, "Volume")
    metric = sdk.billable_metrics.create(
        merchant_id=merchant_a.merchant_id, product_id=product.id, name="Calls", description="API calls", unit="calls",
        aggregation="COUNT", event_type="api.call",
    )  # fmt: skip
    volume = sdk.prices.create(
        invoice_display_name="Calls",
        payment_term="in_arrears",
        model="volume",
        billable_metric_id=metric.id,
        properties=models.VolumePriceProperties(
            tiers=[models.VolumeTier(up_to="100", unit_price="5"), models.VolumeTier(up_to=None, unit_price="3")]
        ),
    )
    assert volume.model == "volume"
    assert [(t.up_to, t.unit_price) for t in volume.properties.tiers] == [("100", "5.00"), (None, "3.00")]
    assert sdk.prices.get(id=volume.id) == volume
    # Accrue's graduated and package models: the SDK's write enum has only standard and
    # volume, so they are created over plain REST, then read and updated through the SDK.
    created = httpx.post(
        f"{merchant_a.base_url}/v0/prices",
        json={
            "invoiceDisplayName": "Calls (graduated)",
            "paymentTerm": "in_arrears",
            "model": "graduated",
            "billableMetricId": metric.id,
            "properties": {"tiers": [{"upTo": "1000", "unitPrice": "0.01"}, {"upTo": None, "unitPrice": "0.005", "flatFee": "2"}]},
        },
        headers=merchant_a.headers,
    )
    assert created.status_code == 201, created.text
    graduated = sdk.prices.get(id=created.json()["id"])
    assert graduated.model == "graduated"
    assert [(t.up_to, t.unit_price) for t in graduated.properties.tiers] == [("1000", "0.01"), (None, "0.005")]
    changed = sdk.prices.update(id=graduated.id, invoice_display_name="Calls, tiered")
    assert changed.invoice_display_name == "Calls, tiered"
    assert changed.model == "graduated"
    assert created.json()["properties"]["tiers"][1]["flatFee"] == "2.00"

    package = httpx.post(
        f"{merchant_a.base_url}/v0/prices",
        json={
            "invoiceDisplayName": "Calls per 1k",
            "paymentTerm": "in_arrears",
            "model": "package",
            "billableMetricId": metric.id,
            "properties": {"unitPrice": "1.50", "packageSize": "1000", "rounding": "up"},
        },
        headers=merchant_a.headers,
    )
    assert package.status_code == 201, package.text
    read = sdk.prices.get(id=package.json()["id"])
    assert (read.model, read.properties.unit_price) == ("package", "1.50")
    assert package.json()["properties"] == {"unitPrice": "1.50", "packageSize": "1000", "rounding": "up"}


def test_updates_and_deletes(merchant_a: MerchantClient) -> None:
    sdk, merchant_id = merchant_a.sdk, merchant_a.merchant_id
    product = _product(merchant_a, "Updates")
    metric = sdk.billable_metrics.create(
        merchant_id=merchant_id, product_id=product.id, name="GB", description="Storage", unit="GB",
        aggregation="MAX", event_type="storage.sample", value_property="$.gb",
    )  # fmt: skip
    metric2 = sdk.billable_metrics.update(id=metric.id, name="GB stored", group_by={"region": "$.region"})
    assert (metric2.name, metric2.group_by, metric2.unit) == ("GB stored", {"region": "$.region"}, "GB")

    feature = sdk.features.create(merchant_id=merchant_id, product_id=product.id, key=f"sso-{uuid.uuid4().hex[:6]}", name="SSO")
    assert feature.type == "boolean"
    feature2 = sdk.features.update(id=feature.id, name="Single sign-on", metadata={"tier": "enterprise"})
    assert (feature2.name, feature2.metadata) == ("Single sign-on", {"tier": "enterprise"})
    sdk.features.delete(id=feature.id)
    with pytest.raises(errors.Error) as gone:
        sdk.features.get(id=feature.id)
    assert gone.value.status_code == 404

    fee = sdk.fees.create(merchant_id=merchant_id, product_id=product.id, name="Setup", description="One-time setup")
    fee2 = sdk.fees.update(id=fee.id, description="Setup and onboarding")
    assert fee2.description == "Setup and onboarding"
    price = sdk.prices.create(
        invoice_display_name="Setup", payment_term="in_advance", fee_id=fee.id, billing_cadence="P0D",
        properties=models.StandardPriceProperties(unit_price="500.00"),
    )  # fmt: skip
    assert price.model == "standard"
    with pytest.raises(errors.PaygenticError) as conflict:
        sdk.fees.delete(id=fee.id)
    assert conflict.value.status_code == 409
    price2 = sdk.prices.update(id=price.id, properties=models.StandardPriceProperties(unit_price="450.00"))
    assert price2.properties.unit_price == "450.00"
    sdk.prices.delete(id=price.id)
    sdk.fees.delete(id=fee.id)
    with pytest.raises(errors.Error) as fee_gone:
        sdk.fees.get(id=fee.id)
    assert fee_gone.value.status_code == 404

    plan = sdk.plans.create(merchant_id=merchant_id, product_id=product.id, name="Storage", currency="EUR", billing_interval="yearly")
    assert (plan.billing_cadence, plan.billing_interval) == ("P1Y", "yearly")
    plan2 = sdk.plans.update(id=plan.id, name="Storage plan", renewal_reminder_days=7, description="GB stored")
    assert (plan2.name, plan2.renewal_reminder_days, plan2.description) == ("Storage plan", 7, "GB stored")


def test_plan_versions_mint_default_rollback_archive(merchant_a: MerchantClient) -> None:
    sdk, merchant_id = merchant_a.sdk, merchant_a.merchant_id
    product = _product(merchant_a, "Versions")
    fee = sdk.fees.create(merchant_id=merchant_id, product_id=product.id, name="Base", description="Base fee")

    def fee_price(amount: str) -> str:
        created = sdk.prices.create(
            invoice_display_name="Base", payment_term="in_advance", fee_id=fee.id, billing_cadence="P1M",
            properties=models.StandardPriceProperties(unit_price=amount),
        )  # fmt: skip
        return str(created.id)

    p1, p2 = fee_price("10.00"), fee_price("12.00")
    plan = sdk.plans.create(
        merchant_id=merchant_id,
        product_id=product.id,
        name="Base",
        currency="USD",
        prices=[models.PlanLineInput(price_id=p1, key="base")],
    )
    v1_id = plan.default_version_id
    v2 = sdk.plans.mint_plan_version(id=plan.id, prices=[models.MintPlanLineInput(price_id=p2, key="base")], based_on_version_id=v1_id)
    assert (v2.version_number, v2.is_default, v2.status, v2.based_on_version_id) == (2, True, "published", v1_id)
    assert [(s.key, s.id, s.currency) for s in v2.prices] == [("base", p2, "USD")]
    assert [p.id for p in sdk.plans.get(id=plan.id).prices] == [p2]

    # optimistic concurrency: minting from the stale v1 is refused
    with pytest.raises(errors.PaygenticError) as stale:
        sdk.plans.mint_plan_version(id=plan.id, prices=[p1], based_on_version_id=v1_id)
    assert stale.value.status_code == 409

    versions = sdk.plans.list_plan_versions(id=plan.id)
    assert [v.version_number for v in versions.data] == [2, 1]
    assert [v.is_default for v in versions.data] == [True, False]

    rolled_back = sdk.plans.transition_plan_version(id=plan.id, version_number=1, default=True)
    assert rolled_back.is_default
    assert sdk.plans.get(id=plan.id).default_version_id == v1_id
    again = sdk.plans.transition_plan_version(id=plan.id, version_number=1, default=True)  # idempotent
    assert again.is_default

    # the price of the default version cannot be deleted; the archived one's can
    with pytest.raises(errors.PaygenticError) as in_use:
        sdk.prices.delete(id=p1)
    assert in_use.value.status_code == 409
    # archiving is Accrue's extension of the same PATCH (the SDK has no field for it)
    archived = httpx.patch(f"{merchant_a.base_url}/v0/plans/{plan.id}/versions/2", json={"status": "archived"}, headers=merchant_a.headers)
    assert archived.status_code == 200, archived.text
    assert archived.json()["status"] == "archived"
    assert models.PlanVersion.model_validate(archived.json()).status == "archived"
    refused = httpx.patch(f"{merchant_a.base_url}/v0/plans/{plan.id}/versions/2", json={"default": True}, headers=merchant_a.headers)
    assert refused.status_code == 409
    assert refused.json()["code"] == "DEFAULT_VERSION_ARCHIVE"
    sdk.prices.delete(id=p2)
    fetched = sdk.plans.get_plan_version(id=plan.id, version_number=2)
    assert fetched.prices[0].price_deleted is True
