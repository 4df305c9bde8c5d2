"""Several processes of one gRPC service (README "When one machine is not enough"): a
mesh with two metering processes gives the gateway both addresses, the gateway's channel
spreads its calls over them (round_robin), and every event still counts exactly once."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from libs.infra.runner import Mesh
from libs.testing.fixtures import MerchantClient
from libs.testing.meshes import whole_mesh
from libs.testing.waiting import eventually

pytestmark = pytest.mark.e2e
BATCH_INGEST = "/accrue.metering.v1.MeteringService/BatchIngestEvents"
ALL_TIME = {"from": "2000-01-01T00:00:00Z", "to": "2100-01-01T00:00:00Z"}


@pytest.fixture(scope="module")
def replicated(infra_mesh: Mesh, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mesh]:
    mesh = whole_mesh(infra_mesh, tmp_path_factory.mktemp("replicas"), "rep", service_processes={"metering": 2})
    try:
        mesh.start(merchant_name="Replicated merchant")
        yield mesh
    finally:
        mesh.stop()


def _batch_calls(state_dir: Path, process: str) -> float:
    port = int((state_dir / "ports" / f"{process}.metrics").read_text())
    text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
    return sum(
        sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == "accrue_rpc_requests_total" and sample.labels.get("method") == BATCH_INGEST
    )


def test_the_gateway_spreads_meter_events_over_both_metering_processes_and_counts_each_once(replicated: Mesh) -> None:
    mesh = replicated
    ports = [mesh.processes[name].port for name in ("metering", "metering-2")]
    assert len(set(ports)) == 2
    assert mesh.service_target("metering") == f"ipv4:127.0.0.1:{ports[0]},127.0.0.1:{ports[1]}"
    assert mesh.service_addresses()["ACCRUE_METERING_ADDR"] == mesh.service_target("metering")
    client = MerchantClient(mesh.merchant_id, mesh.api_key, None, mesh.gateway_url)
    product = httpx.post(f"{client.base_url}/v0/products", json={"name": "P", "description": "d"}, headers=client.headers).json()
    event_type = f"rep.{uuid.uuid4().hex[:8]}"
    metric = httpx.post(
        f"{client.base_url}/v0/billableMetrics",
        json={
            "productId": product["id"], "name": "T", "description": "d", "unit": "t", "aggregation": "SUM",
            "eventType": event_type, "valueProperty": "$.tokens",
        },
        headers=client.headers,
    ).json()  # fmt: skip
    subject = f"cus_{uuid.uuid4().hex[:10]}"
    url = f"{client.base_url}/accrue/v1/events:batchIngest"
    for call in range(20):
        events = [
            {"type": event_type, "source": "t", "subject": subject, "data": {"tokens": 1}, "idempotencyKey": f"c{call}-{i}"}
            for i in range(5)
        ]
        response = httpx.post(url, json={"events": events}, headers=client.headers)
        assert response.status_code == 202 and response.json()["accepted"] == 5, response.text
    again = [{"type": event_type, "source": "t", "subject": subject, "data": {"tokens": 1}, "idempotencyKey": "c0-0"}]
    for _ in range(4):  # sent again: whichever process takes it finds it stored
        assert eventually(lambda: httpx.post(url, json={"events": again}, headers=client.headers).json()["duplicates"], 1) == 1
    calls = {name: _batch_calls(mesh.state_dir, name) for name in ("metering", "metering-2")}
    # round_robin alternates per call: 24 calls give each process about half
    assert all(count >= 6 for count in calls.values()), calls
    meter = f"{client.base_url}/v0/billableMetrics/{metric['id']}/meter"

    def total() -> str:
        return str(httpx.get(meter, params={**ALL_TIME, "subject": subject}, headers=client.headers).json()["totalValueDecimal"])

    assert eventually(total, "100") == "100"
