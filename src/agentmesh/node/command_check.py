"""The permission checker, run off the node's event loop in worker processes, with a time limit.

`plan_shell_command` is pure Python: a crafted command can keep it busy for a while, and on
the event loop that stops the node's health answers and heartbeats (a thread would not
help: the parse holds the GIL, and a thread cannot be stopped). So each check runs in a
worker process (`python -m agentmesh.node.command_check`) that reads one JSON request a
line on stdin and answers one JSON line on stdout. A check that takes longer than the time
limit is refused (rule `too-complex`) and its worker is killed, which bounds its CPU too;
a worker that dies is replaced on the next check. Fail closed: a check that cannot be
completed refuses the command.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import signal
import sys
from collections.abc import Collection
from typing import Any

from agentmesh.config import PermissionMode, Permissions
from agentmesh.node.permissions import CommandRefused, ShellPlan, plan_shell_command
from agentmesh.node.permissions.errors import show

log = logging.getLogger(__name__)

READY = "ready"
# An answer holds the argv of a command the wire caps at 16 KiB, a few times over at most.
MAX_ANSWER_BYTES = 1 << 20
START_TIMEOUT_SECONDS = 30.0


class CheckerUnavailable(Exception):
    """A worker could not be started or answered nonsense."""


class _Worker:
    """One worker process, checking one command at a time."""

    def __init__(self, process: asyncio.subprocess.Process) -> None:
        self._process = process

    @classmethod
    async def start(cls) -> _Worker:
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            __name__,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            limit=MAX_ANSWER_BYTES,
        )
        worker = cls(process)
        try:
            # Importing the checker is not part of the check's time.
            line = await asyncio.wait_for(worker._read_line(), START_TIMEOUT_SECONDS)
        except TimeoutError:
            await worker.kill()
            raise CheckerUnavailable("the checker worker did not start in time") from None
        except BaseException:
            await worker.kill()
            raise
        if line != READY:
            await worker.kill()
            raise CheckerUnavailable(f"the checker worker did not start (it said {line[:80]!r})")
        return worker

    @property
    def alive(self) -> bool:
        return self._process.returncode is None

    async def ask(self, request: dict[str, Any]) -> dict[str, Any]:
        assert self._process.stdin is not None
        self._process.stdin.write(json.dumps(request).encode() + b"\n")
        await self._process.stdin.drain()
        line = await self._read_line()
        try:
            answer = json.loads(line)
        except json.JSONDecodeError:
            raise CheckerUnavailable("the checker worker answered nonsense") from None
        if not isinstance(answer, dict):
            raise CheckerUnavailable("the checker worker answered nonsense")
        return answer

    async def _read_line(self) -> str:
        assert self._process.stdout is not None
        try:
            line = await self._process.stdout.readline()
        except (ValueError, asyncio.LimitOverrunError):
            raise CheckerUnavailable("the checker worker's answer is too long") from None
        if not line:
            raise CheckerUnavailable("the checker worker exited")
        return line.decode().rstrip("\n")

    async def kill(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            self._process.kill()
        await self._process.wait()

    async def close(self) -> None:
        """Ask the worker to end (EOF on its stdin); kill it if it does not."""
        if self._process.stdin is not None:
            self._process.stdin.close()
        try:
            await asyncio.wait_for(self._process.wait(), 2.0)
        except TimeoutError:
            await self.kill()


class CommandChecker:
    """`plan_shell_command` for the node's permissions, in up to `workers` worker processes."""

    def __init__(
        self, permissions: Permissions, *, time_limit_seconds: float, workers: int = 2
    ) -> None:
        self._allowlist = list(permissions.weak.allowlist)
        self._denylist = list(permissions.superuser.denylist)
        self._time_limit = time_limit_seconds
        self._idle: list[_Worker] = []
        self._slots = asyncio.Semaphore(workers)
        self._closed = False

    async def start(self) -> None:
        """Start one worker now, so that the first task does not wait for it."""
        self._idle.append(await _Worker.start())

    async def close(self) -> None:
        self._closed = True
        idle, self._idle = self._idle, []
        await asyncio.gather(*(worker.close() for worker in idle), return_exceptions=True)

    async def plan(self, command: str, mode: PermissionMode) -> ShellPlan:
        """How to run `command` in `mode`; raises CommandRefused, also when the check takes
        longer than the time limit or cannot be done."""
        request = {
            "command": command,
            "mode": str(mode),
            "allowlist": self._allowlist,
            "denylist": self._denylist,
        }
        async with self._slots:
            worker = self._idle.pop() if self._idle else None
            try:
                if worker is not None and not worker.alive:
                    await worker.kill()  # reaps it
                    worker = None
                if worker is None:
                    worker = await _Worker.start()
                answer = await asyncio.wait_for(worker.ask(request), self._time_limit)
            except TimeoutError:
                log.warning(
                    "command check over its time limit: worker stopped",
                    extra={"seconds": self._time_limit, "chars": len(command)},
                )
                if worker is not None:
                    await worker.kill()
                raise CommandRefused(
                    show(command.strip()),
                    "too-complex",
                    mode,
                    f"the command is too long or complex to check within {self._time_limit:g}"
                    " seconds (node.command_check_seconds)",
                ) from None
            except (CheckerUnavailable, OSError) as exc:
                log.error("the command checker failed: %s", exc)
                if worker is not None:
                    await worker.kill()
                raise CommandRefused(
                    show(command.strip()),
                    "too-complex",
                    mode,
                    "the permission checker failed on this command, so it is refused",
                ) from None
            except BaseException:
                # Cancelled mid-check (a dropped client): the worker's answer is unread.
                if worker is not None:
                    await asyncio.shield(worker.kill())
                raise
            if self._closed:
                await worker.close()
            else:
                self._idle.append(worker)
        return _answer_to_plan(answer, mode)


def _answer_to_plan(answer: dict[str, Any], mode: PermissionMode) -> ShellPlan:
    if "plan" in answer:
        plan = answer["plan"]
        return ShellPlan(
            argv=tuple(plan["argv"]),
            use_shell=bool(plan["use_shell"]),
            programs=tuple(plan["programs"]),
        )
    refused = answer.get("refused")
    if isinstance(refused, dict):
        raise CommandRefused(
            str(refused["command"]), str(refused["rule"]), mode, str(refused["detail"])
        )
    raise CommandRefused("", "too-complex", mode, f"the checker failed: {answer.get('error')}")


def check(
    command: str, mode: str, allowlist: Collection[str], denylist: Collection[str]
) -> dict[str, Any]:
    """One check as the worker answers it."""
    try:
        plan = plan_shell_command(command, mode, allowlist=allowlist, denylist=denylist)
    except CommandRefused as refused:
        return {
            "refused": {"command": refused.command, "rule": refused.rule, "detail": refused.detail}
        }
    except Exception as exc:  # a bug in the checker refuses the command, not the node
        return {"error": exc.__class__.__name__}
    return {"plan": {"argv": plan.argv, "use_shell": plan.use_shell, "programs": plan.programs}}


def main() -> None:
    """The worker: one request a line on stdin, one answer a line on stdout, until EOF."""
    # Ctrl-C in the node's terminal reaches its whole process group: the node ends its
    # workers itself (EOF on stdin), and a node that dies leaves them EOF as well.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    print(READY, flush=True)
    for line in sys.stdin:
        request = json.loads(line)
        answer = check(
            request["command"], request["mode"], request["allowlist"], request["denylist"]
        )
        print(json.dumps(answer), flush=True)


if __name__ == "__main__":
    main()
