"""The permission checker in its worker processes: same answers, a time limit, no leftovers."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path

import psutil
import pytest

from agentmesh.config import PermissionMode, Permissions
from agentmesh.node import command_check
from agentmesh.node.command_check import CommandChecker
from agentmesh.node.permissions import CommandRefused, ShellPlan, plan_shell_command

PERMISSIONS = Permissions()
CRAFTED = "strace watch " + "a " * 8000  # seconds of checking, within the 16 KiB wire cap


def workers() -> set[int]:
    return {child.pid for child in psutil.Process(os.getpid()).children()}


@pytest.fixture(autouse=True)
def plain_environment(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Workers as a node started from a shell runs them: PYTHONUNBUFFERED unset, so their
    stdout is a block-buffered pipe; and none left running after a test, whatever it did."""
    monkeypatch.delenv("PYTHONUNBUFFERED", raising=False)
    yield
    for child in psutil.Process(os.getpid()).children():
        with contextlib.suppress(psutil.NoSuchProcess):
            child.kill()  # asyncio's child watcher reaps it


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


FAILED = "the permission checker failed on this command, so it is refused"
WorkerProgram = Callable[[str], None]


@pytest.fixture
def worker_program(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> WorkerProgram:
    """Have checkers started after this run `source` (Python) as their worker: a broken
    interpreter or checker, as a node could meet one."""

    python = sys.executable

    def use(source: str) -> None:
        program = tmp_path / "worker"
        program.write_text(f"#!{python}\n{source}")
        program.chmod(0o755)
        # The worker is started as `sys.executable -m agentmesh.node.command_check`.
        monkeypatch.setattr(sys, "executable", str(program))

    return use


async def refused_detail(checker: CommandChecker, command: str = "echo hi") -> str:
    with pytest.raises(CommandRefused) as refused:
        await checker.plan(command, PermissionMode.WEAK)
    assert refused.value.rule == "too-complex"
    return refused.value.detail


@pytest.fixture
async def patient_checker() -> AsyncIterator[CommandChecker]:
    """A checker whose time limit no check here comes near, even on a busy machine."""
    running = CommandChecker(PERMISSIONS, time_limit_seconds=5)
    await running.start()
    try:
        yield running
    finally:
        await running.close()


async def test_an_idle_worker_serves_the_next_check(patient_checker: CommandChecker) -> None:
    checker = patient_checker
    first = workers()

    await checker.plan("echo one", PermissionMode.WEAK)
    await checker.plan("echo two", PermissionMode.WEAK)

    assert workers() == first


async def test_a_node_checks_two_commands_at_once_in_two_workers(
    patient_checker: CommandChecker,
) -> None:
    checker = patient_checker
    plans = await asyncio.gather(
        *(checker.plan(f"echo {n}", PermissionMode.WEAK) for n in range(4))
    )

    assert [plan.argv[-1] for plan in plans] == ["0", "1", "2", "3"]
    assert len(workers()) == 2  # kept for the next checks, no more


async def test_closing_during_a_check_ends_its_worker_after_it() -> None:
    checker = CommandChecker(PERMISSIONS, time_limit_seconds=5)
    await checker.start()

    plan, _ = await asyncio.gather(checker.plan("echo hi", PermissionMode.WEAK), checker.close())

    assert plan.argv[-1] == "hi"
    assert not workers()


async def test_closing_lets_each_worker_end_by_itself(
    worker_program: WorkerProgram, tmp_path: Path
) -> None:
    ended = tmp_path / "ended"
    # The real worker, which marks a clean exit (none after SIGKILL).
    worker_program(
        f"import atexit, pathlib\natexit.register(pathlib.Path({str(ended)!r}).touch)\n"
        "from agentmesh.node.command_check import main\nmain()\n"
    )
    checker = CommandChecker(PERMISSIONS, time_limit_seconds=5)
    await checker.start()
    await checker.plan("echo hi", PermissionMode.WEAK)

    await checker.close()

    assert ended.exists()  # it was asked to end (EOF), not killed
    assert not workers()


async def test_closing_kills_a_worker_that_does_not_end(worker_program: WorkerProgram) -> None:
    worker_program(
        "import sys, time\nprint('ready', flush=True)\nsys.stdin.read()\ntime.sleep(60)\n"
    )
    checker = CommandChecker(PERMISSIONS, time_limit_seconds=5)
    await checker.start()

    await checker.close()

    assert not workers()


@pytest.mark.parametrize("answer", ["no JSON here", "[1, 2]"])
async def test_a_worker_that_answers_nonsense_is_refused_and_killed(
    worker_program: WorkerProgram, answer: str
) -> None:
    worker_program(
        f"import sys\nprint('ready', flush=True)\nfor line in sys.stdin:\n"
        f"    print({answer!r}, flush=True)\n"
    )
    checker = CommandChecker(PERMISSIONS, time_limit_seconds=5)
    try:
        assert await refused_detail(checker) == FAILED
        assert not workers()
    finally:
        await checker.close()


@pytest.mark.parametrize(
    "greeting",
    [
        "Python 3.11 says something first, a banner from a sitecustomize: " + "-" * 60,
        "warning: an interpreter that says something first, " + "-" * 60,
    ],
    ids=["sorting-before-ready", "sorting-after-ready"],
)
async def test_a_worker_that_does_not_say_ready_is_not_used(
    worker_program: WorkerProgram, greeting: str, caplog: pytest.LogCaptureFixture
) -> None:
    # It checks commands well after its greeting; the greeting alone disqualifies it.
    worker_program(
        f"print({greeting!r}, flush=True)\n"
        "import json, sys\nfrom agentmesh.node.command_check import check\n"
        "for line in sys.stdin:\n"
        "    request = json.loads(line)\n"
        "    answer = check(request['command'], request['mode'], request['allowlist'],"
        " request['denylist'])\n"
        "    print(json.dumps(answer), flush=True)\n"
    )
    checker = CommandChecker(PERMISSIONS, time_limit_seconds=5)
    try:
        with caplog.at_level(logging.ERROR, logger=command_check.__name__):
            assert await refused_detail(checker) == FAILED
        assert not workers()
    finally:
        await checker.close()

    # The log says what it said, cut to 80 characters.
    assert [r.getMessage() for r in caplog.records] == [
        f"the command checker failed: the checker worker did not start (it said {greeting[:80]!r})"
    ]


SILENT = "import sys\nfor line in sys.stdin:\n    pass\n"  # never says ready, never answers


async def test_a_worker_that_does_not_start_in_time_is_a_checker_failure(
    worker_program: WorkerProgram, monkeypatch: pytest.MonkeyPatch
) -> None:
    worker_program(SILENT)
    monkeypatch.setattr(command_check, "START_TIMEOUT_SECONDS", 0.5)
    checker = CommandChecker(PERMISSIONS, time_limit_seconds=5)

    # Not "too long or complex": the command was never checked.
    assert await refused_detail(checker) == FAILED
    assert not workers()


async def test_a_check_cancelled_while_its_worker_starts_leaves_no_worker(
    worker_program: WorkerProgram,
) -> None:
    worker_program(SILENT)
    checker = CommandChecker(PERMISSIONS, time_limit_seconds=30)

    # The client goes away while the worker has yet to say ready.
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(checker.plan("echo hi", PermissionMode.WEAK), 0.5)

    assert not workers()


async def test_a_check_cancelled_mid_way_leaves_no_worker(worker_program: WorkerProgram) -> None:
    worker_program("import sys\nprint('ready', flush=True)\nfor line in sys.stdin:\n    pass\n")
    checker = CommandChecker(PERMISSIONS, time_limit_seconds=30)
    await checker.start()

    # The client goes away while the worker has the command and no answer yet.
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(checker.plan("echo hi", PermissionMode.WEAK), 0.5)

    assert not workers()
    await checker.close()


async def test_a_bug_in_the_checker_refuses_the_command_and_keeps_the_worker(
    worker_program: WorkerProgram,
) -> None:
    worker_program(
        "from agentmesh.node import command_check\n"
        "def broken(*args, **kwargs):\n    raise KeyError('a bug')\n"
        "command_check.plan_shell_command = broken\ncommand_check.main()\n"
    )
    checker = CommandChecker(PERMISSIONS, time_limit_seconds=5)
    await checker.start()
    worker = workers()
    try:
        assert await refused_detail(checker) == "the checker failed: KeyError"
        assert await refused_detail(checker) == "the checker failed: KeyError"
        assert workers() == worker
    finally:
        await checker.close()
