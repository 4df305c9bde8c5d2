"""The billing engine: runs the timeline's due work (DESIGN.md section 7).

The subscription service owns the timeline. What falls due and what each invoice bills
is computed by domain/timeline.py; this module stores it as durable rows
(engine_store.py) and executes them: each row is one call of invoicing's internal RPCs
(OpenInvoice, CloseInvoice, IssueInvoice; each idempotent by (subscription, sequence
number)) with BillingTerms built from the subscription, ``end`` rows terminate the
subscription (store.mark_terminated) and re-lay its final invoice, and ``collect`` rows
charge an issued invoice on the customer's saved method (the payment service's
ChargeInvoice: autoCharge at issue and the dunning retries, domain/timeline.py
``after_charge`` says what follows).

Collect rows: the invoice is read first (GetInvoice: an invoice paid meanwhile, out of
band or on its page, or no longer owed is not charged), then charged with the attempt key
``<invoice>:auto:<n>``, one ChargeInvoice per row (no batch RPC), ``concurrency`` in
flight. A charge may take long (the processor's timeout); while it runs the batch's
transaction holds only its claimed due_work rows (claims lock nothing else, and
subscriptions are read without locks), so the paying chain (payment ->
invoicing.RecordChargeOutcome -> RecordInvoicePaid, which updates the subscription in its
own transaction) never waits for the batch. A crash mid-charge leaves the row pending; it
runs again with the same key, which the payment service answers with the attempt's
outcome instead of charging again.

Execution, in batches: one transaction claims up to ``batch_size`` rows (FOR UPDATE
SKIP LOCKED; the head of each customer's pending work, so one customer's rows run one
at a time, in time order), runs their steps, then, in the same transaction, lays every
follow-up and marks the rows done. The steps go to invoicing's batch RPCs (OpenInvoices,
CloseInvoices, IssueInvoices: the batch grouped by merchant and kind into chunks of
``rpc_batch``, ``concurrency`` chunks in flight; each item answered on its own, an
invoice or its error); a batch refused whole with a non-retryable error runs its rows
one RPC each, and so does an invoicing port without batch methods (tests' fakes). Killed
anywhere, nothing is lost or repeated: an uncommitted batch leaves its rows pending and
the next claim re-runs their (idempotent) RPCs; a committed one has laid its follow-ups.

Lanes:
* a test clock (``advance_clock``): after the clock moved, everything due by its new
  time, in time order across all of its subscriptions (a batch holds only rows due at
  the lane's earliest pending instant). Advances of one clock take turns (a PostgreSQL
  advisory lock), and it returns once every row due by then is done, including rows
  another process held when it looked. A row failing with a retryable error (invoicing
  UNAVAILABLE: usage not yet complete) is retried with a backoff up to ``max_attempts``,
  then, like any other error at once, the advance fails with it; the row stays pending
  and the next advance resumes there.
* real time (the ``Scheduler`` worker): rows with no test clock, due by the system
  clock; a failed row waits ``retry_at`` (exponential, capped) without holding up others.
* one subscription (``run_subscription``): after a create or a termination commits, so
  that its answer shows Invoice 0 or the final close; it waits for rows another claimer
  holds rather than skipping them.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from decimal import Decimal, InvalidOperation
from typing import Any, Protocol

import sqlalchemy as sa
from accrue.invoicing.v1 import invoicing_service_pb2 as inv
from accrue.invoicing.v1 import invoicing_service_pb2_grpc
from accrue.payment.v1 import payment_service_pb2 as pay
from accrue.payment.v1 import payment_service_pb2_grpc

from libs.core.clock import Clock, SystemClock
from libs.core.errors import DomainError, ErrorCode, FailedPrecondition, Unavailable
from libs.infra.context import acting_for
from libs.infra.db import Database
from libs.infra.grpc_client import channel, shared_channel, unconfigured
from libs.infra.logging import get_logger
from libs.infra.proto_time import from_timestamp, to_timestamp
from libs.infra.service import Runtime, Worker
from services.subscription import engine_store
from services.subscription.domain import rules
from services.subscription.domain.timeline import (
    CHARGE_STATUSES,
    AfterCharge,
    BilledSubscription,
    Charge,
    Composition,
    Due,
    Kind,
    Schedule,
    Window,
    after_charge,
    collection,
    recheck_at,
)
from services.subscription.engine_store import DueRow, Key, Lane, Owner

log = get_logger(__name__)

DEFAULT_GRACE_SECONDS = 3600
DEFAULT_CHARGE_TIMEOUT_SECONDS = 60.0
# invoices a collect charges (anything else is paid, cancelled or not owed: nothing to do)
COLLECTABLE_STATUSES = frozenset({"ISSUED", "PAYMENT_FAILED"})
# the subscription's termination reason when collection gave up (terminate policy)
PAYMENT_FAILED_REASON = "payment_failed"
# another attempt of the invoice is in flight (a page payment, a retryPayment)
_CONCURRENT_ATTEMPT = "CONCURRENT_ATTEMPT"
# deadlock / serialization failure: the batch is rolled back whole and simply runs again
_RETRY_SQLSTATES = frozenset({"40P01", "40001"})


# --- ports -------------------------------------------------------------------------------


class Invoicing(Protocol):
    """Invoicing's internal RPCs, called for a merchant."""

    async def open_invoice(self, merchant_id: str, request: inv.OpenInvoiceRequest) -> inv.Invoice: ...
    async def close_invoice(self, merchant_id: str, request: inv.CloseInvoiceRequest) -> inv.Invoice: ...
    async def issue_invoice(self, merchant_id: str, request: inv.IssueInvoiceRequest) -> inv.Invoice: ...
    async def get_invoice(self, merchant_id: str, invoice_id: str) -> inv.Invoice: ...


