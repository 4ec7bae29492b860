"""A node killed outright leaves none of its tasks' processes running (without the sandbox,
whose bubblewrap dies with its parent on its own): its watchdog stops them, or its next
start does."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import socket
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import grpc
import psutil
import pytest

from agentmesh.node.leftovers import Ledger, _Process, _victims, start_time
from agentmesh.v1 import node_pb2, node_pb2_grpc, task_pb2
from tests.node.conftest import NodeProcess, StartNodeProcess
from tests.node.test_node import wait_for_file


def session_members(sid: int) -> list[int]:
    """The live processes of a session (a killed one waiting to be reaped does nothing)."""
    found = []
    for pid in psutil.pids():
        try:
            if os.getsid(pid) == sid and psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
                found.append(pid)
        except (OSError, psutil.Error):
            continue
    return found


async def wait_for_no_session(sid: int) -> None:
    for _ in range(400):
        if not session_members(sid):
            return
        await asyncio.sleep(0.025)
    raise AssertionError(f"session {sid} still has processes {session_members(sid)}")


async def process_ended(process: psutil.Process) -> bool:
    """Gone, or a zombie (its exit is its parent's to read, or an init's that may be slow)."""
    for _ in range(400):
        try:
            if process.status() == psutil.STATUS_ZOMBIE:
                return True
        except psutil.NoSuchProcess:
            return True
        await asyncio.sleep(0.025)
    return False


def reap(process: subprocess.Popen[bytes]) -> None:
    with pytest.raises(subprocess.TimeoutExpired):
        process.wait(0)  # still there: the ledger must be what stops it
    process.kill()
    process.wait()


# -- the ledger ------------------------------------------------------------------------


def start_listed(ledger: Ledger, command: str, **popen: object) -> subprocess.Popen[bytes]:
    """A task-like session, written down as the node writes its tasks' down."""
    env, mark = ledger.environment(dict(os.environ))
    process = subprocess.Popen(
        ["sh", "-c", command],
        env=env,
        start_new_session=True,
        **popen,  # type: ignore[call-overload]
    )
    ledger.add(process.pid, mark)
    return process


def wait_for_members(sid: int, count: int) -> None:
    deadline = time.monotonic() + 10
    while len(session_members(sid)) < count and time.monotonic() < deadline:
        time.sleep(0.01)
    assert len(session_members(sid)) == count


def test_stopping_the_ledger_kills_every_process_of_each_listed_session(tmp_path: Path) -> None:
    ledger, _ = Ledger.claim(tmp_path / "sessions")
    task = start_listed(ledger, "sleep 300 & sleep 300 & wait")
    wait_for_members(task.pid, 3)
    other = subprocess.Popen(["sleep", "300"], start_new_session=True)  # not listed
    try:
        assert ledger.stop_all() == 3
        assert task.wait(10) == -signal.SIGKILL
        assert asyncio.run(_gone(task.pid))
        assert other.poll() is None
        assert sorted(p.name for p in ledger.directory.iterdir()) == [".lock", ".origin"]
        assert ledger.stop_all() == 0
    finally:
        other.kill()
        other.wait()


async def _gone(sid: int) -> bool:
    await wait_for_no_session(sid)
    return True


def test_what_a_session_started_in_a_session_of_its_own_is_stopped_with_it(
    tmp_path: Path,
) -> None:
    ledger, _ = Ledger.claim(tmp_path / "sessions")
    task = start_listed(ledger, "setsid sleep 300 & echo $!; wait", stdout=subprocess.PIPE)
    assert task.stdout is not None
    escaped = int(task.stdout.readline())
    task.stdout.close()
    deadline = time.monotonic() + 10
    while os.getsid(escaped) != escaped and time.monotonic() < deadline:
        time.sleep(0.01)  # setsid(1) makes its session once it runs
    assert os.getsid(escaped) == escaped
    assert ledger.stop_all() == 2
    assert task.wait(10) == -signal.SIGKILL
    assert asyncio.run(_gone(escaped))


