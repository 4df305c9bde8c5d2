"""Where the time goes on the ingest hot path: the CPU per event of every process on the
machine (bench/cpu.py, from /proc: PostgreSQL and NATS too), then py-spy's samples of the
gateway, metering and the aggregator under the same load, per process, with the heaviest
frames.

    .venv/bin/python -m bench.profile_ingest --mode single   # POST /v0/events, 64 connections
    .venv/bin/python -m bench.profile_ingest --mode batch    # POST /accrue/v1/events:batchIngest, 1,000 a request
    .venv/bin/python -m bench.profile_ingest --mode stream   # gRPC StreamIngestEvents batches
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import httpx
from accrue.metering.v1 import metering_service_pb2 as svc

from bench import cpu
from bench.httpload import encode_request, run_load
from bench.ingest import grpc_stream, merchant_token
from services.run import Mesh

PROCESSES = ("gateway", "metering", "metering-aggregator")


# A thread parked in one of these (a C-level wait py-spy does not see as idle: the
# metrics server's poll, an executor's queue, gRPC's poller) is not working.
_PARKED = (".select (selectors.py", "_worker (concurrent/futures/thread.py", "Thread.run (threading.py")


def _summarize(path: Path, seconds: float, top: int) -> None:
    total = 0
    inclusive: collections.Counter[str] = collections.Counter()
    for line in path.read_text().splitlines():
        stack, _, samples = line.rpartition(" ")
        frames = stack.split(";")
        if any(parked in frames[-1] for parked in _PARKED):
            continue
        total += int(samples)
        for frame in set(frames):
            inclusive[frame] += int(samples)
    print(f"  Python busy {total / (seconds * 100):.0%} of one core (py-spy samples at 100 Hz; idle and parked threads excluded)")
    skip = ("runpy", "asyncio/runners.py", "<module>", "main (", "_run_code", "Thread._bootstrap")
    shown = 0
    for frame, count in inclusive.most_common():
        if any(s in frame for s in skip):
            continue
        print(f"  {count * 100 // max(total, 1):3d}%  {frame[:140]}")
        shown += 1
        if shown == top:
            break


def spy_on(pids: dict[str, int], outputs: dict[str, Path], seconds: float) -> list[subprocess.Popen[bytes]]:
    """py-spy recording each process (name -> pid) for ``seconds`` at 100 Hz into ``outputs``."""
    spy = Path(sys.executable).parent / "py-spy"
    command = [str(spy), "record", "-d", str(int(seconds)), "-r", "100", "-f", "raw"]
    return [
        subprocess.Popen([*command, "-o", str(outputs[name]), "-p", str(pid)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        for name, pid in pids.items()
    ]


def report(spies: list[subprocess.Popen[bytes]], outputs: dict[str, Path], seconds: float, top: int) -> None:
    """Wait for the spies, then print each process's summary."""
    for process in spies:
        process.wait()
    for name, output in outputs.items():
        print(f"\n[{name}]")
        if output.exists():
            _summarize(output, seconds, top)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--mode", choices=["single", "batch", "stream"], default="single")
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--top", type=int, default=18)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="accrue-profile-") as state:
        mesh = Mesh(Path(state), durable=True, gateway_port=0, log_level="WARNING")
        try:
            mesh.start()
            headers = {"Authorization": f"Bearer {mesh.api_key}", "Content-Type": "application/json"}
            product = httpx.post(f"{mesh.gateway_url}/v0/products", json={"name": "P", "description": "d"}, headers=headers).json()
            event_type = f"profile.{uuid.uuid4().hex[:6]}"
            metric = {"productId": product["id"], "name": "T", "description": "d", "unit": "t", "aggregation": "SUM"}
            httpx.post(
                f"{mesh.gateway_url}/v0/billableMetrics",
                json={**metric, "eventType": event_type, "valueProperty": "$.tokens"},
                headers=headers,
            )
            single = {"type": event_type, "source": "bench", "subject": "cus_profile01", "data": {"tokens": 1, "model": "m1"}}
            outputs = {name: Path(state) / f"{name}.txt" for name in PROCESSES}
            spies = spy_on({name: mesh.processes[name].popen.pid for name in PROCESSES}, outputs, args.seconds)
            time.sleep(0.5)
            before, started = cpu.snapshot(), time.perf_counter()
            if args.mode == "single":
                url = f"{mesh.gateway_url}/v0/events"
                result = asyncio.run(
                    run_load(url, encode_request("POST", url, headers, json.dumps(single).encode()), seconds=args.seconds, concurrency=64)
                )
                events = result.statuses.get(202, 0)
                print(f"single events: {result.rate:,.0f} requests/s during the profile")
            elif args.mode == "batch":  # as bench-ingest sends them: 4 connections
                url = f"{mesh.gateway_url}/accrue/v1/events:batchIngest"
                batch = json.dumps({"events": [single] * 1000}).encode()
                result = asyncio.run(run_load(url, encode_request("POST", url, headers, batch), seconds=args.seconds, concurrency=4))
                events = result.statuses.get(202, 0) * 1000
                print(f"REST batches: {result.rate * 1000:,.0f} events/s during the profile")
            else:
                body = svc.BatchIngestEventsRequest(
                    events=[svc.IngestEventRequest(type=event_type, source="bench", subject="cus_profile01")] * 1000
                )
                for item in body.events:
                    item.data.update({"tokens": 1, "model": "m1"})
                token = merchant_token(mesh.gateway_url, mesh.api_key)
                rate, events = asyncio.run(grpc_stream(f"127.0.0.1:{mesh.processes['metering'].port}", token, body, args.seconds))
                print(f"gRPC stream: {rate:,.0f} events/s during the profile")
            cpu.report(before, cpu.snapshot(), events, time.perf_counter() - started)
            report(spies, outputs, args.seconds, args.top)
        finally:
            mesh.stop()


if __name__ == "__main__":
    main()
