"""Node credentials: each node heartbeats under its own, bound to the agent id it registered.

With a user token set, a heartbeat for another node's agent id is refused (and the victim's
endpoint and tasks stay its own), a credential speaks for one agent only, a revoked one is
refused and its node gets no more tasks, and neither kind of credential can do what the
other is for: the user's cannot heartbeat or lease keys, a node's cannot submit.
"""

from __future__ import annotations

import asyncpg
import grpc
import pytest

from agentmesh.access import credentials
from agentmesh.config import TlsSettings
from agentmesh.rpc import convert
from agentmesh.rpc.channel import open_channel
from agentmesh.v1 import keys_pb2, keys_pb2_grpc, scheduler_pb2, scheduler_pb2_grpc, task_pb2
from tests.scheduler.conftest import Mesh
from tests.scheduler.test_waiting import run_to_end, waiting_reason
from tests.support.databases import Server

TOKEN = "user-credential-7e21"
COMPLETED = task_pb2.TASK_STATE_COMPLETED


@pytest.fixture
def pg_server(embedded_server: Server) -> Server:
    return embedded_server


@pytest.fixture
async def secured(mesh: Mesh) -> Mesh:
    mesh.configure(AGENTMESH_TOKEN=TOKEN)
    await mesh.start_scheduler()
    return mesh


async def _enroll(mesh: Mesh, name: str) -> str:
    async with mesh.schedulers[0].pool.acquire() as conn:
        _, token = await credentials.enroll(conn, name)
    return token


async def _endpoint(mesh: Mesh, agent_id: str) -> str | None:
    conn = await asyncpg.connect(mesh.database_uri, timeout=10)
    try:
        endpoint: str | None = await conn.fetchval(
            "SELECT endpoint FROM agents WHERE id = $1", agent_id
        )
        return endpoint
    finally:
        await conn.close()


def _user(mesh: Mesh) -> grpc.aio.Channel:
    return open_channel(mesh.schedulers[0].address, token=TOKEN, tls=TlsSettings())


async def _heartbeat(mesh: Mesh, token: str, card: object) -> scheduler_pb2.HeartbeatResponse:
    async with open_channel(mesh.schedulers[0].address, token=token, tls=TlsSettings()) as ch:
        stub = scheduler_pb2_grpc.SchedulerStub(ch)
        return await stub.Heartbeat(scheduler_pb2.HeartbeatRequest(card=card), timeout=10)


async def test_a_heartbeat_for_another_nodes_agent_id_is_refused_and_the_victim_keeps_its_tasks(
    secured: Mesh,
) -> None:
    victim = await secured.start_node("victim")
    victim_id = victim.card().agent_id
    thief = await _enroll(secured, "thief")
    hijack = convert.card_to_proto(victim.card())
    hijack.endpoint = "127.0.0.1:9"  # where the thief would like the victim's tasks to go

    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await _heartbeat(secured, thief, hijack)
    assert refused.value.code() is grpc.StatusCode.PERMISSION_DENIED
    assert f"agent {victim_id} is bound to another node credential" in (
        refused.value.details() or ""
    )
    assert await _endpoint(secured, victim_id) == victim.address

    # The thief's credential binds the first agent id it heartbeats, and that one only.
    own = convert.card_to_proto(victim.card())
    own.agent_id, own.name, own.endpoint, own.draining = "thief-1", "thief", "127.0.0.1:9", True
    reply = await _heartbeat(secured, thief, own)
    assert reply.dispatch_secret
    own.agent_id = "thief-2"
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await _heartbeat(secured, thief, own)
    assert refused.value.code() is grpc.StatusCode.PERMISSION_DENIED
    assert "speaks for agent thief-1, not thief-2" in (refused.value.details() or "")
    assert await _endpoint(secured, "thief-2") is None

    async with _user(secured) as channel:
        stub = scheduler_pb2_grpc.SchedulerStub(channel)
        spec = task_pb2.TaskSpec(kind="echo", prompt="mine", target_host="victim")
        task = await stub.SubmitTask(scheduler_pb2.SubmitTaskRequest(spec=spec))
        done, _ = await run_to_end(stub, task.id)
    assert done.state == COMPLETED, done.error
    assert done.assigned_agent == victim_id
    assert await _endpoint(secured, victim_id) == victim.address


async def test_a_revoked_node_credential_is_refused_and_its_node_gets_no_more_tasks(
    secured: Mesh,
) -> None:
    await secured.start_node("stays")
    gone = await secured.start_node("gone")
    card = convert.card_to_proto(gone.card())
    async with secured.schedulers[0].pool.acquire() as conn:
        revoked = await credentials.revoke(conn, "local:gone")
    assert revoked.agent_id == card.agent_id

    async with _user(secured) as channel:
        stub = scheduler_pb2_grpc.SchedulerStub(channel)
        spec = task_pb2.TaskSpec(kind="echo", prompt="not for you", target_host="gone")
        task = await stub.SubmitTask(scheduler_pb2.SubmitTaskRequest(spec=spec))
        assert "gone is not online" in await waiting_reason(stub, task.id)
        still = await stub.GetTask(scheduler_pb2.GetTaskRequest(task_id=task.id))
        assert still.state == task_pb2.TASK_STATE_SUBMITTED
        assert not still.assigned_agent
        # The other node's credential is untouched: it still gets work.
        spec = task_pb2.TaskSpec(kind="echo", prompt="for you", target_host="stays")
        other = await stub.SubmitTask(scheduler_pb2.SubmitTaskRequest(spec=spec))
        done, _ = await run_to_end(stub, other.id)
        assert done.state == COMPLETED, done.error

    # Its node's own heartbeats, under the revoked credential, are refused.
    assert gone.registration is not None
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await gone.registration.beat()
    assert refused.value.code() is grpc.StatusCode.UNAUTHENTICATED
    assert "revoked" in (refused.value.details() or "")


async def test_only_a_node_credential_leases_keys_and_only_for_its_own_agent(
    secured: Mesh,
) -> None:
    node = await secured.start_node("leaser")
    other = await _enroll(secured, "other")
    request = keys_pb2.LeaseKeyRequest(
        task_id="t-1", attempt=1, agent_id=node.card().agent_id, model="gemini-2.5-flash"
    )
    report = keys_pb2.ReportKeyUseRequest(
        task_id="t-1", attempt=1, agent_id=node.card().agent_id, fingerprint="sha256:0"
    )
    for token, code in ((TOKEN, "PERMISSION_DENIED"), (other, "PERMISSION_DENIED")):
        address = secured.schedulers[0].address
        async with open_channel(address, token=token, tls=TlsSettings()) as channel:
            keys = keys_pb2_grpc.KeyPoolStub(channel)
            for call in (keys.LeaseKey(request, timeout=10), keys.ReportKeyUse(report, timeout=10)):
                with pytest.raises(grpc.aio.AioRpcError) as refused:
                    await call
                assert refused.value.code().name == code, refused.value.details()
