"""Edges of the shell permission checks that the bypass corpus does not pin down.

The nesting limit at its exact depth, quoting that must stay data in weak mode, and how a
refusal quotes what it refused (cut to a readable length).
"""

from __future__ import annotations

import shutil

import pytest

from agentmesh.node.permissions import (
    MAX_COMMAND_LENGTH,
    CommandRefused,
    PermissionMode,
    ShellPlan,
    plan_shell_command,
)
from tests.node.shell_corpus import SUPERUSER_DENYLIST, WEAK_ALLOWLIST

MODES = [PermissionMode.WEAK, PermissionMode.SUPERUSER]
# Wrappers may nest this deep; one more is refused as too complex to check.
MAX_WRAPPERS = 16


def plan(command: str, mode: PermissionMode) -> ShellPlan:
    return plan_shell_command(command, mode, allowlist=WEAK_ALLOWLIST, denylist=SUPERUSER_DENYLIST)


def refusal(command: str, mode: PermissionMode) -> CommandRefused:
    with pytest.raises(CommandRefused) as refused:
        plan(command, mode)
    return refused.value


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("wrapper", ["nice", "env", "timeout 5"])
def test_wrappers_nest_up_to_the_limit_and_no_further(mode: PermissionMode, wrapper: str) -> None:
    deepest = " ".join([wrapper] * MAX_WRAPPERS + ["ls"])
    too_deep = " ".join([wrapper] * (MAX_WRAPPERS + 1) + ["ls"])

    assert "ls" in plan(deepest, mode).programs
    refused = refusal(too_deep, mode)
    assert refused.rule == "too-complex"
    assert refused.detail == "the command nests wrappers too deeply"


@pytest.mark.parametrize("mode", MODES)
def test_code_nested_in_wrappers_counts_toward_the_limit(mode: PermissionMode) -> None:
    deepest = " ".join(["nice"] * (MAX_WRAPPERS - 1) + ["bash -c ls"])
    too_deep = " ".join(["nice"] * MAX_WRAPPERS + ["bash -c ls"])

    assert "ls" in plan(deepest, mode).programs
    refused = refusal(too_deep, mode)
    assert refused.rule == "too-complex"
    assert refused.detail == "the command nests too deeply"


def test_an_escaped_quote_inside_double_quotes_is_data_in_weak_mode() -> None:
    assert plan('echo "a\\"; b"', PermissionMode.WEAK).argv == ("echo", 'a"; b')


def test_syntax_after_an_empty_brace_pair_is_still_refused_in_weak_mode() -> None:
    refused = refusal("echo {} ; touch pwned.txt", PermissionMode.WEAK)

    assert refused.rule == "shell-syntax"
    assert "the operator `;`" in refused.detail


def test_a_dynamic_program_name_is_quoted_cut_to_40_characters() -> None:
    name = "$(echo " + "x" * 60 + ")"

    refused = refusal(name, PermissionMode.SUPERUSER)

    shown = name[:39] + "…"
    assert refused.detail == f"the program name `{shown}` is only known at run time"


def test_a_program_path_is_quoted_cut_to_60_characters() -> None:
    path = "/proc/self/" + "y" * 80

    refused = refusal(path, PermissionMode.SUPERUSER)

    assert refused.detail == (
        f"`{path[:59]}…` runs a program through /proc or /dev, which cannot be checked"
    )


@pytest.mark.parametrize(
    ("command", "detail"),
    [
        ('echo "abc"; ls', "the operator `;`"),
        ('echo "x" ; ls', "the operator `;`"),
        ("echo 'a';ls", "the operator `;`"),
        ("echo 'abc' ; ls", "the operator `;`"),
        ('echo "\\\\"; ls', "the operator `;`"),
        ("echo \\a; ls", "the operator `;`"),
        ("echo {};ls", "the operator `;`"),
        (">pwned.txt echo hi", "the redirection `>`"),
        ('echo "\\$HOME"', "the expansion `$` inside double quotes"),
        ('echo "x\\$HOME"', "the expansion `$` inside double quotes"),
        ('echo "\\`id\\`"', "the expansion ``` inside double quotes"),
        ('echo "x\\`id\\`"', "the expansion ``` inside double quotes"),
    ],
)
def test_weak_mode_finds_the_shell_syntax_around_quotes_and_escapes(
    command: str, detail: str
) -> None:
    refused = refusal(command, PermissionMode.WEAK)

    assert refused.rule == "shell-syntax"
    assert refused.detail == f"{detail} is shell syntax, which weak mode does not accept"


