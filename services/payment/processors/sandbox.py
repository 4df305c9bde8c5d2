"""The adapter of the sandbox card processor (services/sandbox: its own process), over
its HTTP API with httpx: the payment service's ``Processor`` (base.py) for ``sandbox``.

Build it with ``sandbox_from_env()`` (the payment service's composition root), which reads:

    ACCRUE_SANDBOX_URL              where the payment service calls it (http://127.0.0.1:8100)
    ACCRUE_SANDBOX_PUBLIC_URL       where browsers tokenize cards (default: ACCRUE_SANDBOX_URL)
    ACCRUE_SANDBOX_SECRET_KEY       server calls (Authorization: Bearer)
    ACCRUE_SANDBOX_PUBLISHABLE_KEY  the hosted page's tokenize calls
    ACCRUE_SANDBOX_WEBHOOK_SECRET   verifies its webhooks (Standard Webhooks, whsec_...)
    ACCRUE_SANDBOX_TIMEOUT_SECONDS  how long a call may take before its outcome is unknown (5)

``make run`` and the test mesh set them all (libs/infra/runner.py, services/sandbox/app.py);
unset, they are the sandbox's own dev defaults.

How errors map (base.py's rules): a refused or failed connection (nothing was sent) ->
ProcessorUnavailable; no answer in time, a connection cut mid-call, or a 5xx -> the
outcome is unknown: ProcessorTimeout (the caller finds the charge by its key later); a
4xx -> ProcessorRejected with the processor's error code. One processor account acts for
every merchant; the adapter names the merchant in ``Sandbox-Account``, which scopes
idempotency keys as a real processor's accounts do.
"""

from __future__ import annotations

import binascii
import json
from collections.abc import Callable, Mapping
from datetime import datetime
from typing import Any, TypeVar
from urllib.parse import urlsplit

import httpx
from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from services.payment.processors.base import (
    Card,
    Charge,
    ChargeSource,
    ChargeStatus,
    InvalidWebhook,
    InvalidWebhookBody,
    ProcessorRejected,
    ProcessorTimeout,
    ProcessorUnavailable,
    PublicConfig,
    Refund,
    SavedMethod,
    WebhookEvent,
)

T = TypeVar("T")
NAME = "sandbox"
# the sandbox's dev defaults (services/sandbox/settings.py; a unit test checks that they agree)
DEV_URL = "http://127.0.0.1:8100"
DEV_SECRET_KEY = "sk_test_accrue_sandbox_dev"
DEV_PUBLISHABLE_KEY = "pk_test_accrue_sandbox_dev"
DEV_WEBHOOK_SECRET = "whsec_YWNjcnVlLXNhbmRib3gtZGV2LXdlYmhvb2stc2VjcmV0"


class SandboxProcessorSettings(BaseSettings):
    """The adapter's settings: ACCRUE_SANDBOX_URL, ACCRUE_SANDBOX_PUBLIC_URL, ..."""

    model_config = SettingsConfigDict(env_prefix="ACCRUE_SANDBOX_", extra="ignore")

    url: str = DEV_URL
    public_url: str | None = None
    secret_key: str = DEV_SECRET_KEY
    publishable_key: str = DEV_PUBLISHABLE_KEY
    webhook_secret: str = DEV_WEBHOOK_SECRET
    timeout_seconds: float = Field(default=5.0, gt=0, le=120)


def sandbox_from_env() -> SandboxProcessor:
    """The sandbox adapter configured from the environment (ACCRUE_SANDBOX_*)."""
    return SandboxProcessor.from_env()


