"""The KeyPool service sits behind the mesh token like every other RPC, and is found through
reflection and health as grpcurl finds the others."""

from __future__ import annotations

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from agentmesh.config import TlsSettings
from agentmesh.rpc.channel import open_channel
from agentmesh.v1 import keys_pb2
from tests.scheduler.conftest import Mesh
from tests.support.databases import Server

TOKEN = "key-pool-token-0c93"
SECRET = "AIzaSy-behind-the-token-51ab77"
SERVICE = keys_pb2.DESCRIPTOR.services_by_name["KeyPool"]


@pytest.fixture
def pg_server(embedded_server: Server) -> Server:
    return embedded_server


def request_for(method_name: str) -> bytes:
    """A request each method would act on (AddKey would store a key)."""
    if method_name == "AddKey":
        return keys_pb2.AddKeyRequest(label="guarded", secret=SECRET).SerializeToString()
    return b""  # the empty message of any request type


async def outcomes(channel: grpc.aio.Channel) -> dict[str, str]:
    found = {}
    for method in SERVICE.methods:
        call = channel.unary_unary(
            f"/{SERVICE.full_name}/{method.name}",
            request_serializer=lambda data: data,
            response_deserializer=lambda data: data,
        )
        try:
            await call(request_for(method.name), timeout=10)
        except grpc.aio.AioRpcError as error:
            found[method.name] = error.code().name
        else:
            found[method.name] = "OK"
    return found


async def test_every_key_pool_rpc_needs_the_token(mesh: Mesh) -> None:
    mesh.configure(AGENTMESH_TOKEN=TOKEN)
    await mesh.start_scheduler()
    address = mesh.schedulers[0].address
    names = [method.name for method in SERVICE.methods]
    assert len(names) == 8

    async with (
        grpc.aio.insecure_channel(address) as anonymous,
        open_channel(address, token="wrong-token", tls=TlsSettings()) as wrong,
    ):
        assert await outcomes(anonymous) == dict.fromkeys(names, "UNAUTHENTICATED")
        assert await outcomes(wrong) == dict.fromkeys(names, "UNAUTHENTICATED")
        health = await health_pb2_grpc.HealthStub(anonymous).Check(
            health_pb2.HealthCheckRequest(service=SERVICE.full_name)
        )
        assert health.status == health_pb2.HealthCheckResponse.SERVING
        replies = reflection_pb2_grpc.ServerReflectionStub(anonymous).ServerReflectionInfo(
            iter([reflection_pb2.ServerReflectionRequest(list_services="")])
        )
        async for reply in replies:
            listed = {service.name for service in reply.list_services_response.service}
            assert SERVICE.full_name in listed
            break

    async with open_channel(address, token=TOKEN, tls=TlsSettings()) as channel:
        authorized = await outcomes(channel)
    assert "UNAUTHENTICATED" not in authorized.values()
    assert authorized["AddKey"] == "OK"
    assert authorized["ListKeys"] == "OK"
