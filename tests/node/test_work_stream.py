"""AgentNode.Work: many attempts over one stream, as the scheduler runs them.

Each attempt must behave as it would on an ExecuteTask call of its own: its events in
order and tagged with it, its refusal with the status ExecuteTask would give (and only it
refused), a stop that kills its processes, and a stream that ends taking its attempts
with it."""

from __future__ import annotations

import asyncio
from collections import defaultdict
from pathlib import Path

import grpc
import pytest

from agentmesh.rpc.work_stream import accepted
from agentmesh.v1 import node_pb2, node_pb2_grpc, task_pb2
from tests.node.conftest import StartNode
from tests.node.test_node import (
    COMPLETED,
    assert_well_numbered,
    execute,
    stdout_of,
    wait_for_file,
    wait_until_gone,
)

WorkCall = grpc.aio.StreamStreamCall  # type: ignore[type-arg]


async def open_work(start_node: StartNode, **node: object) -> tuple[object, WorkCall]:
    agent, _ = await start_node(**node)
    channel = grpc.aio.insecure_channel(agent.address)
    stub = node_pb2_grpc.AgentNodeStub(channel)
    return agent, stub.Work()


class Collected:
    """What a Work stream sent, by attempt."""

    def __init__(self) -> None:
        self.events: dict[tuple[str, int], list[task_pb2.TaskEvent]] = defaultdict(list)
        self.errors: dict[tuple[str, int], node_pb2.AttemptError] = {}
        self.updates = 0

    def ended(self, keys: set[tuple[str, int]]) -> bool:
        done = {k for k, e in self.events.items() if e and e[-1].HasField("result")}
        return keys <= done | set(self.errors)


async def read_until(call: WorkCall, collected: Collected, keys: set[tuple[str, int]]) -> None:
    async def read() -> None:
        while not collected.ended(keys):
            update = await call.read()
            assert update is not grpc.aio.EOF, "the stream ended early"
            collected.updates += 1
            for event in update.events:
                collected.events[event.task_id, event.attempt].append(event)
            for error in update.errors:
                collected.errors[error.task_id, error.attempt] = error

    await asyncio.wait_for(read(), 30)


async def test_many_attempts_share_a_stream_each_with_its_own_events(
    start_node: StartNode,
) -> None:
    _, call = await open_work(start_node)
    starts = [execute(f"echo-{n}", kind="echo", prompt=f"hello {n}") for n in range(20)]
    shell = execute(
        "sh-1", kind="shell", command="echo out; echo err >&2", permission_mode="superuser"
    )
    await call.write(node_pb2.WorkRequest(start=[*starts, shell]))
    collected = Collected()

    await read_until(call, collected, {(s.task_id, 1) for s in [*starts, shell]})

    assert not collected.errors
    for n, start in enumerate(starts):
        events = collected.events[start.task_id, 1]
        assert_well_numbered(events, start.task_id)
        assert "".join(e.text.text for e in events if e.HasField("text")) == f"hello {n}"
        assert events[-1].result.state == COMPLETED
    shell_events = collected.events["sh-1", 1]
    assert_well_numbered(shell_events, "sh-1")
    assert stdout_of(shell_events) == "out\n"
    assert any(e.stderr.text == "err\n" for e in shell_events if e.HasField("stderr"))
    # Fewer updates than events: the stream carries them in batches.
    assert collected.updates < sum(len(e) for e in collected.events.values())
    call.cancel()


async def test_a_bad_start_is_refused_alone_with_its_field(start_node: StartNode) -> None:
    _, call = await open_work(start_node)
    bad_kind = execute("bad-1", kind="python", prompt="x")
    scheduler_only = node_pb2.ExecuteTaskRequest(
        task_id="bad-2", attempt=3, spec=task_pb2.TaskSpec(kind="echo", prompt="x", max_tokens=5)
    )
    good = execute("good-1", kind="echo", prompt="fine")
    await call.write(node_pb2.WorkRequest(start=[bad_kind, scheduler_only, good]))
    collected = Collected()

    await read_until(call, collected, {("bad-1", 1), ("bad-2", 3), ("good-1", 1)})

    first, second = collected.errors["bad-1", 1], collected.errors["bad-2", 3]
    assert first.code == grpc.StatusCode.INVALID_ARGUMENT.value[0]
    assert first.message.startswith("spec.kind: ")
    assert first.reason == "BAD_SPEC"
    # Refused on the wire, before parsing: named, and still only this attempt.
    assert second.code == grpc.StatusCode.INVALID_ARGUMENT.value[0]
    assert second.message.startswith("spec.max_tokens: ")
    assert second.reason == "BAD_SPEC"
    assert collected.events["good-1", 1][-1].result.state == COMPLETED
    call.cancel()


