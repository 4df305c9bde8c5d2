"""Raw ceilings of each hop, measured on this machine in the same run as the figure they
sit beside (the spread between runs on a shared 2-core VM is larger than most of the
differences we look for, so a ceiling from another day says little).

  raw_asgi(seconds, concurrency)                      a trivial ASGI app on uvicorn, with the
                                                      gateway's uvicorn settings, in its own process
  raw_grpc_unary(seconds, concurrency)                a trivial grpc.aio unary server in its own
                                                      process, called from this one
  raw_pg_reads(database_url, seconds, concurrency)    primary-key SELECTs of one row, psycopg 3
                                                      async, one connection per caller

Each is synchronous (it runs its own event loop) and is driven the way the real hop is:
raw_asgi by bench/httpload.run_load, raw_grpc_unary by run_grpc_load (also used for a
service called directly). The servers run on uvloop, as every Accrue process does
(libs/infra/service.run).

    .venv/bin/python -m bench.ceilings --seconds 5   # the ASGI and gRPC ceilings alone
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import platform
import socket
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import grpc
import psycopg
from sqlalchemy.engine import make_url

from bench.httpload import LoadResult, encode_request, run_load

# about the size of a product's JSON through the gateway
_BODY = (
    b'{"id":"prod_0123456789abcdef","object":"product","merchantId":"org_0123456789abcdef","name":"Bench",'
    b'"description":"bench","metadata":{},"createdAt":"2026-12-01T00:00:00.000000Z","updatedAt":"2026-12-01T00:00:00.000000Z"}'
)
_RAW_METHOD = "/bench.Raw/Echo"


# --- servers (run in a child process: python -m bench.ceilings serve-asgi|serve-grpc) ----


async def _trivial_asgi(scope: dict[str, Any], receive: Callable[[], Awaitable[Any]], send: Callable[[Any], Awaitable[None]]) -> None:
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(_BODY)).encode())]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": _BODY})


def _serve_asgi() -> None:
    import uvicorn
    import uvloop

    from services.gateway.host import uvicorn_config

    config = uvicorn_config(_trivial_asgi)  # the gateway's own settings, the app aside
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(config)

    async def serve() -> None:
        serving = asyncio.create_task(server.serve(sockets=[sock]))
        while not server.started:  # listening: the port may be announced
            if serving.done():
                return await serving
            await asyncio.sleep(0.01)
        print(sock.getsockname()[1], flush=True)
        await serving

    uvloop.run(serve())


def _serve_grpc() -> None:
    import uvloop

    async def echo(request: bytes, context: grpc.aio.ServicerContext[bytes, bytes]) -> bytes:
        return request

    async def serve() -> None:
        # no interceptors, raw bytes in and out: what grpc.aio itself costs per call
        server = grpc.aio.server(options=[("grpc.so_reuseport", 0)])
        handler = grpc.unary_unary_rpc_method_handler(echo)
        server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler("bench.Raw", {"Echo": handler}),))
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        print(port, flush=True)
        await server.wait_for_termination()

    uvloop.run(serve())


@contextlib.contextmanager
def _child(kind: str) -> Iterator[int]:
    """A server of ``kind`` in a child process; yields its port."""
    process = subprocess.Popen(
        [sys.executable, "-m", "bench.ceilings", kind],
        stdout=subprocess.PIPE,
        text=True,
        cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
    )
    try:
        assert process.stdout is not None
        line = process.stdout.readline()
        if not line.strip():
            raise RuntimeError(f"bench.ceilings {kind} exited with {process.wait()}")
        yield int(line)
    finally:
        process.terminate()
        try:
            process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


# --- ceilings --------------------------------------------------------------------------


def raw_asgi(seconds: float, concurrency: int, *, warmup: float = 1.0) -> LoadResult:
    """Requests/s of a trivial ASGI app (a fixed ~250-byte JSON answer) on uvicorn with the
    gateway's settings, in its own process, driven by bench/httpload.run_load."""
    with _child("serve-asgi") as port:
        url = f"http://127.0.0.1:{port}/v0/products/prod_raw"
        request = encode_request("GET", url, {"Authorization": "Bearer raw"})
        if warmup:
            asyncio.run(run_load(url, request, seconds=warmup, concurrency=concurrency))
        return asyncio.run(run_load(url, request, seconds=seconds, concurrency=concurrency))


