"""Shell permission checks: the bypass corpus, run for real against a canary, plus unit tests."""

from __future__ import annotations

import pickle
import re
import shutil
import subprocess
from enum import StrEnum
from pathlib import Path

import pytest

from agentmesh.node.permissions import (
    MAX_COMMAND_LENGTH,
    RULES,
    CommandRefused,
    PermissionMode,
    ShellPlan,
    plan_shell_command,
)
from tests.node.shell_corpus import (
    CASES,
    SECRET_TEXT,
    SUPERUSER_DENYLIST,
    WEAK_ALLOWLIST,
    Case,
)

CANARY_TEXT = "canary"
RUN_ENV = {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"}
WEAK = PermissionMode.WEAK
SUPERUSER = PermissionMode.SUPERUSER


def plan(command: str, mode: PermissionMode | str) -> ShellPlan:
    return plan_shell_command(command, mode, allowlist=WEAK_ALLOWLIST, denylist=SUPERUSER_DENYLIST)


def refusal(command: str, mode: PermissionMode | str) -> CommandRefused:
    with pytest.raises(CommandRefused) as info:
        plan(command, mode)
    return info.value


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    """The task's directory, alone in its parent with the secret that no case may print."""
    work = tmp_path / "work"
    work.mkdir()
    (work / "canary.txt").write_text(CANARY_TEXT)
    (tmp_path / "secret.txt").write_text(SECRET_TEXT)
    return work


def secret_path(workdir: Path) -> str:
    return str(workdir.parent / "secret.txt")


def assert_canary_intact(workdir: Path, output: str = "") -> None:
    canary = workdir / "canary.txt"
    assert canary.is_file()
    assert not canary.is_symlink()
    assert canary.read_text() == CANARY_TEXT
    assert not (workdir / "pwned.txt").exists()
    assert sorted(p.name for p in workdir.parent.iterdir()) == ["secret.txt", "work"]
    assert (workdir.parent / "secret.txt").read_text() == SECRET_TEXT
    assert SECRET_TEXT not in output


# --------------------------------------------------------------------------------------------
# the corpus


def test_corpus_is_large_and_well_formed() -> None:
    ids = [case.id for case in CASES]
    assert len(ids) == len(set(ids))
    assert len(CASES) >= 70
    for mode in PermissionMode:
        expectations = {case.expect for case in CASES if case.mode is mode}
        assert expectations == {"refused", "runs"}
    assert {case.rule for case in CASES if case.rule is not None} <= RULES


def try_plan(case: Case, secret: str) -> ShellPlan | CommandRefused:
    try:
        return plan(case.with_secret(secret), case.mode)
    except CommandRefused as refused:
        return refused


@pytest.mark.parametrize("case", CASES, ids=[case.id for case in CASES])
def test_corpus_case(case: Case, workdir: Path) -> None:
    outcome = try_plan(case, secret_path(workdir))
    if isinstance(outcome, CommandRefused):
        assert_canary_intact(workdir)
        assert case.expect == "refused", f"a legitimate command was refused: {outcome}"
        assert outcome.mode is case.mode
        assert outcome.rule in RULES
        if case.rule is not None:
            assert outcome.rule == case.rule, str(outcome)
        return
    # A case whose effect would reach the machine is never run, whatever the planner says.
    assert case.runnable, f"a command that acts on the machine was planned: {outcome}"
    # Never trust the parser: run what it allowed and look at the canary.
    finished = subprocess.run(
        outcome.argv,
        cwd=workdir,
        shell=False,
        timeout=10,
        env=RUN_ENV,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        check=False,
    )
    assert_canary_intact(workdir, (finished.stdout + finished.stderr).decode(errors="replace"))
    assert case.expect == "runs", f"a hostile command was planned: {outcome}"


# named by rules such as "`find -delete` acts like `rm`" or "`telinit 0` has the effect of
# `poweroff`": the listed program that the command counts as
_IMPLIED = {"rm", "tee", "mv", "mkfs", "poweroff", "reboot", "kill", "chown"}


@pytest.mark.parametrize("case", [c for c in CASES if c.expect == "refused"], ids=lambda c: c.id)
def test_refusals_only_mention_the_command(case: Case) -> None:
    refused = refusal(case.with_secret("/nonexistent/secret.txt"), case.mode)
    named = set(re.findall(r"`([^`]*)`", refused.detail))
    for name in (WEAK_ALLOWLIST | SUPERUSER_DENYLIST) - _IMPLIED:
        if name not in case.command:
            assert name not in named, refused.detail
    assert len(refused.command) <= 80
    assert refused.detail


# --------------------------------------------------------------------------------------------
# error contents


def test_superuser_refusal_names_the_offending_simple_command() -> None:
    refused = refusal("ls -la; rm -rf canary.txt && echo done", SUPERUSER)
    assert refused.rule == "denylisted"
    assert refused.mode is SUPERUSER
    assert refused.command == "rm -rf canary.txt"
    assert refused.detail == "`rm` is on the superuser denylist"
    assert "denylisted" in str(refused)
    assert "superuser" in str(refused)


def test_weak_refusal_names_the_program() -> None:
    refused = refusal("rm -rf /", WEAK)
    assert (refused.rule, refused.mode, refused.command) == ("not-in-allowlist", WEAK, "rm -rf /")
    assert refused.detail == "`rm` is not on the weak-mode allowlist"


def test_weak_refusal_names_the_shell_syntax() -> None:
    refused = refusal("ls; rm canary.txt", WEAK)
    assert refused.rule == "shell-syntax"
    assert refused.command == "ls; rm canary.txt"
    assert "`;`" in refused.detail


def test_wrapped_program_is_named() -> None:
    refused = refusal("timeout -s KILL 5 env rm canary.txt", SUPERUSER)
    assert refused.rule == "denylisted"
    assert refused.command == "timeout -s KILL 5 env rm canary.txt"
    assert "`rm`" in refused.detail


def test_nested_code_refusal_names_the_inner_command() -> None:
    refused = refusal("bash -c \"echo hi; sh -c 'rm canary.txt'\"", SUPERUSER)
    assert refused.rule == "denylisted"
    assert refused.command == "rm canary.txt"


def test_dynamic_command_name() -> None:
    refused = refusal("x=rm; $x canary.txt", SUPERUSER)
    assert refused.rule == "dynamic-command"
    assert refused.command == "$x canary.txt"
    assert "`$x`" in refused.detail


@pytest.mark.parametrize("mode", list(PermissionMode))
@pytest.mark.parametrize("command", ["", "   ", "\t\n"])
def test_empty(mode: PermissionMode, command: str) -> None:
    refused = refusal(command, mode)
    assert refused.rule == "empty"
    assert refused.mode is mode


def test_too_long_is_truncated_in_the_error() -> None:
    refused = refusal("echo " + "a" * MAX_COMMAND_LENGTH, SUPERUSER)
    assert refused.rule == "too-long"
    assert len(refused.command) <= 80


def test_command_refused_pickles() -> None:
    refused = refusal("rm canary.txt", SUPERUSER)
    copy = pickle.loads(pickle.dumps(refused))
    assert (copy.command, copy.rule, copy.mode, copy.detail) == (
        refused.command,
        refused.rule,
        refused.mode,
        refused.detail,
    )


def test_rules_are_known() -> None:
    assert {"empty", "not-in-allowlist", "denylisted", "shell-syntax", "dynamic-command",
            "path-program", "unparseable"} <= RULES  # fmt: skip


# --------------------------------------------------------------------------------------------
# plan shapes


def test_weak_plan_is_the_split_argv() -> None:
    assert plan("uname -a", WEAK) == ShellPlan(
        argv=("uname", "-a"), use_shell=False, programs=("uname",)
    )


def test_weak_quoted_metacharacters_are_one_argument() -> None:
    shell_plan = plan("echo \"a; b\" 'c | d'", WEAK)
    assert shell_plan.argv == ("echo", "a; b", "c | d")
    assert not shell_plan.use_shell


def test_weak_wrapper_records_both_programs() -> None:
    shell_plan = plan("timeout -s KILL 5 nice -n 3 ls -la", WEAK)
    assert shell_plan.argv == ("timeout", "-s", "KILL", "5", "nice", "-n", "3", "ls", "-la")
    assert shell_plan.programs == ("timeout", "nice", "ls")


def test_weak_bash_c_checks_the_inner_command() -> None:
    assert plan("bash -c 'ls -la'", WEAK).programs == ("bash", "ls")


def test_superuser_plan_runs_bash() -> None:
    assert plan("ls | wc -l", SUPERUSER) == ShellPlan(
        argv=("/bin/bash", "-c", "ls | wc -l"), use_shell=True, programs=("ls", "wc")
    )


def test_superuser_programs_include_nested_commands() -> None:
    programs = plan('echo "$(uname -s)" | tr a-z A-Z; (cd / && ls)', SUPERUSER).programs
    assert set(programs) == {"uname", "echo", "tr", "cd", "ls"}


def test_superuser_unwrapped_programs_are_recorded() -> None:
    programs = plan("sudo -u nobody env LANG=C timeout 5 ls", SUPERUSER).programs
    assert programs == ("sudo", "env", "timeout", "ls")


def test_weak_path_program_must_be_what_path_finds() -> None:
    resolved = shutil.which("uname")
    if resolved is None:
        pytest.skip("uname is not on PATH")
    assert plan(f"{resolved} -a", WEAK).argv == (resolved, "-a")
    assert refusal("/nonexistent/uname -a", WEAK).rule == "path-program"


def test_denylist_entries_given_as_paths_are_basenames() -> None:
    with pytest.raises(CommandRefused) as info:
        plan_shell_command("rm x", SUPERUSER, allowlist=(), denylist=["/usr/bin/rm"])
    assert info.value.rule == "denylisted"


def test_empty_lists() -> None:
    with pytest.raises(CommandRefused) as info:
        plan_shell_command("ls", WEAK, allowlist=(), denylist=())
    assert info.value.rule == "not-in-allowlist"
    shell_plan = plan_shell_command("ls", SUPERUSER, allowlist=(), denylist=())
    assert shell_plan.use_shell


class _ForeignMode(StrEnum):
    WEAK = "weak"
    SUPERUSER = "superuser"


def test_mode_may_be_any_str_enum_with_the_same_values() -> None:
    assert plan("ls", _ForeignMode.WEAK).argv == ("ls",)
    assert plan("ls", "superuser").use_shell
    refused = refusal("rm x", _ForeignMode.SUPERUSER)
    assert refused.mode is SUPERUSER
    with pytest.raises(ValueError, match="root"):
        plan("ls", "root")