class Payment(Protocol):
    """The payment service's internal ChargeInvoice, called for a merchant."""

    async def charge_invoice(self, merchant_id: str, request: pay.ChargeInvoiceRequest) -> pay.ChargeOutcome: ...


class GrpcPayment:
    """The payment service over gRPC (one shared channel); each charge may take up to
    ``timeout`` seconds (the payment service waits for its processor)."""

    def __init__(self, address: str | None, *, timeout: float = DEFAULT_CHARGE_TIMEOUT_SECONDS) -> None:
        self._address = address
        self._timeout = timeout

    async def charge_invoice(self, merchant_id: str, request: pay.ChargeInvoiceRequest) -> pay.ChargeOutcome:
        if not self._address:
            raise unconfigured("payment", caller="the subscription service")
        stub = payment_service_pb2_grpc.PaymentServiceStub(shared_channel(self._address))
        with acting_for(merchant_id):
            answer: pay.ChargeOutcome = await stub.ChargeInvoice(request, timeout=self._timeout)
        return answer


class GrpcInvoicing:
    """The invoicing service over gRPC; every call carries a token minted for the
    merchant (``acting_for``, which also drops any caller's Idempotency-Key: each RPC is
    idempotent by (subscription, sequence number) on its own)."""

    def __init__(self, address: str | None, *, timeout: float = 60.0) -> None:
        self._address = address
        self._timeout = timeout
        self._stub: invoicing_service_pb2_grpc.InvoicingServiceStub | None = None

    def _client(self) -> invoicing_service_pb2_grpc.InvoicingServiceStub:
        if not self._address:
            raise Unavailable("INVOICING_NOT_CONFIGURED", "the invoicing service's address (ACCRUE_INVOICING_ADDR) is not set")
        if self._stub is None:  # created inside the running loop, on first use
            self._stub = invoicing_service_pb2_grpc.InvoicingServiceStub(channel(self._address, timeout=self._timeout))
        return self._stub

    async def open_invoice(self, merchant_id: str, request: inv.OpenInvoiceRequest) -> inv.Invoice:
        with acting_for(merchant_id):
            answer: inv.Invoice = await self._client().OpenInvoice(request)
        return answer

    async def close_invoice(self, merchant_id: str, request: inv.CloseInvoiceRequest) -> inv.Invoice:
        with acting_for(merchant_id):
            answer: inv.Invoice = await self._client().CloseInvoice(request)
        return answer

    async def issue_invoice(self, merchant_id: str, request: inv.IssueInvoiceRequest) -> inv.Invoice:
        with acting_for(merchant_id):
            answer: inv.Invoice = await self._client().IssueInvoice(request)
        return answer

    async def get_invoice(self, merchant_id: str, invoice_id: str) -> inv.Invoice:
        with acting_for(merchant_id):
            answer: inv.Invoice = await self._client().GetInvoice(inv.GetInvoiceRequest(id=invoice_id))
        return answer

    async def open_invoices(self, merchant_id: str, requests: Sequence[inv.OpenInvoiceRequest]) -> list[inv.Invoice | Exception]:
        with acting_for(merchant_id):
            answer = await self._client().OpenInvoices(inv.OpenInvoicesRequest(items=requests))
        return _answers(answer, len(requests))

    async def close_invoices(self, merchant_id: str, requests: Sequence[inv.CloseInvoiceRequest]) -> list[inv.Invoice | Exception]:
        with acting_for(merchant_id):
            answer = await self._client().CloseInvoices(inv.CloseInvoicesRequest(items=requests))
        return _answers(answer, len(requests))

    async def issue_invoices(self, merchant_id: str, requests: Sequence[inv.IssueInvoiceRequest]) -> list[inv.Invoice | Exception]:
        with acting_for(merchant_id):
            answer = await self._client().IssueInvoices(inv.IssueInvoicesRequest(items=requests))
        return _answers(answer, len(requests))


class BatchInvoicing(Protocol):
    """Invoicing's batch RPCs (OpenInvoices, CloseInvoices, IssueInvoices): each item
    answered on its own, an invoice or the error its single RPC would have raised."""

    async def open_invoices(self, merchant_id: str, requests: Sequence[inv.OpenInvoiceRequest]) -> list[inv.Invoice | Exception]: ...
    async def close_invoices(self, merchant_id: str, requests: Sequence[inv.CloseInvoiceRequest]) -> list[inv.Invoice | Exception]: ...
    async def issue_invoices(self, merchant_id: str, requests: Sequence[inv.IssueInvoiceRequest]) -> list[inv.Invoice | Exception]: ...


