"""AgentNode through a real gRPC connection: card, echo, shell, refusals, cancel, limits, auth."""

from __future__ import annotations

import asyncio
import logging
import os
import socket
from pathlib import Path

import grpc
import pytest
from google.rpc import error_details_pb2, status_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc

from agentmesh.config import ConfigError
from agentmesh.v1 import node_pb2, task_pb2
from tests.node.conftest import StartNode

COMPLETED = task_pb2.TASK_STATE_COMPLETED


async def collect(call: grpc.aio.UnaryStreamCall) -> list[task_pb2.TaskEvent]:  # type: ignore[type-arg]
    """The rest of a stream's events (read() style, so earlier read() calls may precede it)."""
    events = []
    while (event := await call.read()) is not grpc.aio.EOF:
        events.append(event)
    return events


def execute(task_id: str, **spec: object) -> node_pb2.ExecuteTaskRequest:
    return node_pb2.ExecuteTaskRequest(task_id=task_id, attempt=1, spec=task_pb2.TaskSpec(**spec))  # type: ignore[arg-type]


def assert_well_numbered(events: list[task_pb2.TaskEvent], task_id: str) -> None:
    assert [e.seq for e in events] == list(range(1, len(events) + 1))
    assert all(e.task_id == task_id for e in events)
    assert all(e.time.seconds > 0 for e in events)
    assert events[-1].WhichOneof("payload") == "result"
    assert all(e.WhichOneof("payload") != "result" for e in events[:-1])


def stdout_of(events: list[task_pb2.TaskEvent]) -> str:
    return "".join(e.stdout.text for e in events if e.WhichOneof("payload") == "stdout")


async def wait_for_file(path: Path) -> None:
    for _ in range(400):
        if path.exists() and path.read_text().strip():
            return
        await asyncio.sleep(0.025)
    raise AssertionError(f"{path} never appeared")


async def wait_until_gone(pid: int) -> bool:
    for _ in range(400):
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        await asyncio.sleep(0.025)
    return False


async def test_capabilities_describe_the_node(start_node: StartNode) -> None:
    agent, stub = await start_node(capabilities=["inventory", "gpu"], max_concurrency=3)
    card = await stub.GetCapabilities(node_pb2.GetCapabilitiesRequest())

    assert card.agent_id == agent.card().agent_id
    assert card.name == "node0"
    assert card.hostname == socket.gethostname()
    assert "127.0.0.1" in card.ip_addresses
    assert {"echo", "shell", "gemini"} <= set(card.executors)
    assert card.gemini_cli_version
    assert {"inventory", "gpu", "os:linux"} <= set(card.capabilities)
    assert any(c.startswith("arch:") for c in card.capabilities)
    assert "tool:python3" in card.capabilities
    assert card.cpu_count >= 1
    assert card.memory_bytes > 0
    assert card.max_concurrency == 3
    assert card.running_tasks == 0
    assert card.permission_mode == "weak"
    assert card.endpoint == agent.address


async def test_a_cli_command_that_does_not_exist_is_one_warning_naming_the_variable(
    start_node: StartNode, caplog: pytest.LogCaptureFixture, tmp_path: Path
) -> None:
    # Like the seed's placeholder /usr/local/bin/gemini, on a host where it does not exist.
    command = str(tmp_path / "usr/local/bin/gemini")
    caplog.set_level(logging.INFO)
    _, stub = await start_node(env={"GEMINI_CLI_COMMAND": command})

    mentions = [r for r in caplog.records if "GEMINI_CLI_COMMAND" in r.getMessage()]
    assert [(r.levelno, r.getMessage()) for r in mentions] == [
        (
            logging.WARNING,
            f"no gemini executor: GEMINI_CLI_COMMAND={command} cannot start: No such file or"
            " directory",
        )
    ]
    card = await stub.GetCapabilities(node_pb2.GetCapabilitiesRequest())
    assert set(card.executors) == {"echo", "shell"}
    events = await collect(stub.ExecuteTask(execute("t-1", kind="echo", prompt="still here")))
    assert events[-1].result.state == COMPLETED


async def test_agent_id_is_kept_across_restarts(start_node: StartNode) -> None:
    first, _ = await start_node(name="steady")
    second, _ = await start_node(name="steady")
    other, _ = await start_node(name="other")
    assert first.card().agent_id == second.card().agent_id
    assert other.card().agent_id != first.card().agent_id


async def test_gemini_is_advertised_only_where_the_cli_runs(start_node: StartNode) -> None:
    _, stub = await start_node(env={"GEMINI_CLI_COMMAND": "/nonexistent/gemini"})
    card = await stub.GetCapabilities(node_pb2.GetCapabilitiesRequest())
    assert "gemini" not in card.executors
    assert card.gemini_cli_version == ""
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await collect(stub.ExecuteTask(execute("t-1", kind="gemini", prompt="hi")))
    assert caught.value.code() is grpc.StatusCode.FAILED_PRECONDITION
    assert "no gemini executor" in (caught.value.details() or "")


