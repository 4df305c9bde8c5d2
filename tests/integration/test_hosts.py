"""One service host in-process on its real migrations (the ``start_host`` fixture): time
comes from the clock it is given, and a service's RPCs that are not built yet answer
UNIMPLEMENTED, through the gateway as 501 with the JSON error body."""

from __future__ import annotations

import importlib
import re
from datetime import UTC, datetime, timedelta
from typing import Any

import grpc
import httpx
import pytest
from accrue.catalog.v1 import catalog_service_pb2 as catalog
from accrue.catalog.v1 import catalog_service_pb2_grpc
from google.protobuf import descriptor_pool, message_factory
from google.protobuf.descriptor import MethodDescriptor

from libs.core.clock import FakeClock
from libs.infra.proto_time import from_timestamp
from libs.infra.service import ServiceDefinition
from libs.testing.fixtures import StartHost
from libs.testing.tokens import merchant_metadata
from services.gateway import store as gateway_store
from services.gateway.host import DEFINITION as GATEWAY
from services.gateway.transcoding import build_routes
from services.registry import SERVICES, definition

MERCHANT = "org_hosts000000001"


async def test_a_host_takes_its_time_from_the_clock_it_is_given(start_host: StartHost) -> None:
    clock = FakeClock(datetime(2031, 5, 4, 3, 2, 1, tzinfo=UTC))
    host = await start_host(definition("catalog"), clock=clock)
    async with grpc.aio.insecure_channel(f"127.0.0.1:{host.port}") as channel:
        stub = catalog_service_pb2_grpc.CatalogServiceStub(channel)
        metadata = [merchant_metadata(MERCHANT)]
        first = await stub.CreateProduct(catalog.CreateProductRequest(name="Clocked", description="d"), metadata=metadata)
        clock.advance(timedelta(days=3))
        second = await stub.CreateProduct(catalog.CreateProductRequest(name="Later", description="d"), metadata=metadata)
    assert from_timestamp(first.create_time) == datetime(2031, 5, 4, 3, 2, 1, tzinfo=UTC)
    assert from_timestamp(second.create_time) == datetime(2031, 5, 7, 3, 2, 1, tzinfo=UTC)


def _not_built(service: ServiceDefinition) -> list[MethodDescriptor]:
    """The service's RPCs its servicer (services/<name>/server.py) does not define: the
    generated base's, which answer UNIMPLEMENTED."""
    (full_name,) = service.grpc_services
    proto = descriptor_pool.Default().FindServiceByName(full_name)
    generated = importlib.import_module(proto.file.name.removesuffix(".proto").replace("/", ".") + "_pb2_grpc")
    base = getattr(generated, f"{proto.name}Servicer")
    importlib.import_module(f"services.{service.name}.server")
    (servicer,) = [cls for cls in base.__subclasses__() if cls.__module__ == f"services.{service.name}.server"]
    defined = {name for cls in servicer.__mro__[: servicer.__mro__.index(base)] for name in vars(cls)}
    return [method for method in proto.methods if method.name not in defined]


NOT_BUILT = [(service, methods) for service in SERVICES if (methods := _not_built(service))]


def test_every_rpc_of_every_service_is_built() -> None:
    assert [(service.name, [m.name for m in methods]) for service, methods in NOT_BUILT] == []


async def test_an_rpc_not_built_answers_unimplemented_and_the_gateway_501(start_host: StartHost, monkeypatch: pytest.MonkeyPatch) -> None:
    # every RPC is built today: take one away to see what an unbuilt one answers
    from services.catalog.server import CatalogServicer

    monkeypatch.delattr(CatalogServicer, "ListProducts")
    service = definition("catalog")
    methods = _not_built(service)
    assert [m.name for m in methods] == ["ListProducts"]
    host = await start_host(service)
    async with grpc.aio.insecure_channel(f"127.0.0.1:{host.port}") as channel:
        for method in methods:
            path = f"/{method.containing_service.full_name}/{method.name}"
            request_class: Any = message_factory.GetMessageClass(method.input_type)
            response_class: Any = message_factory.GetMessageClass(method.output_type)
            call = channel.unary_unary(
                path, request_serializer=lambda m: m.SerializeToString(), response_deserializer=response_class.FromString
            )
            with pytest.raises(grpc.aio.AioRpcError) as raised:
                await call(request_class(), metadata=[merchant_metadata(MERCHANT)], timeout=10)
            assert raised.value.code() == grpc.StatusCode.UNIMPLEMENTED, path
            assert raised.value.details() == f"{path} is not built yet"

    gateway = await start_host(GATEWAY, **{f"{service.name}_addr": f"127.0.0.1:{host.port}"})
    assert gateway.runtime is not None
    merchant = await gateway_store.create_merchant(gateway.runtime.db.engine, "Not built")
    routes = [r for r in build_routes() if r.backend == service.name and r.method in methods]
    assert routes, f"{service.name}: no REST route reaches what is not built"
    async with httpx.AsyncClient(
        base_url=f"http://127.0.0.1:{gateway.port}", headers={"Authorization": f"Bearer {merchant.api_key}"}
    ) as http:
        for route in routes:
            url = re.sub(r"\{[^}]+\}", "x_1", route.openapi_path)
            response = await http.request(route.http_method, url, json={} if route.body else None)
            assert response.status_code == 501, (url, response.text)
            assert response.json() == {
                "message": f"{route.http_method} {route.openapi_path} is not built yet",
                "error": "not_implemented",
                "code": "UNIMPLEMENTED",
            }