def step_error(error: inv.InvoiceStepError) -> DomainError:
    """A batch item's error as the DomainError its single RPC would have raised."""
    code = ErrorCode(error.code) if error.code in ErrorCode._value2member_map_ else ErrorCode.UNKNOWN
    err = DomainError(error.reason, error.message, field=error.field if error.HasField("field") else None, metadata=dict(error.metadata))
    err.code = code
    err.retryable = error.retryable
    return err


def _answers(response: inv.InvoiceStepsResponse, expected: int) -> list[inv.Invoice | Exception]:
    if len(response.results) != expected:
        raise Unavailable("INVOICING_BATCH_SHORT", f"invoicing answered {len(response.results)} of {expected} steps")
    return [r.invoice if r.WhichOneof("result") == "invoice" else step_error(r.error) for r in response.results]


class Subscriptions(Protocol):
    """What the engine needs of the subscription store (services/subscription/store.py)."""

    async def load_many(self, session: Any, merchant_id: str, ids: Sequence[str]) -> Mapping[str, BilledSubscription]:
        """Read without locks: a collect's charge runs while the batch is open, and the
        paying chain updates the subscription (RecordInvoicePaid) in its own transaction."""
        ...

    async def mark_terminated(self, session: Any, subscription: BilledSubscription, at: datetime, *, reason: str | None = None) -> None: ...
    async def record_invoice_zero(self, session: Any, subscription: BilledSubscription, invoice: inv.Invoice) -> None: ...
    async def record_invoice_zero_paid(self, session: Any, subscription: BilledSubscription, invoice: inv.Invoice) -> None: ...


class StoreSubscriptions:
    """The subscription service's own store (its functions in store.py)."""

    async def load_many(self, session: Any, merchant_id: str, ids: Sequence[str]) -> Mapping[str, BilledSubscription]:
        from services.subscription import store

        found: Mapping[str, BilledSubscription] = await store.load_subscriptions(session, merchant_id, ids)
        return found

    async def mark_terminated(self, session: Any, subscription: BilledSubscription, at: datetime, *, reason: str | None = None) -> None:
        from services.subscription import store

        await store.mark_terminated(session, subscription, at, reason=reason)  # type: ignore[arg-type]

    async def record_invoice_zero(self, session: Any, subscription: BilledSubscription, invoice: inv.Invoice) -> None:
        from services.subscription import store

        await store.record_invoice_zero(session, subscription, invoice)  # type: ignore[arg-type]

    async def record_invoice_zero_paid(self, session: Any, subscription: BilledSubscription, invoice: inv.Invoice) -> None:
        from services.subscription import store

        await store.record_invoice_zero_paid(session, subscription, invoice)  # type: ignore[arg-type]


def _conn(session: Any) -> Any:
    """The SQL connection of whatever unit of work the caller passes."""
    if hasattr(session, "conn"):
        return session.conn
    if hasattr(session, "transaction"):
        return session.transaction.conn
    return session


# --- results -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Executed:
    """A row that ran, and what invoicing answered (None for an ``end`` or a skipped row);
    a collect: what the charge answered (None when nothing was charged), ``attempt`` its
    attempt number, ``postponed`` when it runs again (its outcome is not known yet)."""

    subscription_id: str
    kind: Kind
    sequence_number: int
    invoice: inv.Invoice | None
    charge: pay.ChargeOutcome | None = None
    attempt: int = 0
    postponed: bool = False


@dataclass
class _Outcome:
    row: DueRow
    subscription: BilledSubscription | None = None
    invoice: inv.Invoice | None = None
    follow_ups: list[Due] = field(default_factory=list)
    error: BaseException | None = None
    charge: pay.ChargeOutcome | None = None
    after: AfterCharge | None = None


@dataclass
class _Batch:
    claimed: int = 0
    executed: list[Executed] = field(default_factory=list)
    failed: list[tuple[DueRow, BaseException]] = field(default_factory=list)
    postponed: int = 0


# --- proto building ------------------------------------------------------------------------


def billing_terms(subscription: BilledSubscription) -> inv.BillingTerms:
    terms = inv.BillingTerms(
        subscription_id=subscription.id,
        customer_id=subscription.customer_id,
        plan_id=subscription.plan_id,
        plan_version_id=subscription.plan_version_id,
        currency=subscription.currency,
        billing_anchor=to_timestamp(subscription.billing_anchor),
        billing_cadence=subscription.billing_cadence,
        payment_term_days=subscription.payment_term_days or 0,
        tax_exempt=bool(subscription.tax_exempt),
        customer_tax_rates={str(k): str(v) for k, v in (subscription.customer_tax_rates or {}).items()},
        tax_behavior=subscription.tax_behavior or "exclusive",
        default_tax_rate=subscription.default_tax_rate or "0",
        auto_approve=True,
        auto_charge=bool(subscription.auto_charge),
    )
    if subscription.test_clock_id:
        terms.test_clock_id = subscription.test_clock_id
    redirects = subscription.redirect_urls or {}
    if redirects.get("on_success"):
        terms.success_redirect_url = redirects["on_success"]
    if redirects.get("on_failure"):
        terms.failure_redirect_url = redirects["on_failure"]
    if subscription.session_expiry_minutes:
        # whole minutes on invoicing's wire; a fraction rounds up (never a shorter session)
        # (bounded as CreateSubscription checks it: int32 on the wire)
        minutes = min(max(1, math.ceil(subscription.session_expiry_minutes)), rules.SESSION_EXPIRY_MAX_MINUTES)
        terms.session_expiry_minutes = minutes
    return terms


