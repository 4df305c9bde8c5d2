"""A balance is exact: grants minus the distinct usage metering stored, whatever the
duplicates (the same idempotency key sent again, at the same instant from many threads)
and across a restart of the entitlement service (SIGKILL, events sent while it is down,
then started again on its port), and equal to metering's own usage query for the window.

The restart runs on a mesh of its own (libs/testing/meshes.own_mesh: its own NATS and
databases), so killing the service cannot disturb the other tests.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta
from decimal import Decimal
from pathlib import Path

import pytest
from paygentic_sdk import Paygentic

from libs.infra.runner import Mesh
from libs.testing.billing import advance, at, metered
from libs.testing.entitlements import Checker, Metered, balance, expect, grant, metered_subscription, settled
from libs.testing.fixtures import MerchantClient
from libs.testing.meshes import own_mesh
from libs.testing.waiting import eventually

pytestmark = pytest.mark.e2e

TEMPLATE = {"usagePeriod": {"interval": "P1M"}, "issueAfterReset": 100000, "isSoftLimit": True}


def _send(client: MerchantClient, s: Metered, events: list[tuple[str, int, datetime]], copies: int, threads: int = 16) -> None:
    """Every (key, value, time) event ``copies`` times, all at once from ``threads`` threads,
    the copies of one event interleaved with the others'."""

    def one(item: tuple[str, int, datetime]) -> str:
        key, value, when = item
        accepted = client.sdk.events.ingest(
            request={
                "type": s.metric.event_type, "source": "https://exact.test", "subject": s.customer_id,
                "data": {"value": value}, "timestamp": when, "idempotencyKey": key,
            }
        )  # fmt: skip
        return str(accepted.idempotency_key)

    work = [item for _ in range(copies) for item in events]
    with ThreadPoolExecutor(max_workers=threads) as pool:
        keys = list(pool.map(one, work))
    assert sorted(keys) == sorted(key for key, _, _ in work)


def _events(prefix: str, values: range, when: datetime) -> list[tuple[str, int, datetime]]:
    return [(f"{prefix}-{v}", v, when + timedelta(seconds=v)) for v in values]


def test_duplicates_never_burn_twice_and_the_balance_equals_the_meter(merchant_a: MerchantClient) -> None:
    oct1, oct2 = at("2027-10-01T00:00:00Z"), at("2027-10-02T00:00:00Z")
    s = metered_subscription(merchant_a, "Exact", oct1, TEMPLATE)
    advance(merchant_a, s.clock_id, oct2)
    prefix = uuid.uuid4().hex[:8]
    # 60 distinct events of 1..60 units, each sent 3 times at once: 1 + ... + 60 = 1830 distinct units
    _send(merchant_a, s, _events(prefix, range(1, 61), oct1 + timedelta(hours=1)), copies=3)
    # 100000 - 1830 = 98170
    assert settled(merchant_a, s.entitlement_id, expect("98170", "1830")) == expect("98170", "1830")
    assert metered(merchant_a, s.metric, s.customer_id, oct1, oct2) == "1830"
    meter = merchant_a.sdk.billable_metrics.meter(id=s.metric.id, from_=oct1, to=oct2, subject=s.customer_id, window_size="DAY")
    assert meter.total_value == 1830

    # again, the same 60 and 20 new ones (61..80: 1410 units): 1830 + 1410 = 3240 distinct, 100000 - 3240 = 96760
    _send(merchant_a, s, _events(prefix, range(1, 81), oct1 + timedelta(hours=1)), copies=2)
    assert settled(merchant_a, s.entitlement_id, expect("96760", "3240")) == expect("96760", "3240")
    assert metered(merchant_a, s.metric, s.customer_id, oct1, oct2) == "3240"
    body = balance(merchant_a, s.entitlement_id)
    assert Decimal(body.balance) == Decimal(100000) - Decimal(metered(merchant_a, s.metric, s.customer_id, oct1, oct2))


@pytest.fixture
def small_mesh(infra_mesh: Mesh, tmp_path: Path) -> Iterator[Mesh]:
    mesh = own_mesh(infra_mesh, tmp_path, "entrestart")
    try:
        mesh.start(merchant_name="Restart merchant")
        yield mesh
    finally:
        mesh.stop()


def test_a_restart_of_the_entitlement_service_keeps_the_balance_exact(small_mesh: Mesh) -> None:
    mesh = small_mesh
    client = MerchantClient(
        mesh.merchant_id, mesh.api_key, Paygentic(bearer_auth=mesh.api_key, server_url=mesh.gateway_url), mesh.gateway_url
    )
    nov1, nov2 = at("2027-11-01T00:00:00Z"), at("2027-11-02T00:00:00Z")
    s = metered_subscription(client, "Restart", nov1, TEMPLATE)
    promo = grant(client, s.entitlement_id, 500, priority=1)
    advance(client, s.clock_id, nov2)
    # 40 distinct events of 1..40 units, twice each: 820 units; 100000 + 500 - 820 = 99680
    _send(client, s, _events("a", range(1, 41), nov1 + timedelta(hours=1)), copies=2, threads=8)
    assert settled(client, s.entitlement_id, expect("99680", "820")) == expect("99680", "820")
    # warm the service's usage cache, then kill it hard
    checker = Checker(f"127.0.0.1:{mesh.processes['entitlement'].port}", client.merchant_id)
    try:
        assert checker.check(s.customer_id, s.feature.key, s.catalog.product_id).balance_decimal == "99680"
    finally:
        checker.close()
    mesh.kill("entitlement")

    # while it is down: the first 40 again (duplicates) and 41..60 (1010 units) new; metering takes them all
    _send(client, s, _events("a", range(1, 61), nov1 + timedelta(hours=1)), copies=2, threads=8)
    assert eventually(lambda: metered(client, s.metric, s.customer_id, nov1, nov2), "1830", timeout=30) == "1830"

    mesh.respawn("entitlement")
    mesh.wait_healthy("entitlement", timeout=60)
    # 820 + 1010 = 1830 distinct: 100500 - 1830 = 98670, the promo grant still there
    assert settled(client, s.entitlement_id, expect("98670", "1830")) == expect("98670", "1830")
    assert client.sdk.entitlements.grants.get(entitlement_id=s.entitlement_id, grant_id=promo.id).amount == 500
    checker = Checker(f"127.0.0.1:{mesh.processes['entitlement'].port}", client.merchant_id)
    try:
        answer = checker.check(s.customer_id, s.feature.key, s.catalog.product_id)
        assert (answer.has_access, answer.balance_decimal) == (True, "98670")
    finally:
        checker.close()
    assert metered(client, s.metric, s.customer_id, nov1, nov2) == "1830"
