"""Commands a user approved: what lets a command that weak mode refused run anyway.

A user answers a refused command (`agentmesh approve`) for one task, or for all their
tasks (`--always`), either exactly or by prefix (`--prefix "git status"`: every command
that begins with those words). Only a plain command line can be approved: one without
shell syntax, run as the words it splits into, and one that superuser mode would allow, so
that the superuser denylist (and the intent behind it) always wins over an approval.
"""

from __future__ import annotations

import shlex
from collections.abc import Sequence
from dataclasses import dataclass

from agentmesh.node.permissions.policy import shell_syntax


@dataclass(frozen=True)
class Approval:
    command: str
    prefix: bool = False


def words(command: str) -> list[str] | None:
    """The words of a plain command line; None for one with shell syntax, or unsplittable."""
    if shell_syntax(command) is not None:
        return None
    try:
        split = shlex.split(command, posix=True)
    except ValueError:
        return None
    return split or None


def permits(approval: Approval, command: str) -> bool:
    """Whether this approval covers the command, word for word."""
    got, want = words(command), words(approval.command)
    if got is None or want is None:
        return False
    return got[: len(want)] == want if approval.prefix else got == want


def permitted(command: str, approvals: Sequence[Approval]) -> list[str] | None:
    """The command's words if one of the approvals covers it, else None."""
    if any(permits(approval, command) for approval in approvals):
        return words(command)
    return None