def _positive(amount: str) -> bool:
    try:
        return Decimal(amount or "0") > 0
    except InvalidOperation:
        return False


def charge_request(row: DueRow, subscription: BilledSubscription, invoice: inv.Invoice) -> pay.ChargeInvoiceRequest:
    """ChargeInvoice of a collect row: attempt ``row.attempt`` of the invoice, for what is
    unpaid now, at the row's instant in the subscription's time."""
    due = row.due
    first = due.first_attempt_at or row.due_at
    request = pay.ChargeInvoiceRequest(
        invoice_id=invoice.id,
        customer_id=invoice.customer_id or subscription.customer_id,
        subscription_id=subscription.id,
        amount=invoice.unpaid_amount,
        currency=invoice.currency or subscription.currency,
        attempt_key=due.attempt_key,
        attempt_number=row.attempt,
        first_attempt_at=to_timestamp(first),
        effective_time=to_timestamp(row.due_at),
        trigger="automatic",
    )
    return request


def charge_of(outcome: pay.ChargeOutcome) -> Charge:
    """The payment service's answer as the timeline's rules read it."""
    if outcome.status not in CHARGE_STATUSES:
        raise Unavailable("CHARGE_OUTCOME_UNKNOWN", f"the payment service answered charge status {outcome.status!r}")
    return Charge(
        status=outcome.status,
        next_attempt_at=from_timestamp(outcome.next_attempt_at) if outcome.HasField("next_attempt_at") else None,
        after_final_failure=outcome.after_final_failure if outcome.HasField("after_final_failure") else None,
    )


def _window(w: Window) -> inv.BillingWindow:
    return inv.BillingWindow(
        start=to_timestamp(w.start),
        end=to_timestamp(w.end),
        period_start=to_timestamp(w.period_start),
        period_end=to_timestamp(w.period_end),
        period_index=w.period_index,
    )


def composition_proto(c: Composition) -> inv.InvoiceComposition:
    return inv.InvoiceComposition(
        arrears=[_window(w) for w in c.arrears],
        advance=[_window(w) for w in c.advance],
        credits=[_window(w) for w in c.credits],
        one_time_fees=c.one_time_fees,
        final=c.final,
    )


def _owner(subscription: BilledSubscription) -> Owner:
    return Owner(subscription.id, subscription.merchant_id, subscription.customer_id, subscription.test_clock_id)


def _backoff(attempts: int, *, base: float, cap: float) -> float:
    return float(min(cap, base * 2 ** max(attempts - 1, 0)))


def _retry_batch(exc: BaseException) -> bool:
    return isinstance(exc, sa.exc.DBAPIError) and getattr(exc.orig, "sqlstate", None) in _RETRY_SQLSTATES


# --- the engine ----------------------------------------------------------------------------


