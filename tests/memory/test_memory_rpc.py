"""The profile, home-network and approval RPCs through a real in-process scheduler: bad input
is INVALID_ARGUMENT naming the field (NOT_FOUND for an unknown name or id, FAILED_PRECONDITION
for a task that waits for nothing), and nothing is written."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest

from agentmesh.config import TlsSettings
from agentmesh.rpc.channel import open_channel
from agentmesh.v1 import memory_pb2, memory_pb2_grpc, scheduler_pb2, scheduler_pb2_grpc
from tests.memory.test_knowledge_rpc import count, violated_field
from tests.scheduler.conftest import Mesh
from tests.scheduler.conftest import mesh as mesh  # the fixture


@pytest.fixture
async def stubs(mesh: Mesh) -> AsyncIterator[tuple[Any, Any]]:
    await mesh.start_scheduler()
    async with open_channel(mesh.schedulers[0].address, token=None, tls=TlsSettings()) as channel:
        yield memory_pb2_grpc.MemoryStub(channel), scheduler_pb2_grpc.SchedulerStub(channel)


def profile(fields: list[str], **values: Any) -> memory_pb2.SetProfileRequest:
    return memory_pb2.SetProfileRequest(
        fields=fields, profile=memory_pb2.Profile(username=values.pop("username", "ada"), **values)
    )


BAD_MEMORY_REQUESTS = [
    ("SetProfile", profile([]), "fields"),
    ("SetProfile", profile(["mood"]), "fields"),
    ("SetProfile", profile(["timezone"], timezone="Europe/Atlantis"), "timezone"),
    ("SetProfile", profile(["timezone"], timezone="../../etc/passwd"), "timezone"),
    (
        "SetProfile",
        profile(["default_permissions"], default_permissions="root"),
        "default_permissions",
    ),
    ("SetProfile", profile(["throttle_tolerance"], throttle_tolerance=-1), "throttle_tolerance"),
    (
        "SetProfile",
        profile(["max_token_per_request"], max_token_per_request=-5),
        "max_token_per_request",
    ),
    ("SetProfile", profile(["timezone"], username="", timezone="UTC"), "username"),
    # A good field beside a bad one: neither is written.
    (
        "SetProfile",
        profile(["preferred_format", "timezone"], preferred_format="prose", timezone="Nowhere"),
        "timezone",
    ),
    ("GetProfile", memory_pb2.GetProfileRequest(username=""), "username"),
    ("AddHost", memory_pb2.AddHostRequest(host_name="", service="smb"), "host_name"),
    ("AddHost", memory_pb2.AddHostRequest(host_name="two words", service="smb"), "host_name"),
    ("AddHost", memory_pb2.AddHostRequest(host_name="nas", service=""), "service"),
    (
        "AddHost",
        memory_pb2.AddHostRequest(host_name="nas", service="smb", ip_address="1.2.3"),
        "ip_address",
    ),
    ("AddHost", memory_pb2.AddHostRequest(host_name="nas", service="smb", tags=["a b"]), "tags"),
    ("TagHost", memory_pb2.TagHostRequest(host_name="nas"), "add"),
    ("TagHost", memory_pb2.TagHostRequest(host_name="", add=["x"]), "host_name"),
    ("RemoveHost", memory_pb2.RemoveHostRequest(host_name=""), "host_name"),
]
BAD_SCHEDULER_REQUESTS = [
    ("ApproveTask", scheduler_pb2.ApproveTaskRequest(task_id=""), "task_id"),
    ("ApproveTask", scheduler_pb2.ApproveTaskRequest(task_id="t-1", prefix="ls | sh"), "prefix"),
    ("DenyTask", scheduler_pb2.DenyTaskRequest(task_id="a b"), "task_id"),
    ("ForgetApproval", scheduler_pb2.ForgetApprovalRequest(id=0), "id"),
]


async def test_bad_input_to_every_memory_rpc_names_the_field(
    stubs: tuple[Any, Any], database_uri: str
) -> None:
    memory, scheduler = stubs
    cases = [(memory, *case) for case in BAD_MEMORY_REQUESTS]
    cases += [(scheduler, *case) for case in BAD_SCHEDULER_REQUESTS]
    for stub, method, request, field in cases:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await getattr(stub, method)(request, timeout=10)
        assert caught.value.code() is grpc.StatusCode.INVALID_ARGUMENT, (method, request)
        assert violated_field(caught.value) == field, (method, request)
    for table in ("user_profile", "home_network", "permissions_profile", "approval_requests"):
        assert await count(database_uri, table) == 0, table


async def test_unknown_names_and_ids_are_not_found(stubs: tuple[Any, Any]) -> None:
    memory, scheduler = stubs
    cases = [
        (memory.GetProfile, memory_pb2.GetProfileRequest(username="nobody")),
        (memory.TagHost, memory_pb2.TagHostRequest(host_name="nowhere", add=["x"])),
        (memory.RemoveHost, memory_pb2.RemoveHostRequest(host_name="nowhere")),
        (scheduler.ApproveTask, scheduler_pb2.ApproveTaskRequest(task_id="t-0000")),
        (scheduler.DenyTask, scheduler_pb2.DenyTaskRequest(task_id="t-0000")),
        (scheduler.ForgetApproval, scheduler_pb2.ForgetApprovalRequest(id=99)),
    ]
    for call, request in cases:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await call(request, timeout=10)
        assert caught.value.code() is grpc.StatusCode.NOT_FOUND, request


async def test_the_memory_needs_the_user_token_in_a_secured_mesh(mesh: Mesh) -> None:
    mesh.configure(AGENTMESH_TOKEN="memory-mesh-token-55")
    await mesh.start_scheduler()
    address = mesh.schedulers[0].address
    request = memory_pb2.ListProfilesRequest()
    for token, expected in ((None, "UNAUTHENTICATED"), ("wrong-token-000", "UNAUTHENTICATED")):
        async with open_channel(address, token=token, tls=TlsSettings()) as channel:
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await memory_pb2_grpc.MemoryStub(channel).ListProfiles(request, timeout=10)
            assert refused.value.code().name == expected
    async with open_channel(address, token="memory-mesh-token-55", tls=TlsSettings()) as channel:
        reply = await memory_pb2_grpc.MemoryStub(channel).ListProfiles(request, timeout=10)
    assert not reply.profiles
