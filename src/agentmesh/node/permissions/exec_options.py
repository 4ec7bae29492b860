"""Options that make well-known tools run another program (`git -c`, `tar --to-command`,
`rsync -e`, `ssh -o`, ...), and git subcommands that store or run commands."""

from __future__ import annotations

from typing import Final

from agentmesh.node.permissions.commands import Call
from agentmesh.node.permissions.errors import Refusal, show

# -- options that make a program run another program: (long options, short letters, exact words)
EXEC_OPTIONS: Final[dict[str, tuple[tuple[str, ...], str, tuple[str, ...]]]] = {
    "git": (
        ("config-env", "exec-path", "upload-pack", "receive-pack", "exec", "extcmd", "template"),
        "",
        ("-c",),
    ),
    "tar": (
        (
            "to-command", "checkpoint-action", "use-compress-program", "info-script",
            "new-volume-script", "rsh-command", "rmt-command",
        ),
        "IF",
        (),
    ),
    "rsync": (("rsh", "rsync-path"), "e", ()),
    "ssh": ((), "oF", ()),
    "scp": ((), "oFS", ()),
    "sftp": ((), "oFS", ()),
    "sort": (("compress-program",), "", ()),
    "man": (("pager", "html"), "PH", ()),
    "zip": (("unzip-command",), "", ("-TT",)),
}  # fmt: skip


def check_exec_options(call: Call, key: str) -> None:
    longs, letters, exact = EXEC_OPTIONS[key]
    for position, word in enumerate(call.args):
        value = call.require_static(word)
        if value == "--":
            break
        name = value[2:].partition("=")[0] if value.startswith("--") else ""
        cluster = value[1:] if value[:1] == "-" and not name else ""
        if key == "tar" and position == 0 and value.isalpha():
            cluster = value  # old-style `tar xIf PROG ...`
        if (
            value in exact
            or (name and any(opt.startswith(name) for opt in longs))
            or any(ch in letters for ch in cluster)
        ):
            raise _exec_option(call, value)
    if key == "git":
        _check_git(call)


def _exec_option(call: Call, option: str) -> Refusal:
    return Refusal(
        call.text,
        "exec-option",
        f"`{show(option, 40)}` lets `{call.name}` run another program, which cannot be checked",
    )


_GIT_GLOBAL_WITH_ARG: Final = frozenset({"-C", "--git-dir", "--work-tree", "--namespace"})
_GIT_CONFIG_READS: Final = frozenset(
    {"--get", "--get-all", "--get-regexp", "--get-urlmatch", "--list", "-l", "get", "list"}
)
_GIT_SUBCOMMAND_RUNS: Final = {  # subcommand -> arguments that make it run a command
    "rebase": ("-x", "--exec"),
    "bisect": ("run",),
    "submodule": ("foreach",),
    "difftool": ("-x", "--extcmd", "-t", "--tool"),
    "mergetool": ("-t", "--tool"),
}
_GIT_REFUSED: Final = frozenset({"filter-branch", "send-email", "daemon", "instaweb"})


def _check_git(call: Call) -> None:
    """Git subcommands that store or run commands (config writes, `rebase -x`, hooks...)."""
    values = [w.value for w in call.args]
    i = 0
    while i < len(values) and values[i].startswith("-"):
        i += 2 if values[i] in _GIT_GLOBAL_WITH_ARG else 1
    if i >= len(values):
        return
    subcommand, rest = values[i], values[i + 1 :]
    if subcommand in _GIT_REFUSED:
        raise _exec_option(call, subcommand)
    if subcommand == "config" and not _GIT_CONFIG_READS.intersection(rest):
        raise Refusal(
            call.text,
            "exec-option",
            "`git config` can store aliases, pagers and hooks that run other programs",
        )
    for value in rest:
        for option in _GIT_SUBCOMMAND_RUNS.get(subcommand, ()):
            if value == option or value.startswith(option + "="):
                raise _exec_option(call, f"{subcommand} {value}")
