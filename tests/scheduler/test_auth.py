"""Credentials on every RPC of both services, through the channels the mesh itself uses.

With `AGENTMESH_TOKEN` set, each RPC of `agentmesh.v1.AgentNode` and `agentmesh.v1.Scheduler`
refuses a client without a token or with a wrong one (UNAUTHENTICATED) without doing
anything; health and reflection answer anyone. The user credential answers every RPC but
the node-only Heartbeat (PERMISSION_DENIED); a node credential answers Heartbeat only
(PERMISSION_DENIED on the scheduler's other RPCs; the node's own RPCs do not know it). The
RPCs are read from the service descriptors: an RPC added to a service without a case here
fails these tests.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterable, Awaitable, Callable
from dataclasses import dataclass, field
from typing import TypeVar

import asyncpg
import grpc
import pytest
from google.protobuf.descriptor import MethodDescriptor
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from agentmesh.access import credentials
from agentmesh.config import TlsSettings
from agentmesh.node.card import build_card
from agentmesh.node.registration import Registration
from agentmesh.rpc import convert
from agentmesh.rpc.channel import open_channel
from agentmesh.rpc.work_stream import accepted
from agentmesh.v1 import (
    agent_pb2,
    node_pb2,
    node_pb2_grpc,
    scheduler_pb2,
    scheduler_pb2_grpc,
    task_pb2,
)
from tests.scheduler.conftest import HEARTBEAT, Mesh
from tests.support.databases import Server

TOKEN = "mesh-token-5d1e8a"
WRONG_TOKEN = "not-the-mesh-token"
BEARER = (("authorization", f"Bearer {TOKEN}"),)
COMPLETED = task_pb2.TASK_STATE_COMPLETED
SERVICES = (
    node_pb2.DESCRIPTOR.services_by_name["AgentNode"],
    scheduler_pb2.DESCRIPTOR.services_by_name["Scheduler"],
)
NO_PLACE = "capability-nobody-has"
HEARTBEAT_RPC = "agentmesh.v1.Scheduler.Heartbeat"
# Only a running agent's mesh credential delegates (tests/scheduler/test_delegation.py).
DELEGATE_RPC = "agentmesh.v1.Scheduler.DelegateTask"

T = TypeVar("T")


@pytest.fixture
def pg_server(embedded_server: Server) -> Server:
    """The token check does not touch the database: one server is enough."""
    return embedded_server


def rpc_methods() -> list[MethodDescriptor]:
    return [method for service in SERVICES for method in service.methods]


@dataclass
class Clients:
    """Stubs of the node and the scheduler over channels opened one way (token or not)."""

    node: node_pb2_grpc.AgentNodeAsyncStub
    scheduler: scheduler_pb2_grpc.SchedulerAsyncStub


@dataclass
class Targets:
    """What the calls act on, prepared before any case runs."""

    node_id: str
    node_hostname: str
    finished_task_id: str
    waiting_task_id: str
    visitor_card: agent_pb2.AgentCard
    # Agent ids that Heartbeat cases announced, in order.
    heartbeat_ids: list[str] = field(default_factory=list)


Case = Callable[[Clients, Targets], Awaitable[None]]


async def _stream(call: AsyncIterable[T]) -> list[T]:
    messages = [message async for message in call]
    assert messages, "the stream ended without a message"
    return messages


def _state_name(state: int) -> str:
    return task_pb2.TaskState.Name(state)


def _echo(prompt: str) -> task_pb2.TaskSpec:
    return task_pb2.TaskSpec(kind="echo", prompt=prompt)


async def _node_get_capabilities(clients: Clients, targets: Targets) -> None:
    card = await clients.node.GetCapabilities(node_pb2.GetCapabilitiesRequest())
    assert card.agent_id == targets.node_id


async def _node_execute_task(clients: Clients, targets: Targets) -> None:
    request = node_pb2.ExecuteTaskRequest(
        task_id=f"direct-{uuid.uuid4().hex[:8]}", spec=_echo("direct")
    )
    events = await _stream(clients.node.ExecuteTask(request))
    assert events[-1].result.state == COMPLETED, _state_name(events[-1].result.state)


async def _node_work(clients: Clients, targets: Targets) -> None:
    """The scheduler's stream: one attempt started, its events until the result."""
    call = clients.node.Work()
    task_id = f"work-{uuid.uuid4().hex[:8]}"
    # As the scheduler does: write once the node has taken the stream (the mark in its
    # headers), or a write racing the refusal would turn its status into INTERNAL.
    if accepted(await call.initial_metadata()):  # else refused: reading raises the status
        start = node_pb2.ExecuteTaskRequest(task_id=task_id, attempt=1, spec=_echo("work"))
        await call.write(node_pb2.WorkRequest(start=[start]))
        await call.done_writing()
    updates = await _stream(call)
    assert not [e for u in updates for e in u.errors], "the node refused the attempt"
    events = [e for u in updates for e in u.events]
    assert events[-1].result.state == COMPLETED, _state_name(events[-1].result.state)


