"""Meter-event ingestion, measured end to end on this machine, in one run, each figure
beside the raw ceiling of its hop measured in the same run (bench/ceilings.py):

  (a) raw ceilings: a trivial ASGI app on uvicorn (requests/s), nats-py publishing the
      same event bytes to JetStream (msgs/s), PostgreSQL primary-key reads (reads/s)
  (b) single-event POST /v0/events: requests/s and latency p50/p99, 64 connections, with
      1 gateway process and then 2 sharing the port (SO_REUSEPORT): the scaling
  (c) batch REST (POST /accrue/v1/events:batchIngest, 1,000 events a request) and the
      gRPC stream (StreamIngestEvents, 1,000-event batches): events/s accepted, and the
      events/s the aggregator stored while the run was ingesting
  (d) the delay from 202 to visible in the usage query, p50 and p99
  (e) the aggregator: events/s from a backlog on the meter stream into PostgreSQL, with
      1 and 2 worker processes: the scaling
  (f) the 202 latency at an edge (NATS leaf node, bench/edge.py) beside the central one
and a summary: each figure, its ceiling, the ratio, the issue's target and whether it is
met. At the end every accepted event is counted and the total is checked exactly: zero
lost, zero double-counted.

    .venv/bin/python -m bench.ingest                # about 3 minutes
    .venv/bin/python -m bench.ingest --seconds 60   # the 60-second sustained runs
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import httpx
import psycopg
from accrue.metering.v1 import metering_resources_pb2 as resources
from accrue.metering.v1 import metering_service_pb2 as svc
from accrue.metering.v1 import metering_service_pb2_grpc
from sqlalchemy.engine import make_url

from bench import edge as edge_bench
from bench.ceilings import raw_asgi, raw_pg_reads
from bench.httpload import LoadResult, encode_request, run_load
from libs.infra import messaging
from services.run import Mesh


def _line(label: str, value: str) -> None:
    print(f"  {label:<58} {value}", flush=True)


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else 0.0


def _count_events(database_url: str, merchant_id: str) -> tuple[int, int]:
    url = make_url(database_url).set(drivername="postgresql").render_as_string(hide_password=False)
    with psycopg.connect(url) as conn:
        row = conn.execute(
            "SELECT count(*), coalesce(sum((data->>'tokens')::numeric), 0) FROM meter_events WHERE merchant_id = %s", (merchant_id,)
        ).fetchone()
    assert row is not None
    return int(row[0]), int(row[1])


async def raw_ceiling(nats_url: str, payload: bytes, seconds: float, concurrency: int = 256) -> float:
    nc = await messaging.connect(nats_url, "bench-raw")
    js = nc.jetstream()
    stream = f"BENCH_RAW_{uuid.uuid4().hex[:6]}"
    await js.add_stream(name=stream, subjects=[f"bench.{stream}"])
    count = 0
    deadline = time.perf_counter() + seconds

    async def worker() -> None:
        nonlocal count
        while time.perf_counter() < deadline:
            await js.publish(f"bench.{stream}", payload)
            count += 1

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    elapsed = time.perf_counter() - started
    await js.delete_stream(stream)
    await nc.close()
    return count / elapsed


def merchant_token(base_url: str, api_key: str) -> str:
    """The documented route for a direct gRPC caller: the API key exchanged at the gateway."""
    answer = httpx.post(f"{base_url}/v0/internal/tokens", headers={"Authorization": f"Bearer {api_key}"})
    answer.raise_for_status()
    return str(answer.json()["token"])


async def grpc_stream(address: str, token: str, body: svc.BatchIngestEventsRequest, seconds: float, streams: int = 4) -> tuple[float, int]:
    accepted = 0
    deadline = time.perf_counter() + seconds
    # an ipv4: list (several metering processes): one channel per address, the streams
    # dealt over them in turn (a balancing channel would put streams opened before its
    # connections are up all on the first one that is)
    addresses = address.removeprefix("ipv4:").split(",")
    channels = [grpc.aio.insecure_channel(one) for one in addresses]
    try:
        stubs = [metering_service_pb2_grpc.MeteringServiceStub(channel) for channel in channels]

        async def one_stream(stub: metering_service_pb2_grpc.MeteringServiceStub) -> None:
            nonlocal accepted
            queue: asyncio.Queue[svc.StreamIngestEventsRequest | None] = asyncio.Queue(maxsize=2)

            async def requests() -> Any:
                while True:
                    item = await queue.get()
                    if item is None:
                        return
                    yield item

            call = stub.StreamIngestEvents(requests(), metadata=[("authorization", f"Bearer {token}")])
            in_flight = 0
            for _ in range(2):  # two batches in flight per stream
                await queue.put(svc.StreamIngestEventsRequest(batch=body))
                in_flight += 1
            async for response in call:
                accepted += response.receipts.accepted
                in_flight -= 1
                if time.perf_counter() < deadline:
                    await queue.put(svc.StreamIngestEventsRequest(batch=body))
                    in_flight += 1
                elif in_flight == 0:
                    await queue.put(None)

        started = time.perf_counter()
        await asyncio.gather(*(one_stream(stubs[n % len(stubs)]) for n in range(streams)))
        elapsed = time.perf_counter() - started
    finally:
        for channel in channels:
            await channel.close()
    return accepted / elapsed, accepted


async def visibility_delays(base_url: str, headers: dict[str, str], metric_id: str, event_type: str, samples: int) -> list[float]:
    delays: list[float] = []
    start = "2000-01-01T00:00:00Z"
    end = "2100-01-01T00:00:00Z"
    async with httpx.AsyncClient(base_url=base_url, headers=headers, timeout=10) as client:

        async def one() -> None:
            subject = f"cus_vis{uuid.uuid4().hex[:10]}"
            body = {"type": event_type, "source": "bench", "subject": subject, "data": {"tokens": 1}}
            response = await client.post("/v0/events", json=body)
            accepted_at = time.perf_counter()
            assert response.status_code == 202, response.text
            while True:
                meter = await client.get(f"/v0/billableMetrics/{metric_id}/meter", params={"from": start, "to": end, "subject": subject})
                if meter.json()["totalValue"] == 1:
                    delays.append(time.perf_counter() - accepted_at)
                    return
                await asyncio.sleep(0.002)

        for _ in range(samples // 10):
            await asyncio.gather(*(one() for _ in range(10)))
    return delays


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=20.0, help="duration of each throughput run")
    parser.add_argument("--backlog", type=int, default=200_000, help="events queued for the aggregator run (e)")
    parser.add_argument("--edge-events", type=int, default=500, help="single events per side for the edge latency (f)")
    args = parser.parse_args()
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass

    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}; everything on this box", flush=True)
    with tempfile.TemporaryDirectory(prefix="accrue-bench-") as state:
        mesh = Mesh(Path(state), durable=True, gateway_port=0, log_level="WARNING")
        try:
            mesh.prepare_edges(["edge"])
            mesh.start()
            run(mesh, args)
        finally:
            mesh.stop()


BATCH_TARGET = ">= 100,000/s"
STORED_TARGET = ">= 30,000/s"


@dataclass
class Figure:
    """One line of the summary: what was measured, beside its ceiling and the target."""

    what: str
    value: float
    unit: str
    ceiling: float | None = None
    ceiling_name: str = ""
    target: str = ""
    met: bool | None = None


def _summary(figures: list[Figure]) -> None:
    print("summary (every figure of this run; ceilings from this run)", flush=True)
    for f in figures:
        ratio = f"{f.value / f.ceiling:.2f} of {f.ceiling_name} {f.ceiling:,.0f}" if f.ceiling else ""
        verdict = "" if f.met is None else ("met" if f.met else "NOT met")
        target = f"target {f.target}: {verdict}" if f.target else ""
        print(f"  {f.what:<44} {f.value:>10,.0f} {f.unit:<10} {ratio:<34} {target}", flush=True)


def _ingest_figures(what: str, accepted: float, raw: float, path: str, stored: float) -> list[Figure]:
    """A batched path's two summary lines: events/s accepted, and stored meanwhile."""
    return [
        Figure(what, accepted, "events/s", raw, "raw JetStream", BATCH_TARGET, accepted >= 100_000),
        Figure(f"  stored while ingesting ({path})", stored, "events/s", target=STORED_TARGET, met=stored >= 30_000),
    ]


