"""Hosted checkout pages: ``/checkout/{merchant_id}/{session_id}``.

The URL is the capability (a session id has 95 random bits): no API key. The gateway
checks the merchant named in the path is one its database knows, mints a token for it
as it does for API calls and asks payment.GetCheckout; another merchant's session is
NOT_FOUND there, and a 404 page here, the same page as an unknown session.

The card never reaches Accrue: the form's fields have no ``name`` and the form never
submits itself (``form-action 'none'``); the page's script (static/checkout.js) posts the
card to the processor's tokenize endpoint (``Checkout.tokenize_url``, the only other
origin the Content-Security-Policy lets it connect to) and sends the gateway only the
token, with the render's nonce, to ``.../submit`` (payment.CompleteCheckout: a double
submit of one render is one attempt). ``.../status`` answers the session's state as JSON
while an outcome is pending.

Everything the merchant wrote (its name, the lines, the label) is escaped by Jinja2's
autoescaping; redirect URLs are used only when they are http(s). Every answer is
``Cache-Control: no-store`` (a page shows a session's state, and a session id is a
secret), ``Referrer-Policy: no-referrer`` (leaving the page must not hand the URL on) and
``X-Content-Type-Options: nosniff``.
"""

from __future__ import annotations

import hashlib
import re
import secrets
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal, InvalidOperation, localcontext
from pathlib import Path
from typing import Any, Final
from urllib.parse import parse_qs, urlsplit

from accrue.payment.v1 import payment_service_pb2 as pb
from jinja2 import Environment, FileSystemLoader, StrictUndefined

from libs.core.errors import DomainError, ErrorCode, InvalidArgument, http_status
from libs.core.money import currency_exponent
from libs.core.request_rules import is_card_token, is_page_nonce
from libs.infra.logging import get_logger
from services.gateway.directory import MerchantDirectory
from services.gateway.payments import PaymentBackend
from services.gateway.replies import (
    CATEGORY,
    Receive,
    Reply,
    check_json_media_type,
    error_body,
    error_reply,
    parse_json_object,
    read_body,
    to_json,
)

log = get_logger(__name__)

PREFIX: Final = "/checkout/"
PAGE: Final = "/checkout/{merchant_id}/{session_id}"
SUBMIT: Final = PAGE + "/submit"
STATUS: Final = PAGE + "/status"
ASSET: Final = "/checkout/assets/{name}"
# a submit is a token and a nonce
SUBMIT_MAX_BYTES: Final = 4096

_HERE = Path(__file__).parent
_PAGE_PATH = re.compile(r"/checkout/(?P<merchant>[A-Za-z0-9_-]{1,128})/(?P<session>ps_[A-Za-z0-9]{1,64})(?:/(?P<action>submit|status))?")
_ASSET_PATH = re.compile(r"/checkout/assets/(?P<name>[a-z0-9_-]{1,64}\.(?:js|css))")
_SYMBOLS: Final = {"USD": "$", "EUR": "€", "GBP": "£", "AUD": "A$", "CAD": "CA$", "JPY": "¥"}
_WHAT: Final = {"subscription": "Subscription", "invoice": "Invoice", "payment": "Payment", "topup": "Credits"}
_SECURITY_HEADERS: Final = [
    (b"cache-control", b"no-store"),
    (b"referrer-policy", b"no-referrer"),
    (b"x-content-type-options", b"nosniff"),
]
_HTML: Final = b"text/html; charset=utf-8"