def test_a_session_whose_leader_exited_is_still_stopped_by_its_mark(tmp_path: Path) -> None:
    ledger, _ = Ledger.claim(tmp_path / "sessions")
    leader = start_listed(ledger, "sleep 300 & echo $!", stdout=subprocess.PIPE)
    assert leader.stdout is not None
    child = int(leader.stdout.readline())
    leader.wait(10)  # the leader is gone; its child still holds the session's id
    leader.stdout.close()
    assert os.getsid(child) == leader.pid
    assert ledger.stop_all() == 1
    assert asyncio.run(_gone(leader.pid))


def test_a_leaderless_session_without_the_mark_is_left_alone(tmp_path: Path) -> None:
    # As if the task's session had ended, its id had gone to a new process, and that one
    # had made a session of its own and left a child in it (a daemon's double fork).
    ledger, _ = Ledger.claim(tmp_path / "sessions")
    leader = subprocess.Popen(
        ["sh", "-c", "sleep 300 & echo $!"], start_new_session=True, stdout=subprocess.PIPE
    )
    assert leader.stdout is not None
    child = int(leader.stdout.readline())
    leader.wait(10)
    leader.stdout.close()
    ledger.add(leader.pid, "a-mark-nobody-carries")
    try:
        assert ledger.stop_all() == 0
        assert session_members(leader.pid) == [child]
        assert psutil.Process(child).status() != psutil.STATUS_STOPPED
    finally:
        os.kill(child, signal.SIGKILL)


def test_an_id_now_leading_another_session_is_left_alone(tmp_path: Path) -> None:
    ledger, _ = Ledger.claim(tmp_path / "sessions")
    env, mark = ledger.environment(dict(os.environ))
    stranger = subprocess.Popen(["sleep", "300"], env=env, start_new_session=True)
    try:
        started = start_time(stranger.pid)
        assert started is not None
        # as if a listed task's session had ended and its id gone to this process since
        (ledger.directory / str(stranger.pid)).write_text(f"{started - 1} {mark}\n")
        assert ledger.stop_all() == 0
        reap(stranger)
    finally:
        stranger.kill()
        stranger.wait()


def test_a_ledger_of_another_boot_is_dropped_unread(tmp_path: Path) -> None:
    ledger, _ = Ledger.claim(tmp_path / "sessions")
    task = start_listed(ledger, "sleep 300")
    try:
        origin = ledger.directory / ".origin"
        boot, namespace = origin.read_text().split()
        origin.write_text(f"{boot[::-1]} {namespace}\n")  # its ids are another boot's
        assert ledger.stop_all() == 0
        reap(task)  # type: ignore[arg-type]
    finally:
        task.kill()
        task.wait()


# Pids above the kernel's highest (4194304): no such process, so none carries a mark.
FAKE = 5_000_000


def fake(
    pid: int, ppid: int, session: int, *, started: int = 100, zombie: bool = False
) -> _Process:
    return _Process(FAKE + pid, FAKE + ppid, FAKE + session, started, zombie)


def test_of_the_listed_sessions_only_those_provably_the_tasks_are_victims() -> None:
    listed = {
        FAKE + 10: (500, "m10"),  # its id leads a session started earlier: not the task's
        FAKE + 20: (700, "m20"),  # ... started later
        FAKE + 30: (900, "m30"),  # its leader is gone, and no member carries the mark
        FAKE + 40: (100, "m40"),  # the task's: its leader started when written down
    }
    processes = [
        fake(10, 1, 10, started=499),
        fake(11, 10, 10),
        fake(20, 1, 20, started=701),
        fake(21, 20, 20),
        fake(31, 1, 30),
        fake(40, 1, 40),
        fake(41, 40, 40),
        fake(42, 40, 40, zombie=True),  # over already: nothing to kill
        fake(50, 41, 50),  # started by the task in a session of its own
        fake(51, 50, 50),
        fake(60, 1, 60),  # a stranger
        fake(61, 11, 61),  # started by a stranger's session
    ]
    assert _victims(listed, processes) == {FAKE + n for n in (40, 41, 50, 51)}
    assert _victims({}, processes) == set()