async def _node_cancel_task(clients: Clients, targets: Targets) -> None:
    reply = await clients.node.CancelTask(node_pb2.CancelTaskRequest(task_id="nothing-running"))
    assert not reply.canceled


async def _submit_task(clients: Clients, targets: Targets) -> None:
    task = await clients.scheduler.SubmitTask(scheduler_pb2.SubmitTaskRequest(spec=_echo("sub")))
    assert task.id


async def _submit_tasks(clients: Clients, targets: Targets) -> None:
    request = scheduler_pb2.SubmitTasksRequest(specs=[_echo("one"), _echo("two")])
    reply = await clients.scheduler.SubmitTasks(request)
    assert [task.spec.prompt for task in reply.tasks] == ["one", "two"]


async def _run_task(clients: Clients, targets: Targets) -> None:
    # To complete, the scheduler must stream ExecuteTask to the node with the token too.
    request = scheduler_pb2.SubmitTaskRequest(spec=_echo("run"))
    events = await _stream(clients.scheduler.RunTask(request))
    assert events[-1].result.state == COMPLETED, _state_name(events[-1].result.state)


async def _watch_task(clients: Clients, targets: Targets) -> None:
    request = scheduler_pb2.WatchTaskRequest(task_id=targets.finished_task_id)
    events = await _stream(clients.scheduler.WatchTask(request))
    assert events[-1].result.state == COMPLETED, _state_name(events[-1].result.state)


async def _watch_task_events(clients: Clients, targets: Targets) -> None:
    request = scheduler_pb2.WatchTaskRequest(task_id=targets.finished_task_id)
    batches = await _stream(clients.scheduler.WatchTaskEvents(request))
    last = batches[-1].events[-1]
    assert last.result.state == COMPLETED, _state_name(last.result.state)


async def _get_task(clients: Clients, targets: Targets) -> None:
    request = scheduler_pb2.GetTaskRequest(task_id=targets.finished_task_id)
    task = await clients.scheduler.GetTask(request)
    assert task.state == COMPLETED, f"{_state_name(task.state)}: {task.error}"


async def _list_tasks(clients: Clients, targets: Targets) -> None:
    reply = await clients.scheduler.ListTasks(scheduler_pb2.ListTasksRequest())
    assert targets.finished_task_id in {task.id for task in reply.tasks}


async def _cancel_task(clients: Clients, targets: Targets) -> None:
    request = node_pb2.CancelTaskRequest(task_id=targets.waiting_task_id, reason="auth test")
    task = await clients.scheduler.CancelTask(request)
    assert task.state == task_pb2.TASK_STATE_CANCELED, _state_name(task.state)


async def _list_agents(clients: Clients, targets: Targets) -> None:
    reply = await clients.scheduler.ListAgents(scheduler_pb2.ListAgentsRequest())
    assert targets.node_id in {agent.card.agent_id for agent in reply.agents}


async def _list_hosts(clients: Clients, targets: Targets) -> None:
    reply = await clients.scheduler.ListHosts(scheduler_pb2.ListHostsRequest())
    assert targets.node_hostname in {host.host_name for host in reply.hosts}


