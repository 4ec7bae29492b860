"""Programs that run other programs: their option tables and how to unwrap them.

Each handler reads a wrapper's argv and answers with what it runs (`Exec`, `Code`, `Implied`);
the caller checks that in turn.  `env`, `sudo`, `timeout`, `xargs`, `find -exec`, `busybox`,
`bash -c`, `eval`, `trap` and friends are modelled; wrappers whose option syntax is not are
checked at every argument position (`_h_opaque`) or refused outright (`_h_refuse`).
"""

from __future__ import annotations

import re
from typing import Final

from agentmesh.config import PermissionMode
from agentmesh.node.permissions.commands import (
    ANY_SHELL,
    BASH_ONLY,
    Call,
    Code,
    Ctx,
    Exec,
    Handler,
    Implied,
    Inner,
    Word,
)
from agentmesh.node.permissions.errors import Refusal, show
from agentmesh.node.permissions.options import Opts, parse_options, refused_option, unknown_option
from agentmesh.node.permissions.shell_builtins import UNSAFE_SHELL_OPTIONS
from agentmesh.node.permissions.variables import IDENT, check_variable, unsafe_to_set


def _simple_wrapper(spec: Opts, *, operands: int = 0, assignments: bool = False) -> Handler:
    """A wrapper shaped `NAME [options] [operands...] [VAR=x...] PROGRAM [args...]`."""

    def handler(call: Call, ctx: Ctx) -> list[Inner]:
        # Arguments appended at run time (xargs) land after the static ones, so they reach the
        # wrapped program, unless the static ones stop before it: then the program is unknown.
        missing: list[Inner] = [Exec((), appended=True)] if call.appended else []
        i, _ = parse_options(call, spec)
        args = call.args
        for _ in range(operands):
            if i >= len(args):
                return missing
            call.require_static(args[i])
            i += 1
        if assignments:
            while i < len(args) and args[i].value == "-":
                i += 1
            while i < len(args) and "=" in call.require_static(args[i]):
                check_variable(call, ctx, args[i].value.partition("=")[0])
                i += 1
        return [Exec(args[i:], appended=call.appended)] if i < len(args) else missing

    return handler


_h_env = _simple_wrapper(
    Opts(
        flags="i0v",
        with_arg="uCa",
        refused="S",
        long_flags=("ignore-environment", "null", "debug", "list-signal-handling", "help",
                    "version"),
        long_with_arg=("unset", "chdir", "argv0"),
        long_optional=("block-signal", "default-signal", "ignore-signal"),
        long_refused=("split-string",),
    ),
    assignments=True,
)  # fmt: skip
_h_sudo = _simple_wrapper(
    Opts(
        flags="AbBEHKklnNPSVv",
        with_arg="CDghpRrtTUu",
        refused="eis",
        long_flags=("askpass", "background", "bell", "set-home", "help", "remove-timestamp",
                    "reset-timestamp", "list", "non-interactive", "preserve-groups", "stdin",
                    "version", "validate", "no-update"),
        long_with_arg=("close-from", "chdir", "group", "host", "prompt", "chroot", "role", "type",
                       "command-timeout", "other-user", "user"),
        long_optional=("preserve-env",),
        long_refused=("edit", "login", "shell"),
    ),
    assignments=True,
)  # fmt: skip
_h_doas = _simple_wrapper(Opts(flags="nL", with_arg="uC", refused="s"))
_h_nohup = _simple_wrapper(Opts(long_flags=("help", "version")))
_h_timeout = _simple_wrapper(
    Opts(
        flags="fpv",
        with_arg="ks",
        long_flags=("foreground", "preserve-status", "verbose", "help", "version"),
        long_with_arg=("kill-after", "signal"),
    ),
    operands=1,
)
_h_nice = _simple_wrapper(
    Opts(with_arg="n", long_flags=("help", "version"), long_with_arg=("adjustment",),
          numeric=True)
)  # fmt: skip
_h_ionice = _simple_wrapper(
    Opts(
        flags="th",
        with_arg="cnpPu",
        long_flags=("ignore", "help", "version"),
        long_with_arg=("class", "classdata", "pid", "pgid", "uid"),
    )
)
_h_stdbuf = _simple_wrapper(
    Opts(with_arg="ioe", long_flags=("help", "version"),
          long_with_arg=("input", "output", "error"))
)  # fmt: skip
_h_time = _simple_wrapper(
    Opts(
        flags="apqvV",
        with_arg="fo",
        long_flags=("append", "portability", "quiet", "verbose", "help", "version"),
        long_with_arg=("format", "output"),
    )
)
_h_command = _simple_wrapper(Opts(flags="pvV"))
_h_builtin = _simple_wrapper(Opts())
_h_exec = _simple_wrapper(Opts(flags="cl", with_arg="a"))
_h_repeat = _simple_wrapper(Opts(), operands=1)  # zsh `repeat N command`