class Timeline:
    """Lays and runs the due work of subscriptions (the API the subscription use cases call)."""

    def __init__(
        self,
        *,
        db: Database,
        invoicing: Invoicing,
        payment: Payment | None = None,
        subscriptions: Subscriptions | None = None,
        unit_of_work: Callable[[], AbstractAsyncContextManager[Any]] | None = None,
        grace_seconds: float = DEFAULT_GRACE_SECONDS,
        clock: Clock | None = None,
        batch_size: int = 1000,
        concurrency: int = 64,
        rpc_batch: int = 100,
        max_attempts: int = 8,
        retry_base_seconds: float = 0.1,
        retry_cap_seconds: float = 2.0,
        real_time_retry_cap_seconds: float = 300.0,
        finish_when_caller_leaves: bool = True,
        postponed_pause_seconds: float = 0.05,
    ) -> None:
        self._db = db
        self._invoicing = invoicing
        self._payment: Payment = payment if payment is not None else GrpcPayment(None)
        self._postponed_pause = postponed_pause_seconds
        self._subscriptions = subscriptions or StoreSubscriptions()
        self._unit_of_work = unit_of_work or db.uow
        self.grace = timedelta(seconds=grace_seconds)
        self._clock = clock or SystemClock()
        self.batch_size = batch_size
        self.concurrency = concurrency
        self.rpc_batch = rpc_batch
        self.max_attempts = max_attempts
        self._retry_base = retry_base_seconds
        self._retry_cap = retry_cap_seconds
        self._real_time_retry_cap = real_time_retry_cap_seconds
        self.finish_when_caller_leaves = finish_when_caller_leaves
        self._background: set[asyncio.Task[list[Executed]]] = set()

    # --- laying work, inside the caller's transaction --------------------------------

    async def schedule_new(self, session: Any, subscription: BilledSubscription, now: datetime) -> None:
        """At creation (``now``: the creation instant in the subscription's time): Invoice 0
        opened and issued now, the next invoice opened now and closed at its boundary, and
        the scheduled end."""
        due = Schedule.of(subscription).initial(now, subscription.ending_at)
        owner = _owner(subscription)
        await engine_store.lay(_conn(session), [(owner, d) for d in due], now=self._clock.now())

    async def schedule_termination(self, session: Any, subscription: BilledSubscription, at: datetime) -> None:
        """The subscription ends at ``at`` (now, or a past ``terminatedAt``): the invoice
        not yet closed becomes the final one (closed at ``at``, issued after the grace),
        every later row and the scheduled end are dropped."""
        await self._lay_final(_conn(session), subscription, at)

    async def schedule_end(self, session: Any, subscription: BilledSubscription, at: datetime | None) -> None:
        """``endingAt`` changed: the pending ``end`` row moves to ``at`` (None: removed)."""
        conn = _conn(session)
        await engine_store.drop_pending(conn, subscription.id, from_sequence=None, ends=True)
        if at is not None:
            await engine_store.lay(conn, [(_owner(subscription), Due(Kind.END, 0, at))], now=self._clock.now())

    async def _lay_final(self, conn: Any, subscription: BilledSubscription, at: datetime, *, keep: DueRow | None = None) -> None:
        rows = await engine_store.rows_of(conn, subscription.id, lock=True)
        schedule = Schedule.of(subscription)
        keep_key = keep.key if keep is not None else None
        if schedule.once:
            await engine_store.drop_pending(conn, subscription.id, from_sequence=None, ends=True, keep=keep_key)
            return
        first_regular = min((r.sequence_number for r in rows if r.sequence_number > 0), default=1)
        last_closed = max((r.sequence_number for r in rows if r.kind is Kind.CLOSE and r.done), default=None)
        g = schedule.final_sequence(at, first_regular=first_regular, last_closed=last_closed)
        await engine_store.drop_pending(conn, subscription.id, from_sequence=g, ends=True, keep=keep_key)
        owner = _owner(subscription)
        await engine_store.lay(conn, [(owner, d) for d in schedule.termination(g, at, self.grace)], now=self._clock.now())

    # --- running work ------------------------------------------------------------------

    async def run_subscription(self, merchant_id: str, subscription_id: str, until: datetime) -> list[Executed]:
        """Run the subscription's rows due by ``until`` (after a create or a termination
        committed); answers what ran here (rows someone else ran are done, not listed)."""
        return await self._drain(Lane.of_subscription(subscription_id), until, wait=True)

    async def advance_clock(self, merchant_id: str, clock_id: str, until: datetime) -> list[Executed]:
        """After the clock moved to ``until``: every row of its subscriptions due by then,
        in time order; returns when all of them are done. Advances of one clock take turns.

        A caller that goes away (its deadline passed, its client disconnected) does not
        stop the work halfway: it finishes in the background (``finish_when_caller_leaves``),
        and the next advance or read sees it done."""

        async def advance() -> list[Executed]:
            async with self._clock_lock(clock_id):
                return await self._drain(Lane.clock(clock_id), until, same_instant=True)

        if not self.finish_when_caller_leaves:
            return await advance()
        task = asyncio.create_task(advance(), name=f"advance-{clock_id}")
        self._background.add(task)
        task.add_done_callback(self._finished)
        return await asyncio.shield(task)

    def _finished(self, task: asyncio.Task[list[Executed]]) -> None:
        self._background.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.info("due_work_advance_failed", task=task.get_name(), error=str(task.exception()))

    async def run_real_time(self) -> int:
        """One pass over the real-time lane: every row due by the system clock that is not
        waiting for a retry; answers how many rows ran."""
        ran = 0
        while True:
            now = self._clock.now()
            batch = await self._run_batch(Lane.system(), now, real_time=True)
            ran += len(batch.executed)
            if batch.claimed < self.batch_size:
                return ran

    async def next_real_time_due(self) -> datetime | None:
        async with self._db.engine.connect() as conn:
            return await engine_store.next_due(conn, Lane.system())

    @contextlib.asynccontextmanager
    async def _clock_lock(self, clock_id: str) -> AsyncIterator[None]:
        conn = await self._db.engine.connect()
        try:
            await engine_store.lock_clock(conn, clock_id)
            await conn.commit()
            try:
                yield
            finally:
                await engine_store.unlock_clock(conn, clock_id)
                await conn.commit()
        except BaseException:
            # never hand a connection that may still hold the lock back to the pool
            await conn.invalidate()
            raise
        finally:
            await conn.close()

    async def _drain(self, lane: Lane, until: datetime, *, same_instant: bool = False, wait: bool = False) -> list[Executed]:
        executed: list[Executed] = []
        while True:
            try:
                batch = await self._run_batch(lane, until, same_instant=same_instant, wait=wait)
            except sa.exc.DBAPIError as exc:
                if not _retry_batch(exc):
                    raise
                log.info("due_work_batch_retried", lane=str(lane), error=str(exc.orig))
                await asyncio.sleep(0.05)
                continue
            executed += batch.executed
            if batch.failed:
                row, error = max(batch.failed, key=lambda f: (not getattr(f[1], "retryable", False), f[0].attempts))
                # only a retryable error (UNAVAILABLE: usage not complete yet, a service
                # restarting) is worth waiting for; anything else fails the call at once
                if not getattr(error, "retryable", False) or row.attempts + 1 >= self.max_attempts:
                    log.warning(
                        "due_work_gave_up",
                        subscription_id=row.subscription_id,
                        kind=row.kind.value,
                        sequence=row.sequence_number,
                        error=str(error),
                    )
                    raise error
                await asyncio.sleep(_backoff(row.attempts + 1, base=self._retry_base, cap=self._retry_cap))
                continue
            if batch.claimed:
                if batch.postponed and batch.postponed == batch.claimed:
                    # only charges whose outcome is not known yet: give the processor a
                    # moment (real time) before asking again an hour later (its time)
                    await asyncio.sleep(self._postponed_pause)
                continue
            async with self._db.engine.connect() as conn:
                if not await engine_store.pending(conn, lane, until=until):
                    return executed
            await asyncio.sleep(0.02)  # rows another claimer holds: wait until they are done

    async def _run_batch(
        self, lane: Lane, until: datetime, *, same_instant: bool = False, wait: bool = False, real_time: bool = False
    ) -> _Batch:
        batch = _Batch()
        service_now = self._clock.now()
        async with self._unit_of_work() as session:
            conn = _conn(session)
            rows = await engine_store.claim(
                conn, lane, until=until, limit=self.batch_size, now=service_now if real_time else None, same_instant=same_instant, wait=wait
            )
            batch.claimed = len(rows)
            if not rows:
                return batch
            subscriptions = await self._load(session, rows)
            outcomes = await self._execute_all(rows, subscriptions)
            done: list[Key] = []
            follow_ups: list[tuple[Owner, Due]] = []
            for outcome in outcomes:
                row, sub = outcome.row, outcome.subscription
                after = outcome.after
                if outcome.error is None and after is not None and after.again_at is not None:
                    # the charge's outcome is not known yet: the same attempt (same key) later
                    await engine_store.postpone(conn, row.key, due_at=after.again_at)
                    batch.postponed += 1
                    batch.executed.append(
                        Executed(row.subscription_id, row.kind, row.sequence_number, None, outcome.charge, row.attempt, postponed=True)
                    )
                    continue
                if outcome.error is not None:
                    batch.failed.append((row, outcome.error))
                    retry_at = None
                    if real_time:
                        retry_at = service_now + timedelta(seconds=_backoff(row.attempts + 1, base=1.0, cap=self._real_time_retry_cap))
                    await engine_store.mark_failed(
                        conn, row.key, error=f"{type(outcome.error).__name__}: {outcome.error}", retry_at=retry_at
                    )
                    continue
                if sub is not None and row.kind is Kind.END and sub.status != "terminated":
                    await self._subscriptions.mark_terminated(session, sub, row.due_at)
                    await self._lay_final(conn, sub, row.due_at, keep=row)
                if sub is not None and row.kind is Kind.ISSUE and row.sequence_number == 0 and outcome.invoice is not None:
                    await self._subscriptions.record_invoice_zero(session, sub, outcome.invoice)
                if sub is not None and row.kind is Kind.ISSUE and outcome.invoice is not None:
                    outcome.follow_ups += collection(
                        row.due,
                        auto_charge=bool(sub.auto_charge),
                        invoice_id=outcome.invoice.id,
                        status=outcome.invoice.status,
                        unpaid_amount=outcome.invoice.unpaid_amount,
                    )
                if sub is not None and row.kind is Kind.COLLECT:
                    await self._after_collect(session, conn, row, sub, outcome)
                if sub is not None:
                    follow_ups += [(_owner(sub), d) for d in outcome.follow_ups]
                done.append(row.key)
                batch.executed.append(
                    Executed(row.subscription_id, row.kind, row.sequence_number, outcome.invoice, outcome.charge, row.attempt)
                )
            await engine_store.lay(conn, follow_ups, now=service_now)
            await engine_store.mark_done(conn, done, now=service_now)
        return batch

    async def _after_collect(self, session: Any, conn: Any, row: DueRow, sub: BilledSubscription, outcome: _Outcome) -> None:
        """In the batch's transaction, after every call of the batch answered: the next
        attempt is laid (outcome.follow_ups), an exhausted schedule under the terminate
        policy ends the subscription at the attempt's instant (the termination path of an
        ``end`` row: the final invoice), and a paid Invoice 0 is recorded (invoicing tells
        the subscription too; either way it is active when the call that ran it answers)."""
        after = outcome.after
        if after is None:
            return
        outcome.follow_ups += list(after.follow_ups)
        if after.terminate_at is not None and sub.status != "terminated":
            log.info("collection_gave_up", subscription_id=sub.id, invoice_id=row.invoice_id, attempt=row.attempt)
            await self._subscriptions.mark_terminated(session, sub, after.terminate_at, reason=PAYMENT_FAILED_REASON)
            await self._lay_final(conn, sub, after.terminate_at, keep=row)
        if row.sequence_number == 0 and outcome.charge is not None and outcome.charge.status == "succeeded" and outcome.invoice is not None:
            await self._subscriptions.record_invoice_zero_paid(session, sub, outcome.invoice)

    async def _load(self, session: Any, rows: Sequence[DueRow]) -> dict[str, BilledSubscription]:
        by_merchant: dict[str, list[str]] = {}
        for row in rows:
            by_merchant.setdefault(row.merchant_id, []).append(row.subscription_id)
        found: dict[str, BilledSubscription] = {}
        for merchant_id, ids in by_merchant.items():
            found.update(await self._subscriptions.load_many(session, merchant_id, ids))
        return found

    async def _execute_all(self, rows: Sequence[DueRow], subscriptions: Mapping[str, BilledSubscription]) -> list[_Outcome]:
        """Every row's step. With a batch-capable invoicing (``BatchInvoicing``), the rows
        are grouped by merchant and kind into chunks of ``rpc_batch`` steps, one call each
        (``concurrency`` calls in flight); otherwise one RPC per row, ``concurrency`` in
        flight (a few runner tasks pulling rows, not a task per row). Outcomes in the
        rows' order."""
        outcomes = [_Outcome(row, subscriptions.get(row.subscription_id)) for row in rows]
        steps: list[tuple[_Outcome, Any]] = []
        collects: list[_Outcome] = []
        for outcome in outcomes:
            if outcome.row.kind is Kind.COLLECT:
                collects.append(outcome)
                continue
            try:
                request = self._request(outcome)
            except Exception as exc:
                outcome.error = exc
                continue
            if request is not None:
                steps.append((outcome, request))

        async def invoicing_steps() -> None:
            if isinstance(self._invoicing, _BATCH_TYPES) or all(hasattr(self._invoicing, name) for name in _BATCH_METHODS.values()):
                await self._execute_batched(steps)
                return
            pending = iter(steps)

            async def runner() -> None:
                for outcome, request in pending:
                    await self._execute_one(outcome, request)

            await asyncio.gather(*(runner() for _ in range(min(self.concurrency, len(steps)))))

        async def charges() -> None:
            # one ChargeInvoice per row (payment has no batch RPC), ``concurrency`` in flight
            pending = iter(collects)

            async def runner() -> None:
                for outcome in pending:
                    await self._collect(outcome)

            await asyncio.gather(*(runner() for _ in range(min(self.concurrency, len(collects)))))

        await asyncio.gather(invoicing_steps(), charges())
        return outcomes

    async def _collect(self, outcome: _Outcome) -> None:
        """A collect row: read the invoice, charge what is unpaid (attempt key
        ``<invoice>:auto:<n>``), and decide what follows (outcome.after). Nothing is
        charged for a vanished subscription, one that no longer charges automatically, or
        an invoice no longer owed (paid meanwhile: out of band, on its page, by an earlier
        attempt); such a row is just done."""
        row, sub = outcome.row, outcome.subscription
        if sub is None or not sub.auto_charge or not row.invoice_id:
            return
        try:
            invoice = await self._invoicing.get_invoice(row.merchant_id, row.invoice_id)
            outcome.invoice = invoice
            if invoice.status not in COLLECTABLE_STATUSES or not _positive(invoice.unpaid_amount):
                return
            try:
                answer = await self._payment.charge_invoice(row.merchant_id, charge_request(row, sub, invoice))
            except FailedPrecondition as exc:
                if exc.reason != _CONCURRENT_ATTEMPT:
                    raise
                # another attempt of the invoice is in flight (its page, a retryPayment):
                # this attempt is asked again later, with the same key
                outcome.after = AfterCharge(again_at=recheck_at(row.due, self._ran_at(row)))
                return
            outcome.charge = answer
            outcome.after = after_charge(row.due, charge_of(answer), ran_at=self._ran_at(row))
        except Exception as exc:  # the row stays pending; see _drain and run_real_time
            outcome.error = exc

    async def _execute_one(self, outcome: _Outcome, request: Any) -> None:
        method = getattr(self._invoicing, _SINGLE_METHODS[type(request)])
        try:
            outcome.invoice = await method(outcome.row.merchant_id, request)
        except Exception as exc:  # the row stays pending; see _drain and run_real_time
            outcome.error = exc

    async def _execute_batched(self, steps: Sequence[tuple[_Outcome, Any]]) -> None:
        groups: dict[tuple[str, type], list[tuple[_Outcome, Any]]] = {}
        for outcome, request in steps:
            groups.setdefault((outcome.row.merchant_id, type(request)), []).append((outcome, request))
        chunks = [
            (merchant_id, kind, group[i : i + self.rpc_batch])
            for (merchant_id, kind), group in groups.items()
            for i in range(0, len(group), self.rpc_batch)
        ]
        semaphore = asyncio.Semaphore(self.concurrency)

        async def run(merchant_id: str, kind: type, chunk: list[tuple[_Outcome, Any]]) -> None:
            async with semaphore:
                method = getattr(self._invoicing, _BATCH_METHODS[kind])
                try:
                    answers = await method(merchant_id, [request for _, request in chunk])
                except Exception as exc:
                    if getattr(exc, "retryable", False) or not isinstance(exc, DomainError):
                        for outcome, _ in chunk:
                            outcome.error = exc
                        return
                    # refused whole (a bad item, an older invoicing): each step on its own
                    for outcome, request in chunk:
                        await self._execute_one(outcome, request)
                    return
                for (outcome, _), answer in zip(chunk, answers, strict=True):
                    if isinstance(answer, Exception):
                        outcome.error = answer
                    else:
                        outcome.invoice = answer

        await asyncio.gather(*(run(m, k, c) for m, k, c in chunks))

    def _request(self, outcome: _Outcome) -> Any:
        """The invoicing request of a row (None: nothing to call); lays the follow-ups a
        regular close will have."""
        row, sub = outcome.row, outcome.subscription
        if sub is None or row.kind is Kind.END:
            return None  # a vanished subscription's row is just done; an end runs in the batch's transaction
        if self._superseded(row, sub):
            return None
        schedule = Schedule.of(sub)
        terms = billing_terms(sub)
        at = to_timestamp(row.due_at)
        if row.kind is Kind.OPEN:
            composition = schedule.composition(row.due, created=row.due_at)
            return inv.OpenInvoiceRequest(
                terms=terms, sequence_number=row.sequence_number, composition=composition_proto(composition), effective_time=at
            )
        if row.kind is Kind.CLOSE:
            request = inv.CloseInvoiceRequest(
                terms=terms, sequence_number=row.sequence_number, grace_period_end=to_timestamp(row.due_at + self.grace), effective_time=at
            )
            if row.final:
                request.composition.CopyFrom(composition_proto(schedule.composition(row.due)))
            else:
                outcome.follow_ups = schedule.after_close(row.sequence_number, row.due_at, self.grace)
            return request
        return inv.IssueInvoiceRequest(terms=terms, sequence_number=row.sequence_number, effective_time=at)

    def _ran_at(self, row: DueRow) -> datetime:
        """The instant a row ran in its subscription's time: its due time on a test clock
        (an advance runs rows at their instants), the system clock's now in real time."""
        return row.due_at if row.test_clock_id is not None else max(row.due_at, self._clock.now())

    @staticmethod
    def _superseded(row: DueRow, sub: BilledSubscription) -> bool:
        """A regular open/close of a subscription that has ended before it (a termination
        that did not re-lay its rows): nothing to do. Issues and collects always run (what
        was issued is owed)."""
        if sub.status != "terminated" or row.final or row.kind in (Kind.ISSUE, Kind.COLLECT) or row.sequence_number == 0:
            return False
        return sub.terminated_at is not None and row.due_at > sub.terminated_at


