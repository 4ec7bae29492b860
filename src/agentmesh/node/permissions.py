"""Permission checks for shell commands that a node runs on behalf of an agent.

`plan_shell_command` either raises `CommandRefused` or returns a `ShellPlan` saying how to run
the command.  It never runs anything itself; the only outside lookup is `shutil.which`.  The
refusal carries the offending command text, a rule id (`RULES`) and one sentence; it never
quotes the allowlist, the denylist or anything else from the node.

Weak mode (allowlist, no shell)
-------------------------------
The command line is split with `shlex` and the argv is executed *without* a shell.  Shell
syntax is refused outright rather than interpreted, so the argv always means what the same text
would mean to bash:

* Unquoted metacharacters are refused: `;` `&` `|` `<` `>` `(` `)` `$` backticks `*` `?` `[`
  `{` `}` (except the pair `{}`, which bash never expands: `find -exec ... {}`), `#`, `~`, and
  newlines anywhere (even quoted), as is a leading `VAR=value`.
* Quoted metacharacters are *data*: `echo "a; b"` and `echo 'x | y'` run `echo` with one
  argument, exactly as bash would pass it.  Inside double quotes `$` and backticks are still
  refused, because bash would expand them there; inside single quotes they are plain data.
* `argv[0]` must be on the allowlist (exact match).  A program given by path (`/bin/ls`,
  `./ls`, `/tmp/evil/ls`) is refused unless its basename is allowlisted *and* the path is
  exactly what `shutil.which` finds for that basename on this process's PATH.
* Wrappers (`env`, `sudo`, `doas`, `nohup`, `timeout`, `nice`, `ionice`, `stdbuf`, `time`,
  `command`, `builtin`, `exec`, `xargs`, `busybox`, `find -exec/-execdir/-ok/-okdir`,
  `bash -c`/`sh -c`/...) are unwrapped: the wrapped program must pass the same check,
  recursively (a `-c` string must itself be a valid weak-mode command).  Their options are read
  from tables; an unknown option, a missing program, or a program supplied at run time (`xargs`
  input, `{}` and `-I` placeholders) means the program cannot be determined: refused.
  `find -delete` is checked as `rm`, `find -fprint*`/`-fls` as `tee`.  Wrappers whose option
  syntax is not modelled (`setsid`, `strace`, `watch`, ...) are refused.
* `env` may only set locale/terminal variables (`LANG`, `LC_*`, `TZ`, `TERM`, ...).

Superuser mode (denylist, full bash)
------------------------------------
The command runs as `/bin/bash -c COMMAND`.  Before that a small bash parser finds *every*
simple command and checks its program against the denylist by basename (`/usr/bin/rm` is
`rm`), after NFKC normalisation and case folding (fullwidth `rm` and `RM` count as `rm`):
commands in pipelines, lists, subshells, groups, `if`/`while`/`until`/`for`/`select`/`case`
bodies, function bodies, command substitutions (also inside double quotes, `${...}` and
backticks, nested), process substitutions, here-strings and redirection targets.  Quote
splicing is resolved first: `r''m`, `"r"m` and `\\rm` are all `rm`.

* Wrappers are unwrapped as in weak mode.  `eval`, `trap`, `bash -c`, `sh -c`, `su -c`,
  `flock -c`, ... have their code re-parsed; code for a shell other than bash is read twice,
  as bash and as POSIX sh (dash reads `&>`, `[[` and `$'...'` differently), and both readings
  must pass.  Wrappers whose option syntax is not modelled (`setsid`, `strace`, `watch`,
  `ld.so`, ...) must pass with the program at *every* position of their arguments.  Programs
  that start an unchecked shell or read commands from input (`bash` without `-c`, `su`
  without `-c`, `chroot`, `at`, `parallel`, ...) are refused.
* Redirections are allowed (`echo x > file` may write any file the node can write): the
  denylist is about programs, not files.
* Fail closed: a program name that is not a literal word (`$x`, `${x}`, `$(...)`, globs, brace
  expansion, `~`, `$'...'`) is refused, and so is what the parser does not fully understand:
  here-documents, aliases, `source`/`.`, history expansion (`set -H`), `$"..."`, arithmetic
  on variables (`$((x))`, `((...))`, `let`, `[[ x -eq y ]]`, `declare -i`), array subscripts,
  `${!x}`, `${x@P}`, `declare -n`, `hash -p`, `enable`, `coproc`, `set -k`, extglob.
* Variables that change what runs may not be set (`PATH`, `LD_*`, `BASH_ENV`, `ENV`, `PS4`,
  `BASH_FUNC_*`, `GIT_*`, `PAGER`, ...): not as `VAR=x cmd`, not through `env`/`sudo`, and not
  through `export`, `declare`, `read`, `printf -v`, `for VAR in`, `getopts` or `${VAR:=x}`.
* Options that make well-known tools run another program are refused (`git -c`,
  `git config` writes, `git rebase -x`, `tar --to-command`/`-I`, `rsync -e`, `ssh -o`, ...).

The denylist is a guard rail, not a sandbox
-------------------------------------------
A full shell can always reach a program the denylist does not name.  Known limits:

* Interpreters and tools that run code from their arguments: `python3 -c`, `perl -e`,
  `awk 'BEGIN{system(...)}'`, `sed 'e ...'`, `make`, `gdb -ex`, `vim -c`, `expect`, pagers'
  shell escapes, git hooks and repository config, and the rest of GTFOBins.  The option list
  above cannot be complete; interpreters must be on the denylist to be stopped at all.
* Programs that delete or overwrite files themselves (`find -delete` is caught; `sort -o`,
  `uniq IN OUT`, `tar -x`, `rsync --delete`, `git clean`, a compiler's `-o` are not), and any
  file written by a redirection.
* Code on disk or elsewhere: a script written by a redirection and made executable, a copy of
  a denied program under another name, a `Makefile`, a virtualenv `bin/`, remote commands
  (`ssh host rm ...`, `docker exec`); anything whose text the parser never sees.
* Values that bash evaluates as code at run time and that this module cannot see: variables
  inherited from the node's environment (`BASH_ENV`, exported functions), array subscripts
  smuggled in data (`[ "$a" "$b" ]` where `a=-v`), zsh-only syntax in `zsh -c`, and wrapper
  programs that are not listed here.
* `sh -c` code that only bash understands (`<(...)`, `<<<`) is refused, because `sh` may be
  dash; use `bash -c`.
* Weak mode trusts the allowlist: an allowlisted program that executes its arguments as code
  (an interpreter, `make`, `git` with repository hooks) defeats it, and `PATH` is resolved by
  whoever executes the argv.

Rule ids: `empty`, `too-long`, `too-complex` (nesting or work limits), `unparseable`,
`shell-syntax` (weak mode), `not-in-allowlist`, `path-program`, `denylisted`,
`dynamic-command` (the program is only known at run time or cannot be determined),
`env-assignment`, `exec-option`, `unsupported` (a construct this module refuses to reason about).
"""

from __future__ import annotations

import posixpath
import re
import shlex
import shutil
import unicodedata
from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from typing import Final

from agentmesh.config import PermissionMode

__all__ = [
    "MAX_COMMAND_LENGTH",
    "RULES",
    "CommandRefused",
    "PermissionMode",
    "ShellPlan",
    "plan_shell_command",
]

MAX_COMMAND_LENGTH: Final = 16_384
"""Longer commands are refused with rule ``too-long``."""

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
    }
)
"""Every rule id that `CommandRefused.rule` can carry."""

_MAX_DEPTH: Final = 16  # wrapper / re-parse nesting
_MAX_NEST: Final = 32  # syntactic nesting inside one parse
_BUDGET: Final = 20_000  # program checks per command
_BASH: Final = "/bin/bash"


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


