"""The mesh token: every RPC but health and reflection carries `authorization: Bearer TOKEN`."""

from __future__ import annotations

import hmac
from collections.abc import Awaitable, Callable
from typing import Any

import grpc

# Services anyone may call: load balancers and grpcurl need them before they have a token.
OPEN_SERVICES = ("/grpc.health.v1.Health/", "/grpc.reflection.")


def bearer_matches(metadata: tuple[tuple[str, str | bytes], ...] | None, token: str) -> bool:
    expected = f"Bearer {token}".encode()
    for key, value in metadata or ():
        if key.lower() == "authorization":
            given = value if isinstance(value, bytes) else value.encode()
            return hmac.compare_digest(given, expected)
    return False


async def _refuse(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
    await context.abort(grpc.StatusCode.UNAUTHENTICATED, "missing or wrong bearer token")


async def _refuse_stream(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
    await context.abort(grpc.StatusCode.UNAUTHENTICATED, "missing or wrong bearer token")
    yield  # pragma: no cover - makes this an async generator, as streaming handlers are


# The refusal for each call kind, by (request_streaming, response_streaming). It has the
# refused RPC's kind and reads no request: a unary refusal of a request-streaming RPC waits
# for exactly one request, so a client that sends none, or waits before its first, never
# hears back, and one that sends several gets INTERNAL.
_REFUSALS = {
    (False, False): (grpc.unary_unary_rpc_method_handler, _refuse),
    (False, True): (grpc.unary_stream_rpc_method_handler, _refuse_stream),
    (True, False): (grpc.stream_unary_rpc_method_handler, _refuse),
    (True, True): (grpc.stream_stream_rpc_method_handler, _refuse_stream),
}


class TokenAuthInterceptor(grpc.aio.ServerInterceptor):
    """Refuses calls without the right bearer token, compared in constant time."""

    def __init__(self, token: str) -> None:
        self._token = token

    async def intercept_service(
        self,
        continuation: Callable[
            [grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler[Any, Any] | None]
        ],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any] | None:
        handler = await continuation(handler_call_details)
        method: str = handler_call_details.method
        if handler is None or method.startswith(OPEN_SERVICES):
            return handler
        if bearer_matches(handler_call_details.invocation_metadata, self._token):
            return handler
        factory, refuse = _REFUSALS[handler.request_streaming, handler.response_streaming]
        refusal: grpc.RpcMethodHandler[Any, Any] = factory(
            refuse,
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )
        return refusal


def _with_token(
    details: grpc.aio.ClientCallDetails, header: tuple[str, str]
) -> grpc.aio.ClientCallDetails:
    metadata = list(details.metadata or ())
    metadata.append(header)
    return grpc.aio.ClientCallDetails(
        details.method,
        details.timeout,
        grpc.aio.Metadata(*metadata),
        details.credentials,
        details.wait_for_ready,
    )


# grpc.aio files an interceptor under the first call kind it implements, so a class that
# implements several intercepts only one kind: one class per kind.
class _UnaryUnaryToken(grpc.aio.UnaryUnaryClientInterceptor):
    def __init__(self, header: tuple[str, str]) -> None:
        self._header = header

    async def intercept_unary_unary(self, continuation: Any, details: Any, request: Any) -> Any:
        return await continuation(_with_token(details, self._header), request)


class _UnaryStreamToken(grpc.aio.UnaryStreamClientInterceptor):
    def __init__(self, header: tuple[str, str]) -> None:
        self._header = header

    async def intercept_unary_stream(self, continuation: Any, details: Any, request: Any) -> Any:
        return await continuation(_with_token(details, self._header), request)


class _StreamUnaryToken(grpc.aio.StreamUnaryClientInterceptor):
    def __init__(self, header: tuple[str, str]) -> None:
        self._header = header

    async def intercept_stream_unary(
        self, continuation: Any, details: Any, request_iterator: Any
    ) -> Any:
        return await continuation(_with_token(details, self._header), request_iterator)


class _StreamStreamToken(grpc.aio.StreamStreamClientInterceptor):
    def __init__(self, header: tuple[str, str]) -> None:
        self._header = header

    async def intercept_stream_stream(
        self, continuation: Any, details: Any, request_iterator: Any
    ) -> Any:
        return await continuation(_with_token(details, self._header), request_iterator)


def client_interceptors(token: str | None) -> list[grpc.aio.ClientInterceptor]:
    """Interceptors that add the bearer token to every call, of every kind."""
    if token is None:
        return []
    header = ("authorization", f"Bearer {token}")
    return [
        _UnaryUnaryToken(header),
        _UnaryStreamToken(header),
        _StreamUnaryToken(header),
        _StreamStreamToken(header),
    ]
