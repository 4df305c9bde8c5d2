"""GET /v0/products/{id}, each hop measured alone and then the real path, in one run.

Starts the real mesh (embedded PostgreSQL and NATS, every service, the gateway as
separate processes), creates one product, then prints, with the same number of callers:

  raw ceilings (bench/ceilings.py): a trivial ASGI app on uvicorn with the gateway's
      settings, a trivial grpc.aio unary server, primary-key SELECTs over psycopg 3
  catalog  GetProduct called directly over gRPC (catalog -> PostgreSQL), against the
      gRPC and PostgreSQL ceilings
  gateway  GET /v0/products/{id} (gateway -> catalog -> PostgreSQL), against the ASGI
      ceiling and the catalog called directly

each with requests/s, p50 and p99. Everything shares this machine's cores, the load
generator included. ``--profile`` then samples the catalog and the gateway with py-spy
under the gateway load and prints where their time goes.

    make bench            # or: .venv/bin/python -m bench.get_product --seconds 10 --concurrency 32
    .venv/bin/python -m bench.get_product --profile
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import tempfile
import time
from pathlib import Path

import grpc
import httpx
from accrue.catalog.v1 import catalog_resources_pb2 as res
from accrue.catalog.v1 import catalog_service_pb2 as svc
from accrue.catalog.v1 import catalog_service_pb2_grpc

from bench.ceilings import raw_asgi, raw_grpc_unary, raw_pg_reads, run_grpc_load
from bench.httpload import LoadResult, encode_request, run_load
from bench.ingest import merchant_token
from bench.profile_ingest import report, spy_on
from services.run import Mesh


def _line(label: str, result: LoadResult, *against: tuple[str, float]) -> None:
    ratios = "".join(f"  {result.rate / rate:5.2f} of {name}" for name, rate in against)
    print(
        f"  {label:<44} {result.rate:>7,.0f}/s  p50 {result.percentile_ms(0.5):6.2f} ms  p99 {result.percentile_ms(0.99):6.2f} ms{ratios}",
        flush=True,
    )
    failures = {status: n for status, n in result.statuses.items() if status != 200}
    if failures:
        print(f"  {'':<44} NOT 200: {failures}", flush=True)


def _catalog_direct(address: str, token: str, product_id: str, seconds: float, concurrency: int) -> LoadResult:
    async def load(duration: float) -> LoadResult:
        async with grpc.aio.insecure_channel(address) as channel:
            stub = catalog_service_pb2_grpc.CatalogServiceStub(channel)
            request = svc.GetProductRequest(id=product_id)
            metadata = (("authorization", f"Bearer {token}"),)

            def ok(answer: res.Product) -> bool:
                return answer.id == product_id

            def call() -> grpc.aio.UnaryUnaryCall[svc.GetProductRequest, res.Product]:
                return stub.GetProduct(request, metadata=metadata)

            return await run_grpc_load(call, seconds=duration, concurrency=concurrency, ok=ok)

    asyncio.run(load(2.0))
    return asyncio.run(load(seconds))


def _profile(mesh: Mesh, url: str, request: bytes, seconds: float, concurrency: int) -> None:
    names = ("catalog", "gateway")
    outputs = {name: mesh.state_dir / f"profile-{name}.txt" for name in names}
    spies = spy_on({name: mesh.processes[name].popen.pid for name in names}, outputs, seconds)
    time.sleep(0.5)
    result = asyncio.run(run_load(url, request, seconds=seconds, concurrency=concurrency))
    print(f"\nprofile (py-spy, 100 Hz) under the gateway load: {result.rate:,.0f} requests/s while sampled")
    report(spies, outputs, seconds, 22)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=10.0, help="duration of each measured run")
    parser.add_argument("--warmup", type=float, default=3.0)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--profile", action="store_true", help="then py-spy the catalog and the gateway under the gateway load")
    args = parser.parse_args()
    seconds, concurrency = args.seconds, args.concurrency

    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}; everything on this box", flush=True)
    print(f"GET /v0/products/{{id}}, {concurrency} callers, {seconds:.0f} s each", flush=True)
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
            token = merchant_token(mesh.gateway_url, mesh.api_key)

            print("raw ceilings", flush=True)
            asgi = raw_asgi(seconds, concurrency)
            _line("ASGI on uvicorn (gateway's settings)", asgi)
            grpc_raw = raw_grpc_unary(seconds, concurrency)
            _line("gRPC unary, grpc.aio, no interceptors", grpc_raw)
            pg = raw_pg_reads(mesh.database_url("catalog"), seconds, concurrency)
            print(f"  {'PostgreSQL PK reads, psycopg 3 async':<44} {pg:>7,.0f}/s  ({concurrency} connections)", flush=True)

            print("the real hops", flush=True)
            catalog = _catalog_direct(f"127.0.0.1:{mesh.processes['catalog'].port}", token, product["id"], seconds, concurrency)
            _line("catalog GetProduct over gRPC (-> PostgreSQL)", catalog, ("gRPC", grpc_raw.rate), ("PG", pg))

            url = f"{mesh.gateway_url}/v0/products/{product['id']}"
            request = encode_request("GET", url, headers)
            asyncio.run(run_load(url, request, seconds=args.warmup, concurrency=concurrency))
            gateway = asyncio.run(run_load(url, request, seconds=seconds, concurrency=concurrency))
            _line("gateway GET /v0/products/{id} (the real path)", gateway, ("ASGI", asgi.rate), ("catalog", catalog.rate))
            if args.profile:
                _profile(mesh, url, request, seconds, concurrency)
        finally:
            mesh.stop()


if __name__ == "__main__":
    main()