@dataclass(frozen=True, slots=True)
class ShellPlan:
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
    ctx = _Ctx(
        mode=mode,
        allowlist=frozenset(allowlist),
        denylist=frozenset(_fold(posixpath.basename(d.rstrip("/")) or d) for d in denylist),
    )
    try:
        _precheck(command, mode)
        if mode is PermissionMode.WEAK:
            argv = _check_weak(command, ctx, 0)
            return ShellPlan(argv=tuple(argv), use_shell=False, programs=tuple(ctx.programs))
        _check_code(command, ctx, 0)
        return ShellPlan(argv=(_BASH, "-c", command), use_shell=True, programs=tuple(ctx.programs))
    except _Refusal as exc:
        raise CommandRefused(exc.command, exc.rule, mode, exc.detail) from None
    except RecursionError:
        raise CommandRefused(
            _show(command.strip()),
            "too-complex",
            mode,
            "the command nests too deeply to be checked",
        ) from None


# --------------------------------------------------------------------------------------------
# shared state and helpers


class _Refusal(Exception):
    def __init__(self, command: str, rule: str, detail: str) -> None:
        super().__init__(command, rule, detail)
        self.command = command
        self.rule = rule
        self.detail = detail


class _ParseError(Exception):
    pass


@dataclass(slots=True)
class _Ctx:
    mode: PermissionMode
    allowlist: frozenset[str]
    denylist: frozenset[str]
    programs: list[str] = field(default_factory=list)
    budget: int = _BUDGET


def _fold(name: str) -> str:
    return unicodedata.normalize("NFKC", name).casefold()


def _show(text: str, limit: int = 80) -> str:
    shown = "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)
    return shown if len(shown) <= limit else shown[: limit - 1] + "…"


def _precheck(command: str, mode: PermissionMode) -> None:
    if not isinstance(command, str):
        raise TypeError("command must be a str")
    if not command.strip():
        raise _Refusal("", "empty", "the command is empty")
    if len(command) > MAX_COMMAND_LENGTH:
        raise _Refusal(
            _show(command.strip()),
            "too-long",
            f"the command is longer than {MAX_COMMAND_LENGTH} characters",
        )
    for char in command:
        if char == "\n" and mode is PermissionMode.WEAK:
            raise _Refusal(
                _show(command.strip()), "shell-syntax", "a newline separates commands in a shell"
            )
        if (ord(char) < 32 and char not in "\t\n") or ord(char) == 127:
            raise _Refusal(
                _show(command.strip()),
                "unparseable",
                f"the command contains the control character {char!r}",
            )


_IDENT: Final = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_ASSIGNMENT: Final = re.compile(r"([A-Za-z_][A-Za-z0-9_]*)\+?=")

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


def _check_variable(call: _Call, ctx: _Ctx, name: str) -> None:
    """Refuse setting a variable that can change which program runs."""
    if ctx.mode is PermissionMode.WEAK:
        if name in _SAFE_WEAK_VARS or (name.startswith("LC_") and _IDENT.fullmatch(name)):
            return
        raise _Refusal(
            call.text, "env-assignment", f"weak mode does not allow setting `{_show(name)}`"
        )
    if (
        not _IDENT.fullmatch(name)
        or name in _DANGEROUS_VARS
        or name.startswith(_DANGEROUS_PREFIXES)
    ):
        raise _Refusal(
            call.text,
            "env-assignment",
            f"setting `{_show(name)}` can change which program runs",
        )


# --------------------------------------------------------------------------------------------
# weak mode


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


def _check_weak(command: str, ctx: _Ctx, depth: int) -> list[str]:
    if depth > _MAX_DEPTH:
        raise _Refusal(_show(command.strip()), "too-complex", "the command nests too deeply")
    problem = _weak_syntax(command)
    if problem is not None:
        raise _Refusal(
            _show(command.strip()),
            "shell-syntax",
            f"{problem} is shell syntax, which weak mode does not accept",
        )
    try:
        argv = shlex.split(command, posix=True)
    except ValueError as exc:
        raise _Refusal(
            _show(command.strip()), "unparseable", f"the command could not be split ({exc})"
        ) from None
    if not argv or not argv[0]:
        raise _Refusal(_show(command.strip()), "empty", "the command names no program")
    if _ASSIGNMENT.match(argv[0]):
        raise _Refusal(
            _show(command.strip()),
            "shell-syntax",
            "a leading variable assignment is shell syntax, which weak mode does not accept",
        )
    words = tuple(_Word(raw=a, value=a, static=True) for a in argv)
    _check_argv(_Call.of(words, _show(command.strip()), depth), ctx)
    return argv


# --------------------------------------------------------------------------------------------
# superuser mode: a bash parser that yields every simple command


@dataclass(slots=True)
class _Word:
    raw: str
    value: str
    static: bool  # value is known now and the word expands to exactly that one field
    subcommands: list[_Simple] = field(default_factory=list)


@dataclass(slots=True)
class _Simple:
    text: str
    assignments: list[_Word]
    words: list[_Word]


@dataclass(slots=True)
class _Tok:
    kind: str  # "word" | "op" | "redir" | "nl" | "eof"
    text: str
    start: int
    end: int
    word: _Word | None = None


_METACHARS: Final = frozenset(" \t\n;&|<>()")
_REDIR_OPS: Final = ("<<<", "<<-", "<<", "&>>", "&>", ">>", ">&", ">|", "<&", "<>", ">", "<")
_CONTROL_OPS: Final = (";;&", ";;", ";&", ";", "&&", "&", "||", "|&", "|", "(", ")")
# POSIX sh (dash): `&>` is `&` then `>`, `<<<` is a here-document, no `|&`, `;&`, `$'...'`, `<(`.
_POSIX_REDIR_OPS: Final = ("<<-", "<<", ">>", ">&", ">|", "<&", "<>", ">", "<")
_POSIX_CONTROL_OPS: Final = (";;", ";", "&&", "&", "||", "|", "(", ")")
_IO_NUMBER: Final = re.compile(r"[0-9]+(?=[<>])")
_NAMED_FD: Final = re.compile(r"\{[A-Za-z_][A-Za-z0-9_]*\}(?=[<>])")
_PURE_ARITH: Final = re.compile(r"[0-9\s+\-*/%<>=!&|^~?:,()]*")
_PARAM_NAME: Final = re.compile(r"[A-Za-z_][A-Za-z0-9_]*|[0-9]+|[@*#?$!0-]")
_SUBSCRIPT_OK: Final = re.compile(r"\[(?:@|\*|[0-9]+)\]")
_SUBSTRING_OK: Final = re.compile(r":\s*-?\s*[0-9]+(?:\s*:\s*-?\s*[0-9]+)?\s*\}")
_PARAM_OPS: Final = (
    ":-", ":=", ":?", ":+", "-", "=", "?", "+", "##", "#", "%%", "%",
    "//", "/#", "/%", "/", "^^", "^", ",,", ",", "@", ":",
)  # fmt: skip
_NOT_GLOBBED: Final = frozenset({"[", "[[", "]]", "{", "}", "{}"})
_RESERVED: Final = frozenset(
    {
        "if", "then", "elif", "else", "fi", "while", "until", "do", "done", "for", "select",
        "in", "case", "esac", "function", "{", "}", "!", "[[", "]]", "time", "coproc",
    }
)  # fmt: skip
_POSIX_RESERVED: Final = _RESERVED - {"[[", "]]", "function", "select", "coproc", "time"}
_CONDITIONAL_OPS: Final = frozenset({"&&", "||", "(", ")", "<", ">"})
_ARITH_TEST_OPS: Final = frozenset({"-eq", "-ne", "-lt", "-le", "-gt", "-ge", "-v"})
_CASE_ENDS: Final = frozenset({";;", ";&", ";;&"})
_NONE: Final[frozenset[str]] = frozenset()