async def test_echo_streams_the_prompt_back(start_node: StartNode) -> None:
    _, stub = await start_node()
    prompt = "hello mesh " * 5000
    events = await collect(stub.ExecuteTask(execute("echo-1", kind="echo", prompt=prompt)))

    assert_well_numbered(events, "echo-1")
    assert events[0].status.state == task_pb2.TASK_STATE_WORKING
    assert "".join(e.text.text for e in events if e.WhichOneof("payload") == "text") == prompt
    assert events[-1].result.state == COMPLETED


async def test_shell_streams_stdout_and_stderr_separately(start_node: StartNode) -> None:
    _, stub = await start_node()
    events = await collect(
        stub.ExecuteTask(execute("sh-1", kind="shell", command="ls -d / /nonexistent-path"))
    )

    assert_well_numbered(events, "sh-1")
    assert stdout_of(events) == "/\n"
    stderr = "".join(e.stderr.text for e in events if e.WhichOneof("payload") == "stderr")
    assert "nonexistent-path" in stderr
    result = events[-1].result
    assert result.state == task_pb2.TASK_STATE_FAILED
    assert result.exit_code == 2
    assert result.error == "exited with code 2"


async def test_shell_output_streams_as_it_comes(start_node: StartNode, tmp_path: Path) -> None:
    _, stub = await start_node()
    # The command cannot finish until the test has seen its first line and created `go`.
    command = "echo first; while [ ! -e go ]; do sleep 0.05; done; echo second"
    call = stub.ExecuteTask(
        execute("stream-1", kind="shell", command=command, permission_mode="superuser")
    )
    seen = []
    while (event := await call.read()) is not grpc.aio.EOF:
        seen.append(event)
        if event.WhichOneof("payload") == "stdout" and "first" in event.stdout.text:
            assert "second" not in stdout_of(seen)
            (tmp_path / "go").touch()
    assert stdout_of(seen) == "first\nsecond\n"
    assert seen[-1].result.state == COMPLETED


async def test_refused_command_is_never_started(start_node: StartNode, tmp_path: Path) -> None:
    canary = tmp_path / "canary.txt"
    canary.write_text("canary")
    _, stub = await start_node()
    events = await collect(
        stub.ExecuteTask(execute("bad-1", kind="shell", command="ls; rm canary.txt"))
    )

    assert_well_numbered(events, "bad-1")
    refusals = [e.refusal for e in events if e.WhichOneof("payload") == "refusal"]
    assert len(refusals) == 1
    assert refusals[0].mode == "weak"
    assert refusals[0].rule
    assert refusals[0].command
    assert events[-1].result.state == task_pb2.TASK_STATE_REJECTED
    assert "weak" in events[-1].result.error
    assert canary.read_text() == "canary"


async def test_superuser_denylist_refuses_chained_command(
    start_node: StartNode, tmp_path: Path
) -> None:
    canary = tmp_path / "canary.txt"
    canary.write_text("canary")
    _, stub = await start_node()
    events = await collect(
        stub.ExecuteTask(
            execute(
                "bad-2",
                kind="shell",
                command="uname -a && rm -f canary.txt",
                permission_mode="superuser",
            )
        )
    )
    refusal = next(e.refusal for e in events if e.WhichOneof("payload") == "refusal")
    assert refusal.mode == "superuser"
    assert "rm" in refusal.command
    assert events[-1].result.state == task_pb2.TASK_STATE_REJECTED
    assert canary.read_text() == "canary"


async def test_cancel_stops_the_whole_process_group(start_node: StartNode, tmp_path: Path) -> None:
    _, stub = await start_node(sandbox="none")  # host pids (tests/node/test_sandbox.py)
    command = "sleep 300 & echo $! > child.pid; echo $$ > shell.pid; wait"
    call = stub.ExecuteTask(
        execute("long-1", kind="shell", command=command, permission_mode="superuser")
    )
    first = await call.read()
    assert first.status.state == task_pb2.TASK_STATE_WORKING
    await wait_for_file(tmp_path / "child.pid")
    await wait_for_file(tmp_path / "shell.pid")
    pids = [int((tmp_path / f"{n}.pid").read_text()) for n in ("child", "shell")]

    reply = await stub.CancelTask(node_pb2.CancelTaskRequest(task_id="long-1"))
    assert reply.canceled
    rest = await collect(call)

    assert rest[-1].result.state == task_pb2.TASK_STATE_CANCELED
    for pid in pids:
        assert await wait_until_gone(pid), f"process {pid} survived the cancel"
    again = await stub.CancelTask(node_pb2.CancelTaskRequest(task_id="long-1"))
    assert not again.canceled


async def test_dropped_client_cancels_the_task(start_node: StartNode, tmp_path: Path) -> None:
    agent, stub = await start_node(sandbox="none")
    command = "sleep 300 & echo $! > child.pid; wait"
    call = stub.ExecuteTask(
        execute("drop-1", kind="shell", command=command, permission_mode="superuser")
    )
    await call.read()
    await wait_for_file(tmp_path / "child.pid")
    pid = int((tmp_path / "child.pid").read_text())

    call.cancel()

    assert await wait_until_gone(pid)
    for _ in range(200):
        if agent.runner.running == 0:
            break
        await asyncio.sleep(0.025)
    assert agent.runner.running == 0