class SandboxProcessor:
    """``Processor`` for the sandbox card processor. One per process: it holds a pooled
    HTTP client (``aclose`` releases it)."""

    name = NAME

    @classmethod
    def from_env(cls) -> SandboxProcessor:
        """The adapter configured from the environment (ACCRUE_SANDBOX_*): ``sandbox_from_env``."""
        return cls(SandboxProcessorSettings())

    def __init__(self, settings: SandboxProcessorSettings, *, transport: httpx.AsyncBaseTransport | None = None) -> None:
        self.settings = settings
        self._base = settings.url.rstrip("/")
        self._public = (settings.public_url or settings.url).rstrip("/")
        self._verifier = Webhook(settings.webhook_secret)
        self._client = httpx.AsyncClient(
            base_url=self._base,
            timeout=httpx.Timeout(settings.timeout_seconds),
            headers={"authorization": f"Bearer {settings.secret_key}", "user-agent": "accrue-payment"},
            transport=transport,
        )

    def public_config(self, merchant_id: str) -> PublicConfig:
        parts = urlsplit(self._public)
        return PublicConfig(
            processor=NAME,
            tokenize_url=f"{self._public}/v1/tokens",
            publishable_key=self.settings.publishable_key,
            connect_origins=(f"{parts.scheme}://{parts.netloc}",),
        )

    async def save_payment_method(self, *, merchant_id: str, customer_ref: str, token: str) -> SavedMethod:
        body = await self._call("POST", "/v1/payment_methods", merchant_id, json_body={"token": token, "customer": customer_ref})
        try:
            return SavedMethod(ref=_text(body, "id"), card=_card(body.get("card")))
        except (KeyError, TypeError, ValueError) as exc:
            raise ProcessorTimeout(f"the sandbox processor's answer is not a payment method: {exc}") from None

    async def charge(
        self,
        *,
        merchant_id: str,
        idempotency_key: str,
        amount_minor: int,
        currency: str,
        source: ChargeSource,
        off_session: bool,
        metadata: Mapping[str, str],
        webhook_url: str | None,
    ) -> Charge:
        if (source.token is None) == (source.method_ref is None):
            raise ValueError("a charge draws on exactly one of a token and a saved method")
        payload: dict[str, Any] = {
            "amount": amount_minor,
            "currency": currency,
            "offSession": off_session,
            "metadata": dict(metadata),
        }
        if source.token is not None:
            payload["token"] = source.token
        else:
            payload["paymentMethod"] = source.method_ref
        if webhook_url is not None:
            payload["webhookUrl"] = webhook_url
        body = await self._call("POST", "/v1/charges", merchant_id, json_body=payload, idempotency_key=idempotency_key)
        return _answer(parse_charge, body)

    async def find_charge(self, *, merchant_id: str, idempotency_key: str) -> Charge | None:
        body = await self._call("GET", "/v1/charges", merchant_id, params={"idempotencyKey": idempotency_key})
        found = body.get("data")
        if not isinstance(found, list) or len(found) > 1:
            raise ProcessorTimeout("the sandbox processor's answer to a charge lookup is not one")
        return _answer(parse_charge, found[0]) if found else None

    async def refund(self, *, merchant_id: str, idempotency_key: str, charge_ref: str, amount_minor: int) -> Refund:
        body = await self._call(
            "POST", "/v1/refunds", merchant_id, json_body={"charge": charge_ref, "amount": amount_minor}, idempotency_key=idempotency_key
        )
        return _answer(parse_refund, body)

    def parse_webhook(self, headers: Mapping[str, str], body: bytes) -> WebhookEvent:
        """Verified first (InvalidWebhook), then parsed (InvalidWebhookBody): a signed body
        that is not an event (not JSON, nested too deeply, a field missing or of the wrong
        type) is refused with a plain reason, never an exception of Python's own."""
        try:
            text = body.decode("utf-8")
        except UnicodeDecodeError:
            raise InvalidWebhookBody("the body is not UTF-8 text") from None
        try:
            self._verifier.verify(text, {str(k): str(v) for k, v in headers.items()}, json_parse=False)
        except (WebhookVerificationError, ValueError, binascii.Error) as exc:
            raise InvalidWebhook(_verification_reason(exc)) from None
        try:
            return parse_event(json.loads(text))
        except RecursionError:
            raise InvalidWebhookBody("the body is nested too deeply") from None
        except json.JSONDecodeError:
            raise InvalidWebhookBody("the body is not JSON") from None
        except KeyError as exc:
            raise InvalidWebhookBody(f"the body is not a sandbox event: {_field_name(exc)} is missing") from None
        except _Malformed as exc:
            raise InvalidWebhookBody(f"the body is not a sandbox event: {exc}") from None
        except (TypeError, ValueError, AttributeError, IndexError, OverflowError):
            raise InvalidWebhookBody("the body is not a sandbox event") from None

    async def aclose(self) -> None:
        await self._client.aclose()

    async def _call(
        self,
        method: str,
        path: str,
        merchant_id: str,
        *,
        json_body: dict[str, Any] | None = None,
        params: dict[str, str] | None = None,
        idempotency_key: str | None = None,
    ) -> dict[str, Any]:
        headers = {"sandbox-account": merchant_id}
        if idempotency_key is not None:
            headers["idempotency-key"] = idempotency_key
        try:
            response = await self._client.request(method, path, json=json_body, params=params, headers=headers)
        except (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout) as exc:
            raise ProcessorUnavailable(f"the sandbox processor at {self._base} cannot be reached ({type(exc).__name__})") from None
        except httpx.TimeoutException as exc:
            raise ProcessorTimeout(f"the sandbox processor did not answer within {self.settings.timeout_seconds:g}s") from exc
        except httpx.TransportError as exc:  # the connection went away mid-call: the request may have arrived
            raise ProcessorTimeout(f"the sandbox processor's answer was cut off ({type(exc).__name__})") from exc
        try:
            body = response.json()
        except ValueError:
            body = None
        if response.status_code >= 500 or not isinstance(body, dict):
            raise ProcessorTimeout(f"the sandbox processor answered {response.status_code}: the outcome is unknown")
        if response.status_code >= 400:
            found = body.get("error")
            problem: dict[str, Any] = found if isinstance(found, dict) else {}
            code = str(problem.get("code") or f"http_{response.status_code}")
            raise ProcessorRejected(code, str(problem.get("message") or f"the sandbox processor refused the request ({code})"))
        return body


