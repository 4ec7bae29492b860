"""The weak-mode and superuser-mode checks, and `plan_shell_command` that runs them."""

from __future__ import annotations

import posixpath
import shlex
import shutil
from collections.abc import Collection
from dataclasses import dataclass
from typing import Final

from agentmesh.config import PermissionMode
from agentmesh.node.permissions.commands import Call, Code, Ctx, Implied, Word, fold
from agentmesh.node.permissions.errors import CommandRefused, ParseError, Refusal, show
from agentmesh.node.permissions.exec_options import EXEC_OPTIONS, check_exec_options
from agentmesh.node.permissions.intent import ARGUMENT_ALIASES, check_intent
from agentmesh.node.permissions.parser import Parser
from agentmesh.node.permissions.shell_builtins import BUILTINS
from agentmesh.node.permissions.side_effects import WEAK_EFFECTS, check_weak_effects
from agentmesh.node.permissions.variables import ASSIGNMENT, check_variable
from agentmesh.node.permissions.wrappers import APPEND_SAFE_WRAPPERS, wrapper_for

MAX_COMMAND_LENGTH: Final = 16_384
"""Longer commands are refused with rule ``too-long``."""

_MAX_DEPTH: Final = 16  # wrapper / re-parse nesting
_BASH: Final = "/bin/bash"
# Handlers that still know what runs when xargs appends arguments: the wrappers listed in
# APPEND_SAFE_WRAPPERS and every builtin.
_APPEND_SAFE: Final = APPEND_SAFE_WRAPPERS | frozenset(BUILTINS.values())


@dataclass(frozen=True, slots=True)
class ShellPlan:
    """How to run an allowed command: `argv` (bash's, if `use_shell`) and the programs found."""

    argv: tuple[str, ...]
    use_shell: bool
    programs: tuple[str, ...]


def plan_shell_command(
    command: str,
    mode: PermissionMode | str,
    *,
    allowlist: Collection[str],
    denylist: Collection[str],
) -> ShellPlan:
    """Raise CommandRefused or return how to run it.

    `mode` may also be any `str` (or other `StrEnum`, such as the settings' permission mode)
    whose value is ``"weak"`` or ``"superuser"``; anything else raises ValueError.
    """
    mode = PermissionMode(mode)
    ctx = Ctx(
        mode=mode,
        allowlist=frozenset(allowlist),
        denylist=frozenset(fold(posixpath.basename(d.rstrip("/")) or d) for d in denylist),
    )
    try:
        _precheck(command, mode)
        if mode is PermissionMode.WEAK:
            argv = _check_weak(command, ctx, 0)
            return ShellPlan(argv=tuple(argv), use_shell=False, programs=tuple(ctx.programs))
        _check_code(command, ctx, 0)
        return ShellPlan(argv=(_BASH, "-c", command), use_shell=True, programs=tuple(ctx.programs))
    except Refusal as exc:
        raise CommandRefused(exc.command, exc.rule, mode, exc.detail) from None
    except RecursionError:
        raise CommandRefused(
            show(command.strip()),
            "too-complex",
            mode,
            "the command nests too deeply to be checked",
        ) from None


def _precheck(command: str, mode: PermissionMode) -> None:
    if not isinstance(command, str):
        raise TypeError("command must be a str")
    if not command.strip():
        raise Refusal("", "empty", "the command is empty")
    if len(command) > MAX_COMMAND_LENGTH:
        raise Refusal(
            show(command.strip()),
            "too-long",
            f"the command is longer than {MAX_COMMAND_LENGTH} characters",
        )
    for char in command:
        if char == "\n" and mode is PermissionMode.WEAK:
            raise Refusal(
                show(command.strip()), "shell-syntax", "a newline separates commands in a shell"
            )
        if (ord(char) < 32 and char not in "\t\n") or ord(char) == 127:
            raise Refusal(
                show(command.strip()),
                "unparseable",
                f"the command contains the control character {char!r}",
            )


def shell_syntax(command: str) -> str | None:
    """The shell syntax in a command line (what weak mode refuses), or None: a plain one
    runs as the words it splits into."""
    return _weak_syntax(command)


