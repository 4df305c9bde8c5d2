"""The sandbox's background worker: sends due webhook deliveries, signed in the Standard
Webhooks format (``webhook-id`` = the event id, the same on every delivery of an event,
``webhook-timestamp``, ``webhook-signature: v1,<base64 HMAC-SHA256>`` made fresh for each
attempt), and completes slow charges whose request went away.

A delivery is claimed in the database before it is sent (``Sandbox.claim_deliveries``),
so two sandbox processes never send one twice at once and a crashed sender's claim lapses.
"""

from __future__ import annotations

import asyncio
import contextlib

import httpx
from standardwebhooks.webhooks import Webhook

from libs.infra.logging import get_logger
from services.sandbox.processor import Claimed, Sandbox

log = get_logger(__name__)

# at most this many deliveries in flight per process
CONCURRENCY = 16
# the longest the worker sleeps when nothing wakes it and nothing is due (a safety net:
# new work wakes it, and it sleeps only until the next delivery or slow charge is due)
IDLE_SECONDS = 1.0


class Deliveries:
    """A Worker (libs/infra/service.py): ``run`` until ``stop``."""

    def __init__(self, sandbox: Sandbox) -> None:
        self.sandbox = sandbox
        settings = sandbox.settings
        self._signer = Webhook(settings.sandbox_webhook_secret)
        self._client = httpx.AsyncClient(timeout=settings.sandbox_webhook_timeout_seconds, follow_redirects=False)
        self._stopping = asyncio.Event()
        self._slots = asyncio.Semaphore(CONCURRENCY)
        self._sending: set[asyncio.Task[None]] = set()

    async def run(self) -> None:
        try:
            while not self._stopping.is_set():
                self.sandbox.wake.clear()  # before the round: what it misses wakes the next one
                try:
                    full = await self._round()
                    due = None if full else await self.sandbox.seconds_until_due()  # full: a finished send wakes it
                    pause = IDLE_SECONDS if due is None else min(max(due, 0.005), IDLE_SECONDS)
                except Exception:  # the database restarting: try again shortly
                    log.exception("sandbox_delivery_round_failed")
                    pause = IDLE_SECONDS
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wait(), pause)
        finally:
            if self._sending:
                await asyncio.wait(list(self._sending), timeout=2.0)
            await self._client.aclose()
            await self.sandbox.close()

    def stop(self) -> None:
        self._stopping.set()
        self.sandbox.wake.set()

    async def _wait(self) -> None:
        await self.sandbox.wake.wait()

    async def _round(self) -> bool:
        """Completes due slow charges and starts the due deliveries; True when every
        sending slot is taken."""
        await self.sandbox.complete_due()
        free = CONCURRENCY - len(self._sending)
        if free > 0:
            for claimed in await self.sandbox.claim_deliveries(free):
                task = asyncio.create_task(self._send(claimed))
                self._sending.add(task)
                task.add_done_callback(self._sent)
        return len(self._sending) >= CONCURRENCY

    def _sent(self, task: asyncio.Task[None]) -> None:
        self._sending.discard(task)
        self.sandbox.wake.set()  # a slot is free, and a retry may have been scheduled

    async def _send(self, claimed: Claimed) -> None:
        async with self._slots:
            now = self.sandbox.clock.now()
            headers = {
                "content-type": "application/json",
                "user-agent": "accrue-sandbox-processor",
                "webhook-id": claimed.event_id,
                "webhook-timestamp": str(int(now.timestamp())),
                "webhook-signature": self._signer.sign(claimed.event_id, now, claimed.payload),
            }
            status: int | None = None
            error: str | None = None
            try:
                response = await self._client.post(claimed.url, content=claimed.payload.encode(), headers=headers)
                status = response.status_code
            except httpx.HTTPError as exc:
                error = type(exc).__name__
            try:
                await self.sandbox.record_attempt(claimed, status, error)
            except Exception:  # its claim lapses and it is sent again: a duplicate, as processors do
                log.exception("sandbox_delivery_not_recorded", delivery=claimed.id)
            if status is None or not 200 <= status < 300:
                log.info("sandbox_webhook_not_accepted", delivery=claimed.id, event_id=claimed.event_id, status=status, error=error)
