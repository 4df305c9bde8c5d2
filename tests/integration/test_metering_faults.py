"""Exactly once under faults: SIGKILL the aggregator mid-batch, SIGKILL metering mid-requests.

Each test runs its own small mesh (catalog + metering, its own NATS server, its own
databases on the session's PostgreSQL) so that killing processes and counting rows
cannot be disturbed by the shared mesh. Every event carries tokens=1 and a distinct
idempotency key, so "counted exactly once" is: the stored keys are exactly the accepted
ones (plus, at most, keys whose call died with the process), and SUM equals COUNT.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import grpc
import psycopg
import pytest
from accrue.catalog.v1 import catalog_service_pb2 as catalog
from accrue.catalog.v1 import catalog_service_pb2_grpc
from accrue.metering.v1 import metering_service_pb2 as svc
from accrue.metering.v1 import metering_service_pb2_grpc
from sqlalchemy.engine import make_url

from libs.infra.runner import ROOT, Mesh
from libs.testing.meshes import own_mesh
from libs.testing.tokens import merchant_metadata

pytestmark = pytest.mark.integration
MERCHANT = "org_faults0000001"
METADATA = [merchant_metadata(MERCHANT)]


@pytest.fixture
def small_mesh(infra_mesh: Mesh, tmp_path: Path) -> Iterator[Mesh]:
    mesh = own_mesh(infra_mesh, tmp_path, "faults")
    mesh.extra_env["ACCRUE_AGGREGATOR_ENABLED"] = "false"  # aggregators run as their own processes here
    for name in ("catalog", "metering"):
        mesh.start_service(name)
    for name in ("catalog", "metering"):
        mesh.wait_healthy(name)
    yield mesh
    mesh.stop()


def _event_type(mesh: Mesh) -> str:
    event_type = f"faults.{uuid.uuid4().hex[:8]}"
    with grpc.insecure_channel(f"127.0.0.1:{mesh.processes['catalog'].port}") as channel:
        stub = catalog_service_pb2_grpc.CatalogServiceStub(channel)
        product = stub.CreateProduct(catalog.CreateProductRequest(name="Faults", description="d"), metadata=METADATA)
        stub.CreateBillableMetric(
            catalog.CreateBillableMetricRequest(
                product_id=product.id,
                name="T",
                description="d",
                unit="t",
                aggregation="SUM",
                event_type=event_type,
                value_property="$.tokens",
            ),
            metadata=METADATA,
        )
    return event_type


def _stored(mesh: Mesh) -> tuple[list[str], int]:
    url = make_url(mesh.database_url("metering")).set(drivername="postgresql").render_as_string(hide_password=False)
    with psycopg.connect(url) as conn:
        keys = [r[0] for r in conn.execute("SELECT idempotency_key FROM meter_events WHERE merchant_id = %s", (MERCHANT,))]
        total = conn.execute("SELECT coalesce(sum((data->>'tokens')::numeric), 0) FROM meter_events WHERE merchant_id = %s", (MERCHANT,))
        row = total.fetchone()
    assert row is not None
    return keys, int(row[0])


def _aggregator(mesh: Mesh) -> subprocess.Popen[bytes]:
    env = mesh.service_env("metering")
    return subprocess.Popen([sys.executable, "-m", "services.run", "metering-aggregator"], env=env, cwd=ROOT, start_new_session=True)


def _wait_stable(mesh: Mesh, expected: int, timeout: float = 60) -> list[str]:
    deadline = time.monotonic() + timeout
    keys: list[str] = []
    while time.monotonic() < deadline:
        keys, _ = _stored(mesh)
        if len(keys) >= expected:
            time.sleep(1.0)  # anything extra would show now
            return _stored(mesh)[0]
        time.sleep(0.1)
    raise AssertionError(f"only {len(keys)} of {expected} events were stored within {timeout}s")


def _batch(event_type: str, keys: list[str]) -> svc.BatchIngestEventsRequest:
    request = svc.BatchIngestEventsRequest()
    for key in keys:
        event = request.events.add(type=event_type, source="faults", subject="cus_faults", idempotency_key=key)
        event.data.update({"tokens": 1})
    return request


def test_sigkill_of_the_aggregator_mid_batch_loses_and_doubles_nothing(small_mesh: Mesh) -> None:
    event_type = _event_type(small_mesh)
    accepted: list[str] = []
    with grpc.insecure_channel(f"127.0.0.1:{small_mesh.processes['metering'].port}") as channel:
        stub = metering_service_pb2_grpc.MeteringServiceStub(channel)
        for n in range(40):
            keys = [f"a{n}-{i}" for i in range(1000)]
            response = stub.BatchIngestEvents(_batch(event_type, keys), metadata=METADATA)
            assert response.accepted == 1000
            accepted += keys
    worker = _aggregator(small_mesh)
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and len(_stored(small_mesh)[0]) < 5000:
            time.sleep(0.02)
        stored_at_kill = len(_stored(small_mesh)[0])
        worker.kill()  # SIGKILL, with batches fetched and not yet acked
        worker.wait(10)
        assert 0 < stored_at_kill < len(accepted), "the kill must land in the middle of the backlog"
    finally:
        if worker.poll() is None:
            worker.kill()
    restarted = _aggregator(small_mesh)
    try:
        keys = _wait_stable(small_mesh, len(accepted))
    finally:
        restarted.terminate()
        restarted.wait(10)
    assert sorted(keys) == sorted(accepted)
    assert _stored(small_mesh)[1] == len(accepted)


def test_sigkill_of_metering_mid_requests_counts_every_accepted_event_once(small_mesh: Mesh) -> None:
    event_type = _event_type(small_mesh)
    accepted: set[str] = set()
    refused: set[str] = set()
    lost_in_crash: set[str] = set()

    async def send(port: int, keys: list[str], stop_at: float) -> None:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = metering_service_pb2_grpc.MeteringServiceStub(channel)

            async def one(key: str) -> None:
                bad = key.endswith("7")  # every tenth event is refused: unknown type
                request = svc.IngestEventRequest(
                    type="nobody.home" if bad else event_type, source="faults", subject="cus_f", idempotency_key=key
                )
                request.data.update({"tokens": 1})
                try:
                    await stub.IngestEvent(request, metadata=METADATA, timeout=10)
                    accepted.add(key)
                except grpc.aio.AioRpcError as exc:
                    if exc.code() == grpc.StatusCode.FAILED_PRECONDITION:
                        refused.add(key)
                    else:
                        lost_in_crash.add(key)

            for start in range(0, len(keys), 50):
                if time.monotonic() > stop_at:
                    return
                await asyncio.gather(*(one(k) for k in keys[start : start + 50]))

    async def scenario() -> None:
        port = small_mesh.processes["metering"].port
        sender = asyncio.create_task(send(port, [f"m{i}" for i in range(100_000)], time.monotonic() + 20))
        await asyncio.sleep(2.0)
        small_mesh.kill("metering")  # SIGKILL while requests are in flight
        await sender
        small_mesh.start_service("metering")
        await asyncio.to_thread(small_mesh.wait_healthy, "metering")
        await send(small_mesh.processes["metering"].port, [f"r{i}" for i in range(500)], time.monotonic() + 30)

    asyncio.run(scenario())
    assert len(accepted) >= 400 and len(refused) >= 40  # both phases ran (slow machines send fewer)
    worker = _aggregator(small_mesh)
    try:
        keys = _wait_stable(small_mesh, len(accepted))
    finally:
        worker.terminate()
        worker.wait(10)
    stored = set(keys)
    assert len(keys) == len(stored), "an event was stored twice"
    assert accepted <= stored, f"{len(accepted - stored)} accepted events were lost"
    assert not (stored & refused), "a refused event was counted"
    assert stored <= accepted | lost_in_crash
    assert _stored(small_mesh)[1] == len(stored)


def test_duplicates_across_an_aggregator_restart_count_once(small_mesh: Mesh) -> None:
    event_type = _event_type(small_mesh)
    with grpc.insecure_channel(f"127.0.0.1:{small_mesh.processes['metering'].port}") as channel:
        stub = metering_service_pb2_grpc.MeteringServiceStub(channel)
        stub.BatchIngestEvents(_batch(event_type, [f"d{i}" for i in range(100)]), metadata=METADATA)
        worker = _aggregator(small_mesh)
        _wait_stable(small_mesh, 100)
        worker.kill()
        worker.wait(10)
        # the same keys again, after the restart: some inside JetStream's window, and the
        # durable record catches them anyway
        again = stub.BatchIngestEvents(_batch(event_type, [f"d{i}" for i in range(100)]), metadata=METADATA)
        assert again.duplicates == 100 and again.accepted == 0
        forced = _batch(event_type, [f"d{i}" for i in range(100)])
        forced.skip_duplicate_check = True  # straight onto the stream: only the database can drop them
        stub.BatchIngestEvents(forced, metadata=METADATA)
    worker = _aggregator(small_mesh)
    try:
        time.sleep(3)
        keys, total = _stored(small_mesh)
    finally:
        worker.terminate()
        worker.wait(10)
    assert sorted(keys) == sorted(f"d{i}" for i in range(100))
    assert total == 100
