"""The Paygentic quickstart (examples/paygentic_quickstart.py, a verbatim copy of the
reference flow) through the official SDK against the real mesh, unchanged, to its end:
every call goes to the gateway, the entitlement check, the grant and the one-off payment
link included, and the payment link it ends with opens a hosted page that takes a card.
"""

from __future__ import annotations

import importlib.util
from decimal import Decimal
from pathlib import Path
from types import ModuleType

import pytest

from libs.testing.fixtures import MerchantClient
from libs.testing.payments import open_page

pytestmark = pytest.mark.e2e

QUICKSTART = Path(__file__).resolve().parents[2] / "examples" / "paygentic_quickstart.py"


def _quickstart() -> ModuleType:
    spec = importlib.util.spec_from_file_location("paygentic_quickstart", QUICKSTART)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_quickstart_runs_to_its_end_through_the_sdk(merchant_a: MerchantClient) -> None:
    out = _quickstart().run(merchant_a.sdk, merchant_a.merchant_id)

    assert out["subscription"].startswith("sub_") and out["customer"].startswith("cus_")
    # the plan has a 49.00 in-advance fee: Invoice 0 gates activation
    assert out["status_at_create"] == "pending_payment"
    assert out["checkout_url"].startswith("http")
    assert out["invoice0_status"] == "PAID"
    assert out["status_after_invoice0"] == "active"
    assert out["event_id"]
    assert out["metered_total"] == 1500
    # one month later: Invoice 0 paid, invoice 1 (usage of period 0 + the fee of period 1)
    # closing during the grace hour, invoice 2 accruing
    assert sorted(out["invoice_statuses"]) == ["ACTIVE", "CLOSING", "PAID"]
    lines = [(name, Decimal(str(quantity)), total) for name, quantity, total in out["line_items"]]
    assert ("Platform fee", Decimal(1), "49.00") in lines
    # the 1500 tokens are covered by the allowance: the usage line bills none of them
    # (1500 x 0.00002 = 0.03 without the entitlement)
    assert ("Token usage", Decimal(0), "0.00") in lines
    assert not [line for line in lines if line[0] == "Token usage" and line[1:] != (Decimal(0), "0.00")], lines
    assert out["final_status"] == "terminated"
    # the metered feature's entitlement: 100000 units a month (issueAfterReset), soft limit;
    # 100000 - 1500 tokens = 98500 left, then the 5000-unit promo grant: 103500
    assert out["has_access"] is True
    assert out["balance"] == 98500
    assert out["balance_after_grant"] == 103500
    # the one-off payment link (POST /v0/payments): a hosted page of this merchant that takes a card
    assert out["payment_url"].startswith(f"{merchant_a.base_url}/checkout/{merchant_a.merchant_id}/ps_")
    page = open_page(out["payment_url"])
    assert page.status_code == 200 and "$10.00" in page.html, page.html[:500]
    assert page.nonce and page.tokenize_url and page.publishable_key


def test_the_quickstart_twice_reuses_nothing_it_should_not(merchant_a: MerchantClient) -> None:
    """A second run makes its own customer (another email) and its own invoices."""
    first = _quickstart().run(merchant_a.sdk, merchant_a.merchant_id)
    second = _quickstart().run(merchant_a.sdk, merchant_a.merchant_id)
    assert first["customer"] != second["customer"]
    assert first["subscription"] != second["subscription"]
    assert second["status_after_invoice0"] == "active"
    # each run's idempotency key is its own: two payments, two pages
    assert first["payment_url"] != second["payment_url"]