@pytest.mark.parametrize("boot", ["0" * 8, "f" * 8])
def test_a_ledger_of_any_other_origin_is_dropped_unread(tmp_path: Path, boot: str) -> None:
    # Whichever way the other origin sorts: only an equal one is read.
    ledger, _ = Ledger.claim(tmp_path / "sessions")
    task = start_listed(ledger, "sleep 300")
    try:
        origin = ledger.directory / ".origin"
        real, namespace = origin.read_text().split()
        origin.write_text(f"{boot}{real[8:]} {namespace}\n")
        assert ledger.stop_all() == 0
        reap(task)
    finally:
        task.kill()
        task.wait()


def test_only_the_node_may_read_or_write_its_ledgers(tmp_path: Path) -> None:
    # An entry names a session for a watchdog (often root's) to kill: nobody else writes one.
    old = os.umask(0)
    try:
        ledger, _ = Ledger.claim(tmp_path / "sessions")
    finally:
        os.umask(old)
    assert (tmp_path / "sessions").stat().st_mode & 0o777 == 0o700
    assert ledger.directory.stat().st_mode & 0o777 == 0o700
    assert (ledger.directory / ".lock").stat().st_mode & 0o777 == 0o600
    ledger.close()


def test_a_claim_leaves_alone_a_directory_it_cannot_lock(tmp_path: Path) -> None:
    # One whose watchdog is emptying it (its lock file gone first), or anything else there.
    root = tmp_path / "sessions"
    root.mkdir()
    (root / "emptying").mkdir()
    (root / "emptying" / "12345").write_text("1 mark\n")
    ledger, killed = Ledger.claim(root)
    assert killed == 0
    assert (root / "emptying" / "12345").exists()
    ledger.close()


def test_a_session_is_listed_while_it_runs_and_forgotten_once_stopped(tmp_path: Path) -> None:
    from agentmesh.node.process import ProcessGroup

    async def run() -> None:
        ledger, _ = Ledger.claim(tmp_path / "sessions")
        group = await ProcessGroup.start(
            ["sleep", "300"], env={}, cwd=tmp_path, grace_seconds=1.0, ledger=ledger
        )
        entry = ledger.directory / str(group.pid)
        started, mark = entry.read_text().split()
        assert int(started) == start_time(group.pid)
        environ = Path(f"/proc/{group.pid}/environ").read_bytes().split(b"\0")
        assert f"AGENTMESH_SESSION_MARK={mark}".encode() in environ
        await group.stop()
        assert not entry.exists()

    asyncio.run(run())


# -- a node killed outright ------------------------------------------------------------


StartNode = Callable[[], NodeProcess]


@pytest.fixture
def unsandboxed_node(node_processes: StartNodeProcess, tmp_path: Path) -> StartNode:
    """Starts `agentmesh node` processes with `node.sandbox: none`, on one data directory."""
    settings = {"workdir": str(tmp_path), "max_permission_mode": "superuser", "sandbox": "none"}
    return lambda: node_processes(settings)


async def start_long_task(address: str, tmp_path: Path) -> tuple[grpc.aio.Channel, int]:
    """A task that, left running, writes `canary` in half a minute; its session's id."""
    channel = grpc.aio.insecure_channel(address)
    stub = node_pb2_grpc.AgentNodeStub(channel)
    command = "echo $$ > started.txt; sleep 1000 & sleep 30; echo late > canary"
    call = stub.ExecuteTask(
        node_pb2.ExecuteTaskRequest(
            task_id="left-1",
            spec=task_pb2.TaskSpec(kind="shell", command=command, permission_mode="superuser"),
        )
    )
    await call.read()
    await wait_for_file(tmp_path / "started.txt")
    return channel, os.getsid(int((tmp_path / "started.txt").read_text()))


def listed(tmp_path: Path) -> list[str]:
    """The sessions the node ledgers under this data directory hold."""
    sessions = tmp_path / "data" / "nodes" / socket.gethostname() / "sessions"
    return [p.name for p in sessions.glob("*/*") if not p.name.startswith(".")]


def ledgers(tmp_path: Path) -> list[Path]:
    return list((tmp_path / "data" / "nodes" / socket.gethostname() / "sessions").iterdir())