def _add_metering_process(mesh: Mesh) -> None:
    """A second metering process on its own port, then the gateway started again with both
    addresses (its channel balances per call: libs/infra/grpc_client.py)."""
    mesh.service_processes["metering"] = 2
    mesh.start_service("metering", 2)
    mesh.wait_healthy("metering-2")
    mesh.kill("gateway", 15)
    mesh.start_gateway_process(1)


def _single(url: str, request: bytes, seconds: float) -> tuple[LoadResult, int]:
    """The run, and the 202s of its warm-up (accepted too: the final count includes them)."""
    warm = asyncio.run(run_load(url, request, seconds=3, concurrency=64))
    return asyncio.run(run_load(url, request, seconds=seconds, concurrency=64)), warm.statuses.get(202, 0)


def run(mesh: Mesh, args: argparse.Namespace) -> None:
    headers = {"Authorization": f"Bearer {mesh.api_key}", "Content-Type": "application/json"}
    base = mesh.gateway_url
    product = httpx.post(f"{base}/v0/products", json={"name": "Bench", "description": "bench"}, headers=headers).json()
    event_type = f"bench.tokens.{uuid.uuid4().hex[:6]}"
    metric = httpx.post(
        f"{base}/v0/billableMetrics",
        json={
            "productId": product["id"], "name": "Tokens", "description": "tokens", "unit": "tokens",
            "aggregation": "SUM", "eventType": event_type, "valueProperty": "$.tokens",
        },
        headers=headers,
    ).json()  # fmt: skip
    metering_db = mesh.database_url("metering")
    single = {"type": event_type, "source": "bench", "subject": "cus_bench0001", "data": {"tokens": 1, "model": "m1"}}
    single_bytes = json.dumps(single).encode()
    expected = 0
    figures: list[Figure] = []

    # (a) raw ceilings ------------------------------------------------------------------
    print("(a) raw ceilings, this run", flush=True)
    asgi = raw_asgi(args.seconds / 2, 64)
    _line("trivial ASGI app on uvicorn (gateway settings), 64 connections", f"{asgi.rate:,.0f} requests/s")
    event = resources.MeterEvent(id="evt_x", merchant_id=mesh.merchant_id, type=event_type, source="bench", subject="cus_bench0001")
    event.data.update({"tokens": 1, "model": "m1"})
    payload = resources.MeterEventBatch(events=[event]).SerializeToString()
    raw = asyncio.run(raw_ceiling(mesh.nats_url, payload, args.seconds / 2))
    _line("nats-py -> JetStream, one event per message, 256 in flight", f"{raw:,.0f} msgs/s")
    pg_reads = raw_pg_reads(metering_db, args.seconds / 2, 16)
    _line("PostgreSQL primary-key reads, psycopg async, 16 connections", f"{pg_reads:,.0f} reads/s")

    # (b) single-event REST, 1 then 2 gateway processes ---------------------------------
    url = f"{base}/v0/events"
    request = encode_request("POST", url, headers, single_bytes)
    rates: dict[int, float] = {}
    for processes in (1, 2):
        if processes == 2:
            mesh.start_gateway_process(2)
        result, warmed = _single(url, request, args.seconds)
        expected += result.statuses.get(202, 0) + warmed
        rates[processes] = result.statuses.get(202, 0) / result.seconds
        print(f"(b) single-event POST /v0/events, 64 connections, {processes} gateway process(es)", flush=True)
        _line("requests/s (202)", f"{rates[processes]:,.0f}  ({rates[processes] / asgi.rate:.2f} of raw ASGI)")
        _line("latency p50 / p99", f"{result.percentile_ms(0.5):.1f} ms / {result.percentile_ms(0.99):.1f} ms")
        _line("non-202 answers", str(sum(n for s, n in result.statuses.items() if s != 202)))
        p99 = result.percentile_ms(0.99)
        figures.append(
            Figure(
                f"single events/s, {processes} gateway(s) (p99 {p99:.0f} ms)", rates[processes], "events/s", asgi.rate, "raw ASGI",
                ">= 10,000/s, p99 < 50 ms", rates[processes] >= 10_000 and p99 < 50,
            )
        )  # fmt: skip
    _line("scaling, 2 gateway processes / 1", f"{rates[2] / max(rates[1], 1e-9):.2f}x")
    mesh.kill("gateway-2", 15)

    # (c) batch REST and gRPC stream, 1 then 2 metering processes ----------------------
    batch_body = json.dumps({"events": [single] * 1000}).encode()
    url = f"{base}/accrue/v1/events:batchIngest"
    grpc_body = svc.BatchIngestEventsRequest(
        events=[svc.IngestEventRequest(type=event_type, source="bench", subject="cus_bench0001")] * 1000
    )
    for item in grpc_body.events:
        item.data.update({"tokens": 1, "model": "m1"})
    token = merchant_token(base, mesh.api_key)
    rates_c: dict[tuple[str, int], float] = {}
    for processes in (1, 2):
        if processes == 2:
            _add_metering_process(mesh)
        request = encode_request("POST", url, headers, batch_body)
        before, _ = _count_events(metering_db, mesh.merchant_id)
        batch = asyncio.run(run_load(url, request, seconds=args.seconds, concurrency=4))
        stored_during = (_count_events(metering_db, mesh.merchant_id)[0] - before) / batch.seconds
        batch_rate = rates_c[("batch", processes)] = batch.statuses.get(202, 0) * 1000 / batch.seconds
        expected += batch.statuses.get(202, 0) * 1000
        print(f"(c) batches of 1,000 events, {processes} metering process(es)", flush=True)
        _line("REST batch, 4 connections: events/s accepted", f"{batch_rate:,.0f}  (p99 {batch.percentile_ms(0.99):.0f} ms/request)")
        _line("  stored by the aggregator meanwhile: events/s", f"{stored_during:,.0f}")
        figures += _ingest_figures(f"REST batch events/s accepted, {processes} metering", batch_rate, raw, "REST batch", stored_during)
        before, _ = _count_events(metering_db, mesh.merchant_id)
        started = time.perf_counter()
        stream_rate, streamed = asyncio.run(grpc_stream(mesh.service_target("metering"), token, grpc_body, args.seconds))
        stored_during = (_count_events(metering_db, mesh.merchant_id)[0] - before) / (time.perf_counter() - started)
        rates_c[("stream", processes)] = stream_rate
        expected += streamed
        _line("gRPC StreamIngestEvents, 4 streams x 2 batches in flight: events/s", f"{stream_rate:,.0f}")
        _line("  stored by the aggregator meanwhile: events/s", f"{stored_during:,.0f}")
        figures += _ingest_figures(f"gRPC stream events/s accepted, {processes} metering", stream_rate, raw, "gRPC stream", stored_during)
    for kind in ("batch", "stream"):
        _line(f"scaling, 2 metering processes / 1 ({kind})", f"{rates_c[(kind, 2)] / max(rates_c[(kind, 1)], 1e-9):.2f}x")
    best = max(rates_c.values())
    _line("ratio of (c) to raw JetStream (a)", f"{best / raw:.2f}")

    # drain, then count everything accepted so far -------------------------------------
    print("(waiting for the aggregator to drain the backlog...)", flush=True)
    stable_since, last = time.monotonic(), -1
    while time.monotonic() - stable_since < 3:
        count, _ = _count_events(metering_db, mesh.merchant_id)
        if count != last:
            stable_since, last = time.monotonic(), count
        time.sleep(0.5)

    # (d) 202 -> visible ---------------------------------------------------------------
    delays = asyncio.run(visibility_delays(base, headers, metric["id"], event_type, samples=200))
    expected += len(delays)
    print("(d) 202 -> visible in GET /v0/billableMetrics/{id}/meter (idle mesh, 200 samples)", flush=True)
    _line("p50 / p99", f"{_percentile(delays, 0.5) * 1000:.0f} ms / {_percentile(delays, 0.99) * 1000:.0f} ms")

    # (e) aggregator from a backlog: one worker, then two sharing the consumer -----------
    mesh.kill("metering-aggregator", 15)
    drained: dict[int, float] = {}
    for workers in (1, 2):
        before, _ = _count_events(metering_db, mesh.merchant_id)
        queued = 0
        while queued < args.backlog:  # queued while no aggregator runs
            _, accepted = asyncio.run(
                grpc_stream(f"127.0.0.1:{mesh.processes['metering'].port}", merchant_token(base, mesh.api_key), grpc_body, 2.0)
            )
            queued += accepted
        expected += queued
        started = time.perf_counter()
        names = [f"metering-aggregator-{workers}-{n}" for n in range(workers)]
        for name in names:
            mesh.start_aggregator(name)
        first_row, first_count = 0.0, before
        while True:
            count, _ = _count_events(metering_db, mesh.merchant_id)
            if count > before and not first_row:
                first_row, first_count = time.perf_counter(), count
            if count >= before + queued:
                break
            time.sleep(0.05)
        done = time.perf_counter()
        elapsed = done - started
        for name in names:
            mesh.kill(name, 15)
        drained[workers] = (before + queued - first_count) / max(done - first_row, 1e-9)
        print(f"(e) aggregator: {queued:,} queued events, {workers} worker process(es)", flush=True)
        _line("events/s into PostgreSQL, from the first stored row", f"{drained[workers]:,.0f}")
        _line("events/s including the workers' process start", f"{queued / elapsed:,.0f}")
        figures.append(
            Figure(
                f"aggregator from a backlog, {workers} worker(s)",
                drained[workers],
                "events/s",
                target=">= 30,000/s",
                met=drained[workers] >= 30_000,
            )
        )
    _line("scaling, 2 workers / 1", f"{drained[2] / max(drained[1], 1e-9):.2f}x")
    mesh.start_aggregator()

    # (f) the edge ----------------------------------------------------------------------
    edge = mesh.start_edge("edge")
    latency = edge_bench.measure(mesh, edge.gateway_url, args.edge_events)
    expected += latency.sent
    print(f"(f) 202 latency, single events one at a time, {args.edge_events} per side, alternating", flush=True)
    edge_bench.report(latency)

    count, total = _count_events(metering_db, mesh.merchant_id)
    print("exactly once", flush=True)
    _line("stored events / SUM(tokens) (every event has tokens=1)", f"{count:,} / {total:,}")
    _line("events answered 202 / accepted", f"{expected:,}")
    _line("zero lost and zero double-counted", str(count == total == expected))
    _summary(figures)


if __name__ == "__main__":
    main()
