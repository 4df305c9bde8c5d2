"""The engine with a batch-capable invoicing (OpenInvoices / CloseInvoices / IssueInvoices):
a claimed batch is grouped by kind into a few calls, each item's answer (an invoice or an
error) settles its own row, a retryable item error is retried without repeating the
others, and a batch refused whole falls back to one call per row. Against real PostgreSQL;
invoicing is test_engine's recording fake with batch methods answering item by item."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

import pytest
from accrue.invoicing.v1 import invoicing_service_pb2 as inv

from libs.core.errors import InvalidArgument
from services.subscription.tests.integration import test_engine as base
from services.subscription.tests.integration.test_engine import CLOCK, MERCHANT, T0, FakeInvoicing, Sub, World

pytestmark = pytest.mark.integration

world = base.world  # the fixture: a fresh database with the subscription tables, the fakes

STEPS = ((1, "close"), (2, "open"), (1, "issue"), (2, "close"), (3, "open"), (2, "issue"))  # Feb 28, Mar 31


class BatchInvoicing(FakeInvoicing):
    def __init__(self) -> None:
        super().__init__()
        self.batches: list[tuple[str, int]] = []
        self.refuse_batches = False

    async def _many(self, op: str, merchant_id: str, requests: Sequence[Any]) -> list[inv.Invoice | Exception]:
        if self.refuse_batches:
            raise InvalidArgument("items", "batches are not served here", reason="UNIMPLEMENTED_BATCH")
        self.batches.append((op, len(requests)))
        out: list[inv.Invoice | Exception] = []
        for request in requests:
            try:
                out.append(await self._answer(op, merchant_id, request))
            except Exception as exc:
                out.append(exc)
        return out

    async def open_invoices(self, merchant_id: str, requests: Sequence[inv.OpenInvoiceRequest]) -> list[inv.Invoice | Exception]:
        return await self._many("open", merchant_id, requests)

    async def close_invoices(self, merchant_id: str, requests: Sequence[inv.CloseInvoiceRequest]) -> list[inv.Invoice | Exception]:
        return await self._many("close", merchant_id, requests)

    async def issue_invoices(self, merchant_id: str, requests: Sequence[inv.IssueInvoiceRequest]) -> list[inv.Invoice | Exception]:
        return await self._many("issue", merchant_id, requests)


async def test_an_advance_groups_each_batch_by_kind_and_runs_every_step_once(world: World) -> None:
    invoicing = world.invoicing = BatchInvoicing()
    timeline = world.timeline(batch_size=50, rpc_batch=20)
    for i in range(45):
        await world.create(timeline, Sub(f"sub_{i:02}"), T0)
    invoicing.calls.clear()
    invoicing.batches.clear()
    await timeline.advance_clock(MERCHANT, CLOCK, datetime(2026, 4, 1, tzinfo=UTC))
    assert Counter(invoicing.effects()) == Counter({(f"sub_{i:02}", k, op): 1 for i in range(45) for k, op in STEPS})
    assert sum(n for _, n in invoicing.batches) == 45 * len(STEPS)
    assert max(n for _, n in invoicing.batches) == 20 and len(invoicing.batches) < 45 * len(STEPS) / 10
    times = [c.at for c in invoicing.calls]
    assert times == sorted(times)  # still in time order across subscriptions
    assert await world.pending() == [(f"sub_{i:02}", 3, "close") for i in range(45)]


async def test_an_item_failing_retryably_is_retried_alone(world: World) -> None:
    invoicing = world.invoicing = BatchInvoicing()
    timeline = world.timeline(batch_size=50, retry_base_seconds=0.01)
    for i in range(10):
        await world.create(timeline, Sub(f"sub_{i:02}"), T0)
    invoicing.calls.clear()
    failures = iter(range(2))
    invoicing.fail = lambda call: call.subscription_id == "sub_03" and call.op == "issue" and next(failures, None) is not None
    await timeline.advance_clock(MERCHANT, CLOCK, datetime(2026, 4, 1, tzinfo=UTC))
    # the failed item raised before any effect; every other step ran once, never again
    assert Counter(invoicing.effects()) == Counter({(f"sub_{i:02}", k, op): 1 for i in range(10) for k, op in STEPS})


async def test_a_batch_refused_whole_runs_its_rows_one_by_one(world: World) -> None:
    invoicing = world.invoicing = BatchInvoicing()
    timeline = world.timeline()
    for i in range(6):
        await world.create(timeline, Sub(f"sub_{i:02}"), T0)
    invoicing.calls.clear()
    invoicing.batches.clear()
    invoicing.refuse_batches = True
    await timeline.advance_clock(MERCHANT, CLOCK, datetime(2026, 4, 1, tzinfo=UTC))
    assert Counter(invoicing.effects()) == Counter({(f"sub_{i:02}", k, op): 1 for i in range(6) for k, op in STEPS})
    assert invoicing.batches == []