async def _heartbeat(clients: Clients, targets: Targets) -> None:
    card = agent_pb2.AgentCard()
    card.CopyFrom(targets.visitor_card)
    card.agent_id = f"visitor-{uuid.uuid4().hex[:8]}"
    targets.heartbeat_ids.append(card.agent_id)
    reply = await clients.scheduler.Heartbeat(scheduler_pb2.HeartbeatRequest(card=card))
    assert reply.interval_seconds > 0


async def _reached(call: Awaitable[object], expected: grpc.StatusCode) -> None:
    """The call reached its handler, which answered `expected` (the target does not fit it:
    the point is who may call at all)."""
    try:
        await call
    except grpc.aio.AioRpcError as error:
        if error.code() is not expected:
            raise
        return
    raise AssertionError(f"expected {expected.name}")


async def _delegate_task(clients: Clients, targets: Targets) -> None:
    request = scheduler_pb2.DelegateTaskRequest(spec=_echo("child"))
    await clients.scheduler.DelegateTask(request)


async def _list_approvals(clients: Clients, targets: Targets) -> None:
    reply = await clients.scheduler.ListApprovals(scheduler_pb2.ListApprovalsRequest())
    assert not reply.approvals


async def _approve_task(clients: Clients, targets: Targets) -> None:
    request = scheduler_pb2.ApproveTaskRequest(task_id=targets.finished_task_id)
    await _reached(clients.scheduler.ApproveTask(request), grpc.StatusCode.FAILED_PRECONDITION)


async def _deny_task(clients: Clients, targets: Targets) -> None:
    request = scheduler_pb2.DenyTaskRequest(task_id=targets.finished_task_id)
    await _reached(clients.scheduler.DenyTask(request), grpc.StatusCode.FAILED_PRECONDITION)


async def _forget_approval(clients: Clients, targets: Targets) -> None:
    request = scheduler_pb2.ForgetApprovalRequest(id=987654)
    await _reached(clients.scheduler.ForgetApproval(request), grpc.StatusCode.NOT_FOUND)


CASES: dict[str, Case] = {
    "agentmesh.v1.AgentNode.GetCapabilities": _node_get_capabilities,
    "agentmesh.v1.AgentNode.ExecuteTask": _node_execute_task,
    "agentmesh.v1.AgentNode.CancelTask": _node_cancel_task,
    "agentmesh.v1.AgentNode.Work": _node_work,
    "agentmesh.v1.Scheduler.SubmitTask": _submit_task,
    "agentmesh.v1.Scheduler.SubmitTasks": _submit_tasks,
    "agentmesh.v1.Scheduler.RunTask": _run_task,
    "agentmesh.v1.Scheduler.WatchTask": _watch_task,
    "agentmesh.v1.Scheduler.WatchTaskEvents": _watch_task_events,
    "agentmesh.v1.Scheduler.GetTask": _get_task,
    "agentmesh.v1.Scheduler.ListTasks": _list_tasks,
    "agentmesh.v1.Scheduler.CancelTask": _cancel_task,
    "agentmesh.v1.Scheduler.ListAgents": _list_agents,
    "agentmesh.v1.Scheduler.ListHosts": _list_hosts,
    "agentmesh.v1.Scheduler.Heartbeat": _heartbeat,
    DELEGATE_RPC: _delegate_task,
    "agentmesh.v1.Scheduler.ListApprovals": _list_approvals,
    "agentmesh.v1.Scheduler.ApproveTask": _approve_task,
    "agentmesh.v1.Scheduler.DenyTask": _deny_task,
    "agentmesh.v1.Scheduler.ForgetApproval": _forget_approval,
}


async def _outcomes(clients: Clients, targets: Targets) -> dict[str, str]:
    """Each RPC's outcome: "OK", the status code's name, or what was wrong with the answer."""
    outcomes = {}
    for method in rpc_methods():
        try:
            await CASES[method.full_name](clients, targets)
        except grpc.aio.AioRpcError as error:
            outcomes[method.full_name] = error.code().name
        except AssertionError as error:
            first_line = str(error).partition("\n")[0]
            outcomes[method.full_name] = f"answered, but {first_line}"
        else:
            outcomes[method.full_name] = "OK"
    return outcomes


def _clients(node: grpc.aio.Channel, scheduler: grpc.aio.Channel) -> Clients:
    return Clients(node_pb2_grpc.AgentNodeStub(node), scheduler_pb2_grpc.SchedulerStub(scheduler))


