"""CatalogService: proto -> command -> use case -> proto, and nothing else.

Rules live in domain/ (aggregates in model.py, use cases in use_cases.py), queries in
store.py, rendering in views.py; the unit of work writes every recorded event to the
outbox. The plumbing (merchant, clock, transaction, idempotency, masks, pages) is
libs/infra/service_layer.py.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import Any, TypeAlias, TypeVar

import grpc
from accrue.catalog.v1 import catalog_resources_pb2 as res
from accrue.catalog.v1 import catalog_service_pb2 as svc
from accrue.catalog.v1 import catalog_service_pb2_grpc
from google.protobuf import empty_pb2
from google.protobuf.message import Message

from libs.core.clock import Clock
from libs.core.errors import DomainError, InvalidArgument, NotFound
from libs.infra.context import current_merchant_id
from libs.infra.db import Database
from libs.infra.declared import check_declared
from libs.infra.proto_time import from_timestamp
from libs.infra.service_layer import FieldMask, ServiceLayer, check_batch_size, check_merchant, opt, page_of, pagination, reject
from services.catalog import mapping, views
from services.catalog.domain import commands, use_cases
from services.catalog.domain.commands import FeatureAttachment, PriceTax
from services.catalog.domain.model import BillableMetric, CatalogAggregate, Feature, Fee, Product
from services.catalog.store import LiveRows, SqlCatalogUnitOfWork

M = TypeVar("M", bound=Message)
C = TypeVar("C")
A = TypeVar("A", bound=CatalogAggregate)
Uow: TypeAlias = SqlCatalogUnitOfWork
Context: TypeAlias = grpc.aio.ServicerContext[Any, Any]
# BatchGetProducts' bound (the gateway's coalesce max_batch in catalog_service.proto)
MAX_BATCH_GET = 100


def _tax(tax: Any) -> PriceTax:
    return PriceTax(tax.supply_scope, opt(tax, "outside_scope_label"))


def _feature(feature: Any) -> FeatureAttachment:
    template = mapping.from_struct(feature.entitlement_template) if feature.HasField("entitlement_template") else {}
    return FeatureAttachment(feature.feature_id, template)


def _values(values: Any) -> list[Any]:
    return [mapping.from_value(v) for v in values]


def _update(
    request: Message, allowed: tuple[str, ...], *, clearable: tuple[str, ...] = (), **convert: Callable[[Any], Any]
) -> commands.Update:
    mask = FieldMask(request, allowed)
    return commands.Update(request.id, mask.changes(clearable=clearable, convert=convert))  # type: ignore[attr-defined]


async def _empty(uow: Uow, deleted: CatalogAggregate) -> empty_pb2.Empty:
    return empty_pb2.Empty()


async def _plain(uow: Uow, aggregate: Any) -> Any:
    return await views.render(uow, aggregate)


async def _each(uow: Uow, found: list[Any]) -> list[Any]:
    return [await views.render(uow, aggregate) for aggregate in found]


class CatalogServicer(catalog_service_pb2_grpc.CatalogServiceServicer):
    def __init__(self, db: Database, clock: Clock, rows: LiveRows) -> None:
        def unit_of_work() -> SqlCatalogUnitOfWork:
            return SqlCatalogUnitOfWork(db, clock=clock, translate=views.outbox_message)

        self._service: ServiceLayer[Uow, Uow] = ServiceLayer(clock, unit_of_work, unit_of_work)
        # Gets of what renders from its own row: one statement, no unit of work (store.LiveRows)
        self._rows = rows

    async def _mutation(
        self,
        method: str,
        request: Message,
        response_type: type[M],
        use_case: Callable[[Uow, str, datetime, C], Awaitable[A]],
        command: Callable[[], C],
        render: Callable[[Uow, A], Awaitable[M]],
        *,
        merchant: str | None = None,
    ) -> M:
        async def work(uow: Uow, merchant_id: str, now: datetime) -> M:
            if merchant is not None:
                check_merchant(merchant, merchant_id)
            return await render(uow, await use_case(uow, merchant_id, now, command()))

        return await self._service.mutate(method, request, response_type, work)

    async def _list(
        self,
        request: Message,
        response_type: type[M],
        repository: Callable[[Uow], Any],
        filters: dict[str, str],
        render: Callable[[Uow, list[Any]], Awaitable[list[Any]]] = _each,
    ) -> M:
        async def work(uow: Uow, merchant_id: str) -> M:
            check_merchant(request.merchant_id, merchant_id)  # type: ignore[attr-defined]
            page = page_of(request)
            found, total = await repository(uow).list_page(merchant_id, filters, page)
            return response_type(object="list", data=await render(uow, found), pagination=pagination(page, total))

        return await self._service.read(work)

    async def _get(self, response_type: type[M], repository: Callable[[Uow], Any], resource_id: str) -> M:
        async def work(uow: Uow, merchant_id: str) -> M:
            found = await views.render(uow, await repository(uow).get(merchant_id, resource_id))
            assert isinstance(found, response_type)
            return found

        return await self._service.read(work)

    # --- products ---------------------------------------------------------------------

    async def CreateProduct(self, request: svc.CreateProductRequest, context: Context) -> res.Product:
        def command() -> commands.CreateProduct:
            return commands.CreateProduct(request.name, request.description, dict(request.metadata))

        return await self._mutation(
            "CreateProduct", request, res.Product, use_cases.create_product, command, _plain, merchant=request.merchant_id
        )

    async def GetProduct(self, request: svc.GetProductRequest, context: Context) -> res.Product:
        return mapping.product(await self._rows.get(Product, current_merchant_id(), request.id))

    async def BatchGetProducts(self, request: svc.BatchGetProductsRequest, context: Context) -> svc.BatchGetProductsResponse:
        """GetProduct for each request, by position, in one statement (the gateway's
        coalesced GETs): what GetProduct would answer, or its error as a rejected receipt."""
        check_batch_size(request.requests, MAX_BATCH_GET, "requests")
        merchant_id = current_merchant_id()
        refused: dict[int, DomainError] = {}
        for index, item in enumerate(request.requests):
            try:
                check_declared(item)  # what the interceptor checks of a single call
            except DomainError as err:
                refused[index] = err
        wanted = [item.id for index, item in enumerate(request.requests) if index not in refused]
        found = await self._rows.get_many(Product, merchant_id, wanted) if wanted else {}
        response = svc.BatchGetProductsResponse()
        for index, item in enumerate(request.requests):
            receipt = response.receipts.add(index=index)
            product = found.get(item.id) if index not in refused else None
            if product is None:
                reject(receipt, refused.get(index) or NotFound(str(Product.resource.value), item.id))
                continue
            receipt.status = "found"
            receipt.product.CopyFrom(mapping.product(product))
        return response

    async def ListProducts(self, request: svc.ListProductsRequest, context: Context) -> svc.ListProductsResponse:
        return await self._list(request, svc.ListProductsResponse, lambda uow: uow.products, {})

    async def UpdateProduct(self, request: svc.UpdateProductRequest, context: Context) -> res.Product:
        def command() -> commands.Update:
            return _update(request, ("name", "description"))

        return await self._mutation("UpdateProduct", request, res.Product, use_cases.update_product, command, _plain)

    # --- billable metrics -------------------------------------------------------------

    async def CreateBillableMetric(self, request: svc.CreateBillableMetricRequest, context: Context) -> res.BillableMetric:
        def command() -> commands.CreateBillableMetric:
            return commands.CreateBillableMetric(
                product_id=request.product_id,
                name=request.name,
                description=request.description,
                unit=request.unit,
                aggregation=request.aggregation,
                event_type=request.event_type,
                value_property=opt(request, "value_property"),
                group_by=dict(request.group_by),
                item_id=opt(request, "item_id"),
                event_from=from_timestamp(request.event_from_time) if request.HasField("event_from_time") else None,
            )

        return await self._mutation(
            "CreateBillableMetric",
            request,
            res.BillableMetric,
            use_cases.create_billable_metric,
            command,
            _plain,
            merchant=request.merchant_id,
        )

    async def GetBillableMetric(self, request: svc.GetBillableMetricRequest, context: Context) -> res.BillableMetric:
        return mapping.billable_metric(await self._rows.get(BillableMetric, current_merchant_id(), request.id))

    async def ListBillableMetrics(self, request: svc.ListBillableMetricsRequest, context: Context) -> svc.ListBillableMetricsResponse:
        filters = {name: getattr(request, name) for name in ("product_id", "item_id") if request.HasField(name)}
        return await self._list(request, svc.ListBillableMetricsResponse, lambda uow: uow.billable_metrics, filters)

    async def UpdateBillableMetric(self, request: svc.UpdateBillableMetricRequest, context: Context) -> res.BillableMetric:
        def command() -> commands.Update:
            update = _update(
                request,
                ("name", "description", "unit", "item_id", "event_type", "value_property", "group_by", "event_from_time"),
                clearable=("item_id", "value_property", "event_from_time"),
                event_from_time=from_timestamp,
            )
            changes = dict(update.changes)
            if "event_from_time" in changes:
                changes["event_from"] = changes.pop("event_from_time")
            return commands.Update(update.resource_id, changes)

        return await self._mutation("UpdateBillableMetric", request, res.BillableMetric, use_cases.update_billable_metric, command, _plain)

    # --- features ---------------------------------------------------------------------

    async def CreateFeature(self, request: svc.CreateFeatureRequest, context: Context) -> res.Feature:
        def command() -> commands.CreateFeature:
            return commands.CreateFeature(request.product_id, request.key, request.name, opt(request, "type"), dict(request.metadata))

        return await self._mutation(
            "CreateFeature", request, res.Feature, use_cases.create_feature, command, _plain, merchant=request.merchant_id
        )

    async def GetFeature(self, request: svc.GetFeatureRequest, context: Context) -> res.Feature:
        return mapping.feature(await self._rows.get(Feature, current_merchant_id(), request.id))

    async def ListFeatures(self, request: svc.ListFeaturesRequest, context: Context) -> svc.ListFeaturesResponse:
        async def work(uow: Uow, merchant_id: str) -> svc.ListFeaturesResponse:
            if not request.product_id:
                raise InvalidArgument("productId", "productId is required", reason="REQUIRED")
            page = page_of(request)
            await uow.products.get(merchant_id, request.product_id, field="productId")
            filters = {"product_id": request.product_id} | ({"key": request.key} if request.HasField("key") else {})
            found, total = await uow.features.list_page(merchant_id, filters, page)
            return svc.ListFeaturesResponse(object="list", data=[mapping.feature(f) for f in found], pagination=pagination(page, total))

        return await self._service.read(work)

    async def UpdateFeature(self, request: svc.UpdateFeatureRequest, context: Context) -> res.Feature:
        def command() -> commands.Update:
            return _update(request, ("key", "name", "type", "metadata"))

        return await self._mutation("UpdateFeature", request, res.Feature, use_cases.update_feature, command, _plain)

    async def DeleteFeature(self, request: svc.DeleteFeatureRequest, context: Context) -> empty_pb2.Empty:
        return await self._mutation(
            "DeleteFeature", request, empty_pb2.Empty, use_cases.delete_feature, lambda: commands.Delete(request.id), _empty
        )

    # --- fees -------------------------------------------------------------------------

    async def CreateFee(self, request: svc.CreateFeeRequest, context: Context) -> res.Fee:
        def command() -> commands.CreateFee:
            return commands.CreateFee(request.product_id, request.name, request.description, opt(request, "item_id"))

        return await self._mutation("CreateFee", request, res.Fee, use_cases.create_fee, command, _plain, merchant=request.merchant_id)

    async def GetFee(self, request: svc.GetFeeRequest, context: Context) -> res.Fee:
        return mapping.fee(await self._rows.get(Fee, current_merchant_id(), request.id))

    async def ListFees(self, request: svc.ListFeesRequest, context: Context) -> svc.ListFeesResponse:
        filters = {name: getattr(request, name) for name in ("product_id", "item_id") if request.HasField(name)}
        return await self._list(request, svc.ListFeesResponse, lambda uow: uow.fees, filters)

    async def UpdateFee(self, request: svc.UpdateFeeRequest, context: Context) -> res.Fee:
        def command() -> commands.Update:
            return _update(request, ("name", "description", "item_id"), clearable=("item_id",))

        return await self._mutation("UpdateFee", request, res.Fee, use_cases.update_fee, command, _plain)

    async def DeleteFee(self, request: svc.DeleteFeeRequest, context: Context) -> empty_pb2.Empty:
        return await self._mutation(
            "DeleteFee", request, empty_pb2.Empty, use_cases.delete_fee, lambda: commands.Delete(request.id), _empty
        )

    # --- prices -----------------------------------------------------------------------

    async def CreatePrice(self, request: svc.CreatePriceRequest, context: Context) -> res.Price:
        def command() -> commands.CreatePrice:
            return commands.CreatePrice(
                invoice_display_name=request.invoice_display_name,
                payment_term=request.payment_term,
                properties=mapping.from_struct(request.properties),
                billable_metric_id=opt(request, "billable_metric_id"),
                fee_id=opt(request, "fee_id"),
                model=opt(request, "model"),
                invoice_display_group=opt(request, "invoice_display_group"),
                billing_cadence=opt(request, "billing_cadence"),
                grant_discount_enabled=request.grant_discount_enabled,
                is_obligation=request.is_obligation,
                rate_type=opt(request, "rate_type"),
                tax=_tax(request.tax) if request.HasField("tax") else None,
                quantity=opt(request, "quantity"),
                pricing_unit_id=opt(request, "pricing_unit_id"),
                feature=_feature(request.feature) if request.HasField("feature") else None,
            )

        return await self._mutation(
            "CreatePrice", request, res.Price, use_cases.create_price, command, views.price, merchant=request.merchant_id
        )

    async def GetPrice(self, request: svc.GetPriceRequest, context: Context) -> res.Price:
        return await self._get(res.Price, lambda uow: uow.prices, request.id)

    async def ListPrices(self, request: svc.ListPricesRequest, context: Context) -> svc.ListPricesResponse:
        filters = {"billable_metric_id": request.billable_metric_id} if request.HasField("billable_metric_id") else {}
        return await self._list(request, svc.ListPricesResponse, lambda uow: uow.prices, filters, views.prices)

    async def UpdatePrice(self, request: svc.UpdatePriceRequest, context: Context) -> res.Price:
        def command() -> commands.Update:
            return _update(
                request,
                (
                    "billable_metric_id", "pricing_unit_id", "invoice_display_name", "invoice_display_group", "model",
                    "properties", "payment_term", "billing_cadence", "feature", "grant_discount_enabled", "is_obligation",
                    "rate_type", "tax", "quantity",
                ),
                clearable=("invoice_display_group", "billing_cadence", "rate_type", "pricing_unit_id", "feature"),
                properties=mapping.from_struct,
                tax=_tax,
                feature=_feature,
            )  # fmt: skip

        return await self._mutation("UpdatePrice", request, res.Price, use_cases.update_price, command, views.price)

    async def DeletePrice(self, request: svc.DeletePriceRequest, context: Context) -> empty_pb2.Empty:
        return await self._mutation(
            "DeletePrice", request, empty_pb2.Empty, use_cases.delete_price, lambda: commands.Delete(request.id), _empty
        )

    # --- plans ------------------------------------------------------------------------

    async def CreatePlan(self, request: svc.CreatePlanRequest, context: Context) -> res.Plan:
        def command() -> commands.CreatePlan:
            transition = request.version_transition
            return commands.CreatePlan(
                product_id=request.product_id,
                name=request.name,
                currency=request.currency,
                prices=_values(request.prices),
                description=opt(request, "description"),
                billing_cadence=opt(request, "billing_cadence"),
                billing_interval=opt(request, "billing_interval"),
                invoice_display_name=opt(request, "invoice_display_name"),
                default_tax_code=opt(request, "default_tax_code"),
                default_tax_rate=opt(request, "default_tax_rate"),
                tax_behavior=opt(request, "tax_behavior"),
                renewal_reminder_enabled=opt(request, "renewal_reminder_enabled"),
                renewal_reminder_days=opt(request, "renewal_reminder_days"),
                billing_version=opt(request, "billing_version"),
                billing_anchor=from_timestamp(request.billing_anchor_time) if request.HasField("billing_anchor_time") else None,
                credit_allocation_count=len(request.credit_allocations),
                stable_price_ids=opt(request, "stable_price_ids"),
                version_transition=((transition.effective_date, transition.proration) if request.HasField("version_transition") else None),
            )

        return await self._mutation(
            "CreatePlan", request, res.Plan, use_cases.create_plan, command, views.plan, merchant=request.merchant_id
        )

    async def GetPlan(self, request: svc.GetPlanRequest, context: Context) -> res.Plan:
        return await self._get(res.Plan, lambda uow: uow.plans, request.id)

    async def ListPlans(self, request: svc.ListPlansRequest, context: Context) -> svc.ListPlansResponse:
        filters = {"product_id": request.product_id} if request.HasField("product_id") else {}
        return await self._list(request, svc.ListPlansResponse, lambda uow: uow.plans, filters, views.plans)

    async def UpdatePlan(self, request: svc.UpdatePlanRequest, context: Context) -> res.Plan:
        def command() -> commands.Update:
            update = _update(
                request,
                (
                    "billing_cadence", "billing_interval", "default_tax_code", "default_tax_rate", "description",
                    "invoice_display_name", "name", "prices", "tax_behavior", "renewal_reminder_enabled",
                    "renewal_reminder_days", "billing_anchor_time", "credit_allocations", "stable_price_ids",
                    "version_transition",
                ),
                clearable=("description", "invoice_display_name", "billing_anchor_time"),
                prices=_values,
                billing_anchor_time=from_timestamp,
                version_transition=lambda vt: (vt.effective_date, vt.proration),
            )  # fmt: skip
            changes = dict(update.changes)
            if "billing_anchor_time" in changes:
                changes["billing_anchor"] = changes.pop("billing_anchor_time")
            if "credit_allocations" in changes:
                changes["credit_allocation_count"] = len(changes.pop("credit_allocations"))
            return commands.Update(update.resource_id, changes)

        return await self._mutation("UpdatePlan", request, res.Plan, use_cases.update_plan, command, views.plan)

    async def ListPlanVersions(self, request: svc.ListPlanVersionsRequest, context: Context) -> svc.ListPlanVersionsResponse:
        async def work(uow: Uow, merchant_id: str) -> svc.ListPlanVersionsResponse:
            page = page_of(request)
            plan = await uow.plans.get(merchant_id, request.id)
            found, total = await uow.plan_versions.list_page(plan, page)
            data = await views.plan_versions(uow, plan, found)
            return svc.ListPlanVersionsResponse(object="list", data=data, pagination=pagination(page, total))

        return await self._service.read(work)

    async def MintPlanVersion(self, request: svc.MintPlanVersionRequest, context: Context) -> res.PlanVersion:
        def command() -> commands.MintPlanVersion:
            return commands.MintPlanVersion(request.id, _values(request.prices), opt(request, "based_on_version_id"))

        return await self._mutation("MintPlanVersion", request, res.PlanVersion, use_cases.mint_plan_version, command, _plain)

    async def GetPlanVersion(self, request: svc.GetPlanVersionRequest, context: Context) -> res.PlanVersion:
        async def work(uow: Uow, merchant_id: str) -> res.PlanVersion:
            plan = await uow.plans.get(merchant_id, request.id)
            return await views.plan_version(uow, plan, await uow.plan_versions.get_by_number(plan, request.version_number))

        return await self._service.read(work)

    async def TransitionPlanVersion(self, request: svc.TransitionPlanVersionRequest, context: Context) -> res.PlanVersion:
        def command() -> commands.TransitionPlanVersion:
            return commands.TransitionPlanVersion(request.id, request.version_number, opt(request, "default"), opt(request, "status"))

        return await self._mutation("TransitionPlanVersion", request, res.PlanVersion, use_cases.transition_plan_version, command, _plain)
