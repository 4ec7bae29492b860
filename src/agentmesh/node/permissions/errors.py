"""How a check says no: the public `CommandRefused`, its rule ids, and the internal errors.

Deep in the checks a `Refusal` carries the command text, a rule id and one sentence;
`plan_shell_command` adds the mode and re-raises it as `CommandRefused`.  A `ParseError` becomes
a refusal with rule ``unparseable``.
"""

from __future__ import annotations

from typing import Final

from agentmesh.config import PermissionMode

RULES: Final = frozenset(
    {
        "empty",
        "too-long",
        "too-complex",
        "unparseable",
        "shell-syntax",
        "not-in-allowlist",
        "path-program",
        "denylisted",
        "dynamic-command",
        "env-assignment",
        "exec-option",
        "unsupported",
        "writes-files",
        "local-access",
        "changes-system",
    }
)
"""Every rule id that `CommandRefused.rule` can carry."""


class CommandRefused(Exception):
    """The command may not run.  Carries only the command text and the rule that refused it."""

    command: str
    rule: str
    mode: PermissionMode
    detail: str

    def __init__(self, command: str, rule: str, mode: PermissionMode, detail: str) -> None:
        super().__init__(command, rule, mode, detail)
        self.command = command
        self.rule = rule
        self.mode = mode
        self.detail = detail

    def __str__(self) -> str:
        return f"refused in {self.mode} mode ({self.rule}): {self.detail}"


class Refusal(Exception):
    """A check refused the command; `plan_shell_command` turns this into `CommandRefused`."""

    def __init__(self, command: str, rule: str, detail: str) -> None:
        super().__init__(command, rule, detail)
        self.command = command
        self.rule = rule
        self.detail = detail


class ParseError(Exception):
    """The source is not valid shell syntax (refused with rule ``unparseable``)."""


def show(text: str, limit: int = 80) -> str:
    """`text` as a refusal quotes it: control characters escaped, cut to `limit` characters."""
    shown = "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)
    return shown if len(shown) <= limit else shown[: limit - 1] + "…"