def _weak_syntax(command: str) -> str | None:
    """Describe the first unquoted piece of shell syntax in `command`, or None."""
    quote = ""
    i = 0
    n = len(command)
    while i < n:
        c = command[i]
        if quote == "'":
            quote = "" if c == "'" else quote
            i += 1
            continue
        if quote == '"':
            if c == '"':
                quote = ""
            elif c in "$`":
                return f"the expansion `{c}` inside double quotes"
            elif c == "\\":
                if command[i + 1 : i + 2] in ("$", "`"):
                    return f"the expansion `{command[i + 1]}` inside double quotes"
                i += 1
            i += 1
            continue
        if c == "\\":
            i += 2
            continue
        if c in "'\"":
            quote = c
        elif c in ";&|":
            return f"the operator `{c}`"
        elif c in "<>":
            return f"the redirection `{c}`"
        elif c in "()":
            return f"the parenthesis `{c}`"
        elif c in "$`":
            return f"the expansion `{c}`"
        elif c in "*?[":
            return f"the glob character `{c}`"
        elif c in "{}":
            if command.startswith("{}", i):  # never expanded by bash; `find -exec ... {}`
                i += 2
                continue
            return f"the brace `{c}`"
        elif c == "#":
            return "the comment sign `#`"
        elif c == "~":
            return "the tilde `~`"
        i += 1
    return None


def _check_weak(command: str, ctx: Ctx, depth: int) -> list[str]:
    if depth > _MAX_DEPTH:
        raise Refusal(show(command.strip()), "too-complex", "the command nests too deeply")
    problem = _weak_syntax(command)
    if problem is not None:
        raise Refusal(
            show(command.strip()),
            "shell-syntax",
            f"{problem} is shell syntax, which weak mode does not accept",
        )
    try:
        argv = shlex.split(command, posix=True)
    except ValueError as exc:
        raise Refusal(
            show(command.strip()), "unparseable", f"the command could not be split ({exc})"
        ) from None
    if not argv or not argv[0]:
        raise Refusal(show(command.strip()), "empty", "the command names no program")
    if ASSIGNMENT.match(argv[0]):
        raise Refusal(
            show(command.strip()),
            "shell-syntax",
            "a leading variable assignment is shell syntax, which weak mode does not accept",
        )
    words = tuple(Word(raw=a, value=a, static=True) for a in argv)
    _check_argv(Call(words=words, text=show(command.strip()), depth=depth), ctx)
    return argv


def _check_code(code: str, ctx: Ctx, depth: int, *, posix: bool = False) -> None:
    """Superuser mode: parse `code` as bash (or POSIX sh) and check every simple command."""
    if depth > _MAX_DEPTH:
        raise Refusal(show(code.strip()), "too-complex", "the command nests too deeply")
    try:
        commands = Parser(code, posix=posix).parse_program()
    except ParseError as exc:
        raise Refusal(
            show(code.strip()), "unparseable", f"the command could not be parsed ({exc})"
        ) from None
    for simple in commands:
        call = Call(words=tuple(simple.words), text=show(simple.text), depth=depth, posix=posix)
        for assignment in simple.assignments:
            match = ASSIGNMENT.match(assignment.raw)
            if match is not None:
                check_variable(call, ctx, match.group(1))
        _check_argv(call, ctx)