class _Parser:
    """Recursive-descent parser for the bash subset this module understands.

    The result is the flat list of every simple command in the source, nested ones included.
    Anything outside the subset raises `_ParseError` (unparseable) or `_Refusal` (unsupported).
    With `posix=True` it reads the source the way dash and other POSIX shells do, where several
    bash constructs mean something else (`&>` is `&` then `>`; `[[` is an ordinary command).
    """

    def __init__(self, src: str, nest: int = 0, *, posix: bool = False) -> None:
        self.src = src
        self.pos = 0
        self.nest = nest
        self.posix = posix
        self._reserved = _POSIX_RESERVED if posix else _RESERVED
        self._redir_ops = _POSIX_REDIR_OPS if posix else _REDIR_OPS
        self._control_ops = _POSIX_CONTROL_OPS if posix else _CONTROL_OPS
        self._memo: dict[int, _Tok] = {}
        self._sink: list[_Simple] = []

    # -- entry points

    def parse_program(self) -> list[_Simple]:
        self._parse_list(_NONE, _NONE)
        tok = self._peek()
        if tok.kind != "eof":
            raise _ParseError(f"unexpected `{_show(tok.text, 20)}`")
        return self._sink

    def _unsupported(self, what: str) -> _Refusal:
        return _Refusal(_show(self.src.strip()), "unsupported", f"{what} is not supported")

    def _enter(self) -> None:
        self.nest += 1
        if self.nest > _MAX_NEST:
            raise _Refusal(_show(self.src.strip()), "too-complex", "the command nests too deeply")

    # -- tokens

    def _peek(self) -> _Tok:
        return self._token_at(self.pos)

    def _next(self) -> _Tok:
        tok = self._peek()
        self.pos = tok.end
        return tok

    def _token_at(self, pos: int) -> _Tok:
        tok = self._memo.get(pos)
        if tok is None:
            tok = self._lex(pos)
            self._memo[pos] = tok
        return tok

    def _lex(self, pos: int) -> _Tok:
        src = self.src
        n = len(src)
        while pos < n:
            if src[pos] in " \t":
                pos += 1
            elif src.startswith("\\\n", pos):
                pos += 2
            elif src[pos] == "#":
                end = src.find("\n", pos)
                pos = n if end < 0 else end
            else:
                break
        if pos >= n:
            return _Tok("eof", "", n, n)
        if src[pos] == "\n":
            return _Tok("nl", "\n", pos, pos + 1)
        if not self.posix and src.startswith(("<(", ">("), pos):
            return self._lex_word(pos)
        if _NAMED_FD.match(src, pos):
            raise self._unsupported("a named file descriptor `{var}>`")
        number = _IO_NUMBER.match(src, pos)
        op_pos = number.end() if number else pos
        for op in self._redir_ops:
            if src.startswith(op, op_pos):
                if op in ("<<", "<<-"):
                    raise self._unsupported("a here-document `<<`")
                end = op_pos + len(op)
                return _Tok("redir", src[pos:end], pos, end)
        for op in self._control_ops:
            if src.startswith(op, pos):
                return _Tok("op", op, pos, pos + len(op))
        return self._lex_word(pos)

    def _lex_word(self, pos: int) -> _Tok:
        src = self.src
        n = len(src)
        start = pos
        value: list[str] = []
        subs: list[_Simple] = []
        static = True
        pattern = False
        while pos < n:
            c = src[pos]
            if c in "<>" and src.startswith("(", pos + 1) and not self.posix:
                cmds, end = self._parse_nested(pos + 2)
                subs.extend(cmds)
                value.append(src[pos:end])
                static = False
                pos = end
                continue
            if c in _METACHARS:
                break
            if c == "\\":
                if src.startswith("\n", pos + 1):
                    pos += 2
                    continue
                value.append(src[pos + 1 : pos + 2] or "\\")
                pos += 2
            elif c == "'":
                end = src.find("'", pos + 1)
                if end < 0:
                    raise _ParseError("unterminated single quote")
                value.append(src[pos + 1 : end])
                pos = end + 1
            elif c == '"':
                pos, plain = self._lex_dquote(pos + 1, value, subs)
                static = static and plain
            elif src.startswith("$'", pos) and not self.posix:
                end = self._ansi_c_end(pos + 2)
                value.append(src[pos:end])
                static = False
                pos = end
            elif src.startswith('$"', pos) and not self.posix:
                # bash expands `$(...)` inside the *translated* text, which is not here
                raise self._unsupported('the locale translation `$"..."`')
            elif c == "$":
                end, expanded = self._lex_dollar(pos, subs, in_dquote=False)
                value.append(src[pos:end] if expanded else "$")
                static = static and not expanded
                pos = end
            elif c == "`":
                end = self._lex_backtick(pos, subs, in_dquote=False)
                value.append(src[pos:end])
                static = False
                pos = end
            elif src.startswith("{}", pos):  # an empty brace pair is never expanded
                value.append("{}")
                pos += 2
            else:
                if c in "*?[{}" or (c == "~" and pos == start):
                    pattern = True
                value.append(c)
                pos += 1
        raw = src[start:pos]
        if pattern and raw not in _NOT_GLOBBED:
            static = False
        word = _Word(raw=raw, value="".join(value), static=static, subcommands=subs)
        return _Tok("word", raw, start, pos, word)

    def _lex_dquote(self, pos: int, value: list[str], subs: list[_Simple]) -> tuple[int, bool]:
        src = self.src
        n = len(src)
        plain = True
        while pos < n:
            c = src[pos]
            if c == '"':
                return pos + 1, plain
            if c == "\\" and pos + 1 < n:
                nxt = src[pos + 1]
                if nxt == "\n":
                    pos += 2
                elif nxt in '$`"\\':
                    value.append(nxt)
                    pos += 2
                else:
                    value.append("\\")
                    pos += 1
            elif c == "$":
                end, expanded = self._lex_dollar(pos, subs, in_dquote=True)
                value.append(src[pos:end] if expanded else "$")
                plain = plain and not expanded
                pos = end
            elif c == "`":
                end = self._lex_backtick(pos, subs, in_dquote=True)
                value.append(src[pos:end])
                plain = False
                pos = end
            else:
                value.append(c)
                pos += 1
        raise _ParseError("unterminated double quote")

    def _ansi_c_end(self, pos: int) -> int:
        src = self.src
        while pos < len(src):
            if src[pos] == "\\":
                pos += 2
            elif src[pos] == "'":
                return pos + 1
            else:
                pos += 1
        raise _ParseError("unterminated $'...' quote")

    def _lex_dollar(self, pos: int, subs: list[_Simple], *, in_dquote: bool) -> tuple[int, bool]:
        """Lex the expansion starting at `$`; return (end, whether it is an expansion)."""
        src = self.src
        if src.startswith("$((", pos):
            end = self._arith_end(pos + 3)
            if not _PURE_ARITH.fullmatch(src[pos + 3 : end - 2]):
                raise self._unsupported("arithmetic on variables or commands `$((...))`")
            return end, True
        if src.startswith("$(", pos):
            cmds, end = self._parse_nested(pos + 2)
            subs.extend(cmds)
            return end, True
        if src.startswith("$[", pos):
            raise self._unsupported("the arithmetic expansion `$[...]`")
        if src.startswith("${", pos):
            return self._lex_braced(pos + 2, subs, in_dquote=in_dquote), True
        name = _PARAM_NAME.match(src, pos + 1)
        if name is None:
            return pos + 1, False
        end = name.end() if name.group().isidentifier() else pos + 2
        return end, True

    def _arith_end(self, pos: int) -> int:
        src = self.src
        depth = 0
        while pos < len(src):
            c = src[pos]
            if c == "(":
                depth += 1
            elif c == ")":
                if depth == 0:
                    if src.startswith("))", pos):
                        return pos + 2
                    raise _ParseError("unbalanced `$((`")
                depth -= 1
            pos += 1
        raise _ParseError("unterminated `$((`")

    def _lex_braced(self, pos: int, subs: list[_Simple], *, in_dquote: bool) -> int:
        """Lex `${...}` after the `${`; only plainly safe forms are accepted."""
        src = self.src
        if src.startswith("!", pos):
            raise self._unsupported("indirect expansion `${!...}`")
        if src.startswith("#", pos) and not src.startswith("}", pos + 1):
            pos += 1
        name = _PARAM_NAME.match(src, pos)
        if name is None:
            raise _ParseError("bad substitution")
        pos = name.end()
        if src.startswith("[", pos):
            subscript = _SUBSCRIPT_OK.match(src, pos)
            if subscript is None:
                raise self._unsupported("an array subscript (evaluated as arithmetic)")
            pos = subscript.end()
        if src.startswith("}", pos):
            return pos + 1
        op = next((o for o in _PARAM_OPS if src.startswith(o, pos)), None)
        if op is None:
            raise _ParseError("bad substitution")
        if op == "@":
            raise self._unsupported("the transformation `${var@...}`")
        if op in (":=", "=") and (
            not name.group().isidentifier()
            or name.group() in _DANGEROUS_VARS
            or name.group().startswith(_DANGEROUS_PREFIXES)
        ):
            raise self._unsupported(f"assigning `{name.group()}` inside `${{...}}`")
        if op == ":":
            substring = _SUBSTRING_OK.match(src, pos)
            if substring is None:
                raise self._unsupported("a substring offset that is not a plain number")
            return substring.end()
        return self._scan_param_word(pos + len(op), subs, in_dquote=in_dquote)

    def _scan_param_word(self, pos: int, subs: list[_Simple], *, in_dquote: bool) -> int:
        src = self.src
        scratch: list[str] = []
        while pos < len(src):
            c = src[pos]
            if c == "}":
                return pos + 1
            if c == "\\":
                pos += 2
            elif c == "'":
                if in_dquote:
                    raise self._unsupported("a single quote inside a double-quoted `${...}`")
                end = src.find("'", pos + 1)
                if end < 0:
                    raise _ParseError("unterminated single quote")
                pos = end + 1
            elif c == '"':
                pos, _ = self._lex_dquote(pos + 1, scratch, subs)
            elif c == "$":
                pos, _ = self._lex_dollar(pos, subs, in_dquote=True)
            elif c == "`":
                pos = self._lex_backtick(pos, subs, in_dquote=in_dquote)
            elif c == "{":
                raise self._unsupported("a brace inside `${...}`")
            else:
                pos += 1
        raise _ParseError("unterminated `${`")

    def _lex_backtick(self, pos: int, subs: list[_Simple], *, in_dquote: bool) -> int:
        src = self.src
        buf: list[str] = []
        pos += 1
        while pos < len(src):
            c = src[pos]
            if c == "\\" and pos + 1 < len(src):
                nxt = src[pos + 1]
                if nxt in "$`\\" or (in_dquote and nxt == '"'):
                    buf.append(nxt)
                    pos += 2
                    continue
                if nxt == "\n":
                    pos += 2
                    continue
            elif c == "`":
                inner = _Parser("".join(buf), self.nest + 1, posix=self.posix)
                inner._enter()
                subs.extend(inner.parse_program())
                return pos + 1
            buf.append(c)
            pos += 1
        raise _ParseError("unterminated backtick")

    def _parse_nested(self, pos: int) -> tuple[list[_Simple], int]:
        """Parse `$(...)`, `<(...)` or `>(...)` whose body starts at `pos`."""
        saved_pos, saved_sink = self.pos, self._sink
        self.pos, self._sink = pos, []
        self._enter()
        self._parse_list(_NONE, frozenset({")"}))
        self._expect_op(")")
        self.nest -= 1
        cmds, end = self._sink, self.pos
        self.pos, self._sink = saved_pos, saved_sink
        return cmds, end

    # -- grammar

    def _is_reserved(self, tok: _Tok, *names: str) -> bool:
        if tok.kind != "word" or tok.word is None or tok.word.raw not in self._reserved:
            return False
        return not names or tok.word.raw in names

    def _skip_newlines(self) -> None:
        while self._peek().kind == "nl":
            self._next()

    def _expect_op(self, op: str) -> None:
        tok = self._next()
        if tok.kind != "op" or tok.text != op:
            raise _ParseError(f"expected `{op}`")

    def _expect_word(self, word: str) -> None:
        if not self._is_reserved(self._next(), word):
            raise _ParseError(f"expected `{word}`")

    def _collect(self, word: _Word) -> None:
        self._sink.extend(word.subcommands)

    def _parse_list(self, end_words: frozenset[str], end_ops: frozenset[str]) -> None:
        while True:
            self._skip_newlines()
            tok = self._peek()
            if (
                tok.kind == "eof"
                or (tok.kind == "op" and tok.text in end_ops)
                or (self._is_reserved(tok) and tok.text in end_words)
            ):
                return
            self._parse_and_or()
            tok = self._peek()
            if tok.kind == "nl" or (tok.kind == "op" and tok.text in (";", "&")):
                self._next()
                continue
            return

    def _parse_and_or(self) -> None:
        self._parse_pipeline()
        while (tok := self._peek()).kind == "op" and tok.text in ("&&", "||"):
            self._next()
            self._skip_newlines()
            self._parse_pipeline()

    def _parse_pipeline(self) -> None:
        if self._is_reserved(self._peek(), "time"):
            self._next()
            tok = self._peek()
            if tok.kind == "word" and tok.text in ("-p", "--"):
                self._next()
        while self._is_reserved(self._peek(), "!"):
            self._next()
        self._parse_command()
        while (tok := self._peek()).kind == "op" and tok.text in ("|", "|&"):
            self._next()
            self._skip_newlines()
            self._parse_command()

    def _parse_command(self) -> None:
        self._enter()
        tok = self._peek()
        if tok.kind == "op" and tok.text == "(":
            if self.src.startswith("((", tok.start):
                raise self._unsupported("the arithmetic command `((...))`")
            self._next()
            self._parse_list(_NONE, frozenset({")"}))
            self._expect_op(")")
            self._parse_redirections()
        elif self._is_reserved(tok):
            self._parse_compound(tok.text)
            self._parse_redirections()
        else:
            self._parse_simple()
        self.nest -= 1

    def _parse_compound(self, keyword: str) -> None:
        if keyword == "{":
            self._next()
            self._parse_list(frozenset({"}"}), _NONE)
            self._expect_word("}")
        elif keyword == "if":
            self._parse_if()
        elif keyword in ("while", "until"):
            self._next()
            self._parse_list(frozenset({"do"}), _NONE)
            self._parse_do_done()
        elif keyword in ("for", "select"):
            self._parse_for()
        elif keyword == "case":
            self._parse_case()
        elif keyword == "function":
            self._next()
            name = self._next()
            if name.kind != "word" or name.word is None or not name.word.static:
                raise _ParseError("bad function name")
            if (tok := self._peek()).kind == "op" and tok.text == "(":
                self._next()
                self._expect_op(")")
            self._parse_function_body()
        elif keyword == "[[":
            self._parse_conditional()
        elif keyword == "coproc":
            raise self._unsupported("`coproc`")
        else:
            raise _ParseError(f"unexpected `{keyword}`")

    def _parse_if(self) -> None:
        self._next()
        self._parse_list(frozenset({"then"}), _NONE)
        self._expect_word("then")
        self._parse_list(frozenset({"elif", "else", "fi"}), _NONE)
        while True:
            tok = self._next()
            if self._is_reserved(tok, "elif"):
                self._parse_list(frozenset({"then"}), _NONE)
                self._expect_word("then")
                self._parse_list(frozenset({"elif", "else", "fi"}), _NONE)
            elif self._is_reserved(tok, "else"):
                self._parse_list(frozenset({"fi"}), _NONE)
                self._expect_word("fi")
                return
            elif self._is_reserved(tok, "fi"):
                return
            else:
                raise _ParseError("expected `fi`")

    def _parse_do_done(self) -> None:
        self._expect_word("do")
        self._parse_list(frozenset({"done"}), _NONE)
        self._expect_word("done")

    def _parse_for(self) -> None:
        self._next()
        tok = self._next()
        if tok.kind == "op" and tok.text == "(":
            raise self._unsupported("the arithmetic `for ((...))` loop")
        if tok.kind != "word" or not _IDENT.fullmatch(tok.text):
            raise _ParseError("bad `for` variable")
        variable = _Word(raw=tok.text + "=", value=tok.text + "=", static=True)
        self._sink.append(_Simple(text=f"for {tok.text}", assignments=[variable], words=[]))
        self._skip_newlines()
        if self._is_reserved(self._peek(), "in"):
            self._next()
            while (tok := self._peek()).kind == "word" and tok.word is not None:
                self._next()
                self._collect(tok.word)
            tok = self._next()
            if not (tok.kind == "nl" or (tok.kind == "op" and tok.text == ";")):
                raise _ParseError("expected `;` or a newline after the `for` words")
        elif (tok := self._peek()).kind == "op" and tok.text == ";":
            self._next()
        self._skip_newlines()
        self._parse_do_done()

    def _parse_case(self) -> None:
        self._next()
        subject = self._next()
        if subject.word is None:
            raise _ParseError("bad `case` word")
        self._collect(subject.word)
        self._skip_newlines()
        self._expect_word("in")
        while True:
            self._skip_newlines()
            tok = self._peek()
            if self._is_reserved(tok, "esac"):
                self._next()
                return
            if tok.kind == "op" and tok.text == "(":
                self._next()
            while True:
                pattern = self._next()
                if pattern.word is None:
                    raise _ParseError("bad `case` pattern")
                self._collect(pattern.word)
                tok = self._next()
                if tok.kind == "op" and tok.text == ")":
                    break
                if not (tok.kind == "op" and tok.text == "|"):
                    raise _ParseError("expected `)` after a `case` pattern")
            self._parse_list(frozenset({"esac"}), _CASE_ENDS)
            tok = self._peek()
            if tok.kind == "op" and tok.text in _CASE_ENDS:
                self._next()
            elif not self._is_reserved(tok, "esac"):
                raise _ParseError("expected `;;` or `esac`")

    def _parse_conditional(self) -> None:
        self._next()
        while True:
            tok = self._next()
            if tok.kind == "eof":
                raise _ParseError("unterminated `[[`")
            if tok.kind in ("op", "redir") and tok.text not in _CONDITIONAL_OPS:
                raise _ParseError(f"unexpected `{tok.text}` inside `[[`")
            if tok.word is None:
                continue
            if tok.word.raw == "]]":
                return
            if tok.word.raw in _ARITH_TEST_OPS:
                raise self._unsupported(f"`[[ ... {tok.word.raw} ... ]]` (arithmetic evaluation)")
            self._collect(tok.word)

    def _parse_function_body(self) -> None:
        self._skip_newlines()
        tok = self._peek()
        compound = self._is_reserved(tok, "{", "if", "while", "until", "for", "select", "case")
        if not (compound or self._is_reserved(tok, "[[") or (tok.kind, tok.text) == ("op", "(")):
            raise _ParseError("a function body must be a compound command")
        self._parse_command()

    def _parse_redirections(self) -> None:
        while self._peek().kind == "redir":
            self._parse_redirection()

    def _parse_redirection(self) -> None:
        self._next()
        target = self._next()
        if target.word is None:
            raise _ParseError("a redirection needs a target")
        self._collect(target.word)

    def _parse_simple(self) -> None:
        first = self._peek()
        assignments: list[_Word] = []
        words: list[_Word] = []
        end = first.start
        while True:
            tok = self._peek()
            if tok.kind == "redir":
                self._parse_redirection()
                end = self.pos
                continue
            if tok.kind != "word" or tok.word is None:
                break
            word = tok.word
            if not words and not assignments:
                after = self._token_at(tok.end)
                if after.kind == "op" and after.text == "(":
                    self._parse_function_definition(tok)
                    return
            self._next()
            self._collect(word)
            if not words and _ASSIGNMENT.match(word.raw):
                assignments.append(word)
            else:
                words.append(word)
            end = self.pos
        if end == first.start:
            raise _ParseError(f"unexpected `{_show(first.text, 20) or 'end of input'}`")
        text = self.src[first.start : end].strip()
        self._sink.append(_Simple(text=text, assignments=assignments, words=words))

    def _parse_function_definition(self, name: _Tok) -> None:
        if name.word is None or not name.word.static or name.word.raw in self._reserved:
            raise _ParseError("bad function name")
        self._next()
        self._expect_op("(")
        self._expect_op(")")
        self._parse_function_body()


