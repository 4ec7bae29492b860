"""`shell`: one command line, checked against the permission rules, run in the node's
sandbox, streamed as it runs.

The checker gives a readable refusal before anything starts; the sandbox is what holds
the line when the checker is wrong (see agentmesh.node.sandbox).
"""

from __future__ import annotations

from collections.abc import AsyncIterator

from agentmesh.config import PermissionMode, Permissions
from agentmesh.node.command_check import CommandChecker
from agentmesh.node.environment import task_environment
from agentmesh.node.executors.base import Exit, Job, supervise
from agentmesh.node.leftovers import Ledger
from agentmesh.node.permissions import CommandRefused
from agentmesh.node.permissions.approvals import permitted, words
from agentmesh.node.permissions.policy import ShellPlan
from agentmesh.node.sandbox import Confinement, Sandbox, SandboxUnavailable
from agentmesh.tasks.events import Diagnostic, Payload, Refusal, Result, Stderr, Stdout
from agentmesh.tasks.model import TaskKind, TaskState

# The result keeps the end of the output; the whole of it is in the event stream.
RESULT_OUTPUT_CHARS = 16 << 10


class ShellExecutor:
    kind = TaskKind.SHELL
    needs_workdir = True

    def __init__(
        self,
        checker: CommandChecker,
        permissions: Permissions,
        *,
        sandbox: Sandbox,
        grace_seconds: float,
        ledger: Ledger | None = None,
    ) -> None:
        self._checker = checker
        self._permissions = permissions
        self._sandbox = sandbox
        self._grace = grace_seconds
        self._ledger = ledger

    async def run(self, job: Job) -> AsyncIterator[Payload]:
        command = job.spec.command
        try:
            # In a worker process with a time limit: never on the event loop.
            plan = await self._checker.plan(command, job.permission_mode)
        except CommandRefused as refused:
            approvable = await self._approvable(command, refused)
            approved = permitted(command, job.approvals) if approvable else None
            if approved is None:
                yield Refusal(
                    command=refused.command,
                    rule=refused.rule,
                    mode=str(refused.mode),
                    detail=refused.detail,
                    approvable=approvable,
                )
                yield Result(
                    TaskState.REJECTED, error=f"refused in {refused.mode} mode: {refused.detail}"
                )
                return
            yield Diagnostic(
                "info",
                f"runs by its user's approval: weak mode refused it ({refused.rule}:"
                f" {refused.detail})",
            )
            plan = ShellPlan(argv=tuple(approved), use_shell=False, programs=(approved[0],))
        weak = job.permission_mode is PermissionMode.WEAK
        confinement = Confinement(
            job.permission_mode,
            job.workdir,
            network=self._permissions.network(job.permission_mode),
            # Weak mode: the kernel lets only the allowlist's programs run (and an approved
            # command's).
            executables=(*self._permissions.weak.allowlist, *plan.programs) if weak else None,
        )
        try:
            launch = self._sandbox.launch(plan.argv, confinement)
        except SandboxUnavailable as exc:
            yield Result(TaskState.REJECTED, error=str(exc))
            return
        if self._sandbox.name == "none":
            yield Diagnostic("warning", f"not sandboxed: {self._sandbox.describe()}")
        self._sandbox.give(job.workdir)
        env = task_environment(job.workdir)
        tail = ""
        async for item in supervise(
            job, launch, env=env, grace_seconds=self._grace, ledger=self._ledger
        ):
            if isinstance(item, Exit):
                if item.how == "output_limit":
                    yield Diagnostic("error", item.output_limit_note())
                yield _result(item, tail)
            elif item.stream == "stdout":
                # Only the end of a chunk can reach the tail: no copy of the whole of it.
                tail = (tail + item.text[-RESULT_OUTPUT_CHARS:])[-RESULT_OUTPUT_CHARS:]
                yield Stdout(item.text)
            else:
                yield Stderr(item.text)

    async def _approvable(self, command: str, refused: CommandRefused) -> bool:
        """Whether a user may approve the refused command: a plain command line that weak
        mode refused and superuser mode would allow (the denylist is never approved)."""
        if refused.mode is not PermissionMode.WEAK or words(command) is None:
            return False
        try:
            await self._checker.plan(command, PermissionMode.SUPERUSER)
        except CommandRefused:
            return False
        return True


def _result(exit: Exit, tail: str) -> Result:
    if exit.how == "canceled":
        return Result(TaskState.CANCELED, exit_code=exit.code, output=tail, error="canceled")
    if exit.how == "timeout":
        return Result(TaskState.FAILED, exit_code=exit.code, output=tail, error="timed out")
    if exit.how == "output_limit":
        error = exit.output_limit_note()
        return Result(TaskState.FAILED, exit_code=exit.code, output=tail, error=error)
    if exit.code != 0:
        error = (
            f"exited with code {exit.code}" if exit.code > 0 else f"killed by signal {-exit.code}"
        )
        return Result(TaskState.FAILED, exit_code=exit.code, output=tail, error=error)
    return Result(TaskState.COMPLETED, exit_code=0, output=tail)