@pytest.mark.parametrize(
    ("command", "argv"),
    [
        ('echo "a b; c"', ("echo", "a b; c")),
        ('echo "A\\"; B"', ("echo", 'A"; B')),
        ("echo 'x;y' \"z|w\"", ("echo", "x;y", "z|w")),
    ],
)
def test_quoted_syntax_is_data_in_weak_mode(command: str, argv: tuple[str, ...]) -> None:
    assert plan(command, PermissionMode.WEAK).argv == argv


def test_an_empty_program_name_is_refused() -> None:
    refused = refusal('"" ls', PermissionMode.WEAK)

    assert (refused.rule, refused.detail) == ("empty", "the command names no program")


@pytest.mark.parametrize("mode", MODES)
def test_the_length_limit_is_exact(mode: PermissionMode) -> None:
    assert MAX_COMMAND_LENGTH == 16_384
    longest = "ls " + "a" * (MAX_COMMAND_LENGTH - 3)

    assert plan(longest, mode).programs == ("ls",)
    refused = refusal(longest + "a", mode)
    assert refused.rule == "too-long"
    assert refused.detail == f"the command is longer than {MAX_COMMAND_LENGTH} characters"


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("char", ["\x1f", "\x7f", "\x00", "\x1b"])
def test_control_characters_are_refused(mode: PermissionMode, char: str) -> None:
    refused = refusal(f"ls {char}", mode)

    assert refused.rule == "unparseable"
    assert refused.detail == f"the command contains the control character {char!r}"


@pytest.mark.parametrize("mode", MODES)
def test_tab_and_printable_characters_are_not_control_characters(mode: PermissionMode) -> None:
    assert plan("ls\t-l é ✓ \x80", mode).programs == ("ls",)


def test_code_read_in_two_shell_dialects_records_its_programs_once() -> None:
    assert plan("sh -c 'ls'", PermissionMode.SUPERUSER).programs == ("sh", "ls")


def test_every_action_of_find_is_checked_after_an_implied_program() -> None:
    # -fprint acts like tee (allowed here); the -exec after it must still be checked.
    command = "find . -fprint out.txt -exec rm {} \\;"

    with pytest.raises(CommandRefused) as refused:
        plan_shell_command(command, PermissionMode.SUPERUSER, allowlist=(), denylist=("rm",))

    assert refused.value.rule == "denylisted"


def test_a_plan_is_an_immutable_value() -> None:
    shell_plan = plan("ls", PermissionMode.WEAK)

    assert hash(shell_plan) == hash(plan("ls", PermissionMode.WEAK))
    with pytest.raises(AttributeError):
        shell_plan.argv = ("rm",)  # type: ignore[misc]


def test_a_command_needing_more_than_20000_checks_is_refused_at_the_first_check_past_it() -> None:
    # `sh -c` code is read as bash and as POSIX sh, so nested twice each inner `ls` costs
    # four checks: 1 (outer sh) + 2 * (1 (inner sh) + 2 * 4999) = 19999, plus one per `ls;`
    # in front.
    nested = "sh -c \"sh -c '" + ";".join(["ls"] * 4999) + "'\""

    assert plan("ls;" + nested, PermissionMode.SUPERUSER).programs[:2] == ("ls", "sh")  # 20000
    refused = refusal("ls;ls;" + nested, PermissionMode.SUPERUSER)  # 20001
    assert refused.rule == "too-complex"
    assert refused.detail == "the command needs too much work to check"