def _check_code(code: str, ctx: _Ctx, depth: int, *, posix: bool = False) -> None:
    """Superuser mode: parse `code` as bash (or POSIX sh) and check every simple command."""
    if depth > _MAX_DEPTH:
        raise _Refusal(_show(code.strip()), "too-complex", "the command nests too deeply")
    try:
        commands = _Parser(code, posix=posix).parse_program()
    except _ParseError as exc:
        raise _Refusal(
            _show(code.strip()), "unparseable", f"the command could not be parsed ({exc})"
        ) from None
    for simple in commands:
        call = _Call(words=tuple(simple.words), text=_show(simple.text), depth=depth, posix=posix)
        for assignment in simple.assignments:
            match = _ASSIGNMENT.match(assignment.raw)
            if match is not None:
                _check_variable(call, ctx, match.group(1))
        _check_argv(call, ctx)


# --------------------------------------------------------------------------------------------
# checking one argv (both modes)


@dataclass(frozen=True, slots=True)
class _Call:
    words: tuple[_Word, ...]  # argv, program first
    text: str  # the simple command, for messages
    depth: int
    appended: bool = False  # more arguments are added at run time (xargs, find -exec +)
    placeholder: str | None = None  # words containing this are filled in at run time
    speculative: bool = False  # checking a guess (opaque wrappers): record nothing
    posix: bool = False  # the command runs in a POSIX sh rather than bash

    @staticmethod
    def of(words: tuple[_Word, ...], text: str, depth: int) -> _Call:
        return _Call(words=words, text=text, depth=depth)

    @property
    def name(self) -> str:
        return _show(self.words[0].value, 40)

    @property
    def base(self) -> str:
        return _fold(posixpath.basename(self.words[0].value.rstrip("/")))

    @property
    def args(self) -> tuple[_Word, ...]:
        return self.words[1:]

    def is_static(self, word: _Word) -> bool:
        return word.static and (self.placeholder is None or self.placeholder not in word.value)

    def require_static(self, word: _Word) -> str:
        if not self.is_static(word):
            raise _Refusal(
                self.text,
                "dynamic-command",
                f"`{_show(word.raw, 40)}` is only known at run time, so it cannot be "
                f"determined what `{self.name}` runs",
            )
        return word.value


