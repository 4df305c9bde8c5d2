"""Wrapping a grpc.aio method handler, whatever its kind: what every server interceptor
of ours (grpc_server's request context, metrics' timing) needs, written once.

An interceptor supplies two functions, one for handlers that answer once and one for
those that stream their answers; ``rewrap`` picks by the handler's kind and keeps its
(de)serializers.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any

import grpc

Inner = Callable[[Any, grpc.aio.ServicerContext], Any]

# (request streaming, response streaming) -> the handler's attribute and its builder
_KINDS: dict[tuple[bool, bool], tuple[str, Callable[..., grpc.RpcMethodHandler]]] = {
    (False, False): ("unary_unary", grpc.unary_unary_rpc_method_handler),
    (False, True): ("unary_stream", grpc.unary_stream_rpc_method_handler),
    (True, False): ("stream_unary", grpc.stream_unary_rpc_method_handler),
    (True, True): ("stream_stream", grpc.stream_stream_rpc_method_handler),
}


def rewrap(
    handler: grpc.RpcMethodHandler,
    *,
    one_response: Callable[[Inner], Inner],
    streamed_responses: Callable[[Inner], Inner],
) -> grpc.RpcMethodHandler:
    """The same method, its behaviour wrapped by ``one_response(inner)`` or
    ``streamed_responses(inner)`` as the handler answers once or streams."""
    attribute, build = _KINDS[(bool(handler.request_streaming), bool(handler.response_streaming))]
    inner: Inner = getattr(handler, attribute)
    wrap = streamed_responses if handler.response_streaming else one_response
    return build(wrap(inner), request_deserializer=handler.request_deserializer, response_serializer=handler.response_serializer)


async def each_response(responses: Any) -> AsyncIterator[Any]:
    """What a streaming handler answers: the items of an async generator, or nothing for
    a handler that writes with ``context.write()`` and returns a coroutine."""
    if hasattr(responses, "__aiter__"):
        async for response in responses:
            yield response
    else:
        await responses
