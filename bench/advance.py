"""A test-clock advance of one month over N subscriptions, measured end to end.

Starts the real mesh (embedded PostgreSQL and NATS, every service, the gateway as
separate processes), with the grace period set to 0 so that a one-month advance closes,
calculates and issues every subscription's invoice 1. Builds a plan with a monthly
in-advance fee and two metered prices (standard and graduated), one test clock, N
customers each subscribed on the clock with Invoice 0 paid, and usage for both metrics
of every customer; then times ``PATCH /v0/testClocks/{id} {"advanceBy": "P1M"}`` and
checks that exactly N invoices with sequence number 1 were issued.

Everything shares this machine's cores, the load generator included.

    .venv/bin/python -m bench.advance --subscriptions 1000
    .venv/bin/python -m bench.advance --subscriptions 10000   # the issue's target: < 60 s
    make bench-advance                                        # 1,000 then 10,000
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import os
import platform
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx

from services.run import Mesh

START = "2027-03-01T00:00:00Z"


async def _bounded(concurrency: int, jobs: list[Callable[[], Awaitable[Any]]], label: str) -> list[Any]:
    semaphore = asyncio.Semaphore(concurrency)
    done = 0
    started = time.perf_counter()

    async def run(job: Callable[[], Awaitable[Any]]) -> Any:
        nonlocal done
        async with semaphore:
            result = await job()
        done += 1
        if done % 1000 == 0:
            print(f"  {label}: {done}/{len(jobs)} ({done / (time.perf_counter() - started):,.0f}/s)", flush=True)
        return result

    return await asyncio.gather(*(run(job) for job in jobs))


def _ok(response: httpx.Response) -> dict[str, Any]:
    if response.status_code >= 300:
        raise RuntimeError(f"{response.request.method} {response.request.url} -> {response.status_code} {response.text}")
    body: dict[str, Any] = response.json() if response.content else {}
    return body


async def _catalog(client: httpx.AsyncClient, merchant_id: str) -> tuple[str, str, str]:
    product = _ok(await client.post("/v0/products", json={"merchantId": merchant_id, "name": "Bench", "description": "bench"}))
    metrics = []
    for name in ("tokens", "requests"):
        metrics.append(
            _ok(
                await client.post(
                    "/v0/billableMetrics",
                    json={
                        "merchantId": merchant_id,
                        "productId": product["id"],
                        "name": name,
                        "description": name,
                        "unit": name,
                        "aggregation": "SUM",
                        "eventType": f"bench.{name}",
                        "valueProperty": "$.value",
                    },
                )
            )
        )
    fee = _ok(
        await client.post("/v0/fees", json={"merchantId": merchant_id, "productId": product["id"], "name": "Seat", "description": "seat"})
    )
    prices = [
        _ok(
            await client.post(
                "/v0/prices",
                json={
                    "invoiceDisplayName": "Seat",
                    "paymentTerm": "in_advance",
                    "model": "standard",
                    "feeId": fee["id"],
                    "billingCadence": "P1M",
                    "quantity": 1,
                    "properties": {"unitPrice": "20.00"},
                },
            )
        ),
        _ok(
            await client.post(
                "/v0/prices",
                json={
                    "invoiceDisplayName": "Tokens",
                    "paymentTerm": "in_arrears",
                    "model": "standard",
                    "billableMetricId": metrics[0]["id"],
                    "properties": {"unitPrice": "0.00002"},
                },
            )
        ),
        _ok(
            await client.post(
                "/v0/prices",
                json={
                    "invoiceDisplayName": "Requests",
                    "paymentTerm": "in_arrears",
                    "model": "graduated",
                    "billableMetricId": metrics[1]["id"],
                    "properties": {"tiers": [{"upTo": "100", "unitPrice": "0.01"}, {"upTo": None, "unitPrice": "0.005"}]},
                },
            )
        ),
    ]
    plan = _ok(
        await client.post(
            "/v0/plans",
            json={
                "merchantId": merchant_id,
                "productId": product["id"],
                "name": "Bench",
                "currency": "USD",
                "billingCadence": "P1M",
                "prices": [p["id"] for p in prices],
            },
        )
    )
    return plan["id"], metrics[0]["eventType"], metrics[1]["eventType"]


async def _setup(base: str, api_key: str, merchant_id: str, n: int, concurrency: int) -> tuple[str, list[str]]:
    headers = {"Authorization": f"Bearer {api_key}"}
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=base, headers=headers, timeout=60, limits=limits) as client:
        plan_id, tokens_type, requests_type = await _catalog(client, merchant_id)
        clock = _ok(await client.post("/v0/testClocks", json={"merchantId": merchant_id, "currentTime": START, "name": "bench"}))
        tag = uuid.uuid4().hex[:6]

        async def subscribe(i: int) -> str:
            created = _ok(
                await client.post(
                    "/v0/customers",
                    json={
                        "merchantId": merchant_id,
                        "externalId": f"bench-{tag}-{i}",
                        "consumer": {
                            "name": f"Customer {i}",
                            "email": f"c{i}-{tag}@bench.test",
                            "address": {"country": "US", "zipCode": "94105"},
                        },
                    },
                )
            )
            sub = _ok(
                await client.post(
                    "/v0/subscriptions",
                    json={
                        "name": f"Bench {i}",
                        "planId": plan_id,
                        "customerId": created["customerId"],
                        "startedAt": START,
                        "testClockId": clock["id"],
                    },
                )
            )
            _ok(await client.post(f"/v2/invoices/{sub['payment']['invoiceId']}/payment", json={"method": "out_of_band"}))
            return str(created["customerId"])

        started = time.perf_counter()
        customers = await _bounded(concurrency, [functools.partial(subscribe, i) for i in range(n)], "subscriptions")
        print(f"  {n} customers subscribed and Invoice 0 paid in {time.perf_counter() - started:.1f}s", flush=True)

        events = []
        for customer in customers:
            for k in range(2):
                events.append(
                    {
                        "type": tokens_type,
                        "source": "bench",
                        "subject": customer,
                        "data": {"value": 1500 + k},
                        "timestamp": "2027-03-01T00:02:00Z",
                    }
                )
                events.append(
                    {
                        "type": requests_type,
                        "source": "bench",
                        "subject": customer,
                        "data": {"value": 70},
                        "timestamp": "2027-03-01T00:03:00Z",
                    }
                )
        batches = [events[i : i + 1000] for i in range(0, len(events), 1000)]

        async def ingest(batch: list[dict[str, Any]]) -> None:
            _ok(await client.post("/accrue/v1/events:batchIngest", json={"events": batch}))

        await _bounded(4, [functools.partial(ingest, batch) for batch in batches], "event batches")
        return str(clock["id"]), customers


async def _advance(base: str, api_key: str, merchant_id: str, clock_id: str, n: int) -> tuple[float, int, str]:
    headers = {"Authorization": f"Bearer {api_key}"}
    async with httpx.AsyncClient(base_url=base, headers=headers, timeout=900) as client:
        started = time.perf_counter()
        _ok(await client.patch(f"/v0/testClocks/{clock_id}", json={"advanceBy": "P1M"}))
        elapsed = time.perf_counter() - started
        issued, offset, sample = 0, 0, ""
        while True:
            page = _ok(
                await client.get("/v2/invoices", params={"merchantId": merchant_id, "status": "ISSUED", "limit": 100, "offset": offset})
            )
            for invoice in page["data"]:
                if invoice["sequenceNumber"] == 1:
                    issued += 1
                    sample = sample or f"{invoice['invoiceNumber']} grandTotal {invoice['grandTotal']}"
            offset += 100
            if offset >= page["pagination"]["total"]:
                break
        return elapsed, issued, sample


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--subscriptions", type=int, nargs="+", default=[1000])
    parser.add_argument("--concurrency", type=int, default=16)
    args = parser.parse_args()
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}")
    for n in args.subscriptions:
        with tempfile.TemporaryDirectory(prefix="accrue-bench-") as state:
            mesh = Mesh(
                Path(state), durable=False, gateway_port=0, log_level="WARNING", extra_env={"ACCRUE_SUBSCRIPTION_GRACE_PERIOD_SECONDS": "0"}
            )
            try:
                mesh.start()
                print(f"set-up of {n} subscriptions (a fee and two metered prices each, with usage)", flush=True)
                clock_id, _ = asyncio.run(_setup(mesh.gateway_url, mesh.api_key, mesh.merchant_id, n, args.concurrency))
                time.sleep(2)  # the aggregator drains the usage (the advance waits for it too)
                elapsed, issued, sample = asyncio.run(_advance(mesh.gateway_url, mesh.api_key, mesh.merchant_id, clock_id, n))
            finally:
                mesh.stop()
        print(f"advance P1M over {n:,} subscriptions: {elapsed:.1f}s, {issued:,} invoices issued ({issued / elapsed:,.0f} invoices/s)")
        print(f"  e.g. {sample}")
        if issued != n:
            raise SystemExit(f"expected {n} issued invoices with sequence number 1, found {issued}")


if __name__ == "__main__":
    main()
