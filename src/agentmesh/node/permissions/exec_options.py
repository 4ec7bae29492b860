"""Options that make well-known tools run another program (`git -c`, `tar --to-command`,
`rsync -e`, `ssh -o`, ...), and git subcommands that store or run commands."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from agentmesh.node.permissions.commands import Call
from agentmesh.node.permissions.errors import Refusal, show

# -- options that make a program run another program: (long options, short letters, exact words)
EXEC_OPTIONS: Final[dict[str, tuple[tuple[str, ...], str, tuple[str, ...]]]] = {
    "git": (  # and the global `-c NAME=VALUE`: see `_check_git`
        ("config-env", "exec-path", "upload-pack", "receive-pack", "exec", "extcmd", "template"),
        "",
        (),
    ),
    "tar": (
        (
            "to-command", "checkpoint-action", "use-compress-program", "info-script",
            "new-volume-script", "rsh-command", "rmt-command",
        ),
        "IF",
        (),
    ),
    "rsync": (("rsh", "rsync-path", "daemon"), "e", ()),
    "ssh": ((), "oFI", ()),  # -I loads a PKCS#11 library into ssh
    "scp": ((), "oFSD", ()),  # -D runs a local sftp server program
    "sftp": ((), "oFSD", ()),
    "sort": (("compress-program",), "", ()),
    "man": (("pager", "html"), "PH", ()),
    "zip": (("unzip-command",), "", ()),  # and `-TT`, `-TT=CMD`: see `_check_zip`
    "tcpdump": (("relinquish-privileges",), "z", ()),  # -z runs a command on each saved file
    "apt": (("option", "config-file"), "oc", ()),  # -o APT::Update::Pre-Invoke::=CMD
    "apt-get": (("option", "config-file"), "oc", ()),
    "wget": (("use-askpass", "execute", "config"), "e", ()),  # -e runs .wgetrc commands
    "wget2": (("use-askpass", "execute", "config"), "e", ()),
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
    elif key == "zip":
        _check_zip(call)


def _check_zip(call: Call) -> None:
    """zip's `-TT CMD` (also `-TT=CMD`, `-TTCMD`, `-qTT`) runs CMD to test the archive."""
    for word in call.args:
        if word.value == "--":
            break
        if word.value[:1] == "-" and word.value[1:2] != "-" and "TT" in word.value:
            raise _exec_option(call, word.value)


def _exec_option(call: Call, option: str) -> Refusal:
    return Refusal(
        call.text,
        "exec-option",
        f"`{show(option, 40)}` lets `{call.name}` run another program, which cannot be checked",
    )


_GIT_GLOBAL_WITH_ARG: Final = frozenset({"-C", "--git-dir", "--work-tree", "--namespace"})
_GIT_CONFIG_READ_SUBCOMMANDS: Final = frozenset({"get", "list"})
_GIT_CONFIG_READ_OPTIONS: Final = frozenset(
    {"--get", "--get-all", "--get-regexp", "--get-urlmatch", "--get-color", "--get-colorbool",
     "--list", "-l"}
)  # fmt: skip


@dataclass(frozen=True, slots=True)
class _GitRuns:
    """A git subcommand's options that run a command: short letters, long names (git accepts
    any unambiguous prefix), and the short letters that take an argument (which ends a
    cluster such as `-ix CMD` or `-xCMD`), and positional words (`bisect run`)."""

    letters: str = ""
    longs: tuple[str, ...] = ()
    with_arg: str = ""
    words: tuple[str, ...] = ()


_GIT_SUBCOMMAND_RUNS: Final = {
    "rebase": _GitRuns("x", ("exec",), "sSXCx"),
    "bisect": _GitRuns(words=("run",)),
    "submodule": _GitRuns(words=("foreach",)),
    "difftool": _GitRuns("xt", ("extcmd", "tool"), "xtO"),
    "mergetool": _GitRuns("t", ("tool",), "tO"),
    # clone: -u/--upload-pack runs a program, -c/--config sets any configuration
    "clone": _GitRuns("uc", ("upload-pack", "config", "template"), "bjou"),
    "fetch": _GitRuns("", ("upload-pack",), "jo"),
    "pull": _GitRuns("", ("upload-pack",), "jo"),
    "ls-remote": _GitRuns("", ("upload-pack",)),
    "push": _GitRuns("", ("receive-pack", "exec"), "o"),
    "archive": _GitRuns("", ("exec",), "o"),
    "grep": _GitRuns("O", ("open-files-in-pager",), "efmABCO"),  # -O runs a pager command
}
_GIT_REFUSED: Final = frozenset({"filter-branch", "send-email", "daemon", "instaweb"})


def _check_git(call: Call) -> None:
    """Git subcommands that store or run commands (config writes, `rebase -x`, hooks...)."""
    values = [w.value for w in call.args]
    i = 0
    while i < len(values) and values[i].startswith("-"):
        if values[i].startswith("-c"):  # `git -c alias.x=!CMD x`
            raise _exec_option(call, values[i])
        i += 2 if values[i] in _GIT_GLOBAL_WITH_ARG else 1
    if i >= len(values):
        return
    subcommand, rest = values[i], values[i + 1 :]
    if subcommand in _GIT_REFUSED:
        raise _exec_option(call, subcommand)
    if subcommand == "config" and not _is_git_config_read(rest):
        raise Refusal(
            call.text,
            "exec-option",
            "`git config` can store aliases, pagers and hooks that run other programs",
        )
    runs = _GIT_SUBCOMMAND_RUNS.get(subcommand)
    if runs is None:
        return
    for value in rest:
        if value == "--":
            break
        if value in runs.words:
            raise _exec_option(call, f"{subcommand} {value}")
        if value.startswith("--"):
            name = value[2:].partition("=")[0]
            if name and any(long.startswith(name) for long in runs.longs):
                raise _exec_option(call, f"{subcommand} {value}")
        elif value.startswith("-"):
            for letter in value[1:]:
                if letter in runs.letters:
                    raise _exec_option(call, f"{subcommand} {value}")
                if letter in runs.with_arg:
                    break


def _is_git_config_read(rest: list[str]) -> bool:
    """`git config get NAME`, `git config --get NAME`, `git config -l`: reads.  A read mode
    must be the subcommand (its first word) or an option; `git config alias.x VALUE get`
    writes `alias.x` (with `get` as a value pattern)."""
    if rest and rest[0] in _GIT_CONFIG_READ_SUBCOMMANDS:
        return True
    options = rest[: rest.index("--")] if "--" in rest else rest
    return bool(_GIT_CONFIG_READ_OPTIONS.intersection(options))
