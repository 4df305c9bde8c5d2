"""Prometheus metrics scraped from every process of a real mesh (issue 8, item 4): each
process writes its metrics port next to its port file; after a REST call and a meter event,
the route's and the RPC's counters moved, metering's consumers report their lag, the
aggregator counts what it stored, catalog reports its outbox backlog, every process its pool."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from libs.infra.runner import Mesh
from libs.testing.fixtures import MerchantClient
from services.metering.aggregator import DURABLE as AGGREGATOR_DURABLE
from services.metering.app import METRICS_DURABLE
from services.metering.subjects import CUSTOMER_DURABLE
from services.registry import SERVICES, WORKERS

pytestmark = pytest.mark.e2e
PROCESSES = ("gateway", *(d.name for d in SERVICES), *(d.name for d in WORKERS))
CREATE_PRODUCT = "/accrue.catalog.v1.CatalogService/CreateProduct"

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def _metrics_port(mesh: Mesh, name: str) -> int:
    return int((mesh.state_dir / "ports" / f"{name}.metrics").read_text())


def _scrape(mesh: Mesh, name: str) -> Samples:
    response = httpx.get(f"http://127.0.0.1:{_metrics_port(mesh, name)}/metrics", timeout=5)
    assert response.status_code == 200, (name, response.text)
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(response.text)
        for sample in family.samples
    }


def _value(samples: Samples, name: str, **labels: str) -> float | None:
    return samples.get((name, frozenset(labels.items())))


def _eventually(check: Callable[[], bool], timeout: float = 15) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "the metric did not appear in time"
        time.sleep(0.2)


def test_every_process_serves_metrics_on_the_port_it_wrote(mesh: Mesh) -> None:
    for name in PROCESSES:
        samples = _scrape(mesh, name)
        assert any(metric == "accrue_db_pool_size" for metric, _ in samples), name
        assert any(metric == "process_cpu_seconds_total" for metric, _ in samples), name


def test_a_rest_call_and_a_meter_event_move_the_counters(mesh: Mesh, merchant_a: MerchantClient) -> None:
    def product_posts() -> float:
        return _value(_scrape(mesh, "gateway"), "accrue_http_requests_total", method="POST", route="/v0/products", status="201") or 0

    def product_rpcs() -> float:
        return _value(_scrape(mesh, "catalog"), "accrue_rpc_requests_total", method=CREATE_PRODUCT, code="OK") or 0

    posts, rpcs = product_posts(), product_rpcs()
    product = httpx.post(f"{merchant_a.base_url}/v0/products", json={"name": "M", "description": "m"}, headers=merchant_a.headers)
    assert product.status_code == 201, product.text
    assert product_posts() == posts + 1
    assert product_rpcs() == rpcs + 1
    # the route is its template: no series carries the product's id
    gateway = _scrape(mesh, "gateway")
    assert not any(product.json()["id"] in value for _, labels in gateway for _, value in labels)
    assert (_value(gateway, "accrue_http_request_duration_seconds_count", method="POST", route="/v0/products") or 0) >= 1

    metric = httpx.post(
        f"{merchant_a.base_url}/v0/billableMetrics",
        json={"productId": product.json()["id"], "name": "T", "description": "t", "unit": "t", "aggregation": "SUM",
              "valueProperty": "$.tokens", "eventType": f"metrics.{uuid.uuid4().hex[:10]}"},
        headers=merchant_a.headers,
    )  # fmt: skip
    assert metric.status_code == 201, metric.text
    event = {"type": metric.json()["eventType"], "source": "t", "subject": f"cus_{uuid.uuid4().hex[:12]}", "data": {"tokens": 2}}
    accepted = httpx.post(f"{merchant_a.base_url}/v0/events", json=event, headers=merchant_a.headers)
    assert accepted.status_code == 202, accepted.text

    def stored() -> float:
        return _value(_scrape(mesh, "metering-aggregator"), "accrue_consumer_events_total", consumer=AGGREGATOR_DURABLE) or 0

    _eventually(lambda: stored() > 0)
    # the consumers' lag, sampled from consumer_info: metering's two and the aggregator's
    metering, aggregator = _scrape(mesh, "metering"), _scrape(mesh, "metering-aggregator")
    lag = {dict(labels)["consumer"] for name, labels in [*metering, *aggregator] if name == "accrue_consumer_pending"}
    assert {METRICS_DURABLE, CUSTOMER_DURABLE, AGGREGATOR_DURABLE} <= lag
    assert any(name == "accrue_consumer_redelivered" and dict(labels)["consumer"] == AGGREGATOR_DURABLE for name, labels in aggregator)
    # catalog's relay samples its backlog, and counted the product's and the metric's events
    catalog = _scrape(mesh, "catalog")
    assert _value(catalog, "accrue_outbox_backlog", service="catalog") is not None
    assert (_value(catalog, "accrue_outbox_published_total", service="catalog") or 0) >= 2
    assert _value(catalog, "accrue_db_pool_checked_out", service="catalog") is not None
