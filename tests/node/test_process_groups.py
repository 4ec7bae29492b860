"""Stopping a task's processes: stubborn commands, leftovers, and group ids reused by others."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import psutil
import pytest

from agentmesh.node.process import CHUNK_BYTES, Chunk, ProcessGroup
from agentmesh.v1 import node_pb2, task_pb2
from tests.node.conftest import StartNode
from tests.node.test_node import collect, execute, wait_for_file, wait_until_gone


async def test_a_command_that_ignores_sigterm_is_still_cancelled(
    start_node: StartNode, tmp_path: Path
) -> None:
    _, stub = await start_node(cancel_grace_seconds=0.3, sandbox="none")
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
    _, stub = await start_node(sandbox="none")
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


def in_pid_namespace(script: str) -> dict[str, Any]:
    """Run `script` as PID 1 of a PID namespace of its own; what it printed last, as JSON."""
    unshare = shutil.which("unshare")
    if unshare is None:
        pytest.skip("needs unshare(1) to run in a PID namespace of its own")
    probe = subprocess.run(
        [unshare, "--pid", "--fork", "--mount-proc", "true"], capture_output=True, check=False
    )
    if probe.returncode != 0:
        pytest.skip(f"cannot create a PID namespace here: {probe.stderr.decode().strip()}")
    run = subprocess.run(
        [unshare, "--pid", "--fork", "--mount-proc", sys.executable, "-c", script],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert run.returncode == 0, run.stderr
    outcome: dict[str, Any] = json.loads(run.stdout.strip().splitlines()[-1])
    return outcome


def test_stopping_after_the_leader_was_reaped_spares_a_group_that_reused_its_id() -> None:
    outcome = in_pid_namespace(REUSED_GROUP_ID)
    assert outcome["stranger"] == outcome["leader"], f"the pid was not reused: {outcome}"
    assert outcome["exit"] is None, f"stop() killed an unrelated process group: {outcome}"
    assert outcome["status"] in ("sleeping", "running"), outcome


# The leader's shell makes the kernel give its next processes pids below its own; the
# member it leaves in the group (re-parented: no descendant of the leader) is found by its
# group id alone once the leader has exited.
LOWER_MEMBER = textwrap.dedent(
    """
    import asyncio, json, os
    from pathlib import Path

    import psutil

    from agentmesh.node.process import ProcessGroup


    async def main() -> None:
        Path("/proc/sys/kernel/ns_last_pid").write_text("1000")
        script = (
            "echo 100 > /proc/sys/kernel/ns_last_pid; (sleep 300 & echo $!); echo ready"
        )
        group = await ProcessGroup.start(
            ["sh", "-c", script], env=dict(os.environ), cwd=Path("/"), grace_seconds=0.5
        )
        said = b""
        async for chunk in group.chunks():
            said += chunk.data
            if b"ready" in said:
                break
        member = int(said.split()[0])
        await group.wait()
        before = (os.getpgid(member), psutil.Process(member).ppid())
        await group.stop()
        try:
            status = psutil.Process(member).status()
        except psutil.NoSuchProcess:
            status = "gone"
        print(json.dumps({
            "leader": group.pid, "member": member, "before": before, "status": status
        }))


    asyncio.run(main())
    """
)


def test_a_member_with_a_lower_pid_than_its_leader_is_stopped_after_the_leader_exited() -> None:
    outcome = in_pid_namespace(LOWER_MEMBER)
    assert outcome["member"] < outcome["leader"], outcome
    assert outcome["before"] == [outcome["leader"], 1], outcome  # in the group, re-parented
    assert outcome["status"] in ("gone", "zombie"), outcome


# ----------------------------------------------------------------------------- ProcessGroup


async def start_group(
    command: str | list[str], cwd: Path, grace_seconds: float = 5.0
) -> ProcessGroup:
    argv = ["sh", "-c", command] if isinstance(command, str) else command
    return await ProcessGroup.start(
        argv, env=dict(os.environ), cwd=cwd, grace_seconds=grace_seconds
    )


async def test_a_command_runs_in_a_session_and_group_of_its_own(tmp_path: Path) -> None:
    group = await start_group(["sleep", "300"], tmp_path)
    try:
        assert os.getsid(group.pid) == os.getpgid(group.pid) == group.pid
    finally:
        await group.stop()


async def test_a_lone_command_is_stopped_with_sigterm_first(tmp_path: Path) -> None:
    group = await start_group(["sleep", "300"], tmp_path, grace_seconds=30.0)

    await group.stop()

    assert await group.wait() == -signal.SIGTERM


async def test_a_lone_command_that_ignores_sigterm_is_killed_after_the_grace_period(
    tmp_path: Path,
) -> None:
    command = "trap '' TERM; echo $$ > shell.pid; while :; do :; done"
    group = await start_group(command, tmp_path, grace_seconds=0.3)
    await wait_for_file(tmp_path / "shell.pid")

    await group.stop()

    assert await group.wait() == -signal.SIGKILL


async def test_a_cancelled_command_may_clean_up_within_the_grace_period(tmp_path: Path) -> None:
    # Its cleanup outlasts the moment the SIGTERM arrives: it is waited for, not killed.
    command = (
        "trap 'sleep 1; echo cleaned > cleaned.txt; exit 0' TERM; "
        "echo $$ > shell.pid; sleep 300 & wait"
    )
    group = await start_group(command, tmp_path, grace_seconds=30.0)
    await wait_for_file(tmp_path / "shell.pid")

    await group.stop()

    assert await group.wait() == 0
    assert (tmp_path / "cleaned.txt").read_text() == "cleaned\n"


async def test_an_orphan_left_in_the_group_that_ignores_sigterm_is_killed(
    tmp_path: Path,
) -> None:
    # The subshell exits at once: its background sleep is re-parented, not the leader's
    # child any more; only its group id ties it to the task.
    command = "(trap '' TERM; sleep 300 & echo $! > orphan.pid); exec sleep 300"
    # A grace period long enough for the leader's end to be seen within it even on a busy
    # machine: only the orphan, found by its group id, is left to kill after it.
    group = await start_group(command, tmp_path, grace_seconds=2.0)
    await wait_for_file(tmp_path / "orphan.pid")
    orphan = int((tmp_path / "orphan.pid").read_text())

    await group.stop()

    assert await wait_until_gone(orphan), "the orphan outlived the stop"


async def test_a_descendant_two_sessions_away_is_stopped(tmp_path: Path) -> None:
    # The leader's child starts a session, and its own child another: neither group is the
    # task's, and the grandchild is no child of the leader.
    command = "setsid sh -c 'setsid sleep 300 & echo $! > deep.pid; wait' & wait"
    group = await start_group(command, tmp_path, grace_seconds=0.3)
    await wait_for_file(tmp_path / "deep.pid")
    deep = int((tmp_path / "deep.pid").read_text())

    await group.stop()

    assert await wait_until_gone(deep), "the grandchild outlived the stop"


async def test_stopping_a_task_spares_processes_of_other_groups(tmp_path: Path) -> None:
    group = await start_group(["sleep", "300"], tmp_path)
    # Started later, so its pid and group id are higher than the task's.
    stranger = subprocess.Popen(["sleep", "300"], start_new_session=True)
    try:
        await group.stop()

        assert stranger.poll() is None, "stop() ended an unrelated process"
        assert psutil.Process(stranger.pid).status() != psutil.STATUS_STOPPED
    finally:
        stranger.kill()
        stranger.wait()


async def test_output_waiting_in_the_pipe_is_read_in_pieces_of_at_most_1_mib(
    tmp_path: Path,
) -> None:
    # 1 MiB fills the pipe before anything is read (`full` says so), then 512 KiB more.
    command = "head -c 1048576 /dev/zero; echo full > full; head -c 524288 /dev/zero"
    group = await start_group(command, tmp_path)
    try:
        await wait_for_file(tmp_path / "full")
        sizes = [len(chunk.data) async for chunk in group.chunks()]
    finally:
        await group.stop()

    assert sizes[0] == CHUNK_BYTES == 1 << 20
    assert max(sizes) == CHUNK_BYTES
    assert sum(sizes) == 3 << 19


async def test_stdout_and_stderr_stay_apart(tmp_path: Path) -> None:
    group = await start_group("echo out; echo err >&2", tmp_path)

    chunks = [(chunk.stream, chunk.data) async for chunk in group.chunks()]

    assert await group.wait() == 0
    assert sorted(chunks) == [("stderr", b"err\n"), ("stdout", b"out\n")]


def test_a_chunk_cannot_be_changed_once_read() -> None:
    chunk = Chunk("stdout", b"out")

    with pytest.raises(dataclasses.FrozenInstanceError):
        chunk.data = b"changed"  # type: ignore[misc]


async def test_a_reader_that_stops_early_can_close_the_stream(tmp_path: Path) -> None:
    group = await start_group("yes", tmp_path)
    try:
        chunks = group.chunks()
        first = await anext(chunks)
        await chunks.aclose()  # type: ignore[attr-defined]

        assert first.stream == "stdout"
        assert first.data.startswith(b"y\n")
    finally:
        await group.stop()


async def test_an_orphan_in_a_session_a_child_started_is_stopped_with_it(
    tmp_path: Path,
) -> None:
    # The child starts a session; an orphan of its subshell stays in that session's group,
    # no one's descendant: the SIGTERM to the group is what reaches it.
    command = "setsid sh -c '(sleep 300 & echo $! > orphan.pid); exec sleep 300' & wait"
    group = await start_group(command, tmp_path, grace_seconds=0.3)
    await wait_for_file(tmp_path / "orphan.pid")
    orphan = int((tmp_path / "orphan.pid").read_text())

    await group.stop()

    assert await wait_until_gone(orphan), "the orphan outlived the stop"


async def test_a_command_that_cannot_start_leaves_no_descriptor_open(tmp_path: Path) -> None:
    before = len(os.listdir("/proc/self/fd"))
    for _ in range(5):
        with pytest.raises(FileNotFoundError):
            await start_group([str(tmp_path / "no-such-program")], tmp_path)
    assert len(os.listdir("/proc/self/fd")) == before


@pytest.mark.parametrize("stranger_first", [False, True], ids=["older-task", "newer-task"])
async def test_a_group_is_signalled_only_while_a_process_it_knows_is_in_it(
    tmp_path: Path, stranger_first: bool
) -> None:
    # Another session's process, its id above or below the task's: a group id of our task's
    # may have gone to it.
    stranger = (
        subprocess.Popen(["sleep", "300"], start_new_session=True) if stranger_first else None
    )
    group = await start_group(["sleep", "300"], tmp_path)
    stranger = stranger or subprocess.Popen(["sleep", "300"], start_new_session=True)
    try:
        known = [psutil.Process(group.pid)]
        group._signal_group(stranger.pid, signal.SIGKILL, known)  # none of `known` is in it
        group._signal_group(stranger.pid, signal.SIGTERM, [psutil.Process(stranger.pid)])
        # a SIGKILL sent first would have ended it first
        assert stranger.wait(10) == -signal.SIGTERM
    finally:
        stranger.kill()
        stranger.wait()
        await group.stop()


SUPPLEMENTARY_GROUPS = textwrap.dedent(
    """
    import asyncio, json, os
    from pathlib import Path

    from agentmesh.node.process import ProcessGroup


    async def groups(**user: int) -> str:
        group = await ProcessGroup.start(
            ["grep", "^Groups:", "/proc/self/status"], env={}, cwd=Path("/"), grace_seconds=1,
            **user,
        )
        text = b"".join([chunk.data async for chunk in group.chunks()]).decode()
        await group.wait()
        return text.split(":", 1)[1].strip()


    os.setgroups([4242])  # the node's own supplementary groups
    print(json.dumps({
        "node": asyncio.run(groups()),
        "as nobody": asyncio.run(groups(user=65534, group=65534)),
    }))
    """
)


def test_a_command_keeps_the_node_s_groups_and_one_run_as_another_user_gets_none() -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root to set groups and switch users")
    done = subprocess.run(
        [sys.executable, "-c", SUPPLEMENTARY_GROUPS], capture_output=True, text=True, check=True
    )
    assert json.loads(done.stdout) == {"node": "4242", "as nobody": ""}
