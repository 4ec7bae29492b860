"""The bearer-token check at the gRPC edge, on an in-process server with a test service.

Every call kind is refused without the exact token (and its handler never runs), health and
reflection answer anyone, and the client side adds the token to every call kind. The full
mesh with the token is tested in tests/scheduler/test_auth.py; this file needs no database.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection, reflection_pb2, reflection_pb2_grpc

from agentmesh.rpc.auth import (
    BearerAuthInterceptor,
    Refusal,
    TokenAuthInterceptor,
    bearer_matches,
    caller,
    client_interceptors,
)

TOKEN = "mesh-token-0f3a9c"
SERVICE = "test.Echo"
KINDS = ("Unary", "ServerStream", "ClientStream", "BidiStream")
REQUEST_STREAMING = ("ClientStream", "BidiStream")


class EchoService:
    """Echoes bytes back on all four call kinds and counts the calls that reached it."""

    def __init__(self) -> None:
        self.calls: list[str] = []
        self.metadata: list[dict[str, Any]] = []

    def _record(self, kind: str, context: grpc.aio.ServicerContext[Any, Any]) -> None:
        self.calls.append(kind)
        self.metadata.append(dict(context.invocation_metadata() or ()))

    async def unary(self, request: bytes, context: grpc.aio.ServicerContext[Any, Any]) -> bytes:
        self._record("Unary", context)
        return request

    async def server_stream(
        self, request: bytes, context: grpc.aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[bytes]:
        self._record("ServerStream", context)
        yield request
        yield request

    async def client_stream(
        self, requests: AsyncIterator[bytes], context: grpc.aio.ServicerContext[Any, Any]
    ) -> bytes:
        self._record("ClientStream", context)
        return b"".join([r async for r in requests])

    async def bidi_stream(
        self, requests: AsyncIterator[bytes], context: grpc.aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[bytes]:
        self._record("BidiStream", context)
        async for request in requests:
            yield request

    def handler(self) -> grpc.GenericRpcHandler:
        return grpc.method_handlers_generic_handler(
            SERVICE,
            {
                "Unary": grpc.unary_unary_rpc_method_handler(self.unary),
                "ServerStream": grpc.unary_stream_rpc_method_handler(self.server_stream),
                "ClientStream": grpc.stream_unary_rpc_method_handler(self.client_stream),
                "BidiStream": grpc.stream_stream_rpc_method_handler(self.bidi_stream),
            },
        )


@pytest.fixture
async def served() -> AsyncIterator[tuple[str, EchoService]]:
    service = EchoService()
    server = grpc.aio.server(interceptors=[TokenAuthInterceptor(TOKEN)])
    server.add_generic_rpc_handlers([service.handler()])
    health_pb2_grpc.add_HealthServicer_to_server(health.aio.HealthServicer(), server)
    reflection.enable_server_reflection([SERVICE, health.SERVICE_NAME], server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        yield f"127.0.0.1:{port}", service
    finally:
        await server.stop(None)


def _requests() -> Iterator[bytes]:
    yield b"a"
    yield b"b"


async def call(
    channel: grpc.aio.Channel,
    kind: str,
    metadata: Any = None,
    requests: Callable[[], Any] = _requests,
) -> list[bytes]:
    """Make one call of `kind` (its requests from `requests()`, if it streams them)."""
    method = f"/{SERVICE}/{kind}"
    options: dict[str, Any] = {"metadata": metadata, "timeout": 10}
    if kind == "Unary":
        return [await channel.unary_unary(method)(b"x", **options)]
    if kind == "ServerStream":
        return [r async for r in channel.unary_stream(method)(b"x", **options)]
    if kind == "ClientStream":
        return [await channel.stream_unary(method)(requests(), **options)]
    return [r async for r in channel.stream_stream(method)(requests(), **options)]


EXPECTED = {
    "Unary": [b"x"],
    "ServerStream": [b"x", b"x"],
    "ClientStream": [b"ab"],
    "BidiStream": [b"a", b"b"],
}


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize(
    "metadata",
    [
        None,
        (("authorization", "Bearer not-the-token"),),
        (("authorization", f"Bearer {TOKEN}x"),),
        (("authorization", f"Bearer {TOKEN[:-1]}"),),
        (("authorization", TOKEN),),
        (("authorization", f"bearer {TOKEN}"),),
        (("authorization", f"Basic {TOKEN}"),),
        (("x-token", f"Bearer {TOKEN}"),),
    ],
    ids=["none", "wrong", "longer", "shorter", "no-scheme", "lower-scheme", "basic", "other"],
)
async def test_calls_without_the_exact_token_are_refused_and_never_run(
    served: tuple[str, EchoService], kind: str, metadata: Any
) -> None:
    address, service = served
    async with grpc.aio.insecure_channel(address) as channel:
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await call(channel, kind, metadata)

    assert service.calls == []
    if kind in REQUEST_STREAMING:
        # A client still writing its requests when the refusal ends the call may see
        # INTERNAL instead: grpc.aio reports its failed write over the server's status
        # (grpc/grpc#36066). A client not writing sees UNAUTHENTICATED (the test below).
        return
    assert refused.value.code() is grpc.StatusCode.UNAUTHENTICATED
    assert refused.value.details() == "missing or wrong bearer token"


async def _no_requests() -> AsyncIterator[bytes]:
    return
    yield


async def _requests_never_sent() -> AsyncIterator[bytes]:
    await asyncio.Event().wait()  # a client that waits for something before its first request
    yield b"never"


@pytest.mark.parametrize("kind", REQUEST_STREAMING)
@pytest.mark.parametrize(
    "requests",
    [_no_requests, _requests_never_sent],
    ids=["none", "never-sent"],
)
async def test_a_refused_request_stream_is_unauthenticated_before_the_client_sends(
    served: tuple[str, EchoService], kind: str, requests: Callable[[], Any]
) -> None:
    address, service = served
    async with grpc.aio.insecure_channel(address) as channel:
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await call(channel, kind, requests=requests)
        # The refusal leaves the channel usable for the next call.
        replies = await call(channel, "Unary", (("authorization", f"Bearer {TOKEN}"),))

    assert refused.value.code() is grpc.StatusCode.UNAUTHENTICATED
    assert refused.value.details() == "missing or wrong bearer token"
    assert replies == [b"x"]
    assert service.calls == ["Unary"]


@pytest.mark.parametrize("kind", KINDS)
async def test_calls_with_the_token_run(served: tuple[str, EchoService], kind: str) -> None:
    address, service = served
    async with grpc.aio.insecure_channel(address) as channel:
        replies = await call(channel, kind, (("authorization", f"Bearer {TOKEN}"),))

    assert replies == EXPECTED[kind]
    assert service.calls == [kind]


@pytest.mark.parametrize("kind", KINDS)
async def test_the_client_interceptors_add_the_token_to_every_call_kind(
    served: tuple[str, EchoService], kind: str
) -> None:
    address, service = served
    async with grpc.aio.insecure_channel(
        address, interceptors=client_interceptors(TOKEN)
    ) as channel:
        replies = await call(channel, kind, (("x-request-id", "r-1"),))

    assert replies == EXPECTED[kind]
    assert service.metadata[0]["authorization"] == f"Bearer {TOKEN}"
    assert service.metadata[0]["x-request-id"] == "r-1"  # the caller's metadata is kept


def test_no_token_means_no_client_interceptors() -> None:
    assert client_interceptors(None) == []
    assert len(client_interceptors(TOKEN)) == 4


async def test_health_and_reflection_answer_anyone(served: tuple[str, EchoService]) -> None:
    address, _ = served
    async with grpc.aio.insecure_channel(address) as channel:
        reply = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest())
        listing = reflection_pb2_grpc.ServerReflectionStub(channel).ServerReflectionInfo(
            iter([reflection_pb2.ServerReflectionRequest(list_services="")])
        )
        names = [
            {s.name for s in answer.list_services_response.service} async for answer in listing
        ]

    assert reply.status == health_pb2.HealthCheckResponse.SERVING
    assert SERVICE in names[0]


async def test_an_unknown_method_is_unimplemented_with_or_without_the_token(
    served: tuple[str, EchoService],
) -> None:
    address, _ = served
    async with grpc.aio.insecure_channel(address) as channel:
        for metadata in (None, (("authorization", f"Bearer {TOKEN}"),)):
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await channel.unary_unary(f"/{SERVICE}/Nope")(b"x", metadata=metadata)
            assert caught.value.code() is grpc.StatusCode.UNIMPLEMENTED


@pytest.mark.parametrize(
    ("metadata", "matches"),
    [
        ((("authorization", f"Bearer {TOKEN}"),), True),
        ((("authorization", f"Bearer {TOKEN}".encode()),), True),
        ((("Authorization", f"Bearer {TOKEN}"),), True),
        ((("user-agent", "grpc"), ("authorization", f"Bearer {TOKEN}")), True),
        # Headers before it, whatever their names sort as, are not the token.
        ((("accept-language", "en"), ("authorization", f"Bearer {TOKEN}")), True),
        ((("accept", f"Bearer {TOKEN}"),), False),
        ((("authorization", "Bearer wrong"), ("authorization", f"Bearer {TOKEN}")), False),
        ((("authorization", f"Bearer {TOKEN} "),), False),
        ((("authorization", ""),), False),
        ((), False),
        (None, False),
    ],
)
def test_bearer_matches(metadata: Any, matches: bool) -> None:
    assert bearer_matches(metadata, TOKEN) is matches


class IdentityEcho(EchoService):
    """Echoes, and remembers who `caller()` said was calling each unary call."""

    def __init__(self) -> None:
        super().__init__()
        self.callers: list[object] = []

    async def unary(self, request: bytes, context: grpc.aio.ServicerContext[Any, Any]) -> bytes:
        self.callers.append(caller())
        return await super().unary(request, context)


@pytest.mark.parametrize("kind", KINDS)
async def test_a_policy_s_identity_reaches_unary_handlers_and_every_kind_still_runs(
    kind: str,
) -> None:
    # A node credential's policy names the node: unary handlers read it with caller();
    # streaming RPCs (user RPCs) need none and run as they are.
    async def policy(method: str, bearer: str | None) -> object:
        return "node-7" if bearer == TOKEN else Refusal(grpc.StatusCode.UNAUTHENTICATED, "no")

    service = IdentityEcho()
    server = grpc.aio.server(interceptors=[BearerAuthInterceptor(policy)])
    server.add_generic_rpc_handlers([service.handler()])
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            got = await call(channel, kind, (("authorization", f"Bearer {TOKEN}"),))
    finally:
        await server.stop(None)

    assert got == EXPECTED[kind]
    assert service.calls == [kind]
    assert service.callers == (["node-7"] if kind == "Unary" else [])
    assert caller() is None  # only inside the call
