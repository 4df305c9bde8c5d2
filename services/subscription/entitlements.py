"""Subscription -> entitlement, synchronously after the commit (DESIGN section 7:
synchronous gRPC for the causal chain, NATS for fan-out).

A subscription that becomes active must have its entitlements before the call that
activated it answers (read your writes: once Invoice 0 is paid, GET /v1/entitlements
lists them), and a terminated one must lose them as promptly. So ``EntitlementDelivery``
is a post-commit listener of the service's database (libs/infra/db.py
``Database.add_commit_listener``): every unit of work that writes the
``SubscriptionChanged`` activated or terminated event (RecordInvoicePaid, a creation with
nothing due, a PATCH of the status, TerminateSubscription, the engine's scheduled end and
Invoice 0, in a request or in the scheduler) hands it to the entitlement service's
``ApplySubscriptionChange`` after its commit, before the RPC answers.

Best effort: the same event is on the stream, which the entitlement service also consumes
(both paths are idempotent), so a failure is logged and the caller's answer is unchanged.
The call acts for the event's merchant (``acting_for``: the caller's token inside a
request, a minted one in the scheduler). A deployment without the entitlement service
(no ACCRUE_ENTITLEMENT_ADDR) delivers nothing.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from accrue.entitlement.v1 import entitlement_service_pb2 as ent
from accrue.entitlement.v1 import entitlement_service_pb2_grpc
from accrue.subscription.v1 import subscription_events_pb2 as ev

from libs.core.errors import DomainError, ErrorCode
from libs.infra import grpc_client
from libs.infra.context import acting_for
from libs.infra.db import OutboxMessage
from libs.infra.logging import get_logger
from services.subscription.domain.model import SubscriptionChangeKind
from services.subscription.events import subscription_subject

log = get_logger(__name__)

# the outbox subjects delivered (SubscriptionChanged)
SUBJECTS = frozenset({subscription_subject(SubscriptionChangeKind.ACTIVATED), subscription_subject(SubscriptionChangeKind.TERMINATED)})
TIMEOUT_SECONDS = 10.0
# calls in flight for one commit (an advance may end many subscriptions in one batch)
CONCURRENCY = 16
# the entitlement service is not answering: the rest of the commit's changes are left to the stream
_UNREACHABLE = frozenset({ErrorCode.UNAVAILABLE, ErrorCode.DEADLINE_EXCEEDED})


def _unreachable(error: Exception) -> bool:
    return isinstance(error, TimeoutError) or (isinstance(error, DomainError) and error.code in _UNREACHABLE)


class EntitlementDelivery:
    """The commit listener: ``ApplySubscriptionChange`` for each activated or terminated
    SubscriptionChanged a transaction wrote, ``timeout`` seconds each. A failure is logged;
    once the service proved unreachable in a commit, that commit's remaining changes are
    skipped (logged), so an advance ending thousands of subscriptions is not held up
    ``timeout`` seconds for each."""

    def __init__(self, address: str | None, *, timeout: float = TIMEOUT_SECONDS, concurrency: int = CONCURRENCY) -> None:
        self._address = address
        self._timeout = timeout
        self._concurrency = concurrency
        self._stub: entitlement_service_pb2_grpc.EntitlementServiceStub | None = None

    def _client(self) -> entitlement_service_pb2_grpc.EntitlementServiceStub:
        if self._stub is None:  # the channel belongs to the running event loop: made on first use
            assert self._address
            self._stub = entitlement_service_pb2_grpc.EntitlementServiceStub(grpc_client.channel(self._address, timeout=self._timeout))
        return self._stub

    async def __call__(self, written: Sequence[OutboxMessage]) -> None:
        if not self._address:
            return
        changes = [m.event for m in written if m.subject in SUBJECTS and isinstance(m.event, ev.SubscriptionChanged)]
        if not changes:
            return
        gate = asyncio.Semaphore(self._concurrency)
        unreachable = asyncio.Event()
        skipped: list[str] = []

        async def deliver(change: ev.SubscriptionChanged) -> None:
            async with gate:
                if unreachable.is_set():
                    skipped.append(change.subscription.id)
                    return
                try:
                    await self.apply(change)
                except Exception as exc:  # the stream delivers it later
                    if _unreachable(exc):
                        unreachable.set()
                    log.warning(
                        "entitlement_delivery_failed",
                        subscription_id=change.subscription.id,
                        kind=ev.SubscriptionChangeKind.Name(change.kind),
                        error=repr(exc),
                    )

        await asyncio.gather(*(deliver(change) for change in changes))
        if skipped:
            log.warning("entitlement_delivery_skipped", subscriptions=len(skipped), first=skipped[0], reason="entitlement unreachable")

    async def apply(self, change: ev.SubscriptionChanged) -> ent.ApplySubscriptionChangeResponse:
        """One change, for its merchant (the caller's Idempotency-Key is not forwarded)."""
        with acting_for(change.merchant_id):
            answer: ent.ApplySubscriptionChangeResponse = await self._client().ApplySubscriptionChange(
                ent.ApplySubscriptionChangeRequest(change=change), timeout=self._timeout
            )
        return answer
