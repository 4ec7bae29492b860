"""Remembered approvals end to end, as a user runs them: a weak-mode task whose command is
refused waits for its user; `approve --always` completes it and lets the user's next task
run the command without asking; `approvals forget` brings the question back; `deny` ends it;
and a denylisted command never runs, whatever was approved (a canary file survives)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import pytest

from agentmesh.config import TlsSettings
from agentmesh.rpc.channel import open_channel
from agentmesh.v1 import scheduler_pb2, scheduler_pb2_grpc, task_pb2
from tests.cli.conftest import TOKEN, Cli
from tests.scheduler.conftest import Mesh

WAITING = task_pb2.TASK_STATE_INPUT_REQUIRED


@pytest.fixture
async def stub(mesh_with_token: Mesh) -> AsyncIterator[scheduler_pb2_grpc.SchedulerAsyncStub]:
    address = mesh_with_token.schedulers[0].address
    async with open_channel(address, token=TOKEN, tls=TlsSettings()) as channel:
        yield scheduler_pb2_grpc.SchedulerStub(channel)


async def submit(cli: Cli, command: str, *more: str) -> str:
    submitted = await cli("submit", "--command", command, "--user", "ada", *more, "--json")
    assert submitted.returncode == 0, submitted
    task_id: str = json.loads(submitted.stdout)["id"]
    return task_id


async def settled(stub: scheduler_pb2_grpc.SchedulerAsyncStub, task_id: str) -> task_pb2.Task:
    """The task once it waits for its user or has ended."""
    async with asyncio.timeout(60):
        while True:
            task = await stub.GetTask(scheduler_pb2.GetTaskRequest(task_id=task_id))
            if task.state == WAITING or task.state >= task_pb2.TASK_STATE_COMPLETED:
                return task
            await asyncio.sleep(0.1)


async def trace(
    stub: scheduler_pb2_grpc.SchedulerAsyncStub, task_id: str
) -> list[task_pb2.TaskEvent]:
    request = scheduler_pb2.WatchTaskRequest(task_id=task_id)
    return [event async for event in stub.WatchTask(request)]


async def test_an_approval_is_asked_given_remembered_and_forgotten(
    cli: Cli, stub: scheduler_pb2_grpc.SchedulerAsyncStub, tmp_path: Path
) -> None:
    workdir = tmp_path / "alpha"  # the node's working directory (tests.scheduler.conftest)
    made = workdir / "made-by-approval"

    first = await submit(cli, "mkdir made-by-approval", "--on-refusal", "ask")
    task = await settled(stub, first)
    assert task.state == WAITING, task
    assert "waiting for its user to approve `mkdir made-by-approval`" in task.waiting_reason
    assert not made.exists()
    [pending] = json.loads((await cli("approvals", "--json")).stdout)
    assert pending == {
        "id": pending["id"],
        "user": "ada",
        "command": "mkdir made-by-approval",
        "prefix": False,
        "task_id": first,
        "rule": "not-in-allowlist",
        "mode": "weak",
        "detail": "`mkdir` is not on the weak-mode allowlist",
    }

    approved = await cli("approve", first, "--always")
    assert approved.returncode == 0, approved
    assert (await settled(stub, first)).state == task_pb2.TASK_STATE_COMPLETED
    assert made.is_dir()
    made.rmdir()

    # Remembered: the user's next task runs it without asking, and the approval's use is kept.
    second = await submit(cli, "mkdir made-by-approval", "--on-refusal", "ask")
    assert (await settled(stub, second)).state == task_pb2.TASK_STATE_COMPLETED
    notes = [e.diagnostic.message for e in await trace(stub, second) if e.HasField("diagnostic")]
    assert any(note.startswith("runs by its user's approval") for note in notes), notes
    assert made.is_dir()
    made.rmdir()
    # The same for a task that names weak mode itself.
    named = await submit(cli, "mkdir made-by-approval", "--mode", "weak", "--on-refusal", "ask")
    assert (await settled(stub, named)).state == task_pb2.TASK_STATE_COMPLETED
    assert made.is_dir()
    made.rmdir()
    [kept] = json.loads((await cli("approvals", "--remembered", "--json")).stdout)
    assert (kept["user"], kept["command"], kept["prefix"]) == (
        "ada",
        "mkdir made-by-approval",
        False,
    )
    assert kept["last_used"] is not None
    # Another user's task is not covered by ada's approval.
    other = await cli("submit", "--command", "mkdir made-by-approval", "--user", "bo", "--json")
    other_task = await settled(stub, json.loads(other.stdout)["id"])
    assert other_task.state == task_pb2.TASK_STATE_REJECTED

    # Forgotten: the question comes back; denied, the task ends rejected.
    assert (await cli("approvals", "forget", str(kept["id"]))).returncode == 0
    third = await submit(cli, "mkdir made-by-approval", "--on-refusal", "ask")
    assert (await settled(stub, third)).state == WAITING
    assert (await cli("deny", third, "--reason", "not today")).returncode == 0
    denied = await settled(stub, third)
    assert denied.state == task_pb2.TASK_STATE_REJECTED
    assert denied.error == "its user denied `mkdir made-by-approval`: not today"
    assert not made.exists()
    # Without --on-refusal ask, a refusal ends the task at once, as it always did.
    plain = await submit(cli, "mkdir made-by-approval")
    assert (await settled(stub, plain)).state == task_pb2.TASK_STATE_REJECTED


async def test_a_prefix_approval_covers_the_commands_it_begins(
    cli: Cli, stub: scheduler_pb2_grpc.SchedulerAsyncStub, tmp_path: Path
) -> None:
    first = await submit(cli, "mkdir -p one/two", "--on-refusal", "ask")
    assert (await settled(stub, first)).state == WAITING
    bad = await cli("approve", first, "--prefix", "mkdir -v")
    bad.assert_one_error_line("prefix: 'mkdir -v' does not begin the refused command")
    assert (await cli("approve", first, "--prefix", "mkdir -p", "--always")).returncode == 0
    assert (await settled(stub, first)).state == task_pb2.TASK_STATE_COMPLETED

    later = await submit(cli, "mkdir -p three", "--on-refusal", "ask")
    assert (await settled(stub, later)).state == task_pb2.TASK_STATE_COMPLETED
    assert (tmp_path / "alpha" / "one" / "two").is_dir()
    assert (tmp_path / "alpha" / "three").is_dir()


async def test_a_denylisted_command_never_runs_whatever_was_approved(
    cli: Cli,
    stub: scheduler_pb2_grpc.SchedulerAsyncStub,
    mesh_with_token: Mesh,
    tmp_path: Path,
) -> None:
    canary = tmp_path / "alpha" / "canary"
    canary.write_text("alive")
    # Remembered approvals for it, as if someone had written them by hand.
    conn = await asyncpg.connect(mesh_with_token.database_uri)
    try:
        await conn.execute(
            "INSERT INTO permissions_profile (user_id, command, allow_by_default, prefix)"
            " VALUES ('ada', 'rm canary', true, false), ('ada', 'rm', true, true)"
        )
    finally:
        await conn.close()

    for command in ("rm canary", "rm -f canary"):
        task_id = await submit(cli, command, "--on-refusal", "ask")
        task = await settled(stub, task_id)
        # Never waiting: the superuser denylist's programs cannot be approved.
        assert task.state == task_pb2.TASK_STATE_REJECTED, task
        [refusal] = [e.refusal for e in await trace(stub, task_id) if e.HasField("refusal")]
        assert (refusal.rule, refusal.approvable) == ("not-in-allowlist", False)
        assert canary.read_text() == "alive"
    (await cli("approve", task_id)).assert_one_error_line("is not waiting for an approval")
