"""The 202 latency of single meter events at an edge beside the central one, same run.

Starts the real mesh with one edge (Mesh.prepare_edges / start_edge: a NATS leaf node
with JetStream domain ``edge``, the ingest-only ``metering-edge`` on it and a gateway of
its own) and sends single ``POST /v0/events`` one at a time, alternating between the
central gateway and the edge gateway, so both see the same machine load. A 202 at the
edge means the leaf node's JetStream has the event; centrally, the hub's. Afterwards
every event must be counted once centrally (the edge ones through the stream source).

On one box the edge saves no network distance: what this shows is that the edge path
costs no more than the central one (its benefit is the round trip to a far hub that it
takes off the answer, and staying up while the link is down).

    .venv/bin/python -m bench.edge
    .venv/bin/python -m bench.edge --events 2000
    make bench-edge
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import httpx

from libs.testing.fixtures import MerchantClient
from libs.testing.metering import ALL_TIME, create_metric
from libs.testing.waiting import eventually
from services.run import Mesh


@dataclass(frozen=True)
class EdgeLatency:
    """Seconds to a 202, per side."""

    central: list[float]
    edge: list[float]
    # events sent in all (both sides, warm-up included), each counted once centrally
    sent: int = 0


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else 0.0


def measure(mesh: Mesh, edge_url: str, events: int) -> EdgeLatency:
    """``events`` single events to each side, alternating; checks each is counted once centrally."""
    client = MerchantClient(mesh.merchant_id, mesh.api_key, None, mesh.gateway_url)
    metric = create_metric(client)
    subject = f"cus_{uuid.uuid4().hex[:10]}"
    timings: dict[str, list[float]] = {"central": [], "edge": []}
    with httpx.Client(headers=client.headers, timeout=30) as http:

        def send(side: str, base: str, record: bool) -> None:
            body = {"type": metric["eventType"], "source": "bench", "subject": subject, "data": {"tokens": 1}}
            started = time.perf_counter()
            answer = http.post(f"{base}/v0/events", json=body)
            elapsed = time.perf_counter() - started
            if answer.status_code != 202:
                raise RuntimeError(f"{side}: POST /v0/events -> {answer.status_code} {answer.text}")
            if record:
                timings[side].append(elapsed)

        for _ in range(20):  # warm-up: channels, metric caches, coalescers
            send("central", mesh.gateway_url, False)
            send("edge", edge_url, False)
        for _ in range(events):
            send("central", mesh.gateway_url, True)
            send("edge", edge_url, True)

        expected = str(2 * (events + 20))

        def total() -> str:
            meter = http.get(f"{mesh.gateway_url}/v0/billableMetrics/{metric['id']}/meter", params={**ALL_TIME, "subject": subject})
            value: str = meter.json()["totalValueDecimal"]
            return value

        counted = eventually(total, expected, timeout=60)
        if counted != expected:
            raise RuntimeError(f"central total {counted}, expected {expected}: an event was lost or counted twice")
    return EdgeLatency(central=timings["central"], edge=timings["edge"], sent=int(expected))


def report(latency: EdgeLatency) -> None:
    for side, values in (("central gateway (hub JetStream ack)", latency.central), ("edge gateway (leaf JetStream ack)", latency.edge)):
        p50, p99 = percentile(values, 0.5) * 1000, percentile(values, 0.99) * 1000
        print(f"  {side:<40} n={len(values):<6} p50 {p50:7.2f} ms   p99 {p99:7.2f} ms", flush=True)


def run(events: int = 1000, state_dir: Path | None = None) -> EdgeLatency:
    """Start a mesh with one edge (in ``state_dir``, else a temporary one), measure, print, stop."""
    with tempfile.TemporaryDirectory(prefix="accrue-bench-edge-") as temporary:
        mesh = Mesh(state_dir or Path(temporary), durable=False, gateway_port=0, log_level="WARNING")
        try:
            mesh.prepare_edges(["edge"])
            mesh.start()
            edge = mesh.start_edge("edge")
            latency = measure(mesh, edge.gateway_url, events)
        finally:
            mesh.stop()
    print(f"single POST /v0/events, one at a time, {events} per side, alternating; every event counted once centrally", flush=True)
    report(latency)
    return latency


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--events", type=int, default=1000, help="single events per side")
    args = parser.parse_args()
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}; everything on this box", flush=True)
    run(args.events)


if __name__ == "__main__":
    main()
