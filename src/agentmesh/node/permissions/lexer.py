"""The bash (and POSIX sh) lexer: operators, words, quoting and expansions.

Quote splicing is resolved as bash does it (`r''m`, `"r"m` and `\\rm` are all `rm`), and a
word records whether its value is known now (`Word.static`).  Command substitutions inside a
word (`$(...)`, backticks, `<(...)`) are handed to the parser through `_parse_nested` and
`_parse_backtick`, so their commands are checked too.  Expansions whose effect cannot be
seen statically (arithmetic on variables, `${!x}`, `${x@P}`, here-documents, ...) raise a
refusal with rule ``unsupported``.
"""

from __future__ import annotations

import re
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Final

from agentmesh.node.permissions.commands import Simple, Word
from agentmesh.node.permissions.errors import ParseError, Refusal, show
from agentmesh.node.permissions.variables import unsafe_to_set


@dataclass(frozen=True, slots=True)
class Token:
    """An operator, redirection, word, newline or end of input, and where it sits in the source."""

    kind: str  # "word" | "op" | "redir" | "nl" | "eof"
    text: str
    start: int
    end: int
    word: Word | None = None


_METACHARS: Final = frozenset(" \t\n;&|<>()")
_JOINING: Final = frozenset(";&|<>()")  # operator characters that bash may read as one token
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


