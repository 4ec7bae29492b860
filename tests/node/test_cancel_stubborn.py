"""Cancelling a task whose processes ignore SIGTERM: the node still ends every one of them.

Every other cancel test runs a plain `sleep`, which SIGTERM ends; here the shell and its
children ignore SIGTERM (`trap '' TERM`, inherited across exec), one of them in a session of
its own, so only the node's SIGKILL after `node.cancel_grace_seconds` can end them.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
from pathlib import Path

import psutil
import pytest

from agentmesh.v1 import node_pb2, task_pb2
from tests.node.conftest import StartNode
from tests.node.test_node import collect, execute, wait_for_file

STUBBORN = (
    "trap '' TERM; "
    "sleep 600 & echo $! > child.pid; "
    "setsid sh -c 'echo $$ > escaped.pid; exec sleep 600' & "
    "echo $$ > shell.pid; wait"
)
PID_FILES = ("shell", "child", "escaped")


def ignores_sigterm(process: psutil.Process) -> bool:
    """Whether the kernel says the process ignores SIGTERM (SigIgn in /proc/PID/status)."""
    status = Path(f"/proc/{process.pid}/status").read_text()
    line = next(line for line in status.splitlines() if line.startswith("SigIgn:"))
    mask = int(line.split()[1], 16)
    return bool(mask & (1 << (signal.SIGTERM - 1)))


async def test_a_command_that_ignores_sigterm_is_still_cancelled(
    start_node: StartNode, tmp_path: Path
) -> None:
    _, stub = await start_node(cancel_grace_seconds=0.5, sandbox="none")
    call = stub.ExecuteTask(
        execute("stubborn-1", kind="shell", command=STUBBORN, permission_mode="superuser")
    )
    assert (await call.read()).status.state == task_pb2.TASK_STATE_WORKING
    for name in PID_FILES:
        await wait_for_file(tmp_path / f"{name}.pid")
    processes = [psutil.Process(int((tmp_path / f"{n}.pid").read_text())) for n in PID_FILES]
    assert all(ignores_sigterm(p) for p in processes), "the test needs SIGTERM ignored"
    assert len({os.getsid(p.pid) for p in processes}) == 2  # one escaped its session

    reply = await stub.CancelTask(node_pb2.CancelTaskRequest(task_id="stubborn-1"))
    # Wait for the processes themselves (in a thread: the node runs on this event loop).
    _, alive = await asyncio.to_thread(psutil.wait_procs, processes, timeout=30)

    assert reply.canceled
    assert [p.pid for p in alive if _running(p)] == [], "processes survived the cancel"
    rest = await collect(call)
    assert rest[-1].result.state == task_pb2.TASK_STATE_CANCELED


def _running(process: psutil.Process) -> bool:
    try:
        return process.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


async def test_a_dropped_client_also_ends_processes_that_ignore_sigterm(
    start_node: StartNode, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    _, stub = await start_node(cancel_grace_seconds=0.5, sandbox="none")
    call = stub.ExecuteTask(
        execute("stubborn-2", kind="shell", command=STUBBORN, permission_mode="superuser")
    )
    await call.read()
    for name in PID_FILES:
        await wait_for_file(tmp_path / f"{name}.pid")
    processes = [psutil.Process(int((tmp_path / f"{n}.pid").read_text())) for n in PID_FILES]

    call.cancel()
    _, alive = await asyncio.to_thread(psutil.wait_procs, processes, timeout=30)

    assert [p.pid for p in alive if _running(p)] == [], "processes survived the dropped client"
    # The executor closed its output reader cleanly (a pending read made that fail).
    await asyncio.sleep(0.5)
    assert "already running" not in caplog.text
