"""The payment service's janitor, a worker of its process (after Kill Bill's janitor): every
``ACCRUE_PAYMENT_JANITOR_SECONDS`` (default 2) it

* asks the processor, by key, about attempts left ``sending`` or ``processing`` (a
  timeout, a crash between sending a charge and recording it) and records the answer
  once; one the processor never received is failed ``not_sent`` once it is older than
  ``ACCRUE_PAYMENT_NOT_SENT_AFTER_SECONDS`` (60);
* tells invoicing the decided outcomes it was not told (``reported_at`` unset);
* expires pending sessions and payments past their end, releases abandoned card saves,
  and asks the processor again about pending refunds.

Several processes may run it at once: every step is idempotent (the attempt's state
moves monotonically, RecordChargeOutcome is idempotent by attempt key).
"""

from __future__ import annotations

import asyncio
import contextlib

from libs.infra.context import acting_for
from libs.infra.logging import get_logger
from services.payment.domain.use_cases import Payments

log = get_logger(__name__)


class Janitor:
    def __init__(self, payments: Payments, *, every_seconds: float) -> None:
        self._payments = payments
        self._every = every_seconds
        self._stopping = asyncio.Event()

    def stop(self) -> None:
        self._stopping.set()

    async def run_once(self) -> None:
        report = await self._payments.janitor_pass(acting_for)
        if report.reconciled or report.reported or report.expired or report.released or report.refunds:
            log.info(
                "payment_janitor",
                reconciled=report.reconciled,
                reported=report.reported,
                expired=report.expired,
                released=report.released,
                refunds=report.refunds,
            )
        for error in report.errors[:5]:
            log.warning("payment_janitor_item_failed", error=error)

    async def run(self) -> None:
        while not self._stopping.is_set():
            try:
                await self.run_once()
            except Exception as exc:  # keep going through transient PostgreSQL trouble
                log.warning("payment_janitor_error", error=repr(exc))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), self._every)
