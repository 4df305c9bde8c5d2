"""InvoicingService: proto -> command -> use case -> proto, and nothing else.

Rules live in domain/ (the Invoice aggregate in model.py, the steps in use_cases.py, the
maths in calculation.py), queries in store.py, rendering in mapping.py, the other
services in clients.py.

The engine's internal steps (OpenInvoice, CloseInvoice, IssueInvoice) are idempotent by
(subscription, sequence number) on their own (IssueAdHocInvoice by (purpose, reference)), so they do not go through the
Idempotency-Key replay of ``ServiceLayer.mutate`` (the engine's calls may carry the key of
the request that caused them, which belongs to another method). RecordInvoicePayment does.

Reads: ListInvoices shows stored totals (an open invoice's are 0 until it is issued);
GetInvoice, GetInvoiceLineItems and ListLineItems calculate an open (ACTIVE or CLOSING)
invoice on read, stored nowhere: its live estimate. Should the estimate be impossible
(metering or the catalog down), the invoice is shown with its stored totals.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Sequence
from typing import Any, TypeAlias

import grpc
from accrue.invoicing.v1 import invoicing_service_pb2 as svc
from accrue.invoicing.v1 import invoicing_service_pb2_grpc

from libs.core.clock import Clock
from libs.core.errors import DomainError, InvalidArgument, http_status
from libs.core.paging import page
from libs.infra.context import current_merchant_id
from libs.infra.db import Database
from libs.infra.logging import get_logger
from libs.infra.proto_time import from_timestamp
from libs.infra.service_layer import ServiceLayer, check_merchant, opt, page_of, pagination
from services.invoicing import mapping, views
from services.invoicing.domain import batches, payments, use_cases
from services.invoicing.domain.calculation import InvoiceCalculation
from services.invoicing.domain.commands import CloseInvoice, InvoiceFilters, IssueInvoice, OpenInvoice, RecordPayment
from services.invoicing.domain.model import Invoice, InvoiceLine
from services.invoicing.domain.use_cases import Policy, Sources
from services.invoicing.store import SqlInvoicingUnitOfWork

log = get_logger(__name__)

Uow: TypeAlias = SqlInvoicingUnitOfWork
Context: TypeAlias = grpc.aio.ServicerContext[Any, Any]

DEFAULT_LINE_PAGE = 100
MAX_LINE_PAGE = 1000
_LINE_EXPANSIONS = frozenset({"lineItems", "items", "lineProvenance"})


def _expansions(text: str | None, field: str) -> set[str]:
    wanted = {part.strip() for part in (text or "").split(",") if part.strip()}
    unknown = sorted(wanted - _LINE_EXPANSIONS)
    if unknown:
        raise InvalidArgument(
            field, f"{field}: unknown expansion {unknown[0]!r} (lineItems, items, lineProvenance)", reason="INVALID_EXPAND"
        )
    return wanted


def _page_token(offset: int) -> str:
    return base64.urlsafe_b64encode(f"offset:{offset}".encode()).decode().rstrip("=")


def _offset_of(token: str | None, field: str) -> int:
    if not token:
        return 0
    try:
        text = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)).decode()
        prefix, _, number = text.partition(":")
        offset = int(number)
        if prefix != "offset" or offset < 0:
            raise ValueError(text)
    except (ValueError, binascii.Error, UnicodeDecodeError):
        raise InvalidArgument(field, f"{field} is not a page token this API gave out", reason="INVALID_PAGE_TOKEN") from None
    return offset


class InvoicingServicer(invoicing_service_pb2_grpc.InvoicingServiceServicer):
    def __init__(self, db: Database, clock: Clock, sources: Sources, policy: Policy) -> None:
        def unit_of_work() -> SqlInvoicingUnitOfWork:
            return SqlInvoicingUnitOfWork(db, clock=clock, translate=views.outbox_message)

        self._unit_of_work = unit_of_work
        self._clock = clock
        self._sources = sources
        self._policy = policy
        self._service: ServiceLayer[Uow, Uow] = ServiceLayer(clock, unit_of_work, unit_of_work)

    # --- the engine's steps -----------------------------------------------------------

    async def OpenInvoice(self, request: svc.OpenInvoiceRequest, context: Context) -> svc.Invoice:
        command = OpenInvoice(
            terms=mapping.terms_of(request.terms),
            sequence_number=request.sequence_number,
            layout=mapping.layout_of(request.composition),
            effective_time=from_timestamp(request.effective_time),
        )
        merchant_id, now = current_merchant_id(), self._clock.now()
        async with self._unit_of_work() as uow:
            return mapping.invoice(await use_cases.open_invoice(uow, merchant_id, now, command))

    async def CloseInvoice(self, request: svc.CloseInvoiceRequest, context: Context) -> svc.Invoice:
        command = CloseInvoice(
            terms=mapping.terms_of(request.terms),
            sequence_number=request.sequence_number,
            grace_period_end=from_timestamp(request.grace_period_end),
            layout=mapping.layout_of(request.composition) if request.HasField("composition") else None,
            effective_time=from_timestamp(request.effective_time),
        )
        merchant_id, now = current_merchant_id(), self._clock.now()
        async with self._unit_of_work() as uow:
            return mapping.invoice(await use_cases.close_invoice(uow, merchant_id, now, command))

    async def IssueInvoice(self, request: svc.IssueInvoiceRequest, context: Context) -> svc.Invoice:
        command = IssueInvoice(
            terms=mapping.terms_of(request.terms),
            sequence_number=request.sequence_number,
            effective_time=from_timestamp(request.effective_time),
        )
        found = await use_cases.issue_invoice(self._unit_of_work, self._sources, self._policy, self._clock, current_merchant_id(), command)
        return mapping.invoice(found)

    async def OpenInvoices(self, request: svc.OpenInvoicesRequest, context: Context) -> svc.InvoiceStepsResponse:
        _check_batch(len(request.items))
        commands = [
            OpenInvoice(
                terms=mapping.terms_of(item.terms),
                sequence_number=item.sequence_number,
                layout=mapping.layout_of(item.composition),
                effective_time=from_timestamp(item.effective_time),
            )
            for item in request.items
        ]
        results = await batches.open_invoices(self._unit_of_work, current_merchant_id(), self._clock.now(), commands)
        return _steps(results)

    async def CloseInvoices(self, request: svc.CloseInvoicesRequest, context: Context) -> svc.InvoiceStepsResponse:
        _check_batch(len(request.items))
        commands = [
            CloseInvoice(
                terms=mapping.terms_of(item.terms),
                sequence_number=item.sequence_number,
                grace_period_end=from_timestamp(item.grace_period_end),
                layout=mapping.layout_of(item.composition) if item.HasField("composition") else None,
                effective_time=from_timestamp(item.effective_time),
            )
            for item in request.items
        ]
        results = await batches.close_invoices(self._unit_of_work, current_merchant_id(), self._clock.now(), commands)
        return _steps(results)

    async def IssueInvoices(self, request: svc.IssueInvoicesRequest, context: Context) -> svc.InvoiceStepsResponse:
        _check_batch(len(request.items))
        commands = [
            IssueInvoice(
                terms=mapping.terms_of(item.terms),
                sequence_number=item.sequence_number,
                effective_time=from_timestamp(item.effective_time),
            )
            for item in request.items
        ]
        results = await batches.issue_invoices(
            self._unit_of_work, self._sources, self._policy, self._clock, current_merchant_id(), commands
        )
        return _steps(results)

    # --- ad hoc -----------------------------------------------------------------------

    async def IssueAdHocInvoice(self, request: svc.IssueAdHocInvoiceRequest, context: Context) -> svc.Invoice:
        # idempotent by (merchant, purpose, reference) on its own, as the engine's steps
        # (the caller's Idempotency-Key belongs to its own request, a grant purchase)
        command = mapping.ad_hoc_of(request)
        merchant_id, now = current_merchant_id(), self._clock.now()
        async with self._unit_of_work() as uow:
            return mapping.invoice(await use_cases.issue_ad_hoc(uow, self._sources, merchant_id, now, command))

    # --- reads ------------------------------------------------------------------------

    async def _estimate(self, invoice: Invoice, basis: use_cases.EstimateBasis) -> tuple[InvoiceCalculation, list[InvoiceLine]] | None:
        try:
            calc, charges = await use_cases.estimate(self._sources, self._policy, invoice, basis)
        except DomainError as err:
            log.warning("invoice_estimate_failed", invoice_id=invoice.id, reason=err.reason, error=err.message)
            return None
        return calc, mapping.estimated_lines(invoice, calc, charges)

    async def _with_lines(
        self, merchant_id: str, invoice_id: str, *, want_lines: bool
    ) -> tuple[Invoice, list[InvoiceLine] | None, InvoiceCalculation | None]:
        """The invoice, its lines (stored, or its live estimate's while open) and the estimate."""
        async with self._unit_of_work() as uow:
            found = await uow.invoices.get(merchant_id, invoice_id)
            if not found.is_open:
                lines = (await uow.lines.of_invoices([found.id]))[found.id] if want_lines else None
                return found, lines, None
            basis = await use_cases.estimate_basis(uow, found, self._policy)
        estimated = await self._estimate(found, basis)
        if estimated is None:
            return found, [] if want_lines else None, None
        calc, lines = estimated
        return found, lines if want_lines else None, calc

    async def GetInvoice(self, request: svc.GetInvoiceRequest, context: Context) -> svc.Invoice:
        expand = _expansions(opt(request, "expand"), "expand")
        limit = page(opt(request, "line_items_limit"), 0, default=DEFAULT_LINE_PAGE, maximum=MAX_LINE_PAGE).limit
        offset = _offset_of(opt(request, "line_items_page_token"), "lineItemsPageToken")
        found, lines, calc = await self._with_lines(current_merchant_id(), request.id, want_lines=bool(expand))
        if lines is None:
            return mapping.invoice(found, estimate=calc)
        shown = lines[offset : offset + limit]
        token = _page_token(offset + limit) if offset + limit < len(lines) else None
        return mapping.invoice(
            found, lines=shown, lines_total=len(lines), next_page_token=token, provenance="lineProvenance" in expand, estimate=calc
        )

    async def GetInvoiceLineItems(self, request: svc.GetInvoiceLineItemsRequest, context: Context) -> svc.InvoiceLineItems:
        expand = _expansions(opt(request, "expand"), "expand")
        limit = page(opt(request, "limit"), 0, default=DEFAULT_LINE_PAGE, maximum=MAX_LINE_PAGE).limit
        offset = _offset_of(opt(request, "page_token"), "pageToken")
        found, lines, _ = await self._with_lines(current_merchant_id(), request.id, want_lines=True)
        assert lines is not None
        out = svc.InvoiceLineItems(
            invoice_id=found.id,
            line_items=[
                mapping.line_item(line, found.currency, provenance="lineProvenance" in expand, of=found)
                for line in lines[offset : offset + limit]
            ],
            total_count=len(lines),
        )
        if offset + limit < len(lines):
            out.next_page_token = _page_token(offset + limit)
        return out

    async def ListInvoices(self, request: svc.ListInvoicesRequest, context: Context) -> svc.ListInvoicesResponse:
        async def work(uow: Uow, merchant_id: str) -> svc.ListInvoicesResponse:
            check_merchant(request.merchant_id, merchant_id)
            of = page_of(request)
            filters = InvoiceFilters(
                status=opt(request, "status"), subscription_id=opt(request, "subscription_id"), customer_id=opt(request, "customer_id")
            )
            found, total = await uow.invoices.list_page(merchant_id, filters, of)
            return svc.ListInvoicesResponse(object="list", data=[mapping.invoice(i) for i in found], pagination=pagination(of, total))

        return await self._service.read(work)

    async def ListLineItems(self, request: svc.ListLineItemsRequest, context: Context) -> svc.ListLineItemsResponse:
        subscription_id, invoice_id, status = opt(request, "subscription_id"), opt(request, "invoice_id"), opt(request, "status")
        if not subscription_id and not invoice_id:
            raise InvalidArgument("subscriptionId", "subscriptionId or invoiceId is required", reason="REQUIRED")
        if invoice_id and status:
            raise InvalidArgument(
                "status", "status filters a subscription's lines; it cannot be combined with invoiceId", reason="INVALID_FILTER"
            )
        of = page(opt(request, "limit"), opt(request, "offset"), default=DEFAULT_LINE_PAGE, maximum=MAX_LINE_PAGE)
        provenance = "lineProvenance" in _expansions(opt(request, "expand"), "expand")
        merchant_id = current_merchant_id()
        async with self._unit_of_work() as uow:
            if invoice_id:
                found = [await uow.invoices.get(merchant_id, invoice_id, field="invoiceId")]
                if subscription_id and found[0].subscription_id != subscription_id:
                    found = []
            else:
                found = await uow.invoices.of_subscription(merchant_id, subscription_id)
            issued = [i for i in found if not i.is_open and status != "pending"]
            open_ = [i for i in found if i.is_open and status != "invoiced"]
            stored = await uow.lines.of_invoices([i.id for i in issued])
            bases = [(i, await use_cases.estimate_basis(uow, i, self._policy)) for i in open_]
        rows: list[tuple[Invoice, InvoiceLine]] = [(i, line) for i in issued for line in stored[i.id]]
        for invoice, basis in bases:
            estimated = await self._estimate(invoice, basis)
            if estimated is not None:
                rows.extend((invoice, line) for line in estimated[1])
        rows.sort(key=lambda row: (row[0].sequence_number, row[1].position))
        return svc.ListLineItemsResponse(
            object="list",
            data=[mapping.engine_line_item(i, line, provenance=provenance) for i, line in rows[of.offset : of.offset + of.limit]],
            total_count=len(rows),
            summary=_summary(rows, found),
        )

    # --- payments ---------------------------------------------------------------------

    async def RecordInvoicePayment(self, request: svc.RecordInvoicePaymentRequest, context: Context) -> svc.RecordInvoicePaymentResponse:
        use_cases.check_payment_method(request.method)
        command = RecordPayment(invoice_id=request.id, method=request.method, reason=opt(request, "reason"))

        async def work(uow: Uow, merchant_id: str, now: Any) -> svc.RecordInvoicePaymentResponse:
            if command.method == "hosted_link":
                found, session = await payments.hosted_link(uow, self._sources, merchant_id, now, command.invoice_id)
                return svc.RecordInvoicePaymentResponse(
                    method="hosted_link",
                    invoice=mapping.invoice(found),
                    provider=payments.PROVIDER,
                    payment_session_id=session.id,
                    payment_url=session.url,
                )
            found = await use_cases.record_payment(uow, self._sources, merchant_id, now, command)
            return svc.RecordInvoicePaymentResponse(method="out_of_band", invoice=mapping.invoice(found))

        return await self._service.mutate("RecordInvoicePayment", request, svc.RecordInvoicePaymentResponse, work)

    async def RetryInvoicePayment(self, request: svc.RetryInvoicePaymentRequest, context: Context) -> svc.RetryPaymentResponse:
        try:
            result = await payments.retry_payment(self._unit_of_work, self._sources, self._clock, current_merchant_id(), request.id)
        except DomainError as err:
            if http_status(err.code, err.reason) in _RETRY_BODY_STATUSES:
                err.metadata["body"] = json.dumps(mapping.retry_failure_body(err, request.id), separators=(",", ":"))
            raise
        return mapping.retry_response(result)

    async def RecordChargeOutcome(self, request: svc.RecordChargeOutcomeRequest, context: Context) -> svc.Invoice:
        # idempotent by attempt key on its own (not the caller's Idempotency-Key)
        command = mapping.charge_outcome_of(request)
        found = await payments.record_charge_outcome(self._unit_of_work, self._sources, self._clock, current_merchant_id(), command)
        return mapping.invoice(found)

    # --- refunds ----------------------------------------------------------------------

    async def CreateInvoiceRefund(self, request: svc.CreateInvoiceRefundRequest, context: Context) -> svc.InvoiceRefund:
        async def work(uow: Uow, merchant_id: str, now: Any) -> svc.InvoiceRefund:
            note = await payments.create_refund(uow, self._sources, merchant_id, now, request.id, opt(request, "reason"))
            return mapping.refund(note)

        return await self._service.mutate("CreateInvoiceRefund", request, svc.InvoiceRefund, work)

    async def ListInvoiceRefunds(self, request: svc.ListInvoiceRefundsRequest, context: Context) -> svc.InvoiceRefundList:
        async def work(uow: Uow, merchant_id: str) -> svc.InvoiceRefundList:
            notes = await payments.list_refunds(uow, merchant_id, request.id)
            return svc.InvoiceRefundList(object="list", data=[mapping.refund(n) for n in notes])

        return await self._service.read(work)

    async def VoidInvoiceRefund(self, request: svc.VoidInvoiceRefundRequest, context: Context) -> svc.InvoiceRefund:
        async def work(uow: Uow, merchant_id: str, now: Any) -> svc.InvoiceRefund:
            note = await payments.void_refund(uow, merchant_id, now, request.id, request.refund_id, opt(request, "reason"))
            return mapping.refund(note)

        return await self._service.mutate("VoidInvoiceRefund", request, svc.InvoiceRefund, work)


# the statuses of retryPayment whose body the SDK parses as RetryPaymentResponse
_RETRY_BODY_STATUSES = frozenset({402, 409, 422, 502})


def _check_batch(size: int) -> None:
    if size > batches.MAX_ITEMS:
        raise InvalidArgument("items", f"at most {batches.MAX_ITEMS} items per call, got {size}", reason="TOO_MANY_ITEMS")


def _steps(results: Sequence[batches.StepResult]) -> svc.InvoiceStepsResponse:
    out = svc.InvoiceStepsResponse()
    for result in results:
        if result.invoice is not None:
            out.results.append(svc.InvoiceStepResult(invoice=mapping.invoice(result.invoice)))
            continue
        err = result.error or DomainError("BATCH_ITEM_LOST", "the step was not answered")
        error = svc.InvoiceStepError(
            code=err.code.value, reason=err.reason, message=err.message, metadata=err.metadata, retryable=err.retryable
        )
        if err.field is not None:
            error.field = err.field
        out.results.append(svc.InvoiceStepResult(error=error))
    return out


def _summary(rows: Sequence[tuple[Invoice, InvoiceLine]], invoices: Sequence[Invoice]) -> svc.LineItemsSummary:
    currency = invoices[0].currency if invoices else ""
    fees = sum(line.line.amount for _, line in rows if line.line.event_type == "fee")
    metered = sum(line.line.amount for _, line in rows if line.line.event_type == "usage")
    if not currency:
        return svc.LineItemsSummary(fee_subtotal="0.00", metered_estimated_subtotal="0.00", currency="")
    return svc.LineItemsSummary(
        fee_subtotal=mapping.money(fees, currency), metered_estimated_subtotal=mapping.money(metered, currency), currency=currency
    )