async def test_more_tasks_than_max_concurrency_are_refused(
    start_node: StartNode, tmp_path: Path
) -> None:
    _, stub = await start_node(max_concurrency=1)
    long_call = stub.ExecuteTask(
        execute("busy-1", kind="shell", command="sleep 300", permission_mode="superuser")
    )
    await long_call.read()
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await collect(stub.ExecuteTask(execute("busy-2", kind="echo", prompt="x")))
    assert caught.value.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "max_concurrency=1" in (caught.value.details() or "")
    await stub.CancelTask(node_pb2.CancelTaskRequest(task_id="busy-1"))
    assert (await collect(long_call))[-1].result.state == task_pb2.TASK_STATE_CANCELED


@pytest.mark.parametrize(
    ("request_fields", "field"),
    [
        ({"task_id": "t", "spec": {"kind": "python", "prompt": "x"}}, "spec.kind"),
        ({"task_id": "t", "spec": {"prompt": "x"}}, "spec.kind"),
        ({"task_id": "t", "spec": {"kind": "echo"}}, "spec.prompt"),
        ({"task_id": "t", "spec": {"kind": "shell", "command": "   "}}, "spec.command"),
        ({"task_id": "t", "spec": {"kind": "echo", "prompt": "x" * 200_000}}, "spec.prompt"),
        ({"task_id": "", "spec": {"kind": "echo", "prompt": "x"}}, "task_id"),
        ({"task_id": "a b/../c", "spec": {"kind": "echo", "prompt": "x"}}, "task_id"),
        (
            {"task_id": "t", "spec": {"kind": "echo", "prompt": "x", "permission_mode": "root"}},
            "spec.permission_mode",
        ),
        (
            {"task_id": "t", "spec": {"kind": "gemini", "prompt": "x", "agent_mode": "yolo"}},
            "spec.agent_mode",
        ),
        (
            {"task_id": "t", "spec": {"kind": "echo", "prompt": "x", "timeout_seconds": -1}},
            "spec.timeout_seconds",
        ),
        ({"task_id": "t", "attempt": -2, "spec": {"kind": "echo", "prompt": "x"}}, "attempt"),
    ],
)
async def test_bad_requests_name_the_field(
    start_node: StartNode, request_fields: dict[str, object], field: str
) -> None:
    _, stub = await start_node()
    spec = task_pb2.TaskSpec(**request_fields.pop("spec"))  # type: ignore[arg-type]
    request = node_pb2.ExecuteTaskRequest(spec=spec, **request_fields)  # type: ignore[arg-type]
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await collect(stub.ExecuteTask(request))

    assert caught.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert (caught.value.details() or "").startswith(f"{field}: ")
    details = dict(caught.value.trailing_metadata() or ())["grpc-status-details-bin"]
    status = status_pb2.Status.FromString(details)
    bad_request = error_details_pb2.BadRequest()
    status.details[0].Unpack(bad_request)
    assert bad_request.field_violations[0].field == field
    # The node is still fine.
    events = await collect(stub.ExecuteTask(execute("after", kind="echo", prompt="ok")))
    assert events[-1].result.state == COMPLETED


async def test_token_is_required_except_for_health(start_node: StartNode) -> None:
    agent, good = await start_node(env={"AGENTMESH_TOKEN": "mesh-secret-1"}, token="mesh-secret-1")
    async with grpc.aio.insecure_channel(agent.address) as channel:
        from agentmesh.v1 import node_pb2_grpc

        anonymous = node_pb2_grpc.AgentNodeStub(channel)
        for metadata in (
            [],
            [("authorization", "Bearer wrong")],
            [("authorization", "mesh-secret-1")],
        ):
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await anonymous.GetCapabilities(
                    node_pb2.GetCapabilitiesRequest(), metadata=metadata
                )
            assert caught.value.code() is grpc.StatusCode.UNAUTHENTICATED
            assert "mesh-secret-1" not in (caught.value.details() or "")
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await collect(anonymous.ExecuteTask(execute("t", kind="echo", prompt="x")))
        assert caught.value.code() is grpc.StatusCode.UNAUTHENTICATED

        health = health_pb2_grpc.HealthStub(channel)
        reply = await health.Check(health_pb2.HealthCheckRequest(service="agentmesh.v1.AgentNode"))
        assert reply.status == health_pb2.HealthCheckResponse.SERVING
    card = await good.GetCapabilities(node_pb2.GetCapabilitiesRequest())
    assert card.agent_id


async def test_without_token_only_loopback_is_served(tmp_path: Path) -> None:
    from agentmesh.config import NodeSettings
    from agentmesh.node.service import AgentNode
    from tests.node.conftest import node_settings

    with pytest.raises(
        ConfigError,
        match=r"refusing to listen on 0\.0\.0\.0:0 without AGENTMESH_NODE_TOKEN or AGENTMESH_TOKEN",
    ):
        await AgentNode.start(node_settings(tmp_path), NodeSettings(listen="0.0.0.0:0", name="n"))
