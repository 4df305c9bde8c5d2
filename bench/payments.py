"""The hosted-checkout payment path, measured end to end on this machine, in one run.

Starts the real mesh (embedded PostgreSQL and NATS, every service, the sandbox processor
and the gateway as separate processes) and pays one-off payments the way a customer's
browser does: POST /v0/payments (the merchant), GET its hosted page, tokenize the card
at the sandbox processor, POST the token to the page's submit, and read the payment
back (it must be `completed` as soon as the submit answered). Sequentially first
(latency of each step, p50/p99), then with several customers paying at once (payments
paid per second). Afterwards the sandbox's own records must hold exactly one succeeded
charge per payment.

Everything shares this machine's cores, the load generator included. The sandbox answers
charges at once (4242 4242 4242 4242); its webhooks arrive meanwhile (some twice).

    .venv/bin/python -m bench.payments
    .venv/bin/python -m bench.payments --payments 100 --concurrency 8
    make bench-payments
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx

from libs.testing.payments import Sandbox, open_page, submit, tokenize
from services.run import Mesh

CARD = "4242424242424242"


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else 0.0


def _line(label: str, values: list[float]) -> None:
    print(f"  {label:<44} p50 {_percentile(values, 0.5) * 1000:7.1f} ms   p99 {_percentile(values, 0.99) * 1000:7.1f} ms", flush=True)


def pay_one(base: str, headers: dict[str, str], merchant_id: str, timings: dict[str, list[float]]) -> str:
    t0 = time.perf_counter()
    created = httpx.post(
        f"{base}/v0/payments",
        json={"amount": "12.34", "currency": "USD", "merchantId": merchant_id, "idempotencyKey": uuid.uuid4().hex},
        headers=headers,
        timeout=30,
    )
    if created.status_code != 201:
        raise RuntimeError(f"POST /v0/payments -> {created.status_code} {created.text}")
    payment = created.json()
    t1 = time.perf_counter()
    page = open_page(payment["paymentUrl"])
    if page.status_code != 200:
        raise RuntimeError(f"GET {payment['paymentUrl']} -> {page.status_code}")
    t2 = time.perf_counter()
    token = tokenize(page, CARD)
    t3 = time.perf_counter()
    answer = submit(page, token)
    t4 = time.perf_counter()
    if answer.status_code != 200 or answer.json().get("status") != "completed":
        raise RuntimeError(f"submit -> {answer.status_code} {answer.text}")
    read = httpx.get(f"{base}/v0/payments/{payment['id']}", headers=headers, timeout=30).json()
    if read.get("status") != "completed":
        raise RuntimeError(f"payment {payment['id']} reads {read.get('status')!r} after its page answered completed")
    for name, value in (("create", t1 - t0), ("page", t2 - t1), ("tokenize", t3 - t2), ("submit", t4 - t3), ("total", t4 - t0)):
        timings.setdefault(name, []).append(value)
    return str(payment["paymentSessionId"])


def run(mesh: Mesh, args: argparse.Namespace) -> None:
    base = mesh.gateway_url
    headers = {"Authorization": f"Bearer {mesh.api_key}"}
    sandbox = Sandbox.of(mesh)
    timings: dict[str, list[float]] = {}
    sessions: list[str] = []
    for _ in range(3):  # warm-up: channels, caches, first page render
        pay_one(base, headers, mesh.merchant_id, {})
    for _ in range(args.payments):
        sessions.append(pay_one(base, headers, mesh.merchant_id, timings))
    print(f"(a) one customer at a time, {args.payments} payments", flush=True)
    _line("POST /v0/payments (201)", timings["create"])
    _line("GET the hosted page", timings["page"])
    _line("tokenize at the sandbox processor", timings["tokenize"])
    _line("submit -> completed (charge + invoicing told)", timings["submit"])
    _line("whole payment", timings["total"])

    concurrent: dict[str, list[float]] = {}
    started = time.perf_counter()
    with ThreadPoolExecutor(args.concurrency) as pool:
        sessions += list(pool.map(lambda _: pay_one(base, headers, mesh.merchant_id, concurrent), range(args.payments)))
    elapsed = time.perf_counter() - started
    print(f"(b) {args.concurrency} customers at once, {args.payments} payments", flush=True)
    print(f"  {'payments paid per second':<44} {args.payments / elapsed:7.1f}", flush=True)
    _line("submit -> completed", concurrent["submit"])
    _line("whole payment", concurrent["total"])

    succeeded = [c for c in sandbox.charges() if c.get("status") == "succeeded"]
    by_session: dict[str, int] = {}
    for charge in succeeded:  # page charges are keyed <session>:<n>
        session = str(charge.get("idempotencyKey", "")).split(":")[0]
        by_session[session] = by_session.get(session, 0) + 1
    doubles = [s for s in sessions if by_session.get(s, 0) != 1]
    print(f"(c) processor records: {len(succeeded)} succeeded charges; sessions without exactly one: {len(doubles)}", flush=True)
    if doubles:
        raise SystemExit(f"not exactly one charge for {doubles[:5]}")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--payments", type=int, default=50, help="payments per run")
    parser.add_argument("--concurrency", type=int, default=8, help="customers paying at once in run (b)")
    args = parser.parse_args()
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}; everything on this box", flush=True)
    with tempfile.TemporaryDirectory(prefix="accrue-bench-") as state:
        mesh = Mesh(Path(state), durable=False, gateway_port=0, log_level="WARNING")
        try:
            mesh.start()
            run(mesh, args)
        finally:
            mesh.stop()


if __name__ == "__main__":
    main()