@pytest.mark.parametrize("mode", MODES)
def test_every_level_of_nested_code_counts_toward_the_limit(mode: PermissionMode) -> None:
    # Each `nice` and each `bash -c` is one level: ls ends 16 levels deep, or 17.
    deepest = " ".join(["nice"] * 14 + ['bash -c "bash -c ls"'])
    too_deep = " ".join(["nice"] * 15 + ['bash -c "bash -c ls"'])

    assert plan(deepest, mode).programs[-1] == "ls"
    refused = refusal(too_deep, mode)
    assert (refused.rule, refused.detail) == ("too-complex", "the command nests too deeply")


def test_an_unclosed_quote_is_refused_in_weak_mode() -> None:
    refused = refusal('echo "unclosed', PermissionMode.WEAK)

    assert refused.rule == "unparseable"
    assert refused.detail == "the command could not be split (No closing quotation)"


@pytest.mark.parametrize("path", ["/zzz/ls", "/a/ls", "./ls", "/usr/bin/../bin/ls"])
def test_weak_mode_runs_a_program_by_path_only_where_path_finds_it(path: str) -> None:
    found = shutil.which("ls")
    assert found is not None

    assert plan(found, PermissionMode.WEAK).argv == (found,)
    assert refusal(path, PermissionMode.WEAK).rule == "path-program"


@pytest.mark.parametrize("command", ["ls foo\\", 'echo "a\\'])
def test_a_trailing_backslash_is_refused_in_weak_mode(command: str) -> None:
    refused = refusal(command, PermissionMode.WEAK)

    assert refused.rule == "unparseable"
    assert refused.detail == "the command could not be split (No escaped character)"


def test_opaque_wrappers_in_a_row_are_checked_once_not_at_every_depth() -> None:
    # The first opaque wrapper checks every later word as a possible program; the ones it
    # finds there do not start over (which would nest past the limit and cost n² checks).
    shell_plan = plan_shell_command(
        "setsid " * 20 + "ls", PermissionMode.SUPERUSER, allowlist=(), denylist=("rm",)
    )

    assert shell_plan.programs == ("setsid",)


def test_the_same_code_behind_opaque_wrappers_is_checked_once_per_command() -> None:
    # Each setsid might hand its argument to a shell: that code is checked (as bash and as sh,
    # its `sh -c` code twice again), thousands of program checks. Checked again for each of
    # the eight setsids, the command would need more than its 20,000 and be refused.
    code = "sh -c '" + ";".join(["a"] * 1000) + "'"
    command = ";".join([f'setsid "{code}"'] * 8)
    assert len(command) <= MAX_COMMAND_LENGTH

    shell_plan = plan_shell_command(
        command, PermissionMode.SUPERUSER, allowlist=(), denylist=("rm",)
    )

    assert shell_plan.programs == ("setsid",) * 8


def test_programs_an_opaque_wrapper_might_run_are_not_claimed_as_run() -> None:
    # setsid's options are not modelled: every later word is checked as a possible program
    # (so `rm` would be refused), but none of them is recorded as the program that runs.
    shell_plan = plan_shell_command(
        "setsid nice ls", PermissionMode.SUPERUSER, allowlist=(), denylist=("rm",)
    )

    assert shell_plan.programs == ("setsid",)


def test_nesting_too_deep_for_the_parser_is_refused_not_crashed() -> None:
    nested = "echo " + "${x:-" * 2500 + "y" + "}" * 2500

    refused = refusal(nested, PermissionMode.SUPERUSER)

    assert refused.rule == "too-complex"
    assert refused.detail == "the command nests too deeply to be checked"


def test_opaque_wrappers_join_their_arguments_within_a_budget() -> None:
    # An opaque wrapper may hand a shell its trailing arguments joined (`watch`), so runs that
    # reach a quoted argument are re-parsed; past a budget of re-parsed text the command is
    # refused as too complex instead of taking seconds to check.
    joined = plan_shell_command(
        "setsid " * 20 + "'x y'", PermissionMode.SUPERUSER, allowlist=(), denylist=("rm",)
    )
    refused = refusal("setsid " * 200 + "'x y'", PermissionMode.SUPERUSER)

    assert joined.programs == ("setsid",)
    assert refused.rule == "too-complex"
    assert "too many arguments" in refused.detail