async def _prepare(mesh: Mesh) -> Targets:
    """A finished task and a waiting one, set up with the token passed by hand."""
    node = mesh.nodes[0]
    async with grpc.aio.insecure_channel(mesh.schedulers[0].address) as channel:
        stub = scheduler_pb2_grpc.SchedulerStub(channel)
        finished = await stub.SubmitTask(
            scheduler_pb2.SubmitTaskRequest(spec=_echo("finished")), metadata=BEARER
        )
        watch = scheduler_pb2.WatchTaskRequest(task_id=finished.id)
        async for _ in stub.WatchTask(watch, metadata=BEARER):
            pass
        waiting = await stub.SubmitTask(
            scheduler_pb2.SubmitTaskRequest(
                spec=task_pb2.TaskSpec(kind="echo", prompt="w", required_capabilities=[NO_PLACE])
            ),
            metadata=BEARER,
        )
    card = convert.card_to_proto(node.card())
    # Nothing may be placed on the visitor: it runs nothing and says it is draining.
    del card.executors[:]
    card.draining = True
    card.name = "visitor"
    card.endpoint = "127.0.0.1:9"
    return Targets(
        node_id=node.card().agent_id,
        node_hostname=node.card().hostname,
        finished_task_id=finished.id,
        waiting_task_id=waiting.id,
        visitor_card=card,
    )


async def _fetch_column(database_uri: str, query: str, *args: object) -> list[object]:
    conn = await asyncpg.connect(database_uri, timeout=10)
    try:
        return [row[0] for row in await conn.fetch(query, *args)]
    finally:
        await conn.close()


async def _enroll(database_uri: str, name: str) -> str:
    """A fresh node credential, as `agentmesh nodes enroll` issues one."""
    conn = await asyncpg.connect(database_uri, timeout=10)
    try:
        _, token = await credentials.enroll(conn, name)
    finally:
        await conn.close()
    return token


async def _first_listing(
    replies: AsyncIterable[reflection_pb2.ServerReflectionResponse],
) -> set[str]:
    async for reply in replies:
        return {service.name for service in reply.list_services_response.service}
    raise AssertionError("reflection answered nothing")


def test_every_rpc_has_a_case() -> None:
    assert sorted(CASES) == sorted(method.full_name for method in rpc_methods())
    # Cases call stubs with one request; the one client-streaming RPC has a case of its own.
    assert [m.full_name for m in rpc_methods() if m.client_streaming] == [
        "agentmesh.v1.AgentNode.Work"
    ]


