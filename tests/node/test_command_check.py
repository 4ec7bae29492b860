"""The permission checker in its worker processes: same answers, a time limit, no leftovers."""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import AsyncIterator, Awaitable

import psutil
import pytest

from agentmesh.config import PermissionMode, Permissions
from agentmesh.node.command_check import CommandChecker
from agentmesh.node.permissions import CommandRefused, ShellPlan, plan_shell_command

PERMISSIONS = Permissions()
CRAFTED = "strace watch " + "a " * 8000  # seconds of checking, within the 16 KiB wire cap


def workers() -> set[int]:
    return {child.pid for child in psutil.Process(os.getpid()).children()}


@pytest.fixture
async def checker() -> AsyncIterator[CommandChecker]:
    running = CommandChecker(PERMISSIONS, time_limit_seconds=0.2)
    await running.start()
    try:
        yield running
    finally:
        await running.close()


@pytest.mark.parametrize(
    ("command", "mode"),
    [("ls -l /tmp", PermissionMode.WEAK), ("echo a | wc -c", PermissionMode.SUPERUSER)],
)
async def test_an_allowed_command_gets_the_plan_the_checker_makes(
    checker: CommandChecker, command: str, mode: PermissionMode
) -> None:
    expected = plan_shell_command(
        command,
        mode,
        allowlist=PERMISSIONS.weak.allowlist,
        denylist=PERMISSIONS.superuser.denylist,
    )

    assert await checker.plan(command, mode) == expected


async def test_a_refusal_keeps_its_rule_and_detail(checker: CommandChecker) -> None:
    with pytest.raises(CommandRefused) as refused:
        await checker.plan("rm -rf /tmp/x", PermissionMode.SUPERUSER)

    assert (refused.value.rule, refused.value.mode) == ("denylisted", PermissionMode.SUPERUSER)
    assert "rm" in refused.value.detail


async def test_a_check_past_its_time_limit_is_refused_and_its_worker_killed(
    checker: CommandChecker,
) -> None:
    before = workers()

    with pytest.raises(CommandRefused) as refused:
        await checker.plan(CRAFTED, PermissionMode.SUPERUSER)

    assert refused.value.rule == "too-complex"
    assert refused.value.detail == (
        "the command is too long or complex to check within 0.2 seconds"
        " (node.command_check_seconds)"
    )
    assert not before & workers()  # the busy worker is gone, not left parsing
    # The next check gets a fresh worker.
    assert (await checker.plan("echo ok", PermissionMode.WEAK)).argv[-1] == "ok"


async def test_checks_at_once_beyond_the_workers_all_end(checker: CommandChecker) -> None:
    outcomes = await asyncio.gather(
        *(checker.plan(CRAFTED, PermissionMode.SUPERUSER) for _ in range(3)),
        checker.plan("uname -a", PermissionMode.WEAK),
        return_exceptions=True,
    )

    assert [getattr(o, "rule", None) for o in outcomes[:3]] == ["too-complex"] * 3
    assert not isinstance(outcomes[3], BaseException)


async def test_a_worker_that_dies_is_replaced(checker: CommandChecker) -> None:
    for pid in workers():
        os.kill(pid, signal.SIGKILL)

    # The check that meets the dead worker may be refused (fail closed), never more than it.
    first = await _refusal_or_plan(checker.plan("echo lost", PermissionMode.WEAK))
    second = await checker.plan("echo back", PermissionMode.WEAK)

    assert getattr(first, "rule", "too-complex") == "too-complex"
    assert second.argv[-1] == "back"


async def _refusal_or_plan(check: Awaitable[ShellPlan]) -> ShellPlan | CommandRefused:
    try:
        return await check
    except CommandRefused as refused:
        return refused


async def test_closing_leaves_no_worker() -> None:
    checker = CommandChecker(PERMISSIONS, time_limit_seconds=5)
    await checker.start()
    await checker.plan("echo hi", PermissionMode.WEAK)
    assert workers()

    await checker.close()

    assert not workers()
