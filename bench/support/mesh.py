"""A mesh for the scheduler benchmarks: the `agentmesh` processes and the gRPC submitters."""

from __future__ import annotations

import asyncio
import re
import subprocess
import sys
from pathlib import Path

from agentmesh.tasks.model import TaskState
from agentmesh.v1 import scheduler_pb2, scheduler_pb2_grpc, task_pb2

SUBMITTERS = 32
# The states of a task not ended yet: a completion poll reads only these rows (an index
# range), not every ended task of the run's history.
UNENDED = [state.value for state in TaskState if not state.terminal]
# SubmitTasks: tasks per call, and callers at once.
BATCH = 100
BATCH_SUBMITTERS = 4


def spawn(
    args: list[str], env: dict[str, str], work: Path, pattern: str
) -> tuple[subprocess.Popen[str], str]:
    """Start `agentmesh ARGS`; its process and what `pattern` found in its first line."""
    process = subprocess.Popen(
        [sys.executable, "-m", "agentmesh.cli.main", *args],
        env=env,
        cwd=work,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        start_new_session=True,
    )
    assert process.stdout is not None
    line = process.stdout.readline()
    match = re.search(pattern, line)
    if not match:
        process.kill()
        raise SystemExit(f"{args[0]} did not start: {line!r}")
    return process, match[1]


async def submit_all(
    stub: scheduler_pb2_grpc.SchedulerAsyncStub,
    count: int,
    prefix: str,
    submitters: int = SUBMITTERS,
) -> None:
    """Submit `count` echo tasks through `submitters` concurrent callers."""
    queue: asyncio.Queue[int] = asyncio.Queue()
    for i in range(count):
        queue.put_nowait(i)

    async def submitter() -> None:
        while not queue.empty():
            i = queue.get_nowait()
            spec = task_pb2.TaskSpec(kind="echo", prompt=f"{prefix} {i}")
            await stub.SubmitTask(scheduler_pb2.SubmitTaskRequest(spec=spec))

    await asyncio.gather(*(submitter() for _ in range(submitters)))


async def submit_batched(
    stub: scheduler_pb2_grpc.SchedulerAsyncStub, count: int, prefix: str
) -> None:
    """Submit `count` echo tasks BATCH to a SubmitTasks call, BATCH_SUBMITTERS calls at once."""
    starts = list(range(0, count, BATCH))

    async def submitter() -> None:
        while starts:
            first = starts.pop(0)
            specs = [
                task_pb2.TaskSpec(kind="echo", prompt=f"{prefix} {i}")
                for i in range(first, min(first + BATCH, count))
            ]
            await stub.SubmitTasks(scheduler_pb2.SubmitTasksRequest(specs=specs))

    await asyncio.gather(*(submitter() for _ in range(BATCH_SUBMITTERS)))
