"""SubscriptionService: proto -> command -> use case -> proto, and nothing else.

Rules live in domain/ (aggregates in model.py, use cases in use_cases.py), queries in
store.py, rendering in views.py; the unit of work writes every recorded event to the
outbox. The plumbing (merchant, clock, transaction, idempotency, masks, pages) is
libs/infra/service_layer.py. A mutation whose effects go on after its commit (Invoice 0,
a final close, a clock's due work) runs the use case's ``after_*`` step once committed,
and answers what it caused (a replayed call runs the step again: every step is idempotent).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import Any, TypeAlias, TypeVar

import grpc
from accrue.subscription.v1 import subscription_service_pb2 as svc
from accrue.subscription.v1 import subscription_service_pb2_grpc

from libs.core.clock import Clock
from libs.core.errors import DomainError
from libs.infra.context import current_merchant_id
from libs.infra.db import Database
from libs.infra.logging import get_logger
from libs.infra.proto_struct import struct_to_dict, to_python
from libs.infra.proto_time import from_timestamp
from libs.infra.service_layer import FieldMask, ServiceLayer, check_merchant, opt, page_of, pagination
from services.subscription import store, views
from services.subscription.domain import commands, use_cases
from services.subscription.domain.model import Subscription, TestClock
from services.subscription.domain.ports import Checkouts, ClockSync, CustomerFilters, PlanCatalog, SubscriptionFilters, Timeline
from services.subscription.store import SqlSubscriptionUnitOfWork

log = get_logger(__name__)

R = TypeVar("R")
Uow: TypeAlias = SqlSubscriptionUnitOfWork
Context: TypeAlias = grpc.aio.ServicerContext[Any, Any]

_ADDRESS_FIELDS = ("line1", "line2", "city", "state", "country", "zip_code")
EXISTING_CUSTOMER_STATUS = (("accrue-http-status", "200"),)


def _address(message: Any) -> dict[str, str]:
    return {name: getattr(message, name) for name in _ADDRESS_FIELDS if message.HasField(name)}


def _time(message: Any, name: str) -> datetime | None:
    return from_timestamp(getattr(message, name)) if message.HasField(name) else None


def _consumer(message: Any) -> commands.ConsumerDetails:
    return commands.ConsumerDetails(message.name, message.email, _address(message.address), opt(message, "phone"))


def _notifications(message: svc.UpdateNotificationSettings) -> dict[str, bool | None]:
    return {name: opt(message, name) for name in ("invoice_issued", "invoice_paid", "renewal_reminder")}


class SubscriptionServicer(subscription_service_pb2_grpc.SubscriptionServiceServicer):
    def __init__(
        self,
        db: Database,
        clock: Clock,
        *,
        catalog: PlanCatalog,
        metering: ClockSync | None = None,
        timeline: Timeline | None = None,
        checkouts: Checkouts | None = None,
    ) -> None:
        def unit_of_work() -> SqlSubscriptionUnitOfWork:
            return SqlSubscriptionUnitOfWork(db, clock=clock, translate=views.outbox_message)

        self._unit_of_work = unit_of_work
        self._clock = clock
        self._catalog = catalog
        self._metering = metering
        self._timeline = timeline
        self._checkouts = checkouts
        self._service: ServiceLayer[Uow, Uow] = ServiceLayer(clock, unit_of_work, unit_of_work)

    async def _mutate(
        self, method: str, request: Any, response_type: type[Any], work: Callable[[Uow, str, datetime], Awaitable[Any]]
    ) -> Any:
        return await self._service.mutate(method, request, response_type, work)

    async def _read(self, work: Callable[[Uow, str], Awaitable[R]]) -> R:
        """A read of plain values (the service layer's reads answer messages)."""
        merchant_id = current_merchant_id()
        async with self._unit_of_work() as uow:
            return await work(uow, merchant_id)

    # --- customers --------------------------------------------------------------------

    async def CreateCustomer(self, request: svc.CreateCustomerRequest, context: Context) -> svc.CreateCustomerResponse:
        async def work(uow: Uow, merchant_id: str, now: datetime) -> svc.CreateCustomerResponse:
            check_merchant(request.merchant_id, merchant_id)
            command = commands.CreateCustomer(
                consumer=_consumer(request.consumer) if request.HasField("consumer") else None,
                consumer_id=opt(request, "consumer_id"),
                tax_id=opt(request, "tax_id"),
                external_id=opt(request, "external_id"),
                tax_rates=dict(request.tax_rates),
            )
            customer, created = await use_cases.create_customer(uow, merchant_id, now, command)
            rendered = await views.customer(uow, customer)
            return svc.CreateCustomerResponse(customer_id=customer.id, valid_tax_address=rendered.valid_tax_address, created=created)

        response: svc.CreateCustomerResponse = await self._mutate("CreateCustomer", request, svc.CreateCustomerResponse, work)
        if not response.created:
            context.set_trailing_metadata(EXISTING_CUSTOMER_STATUS)
        return response

    async def GetCustomer(self, request: svc.GetCustomerRequest, context: Context) -> svc.Customer:
        async def work(uow: Uow, merchant_id: str) -> svc.Customer:
            return await views.customer(uow, await uow.customers.get(merchant_id, request.id))

        return await self._service.read(work)

    async def ListCustomers(self, request: svc.ListCustomersRequest, context: Context) -> svc.ListCustomersResponse:
        async def work(uow: Uow, merchant_id: str) -> svc.ListCustomersResponse:
            check_merchant(request.organization_id, merchant_id, field="organizationId")
            page = page_of(request)
            filters = CustomerFilters(name=opt(request, "name"), email=opt(request, "email"), external_id=opt(request, "external_id"))
            found, total = await uow.customers.list_page(merchant_id, filters, page)
            return svc.ListCustomersResponse(object="list", data=await views.customers(uow, found), pagination=pagination(page, total))

        return await self._service.read(work)

    async def UpdateCustomer(self, request: svc.UpdateCustomerRequest, context: Context) -> svc.Customer:
        async def work(uow: Uow, merchant_id: str, now: datetime) -> svc.Customer:
            mask = FieldMask(request, ("tax_id", "external_id", "tax_rates", "notification_settings"))
            changes = mask.changes(
                clearable=("tax_id", "external_id", "tax_rates"), convert={"tax_rates": to_python, "notification_settings": _notifications}
            )
            customer = await use_cases.update_customer(uow, merchant_id, now, commands.Update(request.id, changes))
            return await views.customer(uow, customer)

        result: svc.Customer = await self._mutate("UpdateCustomer", request, svc.Customer, work)
        return result

    async def DeleteCustomer(self, request: svc.DeleteCustomerRequest, context: Context) -> svc.DeleteCustomerResponse:
        async def work(uow: Uow, merchant_id: str, now: datetime) -> svc.DeleteCustomerResponse:
            await use_cases.delete_customer(uow, merchant_id, now, commands.Delete(request.id))
            return svc.DeleteCustomerResponse()

        result: svc.DeleteCustomerResponse = await self._mutate("DeleteCustomer", request, svc.DeleteCustomerResponse, work)
        return result

    # --- test clocks ------------------------------------------------------------------

    async def CreateTestClock(self, request: svc.CreateTestClockRequest, context: Context) -> svc.TestClock:
        async def work(uow: Uow, merchant_id: str, now: datetime) -> svc.TestClock:
            check_merchant(request.merchant_id, merchant_id)
            command = commands.CreateTestClock(_time(request, "current_time"), opt(request, "name"), opt(request, "description"))
            return views.test_clock(await use_cases.create_test_clock(uow, merchant_id, now, command))

        result: svc.TestClock = await self._mutate("CreateTestClock", request, svc.TestClock, work)
        return result

    async def GetTestClock(self, request: svc.GetTestClockRequest, context: Context) -> svc.TestClock:
        async def work(uow: Uow, merchant_id: str) -> svc.TestClock:
            return views.test_clock(await uow.test_clocks.get(merchant_id, request.id))

        return await self._service.read(work)

    async def ListTestClocks(self, request: svc.ListTestClocksRequest, context: Context) -> svc.ListTestClocksResponse:
        async def work(uow: Uow, merchant_id: str) -> svc.ListTestClocksResponse:
            check_merchant(request.merchant_id, merchant_id)
            page = page_of(request)
            found, total = await uow.test_clocks.list_page(merchant_id, page)
            return svc.ListTestClocksResponse(object="list", data=[views.test_clock(c) for c in found], pagination=pagination(page, total))

        return await self._service.read(work)

    async def AdvanceTestClock(self, request: svc.AdvanceTestClockRequest, context: Context) -> svc.TestClock:
        async def work(uow: Uow, merchant_id: str, now: datetime) -> svc.TestClock:
            command = commands.AdvanceTestClock(request.id, _time(request, "current_time"), opt(request, "advance_by"))
            return views.test_clock(await use_cases.advance_test_clock(uow, merchant_id, now, command))

        moved: svc.TestClock = await self._mutate("AdvanceTestClock", request, svc.TestClock, work)

        async def read(uow: Uow, merchant_id: str) -> tuple[TestClock, list[str]]:
            return await uow.test_clocks.get(merchant_id, moved.id), await uow.subscriptions.customers_on_clock(moved.id)

        clock, customer_ids = await self._read(read)
        await use_cases.after_advance(clock, customer_ids, metering=self._metering, timeline=self._timeline)
        return moved

    async def DeleteTestClock(self, request: svc.DeleteTestClockRequest, context: Context) -> svc.TestClock:
        async def work(uow: Uow, merchant_id: str, now: datetime) -> svc.TestClock:
            return views.test_clock(await use_cases.delete_test_clock(uow, merchant_id, now, commands.Delete(request.id)))

        deleted: svc.TestClock = await self._mutate("DeleteTestClock", request, svc.TestClock, work)
        if self._metering is not None:

            async def read(uow: Uow, merchant_id: str) -> tuple[TestClock | None, list[str]]:
                return await uow.reads.clock_by_id(deleted.id), await uow.reads.customers_on_clock(deleted.id)

            clock, customer_ids = await self._read(read)
            if clock is not None:
                await self._metering.sync_test_clock(clock, customer_ids, deleted=True)
        return deleted

    # --- subscriptions ----------------------------------------------------------------

    async def _answer(self, subscription_id: str) -> svc.Subscription:
        async def work(uow: Uow, merchant_id: str) -> svc.Subscription:
            return await views.subscription(uow, await uow.subscriptions.get(merchant_id, subscription_id))

        answer: svc.Subscription = await self._service.read(work)
        await views.with_current_checkouts([answer], self._checkouts)
        return answer

    async def CreateSubscription(self, request: svc.CreateSubscriptionRequest, context: Context) -> svc.Subscription:
        def command() -> commands.CreateSubscription:
            inline = None
            if request.HasField("customer"):
                c = request.customer
                inline = commands.CreateCustomer(
                    consumer=commands.ConsumerDetails(c.name, c.email, _address(c.address), opt(c, "phone")),
                    tax_rates=dict(c.tax_rates),
                    consumer_field="customer",
                )
            redirect = request.redirect_urls
            return commands.CreateSubscription(
                name=request.name,
                plan_id=request.plan_id,
                started_at=_time(request, "started_at"),
                customer_id=opt(request, "customer_id"),
                customer=inline,
                ending_at=_time(request, "ending_at"),
                auto_charge=request.auto_charge,
                tax_exempt=request.tax_exempt,
                elapsed_period_billing=opt(request, "elapsed_period_billing"),
                test_clock_id=opt(request, "test_clock_id"),
                renewal_reminder_enabled=opt(request, "renewal_reminder_enabled"),
                renewal_reminder_days=opt(request, "renewal_reminder_days"),
                payment_term_days=opt(request, "payment_term_days"),
                session_expiry_minutes=opt(request, "session_expiry_minutes"),
                version_policy=opt(request, "version_policy"),
                metadata=struct_to_dict(request.metadata),
                change_reason=opt(request, "change_reason"),
                change_description=opt(request, "change_description"),
                change_metadata=struct_to_dict(request.change_metadata),
                redirect_urls={name: getattr(redirect, name) for name in ("on_success", "on_failure") if redirect.HasField(name)},
            )

        async def work(uow: Uow, merchant_id: str, now: datetime) -> svc.Subscription:
            created = await use_cases.create_subscription(uow, merchant_id, now, command(), catalog=self._catalog, timeline=self._timeline)
            return await views.subscription(uow, created)

        created: svc.Subscription = await self._mutate("CreateSubscription", request, svc.Subscription, work)
        await self._after_create(created.id)
        return await self._answer(created.id)

    async def _after_create(self, subscription_id: str) -> None:
        """Invoice 0 (the engine records it on the subscription, activating it when nothing
        is due); a failure here leaves durable due work that the scheduler or the next
        advance runs, so the created subscription is answered all the same."""

        async def read(uow: Uow, merchant_id: str) -> tuple[Subscription, TestClock | None]:
            subscription = await uow.subscriptions.get(merchant_id, subscription_id)
            clock = await uow.reads.clock_by_id(subscription.test_clock_id) if subscription.test_clock_id else None
            return subscription, clock

        try:
            subscription, clock = await self._read(read)
            ran = await use_cases.after_create(subscription, clock, self._clock.now(), metering=self._metering, timeline=self._timeline)
            for step in ran:
                invoice = getattr(step, "invoice", None)
                if getattr(step, "kind", None) == "issue" and getattr(step, "sequence_number", None) == 0 and invoice is not None:
                    async with self._unit_of_work() as tx:
                        await store.record_invoice_zero(tx, subscription, invoice, now=self._clock.now())
        except DomainError as err:
            log.warning("invoice_zero_deferred", subscription_id=subscription_id, reason=err.reason, error=err.message)
        except Exception as err:
            # the subscription is committed: a 500 would tell the caller it was not (and a
            # retry without an Idempotency-Key would create a second one); the due work
            # stays for the scheduler, as after a DomainError
            log.exception("invoice_zero_deferred", subscription_id=subscription_id, reason="INTERNAL", error=repr(err))

    async def GetSubscription(self, request: svc.GetSubscriptionRequest, context: Context) -> svc.Subscription:
        return await self._answer(request.id)

    async def ListSubscriptions(self, request: svc.ListSubscriptionsRequest, context: Context) -> svc.ListSubscriptionsResponse:
        async def work(uow: Uow, merchant_id: str) -> svc.ListSubscriptionsResponse:
            check_merchant(request.merchant_id, merchant_id)
            page = page_of(request)
            filters = SubscriptionFilters(
                customer_id=opt(request, "customer_id"),
                consumer_id=opt(request, "consumer_id"),
                statuses=list(request.status),
                started_before=_time(request, "started_before"),
            )
            found, total = await uow.subscriptions.list_page(merchant_id, filters, page)
            data = await views.subscriptions(uow, found, include_customer=opt(request, "include") == "customer")
            return svc.ListSubscriptionsResponse(object="list", data=data, pagination=pagination(page, total))

        listed: svc.ListSubscriptionsResponse = await self._service.read(work)
        await views.with_current_checkouts(list(listed.data), self._checkouts)
        return listed

    async def UpdateSubscription(self, request: svc.UpdateSubscriptionRequest, context: Context) -> svc.Subscription:
        async def work(uow: Uow, merchant_id: str, now: datetime) -> svc.Subscription:
            mask = FieldMask(
                request,
                (
                    "ending_at", "status", "terminated_at", "terminated_by", "termination_reason", "auto_charge", "tax_exempt",
                    "minimum_account_balance", "renewal_reminder_enabled", "renewal_reminder_days", "payment_term_days",
                    "version_policy",
                ),
            )  # fmt: skip
            changes = mask.changes(
                clearable=("ending_at", "terminated_at", "terminated_by", "termination_reason", "minimum_account_balance"),
                convert={"ending_at": from_timestamp, "terminated_at": from_timestamp},
            )
            changes.pop("minimum_account_balance", None)  # deprecated, ignored
            updated = await use_cases.update_subscription(
                uow, merchant_id, now, commands.Update(request.id, changes), timeline=self._timeline
            )
            return await views.subscription(uow, updated)

        updated: svc.Subscription = await self._mutate("UpdateSubscription", request, svc.Subscription, work)
        if updated.status == "terminated":
            await self._after_termination(updated.id)
        return await self._answer(updated.id)

    async def TerminateSubscription(self, request: svc.TerminateSubscriptionRequest, context: Context) -> svc.Subscription:
        async def work(uow: Uow, merchant_id: str, now: datetime) -> svc.Subscription:
            command = commands.TerminateSubscription(request.id, request.reason, opt(request, "change_reason"))
            return await views.subscription(
                uow, await use_cases.terminate_subscription(uow, merchant_id, now, command, timeline=self._timeline)
            )

        terminated: svc.Subscription = await self._mutate("TerminateSubscription", request, svc.Subscription, work)
        await self._after_termination(terminated.id)
        return await self._answer(terminated.id)

    async def _after_termination(self, subscription_id: str) -> None:
        async def read(uow: Uow, merchant_id: str) -> tuple[Subscription, datetime]:
            subscription = await uow.subscriptions.get(merchant_id, subscription_id)
            return subscription, await use_cases.effective_now(uow, subscription, self._clock.now())

        try:
            subscription, at = await self._read(read)
            await use_cases.after_termination(subscription, at, timeline=self._timeline)
        except DomainError as err:
            log.warning("final_close_deferred", subscription_id=subscription_id, reason=err.reason, error=err.message)

    async def RecordInvoicePaid(self, request: svc.RecordInvoicePaidRequest, context: Context) -> svc.Subscription:
        async def work(uow: Uow, merchant_id: str, now: datetime) -> svc.Subscription:
            command = commands.RecordInvoicePaid(request.subscription_id, request.invoice_id, request.sequence_number, request.amount)
            return await views.subscription(uow, await use_cases.record_invoice_paid(uow, merchant_id, now, command))

        result: svc.Subscription = await self._mutate("RecordInvoicePaid", request, svc.Subscription, work)
        return result

    async def ListAvailablePlans(self, request: svc.ListAvailablePlansRequest, context: Context) -> svc.ListAvailablePlansResponse:
        # the server's interceptor answers UNIMPLEMENTED "<method> is not built yet" (REST 501)
        raise NotImplementedError("ListAvailablePlans")
