"""Stopping a task's processes: stubborn commands, leftovers, and group ids reused by others."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from agentmesh.node.process import ProcessGroup
from agentmesh.v1 import node_pb2, task_pb2
from tests.node.conftest import StartNode
from tests.node.test_node import collect, execute, wait_for_file, wait_until_gone


async def test_a_command_that_ignores_sigterm_is_still_cancelled(
    start_node: StartNode, tmp_path: Path
) -> None:
    _, stub = await start_node(cancel_grace_seconds=0.3)
    command = "trap '' TERM; sleep 300 & echo $! > child.pid; echo $$ > shell.pid; wait"
    call = stub.ExecuteTask(
        execute("stubborn-1", kind="shell", command=command, permission_mode="superuser")
    )
    await call.read()
    await wait_for_file(tmp_path / "child.pid")
    await wait_for_file(tmp_path / "shell.pid")
    pids = [int((tmp_path / f"{n}.pid").read_text()) for n in ("child", "shell")]

    reply = await stub.CancelTask(node_pb2.CancelTaskRequest(task_id="stubborn-1"))
    rest = await collect(call)

    assert reply.canceled
    assert rest[-1].result.state == task_pb2.TASK_STATE_CANCELED
    for pid in pids:
        assert await wait_until_gone(pid), f"process {pid} survived the cancel"


async def test_what_a_finished_command_left_in_its_group_is_stopped(
    start_node: StartNode, tmp_path: Path
) -> None:
    _, stub = await start_node()
    command = "sleep 300 >/dev/null 2>&1 & echo $! > child.pid"
    events = await collect(
        stub.ExecuteTask(
            execute("leftover-1", kind="shell", command=command, permission_mode="superuser")
        )
    )

    assert events[-1].result.state == task_pb2.TASK_STATE_COMPLETED
    pid = int((tmp_path / "child.pid").read_text())
    assert await wait_until_gone(pid), "the background process outlived its task"


async def test_a_command_cancelled_while_it_starts_leaves_nothing_behind(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The command runs (and has started a child of its own) while asyncio is still setting
    # up its pipes: that is when a dropped client's cancel can land.
    spawned = asyncio.Event()
    finish_starting = asyncio.Event()
    create_subprocess_exec = asyncio.create_subprocess_exec

    async def slow_to_start(*args: object, **kwargs: object) -> asyncio.subprocess.Process:
        process = await create_subprocess_exec(*args, **kwargs)  # type: ignore[arg-type]
        spawned.set()
        await finish_starting.wait()
        return process

    monkeypatch.setattr(asyncio, "create_subprocess_exec", slow_to_start)
    command = "sleep 300 & echo $! > child.pid; wait"
    start = asyncio.create_task(
        ProcessGroup.start(
            ["sh", "-c", command], env=dict(os.environ), cwd=tmp_path, grace_seconds=0.5
        )
    )
    await spawned.wait()
    await wait_for_file(tmp_path / "child.pid")

    start.cancel()
    finish_starting.set()
    with pytest.raises(asyncio.CancelledError):
        await start

    pid = int((tmp_path / "child.pid").read_text())
    assert await wait_until_gone(pid), "the command's child outlived the cancelled start"


# Runs as PID 1 of a PID namespace of its own, where nothing else starts processes: after
# the leader is reaped, `ns_last_pid` makes the kernel give its pid to the next process.
REUSED_GROUP_ID = textwrap.dedent(
    """
    import asyncio, json, os, subprocess
    from pathlib import Path

    import psutil

    from agentmesh.node.process import ProcessGroup


    async def main() -> None:
        group = await ProcessGroup.start(
            ["/bin/true"], env=dict(os.environ), cwd=Path("/"), grace_seconds=0.2
        )
        await group.wait()  # reaped: its pid, and so its group id, is free again
        Path("/proc/sys/kernel/ns_last_pid").write_text(str(group.pid - 1))
        stranger = subprocess.Popen(["sleep", "300"], start_new_session=True)
        try:
            if stranger.pid == group.pid:
                await group.stop()
            print(json.dumps({
                "leader": group.pid,
                "stranger": stranger.pid,
                "exit": stranger.poll(),
                "status": psutil.Process(stranger.pid).status() if stranger.poll() is None else "",
            }))
        finally:
            stranger.kill()
            stranger.wait()


    asyncio.run(main())
    """
)


def test_stopping_after_the_leader_was_reaped_spares_a_group_that_reused_its_id() -> None:
    unshare = shutil.which("unshare")
    if unshare is None:
        pytest.skip("needs unshare(1) to run in a PID namespace of its own")
    probe = subprocess.run(
        [unshare, "--pid", "--fork", "--mount-proc", "true"], capture_output=True, check=False
    )
    if probe.returncode != 0:
        pytest.skip(f"cannot create a PID namespace here: {probe.stderr.decode().strip()}")

    run = subprocess.run(
        [unshare, "--pid", "--fork", "--mount-proc", sys.executable, "-c", REUSED_GROUP_ID],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )

    assert run.returncode == 0, run.stderr
    outcome = json.loads(run.stdout.strip().splitlines()[-1])
    assert outcome["stranger"] == outcome["leader"], f"the pid was not reused: {outcome}"
    assert outcome["exit"] is None, f"stop() killed an unrelated process group: {outcome}"
    assert outcome["status"] in ("sleeping", "running"), outcome