def _environment() -> Environment:
    env = Environment(
        loader=FileSystemLoader(_HERE / "templates"),
        autoescape=True,  # every template, whatever its name: merchant text is never markup
        undefined=StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    return env


@dataclass(frozen=True)
class Asset:
    body: bytes
    content_type: bytes
    version: str


def _assets() -> dict[str, Asset]:
    types = {".js": b"text/javascript; charset=utf-8", ".css": b"text/css; charset=utf-8"}
    found: dict[str, Asset] = {}
    for path in sorted((_HERE / "static").iterdir()):
        if path.suffix in types:
            body = path.read_bytes()
            found[path.name] = Asset(body, types[path.suffix], hashlib.sha256(body).hexdigest()[:12])
    return found


# --- what a page shows ------------------------------------------------------------------


def format_money(amount: str, currency: str) -> str:
    """A decimal string for humans: "$1,234.50" (the currency's own places). Text that is
    no decimal is shown as it came, with the code."""
    try:
        value = Decimal(amount)
        places = currency_exponent(currency)
    except (InvalidOperation, DomainError, ValueError):
        return f"{amount} {currency}".strip()
    if not value.is_finite():
        return f"{amount} {currency}".strip()
    with localcontext() as exact:
        exact.prec = max(exact.prec, len(value.as_tuple().digits) + places + 2)  # any size quantizes exactly
        whole_minor = value == value.quantize(Decimal(1).scaleb(-places))
    text = f"{abs(value):,.{places}f}" if whole_minor else f"{abs(value):,f}"
    sign = "-" if value < 0 else ""
    symbol = _SYMBOLS.get(currency)
    return f"{sign}{symbol}{text}" if symbol else f"{sign}{text} {currency}"


def _quantity(text: str) -> str | None:
    """A line's quantity when it says something ("3", "1,500"): none for 1 or nothing."""
    try:
        value = Decimal(text)
    except (InvalidOperation, ValueError):
        return text or None
    if not value.is_finite() or value == 1:
        return None
    normalized = value.normalize()
    return f"{normalized:,f}" if normalized == normalized.to_integral_value() else f"{normalized:f}"


def safe_url(url: str | None) -> str | None:
    """The URL if a browser may be sent there (http or https with a host), else None: a
    ``javascript:`` URL must never become a link or a redirect."""
    if not url:
        return None
    try:
        parts = urlsplit(url)
    except ValueError:
        return None
    return url if parts.scheme in ("http", "https") and parts.netloc else None


def origin_of(url: str) -> str | None:
    """scheme://host[:port] of an http(s) URL, what a CSP source names."""
    if safe_url(url) is None:
        return None
    parts = urlsplit(url)
    if not re.fullmatch(r"[A-Za-z0-9.:\[\]-]+", parts.netloc):  # no user info, nothing a CSP could misread
        return None
    return f"{parts.scheme}://{parts.netloc}"


def _when(value: datetime | None) -> str | None:
    if value is None:
        return None
    return value.astimezone(UTC).strftime("%d %b %Y, %H:%M UTC")


@dataclass(frozen=True)
class Line:
    description: str
    amount: str
    quantity: str | None


@dataclass(frozen=True)
class PageView:
    """Everything a template reads; built from the Checkout and the merchant's name."""

    merchant_name: str
    merchant_initial: str
    mode: str  # payment | setup
    # form (takes a card) | processing | completed | expired | cancelled | failed | closed
    state: str
    what: str
    amount: str
    lines: list[Line]
    failure_message: str | None
    success_url: str | None
    failure_url: str | None
    test_mode: bool
    expires_at: str | None
    saved_card: str | None
    tokenize_url: str
    publishable_key: str
    page_url: str
    submit_url: str
    status_url: str
    nonce: str
    csp_nonce: str
    assets: dict[str, str] = field(default_factory=dict)

    @property
    def title(self) -> str:
        if self.mode == "setup":
            return {"completed": "Card saved", "processing": "Saving your card"}.get(self.state, "Save a card")
        return {"completed": "Paid", "processing": "Processing your payment"}.get(self.state, "Pay")


def _state(status: str) -> str:
    if status == "pending":
        return "form"  # a declined card on the page leaves the session payable with another
    # failed: too many declined cards (card testing); the session takes no more
    if status in ("processing", "completed", "expired", "cancelled", "failed"):
        return status
    return "closed"


def page_view(checkout: pb.Checkout, merchant_name: str, merchant_id: str, *, nonce: str, csp_nonce: str) -> PageView:
    session = checkout.session
    mode = checkout.mode or session.mode or "payment"
    base = f"/checkout/{merchant_id}/{session.id}"
    saved = None
    if checkout.HasField("saved_method") and checkout.saved_method.last4:
        brand = (checkout.saved_method.brand or "card").capitalize()
        saved = f"{brand} ending in {checkout.saved_method.last4}"
    what = session.entity_label or (_WHAT.get(session.entity_type, "Payment") if mode == "payment" else "Card for future payments")
    name = merchant_name.strip() or merchant_id
    return PageView(
        merchant_name=name,
        merchant_initial=name[:1].upper(),
        mode=mode,
        state=_state(session.status),
        what=what,
        amount=format_money(session.amount, session.currency) if session.amount else "",
        lines=[Line(line.description, format_money(line.amount, session.currency), _quantity(line.quantity)) for line in checkout.lines],
        failure_message=(checkout.failure_message or _failure_text(checkout.failure_code)) if checkout.failure_code else None,
        success_url=safe_url(checkout.success_redirect_url),
        failure_url=safe_url(checkout.failure_redirect_url),
        test_mode=checkout.processor == "sandbox",
        expires_at=_when(session.expires_at.ToDatetime(UTC)) if session.HasField("expires_at") else None,
        saved_card=saved,
        tokenize_url=checkout.tokenize_url,
        publishable_key=checkout.publishable_key,
        page_url=base,
        submit_url=f"{base}/submit",
        status_url=f"{base}/status",
        nonce=nonce,
        csp_nonce=csp_nonce,
    )


def _failure_text(code: str) -> str:
    return {
        "card_declined": "Your card was declined. Try another card.",
        "insufficient_funds": "Your card has insufficient funds. Try another card.",
        "expired_card": "Your card has expired. Try another card.",
        "incorrect_cvc": "The security code is incorrect.",
        "processing_error": "The card could not be processed. Try again.",
    }.get(code, "The payment did not go through. Try another card.")


def outcome_json(checkout: pb.Checkout, *, nonce: str | None) -> dict[str, Any]:
    """What submit and status answer: the session's state, the failure if the last attempt
    failed, where to send the customer, and a fresh nonce while the page takes cards."""
    status = checkout.session.status
    body: dict[str, Any] = {"status": status, "mode": checkout.mode or checkout.session.mode or "payment"}
    if checkout.failure_code and status != "completed":
        body["failureCode"] = checkout.failure_code
        body["failureMessage"] = checkout.failure_message or _failure_text(checkout.failure_code)
    failed = bool(checkout.failure_code) or status in ("failed", "expired", "cancelled")
    redirect = safe_url(checkout.success_redirect_url if status == "completed" else checkout.failure_redirect_url if failed else None)
    if redirect is not None:
        body["redirectUrl"] = redirect
    if nonce is not None and _state(status) == "form":
        body["nonce"] = nonce
    return body


# --- the routes -------------------------------------------------------------------------


@dataclass(frozen=True)
class _Target:
    template: str
    merchant_id: str = ""
    session_id: str = ""
    action: str = ""  # "", submit, status
    asset: str = ""


def _target(path: str) -> _Target | None:
    asset = _ASSET_PATH.fullmatch(path)
    if asset is not None:
        return _Target(ASSET, asset=asset["name"])
    found = _PAGE_PATH.fullmatch(path)
    if found is None:
        return None
    action = found["action"] or ""
    template = {"": PAGE, "submit": SUBMIT, "status": STATUS}[action]
    return _Target(template, found["merchant"], found["session"], action)


def route_template(path: str) -> str | None:
    """The template a path falls under (the metrics' and the trace's route), None if none."""
    target = _target(path)
    return None if target is None else target.template


class CheckoutPages:
    def __init__(self, payment: PaymentBackend, merchants: MerchantDirectory) -> None:
        self._payment = payment
        self._merchants = merchants
        self._env = _environment()
        self._assets = _assets()
        self._asset_urls = {name: f"/checkout/assets/{name}?v={asset.version}" for name, asset in self._assets.items()}

    async def handle(self, method: str, path: str, query: bytes, headers: dict[str, str], receive: Receive) -> Reply:
        target = _target(path)
        if target is None:
            return self._not_found()
        if target.asset:
            return self._asset(method, target.asset, query)
        allowed = b"POST" if target.action == "submit" else b"GET"
        if method.encode() != allowed:
            return error_reply(405, "METHOD_NOT_ALLOWED", f"{method} is not allowed on {target.template}", headers=[(b"allow", allowed)])
        if target.action == "submit":
            return await self._submit(target, headers, receive)
        if target.action == "status":
            return await self._status(target)
        return await self._page(target)

    # --- the page

    async def _page(self, target: _Target) -> Reply:
        name = await self._merchants.name_of(target.merchant_id)
        if name is None:
            return self._not_found()
        try:
            checkout = await self._payment.get_checkout(target.merchant_id, target.session_id)
        except DomainError as err:
            return self._error_page(err)
        if checkout.merchant_id and checkout.merchant_id != target.merchant_id:
            return self._not_found()  # the service scopes by token; never show another merchant's session
        csp_nonce = secrets.token_urlsafe(18)
        view = page_view(checkout, name, target.merchant_id, nonce=secrets.token_urlsafe(18), csp_nonce=csp_nonce)
        template = "checkout.html" if view.state == "form" else "status.html"
        connect = origin_of(view.tokenize_url) if view.state == "form" else None
        return self._html(200, template, csp_nonce, connect, view=view)

    def _not_found(self) -> Reply:
        csp_nonce = secrets.token_urlsafe(18)
        return self._html(
            404, "message.html", csp_nonce, None, heading="Page not found", text="This checkout link is not valid.", kind="not_found"
        )

    def _error_page(self, err: DomainError) -> Reply:
        status = http_status(err.code, err.reason)
        if status == 404:
            return self._not_found()
        if err.code not in (ErrorCode.UNAVAILABLE, ErrorCode.DEADLINE_EXCEEDED, ErrorCode.RESOURCE_EXHAUSTED, ErrorCode.UNIMPLEMENTED):
            log.warning("checkout_page_failed", reason=err.reason, code=err.code.name)
        return self.failure_page(status if status >= 500 else 503)

    def failure_page(self, status: int) -> Reply:
        """The page of a session that cannot be shown now (the service down, a deadline)."""
        csp_nonce = secrets.token_urlsafe(18)
        return self._html(
            status,
            "message.html",
            csp_nonce,
            None,
            heading="Checkout unavailable",
            text="This page cannot be shown right now. Try again in a moment.",
            kind="unavailable",
        )

    def _html(self, status: int, template: str, csp_nonce: str, connect_origin: str | None, **context: Any) -> Reply:
        body = self._env.get_template(template).render(assets=self._asset_urls, csp_nonce=csp_nonce, **context)
        connect = "'self'" + (f" {connect_origin}" if connect_origin else "")
        csp = (
            f"default-src 'none'; script-src 'self' 'nonce-{csp_nonce}'; style-src 'self'; img-src 'self' data:; "
            f"connect-src {connect}; form-action 'none'; base-uri 'none'"
        )
        headers = [*_SECURITY_HEADERS, (b"content-security-policy", csp.encode())]
        return Reply(status, body.encode(), headers, _HTML)

    def _asset(self, method: str, name: str, query: bytes) -> Reply:
        if method != "GET":
            return error_reply(405, "METHOD_NOT_ALLOWED", f"{method} is not allowed on {ASSET}", headers=[(b"allow", b"GET")])
        asset = self._assets.get(name)
        if asset is None:
            return error_reply(404, "ROUTE_NOT_FOUND", f"no asset {name!r}")
        versions = parse_qs(query.decode("latin-1")).get("v", [])
        # a versioned URL (what the pages link) never changes; an unversioned one is checked each time
        cache = b"public, max-age=31536000, immutable" if versions == [asset.version] else b"no-cache"
        return Reply(200, asset.body, [(b"cache-control", cache), (b"x-content-type-options", b"nosniff")], asset.content_type)

    # --- the script's calls

    def _json(self, status: int, body: dict[str, Any]) -> Reply:
        return Reply(status, to_json(body), list(_SECURITY_HEADERS))

    def _json_error(self, err: DomainError) -> Reply:
        status = http_status(err.code, err.reason)
        return self._json(status, error_body(status, err.message, CATEGORY.get(status, "error"), err.reason, err.metadata))

    async def _status(self, target: _Target) -> Reply:
        if await self._merchants.name_of(target.merchant_id) is None:
            return self._json_error(_session_not_found(target.session_id))
        try:
            checkout = await self._payment.get_checkout(target.merchant_id, target.session_id)
        except DomainError as err:
            return self._json_error(err)
        return self._json(200, outcome_json(checkout, nonce=secrets.token_urlsafe(18)))

    async def _submit(self, target: _Target, headers: dict[str, str], receive: Receive) -> Reply:
        # JSON only, Content-Type required: a cross-site form cannot send application/json
        # without a CORS preflight, which this route never answers
        check_json_media_type(headers.get("content-type"), required=True)
        raw = await read_body(receive, headers, SUBMIT_MAX_BYTES)
        try:
            token, nonce = _submission(raw)
        except DomainError as err:
            return self._json_error(err)
        if await self._merchants.name_of(target.merchant_id) is None:
            return self._json_error(_session_not_found(target.session_id))
        try:
            checkout = await self._payment.complete_checkout(target.merchant_id, target.session_id, token, nonce)
        except DomainError as err:
            return self._json_error(err)
        return self._json(200, outcome_json(checkout, nonce=secrets.token_urlsafe(18)))


def _session_not_found(session_id: str) -> DomainError:
    err = DomainError("PAYMENT_SESSION_NOT_FOUND", f"payment session {session_id!r} was not found", metadata={"id": session_id})
    err.code = ErrorCode.NOT_FOUND
    return err


def _submission(raw: bytes) -> tuple[str, str]:
    body = parse_json_object(raw) if raw else {}
    token, nonce = body.get("token"), body.get("nonce")
    if not isinstance(token, str) or not is_card_token(token):
        raise InvalidArgument(
            "token", "token must be the processor's card token (tok_...), never card details", reason="INVALID_CARD_TOKEN"
        )
    if not isinstance(nonce, str) or not is_page_nonce(nonce):
        raise InvalidArgument("nonce", "nonce must be the page's nonce (8 to 128 URL-safe characters)", reason="INVALID_NONCE")
    return token, nonce
