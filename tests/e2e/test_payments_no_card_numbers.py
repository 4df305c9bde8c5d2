"""No card number in any log, table or event: after a run that uses every test card (on
hosted pages, in setup sessions, off-session through autoCharge and retryPayment, a bad
number and a past expiry at the tokenizer), every log file the mesh wrote, every row of
every table of every database of the mesh (the sandbox processor's included; bytea
columns searched as raw bytes, so protobuf payloads in outboxes are read) and every
message of every JetStream stream (data and headers) is searched for the full numbers,
plain, spaced and dashed. None may be there.

So that a search that reads nothing cannot pass, each of the three searches must find
what this test planted where it looks: a marker in a payment's metadata (the payment
service's tables), the same marker in a meter event's data (the meter stream), this
test's payment session id in the payment service's tables and stream, and the invoice
whose slow charge timed out in the payment service's log (the attempt key it logs).
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest
from nats.errors import TimeoutError as NatsTimeoutError
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
from psycopg import sql
from sqlalchemy.engine import make_url

from libs.infra import messaging
from libs.infra.runner import Mesh
from libs.testing.billing import Catalog, advance, at
from libs.testing.fixtures import MerchantClient
from libs.testing.payments import (
    CARD_DECLINED,
    CARD_FAILS_LATER,
    CARD_INSUFFICIENT_FUNDS,
    CARD_SLOW,
    CARD_SUCCEEDS,
    TEST_CARDS,
    Sandbox,
    auto_charged,
    invoice_state,
    open_page,
    pay,
    retry_payment,
    save_card,
    spaced,
    submit,
    tokenize,
    tokenize_at,
)
from libs.testing.waiting import eventually

pytestmark = pytest.mark.e2e

BAD_LUHN = "4242424242424241"  # refused by the tokenizer: it must not be logged either


def _needles(numbers: Iterable[str]) -> dict[bytes, str]:
    """Every spelling of every number -> the number."""
    out: dict[bytes, str] = {}
    for number in numbers:
        for text in (number, spaced(number), spaced(number).replace(" ", "-")):
            out[text.encode()] = number
    return out


@dataclass
class Found:
    """needle -> the places (file, database.schema.table, stream) that hold it."""

    places: dict[bytes, set[str]] = field(default_factory=dict)
    searched: set[str] = field(default_factory=set)

    def look(self, where: str, blob: bytes, needles: Iterable[bytes]) -> None:
        self.searched.add(where)
        for needle in needles:
            if needle in blob:
                self.places.setdefault(needle, set()).add(where)

    def of(self, needle: str) -> set[str]:
        return self.places.get(needle.encode(), set())


def _search_logs(log_dir: Path, needles: list[bytes]) -> Found:
    found = Found()
    for path in sorted(log_dir.rglob("*")):
        if path.is_file():
            found.look(path.name, path.read_bytes(), needles)
    return found


def _value_bytes(value: Any) -> bytes:
    if value is None:
        return b""
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value)
    if isinstance(value, (dict, list)):
        return json.dumps(value, default=str, ensure_ascii=False).encode()
    return str(value).encode()


def _search_databases(postgres_url: str, prefix: str, needles: list[bytes]) -> Found:
    found = Found()
    server = make_url(postgres_url).set(drivername="postgresql")
    with psycopg.connect(server.set(database="postgres").render_as_string(hide_password=False), autocommit=True) as conn:
        names = [row[0] for row in conn.execute("SELECT datname FROM pg_database WHERE datname LIKE %s ORDER BY 1", (f"{prefix}\\_%",))]
    for name in names:
        with psycopg.connect(server.set(database=name).render_as_string(hide_password=False)) as conn:
            tables = conn.execute(
                "SELECT table_schema, table_name FROM information_schema.tables WHERE table_type = 'BASE TABLE' "
                "AND table_schema NOT IN ('pg_catalog', 'information_schema') ORDER BY 1, 2"
            ).fetchall()
            for schema, table in tables:
                where = f"{name}.{schema}.{table}"
                found.searched.add(where)
                with conn.cursor(name=f"scan_{uuid.uuid4().hex[:8]}") as cursor:
                    cursor.execute(sql.SQL("SELECT * FROM {}.{}").format(sql.Identifier(schema), sql.Identifier(table)))
                    while rows := cursor.fetchmany(2000):
                        found.look(where, b"\x00".join(_value_bytes(value) for row in rows for value in row), needles)
    return found


async def _search_streams(nats_url: str, needles: list[bytes]) -> Found:
    found = Found()
    nc = await messaging.connect(nats_url, "card-number-scan")
    try:
        js = nc.jetstream()
        for info in await js.streams_info():
            name = info.config.name
            assert name is not None
            found.searched.add(name)
            total = info.state.messages
            if not total:
                continue
            consumer = await js.add_consumer(
                name, ConsumerConfig(ack_policy=AckPolicy.NONE, deliver_policy=DeliverPolicy.ALL, inactive_threshold=120.0)
            )
            sub = await js.pull_subscribe_bind(consumer=consumer.name, stream=name)
            seen = 0
            try:
                while seen < total:
                    try:
                        batch = await sub.fetch(1000, timeout=5)
                    except (NatsTimeoutError, TimeoutError):
                        break
                    seen += len(batch)
                    blob = b"\x00".join(
                        msg.data + b"\x00" + json.dumps(msg.headers or {}, ensure_ascii=False).encode() + msg.subject.encode()
                        for msg in batch
                    )
                    found.look(name, blob, needles)
            finally:
                await sub.unsubscribe()
                await js.delete_consumer(name, consumer.name)
            assert seen >= total, f"stream {name}: read {seen} of {total} messages"
    finally:
        await nc.close()
    return found


def _use_every_card(client: MerchantClient, sandbox: Sandbox, marker: str) -> tuple[str, str]:
    """A run that uses every test card; (the payment session id, the invoice id) it paid."""
    # a one-off payment with the marker in its metadata: declined twice on the page, then paid
    payment = client.sdk.payments.create(amount="19.00", currency="USD", metadata={"scan": marker}, reference=marker)
    assert payment.payment_url is not None
    page = open_page(payment.payment_url)
    session_id = page.session_id
    for number in (CARD_DECLINED, CARD_INSUFFICIENT_FUNDS):
        declined = submit(open_page(payment.payment_url), tokenize(page, number))
        assert declined.json()["status"] == "pending", declined.text
    # spelled as people type them, a bad number and a past expiry at the tokenizer
    for number in TEST_CARDS:
        tokenize_at(page.tokenize_url, page.publishable_key, spaced(number))
    assert tokenize_at(page.tokenize_url, page.publishable_key, BAD_LUHN).status_code == 400
    assert tokenize_at(page.tokenize_url, page.publishable_key, CARD_SUCCEEDS, exp_year=2020).status_code == 400
    assert pay(payment.payment_url, CARD_SUCCEEDS)["status"] == "completed"
    assert {c["status"] for c in sandbox.charges_of(session_id)} == {"failed", "succeeded"}

    # saved cards charged off-session: one that declines later (autoCharge at issue), then the slow one (retryPayment)
    s = auto_charged(client, "Card scan", at("2027-11-01T00:00:00Z"), CARD_FAILS_LATER)
    bill = s.issue_invoice_1()
    assert bill.status == "PAYMENT_FAILED"
    save_card(client, s.customer_id, CARD_SLOW)
    assert retry_payment(client, bill.id).status == 202
    assert eventually(lambda: invoice_state(client, bill.id)[0], "PAID", 60) == "PAID"
    advance(client, s.clock_id, s.issue_1 + timedelta(days=1))

    # the marker in a meter event's data, too (the meter stream)
    metric = Catalog(client, s.catalog.product_id).metric()
    accepted = client.sdk.events.ingest(
        request={
            "type": metric.event_type, "source": "https://scan.test", "subject": s.customer_id, "data": {"value": 1, "note": marker},
            "timestamp": s.issue_1 + timedelta(days=1), "idempotencyKey": f"scan-{marker}",
        }
    )  # fmt: skip
    assert accepted.id is not None
    return session_id, bill.id


def test_no_card_number_in_any_log_table_or_event(mesh: Mesh, merchant_a: MerchantClient) -> None:
    sandbox = Sandbox.of(mesh)
    marker = f"card-scan-marker-{uuid.uuid4().hex}"
    session_id, invoice_id = _use_every_card(merchant_a, sandbox, marker)
    cards = _needles([*TEST_CARDS, BAD_LUHN])
    planted = [marker.encode(), session_id.encode(), invoice_id.encode()]
    needles = [*cards, *planted]

    logs = _search_logs(mesh.state_dir / "logs", needles)
    tables = _search_databases(mesh.postgres_url, mesh.db_prefix, needles)
    streams = asyncio.run(_search_streams(mesh.nats_url, needles))

    # the searches read what they were meant to read
    assert {"payment.log", "gateway.log"} <= logs.searched, logs.searched
    assert any("sandbox" in name for name in logs.searched), logs.searched
    assert any(".sandbox." in where or where.startswith(f"{mesh.db_prefix}_sandbox.") for where in tables.searched), sorted(tables.searched)
    assert {"ACCRUE_PAYMENT", "ACCRUE_METER", "ACCRUE_INVOICING"} <= streams.searched, streams.searched
    assert any(where.startswith(f"{mesh.db_prefix}_payment.") for where in tables.of(marker)), tables.places
    assert any(where.startswith(f"{mesh.db_prefix}_payment.") for where in tables.of(session_id)), tables.places
    assert "ACCRUE_METER" in streams.of(marker), streams.places
    assert "ACCRUE_PAYMENT" in streams.of(session_id), streams.places
    # the slow card's charge timed out: logged with its attempt key (<invoice>:retry:<n>)
    assert "payment.log" in logs.of(invoice_id), logs.places

    # and no card number anywhere
    leaks = {
        f"{cards[needle]} as {needle.decode()!r}": sorted(places)
        for found in (logs, tables, streams)
        for needle, places in found.places.items()
        if needle in cards
    }
    assert leaks == {}, leaks