def watchdog_of(node: subprocess.Popen[str]) -> psutil.Process:
    (found,) = [
        child
        for child in psutil.Process(node.pid).children()
        if "agentmesh.node.leftovers" in " ".join(child.cmdline())
    ]
    return found


async def test_a_killed_node_s_watchdog_stops_its_tasks(
    unsandboxed_node: StartNode, tmp_path: Path
) -> None:
    node, address = unsandboxed_node()
    channel, sid = await start_long_task(address, tmp_path)
    assert listed(tmp_path) == [str(sid)]
    watchdog = watchdog_of(node)

    node.kill()  # the node alone: its watchdog is in a session of its own
    await wait_for_no_session(sid)
    await channel.close()

    assert not (tmp_path / "canary").exists()
    assert await process_ended(watchdog)
    assert ledgers(tmp_path) == []


async def test_a_node_started_again_stops_what_its_last_run_left(
    unsandboxed_node: StartNode, tmp_path: Path
) -> None:
    node, address = unsandboxed_node()
    channel, sid = await start_long_task(address, tmp_path)
    watchdog = watchdog_of(node)
    watchdog.kill()  # both die at once, as under a kill of everything
    node.kill()
    node.wait(10)
    await channel.close()
    assert session_members(sid)  # left running

    again, _ = unsandboxed_node()
    await wait_for_no_session(sid)
    assert not (tmp_path / "canary").exists()
    assert len(ledgers(tmp_path)) == 1  # the new node's own
    again.send_signal(signal.SIGTERM)
    assert again.wait(30) == 0
    assert again.stderr is not None
    assert re.search(
        r"stopped [1-9]\d* processes a previous run of this node left running", again.stderr.read()
    )


async def test_a_node_stopped_normally_leaves_its_watchdog_nothing_to_do(
    unsandboxed_node: StartNode, tmp_path: Path
) -> None:
    node, address = unsandboxed_node()
    watchdog = watchdog_of(node)
    async with grpc.aio.insecure_channel(address) as channel:
        stub = node_pb2_grpc.AgentNodeStub(channel)
        call = stub.ExecuteTask(
            node_pb2.ExecuteTaskRequest(
                task_id="short-1",
                spec=task_pb2.TaskSpec(
                    kind="shell", command="echo hi", permission_mode="superuser"
                ),
            )
        )
        events = [event async for event in call]
    assert events[-1].result.state == task_pb2.TASK_STATE_COMPLETED
    node.send_signal(signal.SIGTERM)
    assert node.wait(30) == 0
    assert await process_ended(watchdog)
    assert ledgers(tmp_path) == []


async def test_a_node_starting_beside_a_live_one_of_the_same_name_leaves_its_tasks_alone(
    unsandboxed_node: StartNode, tmp_path: Path
) -> None:
    _, address = unsandboxed_node()
    channel, sid = await start_long_task(address, tmp_path)
    try:
        second, _ = unsandboxed_node()
        assert watchdog_of(second).is_running()
        assert session_members(sid)
        assert listed(tmp_path) == [str(sid)]
        assert len(ledgers(tmp_path)) == 2
    finally:
        await channel.close()


def test_a_claim_stops_only_the_ledgers_whose_holder_is_gone(tmp_path: Path) -> None:
    root = tmp_path / "sessions"
    live, _ = Ledger.claim(root)
    dead, _ = Ledger.claim(root)
    tasks = [subprocess.Popen(["sleep", "300"], start_new_session=True) for _ in range(2)]
    marks = {task.pid: "unread-while-its-leader-runs" for task in tasks}
    try:
        for ledger, task in ((live, tasks[0]), (dead, tasks[1])):
            ledger.add(task.pid, marks[task.pid])
        assert dead._lock is not None
        os.close(dead._lock)  # as the kernel does when its node dies
        dead._lock = None

        third, killed = Ledger.claim(root)

        assert killed == 1
        assert tasks[1].wait(10) == -signal.SIGKILL
        assert tasks[0].poll() is None
        assert sorted(p.name for p in root.iterdir()) == sorted(
            [live.directory.name, third.directory.name]
        )
        live.close()
        third.close()
        assert list(root.iterdir()) == []
    finally:
        for task in tasks:
            task.kill()
            task.wait()