def _h_xargs(call: Call, ctx: Ctx) -> list[Inner]:
    spec = Opts(
        flags="0oprtx",
        with_arg="adEILnPs",
        optional_arg="eil",
        long_flags=("null", "interactive", "no-run-if-empty", "open-tty", "verbose", "exit",
                    "show-limits", "help", "version"),
        long_with_arg=("arg-file", "delimiter", "max-args", "max-procs", "max-chars",
                       "process-slot-var"),
        long_optional=("eof", "replace", "max-lines"),
    )  # fmt: skip
    i, found = parse_options(call, spec)
    replace: str | None = None
    for option, arg in found:
        if option == "--process-slot-var":  # xargs sets this variable in every command it runs
            check_variable(call, ctx, arg)
        elif option == "-I":
            replace = arg
        elif option in ("-i", "--replace"):
            replace = arg or "{}"
    words = call.args[i:] or (Word(raw="echo", value="echo", static=True),)
    if replace is not None:
        return [Exec(words, placeholder=replace)]
    return [Exec(words, appended=True)]


def _h_find(call: Call, ctx: Ctx) -> list[Inner]:
    args = call.args
    values = [call.require_static(w) for w in args]
    found: list[Inner] = []
    i = 0
    while i < len(values):
        value = values[i]
        if value in ("-exec", "-execdir", "-ok", "-okdir"):
            j = i + 1
            while j < len(values) and not (
                values[j] == ";" or (values[j] == "+" and values[j - 1] == "{}")
            ):
                j += 1
            if j >= len(values):
                raise Refusal(call.text, "unparseable", f"`find {value}` is missing its `;` or `+`")
            found.append(Exec(args[i + 1 : j], appended=values[j] == "+", placeholder="{}"))
            i = j
        elif value == "-delete":
            found.append(Implied("rm", "find -delete"))
        elif value in ("-fprint", "-fprint0", "-fprintf", "-fls"):
            found.append(Implied("tee", f"find {value}"))
        i += 1
    return found


def _h_busybox(call: Call, ctx: Ctx) -> list[Inner]:
    if not call.args:
        return [Exec((), appended=True)] if call.appended else []
    applet = call.require_static(call.args[0])
    if applet.startswith("-"):
        if applet in ("--list", "--list-full", "--help") and len(call.args) == 1:
            return []
        raise unknown_option(call, applet)
    return [Exec(call.args, appended=call.appended)]


def _h_eval(call: Call, ctx: Ctx) -> list[Inner]:
    args = call.args
    if args and call.require_static(args[0]) == "--":  # bash's `eval` ends options at `--`
        args = args[1:]
    code = " ".join(call.require_static(w) for w in args)
    return [Code(code)] if code.strip() else []


def _h_trap(call: Call, ctx: Ctx) -> list[Inner]:
    values = [call.require_static(w) for w in call.args]
    if values[:1] == ["--"]:
        values = values[1:]
    if len(values) < 2 or values[0] in ("-", "-l", "-p", ""):
        return []
    return [Code(values[0])]


_SHELL_FLAGS: Final = frozenset("abefhmnprtuvxBCEPT")  # not -H (history) nor -k (keyword)
_SHELL_LONG_OK: Final = frozenset(
    {"--norc", "--noprofile", "--posix", "--noediting", "--verbose", "--restricted"}
)


def _h_shell(call: Call, ctx: Ctx) -> list[Inner]:
    args = call.args
    has_c = False
    i = 0
    while i < len(args):
        value = call.require_static(args[i])
        if value in ("-", "--"):
            i += 1
            break
        if not value.startswith(("-", "+")) or len(value) == 1:
            break
        if value in ("--version", "--help"):
            return []
        if value.startswith("--"):
            if value not in _SHELL_LONG_OK:
                raise refused_option(call, value)
            i += 1
            continue
        for ch in value[1:]:
            if ch == "c" and value[0] == "-":
                has_c = True
            elif ch in "oO":
                i += 1
                if i >= len(args) or call.require_static(args[i]) in UNSAFE_SHELL_OPTIONS:
                    raise refused_option(call, f"-{ch} {args[i].value if i < len(args) else ''}")
            elif ch in "Hk":
                raise refused_option(call, "-" + ch)
            elif ch in "ils":
                raise Refusal(
                    call.text,
                    "unsupported",
                    f"`{call.name} -{ch}` reads commands from startup files or standard input, "
                    "which cannot be checked",
                )
            elif ch not in _SHELL_FLAGS:
                raise unknown_option(call, value)
        i += 1
    rest = args[i:]
    if has_c:
        if not rest:
            raise Refusal(call.text, "unparseable", f"`{call.name} -c` needs a command string")
        dialects = BASH_ONLY if call.base in ("bash", "rbash") else ANY_SHELL
        return [Code(call.require_static(rest[0]), dialects=dialects)]
    if rest:
        raise Refusal(
            call.text,
            "unsupported",
            f"`{call.name}` would run the script `{show(rest[0].raw, 40)}`, which cannot be "
            "checked",
        )
    raise Refusal(
        call.text,
        "unsupported",
        f"`{call.name}` would read commands from standard input, which cannot be checked",
    )