async def test_attempts_past_max_concurrency_are_refused_as_node_full(
    start_node: StartNode,
) -> None:
    _, call = await open_work(start_node, max_concurrency=1, sandbox="none")
    long = execute("busy-1", kind="shell", command="sleep 300", permission_mode="superuser")
    await call.write(node_pb2.WorkRequest(start=[long]))
    first = await call.read()
    assert first.events[0].task_id == "busy-1"
    await call.write(node_pb2.WorkRequest(start=[execute("busy-2", kind="echo", prompt="x")]))
    collected = Collected()

    await read_until(call, collected, {("busy-2", 1)})

    error = collected.errors["busy-2", 1]
    assert error.code == grpc.StatusCode.RESOURCE_EXHAUSTED.value[0]
    assert error.reason == "NODE_FULL"
    assert "max_concurrency=1" in error.message
    call.cancel()


async def test_the_same_attempt_twice_is_refused_as_a_duplicate(start_node: StartNode) -> None:
    _, call = await open_work(start_node, sandbox="none")
    long = execute("dup-1", kind="shell", command="sleep 300", permission_mode="superuser")
    await call.write(node_pb2.WorkRequest(start=[long]))
    await call.read()
    await call.write(node_pb2.WorkRequest(start=[long]))
    collected = Collected()

    await read_until(call, collected, {("dup-1", 1)})

    assert collected.errors["dup-1", 1].reason == "DUPLICATE_ATTEMPT"
    call.cancel()


@pytest.mark.parametrize("how", ["stop", "dropped stream"])
async def test_a_stopped_attempt_and_a_dropped_stream_kill_the_work(
    start_node: StartNode, tmp_path: Path, how: str
) -> None:
    """The effect, not the word: the process is gone and its later write never happens."""
    agent, call = await open_work(start_node, sandbox="none")
    command = "sleep 300 & echo $! > child.pid; wait; touch survived"
    await call.write(
        node_pb2.WorkRequest(
            start=[execute("stop-1", kind="shell", command=command, permission_mode="superuser")]
        )
    )
    await call.read()
    await wait_for_file(tmp_path / "child.pid")
    pid = int((tmp_path / "child.pid").read_text())

    if how == "stop":
        await call.write(
            node_pb2.WorkRequest(stop=[node_pb2.AttemptRef(task_id="stop-1", attempt=1)])
        )
    else:
        call.cancel()

    assert await wait_until_gone(pid)
    for _ in range(200):
        if agent.runner.running == 0:  # type: ignore[attr-defined]
            break
        await asyncio.sleep(0.025)
    assert agent.runner.running == 0  # type: ignore[attr-defined]
    assert not (tmp_path / "survived").exists()
    call.cancel()


async def test_a_stop_of_another_attempt_leaves_the_running_one(
    start_node: StartNode, tmp_path: Path
) -> None:
    _, call = await open_work(start_node, sandbox="none")
    command = "sleep 0.5; echo done"
    await call.write(
        node_pb2.WorkRequest(
            start=[execute("keep-1", kind="shell", command=command, permission_mode="superuser")]
        )
    )
    await call.write(node_pb2.WorkRequest(stop=[node_pb2.AttemptRef(task_id="keep-1", attempt=2)]))
    collected = Collected()

    await read_until(call, collected, {("keep-1", 1)})

    assert stdout_of(collected.events["keep-1", 1]) == "done\n"
    call.cancel()


async def test_work_needs_the_token(start_node: StartNode) -> None:
    agent, _ = await start_node(env={"AGENTMESH_TOKEN": "mesh-secret-2"})
    async with grpc.aio.insecure_channel(agent.address) as channel:
        stub = node_pb2_grpc.AgentNodeStub(channel)
        anonymous = stub.Work()
        # Refused before a word: the stream ends with no headers (the refusal's status).
        assert not accepted(await anonymous.initial_metadata())
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await anonymous.read()
        assert caught.value.code() is grpc.StatusCode.UNAUTHENTICATED

        trusted = stub.Work(metadata=[("authorization", "Bearer mesh-secret-2")])
        # Taken: its headers, with the mark, come before any update.
        assert accepted(await trusted.initial_metadata())
        assert not trusted.done()
        await trusted.write(node_pb2.WorkRequest(start=[execute("t-2", kind="echo", prompt="x")]))
        collected = Collected()
        await read_until(trusted, collected, {("t-2", 1)})
        assert collected.events["t-2", 1][-1].result.state == COMPLETED
        trusted.cancel()


