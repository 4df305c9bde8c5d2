"""Issue 8 items 1, 2 and 5 over the real mesh: a gRPC call proves its merchant with a
token the gateway signed (forged, foreign, expired, absent and unknown-merchant ones are
refused, over unary and stream RPCs), internal callers exchange an API key for one, and
every service answers health Watch and reflection v1 and v1alpha."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import grpc
import httpx
import pytest
from accrue.catalog.v1 import catalog_service_pb2 as catalog
from accrue.catalog.v1 import catalog_service_pb2_grpc
from accrue.metering.v1 import metering_service_pb2 as svc
from accrue.metering.v1 import metering_service_pb2_grpc
from google.protobuf import descriptor_pool, message_factory
from google.protobuf.message import Message
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2

from libs.infra.context import MERCHANT_METADATA_KEY
from libs.infra.grpc_errors import decode_rpc_error
from libs.infra.runner import Mesh
from libs.infra.tokens import TokenSigner, generate_keypair
from libs.testing.fixtures import MerchantClient
from libs.testing.tokens import merchant_token
from services.registry import SERVICES

pytestmark = pytest.mark.e2e


def _exchange(merchant: MerchantClient) -> str:
    answer = httpx.post(f"{merchant.base_url}/v0/internal/tokens", headers=merchant.headers, timeout=10)
    assert answer.status_code == 201, answer.text
    body = answer.json()
    assert body["merchantId"] == merchant.merchant_id and body["expiresAt"].endswith("Z")
    return f"Bearer {body['token']}"


@pytest.fixture
def catalog_stub(mesh: Mesh) -> Iterator[catalog_service_pb2_grpc.CatalogServiceStub]:
    with grpc.insecure_channel(f"127.0.0.1:{mesh.processes['catalog'].port}") as channel:
        yield catalog_service_pb2_grpc.CatalogServiceStub(channel)


def test_an_api_key_exchanged_for_a_token_acts_for_its_merchant_only(
    catalog_stub: catalog_service_pb2_grpc.CatalogServiceStub, merchant_a: MerchantClient, merchant_b: MerchantClient
) -> None:
    token_a, token_b = _exchange(merchant_a), _exchange(merchant_b)
    product = catalog_stub.CreateProduct(
        catalog.CreateProductRequest(name="Tokened", description="a"), metadata=[("authorization", token_a)]
    )
    assert product.merchant_id == merchant_a.merchant_id
    # B's token, with A's id in the old header: B's view, which has no such product
    as_b = [("authorization", token_b), (MERCHANT_METADATA_KEY, merchant_a.merchant_id)]
    listed_b = catalog_stub.ListProducts(catalog.ListProductsRequest(limit=100), metadata=as_b)
    assert product.id not in {p.id for p in listed_b.data} and all(p.merchant_id == merchant_b.merchant_id for p in listed_b.data)
    with pytest.raises(grpc.RpcError) as caught:
        catalog_stub.GetProduct(catalog.GetProductRequest(id=product.id), metadata=as_b)
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND
    listed_a = catalog_stub.ListProducts(catalog.ListProductsRequest(limit=100), metadata=[("authorization", token_a)])
    assert product.id in {p.id for p in listed_a.data}
    # and through REST, as ever
    assert httpx.get(f"{merchant_a.base_url}/v0/products/{product.id}", headers=merchant_a.headers).status_code == 200


def test_a_call_without_a_valid_token_is_refused(
    catalog_stub: catalog_service_pb2_grpc.CatalogServiceStub, merchant_a: MerchantClient
) -> None:
    create = catalog.CreateProductRequest(name="Nope", description="x")
    stranger = TokenSigner.from_text(generate_keypair().signing_key).mint(merchant_a.merchant_id).value
    genuine = _exchange(merchant_a).removeprefix("Bearer ")
    other = merchant_token("org_doesnotexist").value
    forged = other.rsplit(".", 1)[0] + "." + genuine.rsplit(".", 1)[1]  # another payload under A's signature
    cases = {
        "MERCHANT_TOKEN_REQUIRED": [(MERCHANT_METADATA_KEY, "org_doesnotexist")],
        "MERCHANT_TOKEN_INVALID": [("authorization", f"Bearer {stranger}")],
        "MERCHANT_TOKEN_EXPIRED": [("authorization", f"Bearer {merchant_token(merchant_a.merchant_id, ttl_seconds=-60).value}")],
    }
    cases_forged = [("authorization", f"Bearer {forged}")]
    for reason, metadata in [*cases.items(), ("MERCHANT_TOKEN_INVALID", cases_forged)]:
        for call, request in ((catalog_stub.CreateProduct, create), (catalog_stub.ListProducts, catalog.ListProductsRequest())):
            with pytest.raises(grpc.RpcError) as caught:
                call(request, metadata=metadata)
            assert decode_rpc_error(caught.value).reason == reason, metadata


def test_an_unknown_merchant_cannot_get_a_token(mesh: Mesh) -> None:
    for headers in ({"Authorization": "Bearer sk_test_doesnotexist"}, {"Authorization": "org_doesnotexist"}, {}):
        answer = httpx.post(f"{mesh.gateway_url}/v0/internal/tokens", headers=headers, timeout=10)
        assert answer.status_code == 401 and answer.json()["code"] == "UNAUTHENTICATED"
    assert httpx.get(f"{mesh.gateway_url}/v0/internal/tokens", timeout=10).status_code == 405


def test_the_ingest_stream_needs_a_valid_token_too(mesh: Mesh, merchant_a: MerchantClient) -> None:
    stranger = TokenSigner.from_text(generate_keypair().signing_key).mint(merchant_a.merchant_id).value
    with grpc.insecure_channel(f"127.0.0.1:{mesh.processes['metering'].port}") as channel:
        stub = metering_service_pb2_grpc.MeteringServiceStub(channel)
        for metadata, reason in (
            ([(MERCHANT_METADATA_KEY, merchant_a.merchant_id)], "MERCHANT_TOKEN_REQUIRED"),
            ([("authorization", f"Bearer {stranger}")], "MERCHANT_TOKEN_INVALID"),
        ):
            with pytest.raises(grpc.RpcError) as caught:
                list(
                    stub.StreamIngestEvents(iter([svc.StreamIngestEventsRequest(batch=svc.BatchIngestEventsRequest())]), metadata=metadata)
                )
            assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED
            assert decode_rpc_error(caught.value).reason == reason
        # with A's token the stream reaches the handler, which judges the (empty) batch
        with pytest.raises(grpc.RpcError) as caught:
            list(
                stub.StreamIngestEvents(
                    iter([svc.StreamIngestEventsRequest(batch=svc.BatchIngestEventsRequest())]),
                    metadata=[("authorization", _exchange(merchant_a))],
                )
            )
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_health_watch_answers_serving_on_every_service(mesh: Mesh) -> None:
    async def watch(port: int) -> int:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            call = health_pb2_grpc.HealthStub(channel).Watch(health_pb2.HealthCheckRequest(service=""), timeout=10)
            first = await call.read()
            call.cancel()
            assert isinstance(first, health_pb2.HealthCheckResponse)
            return int(first.status)

    statuses = {d.name: asyncio.run(watch(mesh.processes[d.name].port)) for d in SERVICES}
    assert set(statuses.values()) == {health_pb2.HealthCheckResponse.SERVING}, statuses


def _v1_classes() -> tuple[type[Message], type[Message]]:
    """grpc.reflection.v1's request and response, as a v1 client has them (the server puts
    the v1 file in this process's pool when it starts; built here the same way)."""
    from libs.infra.grpc_server import _reflection_v1_descriptor

    _reflection_v1_descriptor()
    pool = descriptor_pool.Default()
    request = message_factory.GetMessageClass(pool.FindMessageTypeByName("grpc.reflection.v1.ServerReflectionRequest"))
    response = message_factory.GetMessageClass(pool.FindMessageTypeByName("grpc.reflection.v1.ServerReflectionResponse"))
    return request, response


