"""The sandbox processor's JSON: rows -> the objects its API answers and its webhooks carry
(camelCase, amounts in integer minor units, instants in ISO 8601 UTC)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import orjson

from services.sandbox.store import Row


def instant(value: datetime | None) -> str | None:
    if value is None:
        return None
    return value.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def card(row: Row) -> dict[str, Any]:
    return {"brand": row["brand"], "last4": row["last4"], "expMonth": row["exp_month"], "expYear": row["exp_year"]}


def token(row: Row) -> dict[str, Any]:
    return {
        "id": row["id"],
        "object": "token",
        "card": card(row),
        "created": instant(row["created_at"]),
        "used": row["used_at"] is not None,
    }


def payment_method(row: Row) -> dict[str, Any]:
    return {
        "id": row["id"],
        "object": "payment_method",
        "customer": row["customer"],
        "card": card(row),
        "created": instant(row["created_at"]),
    }


def charge(row: Row) -> dict[str, Any]:
    return {
        "id": row["id"],
        "object": "charge",
        "account": row["account"],
        "idempotencyKey": row["idempotency_key"],
        "status": row["status"],
        "amount": row["amount"],
        "amountRefunded": row["amount_refunded"],
        "currency": row["currency"],
        "paymentMethod": row["payment_method_id"],
        "offSession": row["off_session"],
        "failureCode": row["failure_code"],
        "declineCode": row["decline_code"],
        "failureMessage": row["failure_message"],
        "card": card(row),
        "metadata": row["metadata"],
        "created": instant(row["created_at"]),
        "sequence": row["event_seq"],
    }


def refund(row: Row) -> dict[str, Any]:
    return {
        "id": row["id"],
        "object": "refund",
        "account": row["account"],
        "idempotencyKey": row["idempotency_key"],
        "charge": row["charge_id"],
        "amount": row["amount"],
        "currency": row["currency"],
        "status": row["status"],
        "created": instant(row["created_at"]),
        "sequence": row["event_seq"],
    }


def event_body(event_id: str, event_type: str, created: datetime, sequence: int, obj: dict[str, Any]) -> str:
    """The JSON body of a webhook (stored once, sent and signed as is by every delivery)."""
    return orjson.dumps(
        {"id": event_id, "object": "event", "type": event_type, "created": instant(created), "sequence": sequence, "data": {"object": obj}}
    ).decode()


def delivery(row: Row) -> dict[str, Any]:
    """A delivery joined with its event (the test-only records)."""
    return {
        "id": row["id"],
        "eventId": row["event_id"],
        "type": row["type"],
        "objectId": row["object_id"],
        "sequence": row["sequence"],
        "url": row["url"],
        "kind": row["kind"],
        "status": row["status"],
        "attempts": row["attempts"],
        "lastStatus": row["last_status"],
        "lastError": row["last_error"],
        "dueAt": instant(row["due_at"]),
        "deliveredAt": instant(row["delivered_at"]),
        "created": instant(row["created_at"]),
    }
