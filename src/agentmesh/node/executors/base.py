"""What every executor gets, what it must produce, and the supervised process they share."""

from __future__ import annotations

import asyncio
import codecs
import contextlib
from collections.abc import AsyncGenerator, AsyncIterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol, TypeVar

from agentmesh.config import PermissionMode
from agentmesh.node.leftovers import Ledger
from agentmesh.node.permissions.approvals import Approval
from agentmesh.node.process import Chunk, ProcessGroup, StreamName
from agentmesh.node.sandbox import Launch
from agentmesh.tasks.events import Payload
from agentmesh.tasks.model import AgentMode, TaskKind, TaskSpec

T = TypeVar("T")

DEFAULT_MAX_OUTPUT_BYTES = 16 << 20


@dataclass(frozen=True)
class Job:
    """One attempt of one task, as an executor sees it."""

    task_id: str
    attempt: int
    spec: TaskSpec
    kind: TaskKind
    permission_mode: PermissionMode
    # gemini: with its tools (agentic) or an answer only (plain).
    agent_mode: AgentMode
    # Where it runs (see Executor.needs_workdir: an executor that needs none is given the
    # system's temporary directory, and must not write there).
    workdir: Path
    timeout_seconds: float
    cancel: asyncio.Event = field(repr=False)
    # gemini, run directly: the key the request brought, for the node's Gemini API proxy
    # (never given to the CLI). Never logged; scrubbed from every output.
    api_key: str = field(default="", repr=False)
    # gemini: the key the scheduler reserved the task's forecast on (asked for first).
    key_fingerprint: str = ""
    # gemini: the most tokens the task may spend (0 = no limit).
    token_budget: int = 0
    # stdout and stderr together; past this the process is stopped (see `supervise`).
    max_output_bytes: int = DEFAULT_MAX_OUTPUT_BYTES
    # gemini, agentic, from a scheduler: what lets its mesh tools act as this task (see
    # agentmesh.node.mesh_tools). Never logged, never given to the task.
    mesh_credential: str = field(default="", repr=False)
    # gemini: the context the scheduler assembled (Markdown), the CLI's GEMINI.md.
    context: str = ""
    # shell, weak mode: commands the task's user approved (see permissions.approvals).
    approvals: tuple[Approval, ...] = ()


class Executor(Protocol):
    """Runs a job and yields its event payloads; the last one is always a `Result`."""

    kind: TaskKind
    # Whether its jobs run in a directory of their own (a fresh one unless node.workdir is
    # set); one that touches no files (echo) is spared making and removing it.
    needs_workdir: bool

    def run(self, job: Job) -> AsyncIterator[Payload]: ...


@dataclass(frozen=True, slots=True)
class Output:
    stream: StreamName
    text: str


How = Literal["exited", "canceled", "timeout", "output_limit"]


@dataclass(frozen=True, slots=True)
class Exit:
    code: int
    how: How
    # output_limit: how many bytes were forwarded (the job's max_output_bytes).
    output_bytes: int = 0

    def output_limit_note(self) -> str:
        """What a task stopped for its output says, in its Diagnostic and its Result."""
        return (
            f"output passed the node's limit of {self.output_bytes} bytes"
            " (node.max_output_bytes): the rest was discarded and the task was stopped"
        )


async def supervise(
    job: Job,
    launch: Launch,
    *,
    env: Mapping[str, str],
    grace_seconds: float,
    ledger: Ledger | None = None,
) -> AsyncIterator[Output | Exit]:
    """Run the job's (confined) command: its output as decoded text, then how it ended.

    The process group is stopped when the job is cancelled, when it runs past its timeout,
    when its stdout and stderr together pass `job.max_output_bytes` (the output is cut at
    exactly that many bytes: a flood must neither fill the trace nor run until its timeout),
    and when the consumer stops iterating (a dropped client), so nothing outlives the job;
    meanwhile its session is in `ledger`, for when the node itself dies.
    """
    group = await ProcessGroup.start(
        launch.argv,
        env=env,
        cwd=job.workdir,
        grace_seconds=grace_seconds,
        user=launch.user,
        group=launch.group,
        ledger=ledger,
    )
    decoders = {
        name: codecs.getincrementaldecoder("utf-8")(errors="replace")
        for name in ("stdout", "stderr")
    }
    how: How = "exited"
    forwarded = 0
    chunks = aiter(group.chunks())
    cancelled = asyncio.ensure_future(job.cancel.wait())
    deadline = asyncio.get_running_loop().time() + job.timeout_seconds
    next_chunk: asyncio.Future[Chunk] | None = None
    try:
        while True:
            next_chunk = asyncio.ensure_future(anext(chunks))
            remaining = deadline - asyncio.get_running_loop().time()
            done, _ = await asyncio.wait(
                {next_chunk, cancelled},
                timeout=max(remaining, 0),
                return_when=asyncio.FIRST_COMPLETED,
            )
            if next_chunk not in done:
                next_chunk.cancel()
                with contextlib.suppress(asyncio.CancelledError, StopAsyncIteration):
                    await next_chunk
                how = "canceled" if cancelled in done else "timeout"
                break
            try:
                chunk = next_chunk.result()
            except StopAsyncIteration:
                break
            data = chunk.data[: job.max_output_bytes - forwarded]
            forwarded += len(data)
            text = decoders[chunk.stream].decode(data)
            if text:
                yield Output(chunk.stream, text)
            if len(data) < len(chunk.data):
                how = "output_limit"
                break
        if how != "exited":
            await group.stop()
        code = await group.wait()
        if how in ("exited", "output_limit"):
            for name, decoder in decoders.items():
                if tail := decoder.decode(b"", final=True):
                    yield Output(name, tail)  # type: ignore[arg-type]
        yield Exit(code, how, forwarded if how == "output_limit" else 0)
    finally:
        cancelled.cancel()
        await group.stop()
        # A consumer that stops iterating leaves a read pending inside `chunks`: end it
        # first, or closing the generator fails ("already running").
        if next_chunk is not None and not next_chunk.done():
            next_chunk.cancel()
            with contextlib.suppress(asyncio.CancelledError, StopAsyncIteration):
                await next_chunk
        await chunks.aclose()  # type: ignore[attr-defined]


async def with_side_payloads(
    items: AsyncIterator[T], side: asyncio.Queue[Payload]
) -> AsyncGenerator[T | Payload, None]:
    """`items`, and between them each payload put in `side` as soon as it is put there (a
    payload put while an item is also ready comes first)."""
    source = aiter(items)
    next_item: asyncio.Future[T] = asyncio.ensure_future(anext(source))
    next_side: asyncio.Future[Payload] | None = None
    try:
        while True:
            next_side = asyncio.ensure_future(side.get())
            either: set[asyncio.Future[Any]] = {next_item, next_side}
            await asyncio.wait(either, return_when=asyncio.FIRST_COMPLETED)
            if next_side.done():
                yield next_side.result()
                continue
            next_side.cancel()
            try:
                item = next_item.result()
            except StopAsyncIteration:
                return
            yield item
            next_item = asyncio.ensure_future(anext(source))
    finally:
        if next_side is not None:
            next_side.cancel()
        # As in `supervise`: a pending read is ended before the source is closed.
        if not next_item.done():
            next_item.cancel()
            with contextlib.suppress(asyncio.CancelledError, StopAsyncIteration):
                await next_item
        await source.aclose()  # type: ignore[attr-defined]
