"""CatalogService: proto <-> domain. Rules live in domain/rules.py, queries in store.py."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable
from datetime import datetime
from typing import Any, TypeVar

import grpc
import sqlalchemy as sa
from accrue.catalog.v1 import catalog_events_pb2 as ev
from accrue.catalog.v1 import catalog_resources_pb2 as res
from accrue.catalog.v1 import catalog_service_pb2 as svc
from accrue.catalog.v1 import catalog_service_pb2_grpc
from accrue.type.v1 import pagination_pb2
from google.protobuf import empty_pb2
from google.protobuf.message import Message
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection

from libs.core.clock import Clock
from libs.core.errors import Aborted, AlreadyExists, FailedPrecondition, InvalidArgument, NotFound
from libs.core.ids import new_id
from libs.infra.context import current_idempotency_key, current_merchant_id
from libs.infra.db import Database, UnitOfWork
from libs.infra.proto_time import from_timestamp
from services.catalog import mapping, store
from services.catalog.domain import rules

M = TypeVar("M", bound=Message)
SUBJECT_PREFIX = "accrue.catalog.v1"
_KIND_NAMES: dict[int, str] = {
    ev.CHANGE_KIND_CREATED: "created",
    ev.CHANGE_KIND_UPDATED: "updated",
    ev.CHANGE_KIND_DELETED: "deleted",
}


def _check_merchant(requested: str, merchant_id: str) -> None:
    # A key acts for one merchant; naming another one reads as "no such merchant".
    if requested and requested != merchant_id:
        raise NotFound("merchant", requested, field="merchantId")


def _pagination(limit: int, offset: int, total: int) -> pagination_pb2.OffsetPagination:
    return pagination_pb2.OffsetPagination(limit=limit, offset=offset, total=total)


class _Mask:
    """AIP-134 update mask over a request: which fields to change, and to what."""

    def __init__(self, request: Message, allowed: Iterable[str]) -> None:
        self.request = request
        allowed_set = set(allowed)
        paths = list(request.update_mask.paths)  # type: ignore[attr-defined]
        if not paths:  # no mask: every field that is set
            paths = [f.name for f, _ in request.ListFields() if f.name in allowed_set]
        for path in paths:
            if path not in allowed_set:
                raise InvalidArgument(mapping.camel(path), f"{mapping.camel(path)} cannot be updated", reason="FIELD_NOT_UPDATABLE")
        self.paths = set(paths)

    def __contains__(self, path: str) -> bool:
        return path in self.paths

    def value(self, path: str, *, clearable: bool = False) -> Any:
        """The new value; None when cleared (only if the field may be cleared)."""
        descriptor = self.request.DESCRIPTOR.fields_by_name[path]
        if descriptor.message_type is not None and descriptor.message_type.GetOptions().map_entry:
            return dict(getattr(self.request, path))
        if self.request.HasField(path):
            return getattr(self.request, path)
        if clearable:
            return None
        raise InvalidArgument(mapping.camel(path), f"{mapping.camel(path)} cannot be cleared", reason="FIELD_NOT_CLEARABLE")


class CatalogServicer(catalog_service_pb2_grpc.CatalogServiceServicer):
    def __init__(self, db: Database, clock: Clock) -> None:
        self._db = db
        self._clock = clock

    # --- plumbing ---------------------------------------------------------------------

    async def _mutate(
        self, method: str, request: Message, response_type: type[M], work: Callable[[UnitOfWork, str, datetime], Awaitable[M]]
    ) -> M:
        merchant_id = current_merchant_id()
        now = self._clock.now()
        key = current_idempotency_key()
        try:
            async with self._db.uow() as uow:
                if key:
                    result = await uow.idempotent(
                        merchant_id=merchant_id,
                        key=key,
                        method=method,
                        request=request,
                        response_type=response_type,
                        run=lambda: work(uow, merchant_id, now),
                    )
                    assert isinstance(result, response_type)
                    return result
                return await work(uow, merchant_id, now)
        except IntegrityError as exc:
            if "uq_features_product_key" in str(exc.orig):
                raise AlreadyExists("DUPLICATE_RESOURCE", "a feature with this key already exists in the product", field="key") from exc
            raise

    async def _read(self, work: Callable[[AsyncConnection, str], Awaitable[M]]) -> M:
        merchant_id = current_merchant_id()
        async with self._db.engine.connect() as conn:
            return await work(conn, merchant_id)

    async def _changed(self, uow: UnitOfWork, kind: int, merchant_id: str, now: datetime, **resource: Message) -> None:
        ((resource_field, message),) = resource.items()
        event = ev.CatalogResourceChanged(kind=kind, merchant_id=merchant_id, **{resource_field: message})  # type: ignore[arg-type]
        await uow.record_event(f"{SUBJECT_PREFIX}.{resource_field}.{_KIND_NAMES[kind]}", event, merchant_id=merchant_id, now=now)

    # --- products ---------------------------------------------------------------------

    async def CreateProduct(self, request: svc.CreateProductRequest, context: grpc.aio.ServicerContext) -> res.Product:
        async def work(uow: UnitOfWork, merchant_id: str, now: datetime) -> res.Product:
            _check_merchant(request.merchant_id, merchant_id)
            values: dict[str, Any] = {
                "id": new_id("prod"),
                "merchant_id": merchant_id,
                "name": rules.required_text(request.name, "name"),
                "description": rules.optional_text(request.description, "description"),
                "metadata": rules.metadata(request.metadata),
                "created_at": now,
                "updated_at": now,
            }
            await uow.conn.execute(store.products.insert().values(**values))
            product = await self._product(uow.conn, merchant_id, values["id"])
            await self._changed(uow, ev.CHANGE_KIND_CREATED, merchant_id, now, product=product)
            return product

        return await self._mutate("CreateProduct", request, res.Product, work)

    async def _product(self, conn: AsyncConnection, merchant_id: str, product_id: str) -> res.Product:
        return mapping.product(await store.get_row(conn, store.products, merchant_id, product_id, "product"))

    async def GetProduct(self, request: svc.GetProductRequest, context: grpc.aio.ServicerContext) -> res.Product:
        return await self._read(lambda conn, merchant_id: self._product(conn, merchant_id, request.id))

    async def ListProducts(self, request: svc.ListProductsRequest, context: grpc.aio.ServicerContext) -> svc.ListProductsResponse:
        async def work(conn: AsyncConnection, merchant_id: str) -> svc.ListProductsResponse:
            _check_merchant(request.merchant_id, merchant_id)
            limit, offset = rules.page(_opt(request, "limit"), _opt(request, "offset"))
            rows, total = await store.list_page(conn, store.products, [store.products.c.merchant_id == merchant_id], limit, offset)
            return svc.ListProductsResponse(
                object="list", data=[mapping.product(r) for r in rows], pagination=_pagination(limit, offset, total)
            )

        return await self._read(work)

    async def UpdateProduct(self, request: svc.UpdateProductRequest, context: grpc.aio.ServicerContext) -> res.Product:
        async def work(uow: UnitOfWork, merchant_id: str, now: datetime) -> res.Product:
            mask = _Mask(request, ("name", "description"))
            if not mask.paths:
                return await self._product(uow.conn, merchant_id, request.id)
            await store.get_row(uow.conn, store.products, merchant_id, request.id, "product", lock=True)
            values: dict[str, Any] = {"updated_at": now}
            if "name" in mask:
                values["name"] = rules.required_text(mask.value("name"), "name")
            if "description" in mask:
                values["description"] = rules.optional_text(mask.value("description"), "description")
            await uow.conn.execute(store.products.update().where(store.products.c.id == request.id).values(**values))
            product = await self._product(uow.conn, merchant_id, request.id)
            await self._changed(uow, ev.CHANGE_KIND_UPDATED, merchant_id, now, product=product)
            return product

        return await self._mutate("UpdateProduct", request, res.Product, work)

    # --- billable metrics -------------------------------------------------------------

    async def _metric(self, conn: AsyncConnection, merchant_id: str, metric_id: str, field: str | None = None) -> res.BillableMetric:
        return mapping.billable_metric(
            await store.get_row(conn, store.billable_metrics, merchant_id, metric_id, "billable_metric", field=field)
        )

    async def CreateBillableMetric(self, request: svc.CreateBillableMetricRequest, context: grpc.aio.ServicerContext) -> res.BillableMetric:
        async def work(uow: UnitOfWork, merchant_id: str, now: datetime) -> res.BillableMetric:
            _check_merchant(request.merchant_id, merchant_id)
            if not request.product_id:
                raise InvalidArgument("productId", "productId is required", reason="REQUIRED")
            aggregation = rules.one_of(request.aggregation, rules.AGGREGATIONS, "aggregation")
            values: dict[str, Any] = {
                "id": new_id("bm"),
                "merchant_id": merchant_id,
                "product_id": request.product_id,
                "name": rules.required_text(request.name, "name"),
                "description": rules.optional_text(request.description, "description"),
                "unit": rules.required_text(request.unit, "unit"),
                "aggregation": aggregation,
                "event_type": rules.required_text(request.event_type, "eventType"),
                "value_property": rules.metric_value_property(aggregation, _opt(request, "value_property")),
                "group_by": rules.group_by(dict(request.group_by)),
                "item_id": rules.nullable_text(_opt(request, "item_id"), "itemId"),
                "event_from": from_timestamp(request.event_from_time) if request.HasField("event_from_time") else None,
                "created_at": now,
                "updated_at": now,
            }
            await store.get_row(uow.conn, store.products, merchant_id, request.product_id, "product", field="productId")
            await uow.conn.execute(store.billable_metrics.insert().values(**values))
            metric = await self._metric(uow.conn, merchant_id, values["id"])
            await self._changed(uow, ev.CHANGE_KIND_CREATED, merchant_id, now, billable_metric=metric)
            return metric

        return await self._mutate("CreateBillableMetric", request, res.BillableMetric, work)

    async def GetBillableMetric(self, request: svc.GetBillableMetricRequest, context: grpc.aio.ServicerContext) -> res.BillableMetric:
        return await self._read(lambda conn, merchant_id: self._metric(conn, merchant_id, request.id))

    async def ListBillableMetrics(
        self, request: svc.ListBillableMetricsRequest, context: grpc.aio.ServicerContext
    ) -> svc.ListBillableMetricsResponse:
        async def work(conn: AsyncConnection, merchant_id: str) -> svc.ListBillableMetricsResponse:
            _check_merchant(request.merchant_id, merchant_id)
            limit, offset = rules.page(_opt(request, "limit"), _opt(request, "offset"))
            t = store.billable_metrics
            conditions = [t.c.merchant_id == merchant_id]
            if request.HasField("product_id"):
                conditions.append(t.c.product_id == request.product_id)
            if request.HasField("item_id"):
                conditions.append(t.c.item_id == request.item_id)
            rows, total = await store.list_page(conn, t, conditions, limit, offset)
            return svc.ListBillableMetricsResponse(
                object="list", data=[mapping.billable_metric(r) for r in rows], pagination=_pagination(limit, offset, total)
            )

        return await self._read(work)

    async def UpdateBillableMetric(self, request: svc.UpdateBillableMetricRequest, context: grpc.aio.ServicerContext) -> res.BillableMetric:
        async def work(uow: UnitOfWork, merchant_id: str, now: datetime) -> res.BillableMetric:
            mask = _Mask(request, ("name", "description", "unit", "item_id", "event_type", "value_property", "group_by", "event_from_time"))
            if not mask.paths:
                return await self._metric(uow.conn, merchant_id, request.id)
            row = await store.get_row(uow.conn, store.billable_metrics, merchant_id, request.id, "billable_metric", lock=True)
            values: dict[str, Any] = {"updated_at": now}
            if "name" in mask:
                values["name"] = rules.required_text(mask.value("name"), "name")
            if "description" in mask:
                values["description"] = rules.optional_text(mask.value("description"), "description")
            if "unit" in mask:
                values["unit"] = rules.required_text(mask.value("unit"), "unit")
            if "item_id" in mask:
                values["item_id"] = rules.nullable_text(mask.value("item_id", clearable=True), "itemId")
            if "event_type" in mask:
                values["event_type"] = rules.required_text(mask.value("event_type"), "eventType")
            if "value_property" in mask:
                values["value_property"] = rules.metric_value_property(row.aggregation, mask.value("value_property", clearable=True))
            if "group_by" in mask:
                values["group_by"] = rules.group_by(mask.value("group_by"))
            if "event_from_time" in mask:
                when = mask.value("event_from_time", clearable=True)
                values["event_from"] = None if when is None else from_timestamp(when)
            await uow.conn.execute(store.billable_metrics.update().where(store.billable_metrics.c.id == request.id).values(**values))
            metric = await self._metric(uow.conn, merchant_id, request.id)
            await self._changed(uow, ev.CHANGE_KIND_UPDATED, merchant_id, now, billable_metric=metric)
            return metric

        return await self._mutate("UpdateBillableMetric", request, res.BillableMetric, work)

    # --- features ---------------------------------------------------------------------

    async def _feature(self, conn: AsyncConnection, merchant_id: str, feature_id: str, field: str | None = None) -> res.Feature:
        return mapping.feature(await store.get_row(conn, store.features, merchant_id, feature_id, "feature", field=field))

    async def CreateFeature(self, request: svc.CreateFeatureRequest, context: grpc.aio.ServicerContext) -> res.Feature:
        async def work(uow: UnitOfWork, merchant_id: str, now: datetime) -> res.Feature:
            _check_merchant(request.merchant_id, merchant_id)
            if not request.product_id:
                raise InvalidArgument("productId", "productId is required", reason="REQUIRED")
            values: dict[str, Any] = {
                "id": new_id("feat"),
                "merchant_id": merchant_id,
                "product_id": request.product_id,
                "key": rules.feature_key(request.key),
                "name": rules.required_text(request.name, "name"),
                "type": rules.one_of(_opt(request, "type") or "boolean", rules.FEATURE_TYPES, "type"),
                "metadata": rules.metadata(request.metadata),
                "created_at": now,
                "updated_at": now,
            }
            await store.get_row(uow.conn, store.products, merchant_id, request.product_id, "product", field="productId")
            await self._ensure_feature_key_free(uow.conn, request.product_id, values["key"])
            await uow.conn.execute(store.features.insert().values(**values))
            feature = await self._feature(uow.conn, merchant_id, values["id"])
            await self._changed(uow, ev.CHANGE_KIND_CREATED, merchant_id, now, feature=feature)
            return feature

        return await self._mutate("CreateFeature", request, res.Feature, work)

    async def _ensure_feature_key_free(self, conn: AsyncConnection, product_id: str, key: str, *, except_id: str = "") -> None:
        t = store.features
        taken = (await conn.execute(sa.select(t.c.id).where(t.c.product_id == product_id, t.c.key == key, t.c.id != except_id))).first()
        if taken is not None:
            raise AlreadyExists("DUPLICATE_RESOURCE", f"feature key {key!r} already exists in product {product_id}", field="key")

    async def GetFeature(self, request: svc.GetFeatureRequest, context: grpc.aio.ServicerContext) -> res.Feature:
        return await self._read(lambda conn, merchant_id: self._feature(conn, merchant_id, request.id))

    async def ListFeatures(self, request: svc.ListFeaturesRequest, context: grpc.aio.ServicerContext) -> svc.ListFeaturesResponse:
        async def work(conn: AsyncConnection, merchant_id: str) -> svc.ListFeaturesResponse:
            if not request.product_id:
                raise InvalidArgument("productId", "productId is required", reason="REQUIRED")
            limit, offset = rules.page(_opt(request, "limit"), _opt(request, "offset"))
            await store.get_row(conn, store.products, merchant_id, request.product_id, "product", field="productId")
            t = store.features
            conditions = [t.c.merchant_id == merchant_id, t.c.product_id == request.product_id]
            if request.HasField("key"):
                conditions.append(t.c.key == request.key)
            rows, total = await store.list_page(conn, t, conditions, limit, offset)
            return svc.ListFeaturesResponse(
                object="list", data=[mapping.feature(r) for r in rows], pagination=_pagination(limit, offset, total)
            )

        return await self._read(work)

    async def UpdateFeature(self, request: svc.UpdateFeatureRequest, context: grpc.aio.ServicerContext) -> res.Feature:
        async def work(uow: UnitOfWork, merchant_id: str, now: datetime) -> res.Feature:
            mask = _Mask(request, ("key", "name", "type", "metadata"))
            if not mask.paths:
                return await self._feature(uow.conn, merchant_id, request.id)
            row = await store.get_row(uow.conn, store.features, merchant_id, request.id, "feature", lock=True)
            values: dict[str, Any] = {"updated_at": now}
            if "key" in mask:
                values["key"] = rules.feature_key(mask.value("key"))
                await self._ensure_feature_key_free(uow.conn, row.product_id, values["key"], except_id=row.id)
            if "name" in mask:
                values["name"] = rules.required_text(mask.value("name"), "name")
            if "type" in mask:
                values["type"] = rules.one_of(mask.value("type"), rules.FEATURE_TYPES, "type")
            if "metadata" in mask:
                values["metadata"] = rules.metadata(mask.value("metadata"))
            await uow.conn.execute(store.features.update().where(store.features.c.id == request.id).values(**values))
            feature = await self._feature(uow.conn, merchant_id, request.id)
            await self._changed(uow, ev.CHANGE_KIND_UPDATED, merchant_id, now, feature=feature)
            return feature

        return await self._mutate("UpdateFeature", request, res.Feature, work)

    async def DeleteFeature(self, request: svc.DeleteFeatureRequest, context: grpc.aio.ServicerContext) -> empty_pb2.Empty:
        async def work(uow: UnitOfWork, merchant_id: str, now: datetime) -> empty_pb2.Empty:
            row = await store.get_row(uow.conn, store.features, merchant_id, request.id, "feature", lock=True)
            p = store.prices
            in_use = (await uow.conn.execute(sa.select(p.c.id).where(p.c.feature_id == row.id, p.c.deleted_at.is_(None)).limit(1))).first()
            if in_use is not None:
                raise FailedPrecondition(
                    "FEATURE_IN_USE", f"feature {row.id} is attached to price {in_use.id}; detach it first", field="id"
                )
            # deleted prices are history and bill nothing: they let go of the feature
            await uow.conn.execute(
                p.update().where(p.c.feature_id == row.id, p.c.deleted_at.is_not(None)).values(feature_id=None, price_feature_id=None)
            )
            await uow.conn.execute(store.features.delete().where(store.features.c.id == row.id))
            await self._changed(uow, ev.CHANGE_KIND_DELETED, merchant_id, now, feature=mapping.feature(row))
            return empty_pb2.Empty()

        return await self._mutate("DeleteFeature", request, empty_pb2.Empty, work)

    # --- fees -------------------------------------------------------------------------

    async def _fee(self, conn: AsyncConnection, merchant_id: str, fee_id: str, field: str | None = None) -> res.Fee:
        return mapping.fee(await store.get_row(conn, store.fees, merchant_id, fee_id, "fee", field=field))

    async def CreateFee(self, request: svc.CreateFeeRequest, context: grpc.aio.ServicerContext) -> res.Fee:
        async def work(uow: UnitOfWork, merchant_id: str, now: datetime) -> res.Fee:
            _check_merchant(request.merchant_id, merchant_id)
            if not request.product_id:
                raise InvalidArgument("productId", "productId is required: a fee belongs to a product", reason="REQUIRED")
            values: dict[str, Any] = {
                "id": new_id("fee"),
                "merchant_id": merchant_id,
                "product_id": request.product_id,
                "name": rules.required_text(request.name, "name"),
                "description": rules.optional_text(request.description, "description"),
                "item_id": rules.nullable_text(_opt(request, "item_id"), "itemId"),
                "created_at": now,
                "updated_at": now,
            }
            await store.get_row(uow.conn, store.products, merchant_id, request.product_id, "product", field="productId")
            await uow.conn.execute(store.fees.insert().values(**values))
            fee = await self._fee(uow.conn, merchant_id, values["id"])
            await self._changed(uow, ev.CHANGE_KIND_CREATED, merchant_id, now, fee=fee)
            return fee

        return await self._mutate("CreateFee", request, res.Fee, work)

    async def GetFee(self, request: svc.GetFeeRequest, context: grpc.aio.ServicerContext) -> res.Fee:
        return await self._read(lambda conn, merchant_id: self._fee(conn, merchant_id, request.id))

    async def ListFees(self, request: svc.ListFeesRequest, context: grpc.aio.ServicerContext) -> svc.ListFeesResponse:
        async def work(conn: AsyncConnection, merchant_id: str) -> svc.ListFeesResponse:
            _check_merchant(request.merchant_id, merchant_id)
            limit, offset = rules.page(_opt(request, "limit"), _opt(request, "offset"))
            t = store.fees
            conditions = [t.c.merchant_id == merchant_id]
            if request.HasField("product_id"):
                conditions.append(t.c.product_id == request.product_id)
            if request.HasField("item_id"):
                conditions.append(t.c.item_id == request.item_id)
            rows, total = await store.list_page(conn, t, conditions, limit, offset)
            return svc.ListFeesResponse(object="list", data=[mapping.fee(r) for r in rows], pagination=_pagination(limit, offset, total))

        return await self._read(work)

    async def UpdateFee(self, request: svc.UpdateFeeRequest, context: grpc.aio.ServicerContext) -> res.Fee:
        async def work(uow: UnitOfWork, merchant_id: str, now: datetime) -> res.Fee:
            mask = _Mask(request, ("name", "description", "item_id"))
            if not mask.paths:
                return await self._fee(uow.conn, merchant_id, request.id)
            await store.get_row(uow.conn, store.fees, merchant_id, request.id, "fee", lock=True)
            values: dict[str, Any] = {"updated_at": now}
            if "name" in mask:
                values["name"] = rules.required_text(mask.value("name"), "name")
            if "description" in mask:
                values["description"] = rules.optional_text(mask.value("description"), "description")
            if "item_id" in mask:
                values["item_id"] = rules.nullable_text(mask.value("item_id", clearable=True), "itemId")
            await uow.conn.execute(store.fees.update().where(store.fees.c.id == request.id).values(**values))
            fee = await self._fee(uow.conn, merchant_id, request.id)
            await self._changed(uow, ev.CHANGE_KIND_UPDATED, merchant_id, now, fee=fee)
            return fee

        return await self._mutate("UpdateFee", request, res.Fee, work)

    async def DeleteFee(self, request: svc.DeleteFeeRequest, context: grpc.aio.ServicerContext) -> empty_pb2.Empty:
        async def work(uow: UnitOfWork, merchant_id: str, now: datetime) -> empty_pb2.Empty:
            row = await store.get_row(uow.conn, store.fees, merchant_id, request.id, "fee", lock=True)
            p = store.prices
            priced = (await uow.conn.execute(sa.select(p.c.id).where(p.c.fee_id == row.id, p.c.deleted_at.is_(None)).limit(1))).first()
            if priced is not None:
                raise FailedPrecondition("FEE_HAS_PRICES", f"fee {row.id} still has price {priced.id}; delete its prices first", field="id")
            # deleted prices keep their history rows; the fee row goes only when none refer to it
            referenced = (await uow.conn.execute(sa.select(p.c.id).where(p.c.fee_id == row.id).limit(1))).first()
            if referenced is None:
                await uow.conn.execute(store.fees.delete().where(store.fees.c.id == row.id))
            else:
                await uow.conn.execute(store.fees.update().where(store.fees.c.id == row.id).values(merchant_id=f"deleted:{merchant_id}"))
            await self._changed(uow, ev.CHANGE_KIND_DELETED, merchant_id, now, fee=mapping.fee(row))
            return empty_pb2.Empty()

        return await self._mutate("DeleteFee", request, empty_pb2.Empty, work)

    # --- prices -----------------------------------------------------------------------

    async def _price(self, conn: AsyncConnection, merchant_id: str, price_id: str) -> res.Price:
        row = await store.get_row(conn, store.prices, merchant_id, price_id, "price")
        return mapping.price(row, await store.features_by_id(conn, [row.feature_id]))

    async def _check_price_refs(self, conn: AsyncConnection, merchant_id: str, draft: rules.PriceDraft) -> None:
        if draft.billable_metric_id is not None:
            owner = await store.get_row(
                conn, store.billable_metrics, merchant_id, draft.billable_metric_id, "billable_metric", field="billableMetricId"
            )
        else:
            owner = await store.get_row(conn, store.fees, merchant_id, draft.fee_id or "", "fee", field="feeId")
        if draft.feature_id is not None:
            feature = await store.get_row(conn, store.features, merchant_id, draft.feature_id, "feature", field="feature.featureId")
            if feature.product_id != owner.product_id:
                raise InvalidArgument(
                    "feature.featureId",
                    f"feature {feature.id} belongs to product {feature.product_id}, the price's "
                    f"{'metric' if draft.billable_metric_id else 'fee'} to {owner.product_id}",
                    reason="FEATURE_PRODUCT_MISMATCH",
                )

    @staticmethod
    def _price_values(draft: rules.PriceDraft, valid: rules.ValidPrice) -> dict[str, Any]:
        return {
            "billable_metric_id": draft.billable_metric_id,
            "fee_id": draft.fee_id,
            "invoice_display_name": draft.invoice_display_name.strip(),
            "invoice_display_group": draft.invoice_display_group,
            "payment_term": draft.payment_term,
            "model": valid.model,
            "properties": valid.properties.stored,
            "billing_cadence": draft.billing_cadence,
            "grant_discount_enabled": draft.grant_discount_enabled,
            "is_obligation": draft.is_obligation,
            "rate_type": draft.rate_type,
            "supply_scope": draft.supply_scope,
            "outside_scope_label": draft.outside_scope_label,
            "quantity": valid.quantity,
            "feature_id": draft.feature_id,
            "entitlement_template": draft.entitlement_template if draft.feature_id is not None else None,
        }

    async def CreatePrice(self, request: svc.CreatePriceRequest, context: grpc.aio.ServicerContext) -> res.Price:
        async def work(uow: UnitOfWork, merchant_id: str, now: datetime) -> res.Price:
            _check_merchant(request.merchant_id, merchant_id)
            has_feature = request.HasField("feature")
            if has_feature and not request.feature.feature_id:
                raise InvalidArgument("feature.featureId", "feature.featureId is required", reason="REQUIRED")
            draft = rules.PriceDraft(
                billable_metric_id=_opt(request, "billable_metric_id"),
                fee_id=_opt(request, "fee_id"),
                invoice_display_name=request.invoice_display_name,
                invoice_display_group=_opt(request, "invoice_display_group"),
                payment_term=request.payment_term,
                model=_opt(request, "model"),
                properties=mapping.from_struct(request.properties),
                billing_cadence=_opt(request, "billing_cadence"),
                grant_discount_enabled=request.grant_discount_enabled,
                is_obligation=request.is_obligation,
                rate_type=_opt(request, "rate_type"),
                supply_scope=request.tax.supply_scope if request.HasField("tax") else "IN_SCOPE",
                outside_scope_label=_opt(request.tax, "outside_scope_label") if request.HasField("tax") else None,
                quantity=_opt(request, "quantity"),
                pricing_unit_id=_opt(request, "pricing_unit_id"),
                feature_id=request.feature.feature_id if has_feature else None,
                entitlement_template=(
                    mapping.from_struct(request.feature.entitlement_template)
                    if has_feature and request.feature.HasField("entitlement_template")
                    else ({} if has_feature else None)
                ),
            )
            valid = rules.validate_price(draft)
            await self._check_price_refs(uow.conn, merchant_id, draft)
            price_id = new_id("price")
            await uow.conn.execute(
                store.prices.insert().values(
                    id=price_id,
                    merchant_id=merchant_id,
                    price_feature_id=new_id("pf") if draft.feature_id else None,
                    created_at=now,
                    updated_at=now,
                    **self._price_values(draft, valid),
                )
            )
            price = await self._price(uow.conn, merchant_id, price_id)
            await self._changed(uow, ev.CHANGE_KIND_CREATED, merchant_id, now, price=price)
            return price

        return await self._mutate("CreatePrice", request, res.Price, work)

    async def GetPrice(self, request: svc.GetPriceRequest, context: grpc.aio.ServicerContext) -> res.Price:
        return await self._read(lambda conn, merchant_id: self._price(conn, merchant_id, request.id))

    async def ListPrices(self, request: svc.ListPricesRequest, context: grpc.aio.ServicerContext) -> svc.ListPricesResponse:
        async def work(conn: AsyncConnection, merchant_id: str) -> svc.ListPricesResponse:
            _check_merchant(request.merchant_id, merchant_id)
            limit, offset = rules.page(_opt(request, "limit"), _opt(request, "offset"))
            t = store.prices
            conditions = [t.c.merchant_id == merchant_id, t.c.deleted_at.is_(None)]
            if request.HasField("billable_metric_id"):
                conditions.append(t.c.billable_metric_id == request.billable_metric_id)
            rows, total = await store.list_page(conn, t, conditions, limit, offset)
            features = await store.features_by_id(conn, [r.feature_id for r in rows])
            return svc.ListPricesResponse(
                object="list", data=[mapping.price(r, features) for r in rows], pagination=_pagination(limit, offset, total)
            )

        return await self._read(work)

    async def UpdatePrice(self, request: svc.UpdatePriceRequest, context: grpc.aio.ServicerContext) -> res.Price:
        async def work(uow: UnitOfWork, merchant_id: str, now: datetime) -> res.Price:
            mask = _Mask(
                request,
                (
                    "billable_metric_id", "pricing_unit_id", "invoice_display_name", "invoice_display_group", "model",
                    "properties", "payment_term", "billing_cadence", "feature", "grant_discount_enabled", "is_obligation",
                    "rate_type", "tax", "quantity",
                ),
            )  # fmt: skip
            if not mask.paths:
                return await self._price(uow.conn, merchant_id, request.id)
            row = await store.get_row(uow.conn, store.prices, merchant_id, request.id, "price", lock=True)
            draft = rules.PriceDraft(
                billable_metric_id=row.billable_metric_id,
                fee_id=row.fee_id,
                invoice_display_name=row.invoice_display_name,
                invoice_display_group=row.invoice_display_group,
                payment_term=row.payment_term,
                model=row.model,
                properties=rules.render_properties(row.model, row.properties),
                billing_cadence=row.billing_cadence,
                grant_discount_enabled=row.grant_discount_enabled,
                is_obligation=row.is_obligation,
                rate_type=row.rate_type,
                supply_scope=row.supply_scope,
                outside_scope_label=row.outside_scope_label,
                quantity=row.quantity,
                pricing_unit_id=None,
                feature_id=row.feature_id,
                entitlement_template=row.entitlement_template,
            )
            if "billable_metric_id" in mask:
                if row.fee_id is not None:
                    raise InvalidArgument("billableMetricId", "a fee price cannot become a metric price", reason="NOT_ALLOWED")
                draft.billable_metric_id = mask.value("billable_metric_id")
            for name in ("invoice_display_name", "payment_term", "model", "grant_discount_enabled", "is_obligation", "quantity"):
                if name in mask:
                    setattr(draft, name, mask.value(name))
            for name in ("invoice_display_group", "billing_cadence", "rate_type", "pricing_unit_id"):
                if name in mask:
                    setattr(draft, name, mask.value(name, clearable=True))
            if "properties" in mask:
                draft.properties = mapping.from_struct(mask.value("properties"))
            if "tax" in mask:
                tax = mask.value("tax")
                draft.supply_scope = tax.supply_scope
                draft.outside_scope_label = _opt(tax, "outside_scope_label")
            if "feature" in mask:
                feature = mask.value("feature", clearable=True)
                if feature is None:
                    draft.feature_id, draft.entitlement_template = None, None
                else:
                    if not feature.feature_id:
                        raise InvalidArgument("feature.featureId", "feature.featureId is required", reason="REQUIRED")
                    draft.feature_id = feature.feature_id
                    draft.entitlement_template = (
                        mapping.from_struct(feature.entitlement_template) if feature.HasField("entitlement_template") else {}
                    )
            valid = rules.validate_price(draft)
            await self._check_price_refs(uow.conn, merchant_id, draft)
            if draft.billable_metric_id != row.billable_metric_id:
                # a price keeps its product: plans checked it against theirs when they listed it
                bm = store.billable_metrics
                ids = (row.billable_metric_id, draft.billable_metric_id)
                found = await uow.conn.execute(sa.select(bm.c.id, bm.c.product_id).where(bm.c.id.in_(ids)))
                owners = dict(found.tuples().all())
                if owners[draft.billable_metric_id] != owners[row.billable_metric_id]:
                    raise InvalidArgument(
                        "billableMetricId",
                        f"billableMetricId {draft.billable_metric_id} belongs to product {owners[draft.billable_metric_id]}, "
                        f"but this price belongs to product {owners[row.billable_metric_id]}",
                        reason="METRIC_PRODUCT_MISMATCH",
                    )
            values = self._price_values(draft, valid)
            if draft.feature_id is not None and row.price_feature_id is None:
                values["price_feature_id"] = new_id("pf")
            elif draft.feature_id is None:
                values["price_feature_id"] = None
            await uow.conn.execute(store.prices.update().where(store.prices.c.id == row.id).values(updated_at=now, **values))
            price = await self._price(uow.conn, merchant_id, row.id)
            await self._changed(uow, ev.CHANGE_KIND_UPDATED, merchant_id, now, price=price)
            return price

        return await self._mutate("UpdatePrice", request, res.Price, work)

    async def DeletePrice(self, request: svc.DeletePriceRequest, context: grpc.aio.ServicerContext) -> empty_pb2.Empty:
        async def work(uow: UnitOfWork, merchant_id: str, now: datetime) -> empty_pb2.Empty:
            row = await store.get_row(uow.conn, store.prices, merchant_id, request.id, "price", lock=True)
            pvp, pv, pl = store.plan_version_prices, store.plan_versions, store.plans
            live = (
                await uow.conn.execute(
                    sa.select(pl.c.id)
                    .select_from(pvp.join(pv, pv.c.id == pvp.c.plan_version_id).join(pl, pl.c.id == pv.c.plan_id))
                    .where(pvp.c.price_id == row.id, pv.c.status == "published", pl.c.deleted_at.is_(None))
                    .limit(1)
                )
            ).first()
            if live is not None:
                raise FailedPrecondition(
                    "PRICE_IN_USE",
                    f"price {row.id} is in a published version of plan {live.id}; mint a version without it first",
                    field="id",
                )
            await uow.conn.execute(store.prices.update().where(store.prices.c.id == row.id).values(deleted_at=now, updated_at=now))
            features = await store.features_by_id(uow.conn, [row.feature_id])
            await self._changed(uow, ev.CHANGE_KIND_DELETED, merchant_id, now, price=mapping.price(row, features))
            return empty_pb2.Empty()

        return await self._mutate("DeletePrice", request, empty_pb2.Empty, work)

    # --- plans ------------------------------------------------------------------------

    async def _plans(self, conn: AsyncConnection, rows: list[Any]) -> list[res.Plan]:
        lines = await store.version_lines(conn, [r.default_version_id for r in rows if r.default_version_id])
        features = await store.features_by_id(conn, [p.feature_id for ls in lines.values() for _, p in ls])
        return [mapping.plan(r, lines.get(r.default_version_id, []), features) for r in rows]

    async def _plan(self, conn: AsyncConnection, merchant_id: str, plan_id: str) -> res.Plan:
        row = await store.get_row(conn, store.plans, merchant_id, plan_id, "plan")
        (plan,) = await self._plans(conn, [row])
        return plan

    async def _version(self, conn: AsyncConnection, plan_row: Any, version_row: Any) -> res.PlanVersion:
        lines = (await store.version_lines(conn, [version_row.id]))[version_row.id]
        features = await store.features_by_id(conn, [p.feature_id for _, p in lines])
        return mapping.plan_version(
            version_row, lines, currency=plan_row.currency, default_version_id=plan_row.default_version_id, features=features
        )

    async def _resolve_lines(
        self, conn: AsyncConnection, merchant_id: str, product_id: str, values: Iterable[Any], field: str = "prices"
    ) -> list[rules.PlanLine]:
        lines = rules.plan_lines([mapping.from_value(v) for v in values], field)
        for index, line in enumerate(lines):
            here = f"{field}[{index}]"
            row = await store.get_row(conn, store.prices, merchant_id, line.price_id, "price", field=here)
            owner_table, owner_id = (store.billable_metrics, row.billable_metric_id) if row.billable_metric_id else (store.fees, row.fee_id)
            owner_product = (await conn.execute(sa.select(owner_table.c.product_id).where(owner_table.c.id == owner_id))).scalar_one()
            if owner_product != product_id:
                raise InvalidArgument(
                    here,
                    f"{here}: price {line.price_id} belongs to product {owner_product}, not {product_id}",
                    reason="PRICE_PRODUCT_MISMATCH",
                )
        return lines

    async def _insert_version(
        self,
        uow: UnitOfWork,
        merchant_id: str,
        plan_id: str,
        number: int,
        lines: list[rules.PlanLine],
        based_on: str | None,
        now: datetime,
    ) -> str:
        version_id = new_id("pv")
        await uow.conn.execute(
            store.plan_versions.insert().values(
                id=version_id,
                merchant_id=merchant_id,
                plan_id=plan_id,
                version_number=number,
                status="published",
                based_on_version_id=based_on,
                subscription_count=0,
                published_at=now,
                created_at=now,
                updated_at=now,
            )
        )
        if lines:
            await uow.conn.execute(
                store.plan_version_prices.insert(),
                [{"plan_version_id": version_id, "key": ln.key, "price_id": ln.price_id, "position": i} for i, ln in enumerate(lines)],
            )
        return version_id

    async def CreatePlan(self, request: svc.CreatePlanRequest, context: grpc.aio.ServicerContext) -> res.Plan:
        async def work(uow: UnitOfWork, merchant_id: str, now: datetime) -> res.Plan:
            _check_merchant(request.merchant_id, merchant_id)
            if not request.product_id:
                raise InvalidArgument("productId", "productId is required", reason="REQUIRED")
            if _opt(request, "billing_version") not in (None, 1):
                raise InvalidArgument(
                    "billingVersion",
                    "only billingVersion 1 (Standard billing) is supported; 0 is legacy wallet billing",
                    reason="NOT_SUPPORTED",
                )
            if len(request.credit_allocations) > 0:
                raise InvalidArgument(
                    "creditAllocations", "credit allocations (pricing units) are not supported yet", reason="NOT_SUPPORTED"
                )
            anchor = from_timestamp(request.billing_anchor_time) if request.HasField("billing_anchor_time") else None
            if anchor is not None and anchor > now:
                raise InvalidArgument("billingAnchor", "billingAnchor must not be in the future", reason="OUT_OF_RANGE")
            effective_date = "end_of_current_period"
            if request.HasField("version_transition"):
                effective_date = rules.one_of(
                    request.version_transition.effective_date, rules.EFFECTIVE_DATES, "versionTransition.effectiveDate"
                )
                rules.one_of(request.version_transition.proration, ("none",), "versionTransition.proration")
            plan_id = new_id("plan")
            values: dict[str, Any] = {
                "id": plan_id,
                "merchant_id": merchant_id,
                "product_id": request.product_id,
                "name": rules.required_text(request.name, "name"),
                "description": rules.nullable_text(_opt(request, "description"), "description", max_length=rules.LIMITS.description),
                "currency": rules.currency(request.currency),
                "billing_cadence": rules.plan_cadence(_opt(request, "billing_cadence"), _opt(request, "billing_interval")),
                "invoice_display_name": rules.nullable_text(_opt(request, "invoice_display_name"), "invoiceDisplayName"),
                "default_tax_code": rules.required_text(_opt(request, "default_tax_code") or "eservice", "defaultTaxCode"),
                "default_tax_rate": rules.tax_rate(_opt(request, "default_tax_rate") or 0.0),
                "tax_behavior": rules.one_of(_opt(request, "tax_behavior") or "exclusive", rules.TAX_BEHAVIORS, "taxBehavior"),
                "renewal_reminder_enabled": _opt(request, "renewal_reminder_enabled") is not False,
                "renewal_reminder_days": rules.renewal_reminder_days(_or(_opt(request, "renewal_reminder_days"), 3)),
                "billing_version": 1,
                "billing_anchor": anchor,
                "credit_allocations": [],
                "stable_price_ids": _opt(request, "stable_price_ids") is not False,
                "version_effective_date": effective_date,
                "created_at": now,
                "updated_at": now,
            }
            await store.get_row(uow.conn, store.products, merchant_id, request.product_id, "product", field="productId")
            lines = await self._resolve_lines(uow.conn, merchant_id, request.product_id, request.prices)
            await uow.conn.execute(store.plans.insert().values(**values))
            version_id = await self._insert_version(uow, merchant_id, plan_id, 1, lines, None, now)
            await uow.conn.execute(store.plans.update().where(store.plans.c.id == plan_id).values(default_version_id=version_id))
            plan = await self._plan(uow.conn, merchant_id, plan_id)
            await self._changed(uow, ev.CHANGE_KIND_CREATED, merchant_id, now, plan=plan)
            return plan

        return await self._mutate("CreatePlan", request, res.Plan, work)

    async def GetPlan(self, request: svc.GetPlanRequest, context: grpc.aio.ServicerContext) -> res.Plan:
        return await self._read(lambda conn, merchant_id: self._plan(conn, merchant_id, request.id))

    async def ListPlans(self, request: svc.ListPlansRequest, context: grpc.aio.ServicerContext) -> svc.ListPlansResponse:
        async def work(conn: AsyncConnection, merchant_id: str) -> svc.ListPlansResponse:
            _check_merchant(request.merchant_id, merchant_id)
            limit, offset = rules.page(_opt(request, "limit"), _opt(request, "offset"))
            t = store.plans
            conditions = [t.c.merchant_id == merchant_id, t.c.deleted_at.is_(None)]
            if request.HasField("product_id"):
                conditions.append(t.c.product_id == request.product_id)
            rows, total = await store.list_page(conn, t, conditions, limit, offset)
            return svc.ListPlansResponse(object="list", data=await self._plans(conn, rows), pagination=_pagination(limit, offset, total))

        return await self._read(work)

    async def _mint(
        self, uow: UnitOfWork, merchant_id: str, plan_row: Any, values: Iterable[Any], based_on: str | None, now: datetime
    ) -> Any:
        if based_on is not None and based_on != plan_row.default_version_id:
            raise Aborted(
                "PLAN_VERSION_CONFLICT",
                f"basedOnVersionId {based_on} is no longer the default version ({plan_row.default_version_id}); reload and retry",
                field="basedOnVersionId",
            )
        lines = await self._resolve_lines(uow.conn, merchant_id, plan_row.product_id, values)
        if not lines:
            raise InvalidArgument("prices", "a plan version needs at least one price", reason="REQUIRED")
        pv = store.plan_versions
        number = (await uow.conn.execute(sa.select(sa.func.max(pv.c.version_number)).where(pv.c.plan_id == plan_row.id))).scalar_one()
        version_id = await self._insert_version(
            uow, merchant_id, plan_row.id, int(number or 0) + 1, lines, plan_row.default_version_id, now
        )
        await uow.conn.execute(
            store.plans.update().where(store.plans.c.id == plan_row.id).values(default_version_id=version_id, updated_at=now)
        )
        plan_row = await store.get_row(uow.conn, store.plans, merchant_id, plan_row.id, "plan")
        version_row = (await uow.conn.execute(sa.select(pv).where(pv.c.id == version_id))).one()
        version = await self._version(uow.conn, plan_row, version_row)
        await self._changed(uow, ev.CHANGE_KIND_CREATED, merchant_id, now, plan_version=version)
        return version

    async def UpdatePlan(self, request: svc.UpdatePlanRequest, context: grpc.aio.ServicerContext) -> res.Plan:
        async def work(uow: UnitOfWork, merchant_id: str, now: datetime) -> res.Plan:
            mask = _Mask(
                request,
                (
                    "billing_cadence", "billing_interval", "default_tax_code", "default_tax_rate", "description",
                    "invoice_display_name", "name", "prices", "tax_behavior", "renewal_reminder_enabled",
                    "renewal_reminder_days", "billing_anchor_time", "credit_allocations", "stable_price_ids",
                    "version_transition",
                ),
            )  # fmt: skip
            if not mask.paths:
                return await self._plan(uow.conn, merchant_id, request.id)
            row = await store.get_row(uow.conn, store.plans, merchant_id, request.id, "plan", lock=True)
            values: dict[str, Any] = {"updated_at": now}
            if "billing_cadence" in mask or "billing_interval" in mask:
                values["billing_cadence"] = rules.plan_cadence(
                    mask.value("billing_cadence") if "billing_cadence" in mask else None,
                    mask.value("billing_interval") if "billing_interval" in mask else None,
                )
            if "default_tax_code" in mask:
                values["default_tax_code"] = rules.required_text(mask.value("default_tax_code"), "defaultTaxCode")
            if "default_tax_rate" in mask:
                values["default_tax_rate"] = rules.tax_rate(mask.value("default_tax_rate"))
            for name, most in (("description", rules.LIMITS.description), ("invoice_display_name", rules.LIMITS.name)):
                if name in mask:
                    values[name] = rules.nullable_text(mask.value(name, clearable=True), mapping.camel(name), max_length=most)
            if "name" in mask:
                values["name"] = rules.required_text(mask.value("name"), "name")
            if "tax_behavior" in mask:
                values["tax_behavior"] = rules.one_of(mask.value("tax_behavior"), rules.TAX_BEHAVIORS, "taxBehavior")
            if "renewal_reminder_enabled" in mask:
                values["renewal_reminder_enabled"] = mask.value("renewal_reminder_enabled")
            if "renewal_reminder_days" in mask:
                values["renewal_reminder_days"] = rules.renewal_reminder_days(mask.value("renewal_reminder_days"))
            if "billing_anchor_time" in mask:
                anchor = mask.value("billing_anchor_time", clearable=True)
                values["billing_anchor"] = None if anchor is None else from_timestamp(anchor)
                if values["billing_anchor"] is not None and values["billing_anchor"] > now:
                    raise InvalidArgument("billingAnchor", "billingAnchor must not be in the future", reason="OUT_OF_RANGE")
            if "credit_allocations" in mask and len(request.credit_allocations) > 0:
                raise InvalidArgument(
                    "creditAllocations", "credit allocations (pricing units) are not supported yet", reason="NOT_SUPPORTED"
                )
            if "stable_price_ids" in mask:
                values["stable_price_ids"] = mask.value("stable_price_ids")
            if "version_transition" in mask:
                vt = mask.value("version_transition")
                values["version_effective_date"] = rules.one_of(vt.effective_date, rules.EFFECTIVE_DATES, "versionTransition.effectiveDate")
                rules.one_of(vt.proration, ("none",), "versionTransition.proration")
            if "prices" in mask:
                await self._mint(uow, merchant_id, row, request.prices, None, now)
            await uow.conn.execute(store.plans.update().where(store.plans.c.id == row.id).values(**values))
            plan = await self._plan(uow.conn, merchant_id, row.id)
            await self._changed(uow, ev.CHANGE_KIND_UPDATED, merchant_id, now, plan=plan)
            return plan

        return await self._mutate("UpdatePlan", request, res.Plan, work)

    async def ListPlanVersions(
        self, request: svc.ListPlanVersionsRequest, context: grpc.aio.ServicerContext
    ) -> svc.ListPlanVersionsResponse:
        async def work(conn: AsyncConnection, merchant_id: str) -> svc.ListPlanVersionsResponse:
            limit, offset = rules.page(_opt(request, "limit"), _opt(request, "offset"))
            plan_row = await store.get_row(conn, store.plans, merchant_id, request.id, "plan")
            pv = store.plan_versions
            total = (await conn.execute(sa.select(sa.func.count()).where(pv.c.plan_id == plan_row.id))).scalar_one()
            rows = (
                await conn.execute(
                    sa.select(pv).where(pv.c.plan_id == plan_row.id).order_by(pv.c.version_number.desc()).limit(limit).offset(offset)
                )
            ).all()
            lines = await store.version_lines(conn, [r.id for r in rows])
            features = await store.features_by_id(conn, [p.feature_id for ls in lines.values() for _, p in ls])
            data = [
                mapping.plan_version(
                    r, lines[r.id], currency=plan_row.currency, default_version_id=plan_row.default_version_id, features=features
                )
                for r in rows
            ]
            return svc.ListPlanVersionsResponse(object="list", data=data, pagination=_pagination(limit, offset, int(total)))

        return await self._read(work)

    async def MintPlanVersion(self, request: svc.MintPlanVersionRequest, context: grpc.aio.ServicerContext) -> res.PlanVersion:
        async def work(uow: UnitOfWork, merchant_id: str, now: datetime) -> res.PlanVersion:
            plan_row = await store.get_row(uow.conn, store.plans, merchant_id, request.id, "plan", lock=True)
            version: res.PlanVersion = await self._mint(
                uow, merchant_id, plan_row, request.prices, _opt(request, "based_on_version_id"), now
            )
            plan = await self._plan(uow.conn, merchant_id, plan_row.id)
            await self._changed(uow, ev.CHANGE_KIND_UPDATED, merchant_id, now, plan=plan)
            return version

        return await self._mutate("MintPlanVersion", request, res.PlanVersion, work)

    async def _version_row(self, conn: AsyncConnection, plan_id: str, number: int, *, lock: bool = False) -> Any:
        pv = store.plan_versions
        query = sa.select(pv).where(pv.c.plan_id == plan_id, pv.c.version_number == number)
        if lock:
            query = query.with_for_update()
        row = (await conn.execute(query)).first()
        if row is None:
            raise NotFound("plan_version", f"{plan_id}/versions/{number}", field="versionNumber")
        return row

    async def GetPlanVersion(self, request: svc.GetPlanVersionRequest, context: grpc.aio.ServicerContext) -> res.PlanVersion:
        async def work(conn: AsyncConnection, merchant_id: str) -> res.PlanVersion:
            plan_row = await store.get_row(conn, store.plans, merchant_id, request.id, "plan")
            return await self._version(conn, plan_row, await self._version_row(conn, plan_row.id, request.version_number))

        return await self._read(work)

    async def TransitionPlanVersion(self, request: svc.TransitionPlanVersionRequest, context: grpc.aio.ServicerContext) -> res.PlanVersion:
        async def work(uow: UnitOfWork, merchant_id: str, now: datetime) -> res.PlanVersion:
            plan_row = await store.get_row(uow.conn, store.plans, merchant_id, request.id, "plan", lock=True)
            row = await self._version_row(uow.conn, plan_row.id, request.version_number, lock=True)
            make_default = _opt(request, "default")
            status = _opt(request, "status")
            if make_default is None and status is None:
                raise InvalidArgument("default", "nothing to change: send default: true or status", reason="REQUIRED")
            if make_default is False:
                raise InvalidArgument(
                    "default", "default: false is not a transition; make another version the default", reason="NOT_ALLOWED"
                )
            new_status = row.status if status is None else rules.one_of(status, ("published", "archived"), "status")
            is_default = make_default is True or plan_row.default_version_id == row.id
            if new_status == "archived" and is_default:
                raise FailedPrecondition(
                    "DEFAULT_VERSION_ARCHIVE",
                    "the default version cannot be archived or archived versions made default",
                    field="status",
                )
            if new_status != row.status:
                pv = store.plan_versions
                await uow.conn.execute(pv.update().where(pv.c.id == row.id).values(status=new_status, updated_at=now))
            if make_default and plan_row.default_version_id != row.id:
                await uow.conn.execute(
                    store.plans.update().where(store.plans.c.id == plan_row.id).values(default_version_id=row.id, updated_at=now)
                )
                plan = await self._plan(uow.conn, merchant_id, plan_row.id)
                await self._changed(uow, ev.CHANGE_KIND_UPDATED, merchant_id, now, plan=plan)
            plan_row = await store.get_row(uow.conn, store.plans, merchant_id, plan_row.id, "plan")
            version = await self._version(uow.conn, plan_row, await self._version_row(uow.conn, plan_row.id, request.version_number))
            await self._changed(uow, ev.CHANGE_KIND_UPDATED, merchant_id, now, plan_version=version)
            return version

        return await self._mutate("TransitionPlanVersion", request, res.PlanVersion, work)


def _opt(message: Message, name: str) -> Any:
    """The value of a presence-tracked field, or None when unset."""
    return getattr(message, name) if message.HasField(name) else None


def _or(value: Any, default: Any) -> Any:
    return default if value is None else value