async def run_grpc_load(
    call: Callable[[], Awaitable[Any]], *, seconds: float, concurrency: int, ok: Callable[[Any], bool] | None = None
) -> LoadResult:
    """``concurrency`` callers each awaiting ``call()`` back to back for ``seconds``; the
    result's statuses are 200 for an answer ``ok`` accepts (any, by default), 500 for one
    it refuses and the gRPC status code's value + 1000 for an RpcError."""
    result = LoadResult(seconds=seconds)
    deadline = time.perf_counter() + seconds

    async def caller() -> None:
        while time.perf_counter() < deadline:
            started = time.perf_counter()
            try:
                answer = await call()
                status = 200 if ok is None or ok(answer) else 500
            except grpc.aio.AioRpcError as err:
                status = 1000 + err.code().value[0]
            result.latencies.append(time.perf_counter() - started)
            result.statuses[status] = result.statuses.get(status, 0) + 1

    await asyncio.gather(*(caller() for _ in range(concurrency)))
    return result


def raw_grpc_unary(seconds: float, concurrency: int, *, warmup: float = 1.0, payload: bytes = _BODY) -> LoadResult:
    """Calls/s of a trivial grpc.aio unary method (echoes ``payload``, no interceptors) in
    its own process, from ``concurrency`` callers on one channel in this process."""
    with _child("serve-grpc") as port:

        async def load(duration: float) -> LoadResult:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
                echo = channel.unary_unary(_RAW_METHOD)
                metadata = (("authorization", "Bearer raw"),)
                return await run_grpc_load(lambda: echo(payload, metadata=metadata), seconds=duration, concurrency=concurrency)

        if warmup:
            asyncio.run(load(warmup))
        return asyncio.run(load(seconds))


def raw_pg_reads(database_url: str, seconds: float, concurrency: int) -> float:
    """Primary-key SELECTs/s of one row (a product-sized row in a temporary table), psycopg 3
    async, ``concurrency`` connections each with one query in flight, autocommit (no
    BEGIN/COMMIT), statements prepared by psycopg after its threshold. ``database_url``
    may be SQLAlchemy's (postgresql+psycopg://...)."""
    url = make_url(database_url).set(drivername="postgresql").render_as_string(hide_password=False)
    warmup = 1.0
    window = {"start": 0.0, "end": 0.0}
    go = asyncio.Event()
    counted = [0]

    async def reader(connected: asyncio.Barrier) -> None:
        async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
            await conn.execute(
                "CREATE TEMP TABLE raw_read (id text PRIMARY KEY, merchant_id text NOT NULL, name text NOT NULL,"
                " description text NOT NULL, metadata jsonb NOT NULL, created_at timestamptz NOT NULL,"
                " updated_at timestamptz NOT NULL)"
            )
            await conn.execute("INSERT INTO raw_read VALUES ('prod_raw', 'org_raw', 'Bench', 'bench', '{}', now(), now())")
            await connected.wait()
            await go.wait()
            start, end = window["start"], window["end"]
            while (now := time.perf_counter()) < end:
                cursor = await conn.execute("SELECT * FROM raw_read WHERE id = %s AND merchant_id = %s", ("prod_raw", "org_raw"))
                assert await cursor.fetchone() is not None
                if now >= start:
                    counted[0] += 1

    async def run() -> float:
        connected = asyncio.Barrier(concurrency + 1)
        readers = [asyncio.create_task(reader(connected)) for _ in range(concurrency)]
        await connected.wait()
        window["start"] = time.perf_counter() + warmup
        window["end"] = window["start"] + seconds
        go.set()
        await asyncio.gather(*readers)
        return counted[0] / seconds

    try:
        import uvloop

        return uvloop.run(run())
    except ImportError:
        return asyncio.run(run())


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] in ("serve-asgi", "serve-grpc"):
        (_serve_asgi if sys.argv[1] == "serve-asgi" else _serve_grpc)()
        return
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--concurrency", type=int, default=32)
    args = parser.parse_args()
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}")
    for name, ceiling in (("raw ASGI (uvicorn)", raw_asgi), ("raw gRPC unary (grpc.aio)", raw_grpc_unary)):
        result = ceiling(args.seconds, args.concurrency)
        print(
            f"  {name:<28} {result.rate:>8,.0f}/s  p50 {result.percentile_ms(0.5):.2f} ms  p99 {result.percentile_ms(0.99):.2f} ms"
            f"  statuses {result.statuses}"
        )


if __name__ == "__main__":
    main()
