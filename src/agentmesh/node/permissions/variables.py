"""Variables a command may not set, because they change which program runs."""

from __future__ import annotations

import re
from typing import Final

from agentmesh.config import PermissionMode
from agentmesh.node.permissions.commands import Call, Ctx
from agentmesh.node.permissions.errors import Refusal, show

IDENT: Final = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
ASSIGNMENT: Final = re.compile(r"([A-Za-z_][A-Za-z0-9_]*)\+?=")

_SAFE_WEAK_VARS: Final = frozenset(
    {"LANG", "LANGUAGE", "TZ", "TERM", "COLUMNS", "LINES", "NO_COLOR"}
)
_DANGEROUS_VARS: Final = frozenset(
    {
        "PATH", "ENV", "BASH_ENV", "SHELLOPTS", "BASHOPTS", "PS0", "PS1", "PS2", "PS3",
        "PS4", "PROMPT_COMMAND", "BASH_CMDS", "BASH_ALIASES", "BASH_LOADABLES_PATH",
        "EXECIGNORE", "SHELL", "FPATH", "ZDOTDIR", "PAGER", "MANPAGER", "SYSTEMD_PAGER",
        "EDITOR", "VISUAL", "SUDO_EDITOR", "BROWSER", "LESSOPEN", "LESSCLOSE", "SUDO_ASKPASS",
        "SSH_ASKPASS", "GCONV_PATH", "GLIBC_TUNABLES", "HOSTALIASES", "NODE_OPTIONS",
        "NODE_PATH", "RUBYOPT", "RUBYLIB", "PERL5LIB", "PERL5OPT", "PERLLIB",
        "JAVA_TOOL_OPTIONS", "_JAVA_OPTIONS", "TAR_OPTIONS", "RSYNC_RSH",
        "RSYNC_CONNECT_PROG", "ZIPOPT", "MAKEFLAGS", "TEXTDOMAIN", "TEXTDOMAINDIR",
    }
)  # fmt: skip
_DANGEROUS_PREFIXES: Final = ("LD_", "DYLD_", "BASH_FUNC_", "GIT_", "PYTHON")


def unsafe_to_set(name: str) -> bool:
    """Whether setting `name` can change which program runs in superuser mode.

    A name that is not a plain identifier counts too: the checks cannot tell what it sets.
    """
    return (
        not IDENT.fullmatch(name) or name in _DANGEROUS_VARS or name.startswith(_DANGEROUS_PREFIXES)
    )


def check_variable(call: Call, ctx: Ctx, name: str) -> None:
    """Refuse setting a variable that can change which program runs."""
    if ctx.mode is PermissionMode.WEAK:
        if name in _SAFE_WEAK_VARS or (name.startswith("LC_") and IDENT.fullmatch(name)):
            return
        raise Refusal(
            call.text, "env-assignment", f"weak mode does not allow setting `{show(name)}`"
        )
    if unsafe_to_set(name):
        raise Refusal(
            call.text,
            "env-assignment",
            f"setting `{show(name)}` can change which program runs",
        )