def _h_opaque(call: Call, ctx: Ctx) -> list[Inner]:
    """A wrapper whose option syntax is not modelled: every way it could run its arguments must
    pass.  It may exec them from any position, hand any one of them to a shell (`flock -c`,
    `su -c`), or join the rest into one command line for a shell (`watch`, `ssh`)."""
    if ctx.mode is PermissionMode.WEAK:
        raise Refusal(
            call.text,
            "dynamic-command",
            f"it cannot be determined which program `{call.name}` runs",
        )
    args = call.args
    for word in args:
        call.require_static(word)
    if call.speculative:
        return []  # the enclosing opaque wrapper already checks every later position and word
    _check_environment_arguments(call, ctx)
    found: list[Inner] = [Exec(args[k:], speculative=True) for k in range(len(args))]
    values = [w.value for w in args]
    odd = [k for k, value in enumerate(values) if not _PLAIN_ARGUMENT.fullmatch(value)]
    # A run of plain words joined with spaces reads as those same words, which the positions
    # above already check; only a run that reaches an odd argument can read differently.
    last = odd[-1] if odd else -1
    starts = range(min(last + 1, len(values) - 1))
    suffix_chars = [0] * (len(values) + 1)
    for k in range(len(values) - 1, -1, -1):
        suffix_chars[k] = suffix_chars[k + 1] + len(values[k]) + 1
    ctx.speculative_chars -= sum(suffix_chars[k] for k in starts) + sum(len(values[k]) for k in odd)
    if ctx.speculative_chars < 0:
        raise Refusal(
            call.text,
            "too-complex",
            f"`{call.name}` has too many arguments to check every way it could run them",
        )
    texts = {values[k] for k in odd} | {" ".join(values[k:]) for k in starts}
    # shortest first: a longer joined suffix then finds its own suffixes already checked
    ordered = sorted(texts, key=lambda text: (len(text), text))
    found += [Code(text, speculative=True, dialects=ANY_SHELL) for text in ordered]
    return found


# An argument made only of these characters reads the same as shell code: no quotes, braces,
# globs or operators, so it need not be re-parsed on its own.
_PLAIN_ARGUMENT: Final = re.compile(r"[A-Za-z0-9_./:@%+,=-]*")
_ASSIGNED_NAME: Final = re.compile(r"([A-Za-z_][A-Za-z0-9_]*)=")


def _check_environment_arguments(call: Call, ctx: Ctx) -> None:
    """Opaque wrappers may set variables from their options (`strace -E BASH_ENV=x`,
    `bwrap --setenv PATH x`): no argument may name a variable that changes what runs."""
    for word in call.args:
        value = word.value
        names = [value] if IDENT.fullmatch(value) else []
        for match in _ASSIGNED_NAME.finditer(value):
            name = match.group(1)  # `-EBASH_ENV=x`: any suffix may be the name
            names += [name[i:] for i in range(len(name)) if IDENT.fullmatch(name[i:])]
        for name in names:
            if unsafe_to_set(name):
                raise Refusal(
                    call.text,
                    "env-assignment",
                    f"`{call.name}` may set `{show(name)}` from its arguments, which can "
                    "change which program runs",
                )


def _h_login_shell(call: Call, ctx: Ctx) -> list[Inner]:
    """`su`, `runuser`, `sg`, `script`: without `-c` they start a shell reading standard input."""
    has_command = False
    for word in call.args:
        value = call.require_static(word)
        if value.startswith(("--command", "--session-command")) or (
            value.startswith("-") and not value.startswith("--") and "c" in value
        ):
            has_command = True
        if call.base == "runuser" and value in ("-u", "--user"):
            has_command = True
    if not has_command:
        raise Refusal(
            call.text,
            "unsupported",
            f"`{call.name}` without `-c` starts a shell that reads commands from standard input",
        )
    return _h_opaque(call, ctx)


def _h_refuse(call: Call, ctx: Ctx) -> list[Inner]:
    raise Refusal(
        call.text,
        "unsupported",
        f"`{call.name}` can run commands that cannot be checked and is not supported",
    )


_IP_EXEC_WORDS: Final = frozenset({"e", "ex", "exe", "exec"})  # ip accepts any prefix