_SINGLE_METHODS: dict[type, str] = {
    inv.OpenInvoiceRequest: "open_invoice",
    inv.CloseInvoiceRequest: "close_invoice",
    inv.IssueInvoiceRequest: "issue_invoice",
}
_BATCH_METHODS: dict[type, str] = {
    inv.OpenInvoiceRequest: "open_invoices",
    inv.CloseInvoiceRequest: "close_invoices",
    inv.IssueInvoiceRequest: "issue_invoices",
}
_BATCH_TYPES: tuple[type, ...] = (GrpcInvoicing,)


# --- the real-time scheduler -------------------------------------------------------------


class Scheduler:
    """A worker of the subscription service: runs the real-time lane (rows of subscriptions
    on no test clock) as their time comes, polling at most every ``poll_seconds``."""

    def __init__(self, timeline: Timeline, *, poll_seconds: float = 1.0) -> None:
        self._timeline = timeline
        self._poll = poll_seconds
        self._stopping = asyncio.Event()

    def stop(self) -> None:
        self._stopping.set()

    async def run(self) -> None:
        while not self._stopping.is_set():
            try:
                await self._timeline.run_real_time()
            except Exception as exc:  # keep scheduling through transient PG trouble
                log.warning("due_work_scheduler_error", error=str(exc))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), self._poll)


