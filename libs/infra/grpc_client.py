"""The one way a service calls another: ``channel(address)``.

Every call made on such a channel, of any of the four kinds:
* has a deadline: the call's own ``timeout=``, else the channel's (DEFAULT_TIMEOUT_SECONDS
  unless ``channel(..., timeout=)`` says otherwise), so no call waits for ever;
* carries the current merchant token and idempotency key (libs/infra/context.py) unless
  the caller put them in its metadata itself: a servicer calling another service forwards
  the token it was called with, so the other service verifies the same merchant;
* is traced (OpenTelemetry's client interceptors, inside ours);
* fails with the DomainError the other service raised (libs/infra/grpc_errors.py), not
  with grpc.aio.AioRpcError: ``except NotFound``, ``err.retryable``. A status that is not
  one of ours (the service is down, the deadline passed) decodes too, named after its
  code (Unavailable for UNAVAILABLE). The gateway, which renders statuses itself,
  asks for ``decode_errors=False``.

A unary call decoded this way is awaited inside the interceptor, so its call object
answers the response only (no trailing metadata); ask for ``decode_errors=False`` when
a caller needs the call itself. Request streams are sent as iterators: OpenTelemetry's
client interceptor breaks the call.write() style (the call ends before the first write).
"""

from __future__ import annotations

import functools
from collections.abc import AsyncIterator, Awaitable, Callable, Generator, Sequence
from typing import Any, Final

import grpc
from opentelemetry import propagate
from opentelemetry.instrumentation.grpc import aio_client_interceptors

from libs.core.errors import Unavailable
from libs.infra.context import IDEMPOTENCY_METADATA_KEY, MERCHANT_TOKEN_METADATA_KEY, idempotency_key_var, merchant_token_var
from libs.infra.grpc_errors import decode_rpc_error
from libs.infra.settings import ServiceSettings
from libs.infra.telemetry import records_spans
from libs.infra.tls import channel_credentials

DEFAULT_TIMEOUT_SECONDS = 5.0
# a peer that restarted is reached again within a second: gRPC's reconnect backoff would
# otherwise grow to minutes (its default cap is 120 s), answering UNAVAILABLE meanwhile
CHANNEL_OPTIONS: Final = (
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.min_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 1000),
)
# A target naming several addresses (an ipv4: list of a service's processes, or a dns:
# name of a headless Service's pods) balances per call over them. Any other keeps gRPC's
# pick_first: a peer restarted on its port is reached by the next call at once, where
# round_robin fails calls until its background reconnect (backoff) has succeeded.
BALANCED: Final = ("grpc.lb_policy_name", "round_robin")
_FORWARDED = ((MERCHANT_TOKEN_METADATA_KEY, merchant_token_var), (IDEMPOTENCY_METADATA_KEY, idempotency_key_var))

Continuation = Callable[[Any, Any], Awaitable[Any]]


def channel(
    address: str,
    *,
    timeout: float = DEFAULT_TIMEOUT_SECONDS,
    decode_errors: bool = True,
    options: Sequence[tuple[str, Any]] | None = None,
    credentials: grpc.ChannelCredentials | None = None,
) -> grpc.aio.Channel:
    """A channel to ``address``; create it inside the running event loop. TLS with
    ``credentials``, else with the process's own when ACCRUE_TLS_CA is set
    (libs/infra/tls.py), else plaintext (in-mesh)."""
    ours = [kind(timeout, decode_errors) for kind in (_UnaryUnary, _UnaryStream, _StreamUnary, _StreamStream)]
    traced = [_TracedOnlyIfRecording.around(inner) for inner in aio_client_interceptors()]  # type: ignore[no-untyped-call]
    interceptors = [*ours, *traced]
    credentials = credentials if credentials is not None else _process_credentials()
    given = list(options or ())
    several = address.startswith("ipv4:") and "," in address
    if several or address.startswith("dns:"):
        given.append(BALANCED)
    if credentials is not None and several:
        # several addresses (a service's processes): gRPC would check the certificate
        # against the whole list; every address of one list names the same host
        given.append(("grpc.ssl_target_name_override", address.removeprefix("ipv4:").split(",")[0].rpartition(":")[0]))
    named = {name for name, _ in given}
    merged = [*given, *(option for option in CHANNEL_OPTIONS if option[0] not in named)]
    if credentials is not None:
        return grpc.aio.secure_channel(address, credentials, options=merged, interceptors=interceptors)
    return grpc.aio.insecure_channel(address, options=merged, interceptors=interceptors)


_SHARED: dict[str, grpc.aio.Channel] = {}


def shared_channel(address: str) -> grpc.aio.Channel:
    """The process's one channel to ``address`` (a channel multiplexes every call): what a
    service's clients call their peers on."""
    found = _SHARED.get(address)
    if found is None:
        found = _SHARED[address] = channel(address)
    return found


def unconfigured(service: str, *, caller: str) -> Unavailable:
    """The error of a call to a peer whose address ``caller`` was not given."""
    return Unavailable(
        f"{service.upper()}_NOT_CONFIGURED", f"{caller} has no address of the {service} service (ACCRUE_{service.upper()}_ADDR)"
    )


@functools.cache
def _process_credentials() -> grpc.ChannelCredentials | None:
    return channel_credentials(ServiceSettings())