def _h_ip(call: Call, ctx: Ctx) -> list[Inner]:
    """`ip netns exec NAME CMD...`, `ip vrf exec NAME CMD...` and `ip -all netns exec CMD...`
    run CMD.  ip reads abbreviations (`ip netn e`, `ip v e`) and options anywhere, so every
    word that may be `exec` is taken to start a command, with and without a NAME; `ip -batch`
    reads ip commands (`netns exec` among them) from a file and is refused."""
    args = call.args
    values = [call.require_static(w) for w in args]
    options = [v[1:] if v.startswith("--") else v for v in values if v.startswith("-")]
    for option in options:
        if len(option) >= 2 and "-batch".startswith(option):
            raise Refusal(
                call.text,
                "unsupported",
                f"`{call.name} {show(option, 20)}` reads commands from a file, which cannot be "
                "checked",
            )
    every_netns = any(len(v) >= 2 and "-all".startswith(v) for v in options)
    found: list[Inner] = []
    for k, value in enumerate(values):
        if value in _IP_EXEC_WORDS:
            if every_netns:  # `-all netns exec CMD...`, but `vrf exec NAME CMD...` may follow
                found += [Exec(args[k + 1 :]), Exec(args[k + 2 :], speculative=True)]
            else:
                found.append(Exec(args[k + 2 :]))  # `netns exec NAME CMD...`
    return found


_LD_SO: Final = re.compile(r"ld(?:-linux)?(?:[-.][a-z0-9_.-]*)?\.so(?:\.[0-9]+)*")

_WRAPPERS: Final[dict[str, Handler]] = {
    "env": _h_env,
    "sudo": _h_sudo,
    "doas": _h_doas,
    "nohup": _h_nohup,
    "timeout": _h_timeout,
    "nice": _h_nice,
    "ionice": _h_ionice,
    "stdbuf": _h_stdbuf,
    "time": _h_time,
    "command": _h_command,
    "builtin": _h_builtin,
    "exec": _h_exec,
    "xargs": _h_xargs,
    "find": _h_find,
    "busybox": _h_busybox,
    "toybox": _h_busybox,
    **dict.fromkeys(("noglob", "nocorrect", "-"), _h_builtin),  # zsh precommand modifiers
    "repeat": _h_repeat,
    "eval": _h_eval,
    "trap": _h_trap,
    "ip": _h_ip,
    **dict.fromkeys(
        ("sh", "bash", "dash", "ash", "ksh", "ksh93", "mksh", "lksh", "oksh", "pdksh", "zsh",
         "rbash", "hush", "yash", "posh"),
        _h_shell,
    ),
    **dict.fromkeys(("su", "runuser", "sg", "script"), _h_login_shell),
    **dict.fromkeys(
        ("setsid", "flock", "taskset", "chrt", "prlimit", "setpriv", "strace", "ltrace",
         "valgrind", "faketime", "catchsegv", "watch", "xvfb-run", "unbuffer", "rlwrap", "chpst",
         "numactl", "cgexec", "torsocks", "proxychains", "proxychains4", "tsocks", "ld.so",
         "setarch", "linux32", "linux64", "i386", "x86_64", "runcon", "daemonize", "entr",
         "tini", "dumb-init", "cpulimit", "trickle", "nocache", "eatmydata", "setuidgid",
         "envuidgid", "softlimit", "setlock", "sched"),
        _h_opaque,
    ),
    **dict.fromkeys(
        ("source", ".", "alias", "enable", "fc", "compgen", "complete", "bind", "let", "coproc",
         "chroot", "unshare", "nsenter", "fakeroot", "proot", "firejail", "newgrp", "login",
         "machinectl", "tmux", "screen", "byobu", "at", "batch", "crontab", "parallel", "pkexec",
         "dbus-run-session", "capsh", "autoload", "fish", "csh", "tcsh", "pwsh", "nu", "elvish",
         "xonsh",
         # they set variables from files, remap what a path runs, or hand the command to
         # another process manager (outside this task)
         "envdir", "s6-envdir", "chpst", "bwrap", "fakechroot", "start-stop-daemon",
         "systemd-run", "systemd-nspawn", "run0"),
        _h_refuse,
    ),
}  # fmt: skip
# Wrappers whose program is still determined when xargs appends arguments: those arguments go
# to the wrapped program (or become `$0`, `$1`... of a `sh -c` string).  Every other wrapper is
# refused under xargs.
APPEND_SAFE_WRAPPERS: Final = frozenset(
    {
        _h_env, _h_sudo, _h_doas, _h_nohup, _h_timeout, _h_nice, _h_ionice, _h_stdbuf, _h_time,
        _h_command, _h_builtin, _h_exec, _h_busybox, _h_shell, _h_repeat,
    }
)  # fmt: skip


def wrapper_for(program: str) -> Handler | None:
    """The handler for `program` (a folded basename), or None if it is not a wrapper."""
    handler = _WRAPPERS.get(program)
    if handler is None and _LD_SO.fullmatch(program):
        return _h_opaque
    return handler
