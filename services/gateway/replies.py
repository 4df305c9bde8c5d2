"""What every gateway route answers with: a status, a body and headers (``Reply``), the
Paygentic error body (``message``, ``error``, ``code``, ``details``), and reading a request
body within a size limit. The REST API (app.py), the hosted checkout pages
(checkout/pages.py) and the processor webhooks (webhooks.py) share these."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import orjson

from libs.core.errors import InvalidArgument

Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]

MAX_BODY_BYTES = 1 << 20
JSON = b"application/json"
# HTTP status -> Paygentic `error` category (the status of a service's error comes from
# libs.core.errors.HTTP_STATUS)
CATEGORY = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    409: "conflict",
    413: "payload_too_large",
    415: "unsupported_media_type",
    422: "unprocessable_entity",
    429: "rate_limited",
    431: "request_header_fields_too_large",
    499: "cancelled",
    500: "internal_error",
    501: "not_implemented",
    503: "service_unavailable",
    504: "timeout",
}


def error_body(status: int, message: str, error: str, code: str, details: dict[str, Any] | None = None) -> dict[str, Any]:
    body: dict[str, Any] = {"message": message, "error": error, "code": code}
    if details:
        body["details"] = details
    return body


@dataclass
class Reply:
    status: int
    body: bytes | None
    headers: list[tuple[bytes, bytes]] = field(default_factory=list)
    # sent with a body; the hosted pages answer text/html, their scripts and styles too
    content_type: bytes = JSON


def error_reply(
    status: int, code: str, message: str, field_name: str | None = None, headers: list[tuple[bytes, bytes]] | None = None
) -> Reply:
    details = {"field": field_name} if field_name else None
    return Reply(status, to_json(error_body(status, message, CATEGORY.get(status, "error"), code, details)), headers or [])


class HttpError(Exception):
    """A request refused before it reaches a service (HTTP-level: 405, 413, 415 ...)."""

    def __init__(self, reply: Reply) -> None:
        super().__init__(reply.status)
        self.reply = reply


class ClientGone(Exception):
    """The client disconnected before its request was answered."""


def to_json(value: Any) -> bytes:
    return orjson.dumps(value)


def check_json_media_type(content_type: str | None, *, required: bool = False) -> None:
    """A JSON endpoint takes JSON: an absent Content-Type is read as JSON (curl -d, old
    clients) unless ``required``, any other media type is 415."""
    if content_type is None and not required:
        return
    media = (content_type or "").split(";", 1)[0].strip().lower()
    if media == "application/json" or (media.startswith("application/") and media.endswith("+json")):
        return
    raise HttpError(
        error_reply(
            415, "UNSUPPORTED_MEDIA_TYPE", f"the body must be application/json, not {media or 'an empty media type'!r}", "Content-Type"
        )
    )


def parse_json_object(raw: bytes) -> dict[str, Any]:
    """The body as a JSON object (InvalidArgument INVALID_JSON otherwise)."""
    try:
        parsed = orjson.loads(raw)
    except json.JSONDecodeError as exc:
        raise InvalidArgument("body", f"the body is not valid JSON: {exc.msg} at position {exc.pos}", reason="INVALID_JSON") from exc
    if not isinstance(parsed, dict):
        raise InvalidArgument("body", "the body must be a JSON object", reason="INVALID_JSON")
    return parsed


def _too_large(limit: int) -> HttpError:
    return HttpError(error_reply(413, "BODY_TOO_LARGE", f"the body is larger than {limit} bytes", "body"))


async def read_body(receive: Receive, headers: dict[str, str], limit: int = MAX_BODY_BYTES) -> bytes:
    """The whole body, or 413 as soon as it is known to exceed ``limit`` bytes."""
    declared = headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise _too_large(limit)
    chunks = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientGone
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise _too_large(limit)
        chunks.append(chunk)
        if not message.get("more_body"):
            return b"".join(chunks)


async def respond(send: Send, reply: Reply) -> None:
    payload = reply.body or b""
    headers = [(b"content-length", str(len(payload)).encode()), *reply.headers]
    if reply.body is not None:
        headers.append((b"content-type", reply.content_type))
    await send({"type": "http.response.start", "status": reply.status, "headers": headers})
    await send({"type": "http.response.body", "body": payload})