class _CallDefaults:
    """What the four kinds share: the call's details completed, its failure decoded."""

    def __init__(self, timeout: float, decode_errors: bool) -> None:
        self._timeout = timeout
        self._decode = decode_errors

    def _details(self, details: Any) -> Any:
        present = details.metadata
        if not isinstance(present, grpc.aio.Metadata):  # what grpc.aio passes; a tuple if another interceptor built it
            present = grpc.aio.Metadata(*(present or ()))
        extra = [(key, value) for key, var in _FORWARDED if (value := var.get()) and key not in present]
        if not extra and details.timeout is not None:
            return details
        return details._replace(
            timeout=self._timeout if details.timeout is None else details.timeout,
            metadata=grpc.aio.Metadata(*present, *extra),
        )

    async def _unary(self, call: Any) -> Any:
        try:
            return await call
        except grpc.aio.AioRpcError as exc:
            raise decode_rpc_error(exc) from exc

    async def _stream(self, call: Any) -> AsyncIterator[Any]:
        try:
            async for response in call:
                yield response
        except grpc.aio.AioRpcError as exc:
            raise decode_rpc_error(exc) from exc


class _DecodedCall:
    """A client-streaming call whose await raises the decoded error (the interceptor
    cannot await the call itself: grpc.aio expects a call object back)."""

    def __init__(self, call: Any) -> None:
        self._call = call

    def __getattr__(self, name: str) -> Any:
        return getattr(self._call, name)

    def __await__(self) -> Generator[Any, None, Any]:
        try:
            return (yield from self._call.__await__())
        except grpc.aio.AioRpcError as exc:
            raise decode_rpc_error(exc) from exc


class _UnaryUnary(_CallDefaults, grpc.aio.UnaryUnaryClientInterceptor):  # type: ignore[misc]
    async def intercept_unary_unary(self, continuation: Continuation, details: Any, request: Any) -> Any:
        call = await continuation(self._details(details), request)
        return await self._unary(call) if self._decode else call


class _UnaryStream(_CallDefaults, grpc.aio.UnaryStreamClientInterceptor):  # type: ignore[misc]
    async def intercept_unary_stream(self, continuation: Continuation, details: Any, request: Any) -> Any:
        call = await continuation(self._details(details), request)
        return self._stream(call) if self._decode else call


class _StreamUnary(_CallDefaults, grpc.aio.StreamUnaryClientInterceptor):  # type: ignore[misc]
    async def intercept_stream_unary(self, continuation: Continuation, details: Any, request_iterator: Any) -> Any:
        call = await continuation(self._details(details), request_iterator)
        return _DecodedCall(call) if self._decode else call


class _StreamStream(_CallDefaults, grpc.aio.StreamStreamClientInterceptor):  # type: ignore[misc]
    async def intercept_stream_stream(self, continuation: Continuation, details: Any, request_iterator: Any) -> Any:
        call = await continuation(self._details(details), request_iterator)
        return self._stream(call) if self._decode else call


class _TracedOnlyIfRecording:
    """OpenTelemetry's client interceptor when spans are recorded; otherwise only what it
    would have done without a tracer provider: the caller's W3C context into the call's
    metadata (nothing when there is none), without its no-op span (a tenth of a
    millisecond a call)."""

    def __init__(self, inner: Any) -> None:
        self._inner = inner

    @staticmethod
    def around(inner: Any) -> Any:
        for kind, wrapper in _TRACED_KINDS.items():
            if isinstance(inner, kind):
                return wrapper(inner)
        return inner

    @staticmethod
    def _context_only(details: Any) -> Any:
        carrier: dict[str, str] = {}
        propagate.inject(carrier)
        if not carrier:
            return details
        present = details.metadata
        if not isinstance(present, grpc.aio.Metadata):
            present = grpc.aio.Metadata(*(present or ()))
        return details._replace(metadata=grpc.aio.Metadata(*present, *carrier.items()))


class _TracedUnaryUnary(_TracedOnlyIfRecording, grpc.aio.UnaryUnaryClientInterceptor):  # type: ignore[misc]
    async def intercept_unary_unary(self, continuation: Continuation, details: Any, request: Any) -> Any:
        if records_spans():
            return await self._inner.intercept_unary_unary(continuation, details, request)
        return await continuation(self._context_only(details), request)


class _TracedUnaryStream(_TracedOnlyIfRecording, grpc.aio.UnaryStreamClientInterceptor):  # type: ignore[misc]
    async def intercept_unary_stream(self, continuation: Continuation, details: Any, request: Any) -> Any:
        if records_spans():
            return await self._inner.intercept_unary_stream(continuation, details, request)
        return await continuation(self._context_only(details), request)


class _TracedStreamUnary(_TracedOnlyIfRecording, grpc.aio.StreamUnaryClientInterceptor):  # type: ignore[misc]
    async def intercept_stream_unary(self, continuation: Continuation, details: Any, request_iterator: Any) -> Any:
        if records_spans():
            return await self._inner.intercept_stream_unary(continuation, details, request_iterator)
        return await continuation(self._context_only(details), request_iterator)


class _TracedStreamStream(_TracedOnlyIfRecording, grpc.aio.StreamStreamClientInterceptor):  # type: ignore[misc]
    async def intercept_stream_stream(self, continuation: Continuation, details: Any, request_iterator: Any) -> Any:
        if records_spans():
            return await self._inner.intercept_stream_stream(continuation, details, request_iterator)
        return await continuation(self._context_only(details), request_iterator)


_TRACED_KINDS: dict[type, type] = {
    grpc.aio.UnaryUnaryClientInterceptor: _TracedUnaryUnary,
    grpc.aio.UnaryStreamClientInterceptor: _TracedUnaryStream,
    grpc.aio.StreamUnaryClientInterceptor: _TracedStreamUnary,
    grpc.aio.StreamStreamClientInterceptor: _TracedStreamStream,
}