# --- composition root helpers -------------------------------------------------------------


def build_timeline(runtime: Runtime, *, unit_of_work: Callable[[], AbstractAsyncContextManager[Any]] | None = None) -> Timeline:
    """The service's Timeline, built once (runtime.extras["timeline"])."""
    existing = runtime.extras.get("timeline")
    if isinstance(existing, Timeline):
        return existing
    settings = runtime.settings
    timeline = Timeline(
        db=runtime.db,
        invoicing=GrpcInvoicing(getattr(settings, "invoicing_addr", None)),
        payment=GrpcPayment(
            getattr(settings, "payment_addr", None),
            timeout=float(getattr(settings, "subscription_charge_timeout_seconds", DEFAULT_CHARGE_TIMEOUT_SECONDS)),
        ),
        unit_of_work=unit_of_work,
        grace_seconds=float(getattr(settings, "subscription_grace_period_seconds", DEFAULT_GRACE_SECONDS)),
        clock=runtime.clock,
    )
    runtime.extras["timeline"] = timeline
    return timeline


def timeline_of(runtime: Runtime) -> Timeline:
    return build_timeline(runtime)


def scheduler_workers(runtime: Runtime) -> Sequence[Worker]:
    """The real-time scheduler, for the service definition's ``workers``."""
    return [Scheduler(build_timeline(runtime))]


workers = scheduler_workers
