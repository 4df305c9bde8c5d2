"""Entitlement checks, measured end to end on this machine, in one run.

Starts the real mesh (embedded PostgreSQL and NATS, every service, the gateway as
separate processes), sets up one merchant's product with a metered feature on a usage
price (1,000,000,000 units a month, soft limit), and customers subscribed in real time
(nothing in advance: active at creation, provisioned at once). Then:

  (a) REST GET /v1/entitlements?customerId&productId&featureKey through the gateway,
      32 keep-alive connections: requests/s, latency p50/p99
  (b) gRPC CheckEntitlement straight to the entitlement service (the internal per-request
      path), 32 concurrent callers on one channel: requests/s, latency p50/p99
  (c) the delay from an event's 202 to its effect on the balance: POST /v0/events of one
      unit, then CheckEntitlement until the balance is one less, p50/p99 over ~200 events
      (10 customers, one event of each in flight at a time)
and (a) and (b) again with a single caller (latency without queueing).

The issue's targets: (b) p99 < 5 ms, (a) p99 < 20 ms, (c) p99 < 1 s. Everything shares
this machine's cores, the load generator included.

    .venv/bin/python -m bench.entitlements
    .venv/bin/python -m bench.entitlements --seconds 10 --events 200
    make bench-entitlements
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import tempfile
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import grpc
import httpx
from accrue.entitlement.v1 import entitlement_service_pb2 as ent
from accrue.entitlement.v1 import entitlement_service_pb2_grpc

from bench.httpload import encode_request, run_load
from bench.ingest import merchant_token
from services.run import Mesh

ALLOWANCE = 1_000_000_000
CONCURRENCY = 32


def _line(label: str, value: str) -> None:
    print(f"  {label:<58} {value}", flush=True)


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else 0.0


def _ok(response: httpx.Response) -> dict[str, Any]:
    if response.status_code >= 300:
        raise RuntimeError(f"{response.request.method} {response.request.url} -> {response.status_code} {response.text}")
    body: dict[str, Any] = response.json() if response.content else {}
    return body


@dataclass(frozen=True)
class Setup:
    product_id: str
    feature_key: str
    event_type: str
    customers: list[str]  # one metered entitlement each


def setup(base: str, headers: dict[str, str], merchant_id: str, customers: int) -> Setup:
    tag = uuid.uuid4().hex[:6]
    with httpx.Client(base_url=base, headers=headers, timeout=60) as client:
        product = _ok(client.post("/v0/products", json={"merchantId": merchant_id, "name": "Bench", "description": "bench"}))
        event_type = f"bench.ent.{tag}"
        metric = _ok(
            client.post(
                "/v0/billableMetrics",
                json={"merchantId": merchant_id, "productId": product["id"], "name": "Tokens", "description": "tokens", "unit": "tokens",
                      "aggregation": "SUM", "eventType": event_type, "valueProperty": "$.value"},
            )
        )  # fmt: skip
        key = f"tokens-{tag}"
        feature = _ok(
            client.post(
                "/v0/features",
                json={"merchantId": merchant_id, "productId": product["id"], "key": key, "name": "Tokens", "type": "metered"},
            )
        )
        template = {"usagePeriod": {"interval": "P1M"}, "issueAfterReset": ALLOWANCE, "isSoftLimit": True}
        price = _ok(
            client.post(
                "/v0/prices",
                json={"invoiceDisplayName": "Tokens", "paymentTerm": "in_arrears", "model": "standard", "billableMetricId": metric["id"],
                      "properties": {"unitPrice": "0.00002"}, "feature": {"featureId": feature["id"], "entitlementTemplate": template}},
            )
        )  # fmt: skip
        plan = _ok(
            client.post(
                "/v0/plans",
                json={"merchantId": merchant_id, "productId": product["id"], "name": "Bench", "currency": "USD", "billingCadence": "P1M",
                      "prices": [price["id"]]},
            )
        )  # fmt: skip
        made = []
        now = datetime.now(UTC).replace(microsecond=0).isoformat()
        for i in range(customers):
            customer = _ok(
                client.post(
                    "/v0/customers",
                    json={"merchantId": merchant_id, "consumer": {"name": f"Customer {i}", "email": f"c{i}-{tag}@bench.test",
                                                                  "address": {"country": "US", "zipCode": "94105"}}},
                )
            )  # fmt: skip
            sub = _ok(
                client.post(
                    "/v0/subscriptions",
                    json={"name": f"Bench {i}", "planId": plan["id"], "customerId": customer["customerId"], "startedAt": now},
                )
            )
            if sub["status"] != "active":
                raise RuntimeError(f"subscription {sub['id']} is {sub['status']}, expected active")
            listed = _ok(
                client.get("/v1/entitlements", params={"customerId": customer["customerId"], "productId": product["id"], "featureKey": key})
            )
            if len(listed["data"]) != 1 or listed["data"][0]["balanceDecimal"] != str(ALLOWANCE):
                raise RuntimeError(f"customer {customer['customerId']} was not provisioned: {listed}")
            made.append(str(customer["customerId"]))
        return Setup(str(product["id"]), key, event_type, made)


def rest_checks(base: str, headers: dict[str, str], s: Setup, seconds: float, concurrency: int = CONCURRENCY) -> Any:
    query = urlencode({"customerId": s.customers[0], "productId": s.product_id, "featureKey": s.feature_key})
    url = f"{base}/v1/entitlements?{query}"
    request = encode_request("GET", url, headers)
    asyncio.run(run_load(url, request, seconds=2, concurrency=concurrency))  # warm-up
    return asyncio.run(run_load(url, request, seconds=seconds, concurrency=concurrency))


async def grpc_checks(address: str, token: str, s: Setup, seconds: float, concurrency: int = CONCURRENCY) -> tuple[list[float], int, float]:
    metadata = (("authorization", f"Bearer {token}"),)
    latencies: list[float] = []
    failures = 0
    async with grpc.aio.insecure_channel(address) as channel:
        stub = entitlement_service_pb2_grpc.EntitlementServiceStub(channel)
        request = ent.CheckEntitlementRequest(customer_id=s.customers[0], feature_key=s.feature_key, product_id=s.product_id)

        async def caller(until: float, record: bool) -> None:
            nonlocal failures
            while time.perf_counter() < until:
                started = time.perf_counter()
                try:
                    answer = await stub.CheckEntitlement(request, metadata=metadata, timeout=10)
                except grpc.aio.AioRpcError:
                    failures += 1
                    continue
                if record:
                    latencies.append(time.perf_counter() - started)
                    if not answer.has_access:
                        failures += 1

        warm = time.perf_counter() + 2
        await asyncio.gather(*(caller(warm, False) for _ in range(concurrency)))
        started = time.perf_counter()
        await asyncio.gather(*(caller(started + seconds, True) for _ in range(concurrency)))
        elapsed = time.perf_counter() - started
    return latencies, failures, elapsed


async def event_to_balance(base: str, headers: dict[str, str], address: str, token: str, s: Setup, events: int) -> tuple[list[float], int]:
    """One event of one unit at a time per customer; the delay from its 202 to the balance one less."""
    metadata = (("authorization", f"Bearer {token}"),)
    delays: list[float] = []
    timeouts = 0
    per_customer = max(1, events // len(s.customers))
    async with httpx.AsyncClient(base_url=base, headers=headers, timeout=10) as client, grpc.aio.insecure_channel(address) as channel:
        stub = entitlement_service_pb2_grpc.EntitlementServiceStub(channel)

        async def balance(customer: str) -> Decimal:
            answer = await stub.CheckEntitlement(
                ent.CheckEntitlementRequest(customer_id=customer, feature_key=s.feature_key, product_id=s.product_id),
                metadata=metadata,
                timeout=10,
            )
            return Decimal(answer.balance_decimal)

        async def one_customer(customer: str) -> None:
            nonlocal timeouts
            expected = await balance(customer)
            for n in range(per_customer):
                body = {
                    "type": s.event_type,
                    "source": "bench",
                    "subject": customer,
                    "data": {"value": 1},
                    "idempotencyKey": f"{customer}-{n}",
                }
                response = await client.post("/v0/events", json=body)
                accepted = time.perf_counter()
                if response.status_code != 202:
                    raise RuntimeError(f"POST /v0/events -> {response.status_code} {response.text}")
                expected -= 1
                while await balance(customer) != expected:
                    if time.perf_counter() - accepted > 30:
                        timeouts += 1
                        break
                    await asyncio.sleep(0.002)
                else:
                    delays.append(time.perf_counter() - accepted)

        await asyncio.gather(*(one_customer(c) for c in s.customers))
    return delays, timeouts


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=10.0, help="duration of each latency run")
    parser.add_argument("--events", type=int, default=200, help="events for the 202-to-balance delay")
    parser.add_argument("--customers", type=int, default=10)
    args = parser.parse_args()
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}; everything on this box", flush=True)
    with tempfile.TemporaryDirectory(prefix="accrue-bench-") as state:
        mesh = Mesh(Path(state), durable=False, gateway_port=0, log_level="WARNING")
        try:
            mesh.start()
            run(mesh, args)
        finally:
            mesh.stop()


def run(mesh: Mesh, args: argparse.Namespace) -> None:
    base = mesh.gateway_url
    headers = {"Authorization": f"Bearer {mesh.api_key}"}
    started = time.perf_counter()
    s = setup(base, headers, mesh.merchant_id, args.customers)
    print(f"set-up: {len(s.customers)} customers subscribed and provisioned in {time.perf_counter() - started:.1f}s", flush=True)
    token = merchant_token(base, mesh.api_key)
    address = f"127.0.0.1:{mesh.processes['entitlement'].port}"

    rest = rest_checks(base, headers, s, args.seconds)
    print(f"(a) REST GET /v1/entitlements?customerId&productId&featureKey, {CONCURRENCY} connections, {args.seconds:.0f} s", flush=True)
    _line("requests/s (200)", f"{rest.statuses.get(200, 0) / rest.seconds:,.0f}")
    _line("latency p50 / p99", f"{rest.percentile_ms(0.5):.1f} ms / {rest.percentile_ms(0.99):.1f} ms  (target p99 < 20 ms)")
    _line("non-200 answers", str(sum(n for status, n in rest.statuses.items() if status != 200)))

    latencies, failures, elapsed = asyncio.run(grpc_checks(address, token, s, args.seconds))
    print(f"(b) gRPC CheckEntitlement, {CONCURRENCY} concurrent callers, one channel, {args.seconds:.0f} s", flush=True)
    _line("requests/s", f"{len(latencies) / elapsed:,.0f}")
    _line(
        "latency p50 / p99",
        f"{_percentile(latencies, 0.5) * 1000:.1f} ms / {_percentile(latencies, 0.99) * 1000:.1f} ms  (target p99 < 5 ms)",
    )
    _line("errors or no access", str(failures))

    # the same two paths with one caller: the latency of a check without queueing behind 31 others
    single = rest_checks(base, headers, s, args.seconds / 2, concurrency=1)
    one_latencies, _, _ = asyncio.run(grpc_checks(address, token, s, args.seconds / 2, concurrency=1))
    print(f"(a1, b1) the same with one caller, {args.seconds / 2:.0f} s each", flush=True)
    _line("REST latency p50 / p99", f"{single.percentile_ms(0.5):.1f} ms / {single.percentile_ms(0.99):.1f} ms")
    _line("gRPC latency p50 / p99", f"{_percentile(one_latencies, 0.5) * 1000:.1f} ms / {_percentile(one_latencies, 0.99) * 1000:.1f} ms")

    delays, timeouts = asyncio.run(event_to_balance(base, headers, address, token, s, args.events))
    print(f"(c) 202 -> balance in CheckEntitlement ({len(delays)} events, {len(s.customers)} customers, one in flight each)", flush=True)
    _line("p50 / p99", f"{_percentile(delays, 0.5) * 1000:.0f} ms / {_percentile(delays, 0.99) * 1000:.0f} ms  (target p99 < 1 s)")
    _line("events not reflected within 30 s", str(timeouts))


if __name__ == "__main__":
    main()
