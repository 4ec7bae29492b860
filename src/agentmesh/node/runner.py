"""The node's task runner: admission, numbering, secrets scrubbing and cancellation.

Executors yield payloads; the runner turns them into numbered events (seq from 1, no gaps),
makes sure the last one is a `Result`, and that nothing outlives a task: cancellation, a
timeout and a dropped client all stop the task's processes.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import logging
import shutil
import tempfile
import time
from collections.abc import AsyncIterator, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from agentmesh import log_format
from agentmesh.config import PermissionMode
from agentmesh.errors import (
    AlreadyExists,
    FailedPrecondition,
    InvalidArgument,
    Overloaded,
    PermissionDenied,
    Reason,
    Unavailable,
)
from agentmesh.node.environment import Scrubber
from agentmesh.node.executors.base import DEFAULT_MAX_OUTPUT_BYTES, Executor, Job
from agentmesh.node.permissions.approvals import Approval
from agentmesh.tasks.events import Diagnostic, Payload, Result, Status, TaskEvent, field_names
from agentmesh.tasks.model import (
    AgentMode,
    TaskKind,
    TaskSpec,
    TaskState,
    validate_runnable,
    validate_task_id,
)

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ExecuteRequest:
    task_id: str
    attempt: int
    spec: TaskSpec
    # gemini, run directly: a key for the node's Gemini API proxy (never given to the task).
    api_key: str = field(default="", repr=False)
    # gemini: the key the scheduler reserved the forecast on, and the task's token budget.
    key_fingerprint: str = ""
    token_budget: int = 0
    # gemini, agentic: the attempt's mesh credential from the scheduler (its mesh tools').
    mesh_credential: str = field(default="", repr=False)
    # gemini: the context the scheduler assembled for the agent (its GEMINI.md).
    context: str = ""
    # shell, weak mode: commands the task's user approved.
    approvals: tuple[Approval, ...] = ()


@dataclass(frozen=True)
class RunnerLimits:
    max_concurrency: int
    default_timeout_seconds: float
    default_permission_mode: PermissionMode
    # For gemini tasks that reach the node without one (the scheduler fills it in).
    default_agent_mode: AgentMode = AgentMode.AGENTIC
    # Where tasks run; None = a fresh temporary directory per task.
    workdir: Path | None = None
    # The highest mode it runs (node.max_permission_mode); the default mode is within it.
    max_permission_mode: PermissionMode = PermissionMode.WEAK
    # A task's stdout and stderr together (node.max_output_bytes).
    max_output_bytes: int = DEFAULT_MAX_OUTPUT_BYTES


@dataclass
class _Run:
    task_id: str
    cancel: asyncio.Event
    started: float


class TaskRunner:
    def __init__(
        self,
        agent_id: str,
        executors: Mapping[str, Executor],
        limits: RunnerLimits,
        *,
        secrets: tuple[str, ...] = (),
    ) -> None:
        self.agent_id = agent_id
        self._executors = dict(executors)
        self._limits = limits
        self._secrets = secrets
        self._runs: dict[str, _Run] = {}
        self._draining = False
        # Set when draining starts: long-lived streams end once their tasks have.
        self.stopping = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()

    @property
    def running(self) -> int:
        return len(self._runs)

    @property
    def draining(self) -> bool:
        return self._draining

    def running_task_ids(self) -> tuple[str, ...]:
        return tuple(self._runs)

    def drain(self) -> None:
        """Accept no new tasks from now on."""
        self._draining = True
        self.stopping.set()

    async def wait_idle(self, within_seconds: float) -> bool:
        try:
            await asyncio.wait_for(self._idle.wait(), within_seconds)
        except TimeoutError:
            return False
        return True

    def cancel(self, task_id: str) -> bool:
        run = self._runs.get(task_id)
        if run is None:
            return False
        run.cancel.set()
        return True

    def cancel_all(self) -> None:
        for run in self._runs.values():
            run.cancel.set()

    async def execute(self, request: ExecuteRequest) -> AsyncIterator[TaskEvent]:
        """Run one task; yield its events until (and including) its `Result`."""
        try:
            validate_task_id(request.task_id)
            kind = validate_runnable(request.spec)
        except InvalidArgument as error:
            raise InvalidArgument(error.field, error.problem, reason=Reason.BAD_SPEC) from None
        mode = PermissionMode(request.spec.permission_mode or self._limits.default_permission_mode)
        if mode.exceeds(self._limits.max_permission_mode):
            raise PermissionDenied(
                f"this node runs at most {self._limits.max_permission_mode} tasks"
                f" (node.max_permission_mode); the task asks for {mode}",
                reason=Reason.MODE_ABOVE_CEILING,
            )
        executor = self._executors.get(kind)
        if executor is None:
            raise FailedPrecondition(f"this node has no {kind} executor", reason=Reason.NO_EXECUTOR)
        if self._draining:
            raise Unavailable(
                "this node is shutting down and takes no new tasks", reason=Reason.NODE_DRAINING
            )
        if request.task_id in self._runs:
            raise AlreadyExists(
                f"task {request.task_id} is already running here",
                reason=Reason.DUPLICATE_ATTEMPT,
            )
        if len(self._runs) >= self._limits.max_concurrency:
            raise Overloaded(
                f"this node runs {len(self._runs)} tasks, its limit"
                f" (max_concurrency={self._limits.max_concurrency})",
                reason=Reason.NODE_FULL,
            )
        run = _Run(request.task_id, asyncio.Event(), time.monotonic())
        self._runs[request.task_id] = run
        self._idle.clear()
        try:
            async for event in self._run(request, kind, executor, run):
                yield event
        finally:
            del self._runs[request.task_id]
            if not self._runs:
                self._idle.set()

    async def _run(
        self, request: ExecuteRequest, kind: TaskKind, executor: Executor, run: _Run
    ) -> AsyncIterator[TaskEvent]:
        scrub = Scrubber(request.api_key, request.mesh_credential, *self._secrets)
        log_format.redact(request.api_key)
        seq = 0

        def event(payload: Payload) -> TaskEvent:
            nonlocal seq
            seq += 1
            return TaskEvent(
                task_id=request.task_id,
                seq=seq,
                time=time.time(),
                attempt=request.attempt,
                agent_id=self.agent_id,
                payload=_scrubbed(payload, scrub),
            )

        mode = PermissionMode(request.spec.permission_mode or self._limits.default_permission_mode)
        agent_mode = AgentMode(request.spec.agent_mode or self._limits.default_agent_mode)
        timeout = request.spec.timeout_seconds or self._limits.default_timeout_seconds
        fields = {"task_id": request.task_id, "attempt": request.attempt, "agent": self.agent_id}
        log.info("task started", extra={**fields, "kind": kind})
        yield event(Status(TaskState.WORKING, f"running on {self.agent_id}"))
        with _workdir(self._limits.workdir, request.task_id, executor.needs_workdir) as workdir:
            job = Job(
                task_id=request.task_id,
                attempt=request.attempt,
                spec=request.spec,
                kind=kind,
                permission_mode=mode,
                agent_mode=agent_mode,
                workdir=workdir,
                timeout_seconds=timeout,
                cancel=run.cancel,
                api_key=request.api_key,
                key_fingerprint=request.key_fingerprint,
                token_budget=request.token_budget,
                max_output_bytes=self._limits.max_output_bytes,
                mesh_credential=request.mesh_credential,
                context=request.context,
                approvals=request.approvals,
            )
            payloads = aiter(executor.run(job))
            result: Result | None = None
            try:
                async for payload in payloads:
                    yield event(payload)
                    if isinstance(payload, Result):
                        result = payload
                        break
            except Exception as exc:
                log.exception("executor failed", extra=fields)
                yield event(Diagnostic("error", f"executor error: {exc.__class__.__name__}"))
            finally:
                await payloads.aclose()  # type: ignore[attr-defined]
            if result is None:
                result = Result(TaskState.FAILED, error="the executor ended without a result")
                yield event(result)
        log.info(
            "task ended",
            extra={
                **fields,
                "state": str(result.state),
                "seconds": round(time.monotonic() - run.started, 3),
            },
        )


@contextlib.contextmanager
def _workdir(configured: Path | None, task_id: str, needed: bool) -> Iterator[Path]:
    if configured is not None:
        yield configured
        return
    if not needed:
        # Making and removing a directory costs more than a whole echo task.
        yield _temp_dir()
        return
    path = Path(tempfile.mkdtemp(prefix=f"agentmesh-{task_id[:40]}-"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@functools.cache
def _temp_dir() -> Path:
    """The system's temporary directory (as `tempfile` finds it once per process)."""
    return Path(tempfile.gettempdir())


def _scrubbed(payload: Payload, scrub: Scrubber) -> Payload:
    """The payload with the secrets masked in its text fields (itself if none held one)."""
    changes: dict[str, Any] = {}
    for name in field_names(type(payload)):
        value = getattr(payload, name)
        if isinstance(value, str) and (masked := scrub(value)) != value:
            changes[name] = masked
    return dataclasses.replace(payload, **changes) if changes else payload
