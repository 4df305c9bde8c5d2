"""Edge ingestion (README "Edge ingestion"): an edge gateway and an ingest-only metering on
a NATS leaf node answer 202 once the leaf's JetStream holds the events, also while the
leaf's link to the hub is cut; the central meter stream sources the edge stream when the
link is back, and every event is counted exactly once centrally, including events sent
again with the same idempotency key at the edge and centrally.

The leaf reaches the hub through a TCP proxy the test cuts (every connection closed, new
ones refused at once) and restores; both nats-servers' /leafz say when the link is down
or up, so nothing here waits on a timer."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import nats
import psycopg
import pytest
from accrue.metering.v1 import metering_resources_pb2 as resources
from sqlalchemy.engine import make_url

from libs.infra.runner import Edge, Mesh
from libs.testing.fixtures import MerchantClient
from libs.testing.meshes import whole_mesh
from libs.testing.metering import ALL_TIME, create_metric
from libs.testing.waiting import eventually
from services.metering import events as meter_events
from services.metering.aggregator import DURABLE as AGGREGATOR_DURABLE

pytestmark = pytest.mark.e2e


class CuttableProxy:
    """A loopback TCP proxy to ``target`` whose link can be cut and restored: ``cut()``
    closes every open connection and closes new ones as soon as they are accepted."""

    def __init__(self, target: int) -> None:
        self.target = target
        self._server = socket.create_server(("127.0.0.1", 0))
        self.port = int(self._server.getsockname()[1])
        self._open = threading.Event()
        self._open.set()
        self._lock = threading.Lock()
        self._sockets: set[socket.socket] = set()
        self._closed = False
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def url(self) -> str:
        return f"nats-leaf://127.0.0.1:{self.port}"

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self._server.accept()
            except OSError:
                return
            if not self._open.is_set():
                client.close()
                continue
            try:
                upstream = socket.create_connection(("127.0.0.1", self.target))
            except OSError:
                client.close()
                continue
            with self._lock:
                self._sockets |= {client, upstream}
            for source, sink in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(source, sink), daemon=True).start()

    def _pipe(self, source: socket.socket, sink: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while data := source.recv(65536):
                sink.sendall(data)
        for s in (source, sink):
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)

    def cut(self) -> None:
        self._open.clear()
        with self._lock:
            sockets, self._sockets = self._sockets, set()
        for s in sockets:
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)
            s.close()

    def restore(self) -> None:
        self._open.set()

    def close(self) -> None:
        self._closed = True
        self.cut()
        self._server.close()


@pytest.fixture(scope="module")
def edge_mesh(infra_mesh: Mesh, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Mesh, Edge, CuttableProxy]]:
    """A mesh of its own (its hub NATS accepts leaf nodes; PostgreSQL is the session's) and
    one edge whose leaf node reaches the hub through a CuttableProxy."""
    mesh = whole_mesh(infra_mesh, tmp_path_factory.mktemp("edge-mesh"), "edge")
    proxy: CuttableProxy | None = None
    try:
        mesh.prepare_edges(["edge"])
        mesh.start(merchant_name="Edge merchant")
        assert mesh.nats is not None and mesh.nats.leafnode_port is not None
        proxy = CuttableProxy(mesh.nats.leafnode_port)
        edge = mesh.start_edge("edge", hub=proxy.url)
        yield mesh, edge, proxy
    finally:
        if proxy is not None:
            proxy.close()
        mesh.stop()


def _clients(mesh: Mesh, edge: Edge) -> tuple[MerchantClient, MerchantClient]:
    central = MerchantClient(mesh.merchant_id, mesh.api_key, None, mesh.gateway_url)
    return central, MerchantClient(mesh.merchant_id, mesh.api_key, None, edge.gateway_url)


def _total(client: MerchantClient, metric_id: str, subject: str) -> str:
    meter = httpx.get(
        f"{client.base_url}/v0/billableMetrics/{metric_id}/meter", params={**ALL_TIME, "subject": subject}, headers=client.headers
    )
    assert meter.status_code == 200, meter.text
    value: str = meter.json()["totalValueDecimal"]
    return value


def _stored(mesh: Mesh, subject: str) -> list[tuple[str, Any]]:
    """(idempotency key, tokens) of the subject's stored rows, as metering's database has them."""
    url = make_url(mesh.database_url("metering")).set(drivername="postgresql").render_as_string(hide_password=False)
    with psycopg.connect(url) as conn:
        rows = conn.execute(
            "SELECT idempotency_key, data->'tokens' FROM meter_events WHERE merchant_id = %s AND subject = %s ORDER BY idempotency_key",
            (mesh.merchant_id, subject),
        ).fetchall()
    return [(key, tokens) for key, tokens in rows]


def _send(client: MerchantClient, metric: dict[str, Any], subject: str, key: str, tokens: int) -> httpx.Response:
    body = {"type": metric["eventType"], "source": "edge-test", "subject": subject, "idempotencyKey": key, "data": {"tokens": tokens}}
    return httpx.post(f"{client.base_url}/v0/events", json=body, headers=client.headers, timeout=20)


async def _streams(mesh: Mesh, edge: Edge) -> dict[str, Any]:
    """The hub's meter stream (its messages by origin), the edge stream, and the aggregator's backlog."""
    hub = await nats.connect(mesh.nats_url)
    leaf = await nats.connect(edge.nats.url)
    try:
        hub_js, leaf_js = hub.jetstream(), leaf.jetstream()
        central = await hub_js.stream_info(meter_events.STREAM)
        edge_stream = await leaf_js.stream_info(meter_events.EDGE_STREAM)
        sourced = direct = 0
        keys: list[str] = []
        for seq in range(central.state.first_seq, central.state.last_seq + 1):
            msg = await hub_js.get_msg(meter_events.STREAM, seq)
            assert msg.subject is not None and msg.subject.startswith(f"{meter_events.SUBJECT_PREFIX}.")
            if msg.headers and "Nats-Stream-Source" in msg.headers:
                sourced += 1
            else:
                direct += 1
            keys += [e.idempotency_key for e in resources.MeterEventBatch.FromString(msg.data or b"").events]
        consumer = await hub_js.consumer_info(meter_events.STREAM, AGGREGATOR_DURABLE)
        return {
            "edge_messages": edge_stream.state.messages,
            "sourced": sourced,
            "direct": direct,
            "keys": keys,
            "backlog": consumer.num_pending + consumer.num_ack_pending,
            "sources": [(s.name, s.external.api if s.external else None) for s in central.config.sources or []],
        }
    finally:
        await hub.close()
        await leaf.close()


def test_events_sent_at_the_edge_during_a_link_outage_are_counted_once_when_it_is_back(
    edge_mesh: tuple[Mesh, Edge, CuttableProxy],
) -> None:
    mesh, edge, proxy = edge_mesh
    central, at_edge = _clients(mesh, edge)
    metric = create_metric(central)
    subject = f"cus_{uuid.uuid4().hex[:10]}"

    # the path works with the link up; the edge knows the merchant's event types (catalog)
    assert _send(at_edge, metric, subject, "warm-up", 1).status_code == 202
    assert eventually(lambda: _total(central, metric["id"], subject), "1", timeout=20) == "1"
    unknown = {"type": "nobody.consumes", "source": "edge-test", "subject": subject, "data": {}}
    refused = httpx.post(f"{at_edge.base_url}/v0/events", json=unknown, headers=at_edge.headers, timeout=20)
    assert (refused.status_code, refused.json()["code"]) == (422, "UNKNOWN_EVENT_TYPE")
    before = asyncio.run(_streams(mesh, edge))
    assert before["sources"] == [(meter_events.EDGE_STREAM, meter_events.edge_api("edge"))]

    proxy.cut()
    edge.nats.wait_leaf_connections(0)
    assert mesh.nats is not None
    mesh.nats.wait_leaf_connections(0)

    # at the edge, while cut: singles (one sent twice), a batch (with a key sent again), and
    # a key also sent centrally
    singles = [_send(at_edge, metric, subject, f"single-{i}", 10) for i in range(5)]
    again = _send(at_edge, metric, subject, "single-0", 10)
    batch_events = [
        {"type": metric["eventType"], "source": "edge-test", "subject": subject, "idempotencyKey": key, "data": {"tokens": tokens}}
        for key, tokens in (("batch-0", 100), ("batch-1", 100), ("batch-2", 100), ("single-1", 10), ("both", 100))
    ]
    batch = httpx.post(
        f"{at_edge.base_url}/accrue/v1/events:batchIngest", json={"events": batch_events}, headers=at_edge.headers, timeout=20
    )
    assert [r.status_code for r in singles] == [202] * 5 and again.status_code == 202, [r.text for r in (*singles, again)]
    assert again.json()["id"] == singles[0].json()["id"]
    assert batch.status_code == 202 and batch.json()["accepted"] == 5, batch.text

    # centrally: the same "both" key, and a barrier event; once the barrier is counted the
    # aggregator has read everything the hub had, and none of the edge's events is there
    assert _send(central, metric, subject, "both", 100).status_code == 202
    assert _send(central, metric, subject, "central-barrier", 1000).status_code == 202
    assert eventually(lambda: _total(central, metric["id"], subject), "1101", timeout=20) == "1101"
    assert [key for key, _ in _stored(mesh, subject)] == ["both", "central-barrier", "warm-up"]
    cut = asyncio.run(_streams(mesh, edge))
    assert cut["edge_messages"] > before["edge_messages"]  # durable at the edge, acknowledged there
    assert cut["sourced"] == before["sourced"] and cut["backlog"] == 0

    proxy.restore()
    edge.nats.wait_leaf_connections(1)
    mesh.nats.wait_leaf_connections(1)

    # 1 warm-up + 5 singles x 10 + batch-0..2 x 100 + both (100, once) + barrier 1000
    expected = str(1 + 50 + 300 + 100 + 1000)
    assert eventually(lambda: _total(central, metric["id"], subject), expected, timeout=30) == expected

    def settled() -> tuple[int, int]:
        state = asyncio.run(_streams(mesh, edge))
        return state["sourced"], state["backlog"]

    final = asyncio.run(_streams(mesh, edge))
    assert eventually(settled, (final["edge_messages"], 0), timeout=20) == (final["edge_messages"], 0)
    final = asyncio.run(_streams(mesh, edge))
    # every edge message is in the hub stream once (sourced), and nothing else of the edge:
    # the hub stream's other messages are the central gateway's two publishes
    assert (final["sourced"], final["direct"]) == (final["edge_messages"], 2)
    assert final["keys"].count("single-0") == 1  # the same call again: JetStream's duplicate window at the edge
    assert final["keys"].count("both") == 2 and final["keys"].count("single-1") == 2  # sent twice, stored ...
    # ... and counted once, with everything else
    assert _total(central, metric["id"], subject) == expected
    keys = ["batch-0", "batch-1", "batch-2", "both", "central-barrier", *(f"single-{i}" for i in range(5)), "warm-up"]
    assert [key for key, _ in _stored(mesh, subject)] == keys
    # the edge's own usage answers read the same rows (on this box, the central database)
    assert _total(at_edge, metric["id"], subject) == expected


def test_the_edge_ingests_on_its_leaf_node_with_the_central_services_behind_it(edge_mesh: tuple[Mesh, Edge, CuttableProxy]) -> None:
    """The edge's processes run the registry's definitions under the names start_edge gives
    them, on their own ports, and the ingest process is on the leaf node, not the hub."""
    mesh, edge, _ = edge_mesh
    assert edge.ingest.env["ACCRUE_NATS_URL"] == edge.nats.url != mesh.nats_url
    assert edge.gateway.env["ACCRUE_METERING_ADDR"] == f"127.0.0.1:{edge.ingest.port}"
    assert edge.gateway.env["ACCRUE_CATALOG_ADDR"] == f"127.0.0.1:{mesh.processes['catalog'].port}"
    assert edge.ingest.port != mesh.processes["metering"].port and edge.gateway_url != mesh.gateway_url
    assert httpx.get(f"{edge.gateway_url}/readyz", timeout=5).status_code == 200
    assert Path(edge.nats.store_dir / "nats.conf").read_text().count('"domain": "edge"') == 1
