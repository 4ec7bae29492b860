"""Bearer credentials at the gRPC edge: every RPC but health and reflection carries
`authorization: Bearer TOKEN`, and a policy decides who may call what.

The mechanics live here (reading the bearer, refusing a call of any kind without running
it, handing the caller's identity to the handler); each service brings its policy: the
scheduler's (`agentmesh.scheduler.access`: user and node credentials) and the node's
(`agentmesh.node.access`: its scheduler's dispatch secret and the user credential).
"""

from __future__ import annotations

import contextvars
import hmac
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import grpc

# Services anyone may call: load balancers and grpcurl need them before they have a token.
OPEN_SERVICES = ("/grpc.health.v1.Health/", "/grpc.reflection.")

Metadata = tuple[tuple[str, str | bytes], ...] | None


@dataclass(frozen=True)
class Refusal:
    """Why a call is refused: its status code and a message that names no secret."""

    code: grpc.StatusCode
    message: str


WRONG_TOKEN = Refusal(grpc.StatusCode.UNAUTHENTICATED, "missing or wrong bearer token")

# What a policy answers for (method, bearer token or None): a Refusal, or the caller's
# identity (None for a caller that needs none), which the handler reads with `caller()`.
Policy = Callable[[str, str | None], Awaitable[object]]

_CALLER: contextvars.ContextVar[object] = contextvars.ContextVar("agentmesh_caller", default=None)


def caller() -> object:
    """The identity the policy gave the unary call being handled (None if it gave none)."""
    return _CALLER.get()


def bearer_of(metadata: Metadata) -> str | None:
    """The token of the call's `authorization: Bearer TOKEN` header, if it has one."""
    for key, value in metadata or ():
        if key.lower() == "authorization":
            text = value.decode(errors="replace") if isinstance(value, bytes) else value
            scheme, _, token = text.partition(" ")
            return token if scheme == "Bearer" and token else None
    return None


def same_secret(given: str | None, expected: str | None) -> bool:
    """Whether two secrets are equal, compared in constant time; None equals nothing."""
    if given is None or expected is None:
        return False
    return hmac.compare_digest(given.encode(), expected.encode())


def bearer_matches(metadata: Metadata, token: str) -> bool:
    return same_secret(bearer_of(metadata), token)


def _refusals(refusal: Refusal) -> dict[tuple[bool, bool], tuple[Any, Any]]:
    async def refuse(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        await context.abort(refusal.code, refusal.message)

    async def refuse_stream(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        await context.abort(refusal.code, refusal.message)
        yield  # pragma: no cover - makes this an async generator, as streaming handlers are

    # The refusal for each call kind, by (request_streaming, response_streaming). It has the
    # refused RPC's kind and reads no request: a unary refusal of a request-streaming RPC
    # waits for exactly one request, so a client that sends none, or waits before its
    # first, never hears back, and one that sends several gets INTERNAL.
    return {
        (False, False): (grpc.unary_unary_rpc_method_handler, refuse),
        (False, True): (grpc.unary_stream_rpc_method_handler, refuse_stream),
        (True, False): (grpc.stream_unary_rpc_method_handler, refuse),
        (True, True): (grpc.stream_stream_rpc_method_handler, refuse_stream),
    }


def _refusing(handler: grpc.RpcMethodHandler[Any, Any], refusal: Refusal) -> Any:
    factory, refuse = _refusals(refusal)[handler.request_streaming, handler.response_streaming]
    return factory(
        refuse,
        request_deserializer=handler.request_deserializer,
        response_serializer=handler.response_serializer,
    )


def _with_caller(handler: grpc.RpcMethodHandler[Any, Any], identity: object) -> Any:
    """The unary handler, run with `caller()` answering `identity`."""
    behaviour: Any = handler.unary_unary

    async def call(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        token = _CALLER.set(identity)
        try:
            return await behaviour(request, context)
        finally:
            _CALLER.reset(token)

    return grpc.unary_unary_rpc_method_handler(
        call,
        request_deserializer=handler.request_deserializer,
        response_serializer=handler.response_serializer,
    )


class BearerAuthInterceptor(grpc.aio.ServerInterceptor):
    """Asks the policy about every call but health and reflection; a refused call gets the
    refusal's status and its handler never runs. An identity is handed to unary handlers
    (`caller()`); streaming RPCs are user RPCs, which need none."""

    def __init__(self, policy: Policy) -> None:
        self._policy = policy

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
        outcome = await self._policy(method, bearer_of(handler_call_details.invocation_metadata))
        if isinstance(outcome, Refusal):
            refusal: grpc.RpcMethodHandler[Any, Any] = _refusing(handler, outcome)
            return refusal
        if outcome is None or handler.unary_unary is None:
            return handler
        wrapped: grpc.RpcMethodHandler[Any, Any] = _with_caller(handler, outcome)
        return wrapped


class TokenAuthInterceptor(BearerAuthInterceptor):
    """Refuses calls without the one right bearer token, compared in constant time."""

    def __init__(self, token: str) -> None:
        async def policy(method: str, bearer: str | None) -> object:
            return None if same_secret(bearer, token) else WRONG_TOKEN

        super().__init__(policy)


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