async def test_a_request_that_is_not_protobuf_ends_the_stream_with_invalid_argument(
    start_node: StartNode,
) -> None:
    agent, _ = await start_node()
    async with grpc.aio.insecure_channel(agent.address) as channel:
        raw = channel.stream_stream(
            "/agentmesh.v1.AgentNode/Work",
            request_serializer=lambda b: b,
            response_deserializer=node_pb2.WorkUpdate.FromString,
        )
        call = raw()
        await call.write(b"\x0a\xff\xff\xff\xff\x0f")  # a start whose length runs past the end
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await call.read()
        assert caught.value.code() is grpc.StatusCode.INVALID_ARGUMENT


async def test_a_node_shutting_down_says_so_and_ends_its_stream_after_the_client(
    start_node: StartNode,
) -> None:
    """The attempt running finishes and its result arrives; the node says it is draining,
    refuses starts sent meanwhile, and ends the stream cleanly only once the client has
    half-closed (a write racing the stream's end would turn its status into INTERNAL)."""
    agent, call = await open_work(start_node, sandbox="none")
    command = "sleep 0.5; echo done"
    await call.write(
        node_pb2.WorkRequest(
            start=[execute("last-1", kind="shell", command=command, permission_mode="superuser")]
        )
    )
    first = await call.read()
    assert first.events[0].task_id == "last-1"
    shutdown = asyncio.create_task(agent.shutdown(grace_seconds=30))  # type: ignore[attr-defined]
    await asyncio.sleep(0)
    await call.write(node_pb2.WorkRequest(start=[execute("late-1", kind="echo", prompt="x")]))
    updates: list[node_pb2.WorkUpdate] = []

    def seen() -> tuple[list[task_pb2.TaskEvent], dict[str, node_pb2.AttemptError]]:
        return (
            [e for u in updates for e in u.events],
            {e.task_id: e for u in updates for e in u.errors},
        )

    while not (seen()[0] and seen()[0][-1].HasField("result") and "late-1" in seen()[1]):
        update = await asyncio.wait_for(call.read(), 30)
        assert update is not grpc.aio.EOF, "the stream ended before the client half-closed"
        updates.append(update)
    events, errors = seen()
    assert stdout_of([first.events[0], *events]) == "done\n"
    assert events[-1].result.state == COMPLETED
    assert errors["late-1"].reason == "NODE_DRAINING"
    assert [u.draining for u in updates].count(True) == 1
    # Its attempts are over, yet the stream is open: a start written now is still answered.
    await call.write(node_pb2.WorkRequest(start=[execute("late-2", kind="echo", prompt="x")]))
    answer = await asyncio.wait_for(call.read(), 30)
    assert [e.reason for e in answer.errors] == ["NODE_DRAINING"]

    await call.done_writing()
    assert await asyncio.wait_for(call.read(), 30) is grpc.aio.EOF
    assert await call.code() is grpc.StatusCode.OK
    await shutdown


async def test_a_node_shutting_down_says_so_at_once_while_its_attempts_are_quiet(
    start_node: StartNode,
) -> None:
    """The client hears of the shutdown when it begins, not with the next event of some
    attempt: until then it would go on sending starts that can only be refused."""
    agent, call = await open_work(start_node, sandbox="none")
    command = "sleep 3; echo done"
    await call.write(
        node_pb2.WorkRequest(
            start=[execute("quiet-1", kind="shell", command=command, permission_mode="superuser")]
        )
    )
    # Its start, then the warning that it runs unconfined: then nothing for 3 seconds.
    started: list[task_pb2.TaskEvent] = []
    while not any(e.HasField("diagnostic") for e in started):
        started += (await asyncio.wait_for(call.read(), 30)).events
    shutdown = asyncio.create_task(agent.shutdown(grace_seconds=30))  # type: ignore[attr-defined]
    update = await asyncio.wait_for(call.read(), 30)
    assert update.draining
    # Told before the command's output (3 seconds away), not with it.
    assert not [e for e in update.events if e.HasField("stdout") or e.HasField("result")]
    while not any(e.HasField("result") for e in update.events):
        update = await asyncio.wait_for(call.read(), 30)
    await call.done_writing()
    assert await asyncio.wait_for(call.read(), 30) is grpc.aio.EOF
    await shutdown
