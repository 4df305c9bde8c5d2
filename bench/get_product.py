"""Requests/s of GET /v0/products/{id} through the gateway (gateway -> catalog -> PostgreSQL).

Starts the real mesh (embedded PostgreSQL and NATS, every service, the gateway as
separate processes), creates one product, then drives GETs from concurrent HTTP/1.1
keep-alive connections for a fixed time and prints throughput and latency percentiles.
Everything shares this machine's cores, the load generator included.

    make bench            # or: .venv/bin/python -m bench.get_product --seconds 20 --concurrency 32
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import tempfile
from pathlib import Path

import httpx

from bench.httpload import encode_request, run_load
from services.run import Mesh


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=15.0)
    parser.add_argument("--warmup", type=float, default=3.0)
    parser.add_argument("--concurrency", type=int, default=32)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="accrue-bench-") as state:
        mesh = Mesh(Path(state), durable=False, gateway_port=0, log_level="WARNING")
        try:
            mesh.start()
            headers = {"Authorization": f"Bearer {mesh.api_key}"}
            product = httpx.post(
                f"{mesh.gateway_url}/v0/products",
                json={"merchantId": mesh.merchant_id, "name": "Bench", "description": "bench"},
                headers=headers,
            ).json()
            url = f"{mesh.gateway_url}/v0/products/{product['id']}"
            request = encode_request("GET", url, headers)
            asyncio.run(run_load(url, request, seconds=args.warmup, concurrency=args.concurrency))
            result = asyncio.run(run_load(url, request, seconds=args.seconds, concurrency=args.concurrency))
        finally:
            mesh.stop()

    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}")
    print(f"GET /v0/products/{{id}}: gateway -> catalog -> PostgreSQL, {args.concurrency} connections, {args.seconds:.0f}s")
    print(f"  requests: {result.count}  non-2xx: {result.errors}  statuses: {result.statuses}")
    print(f"  throughput: {result.rate:,.0f} requests/s")
    print(f"  latency ms: p50 {result.percentile_ms(0.50):.2f}  p99 {result.percentile_ms(0.99):.2f}")


if __name__ == "__main__":
    main()