def _check_argv(call: Call, ctx: Ctx) -> None:
    ctx.budget -= 1
    if ctx.budget < 0:
        raise Refusal(call.text, "too-complex", "the command needs too much work to check")
    if call.depth > _MAX_DEPTH:
        raise Refusal(call.text, "too-complex", "the command nests wrappers too deeply")
    if not call.words:
        if call.appended:
            raise Refusal(
                call.text, "dynamic-command", "the program to run is only known at run time"
            )
        return
    head = call.words[0]
    if not call.is_static(head):
        raise Refusal(
            call.text,
            "dynamic-command",
            f"the program name `{show(head.raw, 40)}` is only known at run time",
        )
    _check_program(call, ctx, head.value)
    if not call.speculative:
        ctx.programs.append(head.value)
    key = call.base
    handler = BUILTINS.get(key) or wrapper_for(key)
    weak = ctx.mode is PermissionMode.WEAK
    reads_arguments = key in EXEC_OPTIONS or (
        key in WEAK_EFFECTS if weak else key in ARGUMENT_ALIASES
    )
    if call.appended and ((handler is not None and handler not in _APPEND_SAFE) or reads_arguments):
        raise Refusal(
            call.text,
            "dynamic-command",
            f"`{call.name}` gets arguments at run time, so what it does cannot be determined",
        )
    if key in EXEC_OPTIONS:
        check_exec_options(call, key)
    if weak:
        check_weak_effects(call)
    else:
        check_intent(call, ctx)
    if handler is None:
        return
    for inner in handler(call, ctx):
        if isinstance(inner, Implied):
            _check_implied(call, ctx, inner)
            continue
        saved = ctx.programs
        if inner.speculative:
            ctx.programs = []
        try:
            if isinstance(inner, Code):
                if ctx.mode is PermissionMode.WEAK:
                    _check_weak(inner.text, ctx, call.depth + 1)
                    continue
                dialects = inner.dialects if inner.dialects is not None else (call.posix,)
                for k, posix in enumerate(dialects):
                    if k == 1:  # later readings of the same text only check, never record
                        ctx.programs = []
                    if inner.speculative and (inner.text, posix) in ctx.checked_code:
                        continue
                    _check_code(inner.text, ctx, call.depth + 1, posix=posix)
                    if inner.speculative:
                        ctx.checked_code.add((inner.text, posix))
            else:
                nested = Call(
                    words=inner.words,
                    text=call.text,
                    depth=call.depth + 1,
                    appended=inner.appended,
                    placeholder=inner.placeholder or call.placeholder,
                    speculative=call.speculative or inner.speculative,
                    posix=call.posix,
                )
                _check_argv(nested, ctx)
        finally:
            ctx.programs = saved


def _check_program(call: Call, ctx: Ctx, name: str) -> None:
    """Check a program name against the mode's list."""
    if not name:
        raise Refusal(call.text, "empty", "the program name is empty")
    base = posixpath.basename(name.rstrip("/")) if "/" in name else name
    shown = show(name, 60)
    if not base:
        raise Refusal(call.text, "path-program", f"`{shown}` is not a program")
    if ctx.mode is PermissionMode.WEAK:
        if "/" in name and (base not in ctx.allowlist or shutil.which(base) != name):
            raise Refusal(
                call.text,
                "path-program",
                f"`{shown}` names a program by path; weak mode only runs allowlisted "
                "programs as found on PATH",
            )
        if base not in ctx.allowlist:
            raise Refusal(
                call.text, "not-in-allowlist", f"`{shown}` is not on the weak-mode allowlist"
            )
        return
    parts = posixpath.normpath(name).split("/")
    if "/" in name and ("proc" in parts or "dev" in parts):
        raise Refusal(
            call.text,
            "path-program",
            f"`{shown}` runs a program through /proc or /dev, which cannot be checked",
        )
    if name.startswith(("=", "~")):
        raise Refusal(
            call.text, "dynamic-command", f"the program name `{shown}` is expanded by some shells"
        )
    if fold(base) in ctx.denylist:
        raise Refusal(call.text, "denylisted", f"`{shown}` is on the superuser denylist")


def _check_implied(call: Call, ctx: Ctx, inner: Implied) -> None:
    if ctx.mode is PermissionMode.WEAK:
        if inner.program not in ctx.allowlist:
            raise Refusal(
                call.text,
                "not-in-allowlist",
                f"`{inner.via}` acts like `{inner.program}`, which is not on the weak-mode "
                "allowlist",
            )
    elif fold(inner.program) in ctx.denylist:
        raise Refusal(
            call.text,
            "denylisted",
            f"`{inner.via}` acts like `{inner.program}`, which is on the superuser denylist",
        )