class Lexer(ABC):
    """Tokens of `src`, lexed on demand at `pos` and memoised by position.

    With `posix=True` the source is read the way dash and other POSIX shells read it.
    """

    def __init__(self, src: str, *, posix: bool) -> None:
        self.src = src
        self.pos = 0
        self.posix = posix
        self._redir_ops = _POSIX_REDIR_OPS if posix else _REDIR_OPS
        self._control_ops = _POSIX_CONTROL_OPS if posix else _CONTROL_OPS
        self._memo: dict[int, Token] = {}

    @abstractmethod
    def _parse_nested(self, pos: int) -> tuple[list[Simple], int]:
        """Parse `$(...)`, `<(...)` or `>(...)` whose body starts at `pos`."""

    @abstractmethod
    def _parse_backtick(self, body: str) -> list[Simple]:
        """Parse the body of a backtick substitution, its backslash escapes already removed."""

    def _unsupported(self, what: str) -> Refusal:
        return Refusal(show(self.src.strip()), "unsupported", f"{what} is not supported")

    def _check_continuation(self, pos: int) -> None:
        """Refuse a backslash-newline at `pos` that joins two characters into one token.

        Bash removes every backslash-newline outside single quotes before it reads tokens, so
        `&\\<newline>&` is `&&` and `$\\<newline>(` is `$(`; this lexer reads the two sides
        apart, so such a join is refused rather than read differently.
        """
        src = self.src
        end = pos
        while src.startswith("\\\n", end):
            end += 2
        before = src[pos - 1] if pos > 0 else " "
        after = src[end] if end < len(src) else " "
        if (before in _JOINING and after in _JOINING) or (after in "<>" and before not in " \t\n"):
            raise self._unsupported(
                f"a line continuation between `{before}` and `{after}` (bash joins them)"
            )

    def _peek(self) -> Token:
        return self._token_at(self.pos)

    def _next(self) -> Token:
        tok = self._peek()
        self.pos = tok.end
        return tok

    def _token_at(self, pos: int) -> Token:
        tok = self._memo.get(pos)
        if tok is None:
            tok = self._lex(pos)
            self._memo[pos] = tok
        return tok

    def _lex(self, pos: int) -> Token:
        src = self.src
        n = len(src)
        while pos < n:
            if src[pos] in " \t":
                pos += 1
            elif src.startswith("\\\n", pos):
                self._check_continuation(pos)
                pos += 2
            elif src[pos] == "#":
                end = src.find("\n", pos)
                pos = n if end < 0 else end
            else:
                break
        if pos >= n:
            return Token("eof", "", n, n)
        if src[pos] == "\n":
            return Token("nl", "\n", pos, pos + 1)
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
                return Token("redir", src[pos:end], pos, end)
        for op in self._control_ops:
            if src.startswith(op, pos):
                return Token("op", op, pos, pos + len(op))
        return self._lex_word(pos)

    def _lex_word(self, pos: int) -> Token:
        src = self.src
        n = len(src)
        start = pos
        value: list[str] = []
        subs: list[Simple] = []
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
                    self._check_continuation(pos)
                    pos += 2
                    continue
                value.append(src[pos + 1 : pos + 2] or "\\")
                pos += 2
            elif c == "'":
                end = src.find("'", pos + 1)
                if end < 0:
                    raise ParseError("unterminated single quote")
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
        word = Word(raw=raw, value="".join(value), static=static, subcommands=subs)
        return Token("word", raw, start, pos, word)

    def _lex_dquote(self, pos: int, value: list[str], subs: list[Simple]) -> tuple[int, bool]:
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
        raise ParseError("unterminated double quote")

    def _ansi_c_end(self, pos: int) -> int:
        src = self.src
        while pos < len(src):
            if src[pos] == "\\":
                pos += 2
            elif src[pos] == "'":
                return pos + 1
            else:
                pos += 1
        raise ParseError("unterminated $'...' quote")

    def _lex_dollar(self, pos: int, subs: list[Simple], *, in_dquote: bool) -> tuple[int, bool]:
        """Lex the expansion starting at `$`; return (end, whether it is an expansion)."""
        src = self.src
        if src.startswith("\\\n", pos + 1):
            end = pos + 1
            while src.startswith("\\\n", end):
                end += 2
            if end < len(src) and src[end] not in " \t\n":
                # bash reads `$\\<newline>'...'` as `$'...'` and `$\\<newline>(` as `$(`
                raise self._unsupported("a line continuation right after `$`")
            return pos + 1, False
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
                    raise ParseError("unbalanced `$((`")
                depth -= 1
            pos += 1
        raise ParseError("unterminated `$((`")

    def _lex_braced(self, pos: int, subs: list[Simple], *, in_dquote: bool) -> int:
        """Lex `${...}` after the `${`; only plainly safe forms are accepted."""
        src = self.src
        if src.startswith("!", pos):
            raise self._unsupported("indirect expansion `${!...}`")
        if src.startswith("#", pos) and not src.startswith("}", pos + 1):
            pos += 1
        name = _PARAM_NAME.match(src, pos)
        if name is None:
            raise ParseError("bad substitution")
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
            raise ParseError("bad substitution")
        if op == "@":
            raise self._unsupported("the transformation `${var@...}`")
        if op in (":=", "=") and unsafe_to_set(name.group()):
            raise self._unsupported(f"assigning `{name.group()}` inside `${{...}}`")
        if op == ":":
            substring = _SUBSTRING_OK.match(src, pos)
            if substring is None:
                raise self._unsupported("a substring offset that is not a plain number")
            return substring.end()
        return self._scan_param_word(pos + len(op), subs, in_dquote=in_dquote)

    def _scan_param_word(self, pos: int, subs: list[Simple], *, in_dquote: bool) -> int:
        src = self.src
        scratch: list[str] = []
        while pos < len(src):
            c = src[pos]
            if c == "}":
                return pos + 1
            if c == "\\":
                pos += 2
            elif src.startswith("$'", pos) and not self.posix and not in_dquote:
                # bash reads ANSI-C quoting here too: `${x:-$'\\''}` is one quote character
                pos = self._ansi_c_end(pos + 2)
            elif src.startswith('$"', pos) and not self.posix:
                raise self._unsupported('the locale translation `$"..."` inside `${...}`')
            elif c == "'":
                if in_dquote:
                    raise self._unsupported("a single quote inside a double-quoted `${...}`")
                end = src.find("'", pos + 1)
                if end < 0:
                    raise ParseError("unterminated single quote")
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
        raise ParseError("unterminated `${`")

    def _lex_backtick(self, pos: int, subs: list[Simple], *, in_dquote: bool) -> int:
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
                subs.extend(self._parse_backtick("".join(buf)))
                return pos + 1
            buf.append(c)
            pos += 1
        raise ParseError("unterminated backtick")