@pytest.mark.parametrize("version", ["v1", "v1alpha"])
def test_reflection_lists_and_describes_the_services(mesh: Mesh, version: str) -> None:
    classes: tuple[Any, Any] = (
        _v1_classes() if version == "v1" else (reflection_pb2.ServerReflectionRequest, reflection_pb2.ServerReflectionResponse)
    )
    request_class, response_class = classes
    with grpc.insecure_channel(f"127.0.0.1:{mesh.processes['catalog'].port}") as channel:
        call = channel.stream_stream(
            f"/grpc.reflection.{version}.ServerReflection/ServerReflectionInfo",
            request_serializer=lambda m: m.SerializeToString(),
            response_deserializer=response_class.FromString,
        )
        answers = list(
            call(
                iter(
                    [
                        request_class(list_services=""),
                        request_class(file_containing_symbol="accrue.catalog.v1.CatalogService"),
                        request_class(file_containing_symbol=f"grpc.reflection.{version}.ServerReflection"),
                    ]
                ),
                timeout=10,
            )
        )
    assert [a.DESCRIPTOR.full_name for a in answers] == [f"grpc.reflection.{version}.ServerReflectionResponse"] * 3
    names = {s.name for s in answers[0].list_services_response.service}
    assert {"accrue.catalog.v1.CatalogService", "grpc.reflection.v1.ServerReflection", "grpc.reflection.v1alpha.ServerReflection"} <= names
    assert answers[1].file_descriptor_response.file_descriptor_proto and answers[2].file_descriptor_response.file_descriptor_proto