async def test_every_rpc_needs_the_token_and_health_and_reflection_do_not(
    mesh: Mesh, database_uri: str
) -> None:
    mesh.configure(AGENTMESH_TOKEN=TOKEN)
    await mesh.start_scheduler()
    await mesh.start_node("alpha")
    targets = await _prepare(mesh)
    node_address, scheduler_address = mesh.nodes[0].address, mesh.schedulers[0].address
    tasks_before = await _fetch_column(database_uri, "SELECT id FROM tasks ORDER BY id")
    methods = [method.full_name for method in rpc_methods()]
    plain = TlsSettings()

    async with (
        grpc.aio.insecure_channel(node_address) as node_anonymous,
        grpc.aio.insecure_channel(scheduler_address) as scheduler_anonymous,
        open_channel(node_address, token=WRONG_TOKEN, tls=plain) as node_wrong,
        open_channel(scheduler_address, token=WRONG_TOKEN, tls=plain) as scheduler_wrong,
    ):
        anonymous = _clients(node_anonymous, scheduler_anonymous)
        assert await _outcomes(anonymous, targets) == dict.fromkeys(methods, "UNAUTHENTICATED")
        wrong = _clients(node_wrong, scheduler_wrong)
        assert await _outcomes(wrong, targets) == dict.fromkeys(methods, "UNAUTHENTICATED")

        for channel, service in (
            (node_anonymous, "agentmesh.v1.AgentNode"),
            (scheduler_anonymous, "agentmesh.v1.Scheduler"),
        ):
            health = await health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=service)
            )
            assert health.status == health_pb2.HealthCheckResponse.SERVING
            reflection = reflection_pb2_grpc.ServerReflectionStub(channel)
            replies = reflection.ServerReflectionInfo(
                iter([reflection_pb2.ServerReflectionRequest(list_services="")])
            )
            assert service in await _first_listing(replies)

    # Refused calls did nothing: no task was added or canceled, no visitor registered.
    assert await _fetch_column(database_uri, "SELECT id FROM tasks ORDER BY id") == tasks_before
    waiting = await _fetch_column(
        database_uri, "SELECT state FROM tasks WHERE id = $1", targets.waiting_task_id
    )
    assert waiting == ["submitted"]
    refused_ids = list(targets.heartbeat_ids)
    assert len(refused_ids) == 2
    assert not set(refused_ids) & set(await _fetch_column(database_uri, "SELECT id FROM agents"))

    async with (
        open_channel(node_address, token=TOKEN, tls=plain) as node_channel,
        open_channel(scheduler_address, token=TOKEN, tls=plain) as scheduler_channel,
    ):
        user = _clients(node_channel, scheduler_channel)
        assert await _outcomes(user, targets) == {
            **dict.fromkeys(methods, "OK"),
            HEARTBEAT_RPC: "PERMISSION_DENIED",
            DELEGATE_RPC: "PERMISSION_DENIED",
        }
    assert not set(targets.heartbeat_ids) & set(
        await _fetch_column(database_uri, "SELECT id FROM agents")
    )

    # A node credential: the one node-only RPC, and nothing a person does.
    node_token = await _enroll(database_uri, "visitor")
    tasks_before = await _fetch_column(database_uri, "SELECT id FROM tasks ORDER BY id")
    async with (
        open_channel(node_address, token=node_token, tls=plain) as node_channel,
        open_channel(scheduler_address, token=node_token, tls=plain) as scheduler_channel,
    ):
        node = _clients(node_channel, scheduler_channel)
        assert await _outcomes(node, targets) == {
            **{m: "PERMISSION_DENIED" for m in methods if m.startswith("agentmesh.v1.Sch")},
            **{m: "UNAUTHENTICATED" for m in methods if m.startswith("agentmesh.v1.AgentNode")},
            HEARTBEAT_RPC: "OK",
        }
    assert await _fetch_column(database_uri, "SELECT id FROM tasks ORDER BY id") == tasks_before
    assert await _fetch_column(
        database_uri, "SELECT state FROM tasks WHERE id = $1", targets.waiting_task_id
    ) == ["canceled"]  # by the user's CancelTask above, not the node's
    assert targets.heartbeat_ids[-1] in await _fetch_column(database_uri, "SELECT id FROM agents")


async def test_a_node_without_the_token_is_refused_and_not_registered(
    mesh: Mesh, database_uri: str
) -> None:
    mesh.configure(AGENTMESH_TOKEN=TOKEN)
    await mesh.start_scheduler()
    address = mesh.schedulers[0].address
    card = build_card(
        agent_id=f"stranger-{uuid.uuid4().hex[:8]}",
        name="stranger",
        executors=("echo", "shell"),
        models=(),
        configured_capabilities=(),
        max_concurrency=1,
        permission_mode="weak",
        endpoint="127.0.0.1:9",
        gemini_version=None,
    )

    async def beat(token: str | None) -> None:
        registration = Registration(
            address,
            lambda: card,
            lambda: (),
            interval_seconds=HEARTBEAT,
            token=token,
            tls=TlsSettings(),
        )
        try:
            await registration.beat()
        finally:
            await registration.close(final_beat=False)

    for token in (None, WRONG_TOKEN):
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await beat(token)
        assert refused.value.code() is grpc.StatusCode.UNAUTHENTICATED
    # The user credential is not a node's: it cannot register one.
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await beat(TOKEN)
    assert refused.value.code() is grpc.StatusCode.PERMISSION_DENIED
    assert "AGENTMESH_NODE_TOKEN" in (refused.value.details() or "")
    assert card.agent_id not in await _fetch_column(database_uri, "SELECT id FROM agents")

    await beat(await _enroll(database_uri, "stranger"))
    assert await _fetch_column(database_uri, "SELECT id FROM agents") == [card.agent_id]
