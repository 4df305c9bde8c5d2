"""A valid price draft for the rules' tests: a standard metered price, with changes."""

from __future__ import annotations

from typing import Any

from services.catalog.domain import rules


def price_draft(**changes: Any) -> rules.PriceDraft:
    """A standard price of metric bm_1 at 0.00002 a unit, with ``changes`` applied."""
    base: dict[str, Any] = dict(
        billable_metric_id="bm_1",
        fee_id=None,
        invoice_display_name="Tokens",
        invoice_display_group=None,
        payment_term="in_arrears",
        model="standard",
        properties={"unitPrice": "0.00002"},
        billing_cadence=None,
        grant_discount_enabled=False,
        is_obligation=False,
        rate_type=None,
        supply_scope="IN_SCOPE",
        outside_scope_label=None,
        quantity=None,
        pricing_unit_id=None,
        feature_id=None,
        entitlement_template=None,
    )
    base.update(changes)
    return rules.PriceDraft(**base)