def parse_charge(body: Mapping[str, Any]) -> Charge:
    status_text = _text(body, "status")
    if status_text not in set(ChargeStatus):
        raise _Malformed("status is not processing, succeeded or failed")
    status = ChargeStatus(status_text)
    amount = body["amount"]
    if isinstance(amount, bool) or not isinstance(amount, int):
        raise _Malformed("amount is not an integer")
    return Charge(
        ref=_text(body, "id"),
        idempotency_key=_text(body, "idempotencyKey"),
        status=status,
        amount_minor=amount,
        currency=_text(body, "currency"),
        failure_code=_optional(body, "failureCode"),
        decline_code=_optional(body, "declineCode"),
        failure_message=_optional(body, "failureMessage"),
        card=_card(body["card"]) if body.get("card") is not None else None,
        created_at=_instant(body["created"]) if body.get("created") is not None else None,
    )


def parse_refund(body: Mapping[str, Any]) -> Refund:
    amount = body["amount"]
    if isinstance(amount, bool) or not isinstance(amount, int):
        raise _Malformed("amount is not an integer")
    return Refund(
        ref=_text(body, "id"),
        idempotency_key=_text(body, "idempotencyKey"),
        charge_ref=_text(body, "charge"),
        amount_minor=amount,
        status=_text(body, "status"),
    )


class _Malformed(ValueError):
    """A field of an answer or an event that is not what it should be (a plain message)."""


def parse_event(event: Any) -> WebhookEvent:
    if not isinstance(event, dict):
        raise _Malformed("the body is not an object")
    event_type = _text(event, "type")
    sequence = event["sequence"]
    if isinstance(sequence, bool) or not isinstance(sequence, int):
        raise _Malformed("sequence is not an integer")
    data = event["data"]
    if not isinstance(data, dict):
        raise _Malformed("data is not an object")
    obj = data["object"]
    if not isinstance(obj, dict):
        raise _Malformed("data.object is not an object")
    return WebhookEvent(
        id=_text(event, "id"),
        type=event_type,
        created_at=_instant(event["created"]),
        sequence=sequence,
        charge=parse_charge(obj) if event_type.startswith("charge.") else None,
        refund=parse_refund(obj) if event_type.startswith("refund.") else None,
    )


def _verification_reason(exc: Exception) -> str:
    if isinstance(exc, WebhookVerificationError):
        reason = str(exc).strip() or "no signature matches"
        return reason[0].lower() + reason[1:]
    return "the signature headers are malformed"


def _field_name(exc: KeyError) -> str:
    name = str(exc.args[0]) if exc.args else "a field"
    return name if len(name) <= 40 else name[:40] + "..."


def _answer(parse: Callable[[Mapping[str, Any]], T], body: Any) -> T:
    """A 2xx answer parsed; one that is not what it should be leaves the outcome unknown."""
    try:
        if not isinstance(body, dict):
            raise TypeError("not an object")
        return parse(body)
    except (KeyError, TypeError, ValueError) as exc:
        raise ProcessorTimeout(f"the sandbox processor's answer cannot be read ({exc})") from None


def _card(value: Any) -> Card:
    if not isinstance(value, dict):
        raise _Malformed("card is not an object")
    return Card(brand=str(value["brand"]), last4=str(value["last4"]), exp_month=int(value["expMonth"]), exp_year=int(value["expYear"]))


def _text(body: Mapping[str, Any], name: str) -> str:
    value = body[name]
    if not isinstance(value, str):
        raise _Malformed(f"{name} is not a string")
    return value


def _optional(body: Mapping[str, Any], name: str) -> str | None:
    value = body.get(name)
    return None if value is None else str(value)


def _instant(value: Any) -> datetime:
    if not isinstance(value, str):
        raise _Malformed("an instant is not a string")
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise _Malformed("an instant is not ISO 8601") from None
    if parsed.tzinfo is None:
        raise _Malformed("an instant has no offset")
    return parsed
