"""`echo`: streams the prompt back unchanged; makes health checks and benchmarks honest."""

from __future__ import annotations

from collections.abc import AsyncIterator

from agentmesh.node.executors.base import Job
from agentmesh.tasks.events import Payload, Result, Text
from agentmesh.tasks.model import TaskKind, TaskState

CHUNK_CHARS = 16 << 10


class EchoExecutor:
    kind = TaskKind.ECHO
    needs_workdir = False

    async def run(self, job: Job) -> AsyncIterator[Payload]:
        prompt = job.spec.prompt
        for start in range(0, len(prompt), CHUNK_CHARS):
            if job.cancel.is_set():
                yield Result(TaskState.CANCELED, error="canceled")
                return
            yield Text(prompt[start : start + CHUNK_CHARS])
        yield Result(TaskState.COMPLETED, output=prompt)
