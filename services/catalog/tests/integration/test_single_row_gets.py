"""The single-row Gets (product, billable metric, feature, fee) read outside a unit of work
(store.LiveRows on store.ReadConnections): the catalog in-process against the real
PostgreSQL, over gRPC with merchant tokens. They answer exactly what the repository
path renders, NOT_FOUND for another merchant's or a deleted resource, a caller's own
update at once, survive read connections the server closed, and leave no connection
behind when the service stops."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import grpc
import pytest
import sqlalchemy as sa
from accrue.catalog.v1 import catalog_service_pb2 as svc
from accrue.catalog.v1 import catalog_service_pb2_grpc
from google.protobuf import field_mask_pb2
from google.protobuf.message import Message
from sqlalchemy.ext.asyncio import create_async_engine

from libs.core.clock import SystemClock
from libs.infra.db import ReadConnections
from libs.infra.grpc_errors import carried_error
from libs.infra.service import Host
from libs.testing.fixtures import StartHost
from libs.testing.tokens import merchant_metadata
from services.catalog import app, views
from services.catalog.store import SqlCatalogUnitOfWork

pytestmark = pytest.mark.integration

A, B = "org_rows_a", "org_rows_b"


@dataclass
class Catalog:
    host: Host
    stub: catalog_service_pb2_grpc.CatalogServiceStub

    async def call(self, method: str, request: Message, merchant: str = A) -> Any:
        return await getattr(self.stub, method)(request, metadata=[merchant_metadata(merchant)])

    async def scalar(self, query: str) -> Any:
        assert self.host.runtime is not None
        async with self.host.runtime.db.engine.connect() as conn:
            return (await conn.execute(sa.text(query))).scalar()

    async def through_unit_of_work(self, repository: str, merchant: str, resource_id: str) -> Message:
        """What the repository path (a unit of work) renders for the resource."""
        assert self.host.runtime is not None
        async with SqlCatalogUnitOfWork(self.host.runtime.db, clock=SystemClock(), translate=views.outbox_message) as uow:
            return await views.render(uow, await getattr(uow, repository).get(merchant, resource_id))


@pytest.fixture
async def catalog(start_host: StartHost) -> AsyncIterator[Catalog]:
    host = await start_host(app.DEFINITION)
    async with grpc.aio.insecure_channel(f"127.0.0.1:{host.grpc_port}") as channel:
        yield Catalog(host, catalog_service_pb2_grpc.CatalogServiceStub(channel))


async def _resources(catalog: Catalog) -> dict[str, tuple[str, str, Any]]:
    """One of each kind for merchant A: repository name, Get method, created resource."""
    product = await catalog.call("CreateProduct", svc.CreateProductRequest(name="API", description="d", metadata={"tier": "gold"}))
    metric = await catalog.call(
        "CreateBillableMetric",
        svc.CreateBillableMetricRequest(
            product_id=product.id, name="Tokens", description="t", unit="tokens", aggregation="SUM",
            event_type=f"tokens.{uuid.uuid4().hex[:8]}", value_property="$.tokens", group_by={"model": "$.model"},
        ),
    )  # fmt: skip
    feature = await catalog.call(
        "CreateFeature", svc.CreateFeatureRequest(product_id=product.id, key="sso", name="SSO", type="boolean", metadata={"a": "b"})
    )
    fee = await catalog.call("CreateFee", svc.CreateFeeRequest(product_id=product.id, name="Base", description="b", item_id="item_1"))
    return {
        "product": ("products", "GetProduct", product),
        "billable metric": ("billable_metrics", "GetBillableMetric", metric),
        "feature": ("features", "GetFeature", feature),
        "fee": ("fees", "GetFee", fee),
    }


def _get_request(method: str, resource_id: str) -> Message:
    request_type: type[Message] = getattr(svc, f"{method}Request")
    return request_type(id=resource_id)


async def test_a_get_answers_what_the_unit_of_work_renders_and_what_the_create_answered(catalog: Catalog) -> None:
    for kind, (repository, method, created) in (await _resources(catalog)).items():
        got = await catalog.call(method, _get_request(method, created.id))
        assert got == created, kind
        assert got == await catalog.through_unit_of_work(repository, A, created.id), kind


async def test_another_merchants_resource_is_not_found_and_the_error_names_it(catalog: Catalog) -> None:
    for kind, (_, method, created) in (await _resources(catalog)).items():
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await catalog.call(method, _get_request(method, created.id), merchant=B)
        assert refused.value.code() == grpc.StatusCode.NOT_FOUND, kind
        assert created.id in (refused.value.details() or ""), kind
        with pytest.raises(grpc.aio.AioRpcError) as missing:
            await catalog.call(method, _get_request(method, f"{created.id}x"))
        assert missing.value.code() == grpc.StatusCode.NOT_FOUND, kind


async def test_a_deleted_feature_or_fee_is_not_found(catalog: Catalog) -> None:
    found = await _resources(catalog)
    for kind, delete in (("feature", "DeleteFeature"), ("fee", "DeleteFee")):
        _, method, created = found[kind]
        await catalog.call(delete, getattr(svc, f"{delete}Request")(id=created.id))
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await catalog.call(method, _get_request(method, created.id))
        assert refused.value.code() == grpc.StatusCode.NOT_FOUND, kind


async def test_a_batch_get_answers_each_request_as_get_product_would(catalog: Catalog) -> None:
    """BatchGetProducts (the gateway's coalesced GETs): by position, a found product as
    GetProduct answers it, and for each other request the very error GetProduct fails with
    (reason, message, field, details), whatever else the batch holds; repeats included."""
    first = await catalog.call("CreateProduct", svc.CreateProductRequest(name="One", description="d", metadata={"k": "v"}))
    second = await catalog.call("CreateProduct", svc.CreateProductRequest(name="Two", description="d"))
    theirs = await catalog.call("CreateProduct", svc.CreateProductRequest(name="B's", description="d"), merchant=B)
    ids = [first.id, "prod_nope", theirs.id, second.id, first.id, "x" * 600, ""]
    batch = await catalog.call("BatchGetProducts", svc.BatchGetProductsRequest(requests=[svc.GetProductRequest(id=i) for i in ids]))
    assert [r.index for r in batch.receipts] == list(range(len(ids)))
    assert [r.status for r in batch.receipts] == ["found", "rejected", "rejected", "found", "found", "rejected", "rejected"]
    assert [batch.receipts[i].product for i in (0, 3, 4)] == [first, second, first]
    # a request breaking a declared rule (id is required) is refused alone, as GetProduct refuses it
    empty = batch.receipts[6]
    assert (empty.code, empty.field, empty.http_status, dict(empty.details)) == ("REQUIRED", "id", 400, {"field": "id"})
    for index in (1, 2, 5):
        receipt = batch.receipts[index]
        with pytest.raises(grpc.aio.AioRpcError) as single:
            await catalog.call("GetProduct", svc.GetProductRequest(id=ids[index]))
        err = carried_error(single.value)
        assert err is not None
        assert (receipt.code, receipt.message, receipt.http_status) == (err.reason, err.message, 404)
        assert not receipt.HasField("field") and not receipt.HasField("product")
        assert dict(receipt.details) == err.metadata  # the 600-character id bounded as the status bounds it


@pytest.mark.parametrize("size", [0, 101])
async def test_a_batch_get_outside_its_bounds_is_refused_naming_the_field(catalog: Catalog, size: int) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await catalog.call("BatchGetProducts", svc.BatchGetProductsRequest(requests=[svc.GetProductRequest(id="prod_x")] * size))
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    err = carried_error(refused.value)
    assert err is not None and (err.reason, err.field) == ("BATCH_SIZE", "requests")


async def test_a_callers_update_is_read_back_at_once(catalog: Catalog) -> None:
    product = await catalog.call("CreateProduct", svc.CreateProductRequest(name="v0", description="d"))
    for n in range(1, 30):
        updated = await catalog.call(
            "UpdateProduct", svc.UpdateProductRequest(id=product.id, name=f"v{n}", update_mask=field_mask_pb2.FieldMask(paths=["name"]))
        )
        got = await catalog.call("GetProduct", svc.GetProductRequest(id=product.id))
        assert got.name == f"v{n}"
        assert got == updated


async def test_read_connections_the_server_closed_are_replaced(catalog: Catalog) -> None:
    product = await catalog.call("CreateProduct", svc.CreateProductRequest(name="API", description="d"))
    for _ in range(3):
        await catalog.call("GetProduct", svc.GetProductRequest(id=product.id))
    database = await catalog.scalar("SELECT current_database()")
    killed = await catalog.scalar(
        f"SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE datname = '{database}' AND pid <> pg_backend_pid()"
        ' AND query LIKE \'SELECT "id", "merchant_id"%\''
    )
    assert killed >= 1
    got = await catalog.call("GetProduct", svc.GetProductRequest(id=product.id))
    assert got == product


async def test_stopping_the_service_closes_its_read_connections(catalog: Catalog) -> None:
    product = await catalog.call("CreateProduct", svc.CreateProductRequest(name="API", description="d"))
    await catalog.call("GetProduct", svc.GetProductRequest(id=product.id))
    assert catalog.host.runtime is not None
    url = catalog.host.settings.database_url
    database = await catalog.scalar("SELECT current_database()")
    await catalog.host.stop()
    engine = create_async_engine(url)
    try:
        async with engine.connect() as conn:
            others = (
                await conn.execute(
                    sa.text("SELECT count(*) FROM pg_stat_activity WHERE datname = :db AND pid <> pg_backend_pid()"), {"db": database}
                )
            ).scalar()
    finally:
        await engine.dispose()
    assert others == 0


async def test_a_read_cancelled_mid_query_closes_its_connection(catalog: Catalog) -> None:
    reads = ReadConnections(catalog.host.settings.database_url, 1)
    try:
        assert await reads.fetch_one("SELECT 1", ()) == (1,)
        (first,) = reads._idle
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(reads.fetch_one("SELECT pg_sleep(5)", ()), 0.2)
        # the one slot is free again, and its next read runs on a new connection, not on the cancelled one
        assert await asyncio.wait_for(reads.fetch_one("SELECT 2", ()), 2) == (2,)
        (now,) = reads._idle
        assert now is not first and first.closed
    finally:
        await reads.close()
    assert reads._idle == []
