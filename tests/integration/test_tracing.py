"""One REST create yields one trace: gateway -> catalog -> outbox publish -> consumer."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import httpx
import pytest
from opentelemetry.trace import SpanKind

from libs.infra import messaging
from libs.infra.service import Host
from libs.infra.settings import ServiceSettings
from libs.testing.events import CountingConsumer, consumer_database
from libs.testing.fixtures import Infra
from services.catalog.app import DEFINITION
from services.catalog.events import STREAM
from services.gateway import store as gateway_store
from services.gateway.host import GatewayHost
from services.gateway.settings import GatewaySettings

pytestmark = pytest.mark.integration
SUBJECT = "accrue.catalog.v1.product.created"


async def test_rest_create_is_one_trace_through_grpc_outbox_and_consumer(infra: Infra, span_exporter: Any) -> None:
    catalog = Host(DEFINITION, ServiceSettings(database_url=infra.new_database_url("trace_catalog"), nats_url=infra.nats_url, grpc_port=0))
    await catalog.start()
    gateway = GatewayHost(
        GatewaySettings(
            database_url=infra.new_database_url("trace_gateway"), http_port=0, backend_addrs={"catalog": f"127.0.0.1:{catalog.port}"}
        )
    )
    await gateway.start()
    assert gateway.engine is not None
    merchant = await gateway_store.create_merchant(gateway.engine, f"Trace {uuid.uuid4().hex[:6]}")
    nc = await messaging.connect(infra.nats_url, "test-trace")
    consumer = CountingConsumer(
        await consumer_database(infra.new_database_url("trace_consumer")),
        nc,
        stream=STREAM,
        filter_subject=SUBJECT,
        accept=lambda event: event.merchant_id == merchant.merchant_id,
    )
    consumer.start()
    try:
        span_exporter.clear()
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{gateway.port}") as client:
            response = await client.post(
                "/v0/products",
                json={"merchantId": merchant.merchant_id, "name": "Traced", "description": "one trace"},
                headers={"Authorization": f"Bearer {merchant.api_key}"},
            )
        assert response.status_code == 201, response.text
        await asyncio.wait_for(consumer.seen.wait(), 10)
        await asyncio.sleep(0.2)  # the consumer span ends just after the handler returns

        spans = span_exporter.get_finished_spans()
        (root,) = [s for s in spans if s.name == "POST /v0/products" and s.kind == SpanKind.SERVER]
        trace_id = root.context.trace_id
        in_trace = {s.name + "|" + s.kind.name: s for s in spans if s.context.trace_id == trace_id}
        grpc_method = "/accrue.catalog.v1.CatalogService/CreateProduct"
        client_span = in_trace[f"{grpc_method}|CLIENT"]
        server_span = in_trace[f"{grpc_method}|SERVER"]
        publish = in_trace[f"{SUBJECT} publish|PRODUCER"]
        process = in_trace[f"{SUBJECT} process|CONSUMER"]

        assert client_span.parent is not None and client_span.parent.span_id == root.context.span_id
        assert server_span.parent is not None and server_span.parent.span_id == client_span.context.span_id
        # the outbox row carried the catalog span's context across the commit
        assert publish.parent is not None and publish.parent.span_id == server_span.context.span_id
        # and the NATS headers carried the publish span's context to the consumer
        assert process.parent is not None and process.parent.span_id == publish.context.span_id
        assert process.attributes is not None and process.attributes["messaging.message.id"] == consumer.handled[0].event_id
    finally:
        await consumer.stop()
        await nc.close()
        await gateway.stop()
        await catalog.stop()