@dataclass(frozen=True, slots=True)
class _Exec:
    words: tuple[_Word, ...]
    appended: bool = False
    placeholder: str | None = None
    speculative: bool = False


_BASH_ONLY: Final = (False,)
_ANY_SHELL: Final = (False, True)  # read as bash and as POSIX sh: either may be the shell


@dataclass(frozen=True, slots=True)
class _Code:
    text: str
    speculative: bool = False
    dialects: tuple[bool, ...] | None = None  # posix flags to parse with; None: the caller's


@dataclass(frozen=True, slots=True)
class _Implied:
    program: str
    via: str


_Inner = _Exec | _Code | _Implied
_Handler = Callable[["_Call", "_Ctx"], list[_Inner]]


def _check_argv(call: _Call, ctx: _Ctx) -> None:
    ctx.budget -= 1
    if ctx.budget < 0:
        raise _Refusal(call.text, "too-complex", "the command needs too much work to check")
    if call.depth > _MAX_DEPTH:
        raise _Refusal(call.text, "too-complex", "the command nests wrappers too deeply")
    if not call.words:
        if call.appended:
            raise _Refusal(
                call.text, "dynamic-command", "the program to run is only known at run time"
            )
        return
    head = call.words[0]
    if not call.is_static(head):
        raise _Refusal(
            call.text,
            "dynamic-command",
            f"the program name `{_show(head.raw, 40)}` is only known at run time",
        )
    base = _check_program(call, ctx, head.value)
    if not call.speculative:
        ctx.programs.append(head.value)
    key = _fold(base)
    handler = _HANDLERS.get(key)
    if handler is None and _LD_SO.fullmatch(key):
        handler = _h_opaque
    if call.appended and (
        (handler is not None and handler not in _APPEND_SAFE) or key in _EXEC_OPTIONS
    ):
        raise _Refusal(
            call.text,
            "dynamic-command",
            f"`{call.name}` gets arguments at run time, so what it runs cannot be determined",
        )
    if key in _EXEC_OPTIONS:
        _check_exec_options(call, key)
    if handler is None:
        return
    for inner in handler(call, ctx):
        if isinstance(inner, _Implied):
            _check_implied(call, ctx, inner)
            continue
        saved = ctx.programs
        if inner.speculative:
            ctx.programs = []
        try:
            if isinstance(inner, _Code):
                if ctx.mode is PermissionMode.WEAK:
                    _check_weak(inner.text, ctx, call.depth + 1)
                    continue
                dialects = inner.dialects if inner.dialects is not None else (call.posix,)
                for k, posix in enumerate(dialects):
                    if k == 1:  # later readings of the same text only check, never record
                        ctx.programs = []
                    _check_code(inner.text, ctx, call.depth + 1, posix=posix)
            else:
                nested = _Call(
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


def _check_program(call: _Call, ctx: _Ctx, name: str) -> str:
    """Check a program name against the mode's list and return its basename."""
    if not name:
        raise _Refusal(call.text, "empty", "the program name is empty")
    base = posixpath.basename(name.rstrip("/")) if "/" in name else name
    shown = _show(name, 60)
    if not base:
        raise _Refusal(call.text, "path-program", f"`{shown}` is not a program")
    if ctx.mode is PermissionMode.WEAK:
        if "/" in name and (base not in ctx.allowlist or shutil.which(base) != name):
            raise _Refusal(
                call.text,
                "path-program",
                f"`{shown}` names a program by path; weak mode only runs allowlisted "
                "programs as found on PATH",
            )
        if base not in ctx.allowlist:
            raise _Refusal(
                call.text, "not-in-allowlist", f"`{shown}` is not on the weak-mode allowlist"
            )
        return base
    parts = posixpath.normpath(name).split("/")
    if "/" in name and ("proc" in parts or "dev" in parts):
        raise _Refusal(
            call.text,
            "path-program",
            f"`{shown}` runs a program through /proc or /dev, which cannot be checked",
        )
    if name.startswith(("=", "~")):
        raise _Refusal(
            call.text, "dynamic-command", f"the program name `{shown}` is expanded by some shells"
        )
    if _fold(base) in ctx.denylist:
        raise _Refusal(call.text, "denylisted", f"`{shown}` is on the superuser denylist")
    return base


def _check_implied(call: _Call, ctx: _Ctx, inner: _Implied) -> None:
    if ctx.mode is PermissionMode.WEAK:
        if inner.program not in ctx.allowlist:
            raise _Refusal(
                call.text,
                "not-in-allowlist",
                f"`{inner.via}` acts like `{inner.program}`, which is not on the weak-mode "
                "allowlist",
            )
    elif _fold(inner.program) in ctx.denylist:
        raise _Refusal(
            call.text,
            "denylisted",
            f"`{inner.via}` acts like `{inner.program}`, which is on the superuser denylist",
        )


# -- options that make a program run another program: (long options, short letters, exact words)
_EXEC_OPTIONS: Final[dict[str, tuple[tuple[str, ...], str, tuple[str, ...]]]] = {
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


def _check_exec_options(call: _Call, key: str) -> None:
    longs, letters, exact = _EXEC_OPTIONS[key]
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


def _exec_option(call: _Call, option: str) -> _Refusal:
    return _Refusal(
        call.text,
        "exec-option",
        f"`{_show(option, 40)}` lets `{call.name}` run another program, which cannot be checked",
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


def _check_git(call: _Call) -> None:
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
        raise _Refusal(
            call.text,
            "exec-option",
            "`git config` can store aliases, pagers and hooks that run other programs",
        )
    for value in rest:
        for option in _GIT_SUBCOMMAND_RUNS.get(subcommand, ()):
            if value == option or value.startswith(option + "="):
                raise _exec_option(call, f"{subcommand} {value}")


# -- option tables for wrappers


@dataclass(frozen=True, slots=True)
class _Opts:
    flags: str = ""
    with_arg: str = ""
    optional_arg: str = ""
    refused: str = ""
    long_flags: tuple[str, ...] = ()
    long_with_arg: tuple[str, ...] = ()
    long_optional: tuple[str, ...] = ()
    long_refused: tuple[str, ...] = ()
    numeric: bool = False  # accepts `-N` (nice)

    def long_names(self) -> tuple[str, ...]:
        return self.long_flags + self.long_with_arg + self.long_optional + self.long_refused


def _unknown_option(call: _Call, option: str) -> _Refusal:
    return _Refusal(
        call.text,
        "dynamic-command",
        f"`{_show(option, 40)}` is not an option of `{call.name}` that this check knows, so "
        "it cannot be determined what it runs",
    )


def _refused_option(call: _Call, option: str) -> _Refusal:
    return _Refusal(call.text, "unsupported", f"`{call.name} {_show(option, 40)}` is not supported")


def _parse_options(call: _Call, spec: _Opts) -> tuple[int, list[tuple[str, str]]]:
    """Skip `call.args` options per `spec`; return (index of first operand, options found)."""
    args = call.args
    found: list[tuple[str, str]] = []
    i = 0
    while i < len(args):
        value = call.require_static(args[i])
        if value == "--":
            return i + 1, found
        if not value.startswith("-") or value == "-":
            return i, found
        if value.startswith("--"):
            name, eq, arg = value[2:].partition("=")
            matches = [n for n in spec.long_names() if n.startswith(name)] if name else []
            full = name if name in matches else (matches[0] if len(matches) == 1 else "")
            if not full:
                raise _unknown_option(call, value)
            if full in spec.long_refused:
                raise _refused_option(call, value)
            if full in spec.long_flags and eq:
                raise _unknown_option(call, value)
            if full in spec.long_with_arg and not eq:
                i += 1
                if i >= len(args):
                    raise _unknown_option(call, value)
                arg = call.require_static(args[i])
            found.append(("--" + full, arg))
            i += 1
            continue
        if spec.numeric and value[1:].isdigit():
            found.append(("-n", value[1:]))
            i += 1
            continue
        j = 1
        while j < len(value):
            ch = value[j]
            if ch in spec.refused:
                raise _refused_option(call, "-" + ch)
            if ch in spec.with_arg:
                arg = value[j + 1 :]
                if not arg:
                    i += 1
                    if i >= len(args):
                        raise _unknown_option(call, value)
                    arg = call.require_static(args[i])
                found.append(("-" + ch, arg))
                break
            if ch in spec.optional_arg:
                found.append(("-" + ch, value[j + 1 :]))
                break
            if ch not in spec.flags:
                raise _unknown_option(call, value)
            found.append(("-" + ch, ""))
            j += 1
        i += 1
    return i, found


def _simple_wrapper(spec: _Opts, *, operands: int = 0, assignments: bool = False) -> _Handler:
    """A wrapper shaped `NAME [options] [operands...] [VAR=x...] PROGRAM [args...]`."""

    def handler(call: _Call, ctx: _Ctx) -> list[_Inner]:
        # Arguments appended at run time (xargs) land after the static ones, so they reach the
        # wrapped program, unless the static ones stop before it: then the program is unknown.
        missing: list[_Inner] = [_Exec((), appended=True)] if call.appended else []
        i, _ = _parse_options(call, spec)
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
                _check_variable(call, ctx, args[i].value.partition("=")[0])
                i += 1
        return [_Exec(args[i:], appended=call.appended)] if i < len(args) else missing

    return handler


_h_env = _simple_wrapper(
    _Opts(
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
    _Opts(
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
_h_doas = _simple_wrapper(_Opts(flags="nL", with_arg="uC", refused="s"))
_h_nohup = _simple_wrapper(_Opts(long_flags=("help", "version")))
_h_timeout = _simple_wrapper(
    _Opts(
        flags="fpv",
        with_arg="ks",
        long_flags=("foreground", "preserve-status", "verbose", "help", "version"),
        long_with_arg=("kill-after", "signal"),
    ),
    operands=1,
)
_h_nice = _simple_wrapper(
    _Opts(with_arg="n", long_flags=("help", "version"), long_with_arg=("adjustment",),
          numeric=True)
)  # fmt: skip
_h_ionice = _simple_wrapper(
    _Opts(
        flags="th",
        with_arg="cnpPu",
        long_flags=("ignore", "help", "version"),
        long_with_arg=("class", "classdata", "pid", "pgid", "uid"),
    )
)
_h_stdbuf = _simple_wrapper(
    _Opts(with_arg="ioe", long_flags=("help", "version"),
          long_with_arg=("input", "output", "error"))
)  # fmt: skip
_h_time = _simple_wrapper(
    _Opts(
        flags="apqvV",
        with_arg="fo",
        long_flags=("append", "portability", "quiet", "verbose", "help", "version"),
        long_with_arg=("format", "output"),
    )
)
_h_command = _simple_wrapper(_Opts(flags="pvV"))
_h_builtin = _simple_wrapper(_Opts())
_h_exec = _simple_wrapper(_Opts(flags="cl", with_arg="a"))


def _h_xargs(call: _Call, ctx: _Ctx) -> list[_Inner]:
    spec = _Opts(
        flags="0oprtx",
        with_arg="adEILnPs",
        optional_arg="eil",
        long_flags=("null", "interactive", "no-run-if-empty", "open-tty", "verbose", "exit",
                    "show-limits", "help", "version"),
        long_with_arg=("arg-file", "delimiter", "max-args", "max-procs", "max-chars",
                       "process-slot-var"),
        long_optional=("eof", "replace", "max-lines"),
    )  # fmt: skip
    i, found = _parse_options(call, spec)
    replace: str | None = None
    for option, arg in found:
        if option == "-I":
            replace = arg
        elif option in ("-i", "--replace"):
            replace = arg or "{}"
    words = call.args[i:] or (_Word(raw="echo", value="echo", static=True),)
    if replace is not None:
        return [_Exec(words, placeholder=replace)]
    return [_Exec(words, appended=True)]


def _h_find(call: _Call, ctx: _Ctx) -> list[_Inner]:
    args = call.args
    values = [call.require_static(w) for w in args]
    found: list[_Inner] = []
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
                raise _Refusal(
                    call.text, "unparseable", f"`find {value}` is missing its `;` or `+`"
                )
            found.append(_Exec(args[i + 1 : j], appended=values[j] == "+", placeholder="{}"))
            i = j
        elif value == "-delete":
            found.append(_Implied("rm", "find -delete"))
        elif value in ("-fprint", "-fprint0", "-fprintf", "-fls"):
            found.append(_Implied("tee", f"find {value}"))
        i += 1
    return found


def _h_busybox(call: _Call, ctx: _Ctx) -> list[_Inner]:
    if not call.args:
        return [_Exec((), appended=True)] if call.appended else []
    applet = call.require_static(call.args[0])
    if applet.startswith("-"):
        if applet in ("--list", "--list-full", "--help") and len(call.args) == 1:
            return []
        raise _unknown_option(call, applet)
    return [_Exec(call.args, appended=call.appended)]


def _h_eval(call: _Call, ctx: _Ctx) -> list[_Inner]:
    code = " ".join(call.require_static(w) for w in call.args)
    return [_Code(code)] if code.strip() else []


def _h_trap(call: _Call, ctx: _Ctx) -> list[_Inner]:
    values = [call.require_static(w) for w in call.args]
    if values[:1] == ["--"]:
        values = values[1:]
    if len(values) < 2 or values[0] in ("-", "-l", "-p", ""):
        return []
    return [_Code(values[0])]


_SHELL_FLAGS: Final = frozenset("abefhmnprtuvxBCEPT")  # not -H (history) nor -k (keyword)
_SHELL_LONG_OK: Final = frozenset(
    {"--norc", "--noprofile", "--posix", "--noediting", "--verbose", "--restricted"}
)


def _h_shell(call: _Call, ctx: _Ctx) -> list[_Inner]:
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
                raise _refused_option(call, value)
            i += 1
            continue
        for ch in value[1:]:
            if ch == "c" and value[0] == "-":
                has_c = True
            elif ch in "oO":
                i += 1
                if i >= len(args) or call.require_static(args[i]) in _UNSAFE_SHELL_OPTIONS:
                    raise _refused_option(call, f"-{ch} {args[i].value if i < len(args) else ''}")
            elif ch in "Hk":
                raise _refused_option(call, "-" + ch)
            elif ch in "ils":
                raise _Refusal(
                    call.text,
                    "unsupported",
                    f"`{call.name} -{ch}` reads commands from startup files or standard input, "
                    "which cannot be checked",
                )
            elif ch not in _SHELL_FLAGS:
                raise _unknown_option(call, value)
        i += 1
    rest = args[i:]
    if has_c:
        if not rest:
            raise _Refusal(call.text, "unparseable", f"`{call.name} -c` needs a command string")
        dialects = _BASH_ONLY if call.base in ("bash", "rbash") else _ANY_SHELL
        return [_Code(call.require_static(rest[0]), dialects=dialects)]
    if rest:
        raise _Refusal(
            call.text,
            "unsupported",
            f"`{call.name}` would run the script `{_show(rest[0].raw, 40)}`, which cannot be "
            "checked",
        )
    raise _Refusal(
        call.text,
        "unsupported",
        f"`{call.name}` would read commands from standard input, which cannot be checked",
    )


def _h_opaque(call: _Call, ctx: _Ctx) -> list[_Inner]:
    """A wrapper whose option syntax is not modelled: every possible program position must pass."""
    if ctx.mode is PermissionMode.WEAK:
        raise _Refusal(
            call.text,
            "dynamic-command",
            f"it cannot be determined which program `{call.name}` runs",
        )
    args = call.args
    for word in args:
        call.require_static(word)
    if call.speculative:
        return []  # the enclosing opaque wrapper already checks every later position
    found: list[_Inner] = [_Exec(args[k:], speculative=True) for k in range(len(args))]
    found += [
        _Code(w.value, speculative=True, dialects=_ANY_SHELL)
        for w in args
        if any(c in _CODE_CHARS for c in w.value)
    ]
    return found


_CODE_CHARS: Final = frozenset(" \t\n;&|<>()$`")


def _h_login_shell(call: _Call, ctx: _Ctx) -> list[_Inner]:
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
        raise _Refusal(
            call.text,
            "unsupported",
            f"`{call.name}` without `-c` starts a shell that reads commands from standard input",
        )
    return _h_opaque(call, ctx)


def _h_refuse(call: _Call, ctx: _Ctx) -> list[_Inner]:
    raise _Refusal(
        call.text,
        "unsupported",
        f"`{call.name}` can run commands that cannot be checked and is not supported",
    )


def _h_declare(call: _Call, ctx: _Ctx) -> list[_Inner]:
    for word in call.args:
        match = _ASSIGNMENT.match(word.raw)
        if match is not None:
            _check_variable(call, ctx, match.group(1))
            continue
        value = call.require_static(word)
        if value == "--":
            continue
        if value[:1] in ("-", "+") and len(value) > 1:
            bad = set(value[1:]) - set("xrgpfFltuaA")
            if bad:
                raise _refused_option(call, value)
        elif not _IDENT.fullmatch(value):
            raise _Refusal(
                call.text,
                "unsupported",
                f"`{call.name} {_show(value, 40)}` (array subscripts and computed names) is "
                "not supported",
            )
    return []


def _check_name_argument(call: _Call, ctx: _Ctx, word: _Word, *, assigns: bool) -> None:
    value = call.require_static(word)
    if "[" in value:
        raise _Refusal(
            call.text,
            "unsupported",
            f"`{call.name}` with an array subscript (evaluated as arithmetic) is not supported",
        )
    if assigns and _IDENT.fullmatch(value):
        _check_variable(call, ctx, value)


def _h_read(call: _Call, ctx: _Ctx) -> list[_Inner]:
    """`read`, `mapfile`, `readarray`, `unset`: every argument may name a variable."""
    for word in call.args:
        value = call.require_static(word)
        if call.base in ("mapfile", "readarray") and value.startswith("-") and "C" in value:
            raise _refused_option(call, value)
        _check_name_argument(call, ctx, word, assigns=call.base != "unset")
    return []


def _h_printf(call: _Call, ctx: _Ctx) -> list[_Inner]:
    args = call.args
    if args and args[0].static and args[0].value.startswith("-v"):
        if args[0].value != "-v":
            name = args[0].value[2:]
            _check_name_argument(call, ctx, _Word(name, name, True), assigns=True)
        elif len(args) > 1:
            _check_name_argument(call, ctx, args[1], assigns=True)
    elif args and not call.is_static(args[0]):
        call.require_static(args[0])
    return []


def _h_named_option(option: str | None, position: int | None = None) -> _Handler:
    """Builtins whose variable name follows `option` (or sits at a fixed position)."""

    def handler(call: _Call, ctx: _Ctx) -> list[_Inner]:
        args = call.args
        if position is not None and len(args) > position:
            _check_name_argument(call, ctx, args[position], assigns=True)
        if option is not None:
            for k, word in enumerate(args[:-1]):
                if word.static and word.value == option:
                    _check_name_argument(call, ctx, args[k + 1], assigns=option != "-v")
        return []

    return handler


_h_getopts = _h_named_option(None, position=1)
_h_wait = _h_named_option("-p")
_h_test = _h_named_option("-v")
_h_repeat = _simple_wrapper(_Opts(), operands=1)  # zsh `repeat N command`


def _h_hash(call: _Call, ctx: _Ctx) -> list[_Inner]:
    for word in call.args:
        value = call.require_static(word)
        if value.startswith("-") and "p" in value:
            raise _refused_option(call, value)
    return []


# aliases and history expansion run text this module never parses; `keyword` (set -k) turns
# `cmd PATH=x` into a PATH change for the command search
_UNSAFE_SHELL_OPTIONS: Final = frozenset({"expand_aliases", "history", "histexpand", "keyword"})


def _h_shopt(call: _Call, ctx: _Ctx) -> list[_Inner]:
    for word in call.args:
        if call.require_static(word) in _UNSAFE_SHELL_OPTIONS:
            raise _refused_option(call, word.value)
    return []


def _h_set(call: _Call, ctx: _Ctx) -> list[_Inner]:
    """`set -H` / `set -o history`: history expansion (`!!`) would run text never parsed here."""
    args = call.args
    i = 0
    while i < len(args):
        value = call.require_static(args[i])
        if value in ("-", "--") or value[:1] not in ("-", "+"):
            return []
        if value[0] == "-" and ("H" in value or "k" in value):
            raise _refused_option(call, value)
        if "o" in value[1:]:
            i += 1
            if i < len(args) and call.require_static(args[i]) in _UNSAFE_SHELL_OPTIONS:
                raise _refused_option(call, f"{value} {args[i].value}")
        i += 1
    return []


_LD_SO: Final = re.compile(r"ld(?:-linux)?(?:[-.][a-z0-9_.-]*)?\.so(?:\.[0-9]+)*")

_WRAPPERS: Final[dict[str, _Handler]] = {
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
    **dict.fromkeys(
        ("sh", "bash", "dash", "ash", "ksh", "ksh93", "mksh", "lksh", "oksh", "pdksh", "zsh",
         "rbash", "hush", "yash", "posh"),
        _h_shell,
    ),
    **dict.fromkeys(("su", "runuser", "sg", "script"), _h_login_shell),
    **dict.fromkeys(
        ("setsid", "flock", "taskset", "chrt", "prlimit", "setpriv", "strace", "ltrace",
         "valgrind", "faketime", "catchsegv", "watch", "xvfb-run", "unbuffer", "rlwrap", "chpst",
         "numactl", "cgexec", "systemd-run", "torsocks", "proxychains", "proxychains4", "tsocks",
         "ld.so", "setarch", "linux32", "linux64", "i386", "x86_64", "bwrap", "runcon",
         "daemonize", "start-stop-daemon", "entr", "tini", "dumb-init", "cpulimit", "trickle",
         "nocache", "eatmydata", "fakechroot", "setuidgid", "envdir", "envuidgid", "softlimit",
         "setlock", "sched"),
        _h_opaque,
    ),
    **dict.fromkeys(
        ("source", ".", "alias", "enable", "fc", "compgen", "complete", "bind", "let", "coproc",
         "chroot", "unshare", "nsenter", "fakeroot", "proot", "firejail", "newgrp", "login",
         "machinectl", "tmux", "screen", "byobu", "at", "batch", "crontab", "parallel", "pkexec",
         "dbus-run-session", "capsh", "autoload", "fish", "csh", "tcsh", "pwsh", "nu", "elvish",
         "xonsh"),
        _h_refuse,
    ),
}  # fmt: skip
_HANDLERS: Final[dict[str, _Handler]] = {
    **_WRAPPERS,
    **dict.fromkeys(("declare", "typeset", "local", "export", "readonly"), _h_declare),
    **dict.fromkeys(("read", "mapfile", "readarray", "unset"), _h_read),
    "printf": _h_printf,
    "getopts": _h_getopts,
    "wait": _h_wait,
    "test": _h_test,
    "[": _h_test,
    "hash": _h_hash,
    "shopt": _h_shopt,
    "set": _h_set,
}
# Wrappers whose program is still determined when xargs appends arguments: those arguments go
# to the wrapped program (or become `$0`, `$1`... of a `sh -c` string).  Everything else that
# runs other programs is refused under xargs.
_APPEND_SAFE: Final = frozenset(
    {
        _h_env, _h_sudo, _h_doas, _h_nohup, _h_timeout, _h_nice, _h_ionice, _h_stdbuf, _h_time,
        _h_command, _h_builtin, _h_exec, _h_busybox, _h_shell, _h_repeat, _h_declare, _h_read,
        _h_printf, _h_getopts, _h_wait, _h_test, _h_hash, _h_shopt, _h_set,
    }
)  # fmt: skip
